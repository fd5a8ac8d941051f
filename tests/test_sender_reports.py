"""``common.aiortc_ext.sender_reports`` and ``sender_report_tap`` (aiortc 1.16.0): the
sender's RTCP reports speak of the capture clock, and the receiver reads them. Fails if
an aiortc upgrade renames what they rely on or stops honouring it."""

import datetime
import statistics
from typing import cast

import aiortc.clock
import pytest
from aiortc import RTCPeerConnection, RTCRtpReceiver
from aiortc.rtp import RtcpSenderInfo, RtcpSrPacket

from common import stamp
from common.aiortc_ext import sender_report_tap, sender_reports
from receiver import Receiver
from receiver.audio import Lipsync
from receiver.stats import read_stamp
from sender.audio import AudioSpec

from .helpers import wait_until


async def test_reports_put_each_frame_at_its_capture_time(sender_factory) -> None:
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    errors_ms = []
    async with Receiver(sender.url) as rx:
        session = sender.sessions.live()[0]
        senders = [t.sender for t in session.pc.getTransceivers()]
        assert len(senders) == 2 and all(map(sender_reports.applied, senders))
        assert rx.connection is not None and rx.connection.audio is not None
        sync = rx.connection.audio.sync
        async for frame in rx.frames():
            found = read_stamp(frame)
            wall = sync.video.wall_time(frame.pts) if sync is not None else None
            if found is None or wall is None:
                continue  # before the first report
            reported_us = round(wall * 1e6) % stamp.MODULUS
            errors_ms.append(((reported_us - found.capture_us) % stamp.MODULUS) / 1000)
            if len(errors_ms) == 60:
                break
    errors_ms = [e - stamp.MODULUS / 1000 if e > stamp.MODULUS / 2000 else e for e in errors_ms]
    # aiortc's own reports pair an RTP time with the moment its packet was *sent*: every
    # frame would look captured later by its encode and send time (several ms).
    assert abs(statistics.median(errors_ms)) < 1.0, errors_ms


async def test_a_step_of_the_wall_clock_leaves_the_reports_in_line(
    sender_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each report's NTP and RTP times come from one reading of the monotonic clock. aiortc
    reads the wall clock for every report: when it steps (or a stall falls between two
    reads), one stream's reports move against the other's until both report again, and
    a recording put audio that far off its video."""
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    async with Receiver(sender.url) as rx:
        assert rx.connection is not None and rx.connection.audio is not None
        sync = rx.connection.audio.sync
        assert isinstance(sync, Lipsync)
        taps = (sync.video, sync.audio)
        await wait_until(lambda: all(t.last is not None for t in taps), 30, "sender reports")
        before = [(t.last, t.reports) for t in taps]
        stock = aiortc.clock.current_datetime
        step = datetime.timedelta(milliseconds=60)
        monkeypatch.setattr(aiortc.clock, "current_datetime", lambda: stock() + step)
        counts = [n for _, n in before]
        await wait_until(
            lambda: all(t.reports >= n + 2 for t, n in zip(taps, counts, strict=True)),
            30,
            "two more reports of each stream",
        )
        for tap, (first, _) in zip(taps, before, strict=True):
            assert first is not None and tap.last is not None
            rtp = (tap.last.rtp - first.rtp) % sender_report_tap.RTP_WRAP / tap.clock_rate
            assert abs((tap.last.wall - first.wall) - rtp) < 0.002, (first, tap.last)


async def test_other_peer_connections_keep_stock_reports(sender_factory) -> None:
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    plain = RTCPeerConnection()
    try:
        transceiver = plain.addTransceiver("audio", direction="sendonly")
        assert not sender_reports.applied(transceiver.sender)
        async with Receiver(sender.url):
            assert not sender_reports.applied(transceiver.sender)
    finally:
        await plain.close()


def test_a_report_before_any_packet_is_skipped() -> None:
    """aiortc 1.16 sends reports before its first packet with NTP 0 and RTP 0: mapped,
    they put a stalled start's first audio hours away, and the recorder kept none after."""
    tap = sender_report_tap.ReportTap(cast(RTCRtpReceiver, None), 48000)

    def report(ntp: int, rtp: int, packets: int) -> RtcpSrPacket:
        info = RtcpSenderInfo(ntp_timestamp=ntp, rtp_timestamp=rtp, packet_count=packets,
                              octet_count=packets * 100)  # fmt: skip
        return RtcpSrPacket(ssrc=1, sender_info=info)

    tap.received(report(0, 0, 0))
    assert tap.last is None and tap.reports == 0
    ntp = (sender_report_tap.NTP_EPOCH_OFFSET + 1_700_000_000) << 32
    tap.received(report(ntp, 1234, 5))
    assert tap.last == sender_report_tap.Report(1_700_000_000.0, 1234) and tap.reports == 1
