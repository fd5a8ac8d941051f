"""Audio: a microphone, a file, a network camera's audio (``sender.audio_sources``) or
the fake tone, encoded once to Opus for every viewer.

As for video (``sender.encoding``), stock aiortc would give each viewer its own encoder;
here one Opus encoder runs while anyone listens, and its packets are fanned out to every
viewer's ``AudioTrack`` (aiortc 1.16's ``RTCRtpSender`` packetizes an ``av.Packet`` a
track returns). The source is opened with the first listener and closed about a second
after the last one, like the camera.

Every packet's ``pts`` counts 48 kHz samples from ``sender.sources.CLOCK_ORIGIN`` on
``time.monotonic()``: the clock video frames are timed on. The sender reports both
streams on that clock (``common.aiortc_ext.sender_reports``), which is how receivers line
audio up with video.

The fake audio (``--audio testsrc``): 48 kHz mono, a 440 Hz tone at -20 dBFS, and at the
exact wall-clock instant of every whole second (``time.time()``, the frame stamp's clock)
a click: ``CLICK_SECONDS`` of a 2 kHz square wave at 0.8 of full scale. Its onset in a
recording, against the video frame whose stamp marks that second, is the audio-to-video
offset (``bench.av_sync``).
"""

from __future__ import annotations

import asyncio
import contextlib
import fractions
import logging
import math
import os
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import av
import numpy as np
from aiortc import RTCPeerConnection, RTCRtpSender
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from common import stamp
from common.aiortc_ext import sender_reports

from . import live
from .shared_capture import IDLE_CLOSE_SECONDS, SharedCapture
from .sources import CLOCK_ORIGIN

if TYPE_CHECKING:
    from .fanout import SharedSource

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
FRAME_SAMPLES = 960  # 20 ms: Opus's usual frame, one RTP packet each
FOLLOW_SAMPLES = 24  # a frame's pts this far from the count: a jump the packets follow
TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
BITRATE = 48000
VIEWER_QUEUE_PACKETS = 25  # half a second; a listener further behind loses the oldest

TONE_HZ = 440.0
TONE_AMPLITUDE = 0.1  # -20 dBFS
CLICK_SECONDS = 0.005
CLICK_HZ = 2000.0
CLICK_AMPLITUDE = 0.8

NONE = "none"
AUTO = "auto"
TESTSRC = "testsrc"
CAMERA = "camera"  # the video source's own audio (audio_sources.camera_audio); as a kind:
# a network camera's audio from the video's own connection (audio_sources.CameraAudioSource)
DEVICE = "device"  # a microphone: FFmpeg's capture device ``format`` opening ``url``
FILE = "file"  # an audio file (or a video file's audio), looped in real time
NETWORK = "network"  # a network camera's audio (rtsp://, rtsps://)
DEVICE_PREFIXES = ("alsa", "oss", "avfoundation", "dshow", "lavfi")  # FFmpeg's, for audio


class AudioSourceError(Exception):
    """An audio source that cannot be opened or read; one line for the user."""


class AudioSourceEnded(AudioSourceError):
    """A source whose provider closed it (``--audio camera``: the camera was closed, as at
    shutdown): not a failure."""


@dataclass(frozen=True)
class AudioSpec:
    """What ``--audio`` names, resolved (not opened): ``testsrc`` (the fake tone), or a
    device, file or network camera that ``url`` (with FFmpeg's ``format``) opens."""

    kind: str
    url: str = field(default="", repr=False)  # may hold a password: describe() masks it
    format: str | None = None
    rtsp_transport: str = live.DEFAULT_TRANSPORT

    def describe(self) -> str:
        """For logs and messages: never a password."""
        if self.kind == TESTSRC:
            return "fake audio (testsrc)"
        if self.kind == DEVICE:
            return f"microphone {self.format}:{self.url}"
        if self.kind == NETWORK:
            return f"the audio of {live.redact(self.url)}"
        if self.kind == CAMERA:
            return f"the audio of {live.redact(self.url)} (the video's own connection)"
        return f"audio file {self.url}"


