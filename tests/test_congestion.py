"""The per-viewer bandwidth estimate (``sender.congestion``) and the RTCP it is fed
(``common.aiortc_ext.rtcp_feedback``), with real RTCP packets: built, serialized and
parsed back as aiortc's RTCP handler receives them, then through a live connection."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import AsyncIterator

import pytest
from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    RtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSenderInfo,
    RtcpSrPacket,
    RtpPacket,
    pack_remb_fci,
    unpack_remb_fci,
)

from common.aiortc_ext import private, rtcp_feedback
from common.aiortc_ext.sender_report_tap import ntp_time
from receiver import Receiver
from sender import congestion
from sender.congestion import BandwidthEstimator
from sender.encoding import EncodedTrack

from .helpers import wait_until

SSRC = 0x1234_5678
MAX = 1_500_000


def wire(packet: RtcpRrPacket | RtcpPsfbPacket | RtcpRtpfbPacket | RtcpSrPacket):
    """``packet`` as sent and parsed back: what aiortc's handler gets."""
    [parsed] = RtcpPacket.parse(bytes(packet))
    return parsed


def report(
    fraction: float,
    lsr: int = 0,
    dlsr: int = 0,
    packets_lost: int = 0,
    highest: int = 1000,
) -> RtcpReceiverInfo:
    """A receiver report block about our stream: ``fraction`` of its packets lost
    (``packets_lost`` in all, up to sequence number ``highest``)."""
    packet = wire(
        RtcpRrPacket(
            ssrc=1,
            reports=[
                RtcpReceiverInfo(
                    ssrc=SSRC,
                    fraction_lost=min(255, round(fraction * 256)),
                    packets_lost=packets_lost,
                    highest_sequence=highest,
                    jitter=0,
                    lsr=lsr,
                    dlsr=dlsr,
                )
            ],
        )
    )
    [block] = packet.reports
    return block


def remb(bitrate: int) -> int:
    """A REMB's bitrate as it arrives (its mantissa and exponent round it)."""
    packet = wire(
        RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=1, media_ssrc=0, fci=pack_remb_fci(bitrate, [SSRC]))
    )
    value, ssrcs = unpack_remb_fci(packet.fci)
    assert ssrcs == [SSRC]
    return value


def feed(
    estimator: BandwidthEstimator, block: RtcpReceiverInfo, rtt: float | None, now: float
) -> None:
    estimator.on_report(block.fraction_lost / 256, rtt, now)


def sending(estimator: BandwidthEstimator, bitrate: int, start: float, end: float) -> None:
    """What the viewer was sent: ``bitrate`` in 30 frames a second from start to end."""
    t = start
    while t < end:
        estimator.on_sent(bitrate // 8 // 30, t)
        t += 1 / 30


def test_before_any_feedback_the_start_bitrate() -> None:
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    assert estimator.estimate == 300_000
    estimator.on_remb(remb(2_000_000))
    assert estimator.estimate == MAX  # REMB is the cap; loss has not cut anything
    estimator.on_remb(remb(400_000))
    assert abs(estimator.estimate - 400_000) < 400_000 * 0.01


def test_a_peer_without_remb_gets_the_loss_based_estimate() -> None:
    """Receiver reports but no REMB (not every WHEP client sends one): after NO_REMB
    seconds the estimate grows from the start bitrate by GCC's loss rule alone."""
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    for second in range(int(congestion.NO_REMB)):
        feed(estimator, report(0.0), 0.01, now=float(second))
        assert estimator.estimate == 300_000 and not estimator.informed
    feed(estimator, report(0.0), 0.01, now=congestion.NO_REMB)
    assert estimator.informed and estimator.estimate == 300_000
    feed(estimator, report(0.0), 0.01, now=congestion.NO_REMB + 1)
    assert estimator.estimate == pytest.approx(300_000 * congestion.INCREASE_PER_SECOND, rel=0.01)
    estimator.on_remb(remb(250_000))  # a REMB after all: the cap again
    assert estimator.estimate == pytest.approx(250_000, rel=0.01)


def test_heavy_loss_cuts_to_what_was_sent_less_half_the_loss() -> None:
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 1_000_000, 0.0, 2.0)
    feed(estimator, report(0.30), 0.01, now=2.0)
    assert estimator.estimate == pytest.approx(1_000_000 * (1 - 0.5 * 0.30), rel=0.05)
    assert estimator.congested(2.5) and not estimator.congested(3.5)
    # Another report too soon (less than 300 ms + RTT): no second cut.
    before = estimator.estimate
    feed(estimator, report(0.30), 0.01, now=2.2)
    assert estimator.estimate == before
    feed(estimator, report(0.30), 0.01, now=2.4)
    assert estimator.estimate < before


