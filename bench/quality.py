"""Picture quality: decoded frames scored against the fake camera's own frames.

    python -m bench.quality [--sizes 640x480,1280x720] [--codecs vp8,h264] [--seconds 5]
                            [--json FILE] [--quick]

The camera-like fake camera (``--source scene``) draws frame n from n alone, so the source
of every decoded frame is regenerated from its stamp's sequence number
(``sender.scene.Scene.render``) and compared on luma, below the stamp's rows (its time
cells differ): PSNR, and SSIM (Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, the
usual constants; with OpenCV's filters, no further dependency). Our sender and receiver
and stock aiortc (``bench.stock_sender --source scene``) run one after the other at the
same size and the same fixed bitrate; each row gives PSNR and SSIM next to the
capture-to-decoded latency and the bitrate actually received.

``measure(url, impl, width, height, seconds)`` scores a running sender's video: the
function the main benchmark (``bench.run``) calls.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import av
import cv2
import numpy as np
from aiortc.codecs import h264 as aiortc_h264
from aiortc.codecs import vpx as aiortc_vpx

from bench.senders import SenderProcess
from bench.viewers import Watched, percentile, watch
from common import stamp
from common.cli import positive, sizes
from receiver.stats import read_stamp
from sender import scene

logger = logging.getLogger(__name__)

IMPLS = ("stock", "project")
BITS_PER_PIXEL = 0.05  # per frame at 30 fps: 640x480 461 kbit/s, 1280x720 1.38 Mbit/s
# Stock aiortc's encoders clamp their bitrate to these; the default stays within them.
BITRATE_LIMITS = {
    "vp8": (aiortc_vpx.MIN_BITRATE, aiortc_vpx.MAX_BITRATE),
    "h264": (aiortc_h264.MIN_BITRATE, aiortc_h264.MAX_BITRATE),
}
KEEP_EVERY = 3  # frames: the luma of every third decoded frame is kept for scoring...
KEEP_AT_MOST = 50  # ...up to this many (1080p: 100 MB)
STARTUP_TIMEOUT = 60.0
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def default_bitrate(width: int, height: int, codec: str) -> int:
    low, high = BITRATE_LIMITS[codec]
    return int(min(max(BITS_PER_PIXEL * width * height * 30, low), high))


def psnr(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Peak signal-to-noise ratio of two uint8 planes, in dB (inf when identical)."""
    mse = cv2.norm(reference, decoded, cv2.NORM_L2SQR) / reference.size
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def ssim(reference: np.ndarray, decoded: np.ndarray) -> float:
    """Mean structural similarity of two uint8 planes (1 when identical), over the
    positions where the whole 11x11 window fits, as the reference implementation."""
    x, y = reference.astype(np.float32), decoded.astype(np.float32)

    def blur(image: np.ndarray) -> np.ndarray:
        return cv2.GaussianBlur(image, (11, 11), 1.5)[5:-5, 5:-5]

    mx, my = blur(x), blur(y)
    vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
    index = ((2 * mx * my + SSIM_C1) * (2 * cxy + SSIM_C2)) / (
        (mx * mx + my * my + SSIM_C1) * (vx + vy + SSIM_C2)
    )
    return float(index.mean())


@dataclass(frozen=True)
class Score:
    sequence: int
    psnr: float
    ssim: float


@dataclass
class Capture:
    """What a viewer keeps while it watches: each stamped frame's latency, and the luma
    of every ``KEEP_EVERY``-th full-size frame by its sequence number, to score after the
    viewing (scoring as frames come would take the CPU the sender and decoder need)."""

    width: int
    height: int
    latencies_ms: list[float] = field(default_factory=list)
    luma: dict[int, np.ndarray] = field(default_factory=dict)
    decoded: int = 0
    other_size: int = 0  # frames of another size (a reduced tier), not scored
    unstamped: int = 0

    def add(self, frame: av.VideoFrame) -> None:
        now = stamp.now_us()  # as it arrived: reading the stamp is the measurement's
        self.decoded += 1
        if (frame.width, frame.height) != (self.width, self.height):
            self.other_size += 1
            return
        found = read_stamp(frame)
        if found is None:
            self.unstamped += 1
            return
        self.latencies_ms.append(stamp.age_us(found, now) / 1000)
        if self.decoded % KEEP_EVERY == 0 and len(self.luma) < KEEP_AT_MOST:
            # The Y plane as decoded (a conversion to "gray" would rescale its range).
            self.luma[found.sequence] = frame.to_ndarray()[: self.height]


def score(picture: scene.Scene, capture: Capture, offset: int = 0) -> list[Score]:
    """Each kept frame against the source frame of its sequence number (plus ``offset``:
    a wrong match, to show what a mismatch scores)."""
    top = 2 * stamp.cell_size(picture.width)  # the stamp's rows
    scores = []
    for sequence, luma in sorted(capture.luma.items()):
        source, _, _ = scene.planes(picture.render(sequence + offset), *luma.shape[::-1])
        scores.append(
            Score(sequence, psnr(source[top:], luma[top:]), ssim(source[top:], luma[top:]))
        )
    return scores


