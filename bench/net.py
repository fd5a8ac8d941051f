"""Network benchmark: our sender and receiver against the stock aiortc pattern, across
two network namespaces, under loss and behind narrow links.

    python -m bench.net [--json FILE] [--markdown FILE] [--seconds S] [--quick]
                        [--scenarios NAME,...] [--logs DIR]

For each link (random UDP loss 0/2/5/10 %, burst loss, 1 Mbit/s and 400 kbit/s
bottlenecks, a drop from 4 Mbit/s to 400 kbit/s at mid-run) both implementations run one
after the other, each in two fresh namespaces joined by a veth pair (the sender in one,
the receiver in the other, the fake camera at 640x480, 30 fps, VP8), for --seconds each:

- project: ``python -m sender --source testsrc`` and ``python -m receiver --stats-json``;
- stock: ``bench.stock_sender`` (the tutorial's sender, aiortc's encoder per viewer) and
  ``bench.stock_receiver`` (a plain RTCPeerConnection, aiortc's defaults).

Both receivers summarise with the project's FrameStats: fps, capture-to-decoded latency
p50/p95 from the frame stamp, freezes (gaps between decoded frames over 250 ms) per
minute. The bitrate is what entered the receiver's namespace as UDP after the loss rule
(an nftables counter), over the receiver's first-to-last frame. Needs root, ``ip``,
``nft`` and ``tc``: without them it prints why on one line and exits 0.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.netns import VETH, TwoHosts, two_hosts
from bench.netns import missing_requirements as netns_missing
from bench.run import machine as cpu_machine
from bench.senders import SenderProcess

IMPLS = ("project", "stock")
COLUMNS = ("fps", "p50_ms", "p95_ms", "freezes_per_min", "bitrate_kbps")
PORT = 8080
SECONDS = 30.0
QUICK_SECONDS = 5.0  # a smoke run's; both receivers count --duration from their first frame
STARTUP_TIMEOUT = 60.0  # a sender on two cores shared with a busy receiver
RECEIVER_GRACE = 90.0  # beyond --seconds, before the receiver counts as hung
SAMPLE_EVERY = 1.0  # seconds between readings of the byte counter
SETTLE_AFTER_DROP = 5.0  # the bitrate "after the drop" starts this long after it
TBF = "burst 16kbit latency 300ms"  # a 300 ms queue in front of the bottleneck
BENCH_TABLE = "wwc_bench"
BURST = "numgen inc mod 400 >= 392"  # 8 consecutive UDP packets out of every 400 (2 %)
BEGIN = "<!-- bench-net results: written by python -m bench.net --markdown -->"
END = "<!-- end of bench-net results -->"


@dataclass(frozen=True)
class Scenario:
    name: str
    label: str
    loss: int = 0  # % of UDP packets into the receiver dropped at random
    burst: bool = False  # BURST: UDP packets into the receiver dropped in runs
    rate: str | None = None  # tbf on the sender's egress
    drop_to: str | None = None  # the tbf rate from mid-run on


SCENARIOS = (
    Scenario("clean", "no loss"),
    Scenario("loss-2", "2% random loss", loss=2),
    Scenario("loss-5", "5% random loss", loss=5),
    Scenario("loss-10", "10% random loss", loss=10),
    Scenario("burst", "burst loss (8 of 400 packets)", burst=True),
    Scenario("1mbit", "1 Mbit/s bottleneck", rate="1mbit"),
    Scenario("400kbit", "400 kbit/s bottleneck", rate="400kbit"),
    Scenario("drop", "4 Mbit/s, 400 kbit/s from mid-run", rate="4mbit", drop_to="400kbit"),
)
BY_NAME = {s.name: s for s in SCENARIOS}


def missing_requirements() -> str | None:
    """Why the benchmark cannot run here (namespaces, nftables, tc), or None."""
    problems = [p for p in (netns_missing(),) if p]
    if shutil.which("tc") is None:
        problems.append("missing tc (apt-get install iproute2)")
    return "; ".join(problems) or None


def nft(net: TwoHosts, *words: str) -> str:
    return net.exec(net.receiver, ["nft", *words]).stdout


def prepare_link(net: TwoHosts, scenario: Scenario) -> None:
    """The scenario's burst rule and bottleneck, and the byte counter of what the receiver
    gets (a chain after the loss rules: what they drop never reaches it)."""
    nft(net, "add", "table", "inet", BENCH_TABLE)
    for chain, priority in (("loss", 0), ("count", 10)):
        hook = f"{{ type filter hook input priority {priority}; policy accept; }}"
        nft(net, "add", "chain", "inet", BENCH_TABLE, chain, hook)
    nft(net, "add", "counter", "inet", BENCH_TABLE, "udp_in")
    nft(net, *f"add rule inet {BENCH_TABLE} count meta l4proto udp counter name udp_in".split())
    if scenario.burst:
        rule = f"add rule inet {BENCH_TABLE} loss meta l4proto udp {BURST} counter drop"
        nft(net, *rule.split())
    if scenario.rate:
        shape(net, "add", scenario.rate)


def shape(net: TwoHosts, verb: str, rate: str) -> None:
    net.exec(
        net.sender, ["tc", "qdisc", verb, "dev", VETH, "root", "tbf", "rate", rate, *TBF.split()]
    )


def udp_bytes_in(net: TwoHosts) -> int:
    words = nft(net, "list", "counter", "inet", BENCH_TABLE, "udp_in").split()
    return int(words[words.index("bytes") + 1])


def dropped(net: TwoHosts, scenario: Scenario) -> int:
    """Packets the link's loss rule dropped."""
    if scenario.loss:
        return net.dropped_packets()
    if scenario.burst:
        words = nft(net, "list", "chain", "inet", BENCH_TABLE, "loss").split()
        return int(words[words.index("packets") + 1])
    return 0


