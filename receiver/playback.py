"""``--audio-out``: the received audio on a local sound device, through ``sounddevice``
(PortAudio), an optional extra: ``pip install 'webrtc-webcam[audio-out]'``.

PortAudio pulls samples from its own thread (a callback stream); the event loop only
appends decoded frames to a small queue (``PcmQueue``), so playing never blocks the loop
nor delays the video. When the queue runs dry the device plays silence, and waits for a
few packets' worth before playing again; when it holds more than ``MAX_SECONDS`` (the
device stalled for a moment, or is slower than the sender's clock, or the loop delivered
a burst) the oldest samples go, down to that same few packets' worth: the delay comes
back down at once rather than staying at the most it may be."""

from __future__ import annotations

import asyncio
import importlib
import logging
import threading
from collections import deque
from typing import Any

import av
import numpy as np

from .audio import SAMPLE_RATE
from .sinks import Sink, SinkError

logger = logging.getLogger(__name__)

CHANNELS = 2
MAX_SECONDS = 0.2  # queued beyond this, the oldest samples are dropped
PREFILL_SECONDS = 0.06  # after running dry, wait for three packets before playing again
# The device's own buffer, and the block each callback fills (one Opus packet). The
# callback runs Python, so it needs the GIL, which the event loop may hold for 5 ms
# (sys.getswitchinterval) at a time or more: 2 ms blocks ("low" latency) then miss the
# device's deadlines (measured: the device took 4 s of samples in 6 s while the receiver
# decoded video); 20 ms blocks in a 60 ms buffer leave room.
DEVICE_LATENCY = 0.06
BLOCK_SAMPLES = 960
DEFAULT_DEVICE = "default"  # --audio-out without a value: the system's default output
INSTALL_HINT = (
    "--audio-out needs the sounddevice package and PortAudio: "
    "pip install 'webrtc-webcam[audio-out]' (on Debian/Ubuntu also: apt install libportaudio2)"
)


def interleaved(frame: av.AudioFrame) -> np.ndarray:
    """A decoded frame as 16-bit stereo samples, one row per sample (what the device
    plays). aiortc decodes to s16 stereo already; other layouts are converted."""
    array = frame.to_ndarray()
    channels = len(frame.layout.channels)
    array = array.T if frame.format.is_planar else array.reshape(-1, channels)
    if array.dtype.kind == "f":
        array = np.clip(array * 32767.0, -32768, 32767)
    array = array.astype(np.int16, copy=False)
    if array.shape[1] == 1:
        array = np.repeat(array, CHANNELS, axis=1)
    return np.ascontiguousarray(array[:, :CHANNELS])


