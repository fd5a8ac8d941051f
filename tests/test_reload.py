"""SIGHUP re-reads the config file (``sender.reload``): a camera added starts, one removed
stops (its viewer's video ends), one changed restarts, and a viewer of an unchanged
camera keeps getting frames without a gap; a file that does not parse is refused in one
line and the running configuration stays."""

from __future__ import annotations

import asyncio
import itertools
import signal
import time
from pathlib import Path

from common.backoff import Backoff
from receiver import Receiver

from .helpers import SenderProcess, wait_until

SIZE = 'size = "320x240"\n'


class Counting:
    """A receiver's frames, with their arrival times, read in the background."""

    def __init__(self, rx: Receiver) -> None:
        self.rx = rx
        self.arrivals: list[float] = []
        self.ended = False
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for _ in self.rx.frames():
            self.arrivals.append(time.monotonic())
        self.ended = True

    def since(self, moment: float) -> int:
        return sum(1 for t in self.arrivals if t >= moment)

    def longest_gap(self, start: float, end: float) -> float:
        times = [start, *(t for t in self.arrivals if start <= t <= end), end]
        return max(b - a for a, b in itertools.pairwise(times))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def cameras(sender: SenderProcess) -> list[str]:
    return list(sender.health()["cameras"])


async def test_sighup_adds_removes_and_restarts_cameras_while_others_watch(
    tmp_path: Path,
) -> None:
    config = tmp_path / "sender.toml"
    config.write_text(SIZE + '[cameras]\nkeep = "testsrc"\ngone = "testsrc"\nedit = "testsrc"\n')
    sender = SenderProcess(["--config", str(config)], tmp_path / "sender.log")
    try:
        async with (
            Receiver(f"{sender.url}/whep/keep", connect_timeout=30) as keep_rx,
            Receiver(
                f"{sender.url}/whep/gone", connect_timeout=30, retry=Backoff(max_tries=0)
            ) as gone_rx,
        ):
            keep, gone = Counting(keep_rx), Counting(gone_rx)
            try:
                await wait_until(lambda: len(keep.arrivals) >= 30, 30, "frames of keep")
                await wait_until(lambda: len(gone.arrivals) >= 1, 30, "frames of gone")
                config.write_text(
                    SIZE + '[cameras]\nkeep = "testsrc"\nedit = "scene"\nnew = "testsrc"\n'
                )
                reloaded = time.monotonic()
                sender.proc.send_signal(signal.SIGHUP)
                await wait_until(
                    lambda: cameras(sender) == ["keep", "edit", "new"], 60, "the new cameras"
                )
                await wait_until(lambda: gone.ended, 30, "the removed camera's viewer to end")
                await wait_until(lambda: keep.since(reloaded) >= 60, 30, "frames after")

                # A file that does not parse: refused, nothing changes, frames go on.
                config.write_text(SIZE + "[cameras\n")
                refused = time.monotonic()
                sender.proc.send_signal(signal.SIGHUP)
                await wait_until(lambda: "reload refused" in sender.stderr(), 30, "a refusal")
                await wait_until(lambda: keep.since(refused) >= 30, 30, "frames after it")
                assert cameras(sender) == ["keep", "edit", "new"]
                end = time.monotonic()
                gap = keep.longest_gap(reloaded, end)
                assert keep_rx.stats.reconnects == 0, "the unchanged camera's viewer reconnected"
                assert not keep.ended
            finally:
                await keep.close()
                await gone.close()
        # The added and the changed camera serve their (new) pictures.
        for name in ("new", "edit"):
            async with Receiver(f"{sender.url}/whep/{name}", connect_timeout=30) as rx:
                frames = rx.frames()
                frame = await anext(frames)
                await frames.aclose()
            assert (frame.width, frame.height) == (320, 240)
        health = sender.health()
    finally:
        code = sender.stop()
    assert code == 0, sender.stderr()
    assert gap < 0.5, f"the unchanged camera's viewer waited {gap:.2f} s across the reloads"
    assert health["cameras"]["edit"]["source"] == "fake camera (scene)"
    log = sender.stderr()
    assert "configuration reloaded: started edit, new; stopped gone; unchanged keep" in log, log
    assert f"reload refused: {config}: not valid TOML" in log, log
    assert "Traceback" not in log, log


async def test_sighup_with_one_unnamed_camera_restarts_it_or_refuses(tmp_path: Path) -> None:
    """The single unnamed camera: a new SPEC restarts it; one that does not open is
    refused (as at start-up) and the old camera goes on; an option that cannot change
    while running is named in a warning (never its value: it may be a secret)."""
    config = tmp_path / "sender.toml"
    config.write_text(SIZE + 'source = "testsrc"\n')
    sender = SenderProcess(["--config", str(config)], tmp_path / "sender.log")
    try:
        config.write_text(SIZE + 'source = "/nonexistent.mp4"\ntoken = "s3cret-token"\n')
        sender.proc.send_signal(signal.SIGHUP)
        await wait_until(lambda: "reload refused" in sender.stderr(), 30, "a refusal")
        assert sender.health()["source"] == "fake camera (testsrc)"
        config.write_text(SIZE + 'source = "scene"\n')
        sender.proc.send_signal(signal.SIGHUP)
        await wait_until(
            lambda: sender.health()["source"] == "fake camera (scene)", 60, "the new camera"
        )
        async with Receiver(sender.url, connect_timeout=30) as rx:
            frames = rx.frames()
            frame = await anext(frames)
            await frames.aclose()
    finally:
        assert sender.stop() == 0
    assert (frame.width, frame.height) == (320, 240)
    log = sender.stderr()
    assert "reload refused: /nonexistent.mp4: no such camera or video file" in log, log
    assert "--token changed: it takes effect when the sender restarts" in log, log
    assert "s3cret-token" not in log
