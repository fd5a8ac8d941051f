"""Several cameras in one sender (``--source NAME=SPEC``, sender/camera.py) and several
URLs in one receiver: each camera its own endpoint, picture, viewers and lifetime; a dead
camera does not stop the others; the receiver records every camera with ``{name}``."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import av
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from prometheus_client.parser import text_string_to_metric_families

from receiver import Receiver
from receiver.cli import camera_name, camera_names
from receiver.stats import read_stamp
from sender.camera import CameraConfig, mask, parse_source
from sender.sources import SourceError, SourceSpec, TestPattern

from .helpers import (
    InProcessSender,
    SenderProcess,
    assert_one_line_error,
    run_receiver,
    run_sender,
    wait_until,
)
from .rtsp_camera import rtsp_camera

WIDTH, HEIGHT = 640, 480


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# -- the rules, without a sender ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("testsrc", (None, "testsrc")),
        ("front=testsrc", ("front", "testsrc")),
        ("back_2-x=rtsp://u:p@h/s?a=b", ("back_2-x", "rtsp://u:p@h/s?a=b")),
        ("rtsp://u:p@h/s?a=b", (None, "rtsp://u:p@h/s?a=b")),  # a URL is never split
        ("http://cam/video?user=x&pwd=y", (None, "http://cam/video?user=x&pwd=y")),
        ("./a=b.mp4", (None, "./a=b.mp4")),  # not a name: a path with "=" in it
        ("cam=a=b.mp4", ("cam", "a=b.mp4")),
        ("a=", (None, "a=")),  # no spec: not a name
        ("dshow:video=Cam", (None, "dshow:video=Cam")),
    ],
)
def test_a_source_is_named_only_by_the_rule(text: str, expected: tuple[str | None, str]) -> None:
    assert parse_source(text) == expected


def test_errors_quoting_a_url_are_masked() -> None:
    masked = mask("camera b: cannot open rtsp://admin:hunter2@10.0.0.9/s?pwd=x: refused")
    assert "hunter2" not in masked and "pwd=x" not in masked
    assert "rtsp://admin:***@10.0.0.9/s?pwd=***" in masked


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "a=testsrc", "--source", "a=scene"], "two cameras named 'a'"),
        (["--source", "testsrc", "--source", "scene"], "two cameras named 'camera'"),
        (["--source", "a=testsrc", "--source", "b=/no/such.mp4"], "camera b: no such camera"),
    ],
)
def test_bad_camera_lists_are_one_line_errors(args: list[str], message: str) -> None:
    result = run_sender(*args)
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert message in result.stderr


def test_receiver_names_cameras_by_url() -> None:
    assert camera_name("http://127.0.0.1:8080/whep/front") == "front"
    assert camera_name("http://127.0.0.1:8080/whep/front/") == "front"
    assert camera_name("http://cam.local:8080/") == "cam.local"
    assert camera_name("http://cam.local:8080/whep") == "cam.local"
    assert camera_names(["http://h:1/whep/a", "http://h:2/whep/a", "http://h:3", "http://h:4"]) == [
        "a",
        "a-2",
        "h",
        "h-2",
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--record", "all.mkv"], "--record with several URLs needs {name}"),
        (["--snapshots", "shots"], "--snapshots with several URLs needs {name}"),
        (["--display"], "--display shows one camera: give one URL"),
    ],
)
def test_receiver_refuses_what_several_cameras_cannot_share(
    args: list[str], message: str, tmp_path: Path
) -> None:
    urls = ["http://127.0.0.1:1/whep/a", "http://127.0.0.1:1/whep/b"]
    result = run_receiver(*urls, *args, timeout=60)
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert message in result.stderr


# -- in-process senders -------------------------------------------------------------------


async def first_frames(url: str, count: int = 15) -> list[av.VideoFrame]:
    frames = []
    async with Receiver(url, connect_timeout=30) as rx:
        async for frame in rx.frames():
            frames.append(frame)
            if len(frames) >= count:
                break
    return frames


def looks_like_testsrc(frame: av.VideoFrame) -> bool:
    """The frame is the flat fake camera's picture of its stamped sequence number (the
    scene camera's is a landscape)."""
    found = read_stamp(frame)
    assert found is not None, "no stamp"
    luma = frame.to_ndarray(format="gray")[64:]
    expected = TestPattern(frame.width, frame.height, 30).render(found.sequence)
    drawn = expected[: frame.width * frame.height].reshape(frame.height, frame.width)[64:]
    return float(np.mean(np.abs(luma.astype(np.int16) - drawn.astype(np.int16)))) < 12


