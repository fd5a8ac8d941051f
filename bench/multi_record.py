"""One receiver process recording several cameras of one sender (``--record-mode copy``):
the receiver's CPU, and the frame rate each camera's recording got.

    python -m bench.multi_record                 # 4 cameras, 1920x1080, 30 fps, H.264
    python -m bench.multi_record --cameras 2 --size 640x480 --seconds 5 --json out.json

The cameras are the sender's fake cameras (``--source camN=testsrc``). The CPU of both
processes is read from /proc/PID/stat (user + system time) over the measured window,
after a warm-up in which every recording has started; 1.0 is one core busy. The sender's
CPU is reported too: if it is near the machine's core count, it could not encode every
camera in time, and the frame rates say so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import av

from common.cli import positive, size

from .senders import ROOT, SenderProcess, child_env, stop_process

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime


def recorded_size(path: Path) -> str:
    """The picture size of a recording's first frame (the sender may send a lower tier
    than ``--size`` when its bandwidth estimate is low; a fixed --bitrate avoids that)."""
    with av.open(str(path)) as container:
        for frame in container.decode(container.streams.video[0]):
            return f"{frame.width}x{frame.height}"
    return "-"


def measure(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    width, height = args.size
    names = [f"cam{n + 1}" for n in range(args.cameras)]
    sources = [arg for name in names for arg in ("--source", f"{name}=testsrc")]
    sender = SenderProcess(
        [*sources, "--size", f"{width}x{height}", "--fps", f"{args.fps:g}",
         "--codec", args.codec, "--encoder-speed", args.encoder_speed,
         *(["--bitrate", str(args.bitrate)] if args.bitrate else [])],
        workdir / "sender.log",
    )  # fmt: skip
    stats = workdir / "stats.json"
    total = args.warmup + args.seconds + 30  # the receiver is stopped before this ends
    log = open(workdir / "receiver.log", "wb")  # noqa: SIM115 - closed below
    receiver = subprocess.Popen(
        [sys.executable, "-m", "receiver", *(f"{sender.url}/whep/{n}" for n in names),
         "--record", str(workdir / "{name}.mkv"), "--record-mode", "copy",
         "--duration", f"{total:g}", "--stats-json", str(stats), "--quiet",
         "--connect-timeout", "30"],
        env=child_env(), cwd=ROOT, stderr=log,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        files = [workdir / f"{n}.mkv" for n in names]
        while not all(f.exists() and f.stat().st_size > 0 for f in files):
            if receiver.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"the recordings did not start: {(workdir / 'receiver.log').read_text()}"
                )
            time.sleep(0.2)
        time.sleep(args.warmup)
        started = time.monotonic()
        rx0, tx0 = cpu_seconds(receiver.pid), cpu_seconds(sender.proc.pid)
        time.sleep(args.seconds)
        elapsed = time.monotonic() - started
        rx1, tx1 = cpu_seconds(receiver.pid), cpu_seconds(sender.proc.pid)
        health = sender.health()
    finally:
        stop_process(receiver)  # SIGTERM: a clean stop, the summary written
        log.close()
        sender.stop()
    summaries = json.loads(stats.read_text())
    return {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
        },
        "options": {
            "cameras": args.cameras,
            "size": f"{width}x{height}",
            "fps": args.fps,
            "codec": args.codec,
            "encoder_speed": args.encoder_speed,
            "bitrate": args.bitrate,
            "seconds": args.seconds,
        },
        "receiver_cpu_cores": round((rx1 - rx0) / elapsed, 3),
        "sender_cpu_cores": round((tx1 - tx0) / elapsed, 3),
        "cameras": {
            name: {
                "fps": summaries[name]["fps"] if summaries.get(name) else 0.0,
                "frames": summaries[name]["frames"] if summaries.get(name) else 0,
                "source_state": health["cameras"][name]["source_state"],
                "recorded_size": recorded_size(workdir / f"{name}.mkv"),
            }
            for name in names
        },
    }


def report(result: dict[str, Any]) -> str:
    options = result["options"]
    lines = [
        f"{options['cameras']} cameras {options['size']}@{options['fps']:g} "
        f"{options['codec']} ({options['encoder_speed']}, "
        f"{options['bitrate'] or 'adaptive'} bit/s), one receiver, --record-mode copy, "
        f"{options['seconds']:g} s on {result['machine']['cores']} cores:",
        f"  receiver CPU: {result['receiver_cpu_cores']:.3f} cores",
        f"  sender CPU:   {result['sender_cpu_cores']:.3f} cores",
    ]
    for name, camera in result["cameras"].items():
        lines.append(
            f"  {name}: {camera['fps']:.1f} fps recorded at {camera['recorded_size']} "
            f"({camera['frames']} frames)"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cameras", type=positive(int), default=4)
    parser.add_argument("--size", type=size, default=(1920, 1080))
    parser.add_argument("--fps", type=positive(float), default=30.0)
    parser.add_argument("--codec", choices=("vp8", "h264"), default="h264")
    parser.add_argument("--encoder-speed", choices=("fast", "balanced", "quality"), default="fast")
    parser.add_argument(
        "--bitrate",
        type=int,
        default=4_000_000,
        help="each camera's fixed bitrate, so the full --size is sent (4000000; 0: adaptive)",
    )
    parser.add_argument("--seconds", type=positive(float), default=20.0, help="measured (20)")
    parser.add_argument("--warmup", type=float, default=5.0, help="seconds before (5)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="also write the result here")
    parser.add_argument("--keep", type=Path, metavar="DIR", help="keep the recordings in DIR")
    args = parser.parse_args(argv)
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
        result = measure(args, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="multi-record-") as workdir:
            result = measure(args, Path(workdir))
    print(report(result), flush=True)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
