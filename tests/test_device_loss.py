"""A capture device that goes away while viewers watch (a USB camera unplugged): the
viewers stay connected, see a pause, and get the picture back when it returns.

No camera here, so the device is FFmpeg's virtual one (``lavfi:``), opened through the
same path as a V4L2 camera (``sender.sources.AvSource``): a filter graph that ends after
two seconds of real-time frames is a camera unplugged every two seconds."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable

from receiver import Receiver

from .helpers import SenderProcess, assert_one_line_error, run_sender, wait_until

UNPLUGGED_EVERY = 2  # seconds of frames per plug-in
DEVICE = f"lavfi:testsrc2=size=640x480:rate=30:duration={UNPLUGGED_EVERY},realtime"


async def test_a_device_that_goes_away_is_a_pause_not_an_end(
    sender_process: Callable[..., SenderProcess],
) -> None:
    sender = sender_process("--source", DEVICE, "--size", "640x480")
    arrivals: list[float] = []
    async with Receiver(sender.url, connect_timeout=30, stall_timeout=60) as rx:

        async def read() -> None:
            async for frame in rx.frames():
                assert (frame.width, frame.height) == (640, 480)
                arrivals.append(time.monotonic())

        reader = asyncio.create_task(read())
        try:
            await wait_until(lambda: len(arrivals) > 0, 30, "the first frame")
            # Gone and back at least twice, with frames after the last return.
            await wait_until(lambda: sender.health()["source_reconnects"] >= 2, 30, "two returns")
            after = len(arrivals)
            await wait_until(lambda: len(arrivals) >= after + 15, 30, "frames after a return")
            health = sender.health()
            assert rx.stats.reconnects == 0, "the viewer had to reconnect"
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
    assert health["viewers"] == 1
    assert health["source_open"], health
    pause = max(b - a for a, b in itertools.pairwise(arrivals))
    assert pause > 0.3, f"no pause while the device was away ({pause:.2f} s at most)"
    log = sender.stderr()
    assert "reopening it (viewers stay connected)" in log, log
    assert " is back after " in log, log
    assert "Traceback" not in log, log


def test_a_device_that_fails_before_its_first_frame_is_an_error_at_start() -> None:
    """Reopening is for a device that worked: one that never gives a frame is refused."""
    started = time.monotonic()
    result = run_sender("--source", "lavfi:nosuchfilter=size=640x480")
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert "cannot open device nosuchfilter=size=640x480: Filter not found" in result.stderr
    assert time.monotonic() - started < 30
