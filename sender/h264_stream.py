"""A source's own H.264, as packets: what H.264 passthrough (``sender.passthrough``) sends.

A reader (``sender.live``) demuxes a camera or a file; for an H.264 stream it hands every
packet, before any decoding, through ``AnnexB`` (in its thread) to the event loop:

- Annex B byte streams (start codes), what aiortc's H.264 packetizer splits; MP4/MKV
  store length-prefixed NAL units (AVCC), which FFmpeg's ``h264_mp4toannexb`` filter
  converts;
- every IDR carries the SPS and PPS in front (the last ones seen, from the extradata or
  in-band), so that a viewer joining at any IDR can decode;
- presentation times on the sender's capture clock (``sources.CLOCK_ORIGIN``, 90 kHz,
  ``Timeline``): the camera's own pts differences, anchored on the connection's least
  delayed packet, so RTP timestamps follow the camera's clock and
  ``sources.capture_time()`` gives the packet's arrival at the sender (no later).

``StreamInfo`` says what the stream is (codec, size, H.264 profile), for negotiating with
each viewer.
"""

from __future__ import annotations

import fractions
import logging
from dataclasses import dataclass
from typing import Any, Protocol

import av
from av.bitstream import BitStreamFilterContext

from common.h264 import NAL_IDR, NAL_PPS, NAL_SPS, START_CODE, nal_units

logger = logging.getLogger(__name__)

CLOCK_RATE = 90000
TIME_BASE = fractions.Fraction(1, CLOCK_RATE)
REANCHOR_SECONDS = 2.0  # a stream time this far from the arrival clock: anchored afresh
CONSTRAINT_SET1 = 0x40  # constraint_set1_flag: a baseline stream that is constrained baseline

PROFILE_NAMES = {66: "baseline", 77: "main", 88: "extended", 100: "high", 110: "high 10"}


@dataclass(frozen=True)
class StreamInfo:
    """What a source delivers: its codec and size and, for H.264, the SPS's profile."""

    codec: str  # FFmpeg's name: "h264", "mjpeg", ...
    width: int
    height: int
    profile_idc: int = 0
    constraints: int = 0  # the SPS's constraint flags byte
    level_idc: int = 0
    b_frames: bool = False  # frames out of order: not for WebRTC (sent transcoded)
    audio: str | None = None  # the connection's audio track's codec (FFmpeg's name), if any

    @property
    def constrained_baseline(self) -> bool:
        return self.profile_idc == 66 and bool(self.constraints & CONSTRAINT_SET1)

    @property
    def profile(self) -> str:
        """For logs and /healthz: "constrained baseline", "main", "high"..."""
        if self.constrained_baseline:
            return "constrained baseline"
        return PROFILE_NAMES.get(self.profile_idc, f"profile {self.profile_idc}")

    @property
    def passable(self) -> bool:
        """Whether its packets can be sent as they are: H.264 with a known profile, in
        presentation order."""
        return self.codec == "h264" and self.profile_idc != 0 and not self.b_frames

    def accepts(self, profile_level_id: str) -> bool:
        """Whether a viewer that offered ``profile-level-id`` (hex) can decode this stream:
        the same profile_idc; a constrained baseline stream suits every H.264 decoder."""
        try:
            offered = int(profile_level_id[:2], 16)
        except ValueError:
            return False
        return self.constrained_baseline or offered == self.profile_idc

    def describe(self) -> str:
        if self.codec != "h264":
            return f"{self.codec} {self.width}x{self.height}"
        return f"{self.profile} {self.width}x{self.height}"


def sps_info(sps: bytes, codec: str, width: int, height: int, b_frames: bool) -> StreamInfo:
    """The stream's info from its SPS NAL unit (header byte first)."""
    profile, constraints, level = (sps[1], sps[2], sps[3]) if len(sps) >= 4 else (0, 0, 0)
    return StreamInfo(codec, width, height, profile, constraints, level, b_frames)


class PacketSink(Protocol):
    """Who gets a source's packets, on the event loop (``fanout.SharedSource``)."""

    def on_stream(self, info: StreamInfo) -> None:
        """A connection (or a file's loop) started, or the parameter sets changed."""

    def on_packet(self, packet: av.Packet[Any]) -> None:
        """One access unit, Annex B, timed on the capture clock."""


