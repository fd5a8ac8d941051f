"""Side-by-side benchmark: our sender and receiver against the stock aiortc pattern.

    python -m bench.run --json docs/performance.json --markdown docs/performance.md
    python -m bench.run --from-json docs/performance.json --markdown docs/performance.md
    python -m bench.run --quick                       # a smoke run (tests/test_bench.py)

For each case (size x codec) it runs, ``--repeat`` times (3), the stock sender and ours,
interleaved (stock, project; then project, stock; ...), and measures for each:
capture-to-decoded latency (frame stamp), time to the first decoded frame, the sender's
CPU per wall second with 1, 4 and 8 viewers (viewers in another process, counting
complete frames without decoding) and the frames each viewer got, and the picture
quality when ``bench/quality.py`` is there; and once per repetition the encode + decode
floor (``bench/floor.py``, paced, in a process of its own). Ours also gives the codec's
own time on the very frames whose latency is measured (the sender's encoder, the
receiver's decoder: ``pipeline_floor_ms``); the latency target is judged on that one
where present. Then the sender's resident memory over repeated viewer connect/disconnect
cycles, interleaved the same way.

Every repetition's numbers go to the JSON (with the machine, the date, the versions and
the options); the tables, each figure the median and min-max over the repetitions, and
the targets (met / not met) are made from that JSON alone: ``--from-json`` remakes them
without measuring. ``--markdown FILE`` replaces the block between the markers
``<!-- bench:begin ... -->`` and ``<!-- bench:end -->`` in FILE (appended when FILE has
none) and leaves the rest of FILE alone.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import importlib
import importlib.util
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bench.senders import ROOT, SenderDidNotStart, SenderProcess, child_env
from common.cli import size as parse_size

IMPLS = ("stock", "project")
SIZES = ("640x480", "1280x720", "1920x1080")
CODECS = ("vp8", "h264")
CODEC_NAMES = {"vp8": "VP8", "h264": "H.264"}
FORMAT = "webrtc-webcam bench 2"
STARTUP_TIMEOUT = 60.0  # two senders and eight viewers may share two busy cores
BEGIN = "<!-- bench:begin"
END = "<!-- bench:end -->"

Json = dict[str, Any]


@dataclass
class Plan:
    sizes: tuple[str, ...] = SIZES
    codecs: tuple[str, ...] = CODECS
    viewers: tuple[int, ...] = (1, 4, 8)
    repeat: int = 3
    seconds: float = 5.0
    warmup: float = 2.0
    settle: float = 60.0  # at most this long for our viewers to reach the full-size tier
    # and our encoders the top of their bitrate ramp (bench.viewers.at_the_top)
    cycles: int = 200
    cycle_size: str = "640x480"
    cycle_codec: str = "vp8"
    source: str = "testsrc"
    fps: float = 30.0
    floor_frames: int = 60
    quick: bool = False


def quick_plan() -> Plan:
    """``--quick``: one case, once, a second per measurement (tests/test_bench.py)."""
    return Plan(
        sizes=("640x480",),
        codecs=("vp8",),
        viewers=(1,),
        repeat=1,
        seconds=1.0,
        warmup=0.5,
        settle=60.0,  # our bitrate's ramp to 1.5 Mbit/s: about 25 s
        cycles=3,
        floor_frames=20,
        quick=True,
    )


# --- the source ------------------------------------------------------------------------


def default_source() -> str:
    """``scene`` (the realistic fake camera) where the sender has one, else ``testsrc``."""
    return "scene" if importlib.util.find_spec("sender.scene") is not None else "testsrc"


def usable_source(name: str) -> str:
    """``name`` if ``sender.sources`` knows it (as both senders' ``--source``), else
    ``testsrc`` with a note."""
    from sender import sources

    try:
        kind = sources.resolve(name).kind
    except (sources.SourceError, ValueError) as exc:
        reason = str(exc)
    else:
        if kind not in ("device", "file"):
            return name
        reason = f"it resolves to a {kind}, not a built-in picture"
    if name != "testsrc":
        print(f"bench: source {name!r} is not available ({reason}); using testsrc", file=sys.stderr)
    return "testsrc"


# --- the quality hook --------------------------------------------------------------------

QUALITY_MODULE = "bench.quality"
QUALITY_FIGURES = ("psnr_db", "psnr_p5_db", "ssim", "received_kbps")  # kept in the summary


def quality(
    sender_url: str, impl: str, size: str, seconds: float, *, source: str, settle: float
) -> Json | None:
    """Picture quality from ``bench/quality.py`` (PSNR and SSIM of the decoded frames
    against the scene's frames regenerated from their stamps, with latency and the
    bitrate received); None without that module or off the ``scene`` source, which it
    needs. The one place that knows its interface: this is ``bench.quality.measure()``
    with the viewer settling on the full size first (as ``bench.viewers.latency`` does),
    which that function does not do. A failure is recorded, not raised."""
    if source != "scene" or importlib.util.find_spec(QUALITY_MODULE) is None:
        return None
    module = importlib.import_module(QUALITY_MODULE)
    from bench.viewers import watch

    width, height = (int(n) for n in size.split("x"))

    async def measure() -> Json:
        kept = module.Capture(width, height)
        watched = await watch(sender_url, impl, seconds, kept.add, (width, height), settle)
        result: Json = await asyncio.to_thread(module.report, kept, watched)
        return {**result, "settled": watched.settled, "settle_ms": round(watched.settle * 1000)}

    try:
        return asyncio.run(measure())
    except Exception as exc:  # one figure missing must not lose the run
        return {"error": f"{type(exc).__name__}: {exc}"}


# --- measuring -----------------------------------------------------------------------------


def start(impl: str, size: str, codec: str, plan: Plan, log: Path) -> SenderProcess:
    """One sender process (ours or the stock one) on a free port, its stderr in ``log``."""
    args = ["--size", size, "--codec", codec, "--fps", f"{plan.fps:g}", "--source", plan.source]
    if impl == "project":
        return SenderProcess(["--max-viewers", "64", *args], log, startup_timeout=STARTUP_TIMEOUT)
    return SenderProcess(args, log, module="bench.stock_sender", startup_timeout=STARTUP_TIMEOUT)


def child(module: str, *args: str, sender: SenderProcess | None = None) -> Json:
    """Run ``python -m module args`` (a bench helper) in its own process; its JSON result."""
    result = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    if result.returncode != 0:
        more = f"\nsender: {sender.stderr().strip()[-500:]}" if sender else ""
        raise RuntimeError(f"{module} {args[0]} failed: {result.stderr.strip()[-500:]}{more}")
    parsed: Json = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def viewers(sender: SenderProcess, *args: str) -> Json:
    """Run bench.viewers against ``sender``; its JSON result."""
    return child("bench.viewers", *args, "--pid", str(sender.proc.pid), sender=sender)


def run_impl(impl: str, size: str, codec: str, plan: Plan, log: Path) -> Json:
    """Everything measured on one sender: latency, quality, CPU at each viewer count."""
    out: Json = {"load_average": os.getloadavg()[0]}
    sender = start(impl, size, codec, plan, log)
    try:
        out["latency"] = viewers(
            sender,
            "latency",
            sender.url,
            "--impl",
            impl,
            "--seconds",
            str(plan.seconds),
            "--size",
            size,
            "--settle",
            str(plan.settle),
        )
        out["quality"] = quality(
            sender.url, impl, size, plan.seconds, source=plan.source, settle=plan.settle
        )
        out["load"] = [
            viewers(
                sender,
                "load",
                sender.url,
                "--viewers",
                str(n),
                "--seconds",
                str(plan.seconds),
                "--warmup",
                str(plan.warmup),
                "--settle",
                str(plan.settle),
            )
            for n in plan.viewers
        ]
    finally:
        sender.stop()
    return out


def bitrate(project: Json, codec: str) -> int | None:
    """The bitrate our sender's full-size encoder ran at, at the end of the latency
    measurement (from its /healthz); None when unknown."""
    tiers = (project.get("latency") or {}).get("encoding") or {}
    full = tiers.get(codec, {}).get("full") or {}
    rate = full.get("bitrate")
    return int(rate) if rate else None


def floor(size: str, codec: str, rate: int | None, plan: Plan) -> Json:
    """The encode + decode floor (``bench/floor.py``), at our sender's bitrate ``rate``
    (when known), in its own process."""
    more = ["--bitrate", str(rate)] if rate else []
    return child(
        "bench.floor",
        *more,
        "--size",
        size,
        "--codec",
        codec,
        "--source",
        plan.source,
        "--fps",
        f"{plan.fps:g}",
        "--frames",
        str(plan.floor_frames),
    )


def attempt(what: str, measure: Callable[..., Json], *args: Any) -> Json:
    """``measure(*args)``, or ``{"error": ...}``: one failed run is recorded, and the
    benchmark goes on (and exits non-zero at the end)."""
    try:
        return measure(*args)
    except (RuntimeError, SenderDidNotStart, subprocess.TimeoutExpired, ValueError) as exc:
        print(f"  {what}: FAILED: {exc}", file=sys.stderr)
        return {"error": str(exc)[-2000:]}


def order(repetition: int) -> tuple[str, ...]:
    """Stock first in even repetitions, ours first in odd ones."""
    return IMPLS if repetition % 2 == 0 else IMPLS[::-1]


def progress(size: str, codec: str, rep: int, impl: str, run: Json) -> None:
    if "error" in run:
        return
    lat = run["latency"]
    cpu = " / ".join(f"{x['sender_cpu']:.2f}" for x in run["load"])
    fps = " / ".join(f"{x['fps_min']:g}" for x in run["load"])
    print(
        f"  {size} {codec} #{rep + 1} {impl}: latency p50 {lat['latency_p50_ms']} ms, "
        f"first frame {lat['first_frame_ms']} ms, CPU {cpu}, min fps {fps}",
        file=sys.stderr,
    )


def measure(plan: Plan, logs: Path, save: Callable[[Json], None]) -> Json:
    results = header(plan)
    for size in plan.sizes:
        for codec in plan.codecs:
            case: Json = {"size": size, "codec": codec, "runs": []}
            results["cases"].append(case)
            for rep in range(plan.repeat):
                run: Json = {"repetition": rep + 1, "order": list(order(rep))}
                for impl in order(rep):
                    log = logs / f"{impl}-{size}-{codec}-{rep + 1}.log"
                    what = f"{size} {codec} #{rep + 1} {impl}"
                    run[impl] = attempt(what, run_impl, impl, size, codec, plan, log)
                    progress(size, codec, rep, impl, run[impl])
                rate = bitrate(run["project"], codec)
                run["floor"] = attempt(f"{size} {codec} floor", floor, size, codec, rate, plan)
                case["runs"].append(run)
            save(results)
    cycles: Json = {"size": plan.cycle_size, "codec": plan.cycle_codec, "runs": []}
    results["cycles"] = cycles
    for rep in range(plan.repeat):
        run = {"repetition": rep + 1, "order": list(order(rep))}
        for impl in order(rep):
            run[impl] = attempt(f"cycles #{rep + 1} {impl}", run_cycles, impl, plan, logs, rep)
        cycles["runs"].append(run)
    results["finished"] = now()
    save(results)
    return results


def run_cycles(impl: str, plan: Plan, logs: Path, rep: int) -> Json:
    log = logs / f"cycles-{impl}-{rep + 1}.log"
    sender = start(impl, plan.cycle_size, plan.cycle_codec, plan, log)
    try:
        return viewers(sender, "cycles", sender.url, "--cycles", str(plan.cycles))
    finally:
        sender.stop()


# --- what the JSON says about the run ---------------------------------------------------------


def now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def header(plan: Plan) -> Json:
    return {
        "format": FORMAT,
        "date": now(),
        "command": "python -m bench.run " + shlex.join(sys.argv[1:]),
        "machine": machine(),
        "versions": versions(),
        "options": asdict(plan),
        "cases": [],
        "cycles": {},
    }


def machine() -> Json:
    """The machine (bench/net.py uses it too: keep its keys)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    memory = None
    try:
        with open("/proc/meminfo") as f:
            kb = next(int(line.split()[1]) for line in f if line.startswith("MemTotal:"))
            memory = round(kb / 2**20, 1)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "memory_gib": memory,
        "system": f"{platform.system()} {platform.release()}",
        "load_average": os.getloadavg()[0],
    }


