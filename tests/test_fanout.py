"""One camera, many viewers: opened once, shared, released after the last one leaves."""

import asyncio
import time

import pytest

from receiver import Receiver
from sender.sources import TestPattern

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


async def first_frame_width(url: str) -> int:
    async with Receiver(url, connect_timeout=30) as rx:
        async for frame in rx.frames():
            return frame.width
    raise AssertionError("the stream ended before a frame")


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
    assert await first_frame_width(sender.url) == 640
    await wait_until(lambda: not sender.source.is_open, within=10, what="camera release")
    assert await first_frame_width(sender.url) == 640
    assert sender.source.opens == 2


async def test_a_viewer_arriving_while_the_camera_closes_reopens_it(
    sender, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idle close has begun (a camera can take seconds to release) when a viewer comes:
    the camera opens again once released, and the viewer gets frames. (It used to join the
    capture that was ending and wait for frames that never came: CI, bench.passthrough.)"""
    released = asyncio.Event()
    opened_while_held: list[bool] = []
    original_open, original_close = TestPattern.open, TestPattern.close

    async def open_(self: TestPattern) -> None:
        opened_while_held.append(sender.source.opens > 0 and not released.is_set())
        await original_open(self)

    async def slow_close(self: TestPattern) -> None:
        await asyncio.sleep(5)  # a device slow to let go
        await original_close(self)
        released.set()

    monkeypatch.setattr(TestPattern, "open", open_)
    monkeypatch.setattr(TestPattern, "close", slow_close)
    assert await first_frame_width(sender.url) == 640
    await wait_until(lambda: not sender.source.is_open, within=10, what="the idle close")
    watching = asyncio.create_task(first_frame_width(sender.url))
    await wait_until(lambda: sender.source.viewers == 1, within=10, what="the second viewer")
    assert not released.is_set(), "the second viewer came after the release: no race"
    assert await asyncio.wait_for(watching, 40) == 640
    assert released.is_set() and sender.source.opens == 2
    assert opened_while_held == [False, False], "the camera reopened before its release"
