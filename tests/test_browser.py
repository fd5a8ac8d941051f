"""The browser page in a real Chromium (Playwright) against a real in-process sender.

Chromium is the system's (/usr/bin/chromium, or $CHROMIUM), launched once for the module;
Playwright's own browser download is not used. Without Chromium or playwright these tests
are skipped, unless in CI (tests/ci.py): then they fail, saying what is missing.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import pytest
import pytest_asyncio

from common import stamp
from sender.audio import AudioSpec

from .ci import in_ci
from .helpers import InProcessSender, senders, wait_until

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
FRAME_TIMEOUT_MS = 30_000
SDPFRAG = "application/trickle-ice-sdpfrag"


def _missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright Python package is not installed (pip install -e '.[test]')"
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    return None


MISSING = _missing()
IN_CI = in_ci()

pytestmark = [pytest.mark.asyncio(loop_scope="module")]
if MISSING and not IN_CI:
    pytestmark.append(pytest.mark.skip(reason=MISSING))

if not MISSING:
    from playwright.async_api import Browser, Page, Request, Response, async_playwright

    from bench.browser_first_frame import launch_chromium, run_benchmark


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def browser() -> AsyncIterator[Browser]:
    if MISSING:
        pytest.fail(f"CI is set, so the browser tests must run, but {MISSING}", pytrace=False)
    async with async_playwright() as playwright:
        chromium = await launch_chromium(playwright, CHROMIUM)
        yield chromium
        await chromium.close()


@pytest_asyncio.fixture(loop_scope="module")
async def sender_factory() -> AsyncIterator[Callable[..., object]]:
    """As conftest's, but on the module's event loop, which the browser lives on."""
    async with senders() as start:
        yield start


@dataclass
class Viewer:
    """A fresh browser context (own sessionStorage) with one page, and what it did."""

    page: Page
    requests: list[Request] = field(default_factory=list)
    responses: list[Response] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    async def open(self, sender: InProcessSender) -> None:
        await self.page.goto(sender.url + "/")

    async def stats(self) -> dict:
        return await self.page.evaluate("({...window.viewerStats})")

    async def text(self, element_id: str) -> str:
        return (await self.page.text_content(f"#{element_id}") or "").strip()

    async def wait_frames(self, more_than: int) -> None:
        await self.page.wait_for_function(
            "n => window.viewerStats.frames > n", arg=more_than, timeout=FRAME_TIMEOUT_MS
        )

    async def wait_text(self, element_id: str, pattern: str) -> str:
        """Wait until the element's text matches the regular expression ``pattern``."""
        await self.page.wait_for_function(
            "([id, pattern]) => new RegExp(pattern).test(document.getElementById(id).textContent)",
            arg=[element_id, pattern],
            timeout=FRAME_TIMEOUT_MS,
        )
        return await self.text(element_id)

    def statuses(self, method: str) -> list[int]:
        return [r.status for r in self.responses if r.request.method == method]


@pytest_asyncio.fixture(loop_scope="module")
async def viewer(browser: Browser) -> AsyncIterator[Viewer]:
    context = await browser.new_context(viewport={"width": 800, "height": 700})
    page = await context.new_page()
    seen = Viewer(page)
    page.on("request", lambda request: seen.requests.append(request))
    page.on("response", lambda response: seen.responses.append(response))
    page.on("pageerror", lambda error: seen.page_errors.append(str(error)))
    yield seen
    await context.close()
    assert not seen.page_errors, f"uncaught errors in the page: {seen.page_errors}"


async def stop_and_wait_closed(viewer: Viewer, sender: InProcessSender) -> None:
    deletes = len(viewer.statuses("DELETE"))
    await viewer.page.click("#stop")
    assert await viewer.wait_text("state", "^closed$") == "closed"
    await wait_until(lambda: len(sender.sessions) == 0, what="the sender's session to end")
    await wait_until(lambda: len(viewer.statuses("DELETE")) > deletes, what="the DELETE answer")
    assert viewer.statuses("DELETE")[-1] == 200