def test_moderate_loss_holds_and_little_loss_grows_eight_percent_a_second() -> None:
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 500_000, 0.0, 1.0)
    feed(estimator, report(0.5), None, now=1.0)  # down to ~375 kbit/s
    low = estimator.estimate
    feed(estimator, report(0.05), None, now=2.0)  # between 2% and 10%: hold
    assert estimator.estimate == low
    feed(estimator, report(0.0), None, now=3.0)
    feed(estimator, report(0.01), None, now=4.0)
    # growth counts from the hold at 2 s: two seconds
    assert estimator.estimate == pytest.approx(low * congestion.INCREASE_PER_SECOND**2, rel=0.01)
    for second in range(5, 60):
        feed(estimator, report(0.0), None, now=float(second))
    assert estimator.estimate == MAX  # never above the maximum


def test_random_loss_in_small_reports_does_not_ratchet_the_estimate_down() -> None:
    """5% random loss, reports of 35 packets (300 kbit/s): one report in ten says more
    than 10%, and each cut would stay (2-10% holds). Only loss clearly above 10% for the
    report's packet count cuts; a full queue's 40% cuts at once, as does a report whose
    packet count is not known."""
    rng = random.Random(7)
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 300_000, 0.0, 121.0)
    high = 0
    for second in range(1, 121):
        lost = sum(rng.random() < 0.05 for _ in range(35))
        high += lost / 35 > congestion.LOSS_HIGH
        estimator.on_report(lost / 35, 0.01, float(second), packets=35)
    assert high >= 5  # the samples did come out above 10% often
    assert estimator.estimate == MAX and estimator.congested_at is None  # never cut
    assert not congestion.significant_loss(7 / 35, 35)
    assert congestion.significant_loss(8 / 35, 35)
    assert not congestion.significant_loss(16 / 100, 100)
    assert congestion.significant_loss(17 / 100, 100)
    estimator.on_report(0.4, 0.01, 122.0, packets=35)
    assert estimator.estimate < 300_000 * 0.85
    assert congestion.significant_loss(0.11, None)


def first_report(lost: int, expected: int, highest: int = 1000) -> RtcpReceiverInfo:
    """A receiver's first report (RFC 3550, as aiortc computes it): ``lost`` of the
    ``expected`` packets since the stream's start, the fraction rounded down."""
    return report(((lost << 8) // expected) / 256, packets_lost=lost, highest=highest)


def test_the_packets_a_report_counts() -> None:
    """The first report's count comes from its cumulative loss; later ones' from the
    highest sequence numbers, across aiortc's 16-bit wrap as across an extended one."""
    assert congestion.reported_packets(first_report(4, 35), None) == 35
    assert congestion.reported_packets(first_report(30, 300), None) == 301
    assert congestion.reported_packets(first_report(0, 35), None) is None  # no loss to judge
    assert congestion.reported_packets(first_report(0, 35, highest=5), 65530) == 11
    assert congestion.reported_packets(first_report(0, 35, highest=70_005), 65530) == 4475


def test_random_loss_in_a_first_report_does_not_cut() -> None:
    """5% random loss: a first report of 35 packets says more than 10% one time in ten.
    It cut the estimate (a first report's packet count was not known, so any loss above
    10% counted) and moved a 640x480 viewer to the reduced tier 1.2 s after it joined."""
    rng = random.Random(11)
    high = 0
    for _ in range(300):
        lost = sum(rng.random() < 0.05 for _ in range(35))
        high += lost / 35 > congestion.LOSS_HIGH
        estimator = BandwidthEstimator(300_000, 100_000, MAX)
        sending(estimator, 300_000, 0.0, 1.2)
        block = first_report(lost, 35)
        packets = congestion.reported_packets(block, None)
        estimator.on_report(block.fraction_lost / 256, 0.01, 1.2, packets=packets)
        assert estimator.congested_at is None, f"{lost} of 35 lost cut the estimate"
    assert high >= 15  # the samples did come out above 10% often
    block = first_report(14, 35)  # a link narrower than the start bitrate: cut at once
    estimator.on_report(
        block.fraction_lost / 256, 0.01, 2.4, congestion.reported_packets(block, None)
    )
    assert estimator.congested_at == 2.4


def test_a_growing_queue_cuts_the_estimate() -> None:
    """The round-trip time over its recent minimum: a queue in front of the bottleneck."""
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 800_000, 0.0, 3.0)
    feed(estimator, report(0.0), 0.002, now=1.0)
    feed(estimator, report(0.0), 0.002 + congestion.QUEUE_DELAY / 2, now=2.0)
    assert not estimator.congested(2.0)
    feed(estimator, report(0.0), 0.002 + congestion.QUEUE_DELAY * 2, now=3.0)
    assert estimator.queue_delay == pytest.approx(congestion.QUEUE_DELAY * 2)
    assert estimator.estimate == pytest.approx(800_000 * congestion.DELAY_DECREASE, rel=0.05)
    assert estimator.congested(3.0)


def test_remb_caps_and_the_estimate_stays_within_limits() -> None:
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(50_000))
    assert estimator.estimate == 100_000
    sending(estimator, 200_000, 0.0, 1.0)
    feed(estimator, report(255 / 256), None, now=1.0)  # all but lost (255/256: the most RTCP says)
    assert estimator.estimate == 100_000


