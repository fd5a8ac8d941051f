"""Side-by-side benchmark: our sender and receiver against the stock aiortc pattern.

    python -m bench.run [--json FILE] [--quick]

For each size and codec it measures, for both implementations in the same run:
capture-to-decoded latency (frame stamp), time to the first decoded frame, the
sender's CPU per wall second with 1, 4 and 8 viewers (viewers in another process,
counting complete frames without decoding) and the frames each viewer got; then the
sender's resident memory over repeated viewer connect/disconnect cycles.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from bench.senders import ROOT, SenderProcess, child_env

IMPLS = ("stock", "project")
STARTUP_TIMEOUT = 60.0  # two senders and eight viewers may share two busy cores


@dataclass
class Plan:
    sizes: tuple[str, ...] = ("640x480", "1280x720")
    codecs: tuple[str, ...] = ("vp8", "h264")
    viewers: tuple[int, ...] = (1, 4, 8)
    seconds: float = 5.0
    warmup: float = 2.0
    cycles: int = 200
    cycle_size: str = "640x480"
    results: dict = field(default_factory=dict)


def start(impl: str, size: str, codec: str, logs: Path) -> SenderProcess:
    """One sender process (ours or the stock one) on a free port, its stderr in ``logs``."""
    args = ["--size", size, "--codec", codec]
    log = logs / f"{impl}-{size}-{codec}.log"
    if impl == "project":
        return SenderProcess(
            ["--source", "testsrc", "--max-viewers", "64", *args],
            log,
            startup_timeout=STARTUP_TIMEOUT,
        )
    return SenderProcess(args, log, module="bench.stock_sender", startup_timeout=STARTUP_TIMEOUT)


def viewers(sender: SenderProcess, *args: str) -> dict:
    """Run bench.viewers against ``sender`` in its own process; its JSON result."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.viewers", *args, "--pid", str(sender.proc.pid)],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"viewers {args[0]} failed: {result.stderr.strip()[-500:]}\n"
            f"sender: {sender.stderr().strip()[-500:]}"
        )
    return json.loads(result.stdout.strip().splitlines()[-1])


def load(sender: SenderProcess, count: int, plan: Plan) -> dict:
    return viewers(
        sender,
        "load",
        sender.url,
        "--viewers",
        str(count),
        "--seconds",
        str(plan.seconds),
        "--warmup",
        str(plan.warmup),
    )


def measure(plan: Plan, logs: Path) -> dict:
    results: dict = {"machine": machine(), "cases": [], "cycles": {}}
    for size in plan.sizes:
        for codec in plan.codecs:
            case: dict = {"size": size, "codec": codec}
            for impl in IMPLS:
                sender = start(impl, size, codec, logs)
                try:
                    case[impl] = {
                        "latency": viewers(
                            sender,
                            "latency",
                            sender.url,
                            "--impl",
                            impl,
                            "--seconds",
                            str(plan.seconds),
                        ),
                        "load": [load(sender, n, plan) for n in plan.viewers],
                    }
                finally:
                    sender.stop()
                print(f"  {size} {codec} {impl}: {json.dumps(case[impl])}", file=sys.stderr)
            results["cases"].append(case)
    for impl in IMPLS:
        sender = start(impl, plan.cycle_size, "vp8", logs)
        try:
            results["cycles"][impl] = viewers(
                sender, "cycles", sender.url, "--cycles", str(plan.cycles)
            )
        finally:
            sender.stop()
    return results


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version()}


def ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}" if a is not None and b else "-"


def table(results: dict) -> str:
    rows = [
        "| size | codec | latency p50 ms stock / project (ratio) | p95 ms stock / project |"
        " first frame ms stock / project | sender CPU 1 / 4 / 8 viewers, stock |"
        " sender CPU 1 / 4 / 8 viewers, project | CPU 8v/1v stock / project |"
        " min fps per viewer at most viewers, stock / project |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for case in results["cases"]:
        s, p = case["stock"], case["project"]
        sl, pl = s["latency"], p["latency"]
        s_cpu = [x["sender_cpu"] for x in s["load"]]
        p_cpu = [x["sender_cpu"] for x in p["load"]]
        rows.append(
            f"| {case['size']} | {case['codec']} "
            f"| {sl['latency_p50_ms']} / {pl['latency_p50_ms']} "
            f"({ratio(pl['latency_p50_ms'], sl['latency_p50_ms'])}) "
            f"| {sl['latency_p95_ms']} / {pl['latency_p95_ms']} "
            f"| {sl['first_frame_ms']} / {pl['first_frame_ms']} "
            f"| {' / '.join(f'{c:.2f}' for c in s_cpu)} "
            f"| {' / '.join(f'{c:.2f}' for c in p_cpu)} "
            f"| {ratio(s_cpu[-1], s_cpu[0])} / {ratio(p_cpu[-1], p_cpu[0])} "
            f"| {s['load'][-1]['fps_min']} / {p['load'][-1]['fps_min']} |"
        )
    rows.append("")
    rows.append(
        "| memory over viewer cycles | cycles | failures | RSS after first MB | after last MB |"
    )
    rows.append("|---|---|---|---|---|")
    for impl, c in results["cycles"].items():
        rows.append(
            f"| {impl} | {c['cycles']} | {c['failures']} "
            f"| {c['rss_after_first_mb']} | {c['rss_after_last_mb']} |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--quick", action="store_true", help="a one-second smoke run")
    args = parser.parse_args(argv)
    plan = Plan()
    if args.quick:
        plan = Plan(
            sizes=("640x480",), codecs=("vp8",), viewers=(1,), seconds=1.0, warmup=0.5, cycles=3
        )
    with tempfile.TemporaryDirectory(prefix="bench-") as logs:
        results = measure(plan, Path(logs))
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
