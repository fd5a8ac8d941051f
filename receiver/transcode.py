"""Opus to AAC for recordings that ask for AAC (``--audio-codec aac``): the received
Opus packets decoded and encoded again with FFmpeg's own ``aac`` encoder.

Timing stays the RTP's: each packet comes with its place in the file (48 kHz samples on
the video's clock, ``Recorder``), and the encoder's 1024-sample frames are cut from a
continuous run of samples that starts at the first packet's place. A lost packet (a hole
in the timestamps) becomes that much silence, an overlap is cut off, so every sample keeps
its RTP time and the track stays aligned with the video across loss."""

from __future__ import annotations

import fractions
import logging

import av
import numpy as np

from .audio import OPUS_HEAD, SAMPLE_RATE

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, SAMPLE_RATE)
BIT_RATE = 128_000  # stereo AAC-LC: transparent for speech and a tone
CHANNELS = 2
LAYOUT = "stereo"


def add_aac_stream(container: av.container.OutputContainer) -> av.AudioStream:
    """An AAC-LC track, 48 kHz stereo, timed in samples."""
    stream = container.add_stream("aac", rate=SAMPLE_RATE)
    stream.codec_context.layout = LAYOUT
    stream.codec_context.format = "fltp"
    stream.codec_context.bit_rate = BIT_RATE
    stream.time_base = TIME_BASE
    stream.codec_context.time_base = TIME_BASE
    return stream


class OpusToAac:
    """Decodes Opus packets and encodes them into ``stream`` (an ``add_aac_stream``)."""

    def __init__(self, stream: av.AudioStream) -> None:
        self.stream = stream
        decoder = av.CodecContext.create("opus", "r")
        assert isinstance(decoder, av.AudioCodecContext)
        decoder.extradata = OPUS_HEAD
        decoder.sample_rate = SAMPLE_RATE
        decoder.layout = LAYOUT
        self._decoder = decoder
        self._pending = np.zeros((CHANNELS, 0), dtype=np.float32)
        self._start: int | None = None  # the first pending sample's place
        self.silence = 0  # samples of silence put in for lost packets

    def encode(self, data: bytes, pts: int) -> list[av.Packet[av.AudioStream]]:
        """One Opus packet whose first sample belongs at ``pts`` (samples); the AAC
        packets now complete."""
        try:
            frames = self._decoder.decode(av.Packet(data))
        except av.FFmpegError as exc:  # a damaged packet: its time becomes silence
            logger.debug("undecodable Opus packet at %d: %s", pts, exc)
            return []
        for frame in frames:
            samples = _planar(frame)
            self._place(samples, pts)
            pts += samples.shape[1]
        return self._encode_full_frames()

    def flush(self) -> list[av.Packet[av.AudioStream]]:
        """The rest, then what the encoder holds back (at the end of a file)."""
        packets = self._encode_full_frames()
        if self._pending.shape[1] and self._start is not None:
            packets += self._encode_frame(self._pending)  # a short last frame is allowed
            self._pending = self._pending[:, :0]
        return packets + list(self.stream.encode(None))

    def _place(self, samples: np.ndarray, pts: int) -> None:
        if self._start is None:
            self._start = pts
        end = self._start + self._pending.shape[1]
        if pts > end:  # lost packets: silence in their place
            self.silence += pts - end
            gap = np.zeros((CHANNELS, pts - end), dtype=np.float32)
            self._pending = np.concatenate((self._pending, gap), axis=1)
        elif pts < end:  # overlaps what we have: keep the newer part only
            samples = samples[:, end - pts :]
        self._pending = np.concatenate((self._pending, samples), axis=1)

    def _encode_full_frames(self) -> list[av.Packet[av.AudioStream]]:
        size = self.stream.codec_context.frame_size or 1024
        packets: list[av.Packet[av.AudioStream]] = []
        while self._pending.shape[1] >= size:
            packets += self._encode_frame(self._pending[:, :size])
            self._pending = self._pending[:, size:]
        return packets

    def _encode_frame(self, samples: np.ndarray) -> list[av.Packet[av.AudioStream]]:
        assert self._start is not None
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(samples), format="fltp", layout=LAYOUT
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._start
        frame.time_base = TIME_BASE
        self._start += samples.shape[1]
        return list(self.stream.encode(frame))


def _planar(frame: av.AudioFrame) -> np.ndarray:
    """The frame's samples as float32, one row per channel, two channels."""
    array = frame.to_ndarray()
    if not frame.format.is_planar:
        array = array.reshape(-1, len(frame.layout.channels)).T
    if array.dtype.kind == "i":
        array = array.astype(np.float32) / 32768.0
    array = array.astype(np.float32, copy=False)
    if array.shape[0] == 1:
        array = np.repeat(array, CHANNELS, axis=0)
    return array[:CHANNELS]
