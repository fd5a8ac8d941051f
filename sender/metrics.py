"""Prometheus metrics at ``GET /metrics`` (prometheus-client), read at scrape time from
the objects that own the numbers, plus per-viewer WebRTC stats.

With several cameras (or one named with ``--source NAME=SPEC``), every camera's series
also carries a ``camera`` label; the single unnamed camera's series have none, as before.
The audio's series (``sender.audio_metrics``) are the sender's: once, never labelled."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from aiohttp import web
from aiortc.stats import RTCOutboundRtpStreamStats, RTCRemoteInboundRtpStreamStats
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

from . import live
from .audio_metrics import AudioCollector
from .camera import UNAVAILABLE, Camera, Cameras
from .fanout import SharedSource
from .janus_publisher import FAILED, PUBLISHING, RETRYING, JanusPublication
from .sessions import Session, Sessions
from .tiers import TIERS


@dataclass
class ViewerStats:
    """One viewer's WebRTC stats as of the last scrape."""

    rtt_seconds: float | None = None
    packets_lost: int = 0
    fraction_lost: float = 0.0
    bytes_sent: int = 0
    bitrate_bps: float = 0.0
    at: float = 0.0


async def viewer_stats(session: Session, previous: ViewerStats | None) -> ViewerStats:
    stats = ViewerStats(at=time.monotonic())
    report = await session.pc.getStats()
    for item in report.values():
        if getattr(item, "kind", "video") != "video":
            continue  # the audio's: sender.audio_metrics
        if isinstance(item, RTCOutboundRtpStreamStats):
            stats.bytes_sent = item.bytesSent
        elif isinstance(item, RTCRemoteInboundRtpStreamStats):
            stats.rtt_seconds = item.roundTripTime
            stats.packets_lost = item.packetsLost
            stats.fraction_lost = item.fractionLost / 256  # RTCP carries it in 1/256ths
    if previous is not None and stats.at > previous.at:
        sent = stats.bytes_sent - previous.bytes_sent
        stats.bitrate_bps = max(0, sent) * 8 / (stats.at - previous.at)
    return stats


class CameraCollector(Collector):
    """One camera's series, unlabelled."""

    def __init__(
        self,
        source: SharedSource,
        sessions: Sessions,
        publications: Sequence[JanusPublication] = (),
        camera: Camera | None = None,
    ) -> None:
        self._source = source
        # One of several cameras: its state may also be "unavailable" (sender.camera).
        self._camera = camera
        self._sessions = sessions
        self._publications = publications
        self.viewers: dict[str, ViewerStats] = {}
        self.publication_bitrates: list[float] = []

    async def refresh(self) -> None:
        """WebRTC stats are async in aiortc; gather them before the (sync) collection."""
        live = [s for s in self._sessions.live() if s.track is not None]  # video viewers
        results = await asyncio.gather(
            *(viewer_stats(s, self.viewers.get(s.id)) for s in live), return_exceptions=True
        )
        self.viewers = {
            s.id: r for s, r in zip(live, results, strict=True) if isinstance(r, ViewerStats)
        }
        self.publication_bitrates = [await p.bitrate() for p in self._publications]

    def collect(self) -> Iterator[Metric]:
        sessions, totals = self._sessions, self._sessions.encoders.totals
        yield GaugeMetricFamily("webcam_viewers", "Connected viewer sessions", len(sessions))
        yield GaugeMetricFamily(
            "webcam_video_viewers", "Viewers getting video", sessions.video_viewers()
        )
        yield GaugeMetricFamily(
            "webcam_source_open", "1 while the camera is open", int(self._source.is_open)
        )
        state = GaugeMetricFamily(
            "webcam_source_state",
            "1 for the state the source is in (a network camera reconnects)",
            labels=["state"],
        )
        if self._camera is None:
            for name in live.STATES:
                state.add_metric([name], int(self._source.state == name))
        else:
            for name in (*live.STATES, UNAVAILABLE):
                state.add_metric([name], int(self._camera.state == name))
        yield state
        counters = [
            ("webcam_sessions_started", "Viewer sessions answered", sessions.started),
            ("webcam_sessions_failed", "Offers refused or failed", sessions.failed),
            ("webcam_source_opens", "Times the camera was opened", self._source.opens),
            (
                "webcam_source_reconnects",
                "Times a network camera came back after a drop",
                self._source.reconnects,
            ),
            ("webcam_frames_captured", "Frames read from the camera", self._source.frames_captured),
            ("webcam_frames_encoded", "Frames encoded (once per codec)", totals.frames_encoded),
            (
                "webcam_frames_encoded_on_loop",
                "Of those, encoded on the event loop, not in a worker thread",
                totals.frames_encoded_on_loop,
            ),
            (
                "webcam_frames_encoded_at_capture",
                "Of those, encoded as captured, in the capture task (a loop iteration sooner)",
                totals.frames_encoded_at_capture,
            ),
            ("webcam_keyframes", "Keyframes encoded", totals.keyframes),
            ("webcam_encode_seconds", "Time spent encoding", totals.encode_seconds),
            ("webcam_frames_sent", "Encoded frames handed to viewers", totals.frames_sent),
            (
                "webcam_frames_sent_at_once",
                "Of those, sent as the encoder handed them over (a loop iteration sooner)",
                totals.frames_sent_at_once,
            ),
            ("webcam_bytes_sent", "Encoded bytes handed to viewers", totals.bytes_sent),
            ("webcam_frames_dropped", "Frames dropped for slow viewers", totals.frames_dropped),
        ]
        for name, documentation, value in counters:
            yield CounterMetricFamily(name, documentation, value=value)
        yield from totals.stages.collect()  # where each frame's milliseconds go
        yield from sessions.passthrough.collect()  # the camera's own H.264
        per_viewer = {
            "rtt": GaugeMetricFamily(
                "webcam_viewer_rtt_seconds", "Round-trip time (RTCP)", labels=["session"]
            ),
            "lost": GaugeMetricFamily(
                "webcam_viewer_packets_lost", "Packets lost, as reported", labels=["session"]
            ),
            "fraction": GaugeMetricFamily(
                "webcam_viewer_fraction_lost", "Recent packet loss ratio", labels=["session"]
            ),
            "bitrate": GaugeMetricFamily(
                "webcam_viewer_bitrate_bps", "Bitrate sent to the viewer", labels=["session"]
            ),
        }
        for session_id, stats in self.viewers.items():
            if stats.rtt_seconds is not None:
                per_viewer["rtt"].add_metric([session_id], stats.rtt_seconds)
            per_viewer["lost"].add_metric([session_id], stats.packets_lost)
            per_viewer["fraction"].add_metric([session_id], stats.fraction_lost)
            per_viewer["bitrate"].add_metric([session_id], stats.bitrate_bps)
        yield from per_viewer.values()
        yield from self._tiers()
        state = GaugeMetricFamily(
            "webcam_publication_state",
            "1 for the state each SFU publication is in",
            labels=["target", "state"],
        )
        bitrate = GaugeMetricFamily(
            "webcam_publication_bitrate_bps", "Bitrate sent to the SFU", labels=["target"]
        )
        for publication, bps in zip(self._publications, self.publication_bitrates, strict=False):
            target = publication.target.describe()
            for name in (PUBLISHING, RETRYING, FAILED):
                state.add_metric([target, name], int(publication.state == name))
            bitrate.add_metric([target], bps)
        yield state
        yield bitrate

    def _tiers(self) -> Iterator[Metric]:
        """Each viewer's tier and estimate, and each tier's encoder (``sender.tiers``)."""
        tier = GaugeMetricFamily(
            "webcam_viewer_tier",
            "1 for the quality tier each viewer gets (full or reduced)",
            labels=["session", "codec", "tier"],
        )
        estimate = GaugeMetricFamily(
            "webcam_viewer_estimate_bps",
            "The viewer's bandwidth estimate (REMB, loss and delay)",
            labels=["session"],
        )
        for session in self._sessions.live():
            track = session.track
            if track is None:
                continue
            current = track.tier or track.wanted_tier
            for name in TIERS:
                tier.add_metric([session.id, track.codec, name], int(current == name))
            estimate.add_metric([session.id], track.estimate)
        viewers = GaugeMetricFamily(
            "webcam_tier_viewers", "Viewers on each tier being encoded", labels=["codec", "tier"]
        )
        bitrate = GaugeMetricFamily(
            "webcam_tier_bitrate_bps",
            "Bitrate each tier's encoder runs at",
            labels=["codec", "tier"],
        )
        for codec, tiers in self._sessions.encoders.describe().items():
            for name, info in tiers.items():
                viewers.add_metric([codec, name], info["viewers"])
                bitrate.add_metric([codec, name], info["bitrate"])
        yield from (tier, estimate, viewers, bitrate)