async def test_each_camera_has_its_own_picture_viewers_and_lifetime(
    sender_factory: Callable[..., Awaitable[InProcessSender]],
) -> None:
    sender = await sender_factory(
        cameras=(CameraConfig("a", SourceSpec("testsrc")), CameraConfig("b", SourceSpec("scene")))
    )
    frames_a, frames_b = await asyncio.gather(
        first_frames(sender.url + "/whep/a"), first_frames(sender.url + "/whep/b")
    )
    assert looks_like_testsrc(frames_a[-1]), "camera a does not show the flat fake camera"
    assert not looks_like_testsrc(frames_b[-1]), "camera b shows camera a's picture"
    # One sender, one event loop: its time for encodes is shared (common.loop_budget).
    assert sender.cameras.get("a").sessions.encoders.budget is (
        sender.cameras.get("b").sessions.encoders.budget
    )

    async with aiohttp.ClientSession() as http:
        # /whep is the first camera; its session URL is found across cameras.
        async with (
            Receiver(sender.url, connect_timeout=30) as first,
            Receiver(sender.url + "/whep/b", connect_timeout=30) as second,
        ):
            health = await (await http.get(sender.url + "/healthz")).json()
            cameras = health["cameras"]
            assert list(cameras) == ["a", "b"]
            assert cameras["a"]["viewers"] == cameras["b"]["viewers"] == 1
            assert cameras["a"]["url"] == "/whep/a" and cameras["b"]["url"] == "/whep/b"
            assert cameras["a"]["source"] == "fake camera (testsrc)"
            assert cameras["b"]["source"] == "fake camera (scene)"
            assert health["source"] == "fake camera (testsrc)" and health["viewers"] == 1
            text = await (await http.get(sender.url + "/metrics")).text()
            families = {f.name: f for f in text_string_to_metric_families(text)}
            open_by_camera = {
                s.labels["camera"]: s.value for s in families["webcam_source_open"].samples
            }
            assert open_by_camera == {"a": 1, "b": 1}
            viewers = {s.labels["camera"] for s in families["webcam_viewer_bitrate_bps"].samples}
            assert viewers == {"a", "b"}
            await first.close()  # camera a's only viewer leaves: a closes, b stays open
            cams = sender.cameras
            await wait_until(lambda: not cams.get("a").source.is_open, 20, "camera a to close")
            assert cams.get("b").source.is_open, "camera b closed with camera a's viewer"
            assert second.ended is None and second.connection_state == "connected"
        await wait_until(lambda: not cams.get("b").source.is_open, 20, "camera b to close")

        listed = await (await http.get(sender.url + "/cameras")).json()
        assert [c["name"] for c in listed["cameras"]] == ["a", "b"]
        missing = await http.post(
            sender.url + "/whep/zz", data="v=0", headers={"Content-Type": "application/sdp"}
        )
        assert missing.status == 404
        assert (await missing.json())["error"] == "no such camera: 'zz' (cameras: a, b)"
        # The JSON /offer picks its camera with "camera".
        pc = RTCPeerConnection()
        try:
            pc.addTransceiver("video", direction="recvonly")
            await pc.setLocalDescription(await pc.createOffer())
            offer = {"sdp": pc.localDescription.sdp, "type": "offer"}
            refused = await http.post(sender.url + "/offer", json={**offer, "camera": "zz"})
            assert refused.status == 400
            assert "no such camera: 'zz'" in (await refused.json())["error"]
            answered = await http.post(sender.url + "/offer", json={**offer, "camera": "b"})
            assert answered.status == 200
            await pc.setRemoteDescription(RTCSessionDescription(**await answered.json()))
            assert len(cams.get("b").sessions) == 1 and len(cams.get("a").sessions) == 0
        finally:
            await pc.close()


async def test_a_camera_that_was_not_available_serves_once_it_opens(
    sender_factory: Callable[..., Awaitable[InProcessSender]],
) -> None:
    """Unavailable at start: its viewers get a 503 saying why, /healthz shows it, the
    other camera serves; once a retry opens it, it serves too."""
    tries = 0

    async def reopen() -> SourceSpec:
        nonlocal tries
        tries += 1
        if tries < 2:
            raise SourceError("cannot open network camera rtsp://u:***@127.0.0.1:9/x: refused")
        return SourceSpec("testsrc")

    late = CameraConfig(
        "b",
        SourceSpec("testsrc"),
        error="cannot open network camera rtsp://u:pw@127.0.0.1:9/x: refused",
        reopen=reopen,
    )
    sender = await sender_factory(cameras=(CameraConfig("a", SourceSpec("testsrc")), late))
    async with aiohttp.ClientSession() as http:
        refused = await http.post(
            sender.url + "/whep/b", data="v=0\r\n", headers={"Content-Type": "application/sdp"}
        )
        assert refused.status == 503 and refused.headers["Retry-After"]
        assert (await refused.json())["error"] == (
            "camera b is not available: cannot open network camera "
            "rtsp://u:***@127.0.0.1:9/x: refused"
        )
        health = await (await http.get(sender.url + "/healthz")).json()
        assert health["cameras"]["b"]["source_state"] == "unavailable"
        assert "u:***@" in health["cameras"]["b"]["source_error"]
        assert len(await first_frames(sender.url + "/whep/a", 5)) == 5

        async def available() -> bool:
            health = await (await http.get(sender.url + "/healthz")).json()
            return bool(health["cameras"]["b"]["source_state"] != "unavailable")

        await wait_until(available, 30, "camera b to become available")
    assert tries == 2
    assert len(await first_frames(sender.url + "/whep/b", 5)) == 5


