"""Encode once for many viewers.

Stock aiortc gives every viewer its own encoder: at 720p VP8 that is 0.3-0.4 of a core
per viewer. Here each codec has one encoder; its packets are fanned out to every
viewer of that codec, and aiortc only packetizes them (``RTCRtpSender`` accepts
``av.Packet`` from a track). Keyframe requests and bandwidth estimates from the
viewers reach the shared encoder through ``sender.rtcp_feedback``.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import multiprocessing
import time
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs import vpx as aiortc_vpx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from .fanout import SharedSource, ViewerTrack

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90000)
VIEWER_QUEUE_PACKETS = 15  # half a second at 30 fps; a viewer further behind starts over
BITRATE_CHANGE = 0.1  # re-create the encoder only when the target moves by more than 10%
KEYFRAME_INTERVAL_MIN = 0.3  # requests closer together than this share one keyframe


@dataclass
class Totals:
    """Counters that outlive encoders and viewers (for /metrics)."""

    frames_encoded: int = 0
    keyframes: int = 0
    encode_seconds: float = 0.0
    frames_sent: int = 0
    bytes_sent: int = 0
    frames_dropped: int = 0


@dataclass(frozen=True)
class CodecProfile:
    """Encoder settings for one codec, matching aiortc 1.16's own encoders."""

    name: str
    encoder: str
    min_bitrate: int
    default_bitrate: int
    max_bitrate: int

    def create(self, width: int, height: int, bitrate: int, fps: float) -> av.VideoCodecContext:
        codec = av.CodecContext.create(self.encoder, "w")
        codec.width, codec.height = width, height
        codec.bit_rate = bitrate
        codec.pix_fmt = "yuv420p"
        codec.time_base = TIME_BASE
        codec.framerate = fractions.Fraction(round(fps), 1)
        if self.name == "vp8":
            codec.gop_size = 3000
            codec.qmin, codec.qmax = 2, 56
            codec.options = {
                "bufsize": str(bitrate),
                "cpu-used": "-6",
                "deadline": "realtime",
                "lag-in-frames": "0",
                "minrate": str(bitrate),
                "maxrate": str(bitrate),
                "noise-sensitivity": "4",
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            }
            codec.thread_count = aiortc_vpx.number_of_threads(
                width * height, multiprocessing.cpu_count()
            )
        else:
            # Constrained baseline (no B-frames), as browsers need; zero-latency tuning.
            codec.profile = "Baseline"
            codec.options = {"level": "31", "tune": "zerolatency"}
        return codec


PROFILES = {
    "vp8": CodecProfile(
        "vp8",
        "libvpx",
        aiortc_vpx.MIN_BITRATE,
        aiortc_vpx.DEFAULT_BITRATE,
        aiortc_vpx.MAX_BITRATE,
    ),
    "h264": CodecProfile(
        "h264",
        "libx264",
        aiortc_h264.MIN_BITRATE,
        aiortc_h264.DEFAULT_BITRATE,
        aiortc_h264.MAX_BITRATE,
    ),
}