class SenderCollector(Collector):
    """Every camera's series: one camera's as they are, several merged into one family
    per name, each sample labelled with its camera; then the audio's, once."""

    def __init__(self, cameras: Cameras) -> None:
        self._labelled = cameras.labelled
        self._cameras = cameras
        self._made: dict[str, tuple[Camera, CameraCollector]] = {}
        self.cameras: dict[str, CameraCollector] = {}
        self.audio = AudioCollector(
            lambda: cameras.first.sessions.audio,  # every camera's Sessions share it
            lambda: [s for camera in cameras for s in camera.sessions.live()],
        )
        self._follow()

    def _follow(self) -> None:
        """One collector per camera served now (a reload adds, replaces and removes)."""
        made = {}
        for camera in self._cameras:
            known = self._made.get(camera.name)
            if known is None or known[0] is not camera:
                collector = CameraCollector(
                    camera.source,
                    camera.sessions,
                    camera.publications,
                    camera if self._labelled else None,
                )
                known = (camera, collector)
            made[camera.name] = known
        self._made = made
        self.cameras = {name: collector for name, (_, collector) in made.items()}

    async def refresh(self) -> None:
        self._follow()
        await asyncio.gather(self.audio.refresh(), *(c.refresh() for c in self.cameras.values()))

    def collect(self) -> Iterator[Metric]:
        yield from self._collect_cameras()
        yield from self.audio.collect()

    def _collect_cameras(self) -> Iterator[Metric]:
        if not self._labelled:
            for collector in self.cameras.values():
                yield from collector.collect()
            return
        merged: dict[str, Metric] = {}
        for name, collector in self.cameras.items():
            for family in collector.collect():
                into = merged.get(family.name)
                if into is None:
                    into = merged[family.name] = Metric(
                        family.name, family.documentation, family.type, family.unit
                    )
                into.samples.extend(
                    Sample(s.name, {"camera": name, **s.labels}, s.value, s.timestamp, s.exemplar)
                    for s in family.samples
                )
        yield from merged.values()


METRICS = web.AppKey("metrics", SenderCollector)
REGISTRY = web.AppKey("registry", CollectorRegistry)


def install(app: web.Application, cameras: Cameras) -> None:
    """A registry per app, so that several senders in one process keep their own."""
    collector = SenderCollector(cameras)
    registry = CollectorRegistry(auto_describe=True)
    registry.register(collector)
    app[METRICS] = collector
    app[REGISTRY] = registry


async def metrics(request: web.Request) -> web.Response:
    await request.app[METRICS].refresh()
    body = generate_latest(request.app[REGISTRY])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
