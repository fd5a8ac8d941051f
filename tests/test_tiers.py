"""A slow viewer never hurts the others: quality tiers (``sender.tiers``).

The rule (ladder and hysteresis) packet by packet, then real viewers: on 127.0.0.1 with
loss reports injected into one of them (real RTCP receiver reports through the RTP
sender's handler), and across network namespaces, one viewer behind 400 kbit/s and one
on the open link at once: the fast one keeps >= 1.2 Mbit/s at 1280x720 while the slow one
holds the narrow-link figures (``tests/test_bottleneck.py``'s, measured here), and the
sender's CPU with both is at most 1.8x that with one.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from pathlib import Path

import aiohttp
import av
import pytest
from aiortc.rtp import RtcpPacket, RtcpReceiverInfo, RtcpRrPacket
from prometheus_client.parser import text_string_to_metric_families

from bench.netns import PREFIX, PREFIX_LEN, _run
from receiver import Receiver
from receiver.encoded import EncodedFrame
from receiver.stats import read_stamp
from sender import encoding, tiers
from sender.encoding import PROFILES, TierEncoder
from sender.sessions import Session
from sender.tiers import FULL, REDUCED, TierChoice, ladder

from .helpers import wait_until
from .netns import TwoHosts, reap_stale, require
from .test_bottleneck import NARROW, NARROW_SECONDS, WARM_UP, Viewer, fetch, health, shape
from .test_bottleneck import start_sender as start_namespaced_sender

VP8_MAX = 1_500_000

# -- the rule -------------------------------------------------------------------------


def test_the_ladder_for_720p_and_480p() -> None:
    hd = ladder(1280, 720, 30, VP8_MAX)
    assert (hd.full.width, hd.full.height) == (1280, 720)
    assert (hd.reduced.width, hd.reduced.height) == (640, 360)
    assert hd.down == 691_200  # 0.025 bit per pixel at 30 fps
    assert hd.up == 864_000
    assert (hd.full.min_bitrate, hd.full.max_bitrate) == (hd.down, VP8_MAX)
    assert (hd.reduced.min_bitrate, hd.reduced.max_bitrate) == (100_000, hd.up)
    # A newcomer (300 kbit/s) starts on the reduced tier at 1280x720, as the full one
    # needs more; up once its feedback shows it can.
    assert hd.first_tier(full_running=0) == REDUCED
    sd = ladder(640, 480, 30, VP8_MAX)
    assert (sd.reduced.width, sd.reduced.height) == (320, 240)
    assert sd.down == 230_400
    # At 640x480 on the full tier, unless that already runs faster than ``up`` (or 300k).
    assert sd.first_tier(full_running=0) == FULL
    assert sd.first_tier(full_running=tiers.START_BITRATE) == FULL
    assert sd.first_tier(full_running=1_000_000) == REDUCED
    small = ladder(480, 360, 30, VP8_MAX)  # half would be narrower than 320: same size
    assert (small.reduced.width, small.reduced.height) == (480, 360)
    huge = ladder(1920, 1080, 30, VP8_MAX)
    assert huge.down == int(0.8 * VP8_MAX)  # at most 80% of the codec's maximum


def test_a_fixed_bitrate_has_one_tier() -> None:
    fixed = ladder(1280, 720, 30, VP8_MAX, fixed_bitrate=800_000)
    assert fixed.full is fixed.reduced
    assert fixed.first_tier(full_running=800_000) == FULL
    choice = TierChoice(fixed, now=0.0)
    assert choice.update(50_000, now=10.0) == FULL


def test_where_a_tiers_encoder_starts() -> None:
    hd = ladder(1280, 720, 30, VP8_MAX)
    # The full tier for newcomers only: from 300 kbit/s, stepping up to its minimum.
    assert hd.start(FULL, hd.down, newcomers_only=True) == tiers.START_BITRATE
    assert hd.start(FULL, 1_200_000, newcomers_only=False) == 1_200_000
    # The reduced tier: at most half of ``down``.
    assert hd.start(REDUCED, 800_000, newcomers_only=False) == hd.down // 2
    assert hd.start(REDUCED, 200_000, newcomers_only=False) == 200_000


def test_hysteresis() -> None:
    hd = ladder(1280, 720, 30, VP8_MAX)
    choice = TierChoice(hd, now=0.0)
    assert choice.tier == FULL
    assert choice.update(hd.down, now=1.0) == FULL  # at the threshold: stays
    # Below it without loss or a queue (a REMB still catching up): stays.
    assert choice.update(hd.down // 2, now=1.5, congested=False) == FULL
    assert choice.update(hd.down - 1, now=2.0) == REDUCED  # below: down at once
    # Back above ``down`` but below ``up``: stays down, however long.
    assert choice.update(hd.up - 1, now=30.0) == REDUCED
    # At ``up``: only after UP_HOLD seconds there, and MIN_DWELL after the move down.
    assert choice.update(hd.up, now=31.0) == REDUCED
    assert choice.update(hd.up, now=31.0 + tiers.UP_HOLD - 0.1) == REDUCED
    assert choice.update(hd.up - 1, now=31.0 + tiers.UP_HOLD) == REDUCED  # a dip restarts it
    assert choice.update(hd.up, now=40.0) == REDUCED
    assert choice.update(hd.up, now=40.0 + tiers.UP_HOLD) == FULL
    # Right after a move up, a move down is not held back.
    assert choice.update(hd.down - 1, now=40.0 + tiers.UP_HOLD + 0.1) == REDUCED
    # A start estimate (no feedback from the viewer yet) never moves a viewer up.
    newcomer = TierChoice(hd, now=0.0, tier=REDUCED)
    assert newcomer.update(hd.up * 2, now=60.0, informed=False) == REDUCED
    assert newcomer.update(hd.up * 2, now=61.0) == REDUCED
    assert newcomer.update(hd.up * 2, now=61.0 + tiers.UP_HOLD) == FULL
    # MIN_DWELL: a steady high estimate right after a move down waits for it.
    choice = TierChoice(hd, now=0.0)
    choice.update(hd.down - 1, now=100.0)
    assert choice.update(hd.up, now=100.0 + tiers.UP_HOLD) == REDUCED
    assert choice.update(hd.up, now=100.0 + tiers.MIN_DWELL) == FULL


def encoder_at(bitrate: int, target: int, now: float) -> TierEncoder:
    """A tier's encoder running at ``bitrate`` since ``now`` (a real, unopened codec)."""
    tier = ladder(1280, 720, 30, VP8_MAX).reduced
    encoder = TierEncoder(tier, target)
    encoder.codec = PROFILES["vp8"].create(tier.width, tier.height, bitrate, 30)
    encoder.last_rebuild = now
    return encoder


