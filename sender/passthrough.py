"""H.264 passthrough: the camera's own H.264 packets to every viewer that can decode them,
with no decode and no encode (issue 12, part 3).

When the source receives H.264 (an RTSP camera, an H.264 file: ``sender.h264_stream``) and
a viewer offers H.264 in the stream's profile (any H.264 when the stream is constrained
baseline), the viewer's ``EncodedTrack`` gets the source's packets as they are; aiortc only
packetizes and encrypts them. Viewers that cannot take them (VP8 only, another profile) get
the transcoding path (``sender.encoding``) from frames decoded from the same source, which
then decodes; with only passthrough viewers nothing is decoded. ``--transcode`` turns
passthrough off.

What does not apply here, by nature:

- keyframes: a viewer's PLI or FIR cannot reach the camera. A newcomer (or a viewer that
  fell behind) waits for the camera's next IDR, so the camera's keyframe interval bounds
  the join time; requests are counted and logged at DEBUG;
- bandwidth: there is one stream at the camera's bitrate; per-viewer estimates (REMB,
  reports) are recorded for /healthz but choose no tier and change no bitrate.

Times: the packets keep the camera's clock (``h264_stream.Timeline``), so RTP timestamps
follow it, anchored on the capture clock: ``sources.capture_time()`` of a packet is when it
reached the sender.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import av
from aiortc import RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.sdp import SessionDescription
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from common.aiortc_ext import h264_profiles

from . import live
from .encoding import PROFILES, EncodedTrack, Totals
from .fanout import SharedSource
from .h264_stream import CONSTRAINT_SET1, StreamInfo
from .outgoing import Outgoing

logger = logging.getLogger(__name__)

CODEC = "h264"
TIER = "passthrough"  # the "tier" its viewers are on (/healthz viewer_tiers)
STREAM_WAIT_SECONDS = 2 * live.OPEN_SECONDS  # a first viewer waits this long to learn
# what the camera sends (opening it), then is transcoded

Offered = tuple[RTCRtpCodecParameters, RTCRtpCodecParameters | None]  # a codec, its RTX


def offered_h264(offer_sdp: str, mid: str | None) -> list[Offered]:
    """The H.264 codecs an offer's video section (``mid``) lists that aiortc can send
    (packetization mode 1), each with its RTX, in the offer's order."""
    description = SessionDescription.parse(offer_sdp)
    for media in description.media:
        if media.kind == "video" and (mid is None or media.rtp.muxId == mid):
            codecs = media.rtp.codecs
            break
    else:
        return []
    result: list[Offered] = []
    for codec in codecs:
        if codec.mimeType.lower() != "video/h264":
            continue
        if str(codec.parameters.get("packetization-mode", "0")) != "1":
            continue
        rtx = next(
            (
                c
                for c in codecs
                if c.mimeType.lower() == "video/rtx"
                and c.parameters.get("apt") == codec.payloadType
            ),
            None,
        )
        result.append((codec, rtx))
    return result


def profile_level_id(codec: RTCRtpCodecParameters) -> str:
    # An offer without one means constrained baseline 3.1 (RFC 6184, as aiortc reads it).
    return str(codec.parameters.get("profile-level-id", "42e01f")).lower()


def choose(info: StreamInfo, offered: list[Offered]) -> Offered | None:
    """The offered codec to send the stream as: its own profile (constrained or not)
    first, then its profile_idc; for a constrained baseline stream, any H.264."""
    acceptable = [o for o in offered if info.accepts(profile_level_id(o[0]))]
    constrained = info.constraints & CONSTRAINT_SET1

    def rank(item: Offered) -> int:
        plid = profile_level_id(item[0])
        if int(plid[:2], 16) != info.profile_idc:
            return 2
        return 0 if int(plid[2:4], 16) & CONSTRAINT_SET1 == constrained else 1

    return min(acceptable, key=rank) if acceptable else None


class PassthroughTrack(EncodedTrack):
    """A viewer of the camera's own stream: no tiers, no keyframes on request."""

    @property
    def waiting_for_keyframe(self) -> bool:
        return self._need_keyframe

    def set_bitrate_estimate(self, bitrate: int) -> None:
        """Recorded only: the camera's bitrate is the camera's."""
        self.bitrate_estimate = bitrate
        self.estimator.on_remb(bitrate)


