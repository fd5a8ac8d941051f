"""The two command-line tools as a user runs them: separate processes on 127.0.0.1."""

import asyncio
import json
import sys
from pathlib import Path

import av
import cv2
import pytest
from aiohttp import web
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamTrack

from common.ice import rtc_configuration
from sender import encoders

from .helpers import assert_one_line_error, child_env, run_receiver, run_sender


def test_record_snapshots_and_stats(sender_process, tmp_path: Path) -> None:
    sender = sender_process("--source", "testsrc", "--size", "640x480")
    recording = tmp_path / "clip.mkv"
    shots = tmp_path / "shots"
    stats_file = tmp_path / "stats.json"
    result = run_receiver(
        sender.url,
        "--duration", "4",
        "--record", str(recording),
        "--snapshots", str(shots),
        "--snapshot-every", "25",
        "--stats-json", str(stats_file),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    stats = json.loads(stats_file.read_text())
    assert (stats["width"], stats["height"]) == (640, 480)
    assert stats["frames"] >= 60 and stats["fps"] > 15
    # --duration counts from the first frame: the connection's set-up does not come out
    # of the clip. Counted from the start, this was 3.90-3.92 s on a busy 2-core machine
    # (set-up about 0.1 s, less the frame that crosses the deadline); the margin is for
    # the sinks' time on the last frame between its count and the check.
    assert stats["seconds"] >= 4 - 0.05, stats
    assert stats["latency_ms"]["p50"] > 0 and stats["stamped_frames"] == stats["frames"]
    assert "fps" in result.stderr and "latency p50" in result.stderr  # the status line

    with av.open(str(recording)) as container:
        stream = container.streams.video[0]
        packets = [p for p in container.demux(stream) if p.pts is not None]
        assert (stream.codec_context.width, stream.codec_context.height) == (640, 480)
        pts = sorted(p.pts for p in packets)
        duration = float((pts[-1] - pts[0]) * stream.time_base) + 1 / 30
    with av.open(str(recording)) as container:
        decoded = sum(1 for _ in container.decode(video=0))
    assert len(packets) == stats["frames"] == decoded
    recorded = stats["seconds"] + 1 / 30
    assert abs(duration - recorded) / recorded < 0.05, (duration, recorded, pts[:3], pts[-3:])

    images = sorted(shots.iterdir())
    assert len(images) == (stats["frames"] - 1) // 25 + 1
    for path in images:
        image = cv2.imread(str(path))
        assert image is not None and image.shape == (480, 640, 3)


def test_frames_option_stops_after_n_frames(sender_process, tmp_path: Path) -> None:
    sender = sender_process("--source", "testsrc", "--codec", "h264")
    stats_file = tmp_path / "stats.json"
    result = run_receiver(sender.url, "--frames", "20", "--quiet", "--stats-json", str(stats_file))
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # --quiet: no status line, no summary
    assert json.loads(stats_file.read_text())["frames"] == 20


def test_unreachable_sender_is_a_one_line_error(unused_tcp_port) -> None:
    result = run_receiver(f"http://127.0.0.1:{unused_tcp_port}", "--frames", "1")
    assert result.returncode == 1  # a runtime failure, not a bad option
    assert_one_line_error(result.stderr)
    assert "cannot reach" in result.stderr
    assert '"frames": 0' not in result.stderr  # no all-zero summary that reads like a result


def test_not_a_url_is_a_bad_option() -> None:
    result = run_receiver("notaurl", "--frames", "1")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "not an http(s) URL" in result.stderr


def test_refusing_sender_is_a_one_line_error(sender_process) -> None:
    sender = sender_process("--source", "testsrc")
    result = run_receiver(sender.url + "/no/such/path", "--frames", "1")
    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert "404" in result.stderr


class SilentTrack(MediaStreamTrack):
    """A video track that never produces a frame."""

    kind = "video"

    async def recv(self):
        await asyncio.Event().wait()


async def test_no_video_within_connect_timeout(unused_tcp_port) -> None:
    """A peer that answers but never sends video: the receiver gives up after --connect-timeout."""
    peers: list[RTCPeerConnection] = []

    async def offer(request: web.Request) -> web.Response:
        params = await request.json()
        pc = RTCPeerConnection(rtc_configuration())
        peers.append(pc)
        pc.addTrack(SilentTrack())
        await pc.setRemoteDescription(RTCSessionDescription(**params))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})

    app = web.Application()
    app.router.add_post("/offer", offer)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", unused_tcp_port).start()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "receiver", f"http://127.0.0.1:{unused_tcp_port}",
            "--signalling", "json", "--connect-timeout", "3", "--frames", "1",
            stderr=asyncio.subprocess.PIPE, env=child_env(),
        )  # fmt: skip
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=60)
    finally:
        for pc in peers:
            await pc.close()
        await runner.cleanup()
    assert proc.returncode != 0
    assert_one_line_error(stderr.decode())
    assert "no video" in stderr.decode() and "3 s" in stderr.decode()


def test_display_without_a_display_is_a_one_line_error(sender_process) -> None:
    sender = sender_process("--source", "testsrc")
    result = run_receiver(sender.url, "--display", "--frames", "5")
    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert "DISPLAY" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record", "/nonexistent-dir/clip.mkv"], "cannot write"),
        (["--record", "clip.xyz"], "cannot record"),
        (["--ice-server", "http://example.org"], "ICE server"),
        (["--frames", "0"], "must be positive"),
    ],
)
def test_bad_receiver_options(args: list[str], message: str, tmp_path: Path) -> None:
    result = run_receiver("http://127.0.0.1:9", *args)
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--encoder", "nosuch"], "--encoder: no vp8 encoder 'nosuch' in this FFmpeg"),
        (["--codec", "vp8", "--encoder", "libx264"], "--encoder: libx264 encodes h264, not vp8"),
        (["--encoder-speed", "turbo"], "argument --encoder-speed: invalid choice"),
    ],
)
def test_bad_encoder_options(args: list[str], message: str) -> None:
    result = run_sender("--source", "testsrc", *args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert message in result.stderr


def test_a_named_hardware_encoder_that_cannot_open_falls_back(sender_process) -> None:
    """h264_v4l2m2m exists in this FFmpeg, but no V4L2 device does: one warning says so,
    /healthz names the software encoder (at the speed asked for), viewers get video."""
    if "h264_v4l2m2m" not in encoders.encoders_for("h264"):
        pytest.skip("this FFmpeg has no h264_v4l2m2m")
    sender = sender_process(
        "--source", "testsrc", "--codec", "h264",
        "--encoder", "h264_v4l2m2m", "--encoder-speed", "quality",
    )  # fmt: skip
    warnings = [line for line in sender.stderr().splitlines() if " WARNING " in line]
    assert len(warnings) == 1 and warnings[0].endswith(
        "h264: using libx264 (software): h264_v4l2m2m failed to open: Could not find a "
        "valid device; can't configure encoder"
    ), sender.stderr()
    chosen = sender.health()["video_encoders"]
    assert chosen["h264"] | {"why": ""} == {
        "encoder": "libx264",
        "hardware": False,
        "speed": "quality",
        "why": "",
        "fallbacks": 0,
    }
    assert chosen["vp8"]["encoder"] == "libvpx"
    result = run_receiver(sender.url, "--frames", "10", "--quiet")
    assert result.returncode == 0, result.stderr


def test_console_scripts_are_installed() -> None:
    from importlib.metadata import entry_points

    scripts = {e.name: e.value for e in entry_points(group="console_scripts")}
    assert scripts.get("webcam-sender") == "sender.cli:main"
    assert scripts.get("webcam-receiver") == "receiver.cli:main"
