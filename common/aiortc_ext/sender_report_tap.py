"""A receiver's RTCP sender reports, and its RTP timestamp origin (aiortc 1.16.0).

To put a stream's frames on the sender's wall clock (lip sync between audio and video) a
receiver needs the sender's reports (NTP time, RTP timestamp) and the frames' own RTP
timestamps. aiortc 1.16.0's ``RTCRtpReceiver`` keeps only the middle bits of the last
report's NTP time (for the round-trip time) and hands frames on with timestamps counted
from the first frame (its private ``TimestampMapper``). ``tap()`` wraps one receiver's
``_handle_rtcp_packet`` (an instance attribute: every other receiver is untouched) to
keep the last full report, and reads the mapper's origin to turn a frame's timestamp
back into the RTP timestamp the reports speak of. A report sent before any packet (aiortc
fills it with NTP 0 and RTP 0) says nothing and is skipped.
``tests/test_sender_reports.py`` fails if an upgrade renames what this relies on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import TimestampMapper
from aiortc.rtp import RtcpSrPacket

from . import check, private

logger = logging.getLogger(__name__)

RTP_WRAP = 1 << 32
NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900 (NTP) to 1970 (Unix)
ABS_SEND_TIME_MASK = (1 << 24) - 1
ABS_SEND_TIME_UNIT = 1 << 18  # of a second


def ntp_time(unix_seconds: float) -> int:
    """A Unix time as a 64-bit NTP timestamp (32 bits of seconds since 1900, 32 of fraction)."""
    seconds = unix_seconds + NTP_EPOCH_OFFSET
    whole = int(seconds)
    return (whole << 32) | int((seconds - whole) * RTP_WRAP)


def abs_send_time(ntp: int) -> int:
    """The abs-send-time header extension of a 64-bit NTP time: 24 bits of 6.18
    fixed-point seconds, wrapping every 64 s."""
    return (ntp >> 14) & ABS_SEND_TIME_MASK


@dataclass(frozen=True)
class Report:
    """One sender report: the sender's wall-clock time (Unix seconds) of RTP ``rtp``."""

    wall: float
    rtp: int


class ReportTap:
    """The last sender report of one receiver's stream, and that stream's RTP origin."""

    def __init__(self, receiver: RTCRtpReceiver, clock_rate: int) -> None:
        self._receiver = receiver
        self.clock_rate = clock_rate
        self.last: Report | None = None
        self.reports = 0

    def received(self, packet: RtcpSrPacket) -> None:
        info = packet.sender_info
        if info.packet_count == 0 or info.ntp_timestamp == 0:
            # aiortc 1.16 reports before its first packet: NTP 0, RTP 0 (nothing to map;
            # mapped anyway, a stalled start put the first audio hours away)
            logger.debug("sender report before any packet: ignored")
            return
        wall = (info.ntp_timestamp >> 32) - NTP_EPOCH_OFFSET
        wall_f = wall + (info.ntp_timestamp & 0xFFFFFFFF) / RTP_WRAP
        self.last = Report(wall_f, info.rtp_timestamp)
        self.reports += 1
        logger.debug("sender report: wall %.6f rtp %d", wall_f, info.rtp_timestamp)

    def rtp_origin(self) -> int | None:
        """The RTP timestamp of the stream's first frame (aiortc counts from it)."""
        mapper = private(self._receiver, RTCRtpReceiver, "timestamp_mapper")
        assert isinstance(mapper, TimestampMapper)
        origin = getattr(mapper, "_origin", None)
        return origin if isinstance(origin, int) else None

    def timestamp_at(self, wall: float) -> int | None:
        """The (aiortc-mapped) timestamp of the sender's wall-clock instant ``wall``, on
        the scale of this stream's frames; None before the first report and frame."""
        mapper = private(self._receiver, RTCRtpReceiver, "timestamp_mapper")
        assert isinstance(mapper, TimestampMapper)
        if self.last is None or mapper._origin is None or mapper._last is None:
            return None
        rtp = self.last.rtp + round((wall - self.last.wall) * self.clock_rate)
        # aiortc maps from its last timestamp (its origin carries the wraps so far).
        delta = (rtp - mapper._last) % RTP_WRAP
        if delta >= RTP_WRAP // 2:
            delta -= RTP_WRAP
        return mapper._last - mapper._origin + delta

    def wall_time(self, timestamp: int) -> float | None:
        """The sender's wall-clock time of a frame whose (aiortc-mapped) timestamp is
        ``timestamp``; None before the first report."""
        origin = self.rtp_origin()
        if self.last is None or origin is None:
            return None
        rtp = (origin + timestamp) % RTP_WRAP
        delta = (rtp - self.last.rtp) % RTP_WRAP
        if delta >= RTP_WRAP // 2:
            delta -= RTP_WRAP
        return self.last.wall + delta / self.clock_rate


def tap(receiver: RTCRtpReceiver, clock_rate: int) -> ReportTap:
    """Keep this receiver's sender reports; call before it receives."""
    check(__name__)
    mapper = private(receiver, RTCRtpReceiver, "timestamp_mapper")
    if not isinstance(mapper, TimestampMapper) or not hasattr(mapper, "_origin"):
        raise RuntimeError("aiortc changed: RTCRtpReceiver's timestamp mapper has no _origin")
    reports = ReportTap(receiver, clock_rate)
    handle = receiver._handle_rtcp_packet

    async def _handle_rtcp_packet(packet: Any) -> None:
        if isinstance(packet, RtcpSrPacket):
            reports.received(packet)
        await handle(packet)

    receiver._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]  # per-object hook
    return reports
