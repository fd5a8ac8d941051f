"""Joining a running stream: how long a newcomer waits for its first decoded picture.

    python -m bench.join [--viewers 8] [--joining 8] [--rounds 3] [--size 640x480]
                         [--impl project|stock|both] [--json FILE]

A sender process (ours, or the stock aiortc one of ``bench/stock_sender.py``) on the fake
camera serves ``--viewers`` decoding ``Receiver``s that already get pictures (in a process
of their own, as other viewers are elsewhere); then ``--joining`` more join at once from
this process, and each newcomer's time from its request (the ``Receiver`` starts
connecting: OPTIONS, offer, ICE, DTLS) until ``connect()`` returns with its first decoded
frame is taken. The newcomers leave and the next round joins again. Prints p50/p95 per
implementation and checks the target for ours: p95 at most 0.3 s (exit 1 if not).
``tests/test_join.py`` runs ``join_times`` (everyone in one process) with a looser bound.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import queue
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.senders import ROOT, SenderProcess, child_env
from bench.viewers import percentile
from receiver import Receiver

TARGET_P95_SECONDS = 0.3
CONNECT_TIMEOUT = 30.0
READY_TIMEOUT = 120.0  # the first viewers, on two busy cores
STARTUP_TIMEOUT = 60.0
SIGNALLING = {"project": "whep", "stock": "json"}  # the stock sender has only /offer


async def _consume(rx: Receiver) -> None:
    """Take the frames as a viewer would (they are decoded either way)."""
    async for _ in rx.frames():
        pass


class Audience:
    """Receivers watching one sender and consuming their frames; ``close()`` ends them."""

    def __init__(self, url: str, signalling: str = "whep") -> None:
        self.url = url
        self.signalling = signalling
        self._watching: dict[Receiver, asyncio.Task[None]] = {}

    async def join(self) -> float:
        """One more viewer; seconds from its request to its first decoded frame."""
        started = time.monotonic()
        rx = Receiver(self.url, signalling=self.signalling, connect_timeout=CONNECT_TIMEOUT)
        try:
            await rx.connect()  # returns with the first frame decoded
        except BaseException:
            await rx.close()
            raise
        took = time.monotonic() - started
        self._watching[rx] = asyncio.create_task(_consume(rx))
        return took

    async def join_many(self, count: int) -> list[float]:
        """``count`` viewers join at once; each one's join time."""
        async with asyncio.TaskGroup() as group:
            joins = [group.create_task(self.join()) for _ in range(count)]
        return [join.result() for join in joins]

    async def leave(self, count: int) -> None:
        """The newest ``count`` viewers leave."""
        for rx in list(self._watching)[-count:]:
            self._watching.pop(rx).cancel()
            await rx.close()

    async def close(self) -> None:
        await self.leave(len(self._watching))


async def newcomers(url: str, signalling: str, joining: int, rounds: int) -> list[float]:
    """``rounds`` times, ``joining`` viewers join at once, then leave: their join times."""
    audience = Audience(url, signalling)
    times: list[float] = []
    try:
        for _ in range(rounds):
            times += await audience.join_many(joining)
            await audience.leave(joining)
    finally:
        await audience.close()
    return times


async def join_times(url: str, signalling: str, viewers: int, joining: int, rounds: int) -> dict:
    """Everyone in this process: ``viewers`` watch, then newcomers join (``newcomers``)."""
    audience = Audience(url, signalling)
    try:
        first = await audience.join_many(viewers)
        joins = await newcomers(url, signalling, joining, rounds)
    finally:
        await audience.close()
    return {"first_viewers_s": first, "joins_s": joins, **summary(joins)}


def summary(seconds: list[float]) -> dict:
    return {
        "p50_s": round(percentile(seconds, 50) or 0.0, 3),
        "p95_s": round(percentile(seconds, 95) or 0.0, 3),
        "max_s": round(max(seconds), 3),
    }


def start(impl: str, size: str, logs: Path) -> SenderProcess:
    """Our sender or the stock one, on the fake camera, on a free port."""
    if impl == "project":
        args = ["--source", "testsrc", "--size", size, "--max-viewers", "64"]
        return SenderProcess(args, logs / "project.log", startup_timeout=STARTUP_TIMEOUT)
    return SenderProcess(
        ["--size", size], logs / "stock.log", module="bench.stock_sender",
        startup_timeout=STARTUP_TIMEOUT,
    )  # fmt: skip


class Watchers:
    """``count`` viewers in a process of their own (``--watch``), getting pictures from
    the moment the constructor returns until ``stop()``."""

    def __init__(self, url: str, signalling: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bench.join", "--watch", url,
             "--signalling", signalling, "--viewers", str(count)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=child_env(), cwd=ROOT,
        )  # fmt: skip
        lines: queue.Queue[bytes] = queue.Queue()
        stdout = self.proc.stdout
        assert stdout is not None
        threading.Thread(target=lambda: lines.put(stdout.readline()), daemon=True).start()
        try:
            line = lines.get(timeout=READY_TIMEOUT)
        except queue.Empty:
            line = b""
        if not line.startswith(b"ready"):
            self.stop()
            raise RuntimeError(f"the first {count} viewers did not all get a picture")

    def stop(self) -> None:
        """Close their stdin (they leave), then wait for them."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


async def watch(url: str, signalling: str, count: int) -> None:
    """The ``--watch`` process: ``count`` viewers; "ready" once each has a picture; they
    leave when stdin closes."""
    audience = Audience(url, signalling)
    try:
        await audience.join_many(count)
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.read)
    finally:
        await audience.close()


def measure(impl: str, args: argparse.Namespace, logs: Path) -> dict:
    sender = start(impl, args.size, logs)
    try:
        watchers = Watchers(sender.url, SIGNALLING[impl], args.viewers)
        try:
            joins = asyncio.run(newcomers(sender.url, SIGNALLING[impl], args.joining, args.rounds))
        finally:
            watchers.stop()
    finally:
        sender.stop()
    return {"joins_s": [round(t, 4) for t in joins], **summary(joins)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--viewers", type=int, default=8, help="viewers already watching (8)")
    parser.add_argument("--joining", type=int, default=8, help="viewers joining at once (8)")
    parser.add_argument("--rounds", type=int, default=3, help="how often they join (3)")
    parser.add_argument("--size", default="640x480")
    parser.add_argument("--impl", choices=["project", "stock", "both"], default="both")
    parser.add_argument("--json", metavar="FILE", help="write the results as JSON")
    parser.add_argument("--watch", metavar="URL", help=argparse.SUPPRESS)  # the watchers
    parser.add_argument("--signalling", default="whep", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.watch:
        asyncio.run(watch(args.watch, args.signalling, args.viewers))
        return 0
    impls = ["stock", "project"] if args.impl == "both" else [args.impl]
    results: dict = {k: getattr(args, k) for k in ("size", "viewers", "joining", "rounds")}
    with tempfile.TemporaryDirectory(prefix="bench-join-") as logs:
        for impl in impls:
            results[impl] = r = measure(impl, args, Path(logs))
            print(
                f"{impl}: {args.joining} joining {args.viewers} at {args.size}, "
                f"{len(r['joins_s'])} joins: first frame p50 {r['p50_s'] * 1000:.0f} ms, "
                f"p95 {r['p95_s'] * 1000:.0f} ms, max {r['max_s'] * 1000:.0f} ms",
                flush=True,
            )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    if "project" not in results:
        return 0
    met = results["project"]["p95_s"] <= TARGET_P95_SECONDS
    print(f"project p95 <= {TARGET_P95_SECONDS} s: {'met' if met else 'NOT met'}")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
