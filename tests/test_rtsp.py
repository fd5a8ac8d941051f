"""Network cameras (``sender.live``): the test RTSP camera (``tests/rtsp_camera.py``: the
stamped fake camera, H.264 over RTSP) through a real sender to a real receiver; the
camera restarting under a watching viewer; refusals at start; and the parts that need
no camera (URLs, masking, the lag that makes the reader skip)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import statistics
import time
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import av
import cv2
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from bench.rtsp_camera import RtspCamera, free_port
from common import stamp
from receiver import Receiver
from receiver.stats import read_stamp
from sender import live, sources
from sender.sources import TestPattern

from .helpers import SenderProcess, assert_one_line_error, run_sender, wait_until
from .rtsp_camera import rtsp_camera

PASSWORD = "s3cret-pw"  # distinctive: it must appear in no output
SIZE = "640x480"


@pytest.fixture
def camera(tmp_path: Path) -> Iterator[RtspCamera]:
    with rtsp_camera(tmp_path) as cam:
        yield cam


@pytest.fixture
def private_camera(tmp_path: Path) -> Iterator[RtspCamera]:
    """A camera that wants user ``viewer`` and ``PASSWORD``."""
    with rtsp_camera(tmp_path, user="viewer", password=PASSWORD) as cam:
        yield cam


def metrics(sender: SenderProcess) -> dict[str, float]:
    with urllib.request.urlopen(sender.url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        sample.name + json.dumps(sample.labels, sort_keys=True): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


class Watch:
    """A receiver's decoded frames, read in the background: (arrival, stamp sequence,
    capture-to-decoded ms) for each stamped one."""

    def __init__(self, rx: Receiver) -> None:
        self.rx = rx
        self.frames: list[tuple[float, int, float]] = []
        self._task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async for frame in self.rx.frames():
            found = read_stamp(frame)
            if found is not None:
                age_ms = stamp.age_us(found) / 1000
                self.frames.append((time.monotonic(), found.sequence, age_ms))

    async def until(self, count: int, within: float = 30.0) -> None:
        await wait_until(lambda: len(self.frames) >= count, within, f"{count} frames")

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


@contextlib.asynccontextmanager
async def watch(url: str) -> AsyncIterator[Watch]:
    # A long stall timeout: a pause while the camera is away must not look like a lost
    # sender to the receiver; the sender keeps the connection up meanwhile.
    async with Receiver(url, connect_timeout=30, stall_timeout=60) as rx:
        watcher = Watch(rx)
        try:
            yield watcher
        finally:
            await watcher.close()


async def restart_under(camera: RtspCamera, sender: SenderProcess, seen: Watch) -> tuple[int, int]:
    """Stop the camera under a watching viewer, wait until the sender sees it gone, start
    it again and wait for 30 frames more: (frames seen before, the last one's sequence)."""
    await seen.until(30)
    await asyncio.to_thread(camera.stop)
    await wait_until(lambda: sender.health()["source_state"] == "reconnecting", 30, "reconnecting")
    before = len(seen.frames)
    last_sequence = seen.frames[-1][1]
    await asyncio.to_thread(camera.start)
    await seen.until(before + 30, within=60)
    return before, last_sequence


def resumed_in_order(frames: list[tuple[float, int, float]], before: int, last: int) -> bool:
    """The frames before a camera restart in order, and those after it in order once the
    camera is live again (its first 10 frames aside). The test camera's first frames after
    a quick restart are a short burst of its pipeline's own making, forwarded as the
    camera sent them: up to 5 pictures numbered and stamped 2 s back, below the old
    camera's last ones, or one picture repeated three times."""
    return (
        rising(frames[:before])
        and frames[before - 1][1] == last
        and rising(frames[before + RESTART_BURST :])
    )


RESTART_BURST = 10  # frames


def rising(frames: list[tuple[float, int, float]]) -> bool:
    sequences = [sequence for _, sequence, _ in frames]
    return all(b > a for a, b in itertools.pairwise(sequences))


# -- through a real sender --------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "udp"])
async def test_rtsp_camera_through_the_sender_with_little_delay(
    camera: RtspCamera, sender_process: Callable[..., SenderProcess], transport: str
) -> None:
    sender = sender_process("--source", camera.url(), "--size", SIZE, "--rtsp-transport", transport)
    async with watch(sender.url) as seen:
        await seen.until(90)  # three seconds
        state = sender.health()
    frames = seen.frames[30:]  # the first second: the encoder still finding its bitrate
    assert rising(frames), [s for _, s, _ in frames]
    p50 = statistics.median(age for _, _, age in frames)
    print(f"capture-to-decoded through the sender over {transport}: p50 {p50:.0f} ms")
    assert p50 < 300, f"p50 {p50:.0f} ms: the sender delays the camera (was > 900 ms)"
    assert state["source_state"] == "live"
    assert state["source"] == f"network camera {camera.url()}"
    assert f"receiving h264 640x480 over {transport}" in sender.stderr()


async def test_camera_restart_is_a_pause_for_a_connected_viewer(
    private_camera: RtspCamera, sender_process: Callable[..., SenderProcess]
) -> None:
    camera = private_camera
    sender = sender_process("--source", camera.url(), "--size", SIZE)
    async with watch(sender.url) as seen:
        before, last_sequence = await restart_under(camera, sender, seen)
        state = sender.health()
        counters = metrics(sender)
        assert seen.rx.stats.reconnects == 0, "the viewer had to reconnect"
        assert state["viewers"] == 1
    assert resumed_in_order(seen.frames, before, last_sequence)
    pause = max(b[0] - a[0] for a, b in itertools.pairwise(seen.frames))
    assert pause > 0.5, f"no pause while the camera was away ({pause:.2f} s at most)"
    assert state["source_state"] == "live"
    assert state["source_reconnects"] >= 1
    assert counters["webcam_source_reconnects_total{}"] >= 1
    assert counters['webcam_source_state{"state": "live"}'] == 1
    shown = camera.url(password="***")
    assert state["source"] == f"network camera {shown}"
    log = sender.stderr()
    assert "reconnecting" in log and "back (h264" in log
    assert PASSWORD not in log
    assert shown in log


async def test_a_reader_that_falls_behind_skips_to_a_keyframe(
    camera: RtspCamera, caplog: pytest.LogCaptureFixture
) -> None:
    """Decoding at 20 of the camera's 30 fps (``convert`` made slow): without skipping the
    picture would be two seconds old after six; it stays within about a second."""

    def slow(frame: av.VideoFrame, _: float | None) -> av.VideoFrame:
        time.sleep(0.05)
        return frame.reformat(format="yuv420p")

    reader = live.LiveReader(camera.url(), live.options(camera.url()), slow)
    reader.start()
    ages: list[float] = []
    try:
        started = time.monotonic()
        while time.monotonic() - started < 6:
            found = read_stamp(await reader.next_frame())
            assert found is not None
            ages.append(stamp.age_us(found) / 1000)
    finally:
        await reader.close()
    print(f"behind a slow decoder: at most {max(ages[-40:]):.0f} ms over the last 40 frames")
    assert "skipping to a recent keyframe" in caplog.text
    assert max(ages[-40:]) < 1200, f"{max(ages[-40:]):.0f} ms behind"


async def serve_mjpeg(request: web.Request) -> web.StreamResponse:
    """An MJPEG camera: the stamped fake camera as JPEGs in a multipart response, 15 fps."""
    response = web.StreamResponse(
        headers={"Content-Type": "multipart/x-mixed-replace; boundary=frame"}
    )
    await response.prepare(request)
    picture = TestPattern(640, 480, 15)
    with contextlib.suppress(ConnectionResetError):  # the reader went away
        for n in itertools.count():
            yuv = picture.picture(n).reshape(480 * 3 // 2, 640)
            _, jpeg = cv2.imencode(".jpg", cv2.cvtColor(yuv, cv2.COLOR_YUV2BGR_I420))
            head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {jpeg.size}\r\n\r\n"
            await response.write(head.encode() + jpeg.tobytes() + b"\r\n")
            await asyncio.sleep(1 / 15)
    return response


async def test_an_mjpeg_camera_over_http_is_live() -> None:
    app = web.Application()
    app.router.add_get("/video.mjpg", serve_mjpeg)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/video.mjpg"
    assert sources.resolve(url).kind == "network"
    reader = live.LiveReader(
        url, live.options(url), lambda frame, _: frame.reformat(format="yuv420p")
    )
    reader.start()
    sequences, ages_ms = [], []
    try:
        while len(sequences) < 30:  # two seconds
            found = read_stamp(await reader.next_frame())
            assert found is not None
            sequences.append(found.sequence)
            ages_ms.append(stamp.age_us(found) / 1000)
        assert reader.state == live.LIVE
    finally:
        await reader.close()
        await runner.cleanup()
    assert sequences == sorted(set(sequences))
    assert statistics.median(ages_ms) < 300, ages_ms


# -- refused at start -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("user", "password", "path", "message"),
    [
        ("viewer", PASSWORD, "/nope", "the camera has no stream at this path (Server returned 404"),
        ("viewer", "wrong-" + PASSWORD, "/cam", "the camera refused the credentials"),
        ("", "", "/cam", "the camera wants credentials"),
    ],
)
def test_refusal_at_start_is_one_line_and_exit_2(
    private_camera: RtspCamera, user: str, password: str, path: str, message: str
) -> None:
    url = private_camera.url(user=user, password=password, path=path)
    started = time.monotonic()
    result = run_sender("--source", url)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr
    assert time.monotonic() - started < live.START_SECONDS, "a refusal needs no waiting"
    assert PASSWORD not in result.stderr + result.stdout


def test_unreachable_camera_at_start_is_one_line_and_exit_2() -> None:
    url = f"rtsp://viewer:{PASSWORD}@127.0.0.1:{free_port()}/cam"
    result = run_sender("--source", url)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    error = result.stderr.strip().splitlines()[-1]
    assert f"no video within {live.START_SECONDS:g} s (Connection refused)" in error
    assert "rtsp://viewer:***@127.0.0.1" in error
    assert PASSWORD not in result.stderr + result.stdout


# -- without a camera -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("rtsp://admin:hunter2@10.0.0.5:554/stream1", "rtsp://admin:***@10.0.0.5:554/stream1"),
        ("rtsp://admin@10.0.0.5/s", "rtsp://admin@10.0.0.5/s"),
        ("rtsps://cam.local/live", "rtsps://cam.local/live"),
        (
            "http://10.0.0.6/video.cgi?user=admin&pwd=hunter2&res=1",
            "http://10.0.0.6/video.cgi?user=admin&pwd=***&res=1",
        ),
        ("clip.mp4", "clip.mp4"),
    ],
)
def test_credentials_are_masked(url: str, shown: str) -> None:
    assert live.redact(url) == shown
    if "://" in url:
        spec = sources.resolve(url)
        assert "hunter2" not in spec.describe() + repr(spec)


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("rtsp://cam/stream", "network"),
        ("RTSPS://cam/stream", "network"),
        ("http://cam/video.mjpg", "network"),
        ("https://cam/mjpeg?fps=10", "network"),
        ("http://example.org/clip.mp4", "file"),
        ("https://example.org/movie.MKV", "file"),
    ],
)
def test_which_urls_are_live(url: str, kind: str) -> None:
    spec = sources.resolve(url, rtsp_transport="udp")
    assert spec.kind == kind
    if kind == "network":
        assert spec.describe().startswith("network camera ")
        opts = live.options(url, spec.rtsp_transport)
        assert opts["fflags"] == "nobuffer"
        assert ("rtsp_transport" in opts) == url.lower().startswith("rtsp")


