"""Route a viewer's RTCP feedback to a shared encoder (aiortc 1.16.0).

Stock aiortc's ``RTCRtpSender`` acts on PLI/FIR by forcing a keyframe in its *own*
encoder and on REMB by setting its *own* encoder's bitrate, and keeps receiver reports to
itself (its stats). With encode-once fan-out (``sender.encoding``) our senders only
packetize packets, so all of it would be lost. ``apply()`` wraps ``_send_keyframe``,
``_handle_rtcp_packet`` and ``_send_rtcp`` on one ``RTCRtpSender`` (instance attributes:
other senders in the process are untouched) to also tell the target, the viewer's
``EncodedTrack``: keyframe requests, REMB estimates, and each receiver report block about
this sender's stream with the round-trip time it measures (from the sender reports we
sent: ``_send_rtcp`` is wrapped to note when each went out, since aiortc remembers only
the last one). A NACK also tells the target which packets it asks for the first time
and the round trip they show (below), sooner than any receiver report can.
``tests/test_encode_once.py`` (``test_rtcp_feedback_reaches_the_shared_
encoder``) and ``tests/test_congestion.py`` fail if an aiortc upgrade renames or stops
calling these.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict, deque
from typing import Protocol, cast

from aiortc import RTCRtpSender
from aiortc.rtp import (
    RTCP_PSFB_APP,
    RTCP_RTPFB_NACK,
    RTP_HISTORY_SIZE,
    AnyRtcpPacket,
    RtcpPsfbPacket,
    RtcpReceiverInfo,
    RtcpRrPacket,
    RtcpRtpfbPacket,
    RtcpSrPacket,
    RtpPacket,
    unpack_remb_fci,
)

from . import check, private
from .rtp_send import ntp_now
from .sender_report_tap import ABS_SEND_TIME_MASK, ABS_SEND_TIME_UNIT, abs_send_time

logger = logging.getLogger(__name__)

SENDER_REPORTS_KEPT = 16  # sender reports (about one a second) a receiver report may echo
RESEND_MIN_INTERVAL = 0.03  # seconds: a packet is resent at most once per this...
RESEND_RTT_FACTOR = 1.25  # ...or per this many round trips, whichever is longer
DEFAULT_RTT = 0.1  # until the first receiver report tells
RESENT_KEPT = 512  # sequence numbers remembered (aiortc keeps 128 packets to resend)
NACK_RTT_WINDOW = 0.2  # seconds: the least round trip NACKs showed over it tells a queue
NACK_RTT_HOLD = 1.0  # seconds the last round trip NACKs showed spaces resends


class FeedbackTarget(Protocol):
    """What a viewer's feedback is for (``sender.encoding.EncodedTrack``)."""

    def request_keyframe(self) -> None: ...

    def set_bitrate_estimate(self, bitrate: int) -> None: ...

    def receiver_report(self, report: RtcpReceiverInfo, rtt: float | None) -> None: ...

    def nack_report(self, lost: list[int], rtt: float | None) -> None: ...


def round_trip_time(
    report: RtcpReceiverInfo, sent: OrderedDict[int, float], now: float
) -> float | None:
    """RFC 3550 6.4.1: now - (when the echoed sender report left) - (how long the receiver
    held it). None when the report echoes no sender report we know of."""
    departed = sent.get(report.lsr) if report.lsr else None
    if departed is None:
        return None
    return max(0.0, now - departed - report.dlsr / 65536)


class Resends:
    """Which NACKed packets to resend: not one already resent within the last round trip.

    aiortc's receiver NACKs every packet still missing each time it notices a new gap,
    and ours asks again every 50 ms (``nack_retry``); aiortc's sender resends whatever is
    asked. Behind a full bottleneck queue the first resend is still queued when the next
    request comes, so each lost packet went out many times over and the resends alone
    filled the link (400 kbit/s, 300 ms queue: 1700 resent packets against 700 new ones in
    20 s, 1.5 s of delay). A resend is skipped when the same packet was resent less than
    ``max(RESEND_MIN_INTERVAL, RESEND_RTT_FACTOR * rtt)`` ago.

    The round trip is the receiver reports' (``rtt``) or, when higher, the last one a NACK
    showed within ``NACK_RTT_HOLD`` (``nack_round_trip``): when a link drops, the reports
    still carry the old round trip (1-10 ms against a 300 ms queue) for a second or more,
    and the resends of each lost packet went out every 30 ms, hundreds a second into the
    narrowed link. It is held for a second because once the sender has cut its rate the
    NACKs stop asking for new packets (and showing the round trip), while the queue still
    drains and the resends in it are still on their way."""

    def __init__(self) -> None:
        self.rtt = DEFAULT_RTT
        self.skipped = 0
        self._last: OrderedDict[int, float] = OrderedDict()  # sequence number -> resent at
        self._nack_rtts: deque[tuple[float, float]] = deque()  # (when, round trip)

    def first_asked(self, lost: list[int]) -> list[int]:
        """Those of ``lost`` no NACK asked for before (of the last ``RESENT_KEPT``)."""
        return [seq for seq in lost if seq not in self._last]

    def nack_round_trip(self, sample: float | None, now: float) -> float | None:
        """Keep ``sample`` (a round trip a NACK showed); the least of the last
        ``NACK_RTT_WINDOW``, what the estimate judges a queue by: a gap found late (a
        busy receiver) reads long."""
        if sample is not None:
            self._nack_rtts.append((now, sample))
        while self._nack_rtts and self._nack_rtts[0][0] < now - NACK_RTT_HOLD:
            self._nack_rtts.popleft()
        recent = [rtt for when, rtt in self._nack_rtts if when >= now - NACK_RTT_WINDOW]
        return min(recent, default=None)

    def _round_trip(self, now: float) -> float:
        """The reports' round trip, or the last a NACK showed within ``NACK_RTT_HOLD``."""
        held = self._nack_rtts[-1] if self._nack_rtts else None
        if held is None or held[0] < now - NACK_RTT_HOLD:
            return self.rtt
        return max(self.rtt, held[1])

    def filter(self, packet: RtcpRtpfbPacket, now: float | None = None) -> RtcpRtpfbPacket:
        now = time.monotonic() if now is None else now
        interval = max(RESEND_MIN_INTERVAL, RESEND_RTT_FACTOR * self._round_trip(now))
        wanted = []
        for seq in packet.lost:
            last = self._last.get(seq)
            if last is not None and now - last < interval:
                self.skipped += 1
                continue
            wanted.append(seq)
            self._last[seq] = now
            self._last.move_to_end(seq)
        while len(self._last) > RESENT_KEPT:
            self._last.popitem(last=False)
        return RtcpRtpfbPacket(
            fmt=packet.fmt, ssrc=packet.ssrc, media_ssrc=packet.media_ssrc, lost=wanted
        )


