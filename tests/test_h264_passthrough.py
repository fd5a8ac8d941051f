"""H.264 passthrough (``sender.passthrough``): a camera's (or a file's) own H.264 reaches
real receivers through a real sender with nothing decoded or encoded there; ``--transcode``,
a VP8-only viewer beside it, a camera restart, files, and the aiortc change that lets our
receiver take Main and High streams (``common.aiortc_ext.h264_profiles``)."""

from __future__ import annotations

import itertools
import statistics
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiortc
import av
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from bench.rtsp_camera import RtspCamera
from common import stamp
from common.aiortc_ext import AIORTC_VERSION, h264_profiles
from receiver import Receiver
from receiver.stats import read_stamp
from sender import live
from sender.h264_stream import CLOCK_RATE, StreamInfo, Timeline
from sender.passthrough import choose, offered_h264
from sender.sources import TestPattern

from .helpers import SenderProcess
from .rtsp_camera import rtsp_camera
from .test_rtsp import Watch, metrics, restart_under, resumed_in_order, rising, watch

SIZE = "640x480"


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RtspCamera]:
    with rtsp_camera(tmp_path) as cam:
        yield cam


def fps(frames: list[tuple[float, int, float]]) -> float:
    return (len(frames) - 1) / (frames[-1][0] - frames[0][0])


def assert_nothing_decoded_or_encoded(sender: SenderProcess) -> dict[str, float]:
    counters = metrics(sender)
    assert counters["webcam_frames_captured_total{}"] == 0, "the sender decoded frames"
    assert counters["webcam_frames_encoded_total{}"] == 0, "the sender encoded frames"
    assert counters["webcam_passthrough_packets_total{}"] > 0
    return counters


async def camera_latency(url: str, frames: int = 60) -> float:
    """p50 capture-to-decoded of the camera read directly (PyAV, as the sender reads)."""
    reader = live.LiveReader(url, live.options(url), lambda frame, _: frame)
    reader.start()
    ages = []
    try:
        while len(ages) < frames:
            found = read_stamp(await reader.next_frame())
            assert found is not None
            ages.append(stamp.age_us(found) / 1000)
    finally:
        await reader.close()
    return statistics.median(ages[10:])


async def test_rtsp_camera_is_passed_through(
    camera: RtspCamera, sender_process: Callable[..., SenderProcess]
) -> None:
    own = await camera_latency(camera.url())
    sender = sender_process("--source", camera.url(), "--size", SIZE)
    async with watch(sender.url) as seen:
        await seen.until(90)
        state = sender.health()
        assert_nothing_decoded_or_encoded(sender)
    frames = seen.frames[15:]
    assert rising(frames), [s for _, s, _ in frames]
    assert all(b - a == 1 for (_, a, _), (_, b, _) in itertools.pairwise(frames)), "frames lost"
    assert fps(frames) >= 25
    p50 = statistics.median(age for _, _, age in frames)
    print(f"capture-to-decoded: camera read directly {own:.0f} ms, passed through {p50:.0f} ms")
    assert p50 < own + 50, f"passthrough adds {p50 - own:.0f} ms to the camera's {own:.0f} ms"
    assert state["passthrough"] == {
        "h264": {
            "active": True,
            "viewers": 1,
            "profile": "constrained baseline",
            "size": SIZE,
            "waiting_for_keyframe": 0,
            "keyframe_requests": state["passthrough"]["h264"]["keyframe_requests"],
        },
        "vp8": False,
    }
    assert state["encoders"] == {}
    assert [v["tier"] for v in state["viewer_tiers"]] == ["passthrough"]
    log = sender.stderr()
    assert "h264: passing the camera's stream through (constrained baseline 640x480)" in log


async def test_transcode_never_passes_through(
    camera: RtspCamera, sender_process: Callable[..., SenderProcess]
) -> None:
    sender = sender_process("--source", camera.url(), "--size", SIZE, "--transcode")
    async with watch(sender.url) as seen:
        await seen.until(45)
        state = sender.health()
        counters = metrics(sender)
    assert state["passthrough"] == {"h264": False, "vp8": False}
    assert counters["webcam_frames_encoded_total{}"] > 0
    assert counters["webcam_passthrough_packets_total{}"] == 0
    assert rising(seen.frames)


