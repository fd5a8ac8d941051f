"""Recording to video files: timed by the stream's RTP clock, written progressively so a
crash loses at most the last second, split into segments by time or by reconnection.
Audio alone (``video=False``) goes to the same containers or to audio files (.mka, .ogg,
.opus, .m4a), timed by the audio's own RTP clock."""

from __future__ import annotations

import asyncio
import enum
import fractions
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import av

from common.h264 import parameter_sets

from .audio import OPUS_HEAD, SAMPLE_RATE, AudioPacket
from .encoded import EncodedFrame
from .transcode import OpusToAac, add_aac_stream

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90000)  # the RTP video clock
AUDIO_TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
RTP_WRAP = 1 << 32
QUEUE_FRAMES = 240  # three seconds of video frames and audio packets
# A copied segment may end at a keyframe this long before it is due. A sender makes the
# keyframe asked for at the due time no sooner than this after its previous one (ours:
# ``sender.encoding.KEYFRAME_INTERVAL_MIN``: requests that close share one), so a keyframe
# made just before for its own reasons (a bitrate change) would otherwise make the segment
# that much longer: one 2 s segment of a CI run came out 2.3 s.
KEYFRAME_GRACE_SECONDS = 0.3
# Matroska: a cluster a second, flushed as written. MP4: fragmented, a fragment a second.
CONTAINER_OPTIONS = {
    ".mkv": {"cluster_time_limit": "1000", "flush_packets": "1"},
    ".webm": {"cluster_time_limit": "1000", "flush_packets": "1"},
    ".mp4": {
        "movflags": "frag_keyframe+empty_moov+default_base_moof",
        "frag_duration": "1000000",
        "flush_packets": "1",
    },
    ".mov": {
        "movflags": "frag_keyframe+empty_moov+default_base_moof",
        "frag_duration": "1000000",
        "flush_packets": "1",
    },
    ".mka": {"cluster_time_limit": "1000", "flush_packets": "1"},
    ".m4a": {
        "movflags": "empty_moov+default_base_moof",
        "frag_duration": "1000000",
        "flush_packets": "1",
    },
}
# Audio alone: files that hold no video. FFmpeg's .m4a muxer ("ipod") refuses Opus: the
# MP4 muxer writes them (FORMATS).
AUDIO_ONLY = (".mka", ".m4a", ".ogg", ".opus")
FORMATS = {".m4a": "mp4"}
ENCODERS: dict[str, Literal["libvpx", "libx264"]] = {
    ".webm": "libvpx",
    ".mkv": "libx264",
    ".mp4": "libx264",
    ".mov": "libx264",
}
# What each container can take as received, without re-encoding.
COPY_CODECS = {".webm": {"vp8"}, ".mkv": {"vp8", "h264"}, ".mp4": {"h264"}, ".mov": {"h264"}}
MODES = ("copy", "encode")
VP8_MAX_BIT_RATE = 8_000_000  # encode mode's VP8: the cap over its constant quality
# The audio codecs each container holds, its default first: the received Opus copied, or
# AAC (decoded and encoded again). WebM takes only Opus (or Vorbis); FFmpeg's QuickTime
# muxer refuses Opus ("opus only supported in MP4."), so .mov records AAC.
AUDIO_CODECS = {
    ".webm": ("opus",),
    ".mkv": ("opus", "aac"),
    ".mp4": ("opus", "aac"),
    ".mov": ("aac",),
    ".mka": ("opus", "aac"),
    ".m4a": ("opus", "aac"),
    ".ogg": ("opus",),
    ".opus": ("opus",),
}


class Command(enum.Enum):
    """What the worker is told between frames."""

    SPLIT = "split"
    STOP = "stop"


class RecorderError(Exception):
    """The file cannot be written; one line for the user."""