def test_round_trip_time_from_an_echoed_sender_report() -> None:
    ntp = (3_900_000_000 << 32) | 0x8000_0000
    sr = wire(
        RtcpSrPacket(
            ssrc=SSRC,
            sender_info=RtcpSenderInfo(
                ntp_timestamp=ntp, rtp_timestamp=0, packet_count=0, octet_count=0
            ),
        )
    )
    lsr = (sr.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF
    sent = {lsr: 100.0}
    block = report(0.0, lsr=lsr, dlsr=int(0.25 * 65536))  # the receiver held it 250 ms
    assert rtcp_feedback.round_trip_time(block, sent, now=100.4) == pytest.approx(0.15, abs=1e-3)
    assert rtcp_feedback.round_trip_time(report(0.0), sent, now=100.4) is None  # echoes none


def test_a_packet_is_resent_at_most_once_per_round_trip() -> None:
    resends = rtcp_feedback.Resends()
    resends.rtt = 0.2
    nack = wire(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=SSRC, lost=[10, 11, 12]))
    assert resends.filter(nack, now=0.0).lost == [10, 11, 12]
    again = wire(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=SSRC, lost=[11, 12, 13]))
    assert resends.filter(again, now=0.1).lost == [13]  # 11 and 12 went out 100 ms ago
    later = 0.1 + 0.2 * rtcp_feedback.RESEND_RTT_FACTOR + 0.01  # a round trip after 13
    assert resends.filter(again, now=later).lost == [11, 12, 13]
    assert resends.skipped == 2
    lan = rtcp_feedback.Resends()
    lan.rtt = 0.001  # on a LAN the floor applies: a lost resend can be asked for again soon
    assert lan.filter(nack, now=0.0).lost == [10, 11, 12]
    assert lan.filter(nack, now=rtcp_feedback.RESEND_MIN_INTERVAL).lost == [10, 11, 12]


@contextlib.asynccontextmanager
async def watching(
    sender_factory,
) -> AsyncIterator[tuple[AsyncIterator, EncodedTrack, RTCRtpSender]]:
    """A viewer of a real sender, once its receiver reports have given the sender a round
    trip: its frames, its track and RTP sender at the sender."""
    sender = await sender_factory()
    async with Receiver(sender.url, connect_timeout=30) as rx:
        frames = rx.frames()
        await anext(frames)
        [session] = sender.sessions.live()
        track = session.track
        assert track is not None
        rtp_sender = session.pc.getSenders()[0]
        assert rtcp_feedback.applied(rtp_sender)
        # Receiver reports come every 0.5-1.5 s; one echoing a sender report has an RTT.
        await wait_until(lambda: track.estimator.rtt is not None, within=20, what="an RTT")
        yield frames, track, rtp_sender


async def test_a_viewers_reports_reach_its_estimate(sender_factory) -> None:
    """Over a real connection: aiortc's receiver reports arrive with the round-trip time
    they measure, and a lossy report (through the sender's RTCP handler) cuts the
    viewer's estimate."""
    async with watching(sender_factory) as (frames, track, rtp_sender):
        assert 0 <= track.estimator.rtt < 0.5
        assert track.estimator.fraction_lost == 0
        before = track.estimate
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # let it send for a while
            await anext(frames)
        lossy = wire(
            RtcpRrPacket(
                ssrc=1,
                reports=[
                    RtcpReceiverInfo(
                        ssrc=rtp_sender._ssrc,
                        fraction_lost=128,
                        packets_lost=50,
                        highest_sequence=1000,
                        jitter=0,
                        lsr=0,
                        dlsr=0,
                    )
                ],
            )
        )
        await rtp_sender._handle_rtcp_packet(lossy)
        assert track.estimator.fraction_lost == 0.5
        assert track.estimate < before
        await frames.aclose()


