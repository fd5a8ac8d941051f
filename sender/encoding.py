"""Encode once for many viewers, in a few quality tiers.

Stock aiortc gives every viewer its own encoder: at 720p VP8 that is 0.3-0.4 of a core
per viewer. Here each codec has one encoder per quality tier (``sender.tiers``: full, and
reduced for viewers on a slow link), and only while a viewer is on it; its packets are
fanned out to every viewer on that tier, and aiortc only packetizes them
(``RTCRtpSender`` accepts ``av.Packet`` from a track). Keyframe requests, bandwidth
estimates (REMB) and receiver reports from the viewers reach the encoder through
``common.aiortc_ext.rtcp_feedback``; each viewer's bandwidth is estimated on its own
(``sender.congestion``) and decides its tier.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

import av
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs import vpx as aiortc_vpx
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from aiortc.rtp import RtcpReceiverInfo
from av.video.reformatter import VideoReformatter

from common.aiortc_ext.rtp_send import Payloads, SendNow
from common.loop_budget import MAX_ENCODE_SECONDS, LoopBudget

from . import encoders as video_encoders
from . import tiers
from .congestion import BandwidthEstimator, reported_packets
from .encoders import Encoder, EncoderFactory
from .fanout import SharedSource, ViewerTrack
from .outgoing import Outgoing, PictureIds
from .sources import capture_time
from .stages import StageTimes

logger = logging.getLogger(__name__)

VIEWER_QUEUE_PACKETS = 15  # half a second at 30 fps; a viewer further behind starts over
BITRATE_CHANGE = 0.1  # re-create the encoder only when the target moves by more than 10%
KEYFRAME_INTERVAL_MIN = 0.3  # requests closer together than this share one keyframe
UP_INTERVAL = 2.0  # seconds between two bitrate changes up (each costs a keyframe)
UP_STEP = 1.25  # at most this much more bitrate per step up
DOWN_HOLD = 3.0  # seconds after a decrease before going up again
STEP_FAILED_WITHIN = 5.0  # a decrease this soon after a step up: the step failed
STEP_RETRY = 6.0  # seconds from a step up that failed to the next one
CEILING_FRACTION = 0.95  # the first step up after a decrease: at most this much of the
# bitrate that was decreased from
DOWN_NOW = 0.7  # a target below this share of the bitrate (or congestion) is followed...
DOWN_SETTLE = 0.5  # ...once it has lasted this long (seconds), for the estimate to settle
DOWN_CONFIRM = 1.5  # a milder fall once it has lasted this long
SCALED_FRAMES_KEPT = 4  # scaled pictures kept for the other codecs' encoders


@dataclass
class Totals:
    """Counters that outlive encoders and viewers (for /metrics)."""

    frames_encoded: int = 0
    frames_encoded_on_loop: int = 0  # not in a worker thread (``common.loop_budget``)
    frames_encoded_at_capture: int = 0  # of those, in the capture task (``SharedEncoder._take``)
    keyframes: int = 0
    encode_seconds: float = 0.0
    frames_sent: int = 0
    frames_sent_at_once: int = 0  # of those, sent as handed over (``EncodedTrack._send``)
    bytes_sent: int = 0
    frames_dropped: int = 0
    stages: StageTimes = field(default_factory=StageTimes)  # per-frame stage times


@dataclass(frozen=True)
class CodecProfile:
    """A codec's bitrate limits (aiortc 1.16's) and its software encoder."""

    name: str
    min_bitrate: int
    default_bitrate: int
    max_bitrate: int

    def create(
        self,
        width: int,
        height: int,
        bitrate: int,
        fps: float,
        speed: video_encoders.Speed = video_encoders.DEFAULT_SPEED,
    ) -> Encoder:
        """The software encoder (``sender.encoders`` has its settings)."""
        params = video_encoders.EncoderParams(self.name, width, height, bitrate, fps, speed)
        return video_encoders.open_encoder(video_encoders.SOFTWARE[self.name], params)


PROFILES = {
    "vp8": CodecProfile(
        "vp8",
        aiortc_vpx.MIN_BITRATE,
        aiortc_vpx.DEFAULT_BITRATE,
        aiortc_vpx.MAX_BITRATE,
    ),
    "h264": CodecProfile(
        "h264",
        aiortc_h264.MIN_BITRATE,
        aiortc_h264.DEFAULT_BITRATE,
        aiortc_h264.MAX_BITRATE,
    ),
}


class Queued(NamedTuple):
    """A frame waiting in a viewer's queue: its tier, and when the encoder handed it over."""

    item: Outgoing
    tier: str
    handed_at: float


