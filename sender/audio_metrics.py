"""The audio's Prometheus metrics: the shared encoder's packets, and each listener's
loss and jitter as its receiver reports them (``GET /metrics``, beside ``sender.metrics``)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

from aiortc.stats import RTCRemoteInboundRtpStreamStats
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from .audio import SAMPLE_RATE
from .sessions import Session, Sessions


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


class AudioCollector(Collector):
    def __init__(self, sessions: Sessions) -> None:
        self._sessions = sessions
        self.listeners: dict[str, tuple[int, float]] = {}

    async def refresh(self) -> None:
        live = self._sessions.live()
        results = await asyncio.gather(*map(listener_stats, live), return_exceptions=True)
        self.listeners = {
            s.id: r for s, r in zip(live, results, strict=True) if isinstance(r, tuple)
        }

    def collect(self) -> Iterator[Metric]:
        shared = self._sessions.audio
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