async def test_a_vp8_viewer_beside_a_passthrough_viewer(
    camera: RtspCamera, sender_process: Callable[..., SenderProcess]
) -> None:
    sender = sender_process("--source", camera.url(), "--size", SIZE)
    async with (
        watch(sender.url) as h264,
        Receiver(sender.url, connect_timeout=30, codecs=["vp8"]) as rx,
    ):
        await h264.until(30)
        vp8 = Watch(rx)
        try:
            await vp8.until(60)
            await h264.until(len(h264.frames) + 30)
            state = sender.health()
            counters = metrics(sender)
        finally:
            await vp8.close()
    assert state["passthrough"]["h264"]["viewers"] == 1
    assert state["encoders"] == {"vp8": 1}
    assert sorted(v["codec"] for v in state["viewer_tiers"]) == ["h264", "vp8"]
    assert counters["webcam_frames_captured_total{}"] > 0  # decoded for the VP8 viewer only
    assert counters["webcam_frames_encoded_total{}"] > 0
    assert rising(h264.frames) and rising(vp8.frames)
    assert fps(h264.frames[-30:]) >= 25, "the passthrough viewer slowed down"


async def test_camera_restart_under_a_passthrough_viewer(
    camera: RtspCamera, sender_process: Callable[..., SenderProcess]
) -> None:
    sender = sender_process("--source", camera.url(), "--size", SIZE)
    async with watch(sender.url) as seen:
        before, last = await restart_under(camera, sender, seen)
        state = sender.health()
        assert_nothing_decoded_or_encoded(sender)
        assert seen.rx.stats.reconnects == 0, "the viewer had to reconnect"
    assert resumed_in_order(seen.frames, before, last)
    pause = max(b[0] - a[0] for a, b in itertools.pairwise(seen.frames))
    assert pause > 0.5, f"no pause while the camera was away ({pause:.2f} s at most)"
    assert state["source_reconnects"] >= 1
    assert state["passthrough"]["h264"]["active"]
    assert fps(seen.frames[-20:]) >= 25