class RtpClock:
    """Turns 32-bit RTP timestamps into a monotonic count from the first frame."""

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0
        self._wraps = 0

    def __call__(self, timestamp: int) -> int:
        if self._first is None:
            self._first = self._last = timestamp
        if timestamp < self._last and self._last - timestamp > RTP_WRAP // 2:
            self._wraps += 1
        self._last = timestamp
        return timestamp + self._wraps * RTP_WRAP - self._first

    def peek(self, timestamp: int) -> int | None:
        """A timestamp near the last one on the same count, without moving the clock;
        None before the first."""
        if self._first is None:
            return None
        delta = (timestamp - self._last + RTP_WRAP // 2) % RTP_WRAP - RTP_WRAP // 2
        return self._last + delta + self._wraps * RTP_WRAP - self._first


def check_pattern(pattern: str, video: bool = True) -> str:
    """Fail early, before connecting, on names we cannot write."""
    extension = os.path.splitext(pattern)[1].lower()
    if video and extension in AUDIO_ONLY:
        raise RecorderError(f"{extension} files hold audio alone: add --no-video")
    known = sorted(ENCODERS) + ([] if video else sorted(AUDIO_ONLY))
    if extension not in known:
        raise RecorderError(f"cannot record to {pattern!r}: use one of {', '.join(known)}")
    folder = os.path.dirname(os.path.abspath(time.strftime(pattern)))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        raise RecorderError(f"cannot write {pattern}: {folder} is not a writable folder")
    return extension


def audio_codec_for(pattern: str, asked: str | None) -> str:
    """The audio codec a recording to ``pattern`` uses: ``asked`` (None: the
    container's default); RecorderError when the container cannot hold it."""
    extension = os.path.splitext(pattern)[1].lower()
    codecs = AUDIO_CODECS.get(extension, ("opus",))
    if asked is None:
        return codecs[0]
    if asked not in codecs:
        holds = " or ".join(c.upper() if c == "aac" else c.capitalize() for c in codecs)
        raise RecorderError(f"{extension} files hold {holds} audio, not {asked}")
    return asked


@dataclass
class Segment:
    path: str
    container: av.container.OutputContainer
    stream: av.VideoStream | None = None
    frames: int = 0
    audio: av.AudioStream | None = None
    audio_pts: int = -1  # the last audio packet's
    audio_packets: int = 0
    aac: OpusToAac | None = None  # --audio-codec aac: the transcoder into ``audio``


class Recorder:
    """Encodes decoded frames into files on a worker thread, so decoding never waits on
    the disk. ``pattern`` may hold strftime fields; each segment gets its own name."""

    def __init__(
        self,
        pattern: str,
        fps: float = 30.0,
        segment_seconds: float | None = None,
        mode: str = "encode",
        request_keyframe: Callable[[], None] | None = None,
        audio_codec: str | None = None,
        video: bool = True,
    ) -> None:
        if mode not in MODES:
            raise RecorderError(f"unknown recording mode {mode!r}: use copy or encode")
        self.pattern = pattern
        self.mode = mode
        self._request_keyframe = request_keyframe
        self._keyframe_asked = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._extension = check_pattern(pattern, video)
        self.video = video
        self.audio_codec = audio_codec_for(pattern, audio_codec)
        self._fps = fps
        self._segment_ticks = int(segment_seconds * 90000) if segment_seconds else None
        # Never more than half a segment: short segments end near their time too.
        self._grace_ticks = min(
            int(KEYFRAME_GRACE_SECONDS * 90000), (self._segment_ticks or 0) // 2
        )
        self._clock = RtpClock()
        self._segment: Segment | None = None
        self._segment_start = 0
        self._last_pts = -1
        self._split = False
        self._queue: asyncio.Queue[av.VideoFrame | EncodedFrame | AudioPacket | Command] = (
            asyncio.Queue(QUEUE_FRAMES)
        )
        # Whether the next segment gets an audio track (the connection carries audio).
        self.audio = not video
        self._worker: asyncio.Task[None] | None = None
        self.files: list[str] = []
        self.frames = 0

    def accepts(self, codec: str) -> bool:
        """Whether frames of ``codec`` can be copied into this container as they are."""
        return codec in COPY_CODECS[self._extension]

    async def write(self, frame: av.VideoFrame | EncodedFrame | AudioPacket) -> None:
        """A decoded frame (mode encode) or a frame as received (mode copy)."""
        if self._worker is None:
            self._loop = asyncio.get_running_loop()
            self._worker = asyncio.create_task(self._run(), name=f"record {self.pattern}")
        if self._worker.done():
            self._worker.result()  # raises the worker's RecorderError
        await self._queue.put(frame)

    async def split(self) -> None:
        """Start a new file with the next frame (after a gap: the stream's clock restarts)."""
        if self._worker is not None and not self._worker.done():
            await self._queue.put(Command.SPLIT)

    async def _run(self) -> None:
        try:
            while (item := await self._queue.get()) is not Command.STOP:
                if item is Command.SPLIT:
                    await asyncio.to_thread(self._finish_segment)
                    self._clock = RtpClock()
                    self._last_pts = -1
                elif isinstance(item, EncodedFrame):
                    await asyncio.to_thread(self._copy, item)
                elif isinstance(item, AudioPacket):
                    await asyncio.to_thread(self._copy_audio, item)
                else:
                    await asyncio.to_thread(self._encode, item)
            await asyncio.to_thread(self._finish_segment)
        except RecorderError:
            await asyncio.to_thread(self._finish_segment, True)
            raise

    def _encode(self, frame: av.VideoFrame) -> None:
        pts = self._clock(frame.pts) if frame.pts is not None else self._last_pts + 3000
        if pts <= self._last_pts:  # never let a repeated timestamp break the muxer
            return
        self._last_pts = pts
        ticks = self._segment_ticks
        if self._segment is not None and ticks and pts - self._segment_start >= ticks:
            self._finish_segment()
        if self._segment is None:
            self._segment = self._open_segment()
            self._segment_start = pts
        segment = self._segment
        if segment.stream is None:
            segment.stream = self._add_stream(segment.container, frame)
            self._add_audio_stream(segment)
        stream = segment.stream
        if (frame.width, frame.height) != (stream.width, stream.height):
            frame = frame.reformat(width=stream.width, height=stream.height)
        frame.pts, frame.time_base = pts - self._segment_start, TIME_BASE
        frame.pict_type = av.video.frame.PictureType.NONE
        self._mux(segment, stream.encode(frame))
        segment.frames += 1
        self.frames += 1

    def _copy(self, frame: EncodedFrame) -> None:
        """Write a received frame as it is; files and segments start at keyframes. A
        segment ends at the first keyframe in its last ``KEYFRAME_GRACE_SECONDS``, or after
        them (one is asked for when it is due)."""
        pts = self._clock(frame.timestamp)
        if pts <= self._last_pts:
            return
        ticks = self._segment_ticks
        # How long until the open segment is due (None: it never is).
        left = None if self._segment is None or not ticks else ticks - (pts - self._segment_start)
        if left is not None and left <= self._grace_ticks and frame.keyframe:
            self._finish_segment()
        elif (left is not None and left <= 0) or (self._segment is None and not frame.keyframe):
            self._ask_for_keyframe()
            if self._segment is None:
                return
        self._last_pts = pts
        if self._segment is None:
            self._segment = self._open_segment()
            self._segment_start = pts
            self._keyframe_asked = False
        segment = self._segment
        if segment.stream is None:
            segment.stream = self._add_copy_stream(segment.container, frame)
            self._add_audio_stream(segment)
        packet = av.Packet(frame.data)
        packet.pts = packet.dts = pts - self._segment_start
        packet.time_base = TIME_BASE
        packet.stream = segment.stream
        packet.is_keyframe = frame.keyframe
        self._mux(segment, [packet])
        segment.frames += 1
        self.frames += 1

    def _copy_audio(self, packet: AudioPacket) -> None:
        """Write an Opus packet as received, timed on the video's clock (the sender
        reports put it there), into the open segment; none is open before the first
        video keyframe. Audio alone opens the segments itself."""
        if not self.video:
            self._audio_segment(packet)
        segment = self._segment
        if segment is None or segment.audio is None:
            return
        position = self._clock.peek(packet.video_timestamp)
        if position is None:
            return
        pts = round((position - self._segment_start) * SAMPLE_RATE / 90000)
        if pts < 0 or pts <= segment.audio_pts:
            return  # before the segment's first picture, or a repeat
        segment.audio_pts = pts
        segment.audio_packets += 1
        if segment.aac is not None:
            self._mux(segment, self._transcode(segment.aac, packet.data, pts))
            return
        av_packet = av.Packet(packet.data)
        av_packet.pts = av_packet.dts = pts
        av_packet.time_base = AUDIO_TIME_BASE
        av_packet.stream = segment.audio
        self._mux(segment, [av_packet])

    def _audio_segment(self, packet: AudioPacket) -> None:
        """Audio alone: the first packet opens a file, and ``segment_seconds`` of it
        the next, on the audio's own clock (its 90 kHz ``video_timestamp``)."""
        position = self._clock(packet.video_timestamp)
        ticks = self._segment_ticks
        if self._segment is not None and ticks and position - self._segment_start >= ticks:
            self._finish_segment()
        if self._segment is None:
            self._segment = self._open_segment()
            self._segment_start = position
            self._add_audio_stream(self._segment)

    def _transcode(self, aac: OpusToAac, data: bytes, pts: int) -> list[av.Packet[Any]]:
        try:
            return list(aac.encode(data, pts))
        except av.FFmpegError as exc:
            raise RecorderError(f"encoding AAC failed: {_reason(exc)}") from None

    def _add_audio_stream(self, segment: Segment) -> None:
        """A track for the connection's audio: Opus copied as received, or AAC."""
        if not self.audio:
            return
        if self.audio_codec == "aac":
            segment.audio = add_aac_stream(segment.container)
            segment.aac = OpusToAac(segment.audio)
            return
        stream = segment.container.add_stream("libopus", rate=SAMPLE_RATE)
        stream.codec_context.layout = "stereo"
        stream.time_base = AUDIO_TIME_BASE
        stream.codec_context.extradata = OPUS_HEAD
        segment.audio = stream

    def _ask_for_keyframe(self) -> None:
        """From the worker thread: the request goes out on the event loop."""
        if not self._keyframe_asked and self._request_keyframe and self._loop is not None:
            self._keyframe_asked = True
            self._loop.call_soon_threadsafe(self._request_keyframe)

    def _add_copy_stream(
        self, container: av.container.OutputContainer, frame: EncodedFrame
    ) -> av.VideoStream:
        # The picture size is in the bitstream: decode this one keyframe to learn it.
        # frame.codec is "vp8" or "h264", but a str: av's stubs know the kind of codec (and
        # of stream) only from a literal name.
        probe = av.CodecContext.create(frame.codec, "r")
        assert isinstance(probe, av.VideoCodecContext)
        decoded = probe.decode(av.Packet(frame.data))
        width, height = (decoded[0].width, decoded[0].height) if decoded else frame.size
        stream = container.add_stream(frame.codec, rate=round(self._fps))
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height = width, height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        if frame.codec == "h264":
            stream.codec_context.extradata = parameter_sets(frame.data)
        return stream

    def _mux(self, segment: Segment, packets: list[av.Packet[Any]]) -> None:
        try:
            segment.container.mux(packets)
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"writing {segment.path} failed: {_reason(exc)}") from None

    def _open_segment(self) -> Segment:
        path = self._next_path()
        try:
            container = av.open(
                path,
                mode="w",
                format=FORMATS.get(self._extension),
                container_options=CONTAINER_OPTIONS.get(self._extension, {}),
            )
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"cannot write {path}: {_reason(exc)}") from None
        self.files.append(path)
        logger.info("recording to %s", path)
        return Segment(path, container)

    def _next_path(self) -> str:
        path = time.strftime(self.pattern)
        stem, extension = os.path.splitext(path)
        number = 1
        # The first file takes the name as given; later ones never overwrite anything.
        while path in self.files or (self.files and os.path.exists(path)):
            number += 1
            path = f"{stem}-{number}{extension}"
        return path

    def _add_stream(
        self, container: av.container.OutputContainer, frame: av.VideoFrame
    ) -> av.VideoStream:
        stream = container.add_stream(ENCODERS[self._extension], rate=round(self._fps))
        stream.width, stream.height = frame.width, frame.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        # A keyframe every two seconds: segments and crash-truncated files seek well.
        stream.codec_context.gop_size = round(self._fps * 2)
        if stream.codec_context.name == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency"}
        else:
            # libvpx's defaults ("good" deadline, 256 kbit/s) took 40+ ms a 640x480 frame
            # on a busy core: the recording fell behind and the receiver dropped frames.
            # Realtime at constant quality keeps up, as the sender's VP8 does.
            stream.codec_context.options = {"deadline": "realtime", "cpu-used": "8", "crf": "10"}
            stream.codec_context.bit_rate = VP8_MAX_BIT_RATE
        return stream

    def _finish_segment(self, failed: bool = False) -> None:
        segment, self._segment = self._segment, None
        if segment is None:
            return
        try:
            if segment.stream is not None and not failed and self.mode == "encode":
                self._mux(segment, segment.stream.encode(None))
            if segment.aac is not None and not failed:
                try:
                    packets = segment.aac.flush()
                except av.FFmpegError as exc:
                    raise RecorderError(f"encoding AAC failed: {_reason(exc)}") from None
                self._mux(segment, packets)
        finally:
            try:
                segment.container.close()
            except (av.FFmpegError, OSError) as exc:
                logger.warning("closing %s: %s", segment.path, _reason(exc))
            logger.info(
                "recording closed: %s (%d frames, %d audio packets)",
                segment.path,
                segment.frames,
                segment.audio_packets,
            )

    async def close(self) -> None:
        """Flush the encoder and finish the file; raises the error that stopped it, if any."""
        if self._worker is None:
            return
        if not self._worker.done():
            await self._queue.put(Command.STOP)
        await self._worker


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)