class PacketFeed(Protocol):
    """What feeds an ``EncodedTrack``: a ``SharedEncoder``, or the camera's own H.264
    (``sender.passthrough``)."""

    profile: CodecProfile
    totals: Totals

    def request_keyframe(self, tier: str | None = None) -> None: ...

    def update_bitrate(self, now: float | None = None) -> None: ...

    def unsubscribe(self, track: EncodedTrack) -> None: ...


class EncodedTrack(MediaStreamTrack):
    """One viewer's feed of encoded packets, from the tier its own bandwidth estimate
    puts it on. It starts at a keyframe, changes tier at a keyframe and, when it falls
    too far behind, drops what it holds and waits for the next keyframe."""

    kind = "video"

    def __init__(self, encoder: PacketFeed) -> None:
        super().__init__()
        self._encoder = encoder
        self._queue: asyncio.Queue[Queued | None] = asyncio.Queue(VIEWER_QUEUE_PACKETS)
        self._sending: Queued | None = None  # the frame aiortc took last, being sent
        # The RTP loop's ``send_now`` (``common.aiortc_ext.rtp_send``): a frame for a loop
        # waiting on an empty queue is sent at once, not on the loop's next turn.
        self.send_now: SendNow | None = None
        self._loop_waits = False  # the RTP loop waits in ``recv()``
        self._handing: Queued | None = None  # the frame ``send_now`` is taking
        self._own_picture_ids = PictureIds()  # for a packet not from the queue (``payloads``)
        self._need_keyframe = True
        self.bitrate_estimate: int | None = None  # the last REMB
        self._highest_sequence: int | None = None  # in the last receiver report
        profile = encoder.profile
        self.estimator = BandwidthEstimator(
            tiers.START_BITRATE, tiers.REDUCED_MIN_BITRATE, profile.max_bitrate
        )
        self.choice: tiers.TierChoice | None = None  # the tier it should be on
        self.tier: str | None = None  # the tier whose packets it gets (None: not yet)
        self.tier_changes = 0
        self.name = ""  # for the logs: the session id, set by the session registry
        self.packets_dropped = 0
        self.packets_sent = 0

    @property
    def codec(self) -> str:
        return self._encoder.profile.name

    @property
    def wanted_tier(self) -> str | None:
        return self.choice.tier if self.choice is not None else None

    @property
    def estimate(self) -> int:
        """This viewer's bandwidth estimate (bit/s)."""
        return self.estimator.estimate

    def offer(self, packet: Outgoing | None) -> None:
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
            self.request_keyframe()
            logger.debug("viewer fell behind: dropped its backlog, waiting for a keyframe")
            return
        self._put(packet)

    def _put(self, packet: Outgoing | None) -> None:
        if self._queue.full():
            self._queue.get_nowait()
        queued = None if packet is None else Queued(packet, self.tier or "", time.monotonic())
        if queued is not None and self._loop_waits and self._queue.empty() and self._send(queued):
            return
        self._queue.put_nowait(queued)

    def _send(self, queued: Queued) -> bool:
        """Have the RTP loop send ``queued`` now (True), if it can."""
        if self.send_now is None:
            return False
        self._handing = queued
        try:
            sent = self.send_now(lambda: self._sent(queued))
        finally:
            self._handing = None
        if sent:
            self._encoder.totals.frames_sent_at_once += 1
        return sent

    async def recv(self) -> av.Packet[Any]:
        self._sent()
        if self.readyState != "live":
            raise MediaStreamError
        queued = self._handing
        if queued is None:
            self._loop_waits = True
            try:
                queued = await self._queue.get()
            finally:
                self._loop_waits = False
        else:
            self._handing = None  # taken by ``send_now``
        if queued is None:
            self.stop()
            raise MediaStreamError
        self._sending = queued
        item = queued.item
        self.packets_sent += 1
        self.estimator.on_sent(item.size)
        self._encoder.totals.frames_sent += 1
        self._encoder.totals.bytes_sent += item.size
        return item.packet

    def payloads(self, packet: av.Packet[Any]) -> Payloads:
        """The RTP payloads of the packet ``recv()`` just gave aiortc, made once for every
        viewer on its tier (``common.aiortc_ext.rtp_send``)."""
        sending = self._sending
        if sending is None or sending.item.packet is not packet:
            # not from our queue: packetized on its own, its picture ids its own
            return self._own_picture_ids.wrap([packet])[0].payloads(self.codec)
        return sending.item.payloads(self.codec)

    def _sent(self, queued: Queued | None = None) -> None:
        """The RTP loop (``common.aiortc_ext.rtp_send``'s, like aiortc 1.16's) asks for the
        next packet only once it has sent every RTP packet of the last one: time the last
        one's send stage (``queued``'s: ``send_now`` sent it)."""
        if self._sending is not None and (queued is None or queued is self._sending):
            stages = self._encoder.totals.stages
            stages.sent(self.codec, self._sending.tier, time.monotonic() - self._sending.handed_at)
            self._sending = None

    def request_keyframe(self) -> None:
        """A PLI or FIR from this viewer: a keyframe of the tier it watches."""
        self._encoder.request_keyframe(self.tier or self.wanted_tier)

    def set_bitrate_estimate(self, bitrate: int) -> None:
        """A REMB estimate from this viewer."""
        self.bitrate_estimate = bitrate
        self.estimator.on_remb(bitrate)
        self._encoder.update_bitrate()

    def receiver_report(self, report: RtcpReceiverInfo, rtt: float | None) -> None:
        """An RTCP receiver report block about this viewer's stream, and the round-trip
        time it measured (None when it echoes no sender report of ours)."""
        packets = reported_packets(report, self._highest_sequence)
        self._highest_sequence = report.highest_sequence
        self.estimator.on_report(report.fraction_lost / 256, rtt, packets=packets)
        self._encoder.update_bitrate()

    def nack_report(self, lost: list[int], rtt: float | None) -> None:
        """A NACK from this viewer: the packets it asks for the first time, and the round
        trip they show (None: not known)."""
        before = self.estimate, self.estimator.congested_at
        self.estimator.on_nack(lost, rtt)
        if (self.estimate, self.estimator.congested_at) != before:  # most NACKs change nothing
            self._encoder.update_bitrate()

    def stop(self) -> None:
        if self.readyState == "live":
            self._encoder.unsubscribe(self)
        super().stop()


