"""The stock aiortc viewer of the network benchmark, as a command like ``python -m receiver``.

    python -m bench.stock_receiver http://HOST:PORT --duration 30 --stats-json FILE

A plain ``RTCPeerConnection`` with aiortc's defaults (its jitter buffer, one NACK per lost
packet, its decoder) offers recvonly to the stock sender's JSON ``/offer``, as the
tutorial's page does (``bench.viewers.PlainViewer``), and decodes for ``--duration``
seconds counted from its first frame, as the project's receiver counts them. Every
decoded frame goes through the project receiver's own ``FrameStats``, so the summary
(fps, capture-to-decoded latency from the frame stamp, gaps, freezes over 250 ms, RTP
counters) has the same keys and the same definitions as ``--stats-json`` of
``python -m receiver``. It is printed on stdout and written to ``--stats-json``.
Exit 1 when no frame was decoded.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
import time

import aiohttp
import av
from aiortc.mediastreams import MediaStreamError

from bench.viewers import PlainViewer
from receiver.stats import FrameStats

logger = logging.getLogger(__name__)
CONNECT_TIMEOUT = 30.0


async def watch(url: str, duration: float, connect_timeout: float = CONNECT_TIMEOUT) -> FrameStats:
    """Decode the stock sender's video until ``duration`` s after the first frame (which
    must come within ``connect_timeout``); the counters."""
    deadline = time.monotonic() + connect_timeout
    stats = FrameStats()
    viewer = PlainViewer(url)
    try:
        track = await asyncio.wait_for(viewer.connect(), connect_timeout)
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                frame = await asyncio.wait_for(track.recv(), remaining)
            except (TimeoutError, MediaStreamError):
                break
            assert isinstance(frame, av.VideoFrame)  # a video track's recv()
            if not stats.frames:
                deadline = time.monotonic() + duration
            stats.update(frame)
        for report in (await viewer.pc.getStats()).values():
            if report.type == "inbound-rtp":
                stats.add_transport(report.packetsReceived, report.packetsLost, report.jitter)
    finally:
        await viewer.close()
    return stats


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("url", help="the stock sender's URL (it answers POST /offer)")
    parser.add_argument("--duration", type=float, default=30.0, metavar="S")
    parser.add_argument("--connect-timeout", type=float, default=CONNECT_TIMEOUT, metavar="S")
    parser.add_argument("--stats-json", metavar="FILE", help="write the summary as JSON")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    stats = None
    try:
        stats = asyncio.run(watch(args.url, args.duration, args.connect_timeout))
    except (OSError, TimeoutError, aiohttp.ClientError) as exc:  # refused, unreachable, late
        print(f"stock-receiver: {args.url}: {str(exc) or type(exc).__name__}", file=sys.stderr)
    summary = (stats or FrameStats()).summary()
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)
    print(json.dumps(summary), flush=True)
    return 0 if summary["frames"] else 1


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