def make_clip(path: Path, profile: str, frames: int = 90) -> None:
    """A stamped clip of the fake camera, 640x480 at 30 fps, H.264 without B-frames."""
    picture = TestPattern(640, 480, 30)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = 640, 480, "yuv420p"
        stream.codec_context.options = {"profile": profile, "bf": "0", "g": "15"}
        for n in range(frames):
            image = picture.picture(n).reshape(480 * 3 // 2, 640)
            frame = av.VideoFrame.from_ndarray(image, format="yuv420p")
            frame.pts = n
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@pytest.mark.parametrize(
    ("name", "profile", "shown"), [("clip.mp4", "high", "high"), ("clip.ts", "baseline", None)]
)
async def test_an_h264_file_is_passed_through(
    tmp_path: Path,
    sender_process: Callable[..., SenderProcess],
    name: str,
    profile: str,
    shown: str | None,
) -> None:
    """MP4 (length-prefixed, High: our receiver offers High) and MPEG-TS (Annex B)."""
    path = tmp_path / name
    make_clip(path, profile)
    sender = sender_process("--source", str(path), "--size", SIZE)
    async with watch(sender.url) as seen:
        await seen.until(120)  # over a loop of the 90-frame clip
        state = sender.health()
        assert_nothing_decoded_or_encoded(sender)
    assert state["passthrough"]["h264"]["profile"] == (shown or "constrained baseline")
    sequences = [s for _, s, _ in seen.frames]
    steps = [b - a for a, b in itertools.pairwise(sequences)]
    assert all(step == 1 or b == 0 for step, b in zip(steps, sequences[1:], strict=True)), steps
    assert 0 in sequences[1:], "the clip did not loop"
    assert fps(seen.frames[5:]) >= 25


# -- without a camera ---------------------------------------------------------------------


async def test_which_offered_profile_a_stream_is_sent_as() -> None:
    high = StreamInfo("h264", 1920, 1080, 100, 0, 40)
    cb = StreamInfo("h264", 640, 480, 66, 0xC0, 31)
    offer = RTCPeerConnection()
    transceiver = offer.addTransceiver("video", direction="recvonly")
    h264_profiles.offer_profiles(transceiver)
    await offer.setLocalDescription(await offer.createOffer())
    text = offer.localDescription.sdp
    await offer.close()
    offered = offered_h264(text, None)
    levels = [str(c.parameters["profile-level-id"]) for c, _ in offered]
    assert levels == ["42001f", "42e01f", "4d001f", "640c1f"]
    assert all(rtx is not None for _, rtx in offered)
    chosen = choose(high, offered)
    assert chosen is not None and chosen[0].parameters["profile-level-id"] == "640c1f"
    chosen = choose(cb, offered)
    assert chosen is not None and chosen[0].parameters["profile-level-id"] == "42e01f"
    assert choose(high, offered[:2]) is None  # a baseline-only viewer (stock aiortc)
    assert choose(cb, offered[2:]) is not None  # constrained baseline suits any H.264
    assert not StreamInfo("h264", 640, 480, 100, 0, 31, b_frames=True).passable


async def test_aiortc_answers_and_receives_a_high_profile() -> None:
    """Fails if an aiortc upgrade breaks what common/aiortc_ext/h264_profiles.py changes:
    the answer's first codec is the High one the offer added, and the offerer's receiver
    knows its payload type; a stock connection still offers baseline only."""
    assert aiortc.__version__ == AIORTC_VERSION, "re-check common/aiortc_ext/h264_profiles.py"
    viewer, sender, stock = RTCPeerConnection(), RTCPeerConnection(), RTCPeerConnection()
    try:
        wanted = viewer.addTransceiver("video", direction="recvonly")
        h264_profiles.offer_profiles(wanted)
        await viewer.setLocalDescription(await viewer.createOffer())
        offer = viewer.localDescription.sdp
        sending = sender.addTransceiver("video", direction="sendonly")
        await sender.setRemoteDescription(RTCSessionDescription(sdp=offer, type="offer"))
        high = next(o for o in offered_h264(offer, None) if "640c1f" in str(o[0].parameters))
        h264_profiles.answer_with(sending, *high)
        await sender.setLocalDescription(await sender.createAnswer())
        answer = sender.localDescription.sdp
        first = offered_h264(answer, None)[0][0]
        assert first.parameters["profile-level-id"] == "640c1f"
        assert first.payloadType == high[0].payloadType
        await viewer.setRemoteDescription(RTCSessionDescription(sdp=answer, type="answer"))
        received: list[Any] = wanted._codecs
        assert high[0].payloadType in {c.payloadType for c in received}
        stock.addTransceiver("video", direction="recvonly")
        await stock.setLocalDescription(await stock.createOffer())
        stock_levels = {
            str(c.parameters["profile-level-id"])
            for c, _ in offered_h264(stock.localDescription.sdp, None)
        }
        assert stock_levels == {"42001f", "42e01f"}
    finally:
        for pc in (viewer, sender, stock):
            await pc.close()


def test_file_clip_profiles(tmp_path: Path) -> None:
    """The clips above are what they claim (so the file test covers High and AVCC)."""
    path = tmp_path / "clip.mp4"
    make_clip(path, "high", frames=5)
    with av.open(str(path)) as container:
        context = container.streams.video[0].codec_context
        assert context.profile == "High"
        assert (context.extradata or b"")[:1] == b"\x01"  # AVCC: needs h264_mp4toannexb


def test_a_late_first_packet_does_not_keep_the_timeline_ahead() -> None:
    """The reader stalls 1.5 s on a connection's first packet (a busy machine); the 45
    behind it come in a burst, then the packets arrive on time. Anchored on the first
    alone, every later time (and the camera's audio on it) stayed 1.5 s ahead of its
    arrival; now the least delayed packet anchors it, and times never go back."""
    timeline = Timeline(origin=0.0)
    pts = [timeline.pts(0.0, 101.5)]
    pts += [timeline.pts(k / 30, 101.5 + k * 0.001) for k in range(1, 46)]
    pts += [timeline.pts(k / 30, 100.0 + k / 30 + 0.002) for k in range(46, 90)]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert pts[-1] / CLOCK_RATE == pytest.approx(100.0 + 89 / 30 + 0.002, abs=1e-3)
    assert timeline.capture(3.0) == pytest.approx(103.002, abs=1e-3)
    # A re-based stream (its time jumps 10 s back) is anchored afresh, still rising.
    later = timeline.pts(0.0, 103.1)
    assert later > pts[-1] and timeline.capture(0.0) == pytest.approx(103.1, abs=1e-3)