def versions() -> Json:
    import aiortc
    import av
    import numpy

    commit = subprocess.run(
        ["git", "describe", "--always", "--dirty", "--abbrev=12"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "python": platform.python_version(),
        "aiortc": aiortc.__version__,
        "av": av.__version__,
        "ffmpeg": getattr(av, "ffmpeg_version_info", None),
        "libraries": {name: ".".join(map(str, v)) for name, v in av.library_versions.items()},
        "numpy": numpy.__version__,
        "commit": commit or None,
    }


# --- from the JSON to the figures ----------------------------------------------------------------


def stat(values: Iterable[float | None]) -> Json | None:
    """Median and min-max of the values there are; None when there are none."""
    present = [v for v in values if v is not None]
    if not present:
        return None
    return {
        "median": statistics.median(present),
        "min": min(present),
        "max": max(present),
        "n": len(present),
    }


def ok(run: Json, impl: str) -> Json | None:
    got = run.get(impl)
    return got if got and "error" not in got else None


def load_at(impl_run: Json | None, viewers: int) -> Json | None:
    if impl_run is None:
        return None
    return next((x for x in impl_run["load"] if x["viewers"] == viewers), None)


def unsettled(impl_run: Json) -> bool:
    """Whether any of the run's measurements began before its viewer reached full size."""
    parts = [impl_run["latency"], *impl_run["load"], impl_run.get("quality") or {}]
    return any(part.get("settled") is False for part in parts)


def div(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def pipeline_floor(latency: Json | None) -> float | None:
    """Encode + decode of the measured frames themselves (ours; None when not measured):
    the median of a frame's sum, or in an older JSON without it, the sum of the two
    medians."""
    if latency is None:
        return None
    if latency.get("codec_p50_ms") is not None:
        return float(latency["codec_p50_ms"])
    encode, decode = latency.get("encoding_p50_ms"), latency.get("decoding_p50_ms")
    return encode + decode if encode is not None and decode is not None else None


def summarize_case(case: Json, viewer_counts: Iterable[int]) -> Json:
    runs = case["runs"]
    floor_ms = [None if "error" in r["floor"] else r["floor"]["floor_ms"] for r in runs]
    summary: Json = {"size": case["size"], "codec": case["codec"], "floor_ms": stat(floor_ms)}
    p50: dict[str, list[float | None]] = {}
    for impl in IMPLS:
        done = [ok(r, impl) for r in runs]
        latency = [d["latency"] if d else None for d in done]
        p50[impl] = [x["latency_p50_ms"] if x else None for x in latency]
        figures: Json = {
            "runs": sum(d is not None for d in done),
            "failed": sum(d is None for d in done),
            "unsettled": sum(1 for d in done if d and unsettled(d)),
            "latency_p50_ms": stat(p50[impl]),
            "latency_p95_ms": stat(x["latency_p95_ms"] if x else None for x in latency),
            "first_frame_ms": stat(x["first_frame_ms"] if x else None for x in latency),
            "settle_ms": stat(x.get("settle_ms") if x else None for x in latency),
            "received_kbps": stat(x.get("received_kbps") if x else None for x in latency),
            "quality": {
                key: stat((d.get("quality") or {}).get(key) if d else None for d in done)
                for key in QUALITY_FIGURES
            },
            "floor_ratio": stat(div(a, b) for a, b in zip(p50[impl], floor_ms, strict=True)),
            "pipeline_floor_ms": stat(pipeline_floor(x) for x in latency),
            "pipeline_ratio": stat(
                div(a, pipeline_floor(x)) for a, x in zip(p50[impl], latency, strict=True)
            ),
            "load": {},
        }
        for n in viewer_counts:
            at = [load_at(d, n) for d in done]
            figures["load"][str(n)] = {
                "sender_cpu": stat(x["sender_cpu"] if x else None for x in at),
                "fps_min": stat(x["fps_min"] if x else None for x in at),
            }
        counts = sorted(int(n) for n in figures["load"])
        if len(counts) > 1:
            first, last = counts[0], counts[-1]
            figures["cpu_growth"] = stat(
                div(
                    (load_at(d, last) or {}).get("sender_cpu"),
                    (load_at(d, first) or {}).get("sender_cpu"),
                )
                for d in done
            )
        summary[impl] = figures
    summary["latency_ratio"] = stat(
        div(p, s) for p, s in zip(p50["project"], p50["stock"], strict=True)
    )
    return summary


def summarize_cycles(cycles: Json) -> Json:
    summary: Json = {}
    for impl in IMPLS:
        done = [ok(r, impl) for r in cycles.get("runs", [])]
        summary[impl] = {
            "cycles": stat(d["cycles"] if d else None for d in done),
            "failures": stat(d["failures"] if d else None for d in done),
            "rss_after_first_mb": stat(d["rss_after_first_mb"] if d else None for d in done),
            "rss_after_last_mb": stat(d["rss_after_last_mb"] if d else None for d in done),
            "growth_mb": stat(
                d["rss_after_last_mb"] - d["rss_after_first_mb"] if d else None for d in done
            ),
            "failed": sum(d is None for d in done),
        }
    return summary


def summarize(results: Json) -> Json:
    counts = results["options"]["viewers"]
    return {
        "cases": [summarize_case(case, counts) for case in results["cases"]],
        "cycles": summarize_cycles(results.get("cycles") or {}),
    }


# --- targets -------------------------------------------------------------------------------------


def targets(summary: Json) -> list[Json]:
    """The issue's targets, each with the measured median (and min-max) and whether the
    median meets it; ``met`` is None for a case this run did not measure."""
    cases = {(c["size"], c["codec"]): c for c in summary["cases"]}
    rows: list[Json] = []

    def add(text: str, value: Json | None, limit: float, at_most: bool = True) -> None:
        met = None
        if value is not None:
            met = value["median"] <= limit if at_most else value["median"] >= limit
        rows.append(
            {"target": text, "limit": limit, "at_most": at_most, "value": value, "met": met}
        )

    def get(size: str, codec: str, *path: str) -> Json | None:
        node: Any = cases.get((size, codec))
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        return node if isinstance(node, dict) else None

    for codec, cores in (("h264", 0.5), ("vp8", 0.8)):
        name = CODEC_NAMES[codec]
        add(
            f"1920x1080 {name}: each of 8 viewers gets at least 29 fps (project)",
            get("1920x1080", codec, "project", "load", "8", "fps_min"),
            29.0,
            at_most=False,
        )
        add(
            f"1920x1080 {name}: sender CPU with 8 viewers at most {cores} core (project)",
            get("1920x1080", codec, "project", "load", "8", "sender_cpu"),
            cores,
        )
    for size in SIZES:
        for codec in CODECS:
            # On the codec's time in the pipeline when measured (runs from 2026-12-02 on),
            # else on the paced floor of a process of its own.
            ratio = get(size, codec, "project", "pipeline_ratio")
            where = "in the pipeline"
            if ratio is None:
                ratio, where = get(size, codec, "project", "floor_ratio"), "paced"
            add(
                f"{size} {CODEC_NAMES[codec]}: latency p50 at most 1.3 x encode + decode"
                f" ({where}; project)",
                ratio,
                1.3,
            )
    for size, limit in (("640x480", 0.35), ("1280x720", 0.5)):
        for codec in CODECS:
            add(
                f"{size} {CODEC_NAMES[codec]}: latency p50 at most {limit} x stock's",
                get(size, codec, "latency_ratio"),
                limit,
            )
    for codec in CODECS:
        name = CODEC_NAMES[codec]
        add(
            f"1280x720 {name}: sender CPU with 8 viewers at most 1.6 x with 1 (project)",
            get("1280x720", codec, "project", "cpu_growth"),
            1.6,
        )
        add(
            f"1280x720 {name}: each of 8 viewers gets at least 28 fps (project)",
            get("1280x720", codec, "project", "load", "8", "fps_min"),
            28.0,
            at_most=False,
        )
    firsts = [c["project"]["first_frame_ms"] for c in summary["cases"]]
    worst = max((f for f in firsts if f), key=lambda f: f["median"], default=None)
    add("a new viewer's first decoded frame within 500 ms, every case (project)", worst, 500.0)
    return rows


# --- markdown ------------------------------------------------------------------------------------


def number(value: float, digits: int) -> str:
    return f"{value:.{digits}f}"


def cell(value: Json | None, digits: int = 1) -> str:
    """``median (min-max)``; just the median for one run; ``-`` when nothing was measured."""
    if value is None:
        return "-"
    text = number(value["median"], digits)
    if value["n"] > 1:
        text += f" ({number(value['min'], digits)}-{number(value['max'], digits)})"
    return text


def render(results: Json, json_name: str | None = None) -> str:
    """The generated block of docs/performance.md, from the JSON alone."""
    summary = summarize(results)
    options = results["options"]
    machine_, versions_ = results["machine"], results["versions"]
    repeat = options["repeat"]
    kept = f"`{json_name}`" if json_name else "not kept (run with `--json FILE`)"
    out = [
        f"{BEGIN}: generated by `make bench` (python -m bench.run) from its JSON;"
        " edit the prose outside these markers, not this block -->",
    ]
    if options.get("quick"):
        out += ["", "**A smoke run (`--quick`): these numbers measure nothing.**"]
    out += [
        "",
        f"Measured {results['date'][:10]} (`{results['command']}`) on {machine_['cpu']},"
        f" {machine_['cores']} cores, {machine_.get('memory_gib')} GiB, {machine_.get('system')}"
        f" (load average {machine_.get('load_average', 0):.2f} at the start); Python"
        f" {versions_['python']}, aiortc {versions_['aiortc']}, PyAV {versions_['av']},"
        f" FFmpeg {versions_.get('ffmpeg')}; commit {versions_.get('commit')}. Source"
        f" `{options['source']}` at {options['fps']:g} fps; {repeat}"
        f" repetition{'s' if repeat != 1 else ''} of each case, stock and project interleaved."
        f" Each figure: median (min-max) over the repetitions. Raw numbers: {kept}.",
        "",
    ]
    out += latency_table(summary)
    if quality_rows := quality_table(summary):
        out += ["", *quality_rows]
    out += ["", *cpu_table(summary, options["viewers"])]
    out += ["", *memory_table(summary, results.get("cycles") or {})]
    out += ["", *targets_table(targets(summary))]
    notes = footnotes(summary, results, options)
    if notes:
        out += ["", *notes]
    out.append(END)
    return "\n".join(out)


def flag(case: Json) -> str:
    unsettled = case["stock"]["unsettled"] + case["project"]["unsettled"]
    failed = case["stock"]["failed"] + case["project"]["failed"]
    return ("†" if unsettled else "") + ("‡" if failed else "")


def latency_table(summary: Json) -> list[str]:
    rows = [
        "| size | codec | latency p50 ms, stock | project | project / stock"
        " | p95 ms, stock | project | first frame ms, stock | project"
        " | encode + decode ms, paced | project p50 / that"
        " | encode + decode ms, in the pipeline | project p50 / that |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cases"]:
        s, p = c["stock"], c["project"]
        row = (
            f"| {c['size']}{flag(c)} | {c['codec']} "
            f"| {cell(s['latency_p50_ms'], 2)} | {cell(p['latency_p50_ms'], 2)} "
            f"| {cell(c['latency_ratio'], 2)} "
            f"| {cell(s['latency_p95_ms'], 2)} | {cell(p['latency_p95_ms'], 2)} "
            f"| {cell(s['first_frame_ms'], 0)} | {cell(p['first_frame_ms'], 0)} "
            f"| {cell(c['floor_ms'], 2)} | {cell(p['floor_ratio'], 2)} "
            f"| {cell(p.get('pipeline_floor_ms'), 2)} | {cell(p.get('pipeline_ratio'), 2)} |"
        )
        rows.append(row)
    return rows


def quality_table(summary: Json) -> list[str]:
    """PSNR and SSIM (``bench/quality.py``), when any run measured them."""
    if not any(c[impl]["quality"]["psnr_db"] for c in summary["cases"] for impl in IMPLS):
        return []
    rows = [
        "| size | codec | PSNR dB, stock | project | PSNR dB 5th percentile, stock | project"
        " | SSIM, stock | project | received kbit/s, stock | project |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in summary["cases"]:
        s, p = c["stock"]["quality"], c["project"]["quality"]
        rows.append(
            f"| {c['size']}{flag(c)} | {c['codec']} "
            f"| {cell(s['psnr_db'], 2)} | {cell(p['psnr_db'], 2)} "
            f"| {cell(s['psnr_p5_db'], 2)} | {cell(p['psnr_p5_db'], 2)} "
            f"| {cell(s['ssim'], 4)} | {cell(p['ssim'], 4)} "
            f"| {cell(s['received_kbps'], 0)} | {cell(p['received_kbps'], 0)} |"
        )
    return rows


def cpu_table(summary: Json, counts: list[int]) -> list[str]:
    rows = [
        "| size | codec | viewers | sender CPU (cores), stock | project"
        " | min fps per viewer, stock | project |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in summary["cases"]:
        for n in counts:
            s, p = c["stock"]["load"][str(n)], c["project"]["load"][str(n)]
            rows.append(
                f"| {c['size']}{flag(c)} | {c['codec']} | {n} "
                f"| {cell(s['sender_cpu'], 2)} | {cell(p['sender_cpu'], 2)} "
                f"| {cell(s['fps_min'], 1)} | {cell(p['fps_min'], 1)} |"
            )
    return rows


def memory_table(summary: Json, cycles: Json) -> list[str]:
    what = f"{cycles.get('size', '?')} {CODEC_NAMES.get(cycles.get('codec', ''), '?')}"
    rows = [
        f"| sender memory over viewer cycles ({what}) | cycles | failures"
        " | RSS after the first, MB | after the last, MB | growth, MB |",
        "|---|---|---|---|---|---|",
    ]
    for impl in IMPLS:
        m = summary["cycles"][impl]
        rows.append(
            f"| {impl} | {cell(m['cycles'], 0)} | {cell(m['failures'], 0)} "
            f"| {cell(m['rss_after_first_mb'], 1)} | {cell(m['rss_after_last_mb'], 1)} "
            f"| {cell(m['growth_mb'], 1)} |"
        )
    return rows


def targets_table(rows: list[Json]) -> list[str]:
    out = ["| target | measured: median (min-max) | result |", "|---|---|---|"]
    for row in rows:
        digits = 1 if row["limit"] >= 10 else 2
        result = {True: "met", False: "**not met**", None: "not measured"}[row["met"]]
        out.append(f"| {row['target']} | {cell(row['value'], digits)} | {result} |")
    return out


def footnotes(summary: Json, results: Json, options: Json) -> list[str]:
    notes = []
    if any(c["stock"]["unsettled"] + c["project"]["unsettled"] for c in summary["cases"]):
        notes.append(
            f"† In at least one run a viewer was still on a smaller tier, or our encoder"
            f" still stepping its bitrate up, after {options['settle']:g} s and was measured"
            f" so (`settled: false` in the JSON)."
        )
    failed = sum(c[impl]["failed"] for c in summary["cases"] for impl in IMPLS)
    failed += sum(1 for r in results["cases"] for run in r["runs"] if "error" in run["floor"])
    failed += sum(summary["cycles"][impl]["failed"] for impl in IMPLS)
    if failed:
        notes.append(f"‡ {failed} run(s) failed; their errors are in the JSON.")
    return notes


def update_markdown(path: Path, block: str) -> None:
    """Put ``block`` between the markers in ``path``, keeping everything else."""
    text = path.read_text() if path.exists() else ""
    start, end = text.find(BEGIN), text.find(END)
    if start >= 0 and end > start:
        text = text[:start] + block + text[end + len(END) :]
    elif start < 0 and end < 0:
        text = text.rstrip("\n") + ("\n\n" if text else "") + block + "\n"
    else:
        raise SystemExit(f"{path}: the markers {BEGIN} ... {END} are not in order")
    path.write_text(text)


def derived(results: Json) -> Json:
    """The results with their summary and targets (remade from the raw runs)."""
    summary = summarize(results)
    return {**results, "summary": summary, "targets": targets(summary)}


def errors(results: Json) -> int:
    runs = [run for case in results["cases"] for run in case["runs"]]
    runs += (results.get("cycles") or {}).get("runs", [])
    return sum(1 for run in runs for key in ("floor", *IMPLS) if "error" in run.get(key, {}))


# --- the command ---------------------------------------------------------------------------------


def names(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def sizes(text: str) -> tuple[str, ...]:
    """``640x480,1280x720`` for argparse, each size checked as the senders check it."""
    parsed = names(text)
    for one in parsed:
        parse_size(one)
    return parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="FILE", help="write every repetition's numbers here")
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the tables into FILE, between its markers"
    )
    parser.add_argument(
        "--from-json", metavar="FILE", help="measure nothing: remake the tables from FILE"
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run: one case, once")
    parser.add_argument("--repeat", type=int, help="repetitions of each case (3; --quick: 1)")
    parser.add_argument(
        "--source",
        choices=("testsrc", "scene"),
        help="the picture both senders send (scene when the sender has it, else testsrc)",
    )
    parser.add_argument("--sizes", type=sizes, help=f"comma-separated ({','.join(SIZES)})")
    parser.add_argument("--codecs", type=names, help=f"comma-separated ({','.join(CODECS)})")
    parser.add_argument("--seconds", type=float, help="each measurement's length (5)")
    parser.add_argument(
        "--settle",
        type=float,
        help="at most this long for our viewers to reach full size and our bitrate its top (60)",
    )
    args = parser.parse_args(argv)

    if args.from_json:
        results = json.loads(Path(args.from_json).read_text())
        if results.get("format") != FORMAT:
            parser.error(f"{args.from_json} is not a {FORMAT!r} file")
        json_name = args.from_json
    else:
        plan = quick_plan() if args.quick else Plan()
        for name in ("repeat", "sizes", "codecs", "seconds", "settle"):
            if getattr(args, name) is not None:
                setattr(plan, name, getattr(args, name))
        unknown = [c for c in plan.codecs if c not in CODECS]
        if unknown or plan.repeat < 1:
            parser.error(f"codecs are {', '.join(CODECS)}; --repeat at least 1")
        plan.source = usable_source(args.source or default_source())
        json_name = args.json

        def save(partial: Json) -> None:
            """After each case, so that an interrupted run leaves what it measured."""
            if args.json:
                Path(args.json + ".partial").write_text(json.dumps(partial, indent=2) + "\n")

        with tempfile.TemporaryDirectory(prefix="bench-") as logs:
            results = measure(plan, Path(logs), save)
    if args.json:
        Path(args.json).write_text(json.dumps(derived(results), indent=2) + "\n")
        Path(args.json + ".partial").unlink(missing_ok=True)
    # The tables come from the JSON as written (a round trip), never from live objects.
    block = render(json.loads(json.dumps(results)), json_name)
    print(block)
    if args.markdown:
        update_markdown(Path(args.markdown), block)
    failed = errors(results)
    if failed:
        print(f"bench: {failed} run(s) failed; see the JSON", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