# -- real processes ------------------------------------------------------------------------


def recorded(path: Path) -> list[tuple[int, int, int]]:
    """(width, height, stamp sequence) of every decoded frame of a recording."""
    out = []
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            found = read_stamp(frame.reformat(format="yuv420p"))
            assert found is not None, f"{path.name}: a frame without a valid stamp"
            out.append((frame.width, frame.height, found.sequence))
    return out


def test_one_receiver_records_three_cameras_of_one_sender(
    sender_process: Callable[..., SenderProcess], tmp_path: Path
) -> None:
    """Two fake cameras and an RTSP camera in one sender; one receiver process records
    all three at once, each file named after its camera."""
    with rtsp_camera(tmp_path) as camera:
        sender = sender_process(
            "--source", "a=testsrc", "--source", "b=scene",
            "--source", f"c={camera.url()}", "--size", f"{WIDTH}x{HEIGHT}",
        )  # fmt: skip
        health = sender.health()
        assert list(health["cameras"]) == ["a", "b", "c"]
        assert health["cameras"]["c"]["source"].startswith("network camera rtsp://")
        urls = [f"{sender.url}/whep/{name}" for name in "abc"]
        stats = tmp_path / "stats.json"
        result = run_receiver(
            *urls, "--record", str(tmp_path / "{name}-%Y%m%d.mkv"), "--duration", "8",
            "--stats-json", str(stats), "--quiet", "--connect-timeout", "30",
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
    summaries = json.loads(stats.read_text())
    assert set(summaries) == {"a", "b", "c"}
    for name in "abc":
        [path] = tmp_path.glob(f"{name}-*.mkv")
        frames = recorded(path)
        assert len(frames) >= 8 * 10, f"{name}: only {len(frames)} frames in 8 s"
        assert {(w, h) for w, h, _ in frames} == {(WIDTH, HEIGHT)}
        sequences = [s for _, _, s in frames]
        assert all(b > a for a, b in itertools.pairwise(sequences)), name
        assert summaries[name]["frames"] == len(frames)
    assert sender.stop() == 0, "no clean exit on SIGTERM"
    log = sender.stderr()
    assert "Traceback" not in log
    for name in "abc":
        assert f"viewer joined: camera {name}," in log and f"camera closed: {name}" in log


def test_a_dead_camera_does_not_stop_the_others(
    sender_process: Callable[..., SenderProcess], tmp_path: Path
) -> None:
    """The second camera's RTSP URL has nothing listening: a warning names it, /healthz
    shows it unavailable (password masked), its viewers get a 503 with the reason, and
    the first camera serves; one receiver of both records the good one and says one line
    about the bad one."""
    dead = f"rtsp://viewer:s3cret-pw@127.0.0.1:{free_port()}/stream"
    sender = sender_process("--source", "a=testsrc", "--source", f"b={dead}")
    log = sender.stderr()
    warnings = [line for line in log.splitlines() if " WARNING sender.cli:" in line]
    assert len(warnings) == 1 and "camera b is not available" in warnings[0], log
    b = sender.health()["cameras"]["b"]
    assert b["source_state"] == "unavailable"
    assert "viewer:***@127.0.0.1" in b["source_error"], b
    result = run_receiver(
        f"{sender.url}/whep/a", f"{sender.url}/whep/b", "--record",
        str(tmp_path / "{name}.mkv"), "--duration", "4", "--max-retries", "1", "--quiet",
    )  # fmt: skip
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("webcam-receiver: error: b: ")
    assert "camera b is not available" in errors[0]
    assert len(recorded(tmp_path / "a.mkv")) >= 4 * 10
    assert not (tmp_path / "b.mkv").exists()
    assert sender.stop() == 0, "no clean exit on SIGTERM while camera b is retried"
    assert "s3cret-pw" not in sender.stderr() and "Traceback" not in sender.stderr()