class Passthrough:
    """The source's H.264 packets, to the viewers that take them as they are; owned by
    the session registry. ``enabled``: False with ``--transcode`` or a source that has no
    packets (``sources.has_packets``)."""

    def __init__(self, source: SharedSource, totals: Totals, enabled: bool) -> None:
        self.profile = PROFILES[CODEC]
        self.totals = totals
        self.enabled = enabled
        self._source = source
        self._viewers: set[PassthroughTrack] = set()
        self._listening = False
        self._known = asyncio.Event()
        self.info: StreamInfo | None = None  # what the source sent last (kept when closed)
        self.packets = 0  # packets from the source while viewers watched
        self.bytes = 0
        self.keyframe_requests = 0  # PLI/FIR from viewers, which cannot reach the camera
        self.keyframe_waits = 0  # times a viewer waited for the camera's next IDR

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    async def stream(self, within: float = STREAM_WAIT_SECONDS) -> StreamInfo | None:
        """What the source sends; opened (and waited for) if not known yet."""
        if not self.enabled:
            return None
        if self.info is None:
            self._source.listen(self)
            try:
                await asyncio.wait_for(self._known.wait(), within)
            except TimeoutError:
                logger.info("%s: nothing from the camera yet; transcoding for now", CODEC)
            finally:
                if not self._viewers:
                    self._source.unlisten(self)
        return self.info

    async def answer(self, transceiver: RTCRtpTransceiver, offer_sdp: str) -> bool:
        """Make ``transceiver`` (offer set, no answer yet) answer with the viewer's codec
        for the camera's stream, if it offered one: True when this viewer passes through."""
        info = await self.stream()
        if info is None or not info.passable:
            return False
        chosen = choose(info, offered_h264(offer_sdp, transceiver.mid))
        if chosen is None:
            logger.info(
                "viewer offers no H.264 for the camera's %s stream: transcoding for it",
                info.profile,
            )
            return False
        h264_profiles.answer_with(transceiver, *chosen)
        return True

    def subscribe(self) -> PassthroughTrack:
        track = PassthroughTrack(self)
        track.tier = TIER
        if not self._viewers and self.info is not None:
            logger.info("%s: passing the camera's stream through (%s)", CODEC, self.info.describe())
        self._viewers.add(track)
        if not self._listening:
            self._listening = True
            self._source.listen(self)
        self.keyframe_waits += 1
        logger.debug("%s passthrough: a newcomer waits for the camera's next keyframe", CODEC)
        return track

    def unsubscribe(self, track: EncodedTrack) -> None:
        if isinstance(track, PassthroughTrack):
            self._viewers.discard(track)
        if not self._viewers and self._listening:
            self._listening = False
            self._source.unlisten(self)
            logger.info("%s: no passthrough viewer left", CODEC)

    def request_keyframe(self, tier: str | None = None) -> None:
        """A PLI or FIR: the camera cannot be asked; its next IDR will do."""
        self.keyframe_requests += 1
        self.keyframe_waits += 1
        logger.debug("%s passthrough: keyframe asked for; waiting for the camera's", CODEC)

    def update_bitrate(self, now: float | None = None) -> None:
        """Nothing to adapt: one stream, at the camera's bitrate."""

    # -- PacketSink: from the shared source ------------------------------------------------

    def on_stream(self, info: StreamInfo) -> None:
        changed = info != self.info
        self.info = info
        self._known.set()
        if changed and self._viewers:
            if info.passable:
                logger.info("%s: the camera now sends %s", CODEC, info.describe())
            else:
                logger.warning(
                    "%s: the camera now sends %s, which cannot be passed through; its "
                    "passthrough viewers wait",
                    CODEC,
                    info.describe(),
                )

    def on_packet(self, packet: av.Packet[Any]) -> None:
        if not self._viewers or self.info is None or not self.info.passable:
            return
        self.packets += 1
        self.bytes += packet.size
        logger.debug("%s passthrough: packet of %d bytes", CODEC, packet.size)
        outgoing = Outgoing(packet)  # packetized once for every viewer
        for viewer in list(self._viewers):
            viewer.offer(outgoing)

    # -- reporting -------------------------------------------------------------------------

    def describe(self) -> dict[str, object]:
        """Per codec, for /healthz: False where the camera's packets cannot be sent."""
        h264: dict[str, object] | bool = False
        if self.enabled and (self.info is None or self.info.passable):
            h264 = {
                "active": bool(self._viewers),
                "viewers": len(self._viewers),
                "profile": self.info.profile if self.info is not None else None,
                "size": f"{self.info.width}x{self.info.height}" if self.info else None,
                "waiting_for_keyframe": sum(t.waiting_for_keyframe for t in self._viewers),
                "keyframe_requests": self.keyframe_requests,
            }
        return {CODEC: h264, "vp8": False}

    def collect(self) -> Iterator[Metric]:
        """For /metrics (``sender.metrics``)."""
        yield GaugeMetricFamily(
            "webcam_passthrough_viewers",
            "Viewers getting the camera's own H.264 packets",
            len(self._viewers),
        )
        yield CounterMetricFamily(
            "webcam_passthrough_packets",
            "Camera packets passed through (once for all viewers)",
            value=self.packets,
        )
        yield CounterMetricFamily(
            "webcam_passthrough_keyframe_waits",
            "Times a passthrough viewer waited for the camera's next keyframe",
            value=self.keyframe_waits,
        )

    async def close(self) -> None:
        for viewer in list(self._viewers):
            viewer.offer(None)
        self._viewers.clear()
        if self._listening:
            self._listening = False
            self._source.unlisten(self)
