"""RTCP sender reports on the capture clock, for lip sync (aiortc 1.16.0).

A receiver lines audio up with video through each stream's RTCP sender reports: a pair
(NTP wall-clock time, RTP timestamp) saying which RTP time "now" is. aiortc 1.16.0's
``RTCRtpSender._run_rtcp`` pairs the RTP timestamp of the last packet sent with the time
that packet was *sent*, so each stream's pair is late by its own capture-to-send delay:
the video encoder's 5-30 ms against audio's fraction of a millisecond, a lip-sync error
that moves with the encoder's load.

Our tracks time their packets on one capture clock (``pts`` counted from
``sender.sources.CLOCK_ORIGIN`` on ``time.monotonic()``). ``apply()`` makes one sender of
ours report the RTP timestamp of the instant the report is made, on that clock, as
libwebrtc does. It wraps two per-object callables (instance attributes; every other
sender is untouched):

- ``_next_encoded_frame``: aiortc asks for the next frame only once every RTP packet of
  the last one is sent, so the sender's last RTP timestamp then belongs to the last frame
  handed out; their difference is the sender's random RTP timestamp origin;
- ``_send_rtcp``: each of its sender reports gets the NTP and the RTP timestamp of one
  instant, and aiortc's own note of the last report (``__lsr``, for the round-trip time
  from the receiver's echo) follows.

Both come from one reading of ``time.monotonic()``: the NTP time through the wall clock's
offset from it, taken once when the sender is set up (``common.stamp.wall_offset``).
aiortc reads the wall clock for each report, and a second read for the RTP time would
come after it: a thread descheduled between the two (a busy virtual machine), or a step
of the system clock between one stream's report and the other's, would put audio that
much off the video until both streams had reported again. Only the NTP times'
differences matter to a receiver, and aiortc times the round trip from its own clock,
not from the report's NTP time.

Until the first frame is sent the reports are left as aiortc makes them (they describe
nothing yet). ``tests/test_sender_reports.py`` fails if an upgrade renames what this
relies on or stops honouring it.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from aiortc import RTCRtpSender
from aiortc.rtp import RtcpSrPacket

from common import stamp

from . import check, private
from .sender_report_tap import ntp_time

logger = logging.getLogger(__name__)

RTP_WRAP = 1 << 32


class CaptureClock:
    """One sender's RTP timestamp origin, learnt from the frames it sends."""

    def __init__(self, clock_rate: int, origin: float) -> None:
        self.clock_rate = clock_rate
        self.origin = origin  # the monotonic instant a pts of 0 stands for
        self.wall_offset = stamp.wall_offset()  # wall clock minus monotonic, once
        self.rtp_origin: int | None = None
        self._last: int | None = None  # the last frame's timestamp, without the origin

    def handed_out(self, sender: RTCRtpSender, timestamp: int | None) -> None:
        """Before aiortc takes the next frame: the previous one is sent."""
        if self.rtp_origin is None and self._last is not None:
            sent = private(sender, RTCRtpSender, "rtp_timestamp")
            assert isinstance(sent, int)
            self.rtp_origin = (sent - self._last) % RTP_WRAP
        if timestamp is not None:
            self._last = timestamp

    def rtp_now(self, now: float) -> int | None:
        """The RTP timestamp of the monotonic instant ``now``; None before it is known."""
        if self.rtp_origin is None:
            return None
        return (self.rtp_origin + round((now - self.origin) * self.clock_rate)) % RTP_WRAP

    def ntp_at(self, now: float) -> int:
        """The 64-bit NTP time of the monotonic instant ``now``, on the wall clock as it
        stood when this sender was set up."""
        return ntp_time(now + self.wall_offset)


def apply(sender: RTCRtpSender, clock_rate: int, origin: float) -> CaptureClock:
    """Make this sender's reports say the capture clock's RTP time (its track's packets
    carry ``pts`` on ``time.monotonic()`` from ``origin``). Call before it sends."""
    check(__name__)
    private(sender, RTCRtpSender, "rtp_timestamp")  # raises if aiortc renamed it
    private(sender, RTCRtpSender, "lsr")
    capture = CaptureClock(clock_rate, origin)
    next_encoded_frame = sender._next_encoded_frame
    send_rtcp = sender._send_rtcp

    async def _next_encoded_frame(codec: Any) -> Any:
        capture.handed_out(sender, None)
        frame = await next_encoded_frame(codec)
        if frame is not None:
            capture.handed_out(sender, frame.timestamp)
        return frame

    async def _send_rtcp(packets: list[Any]) -> None:
        for packet in packets:
            if isinstance(packet, RtcpSrPacket) and packet.ssrc == sender._ssrc:
                now = time.monotonic()
                rtp = capture.rtp_now(now)
                if rtp is not None:
                    ntp = capture.ntp_at(now)
                    packet.sender_info.ntp_timestamp = ntp
                    packet.sender_info.rtp_timestamp = rtp
                    vars(sender)["_RTCRtpSender__lsr"] = (ntp >> 16) & 0xFFFFFFFF
                    logger.debug("sender report: ntp %d rtp %d", ntp, rtp)
        await send_rtcp(packets)

    # instance attributes: aiortc looks them up on the object, so only this sender changes
    sender._next_encoded_frame = _next_encoded_frame  # type: ignore[method-assign]  # per-object hook
    sender._send_rtcp = _send_rtcp  # type: ignore[method-assign]  # per-object hook
    return capture


def applied(sender: RTCRtpSender) -> bool:
    return all(name in vars(sender) for name in ("_next_encoded_frame", "_send_rtcp"))