def start_sender(net: TwoHosts, impl: str, log: Path) -> SenderProcess:
    prefix = net.command(net.sender, [])
    if impl == "project":
        args = ["--source", "testsrc", "--host", net.sender_addr]
        return SenderProcess(args, log, prefix, PORT, startup_timeout=STARTUP_TIMEOUT)
    return SenderProcess(
        ["--host", net.sender_addr],
        log,
        prefix,
        PORT,
        module="bench.stock_sender",
        startup_timeout=STARTUP_TIMEOUT,
    )


def receiver_args(impl: str, url: str, seconds: float, stats: Path) -> list[str]:
    common = [url, "--duration", str(seconds), "--stats-json", str(stats)]
    if impl == "project":
        return ["-m", "receiver", *common, "--quiet"]
    return ["-m", "bench.stock_receiver", *common]


def run_one(scenario: Scenario, impl: str, seconds: float, logs: Path) -> dict[str, Any]:
    """One implementation over a fresh pair of namespaces shaped as ``scenario`` says."""
    base = logs / f"{scenario.name}-{impl}"
    stats_file = base.with_suffix(".stats.json")
    samples: list[tuple[float, int]] = []
    drop_at = seconds / 2 if scenario.drop_to else None
    changed_at = 0.0
    with two_hosts(scenario.loss) as net:
        prepare_link(net, scenario)
        sender = start_sender(net, impl, base.with_suffix(".sender.log"))
        try:
            with open(base.with_suffix(".receiver.log"), "wb") as log:
                args = receiver_args(impl, sender.url, seconds, stats_file)
                started = time.monotonic()
                proc = net.popen(net.receiver, args, stdout=subprocess.DEVNULL, stderr=log)
                deadline = started + seconds + RECEIVER_GRACE
                while True:
                    try:
                        proc.wait(timeout=SAMPLE_EVERY)
                        break
                    except subprocess.TimeoutExpired:
                        pass
                    now = time.monotonic() - started
                    samples.append((now, udp_bytes_in(net)))
                    if drop_at is not None and now >= drop_at and scenario.drop_to:
                        shape(net, "change", scenario.drop_to)
                        drop_at, changed_at = None, now
                    if time.monotonic() > deadline:
                        proc.kill()
                        proc.wait()
                        break
            total = udp_bytes_in(net)
            lost_on_link = dropped(net, scenario)
        finally:
            sender.stop()
    summary = json.loads(stats_file.read_text()) if stats_file.exists() else None
    result = figures(summary, total)
    result |= {"receiver_exit": proc.returncode, "dropped_by_link": lost_on_link}
    if scenario.drop_to:
        settled = changed_at + SETTLE_AFTER_DROP if drop_at is None else None
        result["link_changed_at_s"] = None if drop_at is not None else round(changed_at, 1)
        result["bitrate_after_drop_kbps"] = window_kbps(samples, settled)
    if proc.returncode != 0 or summary is None:
        tail = base.with_suffix(".receiver.log").read_text(errors="replace")[-600:]
        result["error"] = f"receiver exited {proc.returncode}: {tail.strip()}"
    result["receiver"] = summary
    return result