def resolve(name: str, rtsp_transport: str = live.DEFAULT_TRANSPORT) -> AudioSpec | None:
    """``--audio``, without opening anything: None for ``none``; ``auto`` is chosen by
    ``audio_sources.choose`` (it opens the default microphone).

    ``testsrc``; ``alsa:NAME``, ``oss:PATH``, ``avfoundation::INDEX|NAME``,
    ``dshow:audio=NAME`` (``audio=`` may be left out) or ``lavfi:GRAPH`` (an FFmpeg audio
    filter graph); ``rtsp://`` or ``rtsps://`` (a network camera's audio); else a file.
    """
    if name == NONE:
        return None
    if name == TESTSRC:
        return AudioSpec(TESTSRC)
    if name in (AUTO, CAMERA):
        raise ValueError(f"choose {name!r} with audio_sources.choose()")
    if live.is_rtsp(name):
        return AudioSpec(NETWORK, name, rtsp_transport=rtsp_transport)
    prefix, sep, rest = name.partition(":")
    if sep and prefix in DEVICE_PREFIXES and rest:
        if prefix == "dshow" and not rest.startswith("audio="):
            rest = f"audio={rest}"
        return AudioSpec(DEVICE, rest, prefix)
    if os.path.isfile(name) or "://" in name:
        return AudioSpec(FILE, name)
    if os.sep in name or "." in name:
        raise AudioSourceError(f"no such audio device or file: {name}")
    raise AudioSourceError(
        f"unknown audio source {name!r}: use auto, none, testsrc, camera, a microphone (alsa:NAME, "
        "avfoundation::INDEX, dshow:audio=NAME, lavfi:GRAPH), an audio file or an rtsp:// URL"
    )


def capture_pts(monotonic: float) -> int:
    """A monotonic instant as a 48 kHz pts on the capture clock."""
    return round((monotonic - CLOCK_ORIGIN) * SAMPLE_RATE)


class AudioSource(ABC):
    """One opened audio capture: ``read()`` paces itself and returns 48 kHz frames whose
    ``pts`` are on the capture clock (``capture_pts``)."""

    async def open(self) -> None:
        """Acquire the device."""

    @property
    def error(self) -> str | None:
        """Why the source is not live, while it is not (a lost device being reopened)."""
        return None

    @abstractmethod
    async def read(self) -> av.AudioFrame: ...

    async def close(self) -> None:
        """Release the device."""


def tone(
    first_sample: int,
    count: int,
    wall_offset: float,
    hz: float = TONE_HZ,
    amplitude: float = TONE_AMPLITUDE,
) -> np.ndarray:
    """Samples ``first_sample`` onwards (capture clock) of the fake audio, as int16:
    the tone, with a click wherever the wall clock is within ``CLICK_SECONDS`` after a
    whole second. ``wall_offset``: wall clock minus monotonic clock, now. (``hz`` and
    ``amplitude``: the test RTSP camera's clicking sine, ``bench.rtsp_camera``.)"""
    n = np.arange(first_sample, first_sample + count, dtype=np.int64)
    seconds = n / SAMPLE_RATE  # since CLOCK_ORIGIN
    signal = amplitude * np.sin(2 * math.pi * hz * seconds)
    wall_start = CLOCK_ORIGIN + wall_offset  # the wall time of sample 0
    whole = math.floor(wall_start + seconds[0])
    # Time since the last whole wall-clock second, computed from a small base (precision).
    since = (wall_start - whole) + seconds
    since = since - np.floor(since)
    click = since < CLICK_SECONDS
    square = np.sign(np.sin(2 * math.pi * CLICK_HZ * since)) * CLICK_AMPLITUDE
    signal = np.where(click, square, signal)
    return np.round(signal * 32767).astype(np.int16)


class ToneSource(AudioSource):
    """The fake audio (see the module's docstring), 20 ms frames paced to the clock."""

    def __init__(self) -> None:
        self._next: int | None = None

    async def read(self) -> av.AudioFrame:
        if self._next is None:
            self._next = capture_pts(time.monotonic())
        due = CLOCK_ORIGIN + (self._next + FRAME_SAMPLES) / SAMPLE_RATE  # its last sample
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:  # fell far behind (suspended): skip ahead rather than burst
            self._next = capture_pts(time.monotonic()) - FRAME_SAMPLES
        first = self._next
        self._next += FRAME_SAMPLES
        samples = tone(first, FRAME_SAMPLES, stamp.wall_offset())
        frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = SAMPLE_RATE
        frame.pts = first
        frame.time_base = TIME_BASE
        return frame