def assert_not_blank(png: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None, "the screenshot is not a PNG"
    assert float(image.std()) > 20, f"blank picture: std-dev {image.std():.1f}"
    colours = np.unique(image.reshape(-1, 3), axis=0)
    assert len(colours) > 100, f"only {len(colours)} colours in the picture"
    return image


async def test_start_shows_live_video_stop_and_start_again(
    sender_factory, viewer: Viewer, tmp_path: Path
) -> None:
    sender = await sender_factory()
    await viewer.open(sender)
    assert await viewer.text("state") == "idle"

    await viewer.page.click("#start")
    await viewer.wait_frames(10)
    size = await viewer.page.evaluate(
        "() => { const v = document.getElementById('video'); return [v.videoWidth, v.videoHeight]; }"
    )
    assert size == [640, 480]
    assert await viewer.text("state") == "connected"
    first = await viewer.stats()
    assert (first["width"], first["height"]) == (640, 480)
    assert 0 < first["firstFrameMs"] < FRAME_TIMEOUT_MS
    await viewer.wait_frames(first["frames"] + 15)  # the count grows
    assert await viewer.wait_text("resolution", "^640x480$") == "640x480"
    fps = float(await viewer.wait_text("fps", r"^\d+\.\d$"))
    assert fps > 0
    latency = int(await viewer.wait_text("latency", r"^-?\d+$"))
    assert 0 <= latency < 2000, latency  # same machine, same clock
    stats = await viewer.stats()
    assert stats["latencyMs"] is not None and math.isfinite(stats["latencyMs"])

    png = await viewer.page.locator("#video").screenshot()
    (tmp_path / "video.png").write_bytes(png)
    image = assert_not_blank(png)
    height, width = image.shape[:2]
    assert width == 640 and abs(height - 480) <= 1  # the element may sit on a half pixel
    # What is on screen is the camera's picture: its stamp reads from the screenshot.
    shown = stamp.read(image[:, :, 1])
    assert shown.sequence > 0 and shown.capture_us > 0

    await stop_and_wait_closed(viewer, sender)
    assert await viewer.page.is_enabled("#start")

    await viewer.page.click("#start")  # again, without a reload
    await viewer.wait_frames(10)
    assert await viewer.text("state") == "connected"
    assert len(sender.sessions) == 1
    await stop_and_wait_closed(viewer, sender)
    assert sender.sessions.started == 2


async def test_token_is_asked_for_and_a_wrong_one_refused(sender_factory, viewer: Viewer) -> None:
    sender = await sender_factory(token="s3cret")
    await viewer.open(sender)
    assert await viewer.page.is_hidden("#token")

    await viewer.page.click("#start")
    await viewer.page.wait_for_selector("#token", state="visible", timeout=FRAME_TIMEOUT_MS)
    assert "needs a token" in await viewer.text("error")
    await wait_until(lambda: viewer.statuses("POST") == [401], what="one 401 to the POST")

    await viewer.page.fill("#token", "wrong")
    await viewer.page.click("#connect")
    assert "wrong token" in await viewer.wait_text("error", "wrong token")
    assert await viewer.page.is_visible("#token")  # try again
    await wait_until(lambda: viewer.statuses("POST") == [401, 401], what="a second 401")
    assert len(sender.sessions) == 0 and sender.sessions.started == 0
    assert await viewer.page.evaluate("sessionStorage.length") == 0

    await viewer.page.fill("#token", "s3cret")
    await viewer.page.click("#connect")
    await viewer.wait_frames(10)
    assert await viewer.page.is_hidden("#token")
    assert await viewer.text("error") == ""
    assert viewer.statuses("POST") == [401, 401, 201]
    await viewer.page.wait_for_function("window.viewerStats.patches >= 1", timeout=FRAME_TIMEOUT_MS)
    # the token stays in this tab's sessionStorage, never in localStorage
    kept = await viewer.page.evaluate("[sessionStorage.length, localStorage.length]")
    assert kept == [1, 0]
    await stop_and_wait_closed(viewer, sender)  # the DELETE carried the token too
    for request in viewer.requests:
        if request.method in ("PATCH", "DELETE"):
            assert request.headers.get("authorization") == "Bearer s3cret"


async def test_offer_is_posted_at_once_and_candidates_trickled(
    sender_factory, viewer: Viewer
) -> None:
    sender = await sender_factory()
    await viewer.open(sender)
    await viewer.page.click("#start")
    await viewer.wait_frames(5)
    await viewer.page.wait_for_function("window.viewerStats.patches >= 1", timeout=FRAME_TIMEOUT_MS)

    posts = [r for r in viewer.requests if r.method == "POST"]
    assert len(posts) == 1 and posts[0].url.endswith("/whep")
    assert posts[0].headers["content-type"] == "application/sdp"
    assert "a=candidate:" not in (posts[0].post_data or "")  # not waiting for gathering

    def patches() -> list[Request]:
        return [r for r in viewer.requests if r.method == "PATCH"]

    await wait_until(
        lambda: any("a=end-of-candidates" in (r.post_data or "") for r in patches()),
        what="a PATCH with a=end-of-candidates",
    )
    location = posts[0].url.rsplit("/whep", 1)[0] + "/whep/sessions/"
    bodies = []
    for request in patches():
        assert request.url.startswith(location)
        assert request.headers["content-type"] == SDPFRAG
        bodies.append(request.post_data or "")
    text = "".join(bodies)
    assert re.search(r"^a=ice-ufrag:\S+\r$", text, re.MULTILINE)
    assert re.search(r"^a=ice-pwd:\S+\r$", text, re.MULTILINE)
    assert "\r\nm=video " in text and "\r\na=mid:0\r\n" in text
    assert "a=candidate:" in text
    await wait_until(
        lambda: viewer.statuses("PATCH") and len(viewer.statuses("PATCH")) == len(bodies),
        what="the PATCH answers",
    )
    assert set(viewer.statuses("PATCH")) == {204}
    assert (await viewer.stats())["patches"] == len(bodies)
    await stop_and_wait_closed(viewer, sender)


async def test_refusal_is_shown_and_start_works_again(sender_factory, viewer: Viewer) -> None:
    sender = await sender_factory(max_viewers=0)  # always full: 503
    await viewer.open(sender)
    await viewer.page.click("#start")
    error = await viewer.wait_text("error", "503")
    assert "viewer slots" in error
    assert await viewer.text("state") == "closed"
    assert await viewer.page.is_enabled("#start") and await viewer.page.is_disabled("#stop")
    assert len(sender.sessions) == 0


async def test_the_camera_picked_is_the_one_shown(sender_factory, viewer: Viewer) -> None:
    """Two cameras: the page lists them, watches the one picked (remembered in the URL),
    and switching while running moves the viewer to the other camera."""
    from sender.camera import CameraConfig
    from sender.sources import SourceSpec

    sender = await sender_factory(
        cameras=(CameraConfig("a", SourceSpec("testsrc")), CameraConfig("b", SourceSpec("scene")))
    )
    a, b = sender.cameras.get("a"), sender.cameras.get("b")
    assert a is not None and b is not None
    await viewer.page.goto(sender.url + "/?camera=b")
    assert await viewer.page.is_visible("#camera")
    assert await viewer.page.input_value("#camera") == "b"
    await viewer.page.click("#start")
    await viewer.wait_frames(10)
    assert len(b.sessions) == 1 and len(a.sessions) == 0 and not a.source.is_open
    posted = [r.url for r in viewer.requests if r.method == "POST"]
    assert posted[-1].endswith("/whep/b"), posted
    shown = stamp.read(assert_not_blank(await viewer.page.locator("#video").screenshot())[:, :, 1])
    assert shown.sequence > 0  # a camera's stamped picture, from camera b's own count

    await viewer.page.select_option("#camera", "a")
    assert viewer.page.url.endswith("?camera=a")
    await wait_until(lambda: len(a.sessions) == 1 and len(b.sessions) == 0, what="the switch")
    await viewer.wait_text("state", "^connected$")
    frames = (await viewer.stats())["frames"]
    await viewer.wait_frames(frames + 10)
    await wait_until(lambda: not b.source.is_open, what="camera b to close")
    await viewer.page.click("#stop")
    await wait_until(lambda: len(a.sessions) == 0, what="the session to end")


async def test_one_camera_has_no_picker(sender_factory, viewer: Viewer) -> None:
    sender = await sender_factory()
    await viewer.open(sender)
    await viewer.page.wait_for_function("document.getElementById('camera').options.length > 0")
    assert not await viewer.page.is_visible("#camera")
    await viewer.page.click("#start")
    await viewer.wait_frames(5)
    posted = [r.url for r in viewer.requests if r.method == "POST"]
    assert posted[-1].endswith("/whep"), posted
    await stop_and_wait_closed(viewer, sender)


# Through WebAudio, the loudest RMS of the video element's received audio (an AnalyserNode
# on a MediaStreamSource of its stream), sampled until it passes ``threshold`` or
# ``within`` ms have gone by.
AUDIO_LEVEL_JS = """async ([threshold, within]) => {
  const stream = document.getElementById("video").srcObject;
  const context = new AudioContext();
  await context.resume();
  const analyser = context.createAnalyser();
  analyser.fftSize = 2048;
  context.createMediaStreamSource(stream).connect(analyser);
  const samples = new Float32Array(analyser.fftSize);
  const deadline = performance.now() + within;
  let loudest = 0;
  while (loudest <= threshold && performance.now() < deadline) {
    await new Promise((resolve) => requestAnimationFrame(resolve));
    analyser.getFloatTimeDomainData(samples);
    const rms = Math.sqrt(samples.reduce((sum, x) => sum + x * x, 0) / samples.length);
    loudest = Math.max(loudest, rms);
  }
  await context.close();
  return loudest;
}"""
AUDIO_THRESHOLD = 0.02


async def test_the_page_plays_the_senders_audio(sender_factory, viewer: Viewer) -> None:
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    await viewer.open(sender)
    assert not await viewer.page.is_visible("#unmute")
    await viewer.page.click("#start")
    await viewer.wait_frames(10)
    posted = next(r for r in viewer.requests if r.method == "POST").post_data or ""
    assert re.search(r"^m=audio .*\r?\n(?:.*\r?\n)*?a=recvonly", posted, re.M), posted
    await viewer.page.wait_for_function("window.viewerStats.audio", timeout=FRAME_TIMEOUT_MS)
    video = "document.getElementById('video')"
    # It autoplays muted (browsers allow only that), the button offers to unmute.
    assert await viewer.page.evaluate(f"{video}.muted && !{video}.paused")
    assert await viewer.text("unmute") == "Unmute"
    assert await viewer.page.evaluate(f"{video}.srcObject.getAudioTracks().length") == 1
    await viewer.page.click("#unmute")  # also the user gesture WebAudio needs to run
    assert not await viewer.page.evaluate(f"{video}.muted")
    assert await viewer.text("unmute") == "Mute"
    level = await viewer.page.evaluate(AUDIO_LEVEL_JS, [AUDIO_THRESHOLD, FRAME_TIMEOUT_MS])
    assert level > AUDIO_THRESHOLD, f"no sound in the received audio: RMS {level:.4f}"
    assert sender.sessions.audio is not None and sender.sessions.audio.listeners == 1
    await stop_and_wait_closed(viewer, sender)
    assert not await viewer.page.is_visible("#unmute")


async def test_without_audio_the_page_shows_video_only(sender_factory, viewer: Viewer) -> None:
    sender = await sender_factory()  # --audio none
    await viewer.open(sender)
    await viewer.page.click("#start")
    await viewer.wait_frames(10)
    assert await viewer.text("state") == "connected"
    assert not (await viewer.stats())["audio"]
    assert not await viewer.page.is_visible("#unmute")
    tracks = await viewer.page.evaluate(
        "document.getElementById('video').srcObject.getTracks().map((t) => t.kind)"
    )
    assert tracks == ["video"]
    await stop_and_wait_closed(viewer, sender)


async def test_first_frame_benchmark_runs(browser: Browser) -> None:
    results = await run_benchmark(1, browser=browser)
    summary = results.to_dict()
    for flow in ("whep_trickle", "vanilla"):
        runs = summary[flow]["runs_ms"]
        assert len(runs) == 1 and math.isfinite(runs[0]) and runs[0] > 0
    assert math.isfinite(results.ratio)
    assert "p50" in results.table()