def figures(summary: dict[str, Any] | None, udp_bytes: int) -> dict[str, Any]:
    """The table's columns from a receiver's --stats-json summary and the byte counter."""
    empty: dict[str, Any] = dict.fromkeys(COLUMNS) | {"max_gap_ms": None, "reconnects": None}
    if not summary or not summary.get("seconds"):
        return empty
    seconds = summary["seconds"]
    latency = summary.get("latency_ms") or {}
    return {
        "fps": summary["fps"],
        "p50_ms": latency.get("p50"),
        "p95_ms": latency.get("p95"),
        "freezes_per_min": round(summary["freezes"] * 60 / seconds, 2),
        "bitrate_kbps": round(udp_bytes * 8 / seconds / 1000, 1),
        "max_gap_ms": summary["max_gap_ms"],
        "reconnects": summary.get("reconnects"),
    }


def window_kbps(samples: list[tuple[float, int]], start: float | None) -> float | None:
    """kbit/s between the first sample at or after ``start`` and the last one."""
    if start is None:
        return None
    window = [s for s in samples if s[0] >= start]
    if len(window) < 2 or window[-1][0] <= window[0][0]:
        return None
    (t0, b0), (t1, b1) = window[0], window[-1]
    return round((b1 - b0) * 8 / (t1 - t0) / 1000, 1)


def ratio(project: float | None, stock: float | None) -> float | None:
    return round(project / stock, 2) if project is not None and stock else None


def machine() -> dict[str, Any]:
    return cpu_machine() | {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "aiortc": _version("aiortc"),
        "av": _version("av"),
    }


def _version(package: str) -> str:
    from importlib.metadata import version

    return version(package)


