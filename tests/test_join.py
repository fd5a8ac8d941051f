"""Joining a running stream is quick: newcomers start from a recent keyframe instead of
waiting for the next one (keyframe requests that close together share one)."""

import asyncio
import time

from bench.join import join_times
from sender.encoding import KEYFRAME_INTERVAL_MIN, PROFILES, SharedEncoder
from sender.fanout import SharedSource
from sender.sources import TestPattern, capture_time

VIEWERS = 8
JOINING = 8
# Seconds. The 0.3 s target is bench/join.py's, with the viewers in processes of their own
# on a quiet machine. Here the 16 viewers share the test's process: on an idle 2-core host
# their p95 was 0.45-0.92 s (2026-12-02, three runs at each of three commits), and one full
# CI run gave 1.10 s against the 1.0 s this bound was; a join that waited for a periodic
# keyframe or a stalled sender would take seconds.
JOIN_P95_BOUND = 1.5


async def test_eight_join_eight_quickly(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--size", "640x480")
    result = await join_times(sender.url, "whep", VIEWERS, JOINING, rounds=1)
    joins = result["joins_s"]
    print(
        f"\n{JOINING} joining {VIEWERS}: first frame p50 {result['p50_s'] * 1000:.0f} ms, "
        f"p95 {result['p95_s'] * 1000:.0f} ms, max {result['max_s'] * 1000:.0f} ms"
    )
    assert len(joins) == JOINING and len(result["first_viewers_s"]) == VIEWERS
    assert result["p95_s"] <= JOIN_P95_BOUND, joins


async def _drain(track) -> None:
    while True:
        await track.recv()


async def test_a_newcomer_starts_at_a_recent_keyframe_or_gets_a_fresh_one() -> None:
    async def camera() -> TestPattern:
        return TestPattern(640, 480, 30)

    async with SharedSource(camera) as source:
        encoder = SharedEncoder(source, PROFILES["vp8"], fps=30)
        first = encoder.subscribe()
        keyframe = await asyncio.wait_for(first.recv(), 10)
        assert keyframe.is_keyframe  # the encoder's first frame
        readers = [asyncio.create_task(_drain(first))]
        try:
            # Right after a keyframe: the newcomer starts from it, and none is asked for.
            second = encoder.subscribe()
            assert await asyncio.wait_for(second.recv(), 10) is keyframe
            readers.append(asyncio.create_task(_drain(second)))
            [tier] = encoder.tier_encoders.values()
            assert not tier.keyframe_wanted
            # Once it is older than the interval, a newcomer gets a fresh one at once.
            ticks = source.subscribe()  # a frame interval per frame
            while time.monotonic() - tier.recent_since < KEYFRAME_INTERVAL_MIN:
                await asyncio.wait_for(ticks.recv(), 10)
            ticks.stop()
            keyframes = encoder.keyframes
            joined = time.monotonic()
            third = encoder.subscribe()
            fresh = await asyncio.wait_for(third.recv(), 10)
            assert fresh.is_keyframe and encoder.keyframes == keyframes + 1
            captured = capture_time(fresh)
            assert captured is not None and captured > joined - 1 / 30
        finally:
            for reader in readers:
                reader.cancel()
            await encoder.close()