def create(spec: AudioSpec, camera: SharedSource | None = None) -> AudioSource:
    """The source ``spec`` names, not opened; ``camera``: the video's shared source, for
    the audio of its own connection (kind ``CAMERA``)."""
    if spec.kind == TESTSRC:
        return ToneSource()
    from .audio_sources import AvAudioSource, CameraAudioSource  # they build on this module

    if spec.kind == CAMERA:
        if camera is None:
            raise AudioSourceError(f"{spec.describe()}: no camera to take it from")
        return CameraAudioSource(spec, camera)
    return AvAudioSource(spec)


class OpusEncoder:
    """libopus at 48 kHz mono, 20 ms frames; the packets keep the capture clock's pts
    (libopus's 312-sample look-ahead shows as packets timed that much earlier, so a
    decoded sample lands where it was captured)."""

    def __init__(self, bitrate: int = BITRATE) -> None:
        codec = av.CodecContext.create("libopus", "w")
        assert isinstance(codec, av.AudioCodecContext)
        codec.sample_rate = SAMPLE_RATE
        codec.layout = "mono"
        codec.format = "s16"
        codec.bit_rate = bitrate
        codec.time_base = TIME_BASE
        codec.options = {"application": "audio", "frame_duration": "20"}
        self._codec = codec
        self._resampler = av.AudioResampler(
            format="s16", layout="mono", rate=SAMPLE_RATE, frame_size=FRAME_SAMPLES
        )
        self._next: int | None = None  # the pts of the next sample out of the resampler
        self._fed: int | None = None  # the pts just after the last sample into it

    def encode(self, frame: av.AudioFrame) -> list[av.Packet[Any]]:
        """Packets for ``frame`` (some frames only fill libopus's look-ahead)."""
        assert frame.pts is not None
        pts = frame.pts if frame.time_base == TIME_BASE else capture_pts_of(frame)
        if self._next is None or self._fed is None:
            self._next = pts  # the first frame
        elif abs(pts - self._fed) > FOLLOW_SAMPLES:
            # A jump (a gap, a resync): follow the capture clock, the samples still in the
            # resampler's FIFO just before this frame's.
            self._next = pts - (self._fed - self._next)
        self._fed = pts + frame.samples
        frame.pts = None  # the resampler's FIFO wants contiguous pts: we count them here
        packets: list[av.Packet[Any]] = []
        for chunk in self._resampler.resample(frame):
            chunk.pts = self._next
            chunk.time_base = TIME_BASE
            self._next += chunk.samples
            for packet in self._codec.encode(chunk):
                packet.time_base = TIME_BASE
                packets.append(packet)
        return packets


def capture_pts_of(frame: av.AudioFrame) -> int:
    assert frame.pts is not None and frame.time_base is not None
    return round(frame.pts * frame.time_base * SAMPLE_RATE)