def test_first_nacks_with_a_queue_cut_to_what_got_through() -> None:
    """A link that drops: the queue fills, most packets are lost, and the first NACKs
    show both (a round trip far over the reports' least) long before the next receiver
    report: the estimate goes to what got through, at once."""
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 1_300_000, 0.0, 3.0)
    feed(estimator, report(0.0), 0.002, now=1.0)  # the open link's round trip
    # 0.4 s after the drop: 70% of packets 100-199 asked for, 300 ms after they left.
    lost = [seq for seq in range(100, 200) if seq % 10 >= 3]
    estimator.on_nack(lost[:3], 0.3, now=3.0)  # too few packets covered: no loss figure...
    assert estimator.queue_delay == pytest.approx(0.298)
    assert estimator.estimate == pytest.approx(1_300_000 * congestion.DELAY_DECREASE, rel=0.05)
    estimator.on_nack(lost[3:], 0.31, now=3.1)  # ...then a figure, with the queue
    got_through = 1 - len(lost) / (lost[-1] - lost[0] + 1)  # 70 of 103-199 lost
    assert estimator.estimate == pytest.approx(1_300_000 * got_through, rel=0.1)
    assert estimator.congested(3.1)
    # For a round trip the NACKs ask for packets lost before that cut: no second cut...
    cut = estimator.estimate
    estimator.on_nack(list(range(300, 340)), 0.3, now=3.39)
    assert estimator.estimate == cut
    # ...after it, packets lost at the rate sent since then count
    sending(estimator, 300_000, 3.1, 3.45)
    estimator.on_nack([seq for seq in range(400, 440) if seq % 10], 0.3, now=3.45)
    assert estimator.estimate < cut


def test_random_loss_in_nacks_does_not_cut() -> None:
    """5% of packets lost at random, each asked for as its gap is found, no queue: the
    NACKs' loss figure stays under the cut (as a report's would)."""
    estimator = BandwidthEstimator(300_000, 100_000, MAX)
    estimator.on_remb(remb(MAX))
    sending(estimator, 1_000_000, 0.0, 5.0)
    feed(estimator, report(0.0), 0.002, now=1.0)
    before = estimator.estimate
    rng = random.Random(5)
    now = 1.0
    for seq in range(4000):  # 100 packets a second from 1 s on
        now += 0.01
        if rng.random() < 0.05:
            estimator.on_nack([seq % 2**16], 0.012, now=now)
    assert estimator.estimate == before and not estimator.congested(now)


def test_the_loss_first_nacks_show() -> None:
    window = congestion.NackLoss()
    window.add([7], now=0.0)
    assert window.fraction() is None  # one packet: no figure
    window.add([65530, 2], now=0.1)  # sequence numbers wrap: 65530..7 is 14 packets
    assert window.fraction() is None
    window.add([20], now=0.2)  # 65530..20: 27 packets, 4 of them lost
    assert window.fraction() == (pytest.approx(4 / 27), 27)
    window.add([21], now=0.2 + congestion.NACK_WINDOW - 0.05)  # the first three expire
    assert window.fraction() is None


def test_resends_wait_for_the_round_trip_the_nacks_show() -> None:
    """The reports' round trip is the open link's (2 ms); the NACKs show 300 ms: a packet
    is resent again only once that round trip has passed, not every 30 ms."""
    resends = rtcp_feedback.Resends()
    resends.rtt = 0.002
    nack = wire(RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=SSRC, lost=[10, 11]))
    assert resends.first_asked(nack.lost) == [10, 11]
    assert resends.nack_round_trip(0.3, now=0.0) == 0.3
    assert resends.filter(nack, now=0.0).lost == [10, 11]
    assert resends.first_asked(nack.lost) == []
    assert resends.filter(nack, now=0.1).lost == []  # the resends are still on their way
    assert resends.filter(nack, now=0.3 * rtcp_feedback.RESEND_RTT_FACTOR - 0.01).lost == []
    assert resends.filter(nack, now=0.3 * rtcp_feedback.RESEND_RTT_FACTOR + 0.01).lost == [10, 11]
    # The estimate judges a queue by the last 200 ms only; the resends keep their pace for
    # a second (the queue still drains once new packets stop being lost)...
    assert resends.nack_round_trip(None, now=rtcp_feedback.NACK_RTT_WINDOW + 0.01) is None
    assert resends.filter(nack, now=0.7).lost == []
    # ...then the reports' round trip again
    later = rtcp_feedback.NACK_RTT_HOLD + 0.01
    assert resends.filter(nack, now=later).lost == [10, 11]