def measure(scenarios: list[Scenario], seconds: float, logs: Path) -> dict[str, Any]:
    results: dict[str, Any] = {"machine": machine(), "seconds": seconds, "scenarios": []}
    for i, scenario in enumerate(scenarios):
        row: dict[str, Any] = {"scenario": scenario.name, "link": scenario.label}
        # Interleaved: which one goes first alternates, so load drift hits both alike.
        for impl in IMPLS if i % 2 == 0 else IMPLS[::-1]:
            row[impl] = run_one(scenario, impl, seconds, logs)
            shown = {k: row[impl].get(k) for k in (*COLUMNS, "max_gap_ms", "error")}
            print(f"  {scenario.name} {impl}: {json.dumps(shown)}", file=sys.stderr, flush=True)
        row["ratios"] = {c: ratio(row["project"][c], row["stock"][c]) for c in COLUMNS}
        results["scenarios"].append(row)
    return results


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def table(results: dict[str, Any]) -> str:
    rows = [
        "| link | fps stock / project | latency p50 ms stock / project (ratio) "
        "| p95 ms stock / project (ratio) | freezes per min stock / project "
        "| longest gap ms stock / project | kbit/s received stock / project (ratio) |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in results["scenarios"]:
        s, p, r = row["stock"], row["project"], row["ratios"]
        cells = [
            row["link"],
            f"{_fmt(s['fps'])} / {_fmt(p['fps'])}",
            f"{_fmt(s['p50_ms'])} / {_fmt(p['p50_ms'])} ({_fmt(r['p50_ms'])})",
            f"{_fmt(s['p95_ms'])} / {_fmt(p['p95_ms'])} ({_fmt(r['p95_ms'])})",
            f"{_fmt(s['freezes_per_min'])} / {_fmt(p['freezes_per_min'])}",
            f"{_fmt(s['max_gap_ms'])} / {_fmt(p['max_gap_ms'])}",
            f"{_fmt(s['bitrate_kbps'])} / {_fmt(p['bitrate_kbps'])} ({_fmt(r['bitrate_kbps'])})",
        ]
        rows.append("| " + " | ".join(cells) + " |")
    notes = []
    for row in results["scenarios"]:
        if "bitrate_after_drop_kbps" in row["project"]:
            notes.append(
                f"{row['link']}: kbit/s from {SETTLE_AFTER_DROP:g} s after the drop to the end, "
                f"stock / project: {_fmt(row['stock']['bitrate_after_drop_kbps'])} / "
                f"{_fmt(row['project']['bitrate_after_drop_kbps'])}."
            )
        for impl in IMPLS:
            if "error" in row[impl] or row[impl].get("reconnects"):
                notes.append(
                    f"{row['link']}, {impl}: receiver exit {row[impl]['receiver_exit']}, "
                    f"{row[impl].get('reconnects') or 0} reconnects."
                )
    return "\n".join(rows + (["", *notes] if notes else []))


def results_section(results: dict[str, Any]) -> str:
    m = results["machine"]
    load = " ".join(str(x) for x in m["load_average_at_start"])
    return "\n".join(
        [
            BEGIN,
            f"Run on {m['date']}: {m['nproc']} cores ({m['cpu']}), Linux {m['kernel']}, "
            f"Python {m['python']}, aiortc {m['aiortc']}, PyAV {m['av']}; load average at the "
            f"start {load}. {results['seconds']:g} s per implementation and link; "
            "ratios are project / stock.",
            "",
            table(results),
            END,
        ]
    )


TEMPLATE = """# Networks

The project's sender and receiver against the stock aiortc pattern across two network
namespaces, under loss and behind narrow links: `make bench-net` (`python -m bench.net`).

## Results

{results}

## What helps under loss

(To be written.)
"""


def write_markdown(path: Path, results: dict[str, Any]) -> None:
    """Replace the results section of ``path`` (the text around it is kept), or write a new
    page around it."""
    section = results_section(results)
    if path.exists() and BEGIN in (text := path.read_text()) and END in text:
        before, rest = text.split(BEGIN, 1)
        after = rest.split(END, 1)[1]
        path.write_text(before + section + after)
    else:
        path.write_text(TEMPLATE.format(results=section))


def scenario_names(text: str) -> list[Scenario]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in BY_NAME]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown scenario {', '.join(unknown) or '(none)'}; choose from {', '.join(BY_NAME)}"
        )
    return [BY_NAME[n] for n in names]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument(
        "--markdown", metavar="FILE", help="write the table into FILE (docs/networks.md)"
    )
    parser.add_argument(
        "--seconds", type=float, metavar="S", help=f"per implementation and link ({SECONDS:g})"
    )
    parser.add_argument(
        "--quick", action="store_true", help=f"{QUICK_SECONDS:g} s per run: a smoke run"
    )
    parser.add_argument(
        "--scenarios",
        type=scenario_names,
        default=list(SCENARIOS),
        metavar="NAME,...",
        help=f"only these links ({', '.join(BY_NAME)})",
    )
    parser.add_argument(
        "--logs", metavar="DIR", help="keep each sender's and receiver's log and summary in DIR"
    )
    args = parser.parse_args(argv)
    seconds = args.seconds or (QUICK_SECONDS if args.quick else SECONDS)
    if problem := missing_requirements():
        print(f"bench-net: skipped: {problem}")
        return 0
    started = time.monotonic()
    if args.logs:
        logs = Path(args.logs).resolve()  # the receivers run in the checkout
        logs.mkdir(parents=True, exist_ok=True)
        results = measure(args.scenarios, seconds, logs)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-net-") as temporary:
            results = measure(args.scenarios, seconds, Path(temporary))
    results["wall_seconds"] = round(time.monotonic() - started, 1)
    print(table(results))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    if args.markdown:
        write_markdown(Path(args.markdown), results)
    print(f"bench-net: {results['wall_seconds']:g} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