def summarize(scores: list[Score]) -> dict:
    """Mean and worst (5th percentile) of each measure; None without scored frames."""
    if not scores:
        return {"scored_frames": 0, "psnr_db": None, "psnr_p5_db": None, "ssim": None}
    values = [s.psnr for s in scores]
    return {
        "scored_frames": len(scores),
        "psnr_db": round(float(np.mean(values)), 2),
        "psnr_p5_db": round(percentile(values, 5), 2),
        "ssim": round(float(np.mean([s.ssim for s in scores])), 4),
    }


async def capture(
    url: str, impl: str, width: int, height: int, seconds: float
) -> tuple[Capture, Watched]:
    """Watch ``url`` (``project`` or ``stock``) for ``seconds``, keeping frames to score."""
    kept = Capture(width, height)
    watched = await watch(url, impl, seconds, kept.add)
    return kept, watched


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def report(kept: Capture, watched: Watched) -> dict:
    """The kept frames scored, next to the viewing's latency, first frame and bitrate."""
    result = summarize(score(scene.shared(kept.width, kept.height), kept))
    result.update(
        {
            "decoded_frames": kept.decoded,
            "other_size_frames": kept.other_size,
            "unstamped_frames": kept.unstamped,
            "latency_p50_ms": _rounded(percentile(kept.latencies_ms, 50)),
            "latency_p95_ms": _rounded(percentile(kept.latencies_ms, 95)),
            "first_frame_ms": round(watched.first_frame * 1000, 1),
            "received_kbps": round(watched.bitrate / 1000, 1),
        }
    )
    return result


async def measure(url: str, impl: str, width: int, height: int, seconds: float) -> dict:
    """Quality, latency and bitrate of a running sender's video of the scene source."""
    kept, watched = await capture(url, impl, width, height, seconds)
    return await asyncio.to_thread(report, kept, watched)


def start(impl: str, size: str, codec: str, bitrate: int, logs: Path) -> SenderProcess:
    """Our sender or the stock one, on the scene source at a fixed bitrate."""
    args = ["--source", "scene", "--size", size, "--codec", codec, "--bitrate", str(bitrate)]
    log = logs / f"quality-{impl}-{size}-{codec}.log"
    module = "sender" if impl == "project" else "bench.stock_sender"
    return SenderProcess(args, log, module=module, startup_timeout=STARTUP_TIMEOUT)


def run(
    sizes: list[tuple[int, int]],
    codecs: list[str],
    seconds: float,
    bitrate: int | None = None,
) -> list[dict]:
    """Every size and codec, stock then project; a result per combination."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="quality-") as logs:
        for width, height in sizes:
            for codec in codecs:
                bps = bitrate or default_bitrate(width, height, codec)
                for impl in IMPLS:
                    sender = start(impl, f"{width}x{height}", codec, bps, Path(logs))
                    try:
                        result = asyncio.run(measure(sender.url, impl, width, height, seconds))
                    finally:
                        sender.stop()
                    row = {"size": f"{width}x{height}", "codec": codec, "impl": impl}
                    row |= {"bitrate_kbps": bps // 1000, **result}
                    print(f"  {json.dumps(row)}", file=sys.stderr)
                    rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| size | codec | impl | bitrate kbit/s set / received | PSNR dB mean / p5 | SSIM |"
        " latency p50 / p95 ms | frames decoded / scored |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['size']} | {r['codec']} | {r['impl']} "
            f"| {r['bitrate_kbps']} / {r['received_kbps']:.0f} "
            f"| {r['psnr_db']} / {r['psnr_p5_db']} | {r['ssim']} "
            f"| {r['latency_p50_ms']} / {r['latency_p95_ms']} "
            f"| {r['decoded_frames']} / {r['scored_frames']} |"
        )
    return "\n".join(lines)


def codecs(text: str) -> list[str]:
    """Parse ``vp8,h264`` for argparse."""
    names = text.split(",")
    if not set(names) <= set(BITRATE_LIMITS):
        raise argparse.ArgumentTypeError(f"codecs are vp8 and h264, got {text!r}")
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[(640, 480), (1280, 720)],
        help="comma-separated WIDTHxHEIGHT (640x480,1280x720)",
    )
    parser.add_argument("--codecs", type=codecs, default=["vp8", "h264"], help="vp8,h264")
    parser.add_argument("--seconds", type=float, default=5.0, help="viewing time per run (5)")
    parser.add_argument(
        "--bitrate", type=positive(int), metavar="BPS", help="fixed bitrate (default: per size)"
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="640x480 VP8 for a second")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.codecs, args.seconds = [(640, 480)], ["vp8"], 1.0
    rows = run(args.sizes, args.codecs, args.seconds, args.bitrate)
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