def test_the_time_since_a_packet_left_from_its_abs_send_time() -> None:
    ntp = ntp_time(1_800_000_000.25)
    packet = RtpPacket(sequence_number=70_000 % 2**16)
    # sent 0.3 s before, just before abs-send-time's 64 s wrap
    packet.extensions.abs_send_time = ((ntp >> 14) - int(0.3 * 2**18)) % 2**24
    history = {packet.sequence_number % RTP_HISTORY_SIZE: packet}
    age = rtcp_feedback.sent_ago(history, packet.sequence_number, ntp)
    assert age == pytest.approx(0.3, abs=1e-5)
    assert rtcp_feedback.sent_ago(history, packet.sequence_number + RTP_HISTORY_SIZE, ntp) is None
    assert rtcp_feedback.sent_ago({}, 5, ntp) is None


def test_a_nacks_round_trip_is_timed_from_the_packet_that_showed_the_gap() -> None:
    """Packets 10-11 left a frame (200 ms at 5 fps) before packet 12, whose arrival
    showed them missing; the NACK came 50 ms after 12 left: a 50 ms round trip."""
    now = time.time()
    history = {}
    for seq, ago in ((10, 0.25), (11, 0.25), (12, 0.05)):
        packet = RtpPacket(sequence_number=seq)
        packet.extensions.abs_send_time = (ntp_time(now - ago) >> 14) % 2**24
        history[seq] = packet
    rtt = rtcp_feedback.nack_round_trip(history, [10, 11])
    assert rtt == pytest.approx(0.05, abs=0.02)
    assert rtcp_feedback.nack_round_trip(history, [12]) is None  # 13 not sent yet


async def test_a_viewers_nacks_reach_its_estimate(sender_factory) -> None:
    """Over a real connection, NACKs through the sender's RTCP handler (as aiortc receives
    them): one for most of the packets just sent shows a round trip of milliseconds and
    cuts nothing (loss without a queue is for the receiver reports); one for packets that
    left 0.4 s before shows a queue, and cuts the viewer's estimate at once."""
    async with watching(sender_factory) as (frames, track, rtp_sender):
        started = time.monotonic()
        while time.monotonic() - started < 2:  # let it send for a while
            await anext(frames)
        before = track.estimate
        reports: list[tuple[list[int], float | None]] = []
        report = track.nack_report

        def noted(lost: list[int], rtt: float | None) -> None:
            reports.append((lost, rtt))
            report(lost, rtt)

        track.nack_report = noted  # what rtcp_feedback calls, seen on its way

        async def nack(newest: int) -> list[int]:
            lost = [(newest - 39 + i) % 2**16 for i in range(40) if i % 5]  # 32 of 40
            packet = RtcpRtpfbPacket(
                fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=rtp_sender._ssrc, lost=lost
            )
            await rtp_sender._handle_rtcp_packet(wire(packet))
            return lost

        history = private(rtp_sender, RTCRtpSender, "rtp_history")
        ntp = ntp_time(time.time())
        ages = {
            p.sequence_number: rtcp_feedback.sent_ago(history, p.sequence_number, ntp)
            for p in history.values()
        }
        newest = min(ages, key=lambda seq: ages[seq])
        old = [seq for seq, age in ages.items() if age >= 0.4 and (newest - seq) % 2**16 >= 40]
        assert old, f"aiortc's history holds too little: {sorted(ages.values())}"
        lost = await nack(newest)
        [(first, rtt)] = reports
        assert first == lost and rtt is not None and rtt < congestion.QUEUE_DELAY
        assert track.estimate == before and not track.estimator.congested()
        await asyncio.sleep(rtcp_feedback.NACK_RTT_WINDOW)  # that round trip is forgotten
        lost = await nack(min(old, key=lambda seq: ages[seq]))
        assert reports[1][0] == lost and (reports[1][1] or 0) >= 0.35
        assert track.estimate < before and track.estimator.congested()
        await rtp_sender._handle_rtcp_packet(
            wire(
                RtcpRtpfbPacket(fmt=RTCP_RTPFB_NACK, ssrc=1, media_ssrc=rtp_sender._ssrc, lost=lost)
            )
        )
        assert reports[2][0] == []  # asked again: not a first request
        await frames.aclose()