class EncodedTrack(MediaStreamTrack):
    """One viewer's feed of encoded packets. It starts at a keyframe and, when it falls
    too far behind, drops what it holds and waits for the next keyframe."""

    kind = "video"

    def __init__(self, encoder: SharedEncoder) -> None:
        super().__init__()
        self._encoder = encoder
        self._queue: asyncio.Queue[av.Packet | None] = asyncio.Queue(VIEWER_QUEUE_PACKETS)
        self._need_keyframe = True
        self.bitrate_estimate: int | None = None
        self.packets_dropped = 0
        self.packets_sent = 0

    def offer(self, packet: av.Packet | None) -> None:
        if packet is None:
            self._put(None)
            return
        if self._need_keyframe:
            if not packet.is_keyframe:
                return
            self._need_keyframe = False
        if self._queue.full():
            # Stalled or slow: a partial backlog is useless to a decoder, so start over.
            self.packets_dropped += self._queue.qsize()
            self._encoder.totals.frames_dropped += self._queue.qsize()
            while not self._queue.empty():
                self._queue.get_nowait()
            self._need_keyframe = True
            self._encoder.request_keyframe()
            logger.debug("viewer fell behind: dropped its backlog, waiting for a keyframe")
            return
        self._put(packet)

    def _put(self, item: av.Packet | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        self._queue.put_nowait(item)

    async def recv(self) -> av.Packet:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        self.packets_sent += 1
        self._encoder.totals.frames_sent += 1
        self._encoder.totals.bytes_sent += packet.size
        return packet

    def request_keyframe(self) -> None:
        """A PLI or FIR from this viewer."""
        self._encoder.request_keyframe()

    def set_bitrate_estimate(self, bitrate: int) -> None:
        """A REMB estimate from this viewer."""
        self.bitrate_estimate = bitrate
        self._encoder.update_bitrate()

    def stop(self) -> None:
        if self.readyState == "live":
            self._encoder.unsubscribe(self)
        super().stop()


class SharedEncoder:
    """One encoder for one codec, fed from the shared source while anyone watches."""

    def __init__(
        self,
        source: SharedSource,
        profile: CodecProfile,
        fps: float,
        fixed_bitrate: int | None = None,
        on_idle: Callable[[SharedEncoder], None] | None = None,
        totals: Totals | None = None,
    ) -> None:
        self.profile = profile
        self.totals = totals if totals is not None else Totals()
        self._source = source
        self._fps = fps
        self._fixed_bitrate = fixed_bitrate
        self._on_idle = on_idle
        self._viewers: set[EncodedTrack] = set()
        self._frames: ViewerTrack | None = None
        self._task: asyncio.Task[None] | None = None
        self._keyframe = False
        self._last_keyframe = -KEYFRAME_INTERVAL_MIN
        self.target_bitrate = fixed_bitrate or profile.default_bitrate
        self.frames_encoded = 0
        self.keyframes = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def subscribe(self) -> EncodedTrack:
        track = EncodedTrack(self)
        self._viewers.add(track)
        self.request_keyframe()  # the newcomer needs one to start decoding
        if self._task is None:
            self._frames = self._source.subscribe()
            self._task = asyncio.create_task(self._run(), name=f"encode {self.profile.name}")
        return track

    def unsubscribe(self, track: EncodedTrack) -> None:
        self._viewers.discard(track)
        self.update_bitrate()
        if not self._viewers:
            self._stop()

    def request_keyframe(self) -> None:
        self._keyframe = True

    def update_bitrate(self) -> None:
        """Follow the weakest viewer's estimate, within the codec's limits."""
        if self._fixed_bitrate:
            return
        estimates = [v.bitrate_estimate for v in self._viewers if v.bitrate_estimate]
        wanted = min(estimates) if estimates else self.profile.default_bitrate
        self.target_bitrate = max(self.profile.min_bitrate, min(wanted, self.profile.max_bitrate))

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._frames is not None:
            self._frames.stop()  # the source closes when nobody else reads it
            self._frames = None
        if self._on_idle is not None:
            self._on_idle(self)

    async def _run(self) -> None:
        assert self._frames is not None
        frames = self._frames
        codec: av.VideoCodecContext | None = None
        try:
            while True:
                try:
                    frame = await frames.recv()
                except MediaStreamError:
                    break
                if codec is None or self._needs_new_codec(codec, frame):
                    codec = self.profile.create(
                        frame.width, frame.height, self.target_bitrate, self._fps
                    )
                    self._keyframe = True
                # One viewer's burst of PLIs must not turn everyone's stream into keyframes.
                keyframe = self._keyframe and (
                    time.monotonic() - self._last_keyframe >= KEYFRAME_INTERVAL_MIN
                )
                if keyframe:
                    self._keyframe = False
                    self._last_keyframe = time.monotonic()
                packets = await asyncio.to_thread(self._encode, codec, frame, keyframe)
                for packet in packets:
                    for viewer in list(self._viewers):
                        viewer.offer(packet)
        finally:
            for viewer in list(self._viewers):
                viewer.offer(None)

    def _needs_new_codec(self, codec: av.VideoCodecContext, frame: av.VideoFrame) -> bool:
        if (frame.width, frame.height) != (codec.width, codec.height):
            return True
        return abs(self.target_bitrate - codec.bit_rate) / codec.bit_rate > BITRATE_CHANGE

    def _encode(
        self, codec: av.VideoCodecContext, frame: av.VideoFrame, keyframe: bool
    ) -> list[av.Packet]:
        started = time.perf_counter()
        picture = frame
        if keyframe:
            # Forcing a keyframe marks the frame; mark a copy, since the source shares
            # this frame with the other codec's encoder.
            picture = av.VideoFrame.from_ndarray(frame.to_ndarray(), format=frame.format.name)
            picture.pts, picture.time_base = frame.pts, frame.time_base
            picture.pict_type = av.video.frame.PictureType.I
        packets = codec.encode(picture)
        keyframes = 0
        for packet in packets:
            packet.time_base = TIME_BASE
            keyframes += packet.is_keyframe
        self.keyframes += keyframes
        self.frames_encoded += 1
        self.totals.keyframes += keyframes
        self.totals.frames_encoded += 1
        self.totals.encode_seconds += time.perf_counter() - started
        return packets

    async def close(self) -> None:
        for viewer in list(self._viewers):
            viewer.offer(None)
        self._viewers.clear()
        task = self._task
        self._stop()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)


class Encoders:
    """The shared encoders, one per codec in use; owned by the session registry."""

    def __init__(self, source: SharedSource, fps: float, fixed_bitrate: int | None = None) -> None:
        self._source = source
        self._fps = fps
        self._fixed_bitrate = fixed_bitrate
        self._encoders: dict[str, SharedEncoder] = {}
        self.totals = Totals()

    def subscribe(self, codec: str) -> EncodedTrack:
        encoder = self._encoders.get(codec)
        if encoder is None:
            encoder = SharedEncoder(
                self._source,
                PROFILES[codec],
                self._fps,
                self._fixed_bitrate,
                self._forget,
                self.totals,
            )
            self._encoders[codec] = encoder
        return encoder.subscribe()

    def _forget(self, encoder: SharedEncoder) -> None:
        if self._encoders.get(encoder.profile.name) is encoder:
            del self._encoders[encoder.profile.name]

    def active(self) -> list[SharedEncoder]:
        return list(self._encoders.values())

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in list(self._encoders.values())))