def test_the_bitrate_moves_in_few_steps() -> None:
    """Each change is a new encoder and so a keyframe: down when the fall is real, up in
    steps, not past the bitrate that just proved too much."""
    # A mild fall (REMB alone): only once it has lasted DOWN_CONFIRM.
    encoder = encoder_at(400_000, 340_000, now=0.0)
    assert encoder.next_bitrate(10.0) is None
    assert encoder.next_bitrate(10.0 + encoding.DOWN_CONFIRM - 0.1) is None
    assert encoder.next_bitrate(10.0 + encoding.DOWN_CONFIRM) == 340_000
    # Loss or a queue (urgent), or a deep fall: after DOWN_SETTLE.
    encoder = encoder_at(400_000, 340_000, now=0.0)
    assert encoder.next_bitrate(10.0, urgent=True) is None
    assert encoder.next_bitrate(10.0 + encoding.DOWN_SETTLE, urgent=True) == 340_000
    encoder = encoder_at(400_000, 200_000, now=0.0)
    assert encoder.next_bitrate(10.0) is None
    assert encoder.next_bitrate(10.0 + encoding.DOWN_SETTLE) == 200_000
    # Going back up after that decrease: not before DOWN_HOLD, first to 95% of 400k.
    encoder.codec = PROFILES["vp8"].create(640, 360, 200_000, 30)
    encoder.last_rebuild = 10.5
    encoder.target_bitrate = 1_000_000
    assert encoder.next_bitrate(10.5 + encoding.DOWN_HOLD - 0.1) is None
    assert encoder.next_bitrate(10.5 + encoding.DOWN_HOLD) == 250_000  # 25% at most
    encoder.codec = PROFILES["vp8"].create(640, 360, 250_000, 30)
    encoder.last_rebuild = 15.5
    assert encoder.next_bitrate(15.5 + encoding.UP_INTERVAL - 0.1) is None
    assert encoder.next_bitrate(15.5 + encoding.UP_INTERVAL) == 312_500
    # Within 10% of the target: keep the encoder (and spare the keyframe).
    encoder = encoder_at(400_000, 430_000, now=0.0)
    assert encoder.next_bitrate(100.0) is None
    encoder.target_bitrate = 370_000
    assert encoder.next_bitrate(100.0) is None


