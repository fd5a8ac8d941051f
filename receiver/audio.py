"""The audio of one connection: Opus packets as received (for copy recording), decoded
frames (for your code and the speakers), each packet placed on the video's clock.

Both streams' RTP timestamps start at random origins, so the receiver lines them up
through the sender's RTCP sender reports (``common.aiortc_ext.sender_report_tap``): each
says which RTP time of its stream a wall-clock instant of the sender is. An audio
packet's RTP time becomes a sender wall-clock time through the audio reports, and that a
video RTP time through the video reports: ``AudioPacket.video_timestamp``, on the same
scale as the video frames' ``EncodedFrame.timestamp``. Recordings time both tracks from
RTP this way, so they stay aligned across loss and gaps. Until both streams have had a
report (within about 1.5 s of the start) packets wait here. A receiver of audio alone
(``--no-video``) has no video clock: its packets are timed on their own RTP clock
(``OwnClock``), at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from common.aiortc_ext import passthrough, sender_report_tap, streams
from common.tasks import cancel

from .span import Span

logger = logging.getLogger(__name__)

SAMPLE_RATE = 48000
VIDEO_CLOCK_RATE = 90000
RTP_WRAP = 1 << 32
PENDING_PACKETS = 250  # five seconds of 20 ms packets waiting for the first reports
# Opus identification header for containers (RFC 7845 5.1): version 1, two channels
# (what WebRTC negotiates), no pre-skip (the stream is joined mid-way: no priming
# samples to drop), 48 kHz, no gain, mapping family 0.
OPUS_HEAD = b"OpusHead" + struct.pack("<BBHIhB", 1, 2, 0, SAMPLE_RATE, 0, 0)


@dataclass(frozen=True)
class AudioPacket:
    """One Opus packet as received. ``timestamp``: 48 kHz RTP clock, counted by aiortc
    from the stream's first packet; ``video_timestamp``: the same instant on the video
    frames' clock (90 kHz, as ``EncodedFrame.timestamp``), from the sender reports; audio
    alone (``OwnClock``): the packet's own time on that 90 kHz scale."""

    data: bytes
    timestamp: int
    video_timestamp: int


class Lipsync:
    """Puts audio RTP times on the video's clock through both streams' sender reports."""

    def __init__(self, video: RTCRtpReceiver, audio: RTCRtpReceiver) -> None:
        self.video = sender_report_tap.tap(video, VIDEO_CLOCK_RATE)
        self.audio = sender_report_tap.tap(audio, SAMPLE_RATE)

    def video_timestamp(self, audio_timestamp: int) -> int | None:
        """The video timestamp (aiortc-mapped, like the frames') of an audio packet's
        (aiortc-mapped) timestamp; None until both streams have a report."""
        wall = self.audio.wall_time(audio_timestamp)
        return None if wall is None else self.video.timestamp_at(wall)


class OwnClock:
    """Audio alone: a packet's own RTP time, on the 90 kHz scale (32-bit, wrapping) the
    recorder counts video frames in; the 48 kHz wrap is undone first, so that the 90 kHz
    count wraps only where a 32-bit clock does."""

    def __init__(self) -> None:
        self._last: int | None = None
        self._wraps = 0

    def video_timestamp(self, audio_timestamp: int) -> int:
        last = self._last
        if last is not None and audio_timestamp < last and last - audio_timestamp > RTP_WRAP // 2:
            self._wraps += 1
        self._last = audio_timestamp
        unwrapped = audio_timestamp + self._wraps * RTP_WRAP
        return unwrapped * VIDEO_CLOCK_RATE // SAMPLE_RATE % RTP_WRAP


