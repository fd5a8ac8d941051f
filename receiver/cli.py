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

from common.cli import CliError, fail, positive, stop_on_signals
from common.ice import parse_ice_server
from common.logs import setup_logging

from .client import Receiver, ReceiverError
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
    parser.add_argument("--quiet", action="store_true", help="no status line, warnings only")
    parser.add_argument("--stats-json", metavar="FILE", help="write the final summary as JSON")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    return parser.parse_args(argv)


def make_sinks(args: argparse.Namespace) -> list[Sink]:
    sinks: list[Sink] = []
    if args.display:
        sinks.append(DisplaySink())
    if args.record:
        sinks.append(RecordSink(args.record))
    if args.snapshots:
        sinks.append(SnapshotSink(args.snapshots, args.snapshot_every))
    return sinks


async def report_status(stats: FrameStats) -> None:
    while True:
        await asyncio.sleep(1.0)
        print(stats.status_line(), file=sys.stderr, flush=True)


async def pump(rx: Receiver, sinks: list[Sink], args: argparse.Namespace) -> None:
    """Feed frames to the sinks until --frames, --duration, a closed window or the stream ends."""
    deadline = time.monotonic() + args.duration if args.duration else None
    async for frame in rx.frames():
        for sink in sinks:
            await sink.write(frame)
        if args.frames and rx.stats.frames >= args.frames:
            return
        if deadline is not None and time.monotonic() >= deadline:
            return
        if any(isinstance(s, DisplaySink) and s.closed_by_user.is_set() for s in sinks):
            return
    raise ReceiverError(f"the sender ended the stream after {rx.stats.frames} frames")


async def run(args: argparse.Namespace) -> int:
    for url in args.ice_server:
        try:
            parse_ice_server(url)
        except ValueError as exc:
            raise CliError(str(exc)) from None
    try:
        sinks = make_sinks(args)
    except SinkError as exc:
        raise CliError(str(exc)) from None
    try:
        tls = tls_context(args.cafile, args.insecure)
    except SignallingError as exc:
        raise CliError(str(exc)) from None
    try:
        rx = Receiver(
            args.url,
            ice_servers=args.ice_server,
            connect_timeout=args.connect_timeout,
            signalling=args.signalling,
            token=args.token,
            tls=tls,
        )
    except ReceiverError as exc:
        raise CliError(str(exc)) from None
    stop = asyncio.Event()
    status = None
    try:
        with stop_on_signals(stop):
            connect = asyncio.create_task(rx.connect())
            stopper = asyncio.create_task(stop.wait())
            await asyncio.wait({connect, stopper}, return_when=asyncio.FIRST_COMPLETED)
            if not connect.done():  # interrupted while connecting
                connect.cancel()
                return 0
            connect.result()
            if not args.quiet:
                status = asyncio.create_task(report_status(rx.stats))
            work = asyncio.create_task(pump(rx, sinks, args))
            await asyncio.wait({work, stopper}, return_when=asyncio.FIRST_COMPLETED)
            work.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await work
            stopper.cancel()
    except (ReceiverError, SinkError) as exc:
        raise CliError(str(exc), code=1) from None
    finally:
        if status is not None:
            status.cancel()
        await rx.close()
        for sink in sinks:
            with contextlib.suppress(SinkError):
                await sink.close()
        write_summary(rx.stats, args)
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
    try:
        return asyncio.run(run(args))
    except CliError as exc:
        return fail(PROG, exc)
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