async def test_rtsp_transport_is_for_rtsp_cameras_only(caplog: pytest.LogCaptureFixture) -> None:
    spec = await sources.choose("testsrc", 640, 480, 30, rtsp_transport="udp")
    assert spec.kind == "testsrc"
    assert "--rtsp-transport is for RTSP cameras: ignored for fake camera" in caplog.text


def test_lag_ignores_jitter_drift_and_rebasing_but_not_slow_decoding() -> None:
    lag = live.Lag()
    # 30 fps for an hour, arriving with 20 ms of jitter, the camera's clock 100 ppm slow.
    worst = max(
        lag.behind(i / 30 + (0.02 if i % 7 == 0 else 0.0), i / 30 * (1 - 1e-4))
        for i in range(30 * 3600)
    )
    assert worst < 0.05
    # The stream's time set back by a minute (FFmpeg re-basing on RTCP): a fresh start.
    assert lag.behind(3601.0, 3540.0) == 0
    # The last packet handed out a second late (FFmpeg at the end of a stream): one alone.
    lag = live.Lag()
    for i in range(30):
        lag.behind(i / 30, i / 30)
    lag.behind(2.0, 30 / 30)
    assert not lag.too_far
    # Decoding at 80% of real time: each frame read later than the one before by more.
    lag = live.Lag()
    too_far = []
    for i in range(120):
        lag.behind(i / 30 / 0.8, i / 30)
        too_far.append(lag.too_far)
    assert too_far[-1]  # four seconds of video in: a second behind
    assert not any(too_far[:30])


def test_skipping_ends_at_a_keyframe_that_is_not_far_behind() -> None:
    lag = live.Lag()
    for i in range(30):  # on time
        assert not lag.skip(i / 30, i / 30, keyframe=i == 0)
    # A second's stall, then the backlog read at once, 1 s to 0.5 s behind.
    backlog = [lag.skip(2.0 + i / 1000, 1.0 + i / 30, keyframe=i == 6) for i in range(15)]
    assert backlog[:2] == [False, False]  # three in a row before skipping
    assert all(backlog[2:])  # the backlog's own keyframe (0.8 s behind) too
    assert lag.skip(2.5, 2.4, keyframe=False)
    assert not lag.skip(2.5, 2.5, keyframe=True)  # a keyframe on time ends it
    assert lag.skipped == 14
    # Made-up times slower than the clock: after MAX_SKIP_SECONDS any keyframe ends it.
    lag = live.Lag()
    skips = [lag.skip(i / 10, i / 25, keyframe=True) for i in range(200)]
    assert any(skips) and not all(skips[-60:])
