"""Our receiver feeds its bandwidth estimator after the frame is through
(``common.aiortc_ext.remb_later``): the same estimate from the same packets, its REMBs
still reach a real sender, and the packet's own handling no longer waits for it."""

import asyncio

from aiortc.rate import RemoteBitrateEstimator

from common.aiortc_ext import remb_later
from common.aiortc_ext.remb_later import FEED_DELAY, LaterEstimate
from receiver import Receiver

from .helpers import wait_until

PACKETS_PER_FRAME = 3


def packets(frames: int) -> list[dict[str, int]]:
    """What aiortc gives the estimator for each packet: 30 fps, three packets a frame, on
    time for 5 s, then each frame later than the last (a queue building up: overuse)."""
    figures = []
    delay = 0.0
    for frame in range(frames):
        sent_ms = frame * 1000 / 30
        if frame > 150:
            delay += 4.0
        for i in range(PACKETS_PER_FRAME):
            at_ms = sent_ms + i * 0.5
            figures.append(
                {
                    "abs_send_time": int(at_ms / 1000 * (1 << 18)) & 0xFFFFFF,
                    "arrival_time_ms": round(at_ms + 20 + delay),
                    "payload_size": 1200,
                    "ssrc": 1234,
                }
            )
    return figures


async def test_the_same_estimate_from_the_same_packets() -> None:
    """Fed a frame later, aiortc's estimator reaches the estimates it reaches at once;
    of those made within one feeding, the last is reported."""
    direct, deferred = RemoteBitrateEstimator(), RemoteBitrateEstimator()
    reported: list[int] = []

    async def report(remb: tuple[int, list[int]]) -> None:
        reported.append(remb[0])

    later = LaterEstimate(deferred.add, report)
    made: list[int] = []  # what aiortc sends at once, per frame: the last of the frame's
    for frame in range(300):
        made_now = None
        for figures in packets(300)[frame * PACKETS_PER_FRAME : (frame + 1) * PACKETS_PER_FRAME]:
            if (remb := direct.add(**figures)) is not None:
                made_now = remb[0]
            later.note(**figures)
        later.feed()  # what the timer does
        if made_now is not None:
            made.append(made_now)
    await asyncio.sleep(0)  # the reports' tasks run
    assert later.fed == 300 * PACKETS_PER_FRAME and later.reports == len(reported)
    assert reported == made and len(made) > 3
    assert min(made) < made[0], "the overuse should have lowered the estimate"
    assert deferred.rate_control.current_bitrate == direct.rate_control.current_bitrate


async def test_notes_are_fed_after_the_delay() -> None:
    estimator = RemoteBitrateEstimator()

    async def report(remb: tuple[int, list[int]]) -> None:
        pass

    later = LaterEstimate(estimator.add, report)
    for figures in packets(2):
        later.note(**figures)  # as aiortc calls it: nothing fed yet
    assert later.fed == 0 and not estimator.ssrcs
    await asyncio.sleep(FEED_DELAY * 3)
    assert later.fed == 2 * PACKETS_PER_FRAME and estimator.ssrcs == {1234: 20 + 34}
    await later.close()


async def test_a_real_sender_still_gets_our_estimate(sender) -> None:
    async with Receiver(sender.url, connect_timeout=30) as rx:
        frames = 0
        async for _ in rx.frames():
            frames += 1
            if frames >= 30:
                break
        assert rx.connection is not None
        later = rx.connection.remb_later
        assert later is not None and remb_later.applied(rx.connection.pc.getReceivers()[0])
        [session] = sender.sessions.live()
        await wait_until(
            lambda: session.track.bitrate_estimate is not None, what="a REMB at the sender"
        )
        assert later.fed > frames and later.reports > 0
