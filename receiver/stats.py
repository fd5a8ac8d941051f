"""What the receiver measures: frame rate, size, and, when the stamp is present,
capture-to-decoded latency and missing sequence numbers; and where each frame's
milliseconds go (``Breakdown``)."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import av
import numpy as np

from common import stamp
from common.aiortc_ext.frame_timing import FrameTimes

from .audio import AudioStats
from .span import Span

# A decoded stamp cell is near black or near white. A picture with more cells in
# between than an encoder's smoothing explains carries no stamp. (VP8 can blur a
# cell that straddles a 16x16 macroblock edge when the cell size is not a multiple of 16.)
_DARK, _LIGHT = 64, 192
_MAX_UNCLEAR_CELLS = 2


def read_stamp(frame: av.VideoFrame) -> stamp.Stamp | None:
    """The stamp of a decoded yuv420p frame, or None when the picture carries none."""
    if frame.width < stamp.MIN_WIDTH or frame.format.name not in ("yuv420p", "yuvj420p"):
        return None
    s = stamp.cell_size(frame.width)
    plane = frame.planes[0]
    rows = np.frombuffer(memoryview(plane), np.uint8, count=plane.line_size * 2 * s)
    luma = rows.reshape(2 * s, plane.line_size)[:, : frame.width]
    centres = luma[s // 2 :: s][:2, s // 2 : stamp.BITS * s : s]
    if np.count_nonzero((centres > _DARK) & (centres < _LIGHT)) > _MAX_UNCLEAR_CELLS:
        return None
    return stamp.read(luma)


LATENCY_SAMPLES = 30 * 3600
RTT_SAMPLES = 43_200
FPS_WINDOW_SECONDS = 1.0
FREEZE_SECONDS = 0.25  # a gap between two frames longer than this is a visible freeze


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile of a non-empty sequence (every caller has one to summarise)."""
    return float(np.percentile(values, q))


def _recent(values: deque[float], count: int) -> list[float]:
    return [values[-i] for i in range(1, min(count, len(values)) + 1)]


# The receiver's stages of a frame, in order, and what --stats-breakdown calls them.
STAGES = {
    "capture_to_receive": "capture>receive",  # the sender and the network (stamp needed)
    "receive_to_complete": "receive>complete",  # first packet to complete in the buffer
    "complete_to_decoded": "complete>decoded",  # the decoder, and the hand-overs around it
    "decoding": "decoding",  # of that, the decoder's own time (when ours decoded it)
    "capture_to_decoded": "capture>decoded",  # all of it: the first three (stamp needed)
}


@dataclass
class Breakdown:
    """Where each decoded frame's milliseconds went, measured as it leaves the decoder:
    capture to its first RTP packet here (the sender's stages and the network; from the
    stamp, so only as good as the two clocks' agreement), first packet to complete (the
    jitter buffer: the frame's transmission, and repairs), complete to decoded (and of it
    the decoder's own time, when our ``LoopDecoder`` decoded the frame). For a frame with a
    stamp, capture to decoded is exactly the sum of the first three."""

    stages_ms: dict[str, deque[float]] = field(
        default_factory=lambda: {name: deque(maxlen=LATENCY_SAMPLES) for name in STAGES}
    )

    def add(self, times: FrameTimes, found: stamp.Stamp | None) -> None:
        """One decoded frame's times, and its stamp (None: it carries none)."""
        stages = self.stages_ms
        stages["receive_to_complete"].append(times.receive_to_complete * 1000)
        stages["complete_to_decoded"].append(times.complete_to_decoded * 1000)
        if times.decoding is not None:
            stages["decoding"].append(times.decoding * 1000)
        if found is None:
            return
        # the stamp's wall clock, at the moment the first packet arrived
        wall_at_first = stamp.now_us() - round((time.monotonic() - times.first_packet) * 1e6)
        to_receive = stamp.age_us(found, wall_at_first % stamp.MODULUS) / 1000
        stages["capture_to_receive"].append(to_receive)
        stages["capture_to_decoded"].append(
            to_receive + (times.decoded - times.first_packet) * 1000
        )

    @property
    def frames(self) -> int:
        return len(self.stages_ms["receive_to_complete"])

    def status(self, recent: int = 30) -> str:
        """p50/p95 of each stage over the last ``recent`` frames, for the status line."""
        parts = []
        for name, label in STAGES.items():
            values = _recent(self.stages_ms[name], recent)
            if values:
                parts.append(f"{label} {percentile(values, 50):.0f}/{percentile(values, 95):.0f}")
        return f"ms p50/p95: {' '.join(parts)}" if parts else ""

    def summary(self) -> dict[str, dict[str, float] | None] | None:
        if not self.frames:
            return None
        return {
            name: {
                "p50": round(percentile(values, 50), 2),
                "p95": round(percentile(values, 95), 2),
            }
            if values
            else None
            for name, values in self.stages_ms.items()
        }