class PcmQueue:
    """Samples between the event loop (``put``) and the device's thread (``read``).
    Underruns read silence; beyond ``max_samples`` the oldest go, down to
    ``prefill_samples``; both are counted (in samples)."""

    def __init__(
        self,
        max_samples: int = round(MAX_SECONDS * SAMPLE_RATE),
        prefill_samples: int = round(PREFILL_SECONDS * SAMPLE_RATE),
    ) -> None:
        self.max_samples = max_samples
        self.prefill_samples = prefill_samples
        self._chunks: deque[np.ndarray] = deque()
        self._queued = 0
        self._lock = threading.Lock()
        self._playing = False  # False: waiting for prefill_samples before playing
        self.played = 0
        self.silence = 0  # underrun: silence played while waiting for samples
        self.dropped = 0  # overrun: samples dropped to keep the delay low
        self.underruns = 0
        self._queued_sum = 0  # queued samples summed over the reads that played some
        self._reads = 0

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def mean_delay(self) -> float:
        """Seconds of sound waiting here on average (while playing): the queue's share
        of the delay, on top of the device's latency and the receiver's jitter buffer."""
        return self._queued_sum / self._reads / SAMPLE_RATE if self._reads else 0.0

    def put(self, samples: np.ndarray) -> None:
        """Rows of stereo int16 samples, at the end; the oldest go beyond the limit."""
        with self._lock:
            self._chunks.append(samples)
            self._queued += len(samples)
            if self._queued <= self.max_samples:
                return
            excess = self._queued - self.prefill_samples
            while excess > 0:
                head = self._chunks[0]
                if len(head) <= excess:
                    self._chunks.popleft()
                    cut = len(head)
                else:
                    self._chunks[0] = head[excess:]
                    cut = excess
                self._queued -= cut
                self.dropped += cut
                excess -= cut

    def read(self, out: np.ndarray) -> None:
        """Fill ``out`` (rows of stereo int16) from the front; silence where nothing is."""
        wanted = len(out)
        filled = 0
        with self._lock:
            if not self._playing and self._queued >= self.prefill_samples:
                self._playing = True
            if self._playing:
                self._queued_sum += self._queued
                self._reads += 1
            while self._playing and filled < wanted and self._chunks:
                head = self._chunks[0]
                take = min(len(head), wanted - filled)
                out[filled : filled + take] = head[:take]
                filled += take
                if take == len(head):
                    self._chunks.popleft()
                else:
                    self._chunks[0] = head[take:]
                self._queued -= take
            if self._playing and filled < wanted:
                self._playing = False  # ran dry: prefill again before going on
                self.underruns += 1
            self.played += filled
            self.silence += wanted - filled
        out[filled:] = 0


def parse_device(text: str) -> int | str | None:
    """``--audio-out``'s value: ``default`` (the system's), a device index, or (part of)
    a device name as ``python -m sounddevice`` lists them."""
    if text == DEFAULT_DEVICE:
        return None
    return int(text) if text.isdigit() else text


class AudioOut(Sink):
    """Plays decoded audio frames on a sound device. Opens it at once, so that a missing
    library or device is an error before connecting (``SinkError``, one line)."""

    def __init__(self, device: str = DEFAULT_DEVICE) -> None:
        try:
            # An optional extra without type information: imported by name, used as Any.
            sounddevice = importlib.import_module("sounddevice")
        except (ImportError, OSError):  # OSError: the module is there, PortAudio is not
            raise SinkError(INSTALL_HINT) from None
        self.queue = PcmQueue()
        self.device_underflows = 0  # the device ran dry before the callback came back
        self.device = device
        try:
            self._stream = sounddevice.OutputStream(
                samplerate=SAMPLE_RATE,
                channels=CHANNELS,
                dtype="int16",
                device=parse_device(device),
                latency=DEVICE_LATENCY,
                blocksize=BLOCK_SAMPLES,
                callback=self._callback,
            )
            self._stream.start()
        except (sounddevice.PortAudioError, ValueError) as exc:
            raise SinkError(f"--audio-out: cannot play on {device!r}: {exc}") from None
        logger.info(
            "playing audio on %s (%.0f ms output latency)",
            device,
            self._stream.latency * 1000,
        )

    def _callback(self, out: np.ndarray, frames: int, time: Any, status: Any) -> None:
        """PortAudio's thread: the next samples, never waiting for the event loop."""
        if status.output_underflow:
            self.device_underflows += 1
        self.queue.read(out)

    def play(self, frame: av.AudioFrame) -> None:
        """Queue a decoded frame (from the event loop; returns at once)."""
        self.queue.put(interleaved(frame))

    async def close(self) -> None:
        stream = self._stream
        if stream.closed:
            return
        await asyncio.to_thread(stream.close)  # stopping waits for the device
        queue = self.queue
        logger.info(
            "audio out closed: %.1f s played, %.0f ms queued on average, %.2f s silence "
            "(%d underruns), %.2f s dropped, %d device underflows",
            queue.played / SAMPLE_RATE,
            queue.mean_delay * 1000,
            queue.silence / SAMPLE_RATE,
            queue.underruns,
            queue.dropped / SAMPLE_RATE,
            self.device_underflows,
        )
