"""``webcam-receiver URL``: receive the sender's video, decode it, and show, record,
save or count the frames."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Callable

from common.cli import CliError, positive, run_main, stop_on_signals
from common.ice import parse_ice_server
from common.logs import setup_logging

from .client import Receiver, ReceiverError
from .recorder import MODES
from .signalling import SIGNALLING, SignallingError, tls_context
from .sinks import DisplaySink, RecordSink, Sink, SinkError, SnapshotSink
from .stats import FrameStats

logger = logging.getLogger(__name__)
PROG = "webcam-receiver"
TOKEN_ENV = "WEBCAM_RECEIVER_TOKEN"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    parser.add_argument(
        "url", help="the sender's URL (http://127.0.0.1:8080) or any WHEP endpoint URL"
    )
    parser.add_argument(
        "--signalling",
        choices=SIGNALLING,
        default="whep",
        help="whep (default: POST /whep) or json (the tutorial's POST /offer)",
    )
    parser.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"bearer token the sender requires (or set {TOKEN_ENV})",
    )
    parser.add_argument("--cafile", metavar="FILE", help="trust this CA for an HTTPS sender")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the sender's HTTPS certificate"
    )
    parser.add_argument("--display", action="store_true", help="show the picture in a window")
    parser.add_argument(
        "--record", metavar="FILE", help="record to a video file (.mkv, .mp4, .webm)"
    )
    parser.add_argument("--snapshots", metavar="DIR", help="save image files into DIR")
    parser.add_argument(
        "--snapshot-every", type=positive(int), default=30, metavar="N", help="every Nth frame (30)"
    )
    parser.add_argument("--frames", type=positive(int), metavar="N", help="stop after N frames")
    parser.add_argument(
        "--duration", type=positive(float), metavar="S", help="stop after S seconds"
    )
    parser.add_argument(
        "--connect-timeout", type=positive(float), default=10.0, metavar="S", help="(10)"
    )
    parser.add_argument("--ice-server", action="append", default=[], metavar="URL")
    parser.add_argument(
        "--record-mode",
        choices=MODES,
        default="copy",
        help="copy: keep the received VP8/H.264 as it is (default: lossless, almost no CPU); "
        "encode: re-encode the decoded frames",
    )
    parser.add_argument(
        "--segment-seconds",
        type=positive(float),
        metavar="N",
        help="start a new recording file every N s (name --record with strftime fields)",
    )
    parser.add_argument(
        "--max-retries",
        type=int,
        default=3,
        metavar="N",
        help="reconnect up to N times in a row when the sender is away (3)",
    )
    parser.add_argument("--retry-forever", action="store_true", help="never give up reconnecting")
    parser.add_argument(
        "--stall-timeout",
        type=positive(float),
        default=3.0,
        metavar="S",
        help="treat S seconds without video as a lost connection (3)",
    )
    parser.add_argument("--quiet", action="store_true", help="no status line, warnings only")
    parser.add_argument("--stats-json", metavar="FILE", help="write the final summary as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser.parse_args(argv)


def make_sinks(args: argparse.Namespace, request_keyframe: Callable[[], None]) -> list[Sink]:
    sinks: list[Sink] = []
    if args.display:
        sinks.append(DisplaySink())
    if args.record:
        sinks.append(
            RecordSink(
                args.record,
                segment_seconds=args.segment_seconds,
                mode=args.record_mode,
                request_keyframe=request_keyframe,
            )
        )
    if args.snapshots:
        sinks.append(SnapshotSink(args.snapshots, args.snapshot_every))
    return sinks


async def report_status(stats: FrameStats) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(stats.status_line(), file=sys.stderr, flush=True)


class Retry:
    """Exponential backoff between connection attempts: 0.25 s doubling, capped at 5 s."""

    FIRST, CAP = 0.25, 5.0

    def __init__(self, max_retries: int | None) -> None:
        self.max_retries = max_retries  # None: forever
        self.failures = 0

    def next_delay(self) -> float | None:
        """The wait before the next attempt, or None when the retries are used up."""
        self.failures += 1
        if self.max_retries is not None and self.failures > self.max_retries:
            return None
        return min(self.CAP, self.FIRST * 2 ** (self.failures - 1))


class Run:
    """Connections, one after the other, feeding the same sinks and statistics."""

    def __init__(self, args: argparse.Namespace, tls: object) -> None:
        self.args = args
        self.sinks = make_sinks(args, self.request_keyframe)
        self.copying = [s for s in self.sinks if getattr(s, "copies", False)]
        self.decoding = [s for s in self.sinks if s not in self.copying]
        self.current: Receiver | None = None
        self.tls = tls
        self.stats = FrameStats()
        self.retry = Retry(None if args.retry_forever else args.max_retries)
        self.deadline = time.monotonic() + args.duration if args.duration else None

    def receiver(self) -> Receiver:
        args = self.args
        return Receiver(
            args.url,
            ice_servers=args.ice_server,
            connect_timeout=args.connect_timeout,
            signalling=args.signalling,
            token=args.token,
            tls=self.tls,
            stall_timeout=args.stall_timeout,
            stats=self.stats,
            encoded=bool(self.copying),
            # with no sink at all it decodes, to read the stamps for the statistics
            decode=bool(self.decoding) or not self.copying,
            codecs=self.copying[0].codecs() if self.copying else None,
        )

    def request_keyframe(self) -> None:
        if self.current is not None:
            self.current.request_keyframe()

    async def __call__(self) -> None:
        status = None
        try:
            while True:
                rx = self.current = self.receiver()
                try:
                    try:
                        await rx.connect()
                    except ReceiverError as exc:
                        await self.wait_to_retry(str(exc))
                        continue
                    self.retry.failures = 0
                    if status is None and not self.args.quiet:
                        status = asyncio.create_task(report_status(self.stats))
                    if await self.pump(rx):
                        return
                finally:
                    await rx.close()
                reason = rx.ended or "the connection ended"
                await self.wait_to_retry(f"{reason} after {self.stats.frames} frames")
                self.stats.gap()
                for sink in self.sinks:
                    await sink.gap()
        finally:
            if status is not None:
                status.cancel()

    async def wait_to_retry(self, reason: str) -> None:
        delay = self.retry.next_delay()
        if delay is None:
            raise ReceiverError(reason)
        logger.warning("%s; retrying in %.2g s", reason, delay)
        await asyncio.sleep(delay)

    async def pump(self, rx: Receiver) -> bool:
        """Feed frames to the sinks; True when the run is over (--frames, --duration, a
        closed window), False when the connection was lost."""
        loops = [self.decoded(rx)] if rx.decode else []
        if self.copying:
            loops.append(self.encoded(rx))
        tasks = [asyncio.create_task(loop) for loop in loops]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        return any(task.result() for task in done)

    async def decoded(self, rx: Receiver) -> bool:
        async for frame in rx.frames():
            for sink in self.decoding:
                await sink.write(frame)
            if self.finished():
                return True
        return False

    async def encoded(self, rx: Receiver) -> bool:
        async for frame in rx.encoded_frames():
            for sink in self.copying:
                await sink.write(frame)
            if not rx.decode and self.finished():
                return True
        return False

    def finished(self) -> bool:
        args = self.args
        if args.frames and self.stats.frames >= args.frames:
            return True
        if self.deadline is not None and time.monotonic() >= self.deadline:
            return True
        return any(isinstance(s, DisplaySink) and s.closed_by_user.is_set() for s in self.sinks)


async def run(args: argparse.Namespace) -> int:
    for url in args.ice_server:
        try:
            parse_ice_server(url)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    try:
        session = Run(args, tls_context(args.cafile, args.insecure))
    except (SignallingError, SinkError, ReceiverError) as exc:
        raise CliError(str(exc)) from None
    sinks = session.sinks
    stop = asyncio.Event()
    failure: BaseException | None = None
    try:
        with stop_on_signals(stop):
            work = asyncio.create_task(session())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            stopper.cancel()
            if not work.done():  # Ctrl-C / SIGTERM: stop at once, cleanly
                work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
    except (ReceiverError, SinkError) as exc:
        failure = exc
    finally:
        for sink in sinks:
            try:
                await sink.close()
            except SinkError as exc:
                failure = failure or exc
        write_summary(session.stats, args)
    if failure is not None:
        raise CliError(str(failure), code=1)
    return 0


def write_summary(stats: FrameStats, args: argparse.Namespace) -> None:
    summary = stats.summary()
    if not args.quiet:
        print(f"{PROG}: {json.dumps(summary)}", file=sys.stderr)
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose, quiet=args.quiet)
    return run_main(PROG, run(args))


if __name__ == "__main__":
    sys.exit(main())
