"""Time from pressing Start to the first decoded frame in Chromium, on loopback.

Compares the sender's page (WHEP, offer posted at once, candidates trickled by PATCH)
with the old page's flow (vanilla ICE: wait for ICE gathering to complete, then POST the
JSON ``/offer``), both measured up to the first ``requestVideoFrameCallback`` of the
video. Every run is a cold start: before it, the sender has no viewer and has closed its
(fake) camera.

    python -m bench.browser_first_frame [--runs 10] [--json results.json]

Needs the ``playwright`` Python package and a Chromium (``/usr/bin/chromium``); Playwright's
own browser download is not used. $CHROMIUM overrides the binary.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make the project importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from playwright.async_api import Browser, Page, Playwright, async_playwright

from bench.senders import InProcessSender, start_sender

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = (
    "--no-sandbox",  # we run as root
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
)
FIRST_FRAME_TIMEOUT_MS = 30_000
IDLE_TIMEOUT_S = 30.0
TARGET_P50_MS = 500.0

# The old page's flow, evaluated in the page. Returns the ms from its start to the first
# frame the video presents; leaves the peer connection in window.__vanilla for stopVanilla.
VANILLA_START = """
async (timeoutMs) => {
  const t0 = performance.now();
  const pc = new RTCPeerConnection({ iceServers: [] });
  const video = document.createElement("video");
  video.muted = true;
  video.autoplay = true;
  video.playsInline = true;
  document.body.appendChild(video);
  window.__vanilla = { pc, video };
  const firstFrame = new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("no frame in time")), timeoutMs);
    pc.addEventListener("track", (event) => {
      video.srcObject = event.streams[0] || new MediaStream([event.track]);
      video.requestVideoFrameCallback((now, meta) => {
        clearTimeout(timer);
        resolve(meta.presentationTime || now);
      });
    });
  });
  pc.addTransceiver("video", { direction: "recvonly" });
  await pc.setLocalDescription(await pc.createOffer());
  await new Promise((resolve) => {  // the old page: complete, or 2 s with what we have
    if (pc.iceGatheringState === "complete") return resolve();
    const timer = setTimeout(resolve, 2000);
    pc.addEventListener("icegatheringstatechange", () => {
      if (pc.iceGatheringState === "complete") { clearTimeout(timer); resolve(); }
    });
  });
  const response = await fetch("offer", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  const answeredMs = performance.now() - t0;
  await pc.setRemoteDescription(body);
  return { firstFrameMs: (await firstFrame) - t0, answeredMs };
}
"""

VANILLA_STOP = """
() => {
  const v = window.__vanilla;
  if (!v) return;
  v.pc.close();
  v.video.srcObject = null;
  v.video.remove();
  window.__vanilla = null;
}
"""


def _summary(values: list[float]) -> dict[str, object]:
    if not values:
        return {"runs_ms": [], "p50_ms": math.nan, "min_ms": math.nan, "max_ms": math.nan}
    return {
        "runs_ms": [round(x, 1) for x in values],
        "p50_ms": round(statistics.median(values), 1),
        "min_ms": round(min(values), 1),
        "max_ms": round(max(values), 1),
    }


@dataclass
class Series:
    """One flow's runs: Start to first frame, and Start to the SDP answer."""

    name: str
    runs_ms: list[float] = field(default_factory=list)
    answered_ms: list[float] = field(default_factory=list)

    @property
    def p50(self) -> float:
        return statistics.median(self.runs_ms) if self.runs_ms else math.nan

    def summary(self) -> dict[str, object]:
        return {**_summary(self.runs_ms), "answered": _summary(self.answered_ms)}