class Timeline:
    """Packet times on the capture clock, 90 kHz, rising across connections and loops.

    The anchor (capture clock minus stream time) is the least delayed packet's: nothing
    is captured after it arrives, so a packet that arrives before the time the anchor
    gives it shows the anchor came from a late one. At a connection's start the reader
    may stall (a busy machine) and the packets behind the first come in a burst; anchored
    on the first alone, every later time stayed that stall ahead of the arrivals, and so
    did the camera's audio on this timeline (held until due: up to 2 s of delay, and
    frames lost from its one-second queue)."""

    def __init__(self, origin: float) -> None:
        self._origin = origin  # sources.CLOCK_ORIGIN
        self._anchor: float | None = None  # capture-clock seconds minus media seconds
        self._last = -1

    def restart(self) -> None:
        """A new connection or loop: its times are anchored afresh, from its first packet."""
        self._anchor = None

    def capture(self, media: float) -> float | None:
        """When something at stream time ``media`` (seconds) was captured, on
        ``time.monotonic()``, by the current anchor: for the connection's other streams,
        whose times FFmpeg puts on the same clock (the camera's RTP-Info, its RTCP sender
        reports). None before the connection's first packet."""
        if self._anchor is None:
            return None
        return self._origin + self._anchor + media

    def pts(self, media: float | None, now: float) -> int:
        arrival = now - self._origin
        if media is None:
            media = arrival - (self._anchor or 0.0)
        offset = arrival - media
        anchor = self._anchor
        if anchor is None or offset < anchor or offset - anchor > REANCHOR_SECONDS:
            anchor = self._anchor = offset  # earlier than the anchor says, or re-based
        pts = round((anchor + media) * CLOCK_RATE)
        if pts <= self._last:  # never back: a restart, or a late anchor put right
            pts = self._last + 1
        self._last = pts
        return pts


class AnnexB:
    """One connection's H.264 packets made ready to send (in the reader's thread)."""

    def __init__(self, stream: av.VideoStream, timeline: Timeline) -> None:
        context = stream.codec_context
        self._stream = stream
        self._timeline = timeline
        timeline.restart()
        extradata = context.extradata or b""
        # AVCC (MP4, MKV): extradata starts with its version byte, 1, not a start code.
        self._filter = (
            BitStreamFilterContext("h264_mp4toannexb", stream) if extradata[:1] == b"\x01" else None
        )
        self._b_frames = (
            bool(getattr(context, "has_b_frames", False)) or (context.max_b_frames or 0) > 0
        )
        self._width, self._height = context.width, context.height
        self._sps = b""
        self._pps: list[bytes] = []
        self.info: StreamInfo | None = None
        self.changed = False  # whether the last ``convert`` brought a new SPS (``info``)
        if extradata and self._filter is None:
            self._learn(nal_units(extradata))

    def _learn(self, units: list[bytes]) -> bool:
        """Keep the parameter sets among ``units``; True when the SPS is new."""
        changed = False
        sps = [u for u in units if u[0] & 0x1F == NAL_SPS]
        pps = [u for u in units if u[0] & 0x1F == NAL_PPS]
        if sps and sps[-1] != self._sps:
            self._sps = sps[-1]
            self.info = sps_info(self._sps, "h264", self._width, self._height, self._b_frames)
            changed = True
        if pps:
            self._pps = pps
        return changed

    def convert(self, packet: av.Packet[Any], now: float) -> list[av.Packet[Any]]:
        """The packet ready to send (none while no SPS is known); ``changed`` says
        whether it brought new parameter sets (``info``)."""
        self.changed = False
        packets = [packet]
        if self._filter is not None:  # the filter takes the packet's data: give it a copy
            copy = av.Packet(bytes(packet))
            copy.pts, copy.dts, copy.time_base = packet.pts, packet.dts, packet.time_base
            copy.is_keyframe = packet.is_keyframe
            packets = self._filter.filter(copy)
        return [out for p in packets if (out := self._one(p, now)) is not None]

    def _one(self, packet: av.Packet[Any], now: float) -> av.Packet[Any] | None:
        data = bytes(packet)
        units = nal_units(data)
        if not units:
            return None
        self.changed |= self._learn(units)
        types = {u[0] & 0x1F for u in units}
        if not self._sps or not self._pps:
            return None  # nothing decodable before the first parameter sets
        keyframe = NAL_IDR in types
        if keyframe and not (NAL_SPS in types and NAL_PPS in types):
            head = b"".join(START_CODE + u for u in (self._sps, *self._pps))
            data = head + data
        media = packet.pts if packet.pts is not None else packet.dts
        time_base = packet.time_base or self._stream.time_base
        seconds = None if media is None or time_base is None else float(media * time_base)
        out = av.Packet(data)
        out.pts = out.dts = self._timeline.pts(seconds, now)
        out.time_base = TIME_BASE
        out.is_keyframe = keyframe
        return out