def sent_ago(history: dict[int, RtpPacket], seq: int, ntp: int) -> float | None:
    """Seconds since packet ``seq`` was sent (its abs-send-time against ``ntp``, the 64-bit
    NTP time now), if aiortc's history still holds it."""
    packet = history.get(seq % RTP_HISTORY_SIZE)
    if packet is None or packet.sequence_number != seq:
        return None
    sent = packet.extensions.abs_send_time
    if sent is None:
        return None
    return ((abs_send_time(ntp) - sent) & ABS_SEND_TIME_MASK) / ABS_SEND_TIME_UNIT


def nack_round_trip(history: dict[int, RtpPacket], lost: list[int]) -> float | None:
    """What a NACK's first requests show of the round trip: the receiver found each gap
    when the packet after it arrived, and asked at once, so the least time since the
    packet after any run of ``lost`` was sent. (Not since the lost ones were: at a few
    frames a second the packet after the last of a frame leaves a frame later.)"""
    ntp = ntp_now()
    asked = set(lost)
    after = [nxt for seq in lost if (nxt := (seq + 1) % 2**16) not in asked]
    ages = [age for seq in after if (age := sent_ago(history, seq, ntp)) is not None]
    return min(ages, default=None)


def apply(sender: RTCRtpSender, target: FeedbackTarget) -> None:
    """Tell ``target`` about this sender's keyframe requests, bandwidth estimates and
    receiver reports."""
    check(__name__)
    send_keyframe = sender._send_keyframe
    handle_rtcp = sender._handle_rtcp_packet
    send_rtcp = sender._send_rtcp
    history = cast(dict[int, RtpPacket], private(sender, RTCRtpSender, "rtp_history"))
    sent: OrderedDict[int, float] = OrderedDict()  # LSR (middle 32 bits of NTP) -> time
    resends = Resends()

    def _send_keyframe() -> None:
        send_keyframe()
        target.request_keyframe()

    async def _send_rtcp(packets: list[AnyRtcpPacket]) -> None:
        for packet in packets:
            if isinstance(packet, RtcpSrPacket):
                sent[(packet.sender_info.ntp_timestamp >> 16) & 0xFFFFFFFF] = time.time()
                while len(sent) > SENDER_REPORTS_KEPT:
                    sent.popitem(last=False)
        await send_rtcp(packets)

    async def _handle_rtcp_packet(packet: AnyRtcpPacket) -> None:
        if isinstance(packet, RtcpRtpfbPacket) and packet.fmt == RTCP_RTPFB_NACK:
            now = time.monotonic()
            lost = resends.first_asked(packet.lost)
            rtt = resends.nack_round_trip(nack_round_trip(history, lost), now)
            await handle_rtcp(resends.filter(packet, now))
            target.nack_report(lost, rtt)
            return
        await handle_rtcp(packet)
        if isinstance(packet, (RtcpRrPacket, RtcpSrPacket)):
            now = time.time()
            for report in packet.reports:
                if report.ssrc == sender._ssrc:
                    rtt = round_trip_time(report, sent, now)
                    if rtt is not None:
                        resends.rtt = rtt
                    target.receiver_report(report, rtt)
        elif isinstance(packet, RtcpPsfbPacket) and packet.fmt == RTCP_PSFB_APP:
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if sender._ssrc in ssrcs:
                target.set_bitrate_estimate(bitrate)

    # instance attributes: aiortc looks them up on the object, so only this sender changes
    sender._send_keyframe = _send_keyframe  # type: ignore[method-assign]  # per-object hook
    sender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]  # per-object hook
    sender._send_rtcp = _send_rtcp  # type: ignore[method-assign]  # per-object hook


def applied(sender: RTCRtpSender) -> bool:
    return all(
        name in vars(sender) for name in ("_handle_rtcp_packet", "_send_keyframe", "_send_rtcp")
    )
