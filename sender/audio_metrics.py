"""The audio's numbers: its Prometheus metrics (the shared encoder's packets, and each
listener's loss and jitter as its receiver reports them; ``GET /metrics``, beside
``sender.metrics``) and its part of ``/healthz``.

The audio is the sender's, shared by every camera's viewers: its series appear once,
without a ``camera`` label, however many cameras there are (a listener's session id is
unique across cameras)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from aiortc.stats import RTCRemoteInboundRtpStreamStats
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .audio import SAMPLE_RATE, SharedAudio
from .sessions import Session


async def listener_stats(session: Session) -> tuple[int, float] | None:
    """(packets lost, jitter in seconds) of a listener's audio, from its last receiver
    report; None when it gets no audio or has not reported yet."""
    if session.audio_track is None:
        return None
    report = await session.pc.getStats()
    for item in report.values():
        if isinstance(item, RTCRemoteInboundRtpStreamStats) and item.kind == "audio":
            return item.packetsLost, item.jitter / SAMPLE_RATE
    return None


def health(shared: SharedAudio | None) -> dict[str, object]:
    """``/healthz``'s ``audio``: configured or not, the source, open or closed, why it
    is not live (a lost device being reopened), listeners and packets."""
    return {
        "configured": shared is not None,
        "source": shared.spec.describe() if shared else None,
        "open": bool(shared and shared.is_open),
        "opens": shared.opens if shared else 0,
        "error": shared.error if shared else None,
        "listeners": shared.listeners if shared else 0,
        "packets_encoded": shared.packets_encoded if shared else 0,
        "packets_sent": shared.packets_sent if shared else 0,
    }


class AudioCollector(Collector):
    """The sender's audio series; ``sessions`` gives every camera's live viewers."""

    def __init__(
        self, shared: Callable[[], SharedAudio | None], sessions: Callable[[], list[Session]]
    ) -> None:
        self._shared = shared
        self._sessions = sessions
        self.listeners: dict[str, tuple[int, float]] = {}

    async def refresh(self) -> None:
        live = self._sessions()
        results = await asyncio.gather(*map(listener_stats, live), return_exceptions=True)
        self.listeners = {
            s.id: r for s, r in zip(live, results, strict=True) if isinstance(r, tuple)
        }

    def collect(self) -> Iterator[Metric]:
        shared = self._shared()
        yield GaugeMetricFamily(
            "webcam_audio_open",
            "1 while the audio source is open",
            int(bool(shared and shared.is_open)),
        )
        yield GaugeMetricFamily(
            "webcam_audio_listeners", "Viewers getting the audio", shared.listeners if shared else 0
        )
        yield CounterMetricFamily(
            "webcam_audio_packets_encoded",
            "Opus packets encoded (once for every listener)",
            value=shared.packets_encoded if shared else 0,
        )
        yield CounterMetricFamily(
            "webcam_audio_packets_sent",
            "Opus packets handed to listeners",
            value=shared.packets_sent if shared else 0,
        )
        lost = GaugeMetricFamily(
            "webcam_viewer_audio_packets_lost",
            "Audio packets lost, as reported",
            labels=["session"],
        )
        jitter = GaugeMetricFamily(
            "webcam_viewer_audio_jitter_seconds", "Audio interarrival jitter", labels=["session"]
        )
        for session_id, (packets_lost, seconds) in self.listeners.items():
            lost.add_metric([session_id], packets_lost)
            jitter.add_metric([session_id], seconds)
        yield lost
        yield jitter