@dataclass
class TierEncoder:
    """The encoder of one tier; it exists while a viewer is on the tier or moving to it.

    libvpx (through FFmpeg) cannot change its bitrate while it runs: a new encoder is
    made, and it starts with a keyframe, which behind a narrow link is a burst (640x360:
    about 5 KB, 100 ms at 400 kbit/s). ``next_bitrate()`` changes the bitrate seldom and
    in steps:

    - down to the target when that is more than 10% below the bitrate: after
      ``DOWN_SETTLE`` (0.5 s) when a viewer on the tier has just lost packets or shown a
      queue (``urgent``) or the target is below ``DOWN_NOW`` (70%) of the bitrate (when a
      link narrows, REMB falls over about a second, as it reports 85% of what arrived in
      the last second; following every step made six keyframes in three seconds into the
      full queue, and the picture froze); after ``DOWN_CONFIRM`` (1.5 s) otherwise
      (aiortc's delay-based estimator reads every keyframe burst through a narrow link as
      overuse and answers with 85% of what it received; following that at once made
      another keyframe, and so another overuse, every time);
    - up when the target is more than 10% above the bitrate, by at most ``UP_STEP``
      (25%), no sooner than ``UP_INTERVAL`` (2 s) after the last change and a hold after
      the last decrease; the first step after a decrease to at most
      ``CEILING_FRACTION`` (95%) of the bitrate that proved too much.

    The hold is ``DOWN_HOLD`` (3 s) after the decrease; when the decrease came within
    ``STEP_FAILED_WITHIN`` (5 s) of a step up, that step failed, and the next one also
    waits until ``STEP_RETRY`` (6 s) after it: behind a narrow link each failed step
    costs two keyframes, and stepping every 3 s made about one keyframe every two seconds
    and a p95 latency over 100 ms. The retry is counted from the failed step, not from
    the decrease (which comes 0.5-2 s later, as the feedback arrives), so a link that
    widens just after a step failed is tried again 6 s later at most: a step up is the
    only way to learn that a link widened (REMB rises to 1.5x what arrives whether or
    not the link could carry more). Counted from the decrease, the climb after a rise
    began up to 9 s late (with 12 s, it had not begun 20 s after the rise)."""

    tier: tiers.Tier
    target_bitrate: int
    codec: Encoder | None = None
    keyframe_wanted: bool = True
    last_keyframe: float = -1e9
    last_rebuild: float = -1e9
    start_bitrate: int | None = None  # the first encoder's (``Ladder.start``)
    ceiling: int | None = None  # the bitrate last decreased from, until the next step up
    next_up: float = -1e9  # no step up before this (a hold after a decrease)
    last_up: float = -1e9
    below_since: float | None = None  # since when the target is below the bitrate
    frames_encoded: int = 0
    keyframes: int = 0
    last_encode_seconds: float | None = None  # its last frame's encode
    # The packets from the last keyframe on, while it is recent (see ``remember``).
    recent: list[Outgoing] = field(default_factory=list)
    picture_ids: PictureIds = field(default_factory=PictureIds)
    recent_since: float = -1e9  # when that keyframe was handed over

    def remember(self, packets: list[Outgoing], now: float) -> None:
        """Keep the packets since the last keyframe while it is younger than
        ``KEYFRAME_INTERVAL_MIN``: a newcomer starts from them (``start_packets``) instead
        of waiting for the next keyframe, which that close to the last one would come only
        when the interval is over (up to 0.3 s later)."""
        if any(packet.is_keyframe for packet in packets):
            self.recent, self.recent_since = list(packets), now
        elif self.recent and now - self.recent_since < KEYFRAME_INTERVAL_MIN:
            self.recent.extend(packets)
        else:
            self.recent = []

    def start_packets(self, now: float) -> list[Outgoing]:
        """A recent keyframe and the packets after it, to start a newcomer; [] when none."""
        return self.recent if now - self.recent_since < KEYFRAME_INTERVAL_MIN else []

    def next_bitrate(self, now: float, urgent: bool = False) -> int | None:
        """The bitrate for a new encoder now, or None to keep the current one."""
        if self.codec is None or not self.codec.bit_rate:
            return self.start_bitrate or self.target_bitrate
        current = self.codec.bit_rate
        target = self.target_bitrate
        if target < current * (1 - BITRATE_CHANGE):
            if self.below_since is None:
                self.below_since = now
            wait = DOWN_SETTLE if urgent or target < current * DOWN_NOW else DOWN_CONFIRM
            if now - self.below_since >= wait:
                self.next_up = now + DOWN_HOLD
                if now - self.last_up < STEP_FAILED_WITHIN:  # the last step up failed
                    self.next_up = max(self.next_up, self.last_up + STEP_RETRY)
                self.ceiling = current
                self.below_since = None
                return target
            return None
        self.below_since = None
        if target <= current * (1 + BITRATE_CHANGE):
            return None
        if now - self.last_rebuild < UP_INTERVAL or now < self.next_up:
            return None
        step = min(target, int(current * UP_STEP))
        if self.ceiling is not None:  # the first step after a decrease
            step = min(step, int(self.ceiling * CEILING_FRACTION))
        if step <= current * (1 + BITRATE_CHANGE / 2):
            self.ceiling = None  # at the ceiling already: the next step may go past it
            return None
        self.ceiling = None
        self.last_up = now
        return step