def test_the_first_step_after_a_decrease_stops_below_what_failed() -> None:
    encoder = encoder_at(400_000, 340_000, now=0.0)
    assert encoder.next_bitrate(10.0, urgent=True) is None
    assert encoder.next_bitrate(10.5, urgent=True) == 340_000
    encoder.codec = PROFILES["vp8"].create(640, 360, 340_000, 30)
    encoder.last_rebuild = 10.5
    encoder.target_bitrate = 1_000_000
    step = encoder.next_bitrate(10.5 + encoding.DOWN_HOLD)  # 25% would be 425k
    assert step == int(400_000 * encoding.CEILING_FRACTION)
    # The next step may go past it: the link may have grown meanwhile.
    encoder.codec = PROFILES["vp8"].create(640, 360, step, 30)
    encoder.last_rebuild = 20.0
    assert encoder.next_bitrate(20.0 + encoding.UP_INTERVAL) == int(step * encoding.UP_STEP)


def test_a_step_up_that_failed_is_retried_after_a_while() -> None:
    """Behind a narrow link every failed step up costs two keyframes: after a decrease
    the next step waits DOWN_HOLD, and after a failed step STEP_RETRY counted from that
    step, so that a link that widens just after a failure is tried again soon."""
    encoder = encoder_at(300_000, 200_000, now=0.0)

    def decrease(at: float) -> None:  # loss: down to 200k after DOWN_SETTLE
        encoder.target_bitrate = 200_000
        assert encoder.next_bitrate(at - encoding.DOWN_SETTLE, urgent=True) is None
        assert encoder.next_bitrate(at, urgent=True) == 200_000
        encoder.codec = PROFILES["vp8"].create(640, 360, 200_000, 30)
        encoder.last_rebuild = at
        encoder.target_bitrate = 400_000  # REMB back up

    def next_step(after: float) -> float:
        """When the next step up comes (to 95% of 300k), its encoder made then."""
        at = after
        while encoder.next_bitrate(at) is None:
            at = round(at + 0.1, 1)
            assert at < after + 60
        encoder.codec = PROFILES["vp8"].create(640, 360, 285_000, 30)
        encoder.last_rebuild = at
        return at

    decrease(10.5)  # no step before it: DOWN_HOLD
    step = next_step(10.5)
    assert step == 10.5 + encoding.DOWN_HOLD
    decrease(step + 1.5)  # the step failed: retried STEP_RETRY after it
    retry = next_step(step + 1.5)
    assert retry == step + encoding.STEP_RETRY
    decrease(retry + 4.5)  # failed late: still DOWN_HOLD after the decrease
    late = next_step(retry + 4.5)
    assert late == retry + 4.5 + encoding.DOWN_HOLD
    decrease(late + encoding.STEP_FAILED_WITHIN + 1)  # the step had held: DOWN_HOLD
    assert next_step(late + encoding.STEP_FAILED_WITHIN + 1) == pytest.approx(
        late + encoding.STEP_FAILED_WITHIN + 1 + encoding.DOWN_HOLD
    )


# -- real viewers on 127.0.0.1 ----------------------------------------------------------


def lossy_report(ssrc: int, fraction: float) -> RtcpRrPacket:
    """A receiver report about ``ssrc`` with ``fraction`` of its packets lost, as bytes
    on the wire and parsed back, as aiortc's RTCP handler gets it."""
    info = RtcpReceiverInfo(
        ssrc=ssrc,
        fraction_lost=int(fraction * 256),
        packets_lost=100,
        highest_sequence=1000,
        jitter=0,
        lsr=0,
        dlsr=0,
    )
    [packet] = RtcpPacket.parse(bytes(RtcpRrPacket(ssrc=1234, reports=[info])))
    assert isinstance(packet, RtcpRrPacket)
    return packet