class AudioTrack(MediaStreamTrack):
    """A listener's feed of the shared encoder's Opus packets."""

    kind = "audio"

    def __init__(self, owner: SharedAudio) -> None:
        super().__init__()
        self._owner = owner
        self._queue: asyncio.Queue[av.Packet[Any] | None] = asyncio.Queue(VIEWER_QUEUE_PACKETS)
        self.packets_sent = 0
        self.packets_dropped = 0
        self.name = ""  # for the logs: the session id

    def offer(self, packet: av.Packet[Any] | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
            self.packets_dropped += 1
        self._queue.put_nowait(packet)

    async def recv(self) -> av.Packet[Any]:
        if self.readyState != "live":
            raise MediaStreamError
        packet = await self._queue.get()
        if packet is None:
            self.stop()
            raise MediaStreamError
        self.packets_sent += 1
        self._owner.packets_sent += 1
        return packet

    def stop(self) -> None:
        if self.readyState == "live":
            self._owner.unsubscribe(self)
        super().stop()


class SharedAudio(SharedCapture):
    """Owns the audio capture and its Opus encoder: open for the first listener, closed
    after the last. ``camera`` gives the first camera's shared source (the app's, which a
    reload may replace): ``--audio camera`` from a network camera is a user of it, so the
    camera's one connection is opened for the first listener too, and kept while anyone
    listens or watches."""

    def __init__(
        self,
        spec: AudioSpec,
        opener: Callable[[], Awaitable[AudioSource]] | None = None,
        idle_close: float = IDLE_CLOSE_SECONDS,
        camera: Callable[[], SharedSource] | None = None,
    ) -> None:
        super().__init__(idle_close, "audio")
        self.spec = spec
        self._opener = opener or self._open_spec
        self._camera = camera
        self._listeners: set[AudioTrack] = set()
        self._source: AudioSource | None = None
        self.packets_encoded = 0
        self.packets_sent = 0

    async def _open_spec(self) -> AudioSource:
        source = create(self.spec, None if self._camera is None else self._camera())
        await source.open()
        return source

    @property
    def listeners(self) -> int:
        return len(self._listeners)

    @property
    def in_use(self) -> bool:
        return bool(self._listeners)

    @property
    def error(self) -> str | None:
        """Why the open source is not live (a lost microphone), for ``/healthz``."""
        return self._source.error if self._source is not None else None

    def subscribe(self) -> AudioTrack:
        track = AudioTrack(self)
        self._listeners.add(track)
        self._start()
        return track

    def unsubscribe(self, track: AudioTrack) -> None:
        self._listeners.discard(track)
        self._idle()

    async def _run(self) -> None:
        try:
            source = await self._opener()
        except AudioSourceError as exc:
            logger.error("%s", exc)
            self._end_users()
            return
        self.opens += 1
        self.is_open = True
        self._source = source
        logger.info("audio opened: %s", self.spec.describe())
        encoder = OpusEncoder()
        try:
            while True:
                frame = await source.read()
                for packet in encoder.encode(frame):
                    self.packets_encoded += 1
                    logger.debug("opus packet pts %s, %d bytes", packet.pts, packet.size)
                    for listener in list(self._listeners):
                        listener.offer(packet)
        except AudioSourceEnded as exc:
            logger.info("%s", exc)
            self._end_users()
        except AudioSourceError as exc:
            logger.error("%s", exc)
            self._end_users()
        finally:
            self.is_open = False
            self._source = None
            await asyncio.shield(source.close())
            logger.info("audio closed: %s", self.spec.describe())

    def _end_users(self) -> None:
        for listener in list(self._listeners):
            listener.offer(None)

    def _forget_users(self) -> None:
        self._listeners.clear()


def offer_wants_audio(sdp: str) -> bool:
    """Whether an offer asks to receive audio (the viewer has an audio section)."""
    from aiortc.sdp import SessionDescription

    try:
        media = SessionDescription.parse(sdp).media
    except Exception:  # check_offer refuses it with the parser's reason
        return False
    return any(m.kind == "audio" and m.direction in ("recvonly", "sendrecv") for m in media)


def add_transceiver(pc: RTCPeerConnection, shared: SharedAudio | None, offer: str) -> Any:
    """Before the offer is applied: a send-only audio transceiver when we have audio and
    the viewer asks for it; else None (aiortc then answers its audio as inactive)."""
    if shared is None or not offer_wants_audio(offer):
        return None
    transceiver = pc.addTransceiver("audio", direction="sendonly")
    capabilities = RTCRtpSender.getCapabilities("audio")
    assert capabilities is not None
    transceiver.setCodecPreferences([c for c in capabilities.codecs if c.name.lower() == "opus"])
    return transceiver


def attach(transceiver: Any, shared: SharedAudio, name: str) -> AudioTrack | None:
    """After the answer: the listener's track on the shared encoder, its sender reporting
    the capture clock. None when the audio section could not be answered."""
    if transceiver is None or transceiver.mid is None:
        return None
    track = shared.subscribe()
    track.name = name
    transceiver.sender.replaceTrack(track)
    sender_reports.apply(transceiver.sender, SAMPLE_RATE, CLOCK_ORIGIN)
    return track


@contextlib.asynccontextmanager
async def closing(shared: SharedAudio | None) -> AsyncIterator[None]:
    """The app's audio, closed after its sessions (which are closed first)."""
    try:
        yield
    finally:
        if shared is not None:
            await shared.close()