@dataclass
class FrameStats(Span):
    """Running counters, updated once per decoded frame."""

    frames: int = 0
    width: int = 0
    height: int = 0
    dropped: int = 0
    stamped: int = 0
    # Bounded: a receiver may record for weeks. The summary's percentiles cover the last
    # hour of frames (at 30 fps) and the last day of RTT probes.
    latencies_ms: deque[float] = field(default_factory=lambda: deque(maxlen=LATENCY_SAMPLES))
    last_sequence: int | None = None
    reconnects: int = 0
    rtt_ms: deque[float] = field(default_factory=lambda: deque(maxlen=RTT_SAMPLES))
    packets_received: int = 0  # summed over connections
    packets_lost: int = 0
    jitter_ms: float | None = None  # of the last connection
    max_gap: float = 0.0  # seconds between two consecutive frames, at most
    freezes: int = 0  # gaps over FREEZE_SECONDS
    breakdown: Breakdown = field(default_factory=Breakdown)  # filled as frames are decoded
    audio: AudioStats = field(default_factory=AudioStats)  # the sender's audio, if any
    video: bool = True  # False: audio alone (--no-video); the video's part is left out
    _window: deque[float] = field(default_factory=deque)  # arrival times, last second
    _stamped: tuple[av.VideoFrame, stamp.Stamp | None] | None = field(default=None, repr=False)
    _unread: tuple[av.VideoFrame, int] | None = field(default=None, repr=False)  # and when

    def _count(self) -> None:
        now = time.monotonic()
        if self.last_at is not None:
            gap = now - self.last_at
            self.max_gap = max(self.max_gap, gap)
            self.freezes += gap > FREEZE_SECONDS
        self.frames += 1
        self.mark(now)
        self._window.append(now)
        while self._window[0] < now - FPS_WINDOW_SECONDS:
            self._window.popleft()

    def stamp_of(self, frame: av.VideoFrame) -> stamp.Stamp | None:
        """``frame``'s stamp, read once for both the latency and the breakdown."""
        if self._stamped is None or self._stamped[0] is not frame:
            self._stamped = (frame, read_stamp(frame))
        return self._stamped[1]

    def decoded(self, frame: av.VideoFrame, times: FrameTimes) -> None:
        """A decoded frame's stage times (``Connection`` calls this once its reader has
        the frame, so that reading the stamp does not delay it)."""
        self.breakdown.add(times, self.stamp_of(frame))

    def update(self, frame: av.VideoFrame) -> None:
        """Count a decoded frame as its reader gets it; its latency is up to now. Its stamp
        is read once the reader has had its turn (``settle()``, soon after on the event
        loop): reading it takes 0.1-0.2 ms, which the frame should not wait for."""
        now = stamp.now_us()
        self.settle()  # the frame before, if the reader took this one without a pause
        self._count()
        self.width, self.height = frame.width, frame.height
        self._unread = (frame, now)
        try:
            asyncio.get_running_loop().call_soon(self.settle)
        except RuntimeError:  # no event loop: read it now
            self.settle()

    def settle(self) -> None:
        """Read the stamp of the frame counted last, if not read yet: its latency, and
        the frames missing before it. The summary and the status line settle first."""
        if self._unread is None:
            return
        frame, now = self._unread
        self._unread = None
        found = self.stamp_of(frame)
        if found is None:
            return
        self.stamped += 1
        self.latencies_ms.append(stamp.age_us(found, now) / 1000)
        last = self.last_sequence
        if last is None or found.sequence > last:
            if last is not None:
                self.dropped += found.sequence - last - 1
            self.last_sequence = found.sequence

    def update_encoded(self, width: int = 0, height: int = 0) -> None:
        """Count a frame kept as received, not decoded (so no stamp to read)."""
        self._count()
        if width:
            self.width, self.height = width, height

    def add_transport(self, received: int, lost: int, jitter_rtp: int) -> None:
        """One connection's RTP counters (jitter in 90 kHz RTP units)."""
        self.packets_received += received
        self.packets_lost += max(0, lost)
        self.jitter_ms = jitter_rtp / 90

    def gap(self) -> None:
        """A new connection: its sender may count sequence numbers afresh."""
        self.settle()  # the last frame of the connection before
        self.last_sequence = None
        self.reconnects += 1

    @property
    def fps(self) -> float:
        return (self.frames - 1) / self.seconds if self.frames > 1 and self.seconds > 0 else 0.0

    def recent_fps(self, window: float = FPS_WINDOW_SECONDS) -> float:
        cutoff = time.monotonic() - window
        while self._window and self._window[0] < cutoff:
            self._window.popleft()
        return len(self._window) / window

    def status_line(self, breakdown: bool = False) -> str:
        """Frames, fps, size, latency; with ``breakdown``, each stage's p50/p95 too. Audio
        alone: its packets and level."""
        self.settle()
        if not self.video:
            return f"audio packets {self.audio.packets}  {self.audio.status()}"
        parts = [f"frames {self.frames}", f"fps {self.recent_fps():.1f}"]
        if self.width:
            parts.append(f"{self.width}x{self.height}")
        recent = _recent(self.latencies_ms, 30)
        if recent:
            parts.append(
                f"latency p50 {percentile(recent, 50):.0f} ms p95 {percentile(recent, 95):.0f} ms"
            )
            parts.append(f"dropped {self.dropped}")
        if breakdown and (stages := self.breakdown.status()):
            parts.append(stages)
        parts.append(self.audio.status())
        return "  ".join(parts)

    @property
    def received(self) -> bool:
        """Whether anything was received (the summary then says what)."""
        return bool(self.frames) if self.video else self.audio.received

    def summary(self) -> dict[str, object]:
        self.settle()
        if not self.video:
            return self._audio_summary()
        result: dict[str, object] = {
            "frames": self.frames,
            "seconds": round(self.seconds, 3),
            "fps": round(self.fps, 2),
            "width": self.width,
            "height": self.height,
            "stamped_frames": self.stamped,
            "dropped": self.dropped if self.stamped else None,
            "latency_ms": None,
            "reconnects": self.reconnects,
            "rtt_ms": self._rtt_summary(),
            "packets_received": self.packets_received,
            "packets_lost": self.packets_lost,
            "loss": None,
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, 2),
            "max_gap_ms": round(self.max_gap * 1000, 1),
            "freezes": self.freezes,
            "breakdown_ms": self.breakdown.summary(),
            "audio": self.audio.summary(),  # packets, loss, jitter; null without audio
        }
        expected = self.packets_received + self.packets_lost
        if expected:
            result["loss"] = round(self.packets_lost / expected, 4)
        if self.latencies_ms:
            result["latency_ms"] = {
                "p50": round(percentile(self.latencies_ms, 50), 2),
                "p95": round(percentile(self.latencies_ms, 95), 2),
            }
        return result

    def _audio_summary(self) -> dict[str, object]:
        """Audio alone: how long it came, reconnections, the round trip, the audio."""
        return {
            "seconds": round(self.audio.seconds, 3),
            "reconnects": self.reconnects,
            "rtt_ms": self._rtt_summary(),
            "audio": self.audio.summary(),
        }

    def _rtt_summary(self) -> dict[str, float] | None:
        if not self.rtt_ms:
            return None
        return {"p50": round(percentile(self.rtt_ms, 50), 3), "max": round(max(self.rtt_ms), 3)}
