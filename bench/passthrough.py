"""H.264 passthrough against ``--transcode``, side by side in one run.

    python -m bench.passthrough [--size 1920x1080] [--fps 30] [--seconds 20]
                                [--viewers 1,8] [--markdown docs/performance.md]
    python -m bench.passthrough --quick      # a smoke run (tests/test_bench_passthrough.py)

A test RTSP camera (``bench/rtsp_camera.py``: the stamped fake camera as constrained
baseline H.264, a keyframe a second; on a core of its own, ``apart()``) feeds ``webcam-sender --source rtsp://...``, once as
it is (passthrough) and once with ``--transcode``, in fresh sender processes. For each:

- **latency**: capture-to-decoded p50 of one decoding ``Receiver`` through the sender,
  against the camera read directly (a PyAV reader of the RTSP URL decoding the stamp, as
  the sender reads it), measured just before; the difference is what the sender adds;
- **CPU**: the sender process's CPU seconds per wall second (``/proc/PID/stat``) over
  ``--seconds`` after every viewer receives (and 2 s of warm-up), with 1 and 8 viewers
  (``Receiver``s with ``decode=False`` in another process: frames counted, not decoded, so
  that the viewers leave the sender its share of the two cores); each viewer's fps.

Prints a table with the ratios; ``--markdown FILE`` puts it between
``<!-- passthrough:begin -->`` and ``<!-- passthrough:end -->`` in FILE (appended when
FILE has none), with the machine and the date.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.rtsp_camera import RtspCamera, problem
from bench.senders import ROOT, SenderProcess, child_env
from bench.viewers import load_figures, measured
from common import cli, stamp
from receiver import Receiver
from receiver.stats import read_stamp
from sender import live

BEGIN = "<!-- passthrough:begin"
END = "<!-- passthrough:end -->"
MODES = ("passthrough", "transcode")
VIEWER_TIMEOUT = 60.0  # eight viewers joining on two busy cores
TARGETS = {1: 0.05, 8: 0.1}  # the CPU targets (cores) per viewer count


async def camera_latency(url: str, frames: int) -> float:
    """p50 capture-to-decoded (ms) of the camera read directly, after 10 frames."""
    reader = live.LiveReader(url, live.options(url), lambda frame, _: frame)
    reader.start()
    ages: list[float] = []
    try:
        while len(ages) < frames + 10:
            found = read_stamp(await reader.next_frame())
            if found is not None:
                ages.append(stamp.age_us(found) / 1000)
    finally:
        await reader.close()
    return statistics.median(ages[10:])


async def receiver_latency(url: str, frames: int) -> float:
    """p50 capture-to-decoded (ms) through the sender, after the first second."""
    ages: list[float] = []
    async with Receiver(url, connect_timeout=VIEWER_TIMEOUT) as rx:
        async for frame in rx.frames():
            found = read_stamp(frame)
            if found is not None:
                ages.append(stamp.age_us(found) / 1000)
            if len(ages) >= frames + 30:
                break
    return statistics.median(ages[30:])


async def load(url: str, viewers: int, seconds: float, warmup: float, pid: int) -> dict[str, Any]:
    """``viewers`` receivers counting frames undecoded; the sender's CPU meanwhile."""
    counts = [0] * viewers
    receiving = [asyncio.Event() for _ in range(viewers)]
    measuring = asyncio.Event()

    async def view(i: int, rx: Receiver) -> None:
        async for _ in rx.encoded_frames():
            receiving[i].set()
            if measuring.is_set():
                counts[i] += 1

    receivers = [
        Receiver(url, connect_timeout=VIEWER_TIMEOUT, encoded=True, decode=False)
        for _ in range(viewers)
    ]
    tasks: list[asyncio.Task[None]] = []
    try:
        for rx in receivers:
            await rx.__aenter__()
        tasks = [asyncio.create_task(view(i, rx)) for i, rx in enumerate(receivers)]
        await asyncio.wait_for(
            asyncio.gather(*(event.wait() for event in receiving)), VIEWER_TIMEOUT
        )
        cpu, wall = await measured(pid, seconds, warmup, measuring)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.gather(*(rx.__aexit__(None, None, None) for rx in receivers))
    return load_figures(viewers, cpu, wall, counts)