async def scrape(url: str) -> dict[str, list]:
    async with aiohttp.ClientSession() as http, http.get(url + "/metrics") as resp:
        text = await resp.text()
    return {f.name: f.samples for f in text_string_to_metric_families(text)}


async def get_health(url: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
        return await resp.json()


def session_of(rx: Receiver, sessions: list[Session]) -> Session:
    """The sender's session for a receiver: the one whose SSRC it receives."""
    assert rx.connection is not None
    receiver = rx.connection.pc.getReceivers()[0]
    ssrcs = {s.source for s in receiver.getSynchronizationSources()}
    return next(s for s in sessions if s.pc.getSenders()[0]._ssrc in ssrcs)


async def report_loss_until_reduced(session: Session) -> None:
    """Real receiver reports with 50% loss through the viewer's RTP sender, until its
    estimate puts it on the reduced tier."""
    rtp_sender = session.pc.getSenders()[0]
    track = session.track
    assert track is not None

    async def moved() -> bool:
        await rtp_sender._handle_rtcp_packet(lossy_report(rtp_sender._ssrc, 0.5))
        return track.wanted_tier == REDUCED

    await wait_until(moved, within=20, what="a lossy viewer sent to the reduced tier")


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_lossy_viewers_move_to_the_reduced_tier_alone(sender_factory, codec) -> None:
    """Three viewers of one 640x480 camera; two report 50% loss, one right after the
    other: they move to the reduced tier (320x240), each at a keyframe (the second joins
    a tier already running and waits for its next one), while the third keeps the full
    picture; /healthz and /metrics say which tier each is on; the reduced tier's encoder
    goes when its viewers do."""
    sender = await sender_factory(codec=codec)
    names = ("steady", "first", "second")
    receivers = {n: Receiver(sender.url, connect_timeout=30, encoded=True) for n in names}
    for rx in receivers.values():
        await rx.connect()
    # Per viewer, in arrival order: ("key", width, height) for each VP8 keyframe as
    # received (its size from its header; H.264's is not parsed here), and ("frame",
    # width, height, stamp sequence or None) for each decoded frame.
    seen: dict[str, list[tuple]] = {n: [] for n in names}

    async def read(name: str) -> None:
        async for item in receivers[name].items():
            if isinstance(item, EncodedFrame) and item.keyframe and codec == "vp8":
                seen[name].append(("key", *item.size))
            elif isinstance(item, av.VideoFrame):
                found = read_stamp(item)
                sequence = found.sequence if found is not None else None
                seen[name].append(("frame", item.width, item.height, sequence))

    readers = [asyncio.create_task(read(n)) for n in names]
    try:
        [encoder] = sender.sessions.encoders.active()
        await wait_until(lambda: encoder.frames_encoded >= 30, what="frames")
        assert set(encoder.tier_encoders) == {FULL}, "all start on the full tier"
        live = sender.sessions.live()
        sessions = {n: session_of(receivers[n], live) for n in names}
        await report_loss_until_reduced(sessions["first"])
        await wait_until(lambda: sessions["first"].track.tier == REDUCED, what="the move")
        await report_loss_until_reduced(sessions["second"])
        steady = sessions["steady"].track
        assert steady.tier == FULL
        assert sessions["second"].track.estimate < encoder.ladder.down <= steady.estimate

        def small(name: str) -> bool:
            return any(e[0] == "frame" and e[1] == 320 for e in seen[name])

        await wait_until(lambda: small("first") and small("second"), what="320x240 frames")
        on_loop = encoder.totals.frames_encoded_on_loop
        assert on_loop > 0, "the lone full tier's frames were encoded on the event loop"
        await asyncio.sleep(0.5)  # a few more frames on the reduced tier
        # Two tiers encode each frame in parallel threads (common.loop_budget).
        assert encoder.totals.frames_encoded_on_loop == on_loop
        for name in ("first", "second"):
            frames = [e for e in seen[name] if e[0] == "frame"]
            sequences = [e[3] for e in frames]
            # Every frame decoded whole: its stamp reads, and moves forward (a delta frame
            # from another encoder would decode to garbage or to a stale picture).
            assert None not in sequences, f"{name}: a frame decoded broken"
            assert sequences == sorted(set(sequences)), f"{name}: stamps out of order"
            if codec == "vp8":
                first_small = next(i for i, e in enumerate(seen[name]) if e[1] == 320)
                assert seen[name][first_small][0] == "key", f"{name}: moved off a keyframe"
        steady_frames = [e for e in seen["steady"] if e[0] == "frame"]
        assert {(e[1], e[2]) for e in steady_frames} == {(640, 480)}, "steady kept 640x480"
        assert None not in [e[3] for e in steady_frames]

        state = await get_health(sender.url)
        tier_of = {v["session"]: v["tier"] for v in state["viewer_tiers"]}
        assert tier_of == {
            sessions["steady"].id: FULL,
            sessions["first"].id: REDUCED,
            sessions["second"].id: REDUCED,
        }
        assert state["tiers"][codec][REDUCED]["viewers"] == 2
        assert state["tiers"][codec][REDUCED]["width"] == 320
        assert state["tiers"][codec][FULL]["viewers"] == 1
        metrics = await scrape(sender.url)
        on = {
            (s.labels["session"], s.labels["tier"])
            for s in metrics["webcam_viewer_tier"]
            if s.value == 1
        }
        assert on == {(sessions[n].id, tier_of[sessions[n].id]) for n in names}
        estimates = {s.labels["session"]: s.value for s in metrics["webcam_viewer_estimate_bps"]}
        assert estimates[sessions["first"].id] < estimates[sessions["steady"].id]

        await receivers["first"].close()
        await receivers["second"].close()
        await wait_until(
            lambda: set(encoder.tier_encoders) == {FULL}, what="the reduced tier's encoder to go"
        )
    finally:
        for reader in readers:
            reader.cancel()
        for rx in receivers.values():
            await rx.close()


# -- one slow and one fast viewer across namespaces --------------------------------------

FAST_SENDER_ADDR = "10.231.1.1"
FAST_ADDR = "10.231.1.2"
FAST_VETH = "wwc1"
FAST_MIN_KBPS = 1200
CPU_RATIO_MAX = 1.8
CPU_SECONDS = 10.0
SLOW_P95_MS = 100  # the narrow-link target, on a quiet host
LINK_P95_MS = 60  # what the narrow link may add to the host's own p95 on a busy one
_fast_numbers = itertools.count(900)  # wwc-r-PID-9xx: reaped like the others if left over


class SlowAndFast(TwoHosts):
    """``TwoHosts`` (the slow receiver behind ``wwc0``) plus a second receiver namespace
    on its own veth pair from the sender (10.231.1.0/30), routed to the sender's address,
    so that shaping ``wwc0`` slows one viewer only."""

    def __init__(self) -> None:
        super().__init__()
        self.fast = f"{PREFIX}-r-{os.getpid()}-{next(_fast_numbers)}"

    def open(self) -> None:
        super().open()
        self.add_namespace(self.fast)
        _run(["ip", "-n", self.sender, "link", "add", FAST_VETH, "type", "veth", "peer", "name",
              FAST_VETH, "netns", self.fast])  # fmt: skip
        for name, addr in ((self.sender, FAST_SENDER_ADDR), (self.fast, FAST_ADDR)):
            _run(["ip", "-n", name, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", FAST_VETH])
            _run(["ip", "-n", name, "link", "set", FAST_VETH, "up"])
        _run(["ip", "-n", self.fast, "link", "set", "lo", "up"])
        _run(
            [
                "ip",
                "-n",
                self.fast,
                "route",
                "add",
                f"{self.sender_addr}/32",
                "via",
                FAST_SENDER_ADDR,
            ]
        )
        deadline = time.monotonic() + 10
        while "UP" not in _run(["ip", "-n", self.fast, "-br", "link", "show", FAST_VETH]).stdout:
            assert time.monotonic() < deadline, "the second veth pair did not come up"
            time.sleep(0.05)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float) -> float:
    """Cores used by ``pid`` over the next ``seconds``."""
    before, started = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return (cpu_seconds(pid) - before) / (time.monotonic() - started)


def tiers_of(state: dict) -> list[str]:
    return sorted(v["tier"] for v in state["viewer_tiers"])


@pytest.mark.timeout(420)
def test_a_slow_viewer_does_not_slow_a_fast_one(tmp_path: Path) -> None:
    """The fast viewer first, alone, until it is on the full tier (CPU measured); then a
    viewer behind 400 kbit/s joins for 65 s (CPU measured again). The slow one gets the
    reduced tier and the narrow-link figures (from 5 s on, 60 s of p95 <= 100 ms and >= 25
    fps, no more than the link carries: ``tests/test_bottleneck.py`` has no test of its
    own for them), the fast one keeps >= 1.2 Mbit/s at 1280x720. Both leave: the sender
    has no viewer left.

    The host's own hiccups (a late capture, a starved decoder: 2 busy cores run the sender
    and both viewers) reach both viewers alike, and the fast one, on a link that adds
    nothing, measures them: when its p95 is high, the slow one may exceed it by
    ``LINK_P95_MS`` (a CI run: fast p95 98 ms at 27.7 fps, slow 127 ms; quiet: 18 and
    50). A queue on the narrow link costs seconds (REMB alone: p95 1.5 s)."""
    require()
    reap_stale()
    with SlowAndFast() as net:
        shape(net, net.sender, NARROW)
        sender = start_namespaced_sender(net, tmp_path / "sender.log")
        pid = sender.proc.pid
        try:
            fast = Viewer(net, net.fast, sender.url, 300, tmp_path / "fast.json")
            deadline = time.monotonic() + 90
            while tiers_of(health(net, net.fast, sender.url)) != [FULL]:
                assert time.monotonic() < deadline, "the fast viewer never reached the full tier"
                time.sleep(1)
            time.sleep(3)  # past the move's keyframe and the next bitrate step
            one = cpu_share(pid, CPU_SECONDS)
            seconds = WARM_UP + NARROW_SECONDS
            slow = Viewer(net, net.receiver, sender.url, seconds, tmp_path / "slow.json")
            deadline = time.monotonic() + 30
            while tiers_of(state := health(net, net.fast, sender.url)) != [FULL, REDUCED]:
                assert time.monotonic() < deadline, f"no slow viewer on the reduced tier: {state}"
                time.sleep(0.5)
            time.sleep(WARM_UP)
            two = cpu_share(pid, CPU_SECONDS)
            state = health(net, net.fast, sender.url)
            metrics = fetch(net, net.fast, sender.url + "/metrics")
            slow_watched = slow.result()
            fast_watched = fast.stop()
            deadline = time.monotonic() + 30
            while (left := health(net, net.fast, sender.url)["viewers"]) != 0:
                assert time.monotonic() < deadline, f"{left} viewers left after both went"
                time.sleep(0.5)
        finally:
            sender.stop()
    s0 = slow_watched.start
    slow_window = slow_watched.window(s0 + WARM_UP, s0 + seconds)
    fast_window = fast_watched.window(s0 + WARM_UP, s0 + seconds)
    detail = (
        f"slow: {slow_window}\nfast: {fast_window}\nCPU one viewer {one:.3f} cores, "
        f"two {two:.3f} ({two / one:.2f}x)\n{json.dumps(state)}\n{sender.stderr()[-3000:]}"
    )
    print(detail.split("\n{")[0])
    assert slow_window.p95_ms <= max(SLOW_P95_MS, fast_window.p95_ms + LINK_P95_MS), detail
    assert slow_window.fps >= 25, detail
    assert slow_window.kbps <= 400, detail  # what arrived fits the link (it cannot be more)
    assert fast_window.kbps >= FAST_MIN_KBPS, detail
    assert fast_window.sizes == [(1280, 720)], detail
    assert fast_window.fps >= 25, detail
    assert two <= CPU_RATIO_MAX * one, detail
    assert tiers_of(state) == [FULL, REDUCED], detail
    assert "webcam_viewer_tier{" in metrics and 'tier="reduced"} 1.0' in metrics, metrics