class AudioStream:
    """The audio receiver of one connection: taps its packets, reads its decoded frames.
    ``close()`` stops the reading task."""

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        track: MediaStreamTrack,
        sync: Lipsync | OwnClock | None,
        stats: AudioStats,
        *,
        on_packet: Callable[[AudioPacket], None] | None,
        on_frame: Callable[[av.AudioFrame], None] | None,
        on_arrival: Callable[[], None] | None = None,
        on_ended: Callable[[], None] | None = None,
    ) -> None:
        """``on_arrival``: called for every packet (a receiver of audio alone watches
        these for stalls); ``on_ended``: the sender ended the track."""
        self.receiver = receiver
        self.sync = sync
        self._on_packet = on_packet
        self._on_frame = on_frame
        self._on_arrival = on_arrival
        self._on_ended = on_ended
        self._pending: deque[tuple[bytes, int]] = deque(maxlen=PENDING_PACKETS)
        self._task: asyncio.Task[None] | None = None
        self.packets = 0
        self.stats = stats
        # Always decoded (Opus is cheap): the status line shows the level.
        if on_packet is not None or on_arrival is not None:
            passthrough.tap(receiver, self._tapped, decode=True)
        self._task = asyncio.create_task(self._read(track), name="decoded audio")

    def set_sync(self, sync: Lipsync | OwnClock) -> None:
        self.sync = sync

    def _tapped(self, codec: str, data: bytes, timestamp: int) -> None:
        self.packets += 1
        self.stats.arrived()
        if self._on_arrival is not None:
            self._on_arrival()
        logger.debug("audio packet %d bytes, timestamp %d", len(data), timestamp)
        if self._on_packet is None or codec != "opus":
            return
        self._pending.append((data, timestamp))
        if self.sync is None:
            return
        while self._pending:
            data, ts = self._pending[0]
            video = self.sync.video_timestamp(ts)
            if video is None:
                return
            self._pending.popleft()
            self._on_packet(AudioPacket(data, ts, video))

    async def _read(self, track: MediaStreamTrack) -> None:
        with contextlib.suppress(MediaStreamError):
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.AudioFrame)
                self.stats.heard(rms(frame))
                if self._on_frame is not None:
                    self._on_frame(frame)
        if self._on_ended is not None:
            self._on_ended()

    async def close(self) -> None:
        """Stop reading; the connection's loss and jitter go to the statistics."""
        for stream in streams.media_streams(self.receiver).values():
            self.stats.add_transport(stream.packets_received, stream.packets_lost, stream.jitter)
        await cancel(self._task)
        self._task = None


def rms(frame: av.AudioFrame) -> float:
    """The frame's loudness: RMS of its samples, 0 (silence) to 1 (full scale)."""
    samples = frame.to_ndarray()
    if samples.size == 0:
        return 0.0
    scale = 32768.0 if samples.dtype.kind == "i" else 1.0
    return float(((samples.astype("float64") / scale) ** 2).mean() ** 0.5)


def add_transceiver(pc: RTCPeerConnection) -> None:
    """Offer to receive Opus (the one codec the sender sends and containers hold)."""
    transceiver = pc.addTransceiver("audio", direction="recvonly")
    capabilities = RTCRtpReceiver.getCapabilities("audio")
    assert capabilities is not None
    transceiver.setCodecPreferences([c for c in capabilities.codecs if c.name.lower() == "opus"])


@dataclass
class AudioStats(Span):
    """The audio's share of the receiver's statistics (``FrameStats.audio``); its span
    runs from the first to the last packet counted."""

    received: bool = False  # some connection carried audio
    packets_received: int = 0  # summed over connections
    packets_lost: int = 0
    jitter_ms: float | None = None  # of the last connection
    level: float = 0.0  # RMS of the last decoded frame
    level_at: float = -1e9  # when it was decoded (monotonic)
    packets: int = 0  # counted as they arrive (when tapped: recording, or audio alone)

    def arrived(self) -> None:
        """One packet, as it arrives."""
        self.packets += 1
        self.mark(time.monotonic())

    @property
    def level_dbfs(self) -> float | None:
        """The last decoded frame's level (None: silent or nothing decoded)."""
        return 20 * math.log10(self.level) if self.level > 1e-5 else None

    def heard(self, level: float) -> None:
        self.received = True
        self.level, self.level_at = level, time.monotonic()

    def add_transport(self, received: int, lost: int, jitter_rtp: int) -> None:
        """One connection's audio RTP counters (jitter in 48 kHz RTP units)."""
        self.received = self.received or received > 0
        self.packets_received += received
        self.packets_lost += max(0, lost)
        self.jitter_ms = jitter_rtp * 1000 / SAMPLE_RATE

    def status(self) -> str:
        """The status line's part: the level in dBFS, or "no audio"."""
        if time.monotonic() - self.level_at > 1.0:
            return "no audio"
        level = self.level_dbfs
        return "audio silent" if level is None else f"audio {level:.0f} dBFS"

    def summary(self) -> dict[str, object] | None:
        if not self.received:
            return None
        expected = self.packets_received + self.packets_lost
        return {
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "loss": round(self.packets_lost / expected, 4) if expected else None,
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, 2),
            "level_dbfs": None if (level := self.level_dbfs) is None else round(level, 1),
        }