@dataclass
class Results:
    runs: int
    whep_trickle: Series
    vanilla: Series
    chromium: str = ""

    @property
    def ratio(self) -> float:
        """How many times longer the vanilla flow takes (p50 / p50)."""
        return self.vanilla.p50 / self.whep_trickle.p50 if self.whep_trickle.p50 else math.nan

    def to_dict(self) -> dict[str, object]:
        return {
            "runs": self.runs,
            "chromium": self.chromium,
            "whep_trickle": self.whep_trickle.summary(),
            "vanilla": self.vanilla.summary(),
            "ratio_vanilla_to_whep_p50": round(self.ratio, 2),
            "target_p50_ms": TARGET_P50_MS,
        }

    def table(self) -> str:
        head = ("flow", "p50 ms", "min ms", "max ms", "answer p50 ms")
        rows = [head]
        for series in (self.whep_trickle, self.vanilla):
            s = series.summary()
            answered = s["answered"]["p50_ms"]
            cells = [s["p50_ms"], s["min_ms"], s["max_ms"], answered]
            rows.append((series.name, *(f"{x:.1f}" for x in cells)))
        widths = [max(len(row[i]) for row in rows) for i in range(len(head))]

        def line(row: tuple[str, ...]) -> str:
            return "  ".join(
                cell.ljust(w) if i == 0 else cell.rjust(w)
                for i, (cell, w) in enumerate(zip(row, widths, strict=True))
            )

        lines = [line(rows[0]), "  ".join("-" * w for w in widths), *map(line, rows[1:])]
        lines.append(f"ratio vanilla/WHEP p50: {self.ratio:.2f}x ({self.runs} cold starts each)")
        verdict = "met" if self.whep_trickle.p50 < TARGET_P50_MS else "NOT met"
        lines.append(f"target, page p50 < {TARGET_P50_MS:.0f} ms: {verdict}")
        return "\n".join(lines)


async def launch_chromium(playwright: Playwright, executable: str = CHROMIUM) -> Browser:
    """Chromium from the system, headless, with a fresh temporary profile."""
    return await playwright.chromium.launch(
        executable_path=executable, headless=True, args=list(CHROMIUM_ARGS)
    )


async def wait_idle(sender: InProcessSender) -> None:
    """No viewer left and the camera closed: the next run starts cold."""
    deadline = time.monotonic() + IDLE_TIMEOUT_S
    while len(sender.sessions) or sender.source.is_open:
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"the sender did not go idle in {IDLE_TIMEOUT_S} s "
                f"(sessions: {len(sender.sessions)}, camera open: {sender.source.is_open})"
            )
        await asyncio.sleep(0.02)


async def whep_page_run(page: Page, sender: InProcessSender, series: Series) -> None:
    """Click the page's Start, wait for its first frame, Stop."""
    await page.click("#start")
    await page.wait_for_function(
        "window.viewerStats.firstFrameMs !== null", timeout=FIRST_FRAME_TIMEOUT_MS
    )
    stats = await page.evaluate("window.viewerStats")
    await page.click("#stop")
    await wait_idle(sender)
    series.runs_ms.append(float(stats["firstFrameMs"]))
    series.answered_ms.append(float(stats["answeredMs"]))


async def vanilla_run(page: Page, sender: InProcessSender, series: Series) -> None:
    """The old flow, evaluated in the page."""
    try:
        result = await page.evaluate(VANILLA_START, FIRST_FRAME_TIMEOUT_MS)
    finally:
        await page.evaluate(VANILLA_STOP)
    await wait_idle(sender)
    series.runs_ms.append(float(result["firstFrameMs"]))
    series.answered_ms.append(float(result["answeredMs"]))


async def measure(browser: Browser, sender: InProcessSender, runs: int) -> Results:
    results = Results(runs, Series("WHEP + trickle (page)"), Series("vanilla ICE + /offer"))
    results.chromium = browser.version
    context = await browser.new_context()
    try:
        page = await context.new_page()
        await page.goto(sender.url + "/")
        await wait_idle(sender)
        for _ in range(runs):  # interleaved, so drifts in machine load hit both alike
            await whep_page_run(page, sender, results.whep_trickle)
            await vanilla_run(page, sender, results.vanilla)
    finally:
        await context.close()
    return results


async def run_benchmark(
    runs: int = 10, *, browser: Browser | None = None, chromium: str = CHROMIUM
) -> Results:
    """Start a sender on the fake camera (and Chromium unless given one), measure both flows."""
    sender = await start_sender()
    try:
        if browser is not None:
            return await measure(browser, sender, runs)
        async with async_playwright() as playwright:
            own = await launch_chromium(playwright, chromium)
            try:
                return await measure(own, sender, runs)
            finally:
                await own.close()
    finally:
        await sender.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10, help="runs per flow (10)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write the results here")
    parser.add_argument("--chromium", default=CHROMIUM, help=f"Chromium binary ({CHROMIUM})")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    results = asyncio.run(run_benchmark(args.runs, chromium=args.chromium))
    print(results.table())
    if args.json:
        args.json.write_text(json.dumps(results.to_dict(), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
