"""Where a frame's milliseconds go, stage by stage, on 127.0.0.1.

    python -m bench.breakdown [--sizes 640x480,1280x720] [--codec vp8] [--source testsrc|scene]
        [--seconds 10] [--json FILE]

For each size: our sender on the fake camera and one ``webcam-receiver`` (both as
processes, as a user runs them); the sender's stages come from its ``/metrics``
histograms (p50/p95 interpolated within the buckets, as Prometheus's
``histogram_quantile`` does), the receiver's from its ``--stats-json`` ``breakdown_ms``.
"""

from __future__ import annotations

import argparse
import bisect
import json
import shlex
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Sequence
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.senders import ROOT, SenderDidNotStart, SenderProcess, child_env

SENDER_STAGES = ("capture_to_encoded", "encoding", "encoded_to_sent")
RECEIVER_STAGES = ("capture_to_receive", "receive_to_complete", "complete_to_decoded", "decoding")


def histogram_quantile(q: float, buckets: list[tuple[float, float]]) -> float | None:
    """The q-quantile (0..1) of cumulative (upper bound, count) buckets, linear within the
    bucket it falls in (Prometheus's rule); None without observations."""
    total = buckets[-1][1] if buckets else 0
    if not total:
        return None
    rank = q * total
    lower, below = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if bound == float("inf"):
                return lower
            return lower + (bound - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = bound, count
    return lower


def sum_quantile(
    q: float, buckets: list[tuple[float, float]], samples: list[float]
) -> float | None:
    """The q-quantile (0..1) of X + Y, X from cumulative (upper bound, count) buckets (linear
    within each, as ``histogram_quantile``), Y from ``samples``, the two independent: a
    frame's encode plus its decode, from the sender's histogram and the receiver's decode
    times. Times skewed to the right (an encoder's: median 2.38 ms, mean 2.61) put the
    median of each frame's own sum above the sum of the two medians; None when either
    is empty."""
    total = buckets[-1][1] if buckets else 0
    if not total or not samples:
        return None
    points = [(0.0, 0.0)]  # the CDF of X: (value, fraction at or below it), piecewise linear
    for bound, count in buckets:
        if bound != float("inf"):
            points.append((bound, count / total))
    values = [v for v, _ in points]

    def below(x: float) -> float:  # P(X <= x)
        if x <= 0:
            return 0.0
        i = bisect.bisect_left(values, x)
        if i >= len(points):
            return 1.0
        (x0, f0), (x1, f1) = points[i - 1], points[i]
        return f0 + (f1 - f0) * (x - x0) / (x1 - x0)

    def cdf(t: float) -> float:  # P(X + Y <= t)
        return sum(below(t - y) for y in samples) / len(samples)

    low, high = min(samples), values[-1] + max(samples)
    for _ in range(50):  # bisection to well under a microsecond
        middle = (low + high) / 2
        low, high = (middle, high) if cdf(middle) < q else (low, middle)
    return high


Histograms = dict[tuple[str, str, str], list[tuple[float, float]]]


def sender_histograms(url: str) -> Histograms:
    """The sender's stage histograms from its ``/metrics``: (stage, codec, tier) ->
    cumulative (upper bound, count) buckets."""
    with urllib.request.urlopen(url + "/metrics", timeout=10) as response:
        text = response.read().decode()
    series: Histograms = {}
    for family in text_string_to_metric_families(text):
        stage = family.name.removeprefix("webcam_").removesuffix("_seconds")
        if stage not in SENDER_STAGES:
            continue
        for sample in family.samples:
            if sample.name.endswith("_bucket"):
                key = (stage, sample.labels["codec"], sample.labels["tier"])
                series.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
    return series


def since(before: Histograms, after: Histograms) -> Histograms:
    """What was observed between two readings of the same sender."""
    return {
        key: [
            (bound, count - earlier)
            for (bound, count), (_, earlier) in zip(
                buckets, before.get(key, [(b, 0.0) for b, _ in buckets]), strict=True
            )
        ]
        for key, buckets in after.items()
    }


def busiest_encodes(series: Histograms) -> list[tuple[float, float]]:
    """The encoder's histogram in the tier that encoded the most frames ([] for none)."""
    encodes = [b for key, b in series.items() if key[0] == "encoding" and b and b[-1][1]]
    return max(encodes, key=lambda buckets: buckets[-1][1], default=[])


def encoding_p50_ms(series: Histograms) -> float | None:
    """The encoder's median time per frame (ms) in the tier that encoded the most frames."""
    p50 = histogram_quantile(0.5, busiest_encodes(series))
    return None if p50 is None else p50 * 1000


def codec_p50_ms(series: Histograms, decodes_ms: list[float]) -> float | None:
    """The median of one frame's encode + decode (ms): the busiest tier's encodes in
    ``series``, the receiver's ``decodes_ms`` (``sum_quantile``)."""
    encodes = [(bound * 1000, count) for bound, count in busiest_encodes(series)]
    return sum_quantile(0.5, encodes, decodes_ms)


def sender_stages(url: str, codec: str) -> dict[str, object]:
    """p50/p95 (ms) of the sender's stage histograms, for the tier of ``codec`` that
    encoded the most frames (a lone viewer above 640x480 starts on the reduced one)."""
    series = {
        (stage, tier): b for (stage, c, tier), b in sender_histograms(url).items() if c == codec
    }
    counts = {tier: b[-1][1] for (stage, tier), b in series.items() if stage == SENDER_STAGES[0]}
    if not counts:
        return {}
    tier = max(counts, key=lambda name: counts[name])
    result: dict[str, object] = {"sender_tier": tier}
    for stage in SENDER_STAGES:
        buckets = series.get((stage, tier), [])
        result[stage] = {
            f"p{q}": None if (v := histogram_quantile(q / 100, buckets)) is None else v * 1000
            for q in (50, 95)
        }
    return result


def measure(
    size: str,
    codec: str,
    seconds: float,
    bitrate: int | None,
    logs: Path,
    sender_options: Sequence[str] = (),
    receiver_options: Sequence[str] = (),
    source: str = "testsrc",
) -> dict:
    fixed = ["--bitrate", str(bitrate)] if bitrate else []
    sender = SenderProcess(
        ["--source", source, "--size", size, "--codec", codec, *fixed, *sender_options],
        logs / f"sender-{size}.log",
    )
    stats = logs / f"receiver-{size}.json"
    try:
        subprocess.run(
            [sys.executable, "-m", "receiver", sender.url, "--quiet",
             "--duration", str(seconds), "--stats-json", str(stats), *receiver_options],
            check=True, cwd=ROOT, env=child_env(), timeout=seconds + 120,
        )  # fmt: skip
        sending = sender_stages(sender.url, codec)
    finally:
        sender.stop()
    summary = json.loads(stats.read_text())
    receiving = summary["breakdown_ms"] or {}
    return {
        "size": size,
        "codec": codec,
        "frames": summary["frames"],
        "width": summary["width"],
        "height": summary["height"],
        **sending,
        **receiving,
        "latency_ms": summary["latency_ms"],
    }


def table(results: list[dict]) -> str:
    stages = (*SENDER_STAGES, *RECEIVER_STAGES, "capture_to_decoded")
    rows = [
        "| size (received) | codec (sender tier) | "
        + " | ".join(s.replace("_", " ") for s in stages)
        + " |",
        "|---|---|" + "---|" * len(stages),
    ]
    for r in results:
        cells = []
        for stage in stages:
            v = r.get(stage) or {}
            p50, p95 = v.get("p50"), v.get("p95")
            cells.append("-" if p50 is None or p95 is None else f"{p50:.1f} / {p95:.1f}")
        size = f"{r['size']} ({r['width']}x{r['height']})"
        codec = f"{r['codec']} ({r.get('sender_tier', '-')})"
        rows.append(f"| {size} | {codec} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sizes", default="640x480,1280x720")
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument(
        "--source",
        choices=["testsrc", "scene"],
        default="testsrc",
        help="the fake camera: testsrc (default) or the camera-like scene",
    )
    parser.add_argument(
        "--bitrate", type=int, help="fixed bitrate (one tier: 1280x720 at full size from the start)"
    )
    parser.add_argument(
        "--sender-options",
        default="",
        metavar="ARGS",
        help='more webcam-sender options, one string (e.g. "--loop-encode-ms 0")',
    )
    parser.add_argument(
        "--receiver-options",
        default="",
        metavar="ARGS",
        help='more webcam-receiver options, one string (e.g. "--loop-decode-ms 0")',
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-breakdown-") as logs:
        try:
            results = [
                measure(
                    size,
                    args.codec,
                    args.seconds,
                    args.bitrate,
                    Path(logs),
                    shlex.split(args.sender_options),
                    shlex.split(args.receiver_options),
                    args.source,
                )
                for size in args.sizes.split(",")
            ]
        except SenderDidNotStart as exc:  # bad --sender-options: the sender's own message
            print(f"bench.breakdown: {str(exc).strip().splitlines()[-1]}", file=sys.stderr)
            return 2
    print("p50 / p95 ms per stage\n" + table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