class Scaler:
    """The reduced tier's pictures: one scaled copy per captured frame and size, made
    under one lock. Every codec's encoder reads the same captured frames, and concurrent
    ``reformat()`` calls on one frame crash libswscale (PyAV keeps its scaler on the
    frame), so all scaling goes through here, with a reformatter of our own."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._reformatter = VideoReformatter()
        # (source frame, size) -> scaled frame; the source is kept so its id stays unique
        self._recent: list[tuple[av.VideoFrame, int, int, av.VideoFrame]] = []
        self.frames_scaled = 0

    def scale(self, frame: av.VideoFrame, width: int, height: int) -> av.VideoFrame:
        if (frame.width, frame.height) == (width, height):
            return frame
        with self._lock:
            for source, w, h, scaled in self._recent:
                if source is frame and (w, h) == (width, height):
                    return scaled
            scaled = self._reformatter.reformat(frame, width=width, height=height, threads=1)
            scaled.pts, scaled.time_base = frame.pts, frame.time_base
            self.frames_scaled += 1
            self._recent = [
                *self._recent[-(SCALED_FRAMES_KEPT - 1) :],
                (frame, width, height, scaled),
            ]
            return scaled


class SharedEncoder:
    """One codec's encoders, one per tier in use, fed from the shared source while
    anyone watches. Every captured frame is encoded once per tier in use (the tiers in
    parallel threads; a lone quick one on the event loop, as ``budget`` allows, in the
    capture task as the frame is captured) and the packets go to the viewers on that
    tier."""

    def __init__(
        self,
        source: SharedSource,
        profile: CodecProfile,
        fps: float,
        fixed_bitrate: int | None = None,
        on_idle: Callable[[SharedEncoder], None] | None = None,
        totals: Totals | None = None,
        scaler: Scaler | None = None,
        factory: EncoderFactory | None = None,
        budget: LoopBudget | None = None,
    ) -> None:
        self.profile = profile
        self.factory = factory if factory is not None else EncoderFactory(profile.name)
        self.totals = totals if totals is not None else Totals()
        self._source = source
        self._fps = fps
        self._fixed_bitrate = fixed_bitrate
        self._on_idle = on_idle
        self._scaler = scaler if scaler is not None else Scaler()
        self._budget = budget if budget is not None else LoopBudget(MAX_ENCODE_SECONDS)
        self._viewers: set[EncodedTrack] = set()
        self._frames: ViewerTrack | None = None
        self._task: asyncio.Task[None] | None = None
        self._busy = False  # ``_run`` is on a frame: the next one waits for it
        self.ladder: tiers.Ladder | None = None
        self._tiers: dict[str, TierEncoder] = {}
        self.frames_encoded = 0  # captured frames encoded (by every tier in use)
        self.keyframes = 0

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @property
    def tracks(self) -> list[EncodedTrack]:
        return list(self._viewers)

    @property
    def tier_encoders(self) -> dict[str, TierEncoder]:
        """The tiers being encoded now."""
        return dict(self._tiers)

    @property
    def target_bitrate(self) -> int:
        """The full tier's bitrate (the reduced tier's when only that one is in use)."""
        for name in tiers.TIERS:
            encoder = self._tiers.get(name)
            if encoder is not None:
                return encoder.target_bitrate
        return self._fixed_bitrate or self.profile.default_bitrate

    def subscribe(self) -> EncodedTrack:
        track = EncodedTrack(self)
        self._viewers.add(track)
        if self.ladder is not None:
            self._place(track, time.monotonic())
        if self._task is None:
            self._frames = self._source.subscribe()
            self._frames.take = self._take
            self._task = asyncio.create_task(self._run(), name=f"encode {self.profile.name}")
        return track

    def unsubscribe(self, track: EncodedTrack) -> None:
        self._viewers.discard(track)
        self.update_bitrate()
        if not self._viewers:
            self._stop()

    def request_keyframe(self, tier: str | None = None) -> None:
        """A keyframe of ``tier`` (every tier when None). A tier not encoded yet starts
        with one anyway."""
        for name, encoder in self._tiers.items():
            if tier is None or name == tier:
                encoder.keyframe_wanted = True

    def _place(self, track: EncodedTrack, now: float) -> None:
        """Give a viewer its first tier (``sender.tiers``); it starts receiving at that
        tier's last keyframe if that is recent, else at its next one."""
        assert self.ladder is not None
        full = self._tiers.get(tiers.FULL)
        running = 0
        if full is not None:
            running = max(full.target_bitrate, (full.codec.bit_rate if full.codec else 0) or 0)
        track.choice = tiers.TierChoice(self.ladder, now, self.ladder.first_tier(running))
        encoder = self._tiers.get(track.wanted_tier or "")
        start = encoder.start_packets(now) if encoder is not None else []
        if start:
            track.tier = track.wanted_tier
            for packet in start:
                track.offer(packet)
        else:
            self.request_keyframe(track.wanted_tier)  # the newcomer needs one to start decoding

    def update_bitrate(self, now: float | None = None) -> None:
        """Each viewer's tier from its own estimate; each tier's bitrate from the weakest
        estimate among the viewers on it (or moving to it), within the tier's limits."""
        if self.ladder is None:
            return
        now = time.monotonic() if now is None else now
        for track in self._viewers:
            if track.choice is None:
                continue
            before = track.choice.tier
            after = track.choice.update(
                track.estimate,
                now,
                track.estimator.informed,
                track.estimator.congested(now, tiers.CONGESTION_EVIDENCE),
            )
            if after != before:
                logger.info(
                    "viewer %s moves from the %s to the %s %s tier (estimate %d bit/s)",
                    track.name,
                    before,
                    after,
                    self.profile.name,
                    track.estimate,
                )
                self.request_keyframe(after)
        for name, encoder in self._tiers.items():
            encoder.target_bitrate = self._target(name, encoder.target_bitrate)

    def _target(self, name: str, current: int | None) -> int:
        """The bitrate for tier ``name``: the lowest estimate among the viewers on it (or
        moving to it) that have sent feedback; a newcomer's start estimate counts only
        for a tier nobody else is on, so that a new viewer (maybe on a slow link) does
        not pull the others' picture down before its first REMB says how fast it is."""
        assert self.ladder is not None
        tier = self.ladder.get(name)
        if self._fixed_bitrate:
            return self._fixed_bitrate
        voters = [t for t in self._viewers if t.wanted_tier == name]
        informed = [t.estimate for t in voters if t.estimator.informed]
        if informed:
            return tier.clamp(min(informed))
        if current is None:  # a tier starting for newcomers only
            return tier.clamp(min((t.estimate for t in voters), default=0))
        return current  # only newcomers, or only viewers on their way out: keep it

    def _congested(self, tier: str, now: float) -> bool:
        """Whether a viewer on (or moving to) ``tier`` just lost packets or showed a queue."""
        return any(t.wanted_tier == tier and t.estimator.congested(now) for t in self._viewers)

    def _stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None
        if self._frames is not None:
            self._frames.stop()  # the source closes when nobody else reads it
            self._frames = None
        self._tiers.clear()
        if self._on_idle is not None:
            self._on_idle(self)

    async def _run(self) -> None:
        """The frames ``_take`` left: those needing a thread (several tiers, a slow or new
        encoder), or arriving while the last is in one."""
        assert self._frames is not None
        frames = self._frames
        try:
            while True:
                try:
                    frame = await frames.recv()
                except MediaStreamError:
                    break
                self._busy = True
                now = time.monotonic()
                self._follow_size(frame, now)
                jobs = self._plan(now)
                results = await self._encode_all(jobs, frame, now)
                done = self._hand_out(frame, now, jobs, results)
                # The viewers' RTP senders run first; the bookkeeping can wait for them,
                # and so can the tiers' choice for the next frame (REMB and receiver
                # reports also update it as they come).
                await asyncio.sleep(0)
                done()
                self._busy = False
        except Exception:
            # Its viewers' video ends (below); say why, once, rather than silently.
            logger.exception("the %s encoder failed", self.profile.name)
            raise
        finally:
            for viewer in list(self._viewers):
                viewer.offer(None)

    def _take(self, frame: av.VideoFrame) -> bool:
        """In the capture task, as the frame is captured: encode it at once on the loop when
        ``_run`` would (one tier, its encoder's last frame quick enough for the loop
        budget) and ``_run`` is idle; False leaves the frame to ``_run``."""
        now = time.monotonic()
        wanted = self._wanted()
        encoder = self._tiers.get(next(iter(wanted))) if len(wanted) == 1 else None
        if (
            self._busy
            or encoder is None
            or encoder.codec is None
            or not self._same_size(frame)
            or not self._budget.allows(encoder.last_encode_seconds, now)
        ):
            return False
        try:
            jobs = self._plan(now)
            results = [self._encode_on_loop(*jobs[0], frame)]
            done = self._hand_out(frame, now, jobs, results)
        except Exception:
            logger.exception("the %s encoder failed", self.profile.name)
            self._fail()
            return True
        self.totals.frames_encoded_at_capture += 1
        asyncio.get_running_loop().call_soon(done)  # after the RTP senders, as in ``_run``
        return True

    def _fail(self) -> None:
        """The encoder failed in ``_take``: its viewers' video ends, as when ``_run`` fails."""
        if self._frames is not None:
            self._frames.take = None
        if self._task is not None:
            self._task.cancel()  # its end tells the viewers

    def _hand_out(
        self,
        frame: av.VideoFrame,
        now: float,
        jobs: list[tuple[TierEncoder, bool]],
        results: list[tuple[list[av.Packet[Any]], float]],
    ) -> Callable[[], None]:
        """Each tier's packets to its viewers; returns the bookkeeping, to run after the
        viewers' RTP senders."""
        packets = {}
        for (job, _), (encoded, _) in zip(jobs, results, strict=True):
            outgoing = job.picture_ids.wrap(encoded)
            job.remember(outgoing, now)  # before a newcomer can join (``_deliver``)
            packets[job.tier.name] = outgoing
        handed = time.monotonic()
        self._deliver(packets)

        def done() -> None:
            self.update_bitrate(time.monotonic())
            self.frames_encoded += 1
            for (job, _), (_, seconds) in zip(jobs, results, strict=True):
                self._count(job, packets[job.tier.name], seconds)
            self._time_encoded(frame, packets, handed)

        return done

    def _same_size(self, frame: av.VideoFrame) -> bool:
        """The tiers are for ``frame``'s size."""
        full = self.ladder.full if self.ladder is not None else None
        return full is not None and (full.width, full.height) == (frame.width, frame.height)

    def _follow_size(self, frame: av.VideoFrame, now: float) -> None:
        """The tiers follow the capture size (known from the first frame)."""
        if self._same_size(frame):
            return
        self.ladder = tiers.ladder(
            frame.width,
            frame.height,
            self._fps,
            self.profile.max_bitrate,
            self._fixed_bitrate,
        )
        self._tiers.clear()
        for track in self._viewers:
            self._place(track, now)
            track.tier = None

    def _wanted(self) -> set[str]:
        """The tiers the viewers are on or moving to."""
        names = {t.tier for t in self._viewers} | {t.wanted_tier for t in self._viewers}
        return {name for name in names if name is not None}

    def _plan(self, now: float) -> list[tuple[TierEncoder, bool]]:
        """The tiers to encode this frame (those in use), each with its encoder ready
        at its bitrate, and whether the frame must be a keyframe."""
        assert self.ladder is not None
        wanted = self._wanted()
        for name in list(self._tiers):
            if name not in wanted:
                logger.info("%s %s tier: no viewer left, encoder closed", self.profile.name, name)
                del self._tiers[name]
        jobs = []
        for name in tiers.TIERS:
            if name not in wanted:
                continue
            encoder = self._tiers.get(name)
            if encoder is None:
                tier = self.ladder.get(name)
                target = self._target(name, None)
                newcomers = not any(
                    t.estimator.informed for t in self._viewers if t.wanted_tier == name
                )
                encoder = TierEncoder(tier, target)
                encoder.start_bitrate = self.ladder.start(name, target, newcomers)
                self._tiers[name] = encoder
                logger.info(
                    "%s %s tier: encoding %dx%d from %d bit/s",
                    self.profile.name,
                    name,
                    tier.width,
                    tier.height,
                    encoder.target_bitrate,
                )
            keyframe = False
            bitrate = encoder.next_bitrate(now, self._congested(name, now))
            if (
                bitrate is None
                and encoder.codec is not None
                and not self.factory.makes(encoder.codec)
            ):
                bitrate = encoder.codec.bit_rate  # another tier's encoder failed: replace it
            if bitrate is not None:
                tier = encoder.tier
                logger.debug(
                    "%s %s tier: new encoder at %d bit/s (target %d, was %s)",
                    self.profile.name,
                    name,
                    bitrate,
                    encoder.target_bitrate,
                    encoder.codec.bit_rate if encoder.codec is not None else None,
                )
                encoder.codec = self.factory.create(tier.width, tier.height, bitrate, self._fps)
                encoder.last_rebuild = encoder.last_keyframe = now  # it starts with one
                encoder.keyframe_wanted = False
            elif encoder.keyframe_wanted and now - encoder.last_keyframe >= KEYFRAME_INTERVAL_MIN:
                # One viewer's burst of PLIs must not turn everyone's stream into keyframes.
                encoder.keyframe_wanted = False
                encoder.last_keyframe = now
                keyframe = True
                logger.debug("%s %s tier: keyframe asked for", self.profile.name, name)
            jobs.append((encoder, keyframe))
        return jobs

    async def _encode_all(
        self, jobs: list[tuple[TierEncoder, bool]], frame: av.VideoFrame, now: float
    ) -> list[tuple[list[av.Packet[Any]], float]]:
        """Each tier's encode of ``frame``: a lone quick one on the loop (two thread
        hand-overs less), else each in a worker thread, in parallel."""
        if len(jobs) == 1 and self._budget.allows(jobs[0][0].last_encode_seconds, now):
            return [self._encode_on_loop(*jobs[0], frame)]
        return await asyncio.gather(
            *(asyncio.to_thread(self._encode, job, key, frame) for job, key in jobs)
        )

    def _encode_on_loop(
        self, encoder: TierEncoder, keyframe: bool, frame: av.VideoFrame
    ) -> tuple[list[av.Packet[Any]], float]:
        result = self._encode(encoder, keyframe, frame)
        self._budget.spent(result[1], time.monotonic())
        self.totals.frames_encoded_on_loop += 1
        return result

    def _encode(
        self, encoder: TierEncoder, keyframe: bool, frame: av.VideoFrame
    ) -> tuple[list[av.Packet[Any]], float]:
        """One tier's encode of one captured frame, and its time."""
        assert encoder.codec is not None
        started = time.perf_counter()
        picture = self._scaler.scale(frame, encoder.tier.width, encoder.tier.height)
        if keyframe:
            # Forcing a keyframe marks the frame; mark a copy, since the other codec's
            # encoder shares this picture.
            copy = av.VideoFrame.from_ndarray(picture.to_ndarray(), format=picture.format.name)
            copy.pts, copy.time_base = picture.pts, picture.time_base
            copy.pict_type = av.video.frame.PictureType.I
            picture = copy
        # A hardware encoder that fails is replaced by a software one here.
        encoder.codec, packets = self.factory.encode(encoder.codec, picture)
        return packets, time.perf_counter() - started

    def _count(self, encoder: TierEncoder, packets: list[Outgoing], seconds: float) -> None:
        """Counters, in the event loop (the tiers encode in parallel threads)."""
        keyframes = sum(packet.is_keyframe for packet in packets)
        encoder.keyframes += keyframes
        encoder.frames_encoded += 1
        encoder.last_encode_seconds = seconds
        self.keyframes += keyframes
        self.totals.keyframes += keyframes
        self.totals.frames_encoded += 1
        self.totals.encode_seconds += seconds
        self.totals.stages.encoding_took(self.profile.name, encoder.tier.name, seconds)

    def _time_encoded(
        self, frame: av.VideoFrame, packets: dict[str, list[Outgoing]], handed: float
    ) -> None:
        """Capture to encoded, per tier: until the packets were ``handed`` to the viewers."""
        captured = capture_time(frame)
        if captured is None:
            return
        seconds = handed - captured
        for name, encoded in packets.items():
            if encoded:
                self.totals.stages.encoded(self.profile.name, name, seconds)

    def _deliver(self, packets: dict[str, list[Outgoing]]) -> None:
        """Each viewer gets its tier's packets; one moving to another tier switches when
        that tier's packets start with a keyframe."""
        for viewer in list(self._viewers):
            wanted = viewer.wanted_tier
            moving = wanted is not None and wanted != viewer.tier
            if moving and any(p.is_keyframe for p in packets.get(wanted or "", ())):
                if viewer.tier is not None:
                    viewer.tier_changes += 1
                viewer.tier = wanted
            for packet in packets.get(viewer.tier or "", ()):
                viewer.offer(packet)

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

    def __init__(
        self,
        source: SharedSource,
        fps: float,
        fixed_bitrate: int | None = None,
        factories: Mapping[str, EncoderFactory] | None = None,
        budget: LoopBudget | None = None,
    ) -> None:
        self._source = source
        self._fps = fps
        self._fixed_bitrate = fixed_bitrate
        # Which encoder each codec uses (``sender.encoders.choose``); software by default.
        self.factories = dict(factories or {})
        for codec in PROFILES:
            self.factories.setdefault(codec, EncoderFactory(codec))
        self._encoders: dict[str, SharedEncoder] = {}
        self._scaler = Scaler()  # shared by every codec: one scaled copy per frame
        # The event loop's time for encodes: the sender's, shared by every camera.
        self.budget = budget if budget is not None else LoopBudget(MAX_ENCODE_SECONDS)
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
                self._scaler,
                self.factories[codec],
                self.budget,
            )
            self._encoders[codec] = encoder
        return encoder.subscribe()

    def _forget(self, encoder: SharedEncoder) -> None:
        if self._encoders.get(encoder.profile.name) is encoder:
            del self._encoders[encoder.profile.name]

    def active(self) -> list[SharedEncoder]:
        return list(self._encoders.values())

    def describe(self) -> dict[str, dict[str, dict[str, int]]]:
        """Per codec, the tiers being encoded: size, the encoder's bitrate, the target it
        steps towards and the most it may use, and the viewers getting it (/healthz,
        /metrics)."""
        result: dict[str, dict[str, dict[str, int]]] = {}
        for encoder in self.active():
            result[encoder.profile.name] = {
                name: {
                    "width": tier.tier.width,
                    "height": tier.tier.height,
                    "bitrate": (tier.codec.bit_rate if tier.codec else None) or tier.target_bitrate,
                    "target": tier.target_bitrate,
                    "max": tier.tier.max_bitrate,
                    "viewers": sum(t.tier == name for t in encoder.tracks),
                }
                for name, tier in encoder.tier_encoders.items()
            }
        return result

    def describe_encoders(self) -> dict[str, dict[str, object]]:
        """Per codec, the encoder in use and why (/healthz)."""
        return {codec: factory.describe() for codec, factory in self.factories.items()}

    async def close(self) -> None:
        await asyncio.gather(*(e.close() for e in list(self._encoders.values())))
