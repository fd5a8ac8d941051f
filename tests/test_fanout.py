"""One camera, many viewers: opened once, shared, released after the last one leaves."""

import asyncio
import time

from receiver import Receiver

from .helpers import wait_until

VIEWERS = 3
SECONDS = 5.0


async def watch(url: str) -> dict:
    async with Receiver(url, connect_timeout=30) as rx:
        start = None
        async for _ in rx.frames():
            now = time.monotonic()
            start = start or now
            if now - start >= SECONDS:
                break
        return rx.stats.summary()


async def test_three_receivers_share_one_camera(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--size", "640x480")
    assert sender.health()["source_opens"] == 0, "the camera opens only for a viewer"
    summaries = await asyncio.gather(*(watch(sender.url) for _ in range(VIEWERS)))
    for summary in summaries:
        assert summary["seconds"] >= SECONDS * 0.95
        assert summary["fps"] >= 25, summaries
        assert summary["stamped_frames"] == summary["frames"]
    health = sender.health()
    assert health["source_opens"] == 1, health

    left_at = time.monotonic()
    await wait_until(lambda: sender.health()["viewers"] == 0, within=10, what="viewers to leave")
    await wait_until(lambda: not sender.health()["source_open"], within=5, what="camera release")
    assert time.monotonic() - left_at < 2.5
    assert "camera closed" in sender.stderr()
    assert sender.stderr().count("viewer joined") == VIEWERS
    assert sender.stderr().count("viewer left") == VIEWERS


async def test_camera_reopens_for_a_later_viewer(sender) -> None:
    async with Receiver(sender.url, connect_timeout=20) as rx:
        async for _ in rx.frames():
            break
    await wait_until(lambda: not sender.source.is_open, within=10, what="camera release")
    async with Receiver(sender.url, connect_timeout=20) as rx:
        async for frame in rx.frames():
            assert frame.width == 640
            break
    assert sender.source.opens == 2