def in_child(*args: str) -> dict[str, Any]:
    """Run a measurement in a process of its own (viewers off the bench's own CPU)."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.passthrough", *args],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    if result.returncode != 0:
        raise SystemExit(f"bench.passthrough {args[0]} failed:\n{result.stderr[-2000:]}")
    data: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return data


def measure_mode(camera: RtspCamera, args: argparse.Namespace, mode: str, log: Path) -> dict:
    width, height = args.size
    command = ["--source", camera.url(), "--size", f"{width}x{height}", "--fps", f"{args.fps:g}"]
    if mode == "transcode":
        command.append("--transcode")
    sender = SenderProcess(command, log)
    try:
        frames = max(30, round(args.fps * args.seconds / 2))
        latency = in_child("latency", "--url", sender.url, "--frames", str(frames))
        loads = []
        for n in args.viewers:
            measured = ["--viewers", str(n), "--pid", str(sender.proc.pid)]
            measured += ["--seconds", f"{args.seconds:g}", "--warmup", f"{args.warmup:g}"]
            loads.append(in_child("load", "--url", sender.url, *measured))
        health = sender.health()
    except SystemExit as failed:  # a measurement failed: say what the sender said too
        raise SystemExit(
            f"{failed}\n{mode} sender's log (end):\n{sender.stderr()[-3000:]}"
        ) from None
    finally:
        sender.stop()
    return {
        "latency_p50_ms": latency["p50_ms"],
        "load": loads,
        "passthrough": health["passthrough"],
    }


def table(results: dict[str, Any]) -> list[str]:
    own = results["camera_p50_ms"]
    lines = [
        "| mode | viewers | sender CPU (cores) | fps min / mean | latency p50 | added vs camera |",
        "|---|---|---|---|---|---|",
    ]
    for mode in MODES:
        run = results[mode]
        p50 = run["latency_p50_ms"]
        for load in run["load"]:
            lines.append(
                f"| {mode} | {load['viewers']} | {load['sender_cpu']:.3f} | "
                f"{load['fps_min']:.1f} / {load['fps_mean']:.1f} | {p50:.0f} ms | "
                f"{p50 - own:+.0f} ms |"
            )
    lines.append("")
    lines.append(f"Camera read directly (PyAV, decoding): p50 {own:.0f} ms.")
    ratios = []
    for index, load in enumerate(results["passthrough"]["load"]):
        other = results["transcode"]["load"][index]
        n = load["viewers"]
        ratio = load["sender_cpu"] / other["sender_cpu"] if other["sender_cpu"] else float("nan")
        target = TARGETS.get(n)
        met = "" if target is None else (
            f" (target <= {target} core: {'met' if load['sender_cpu'] <= target else 'not met'})"
        )  # fmt: skip
        ratios.append(f"{n} viewer(s): passthrough/transcode CPU {ratio:.2f}{met}")
    added = results["passthrough"]["latency_p50_ms"] - own
    ratios.append(
        f"latency added by passthrough {added:+.0f} ms (target <= 5 ms: "
        f"{'met' if added <= 5 else 'not met'}), by --transcode "
        f"{results['transcode']['latency_p50_ms'] - own:+.0f} ms"
    )
    lines += ["", *(f"- {r}" for r in ratios)]
    return lines


def markdown(results: dict[str, Any]) -> str:
    width, height = results["size"]
    head = (
        f"{BEGIN}: generated by `python -m bench.passthrough`; edit outside these markers -->\n"
        f"### H.264 passthrough ({width}x{height} at {results['fps']:g} fps from the test "
        f"RTSP camera)\n\n"
        f"{results['machine']}, {results['date']}; {results['seconds']:g} s per CPU "
        f"measurement; {results['camera_cpus']}.\n\n"
    )
    return head + "\n".join(table(results)) + "\n" + END


def write_markdown(path: Path, block: str) -> None:
    text = path.read_text() if path.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start == -1 or end == -1:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    else:
        text = text[:start] + block + text[end + len(END) :]
    path.write_text(text)


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(
                (line.split(":", 1)[1].strip() for line in f if line.startswith("model name")),
                model,
            )
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def run(args: argparse.Namespace) -> int:
    why = problem()
    if why is not None:
        print(f"bench.passthrough: error: the test RTSP camera cannot run: {why}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {
        "size": list(args.size),
        "fps": args.fps,
        "seconds": args.seconds,
        "machine": machine(),
        "date": datetime.date.today().isoformat(),
    }
    with (
        tempfile.TemporaryDirectory() as tmp,
        RtspCamera(
            size=args.size, fps=args.fps, key_interval=round(args.fps), log=Path(tmp) / "camera.log"
        ) as camera,
    ):
        results["camera_cpus"] = apart(camera)
        frames = max(30, round(args.fps * args.seconds / 2))
        results["camera_p50_ms"] = asyncio.run(camera_latency(camera.url(), frames))
        for mode in MODES:
            results[mode] = measure_mode(camera, args, mode, Path(tmp) / f"sender-{mode}.log")
    print("\n".join(table(results)), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    if args.markdown:
        write_markdown(Path(args.markdown), markdown(results))
    return 0


def apart(camera: RtspCamera) -> str:
    """Give the test camera a core of its own (the last), and this process, the sender
    and the viewers (started from here later, so they inherit it) the others: a real
    camera encodes on its own hardware, while here its 1080p encoder took about a core of
    the two, and the sender and receiver waited for it (+41 ms measured sharing both
    cores, +1-1.5 ms apart). With a single core nothing is pinned."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2 or camera.proc is None:
        return "shared"
    os.sched_setaffinity(0, cpus[:-1])
    for task in Path(f"/proc/{camera.proc.pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), cpus[-1:])
    return f"camera on CPU {cpus[-1]}, the rest on {','.join(map(str, cpus[:-1]))}"


def viewer_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(n) for n in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of viewer counts: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"viewer counts must be >= 1: {text!r}")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.passthrough", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="part")
    latency = sub.add_parser("latency", help="(internal) one decoding viewer")
    latency.add_argument("--url", required=True)
    latency.add_argument("--frames", type=int, default=150)
    loading = sub.add_parser("load", help="(internal) viewers counting frames")
    loading.add_argument("--url", required=True)
    loading.add_argument("--viewers", type=int, default=1)
    loading.add_argument("--pid", type=int, required=True)
    loading.add_argument("--seconds", type=float, default=20.0)
    loading.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--size", type=cli.size, default=(1920, 1080))
    parser.add_argument("--fps", type=cli.positive(float), default=30.0)
    parser.add_argument("--seconds", type=cli.positive(float), default=20.0)
    parser.add_argument("--warmup", type=cli.positive(float), default=2.0)
    parser.add_argument("--viewers", type=viewer_counts, default=(1, 8))
    parser.add_argument("--json", metavar="FILE", help="also write the numbers here")
    parser.add_argument("--markdown", metavar="FILE", help="put the table in FILE")
    parser.add_argument("--quick", action="store_true", help="640x480, 1 and 2 viewers, 2 s")
    args = parser.parse_args(argv)
    if args.part == "latency":
        print(json.dumps({"p50_ms": asyncio.run(receiver_latency(args.url, args.frames))}))
        return 0
    if args.part == "load":
        result = asyncio.run(load(args.url, args.viewers, args.seconds, args.warmup, args.pid))
        print(json.dumps(result))
        return 0
    if args.quick:
        args.size, args.seconds, args.warmup, args.viewers = (640, 480), 2.0, 0.5, (1, 2)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
