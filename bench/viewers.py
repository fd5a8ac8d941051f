"""Benchmark viewers, run in their own process so the sender's CPU is the sender's.

``latency``: one decoding viewer; ``project`` uses our Receiver (WHEP, low-latency
jitter buffer), ``stock`` a plain aiortc RTCPeerConnection with aiortc's defaults; for
ours it also gives the codec's own time on the measured frames (the sender's encoder from
its ``/metrics``, the receiver's decoder from its breakdown).
``load``: N viewers that count complete frames without decoding them, while the
sender's CPU time is read from /proc. ``cycles``: connect, get a frame, leave, K times,
reading the sender's resident memory. Prints one JSON object on stdout.

``latency`` and ``load`` wait until the sender has *settled* (at most ``--settle``
seconds): our sender starts a new viewer above 640x480 on its reduced tier (half the
size) and moves it up once its bandwidth estimate allows (10-20 s on loopback), and at
every size it steps the bitrate up from 300 kbit/s, each step a new encoder and a
keyframe, until the estimate reaches the most the tier may use (on loopback nothing
limits it: about 25 s from the start); measuring before that would time a smaller picture,
or a cheaper one with keyframes in it. ``latency`` waits for the first decoded frame of
the full ``--size`` once the sender's /healthz shows its bitrate at the top; ``load``
polls /healthz until every viewer is on the full tier and at the top (the stock sender
has no tiers and no steps: its aiortc encoders follow each REMB at once, so it is
settled at once). Each result says how long that took and whether it happened, and what
the sender was encoding at the end (our tiers' sizes and bitrates; the stock sender's
per-viewer encoder bitrates).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import statistics
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import aiortc.rtcrtpreceiver
import av
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from bench import breakdown
from common import stamp
from common.cli import size as parse_size
from receiver import Receiver
from receiver.stats import read_stamp
from sender.encoding import BITRATE_CHANGE

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


class CountingDecoder:
    """Stands in for aiortc's decoder: one tiny frame per complete encoded frame."""

    def __init__(self) -> None:
        self._frame = av.VideoFrame(16, 16, "yuv420p")

    def decode(self, encoded_frame: object) -> list[av.VideoFrame]:
        return [self._frame]


def count_without_decoding() -> None:
    aiortc.rtcrtpreceiver.get_decoder = lambda codec: CountingDecoder()


class PlainViewer:
    """A plain aiortc peer speaking the JSON /offer, as the tutorial's page does."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/") + "/offer"
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    async def connect(self) -> MediaStreamTrack:
        pc = self.pc
        pc.on("track", lambda t: self.track.done() or self.track.set_result(t))
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        body = {"sdp": pc.localDescription.sdp, "type": "offer"}
        async with aiohttp.ClientSession() as http, http.post(self.url, json=body) as resp:
            resp.raise_for_status()
            answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        return await self.track

    async def close(self) -> None:
        await self.pc.close()


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


@dataclass(frozen=True)
class Watched:
    """One viewing: when the first frame came, and what arrived after it (after the
    first full-size frame, when ``watch()`` was given a size)."""

    first_frame: float  # seconds from the start, connection included
    seconds: float  # from the first (full-size) frame to the last
    bitrate: float  # bits/s received over the transport in that time (RTP and RTCP)
    settle: float = 0.0  # seconds from the first frame to the first full-size one at the top
    settled: bool = True  # False: none within ``settle``; measured anyway
    frame_size: str = ""  # WxH of the last frame
    encoding: Any = None  # what the sender was encoding at the end (``encoding()``)
    # The codec's own time on the measured frames, project only (None: not known): the
    # sender's encoder, p50 of its ``webcam_encoding_seconds`` over the measurement, and
    # our receiver's decoder, p50 of its decode times (``LoopDecoder``) of those frames.
    encoding_ms: float | None = None
    decoding_ms: float | None = None
    # One frame's encode + decode, p50 (``breakdown.codec_p50_ms``), not the p50s' sum.
    codec_ms: float | None = None


async def _track_frames(track: MediaStreamTrack) -> AsyncIterator[av.VideoFrame]:
    while True:
        frame = await track.recv()
        assert isinstance(frame, av.VideoFrame)  # a video track's recv()
        yield frame


async def _bytes_received(pc: RTCPeerConnection) -> int:
    reports = (await pc.getStats()).values()
    return sum(r.bytesReceived for r in reports if r.type == "transport")


async def watch(
    url: str,
    impl: str,
    seconds: float,
    on_frame: Callable[[av.VideoFrame], None],
    size: tuple[int, int] | None = None,
    settle: float = 0.0,
) -> Watched:
    """Decode ``url``'s video until ``seconds`` after the first frame, each frame to
    ``on_frame``: ``project`` with our Receiver (WHEP, low-latency jitter buffer), ``stock``
    with a plain aiortc RTCPeerConnection with aiortc's defaults. With ``size``, frames
    before the first one of that size once our sender's bitrate is at its top
    (``at_the_top``; within ``settle`` s of the first frame) are skipped, and the
    ``seconds`` count from that one."""
    started = time.monotonic()
    top = asyncio.Event()
    first_frame: float | None = None
    measuring: float | None = None  # since when (from the start)
    shape = ""
    decodes: deque[float] | None = None  # project: our receiver's decode times (ms)
    async with contextlib.AsyncExitStack() as stack:
        if size is not None:
            poller = asyncio.create_task(_until_at_the_top(url, top))
            stack.callback(poller.cancel)
        if impl == "project":
            rx = await stack.enter_async_context(Receiver(url, connect_timeout=30))
            frames = rx.frames()
            decodes = rx.stats.breakdown.stages_ms["decoding"]

            def pc() -> RTCPeerConnection:
                assert rx.connection is not None
                return rx.connection.pc
        else:
            viewer = PlainViewer(url)
            stack.push_async_callback(viewer.close)
            frames = _track_frames(await viewer.connect())

            def pc() -> RTCPeerConnection:
                return viewer.pc

        async for frame in frames:
            now = time.monotonic() - started
            if first_frame is None:
                first_frame = now
            shape = f"{frame.width}x{frame.height}"
            if measuring is None:
                right = size is None or ((frame.width, frame.height) == size and top.is_set())
                if not right and now - first_frame < settle:
                    continue
                measuring, settled = now, right
                first_bytes = await _bytes_received(pc())
                if decodes is not None:
                    encodes_before = await asyncio.to_thread(breakdown.sender_histograms, url)
                    decodes_before = len(decodes)
            on_frame(frame)
            if time.monotonic() - started - measuring >= seconds:
                break
        assert first_frame is not None and measuring is not None, (
            "the video ended before its first frame"
        )
        elapsed = time.monotonic() - started - measuring
        received = await _bytes_received(pc()) - first_bytes
        after = await health(url)  # still connected
        encoding_ms = decoding_ms = codec_ms = None
        if decodes is not None:
            encodes_after = await asyncio.to_thread(breakdown.sender_histograms, url)
            encodes = breakdown.since(encodes_before, encodes_after)
            measured = list(itertools.islice(decodes, decodes_before, None))
            encoding_ms = breakdown.encoding_p50_ms(encodes)
            decoding_ms = percentile(measured, 50)
            codec_ms = breakdown.codec_p50_ms(encodes, measured)
    return Watched(
        first_frame,
        elapsed,
        received * 8 / elapsed if elapsed > 0 else 0.0,
        settle=measuring - first_frame,
        settled=settled,
        frame_size=shape,
        encoding=encoding(after),
        encoding_ms=encoding_ms,
        decoding_ms=decoding_ms,
        codec_ms=codec_ms,
    )


async def _until_at_the_top(url: str, top: asyncio.Event) -> None:
    """Set ``top`` once the sender's encoders are at the top of their bitrate ramp."""
    while True:  # polled: /healthz is the only way to ask
        if at_the_top(await health(url)):
            top.set()
            return
        await asyncio.sleep(0.5)


async def latency(
    url: str, impl: str, seconds: float, size: tuple[int, int] | None = None, settle: float = 60.0
) -> dict[str, Any]:
    """Frame-stamp latency over ``seconds`` of frames of ``size`` (see ``watch()``)."""
    samples: list[float] = []

    def on_frame(frame: av.VideoFrame) -> None:
        now = stamp.now_us()  # as it arrived: reading the stamp is the measurement's
        if (found := read_stamp(frame)) is not None:
            samples.append(stamp.age_us(found, now) / 1000)

    watched = await watch(url, impl, seconds, on_frame, size, settle)
    return {
        "first_frame_ms": round(watched.first_frame * 1000, 1),
        "settle_ms": round(watched.settle * 1000, 1),
        "settled": watched.settled,  # False: measured on a smaller picture
        "frame_size": watched.frame_size,
        "latency_p50_ms": rounded(percentile(samples, 50), 2),
        "latency_p95_ms": rounded(percentile(samples, 95), 2),
        "frames": len(samples),
        "received_kbps": round(watched.bitrate / 1000, 1),
        "encoding": watched.encoding,
        "encoding_p50_ms": rounded(watched.encoding_ms, 3),
        "decoding_p50_ms": rounded(watched.decoding_ms, 3),
        "codec_p50_ms": rounded(watched.codec_ms, 3),
    }


def rounded(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


async def health(url: str) -> dict[str, Any] | None:
    """The sender's /healthz, or None when it has none."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(url.rstrip("/") + "/healthz", timeout=aiohttp.ClientTimeout(total=10)) as resp,
    ):
        if resp.status == 404:
            return None
        resp.raise_for_status()
        body: dict[str, Any] = await resp.json()
        return body


def on_full_tier(body: dict[str, Any] | None, viewers: int) -> bool:
    """Whether all ``viewers`` are on the full-size tier (always, for a sender without
    tiers: the stock one)."""
    if body is None or "viewer_tiers" not in body:
        return True
    tiers = body["viewer_tiers"]
    return len(tiers) >= viewers and all(t.get("tier") == "full" for t in tiers)


def encoding(body: dict[str, Any] | None) -> Any:
    """What the sender was encoding, for the record: our tiers (size, bitrate, viewers)
    or the stock sender's per-viewer encoder bitrates."""
    if body is None:
        return None
    return body["tiers"] if "tiers" in body else {"bitrates": body.get("bitrates")}


def _busy_tiers(body: dict[str, Any] | None) -> dict[tuple[str, str], dict[str, int]] | None:
    """Our sender's tiers with viewers, by codec and tier name (None for a sender without
    tiers: the stock one)."""
    if body is None or "tiers" not in body:
        return None
    return {
        (codec, name): tier
        for codec, tiers in body["tiers"].items()
        for name, tier in tiers.items()
        if tier["viewers"]
    }


def bitrates(body: dict[str, Any] | None) -> dict[tuple[str, str], int] | None:
    """Our sender's encoder bitrate per codec and tier with viewers (None: stock)."""
    tiers = _busy_tiers(body)
    return None if tiers is None else {key: tier["bitrate"] for key, tier in tiers.items()}


def at_the_top(body: dict[str, Any] | None) -> bool:
    """Whether our encoders have finished stepping their bitrate up: every tier with viewers
    has its target at the most it may use and its encoder within a step of it (always,
    for the stock sender: its aiortc encoders follow their viewers' REMB at once)."""
    tiers = _busy_tiers(body)
    if tiers is None:
        return True
    return bool(tiers) and all(
        t["target"] >= t["max"] and t["bitrate"] * (1 + BITRATE_CHANGE) >= t["target"]
        for t in tiers.values()
    )


async def settle_load(
    url: str, viewers: int, limit: float
) -> tuple[float, bool, dict[str, Any] | None]:
    """Wait (at most ``limit`` s) until every viewer is on the full tier and our encoders'
    bitrate has stopped stepping up: on loopback nothing limits it, so its ramp ends at the
    top, and each step on the way is a new encoder and a keyframe to every viewer, not the
    steady state a viewer count costs. The time it took, whether it happened, and the
    last /healthz read."""
    started = time.monotonic()
    while True:
        body = await health(url)
        if on_full_tier(body, viewers) and at_the_top(body):
            return time.monotonic() - started, True, body
        if time.monotonic() - started >= limit:
            return time.monotonic() - started, False, body
        await asyncio.sleep(0.5)


async def measured(
    pid: int, seconds: float, warmup: float, measuring: asyncio.Event
) -> tuple[float, float]:
    """After ``warmup`` s, measure for ``seconds`` (``measuring`` set meanwhile, for the
    viewers to count their frames): process ``pid``'s CPU seconds, and the wall seconds."""
    await asyncio.sleep(warmup)
    cpu_start, wall_start = cpu_seconds(pid), time.monotonic()
    measuring.set()
    await asyncio.sleep(seconds)
    measuring.clear()
    return cpu_seconds(pid) - cpu_start, time.monotonic() - wall_start


def load_figures(viewers: int, cpu: float, wall: float, counts: list[int]) -> dict[str, Any]:
    """A load measurement's figures: the sender's cores (``cpu`` seconds over ``wall``)
    and each viewer's frames a second, the slowest and on average."""
    fps = [count / wall for count in counts]
    return {
        "viewers": viewers,
        "sender_cpu": round(cpu / wall, 3),
        "fps_min": round(min(fps), 1),
        "fps_mean": round(statistics.mean(fps), 1),
    }


async def load(
    url: str, viewers: int, seconds: float, warmup: float, pid: int, settle: float = 60.0
) -> dict[str, Any]:
    count_without_decoding()
    peers = [PlainViewer(url) for _ in range(viewers)]
    counts = [0] * viewers
    measuring = asyncio.Event()
    done = asyncio.Event()

    async def watch(i: int, track: MediaStreamTrack) -> None:
        while not done.is_set():
            try:
                await track.recv()
            except MediaStreamError:
                return
            if measuring.is_set():
                counts[i] += 1

    try:
        tracks = await asyncio.gather(*(p.connect() for p in peers))
        tasks = [asyncio.create_task(watch(i, t)) for i, t in enumerate(tracks)]
        settle_s, settled, settled_body = await settle_load(url, viewers, settle)
        before = bitrates(settled_body)
        cpu, wall = await measured(pid, seconds, warmup, measuring)
        after = await health(url)  # what the sender was encoding at the end
        done.set()
        for task in tasks:
            task.cancel()
    finally:
        await asyncio.gather(*(p.close() for p in peers))
    return {
        **load_figures(viewers, cpu, wall, counts),
        "settle_s": round(settle_s, 1),
        "settled": settled and on_full_tier(after, viewers) and at_the_top(after),
        "steady": bitrates(after) == before,  # no bitrate step (new encoder) in the window
        "encoding": encoding(after),
    }


async def cycles(url: str, count: int, pid: int) -> dict[str, Any]:
    count_without_decoding()
    rss: list[int] = []
    failures = 0
    for _ in range(count):
        viewer = PlainViewer(url)
        try:
            track = await asyncio.wait_for(viewer.connect(), 30)
            await asyncio.wait_for(track.recv(), 30)
        except Exception:  # a benchmark counts failures, it does not stop
            failures += 1
        finally:
            await viewer.close()
        rss.append(rss_bytes(pid))
    await asyncio.sleep(2.0)  # let the sender finish closing the last session
    return {
        "cycles": count,
        "failures": failures,
        "rss_after_first_mb": round(rss[0] / 2**20, 1),
        "rss_after_last_mb": round(rss_bytes(pid) / 2**20, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["latency", "load", "cycles"])
    parser.add_argument("url")
    parser.add_argument("--impl", choices=["project", "stock"], default="project")
    parser.add_argument("--viewers", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--pid", type=int, help="the sender's process id")
    parser.add_argument("--size", type=parse_size, help="latency: the full picture size, WxH")
    parser.add_argument(
        "--settle",
        type=float,
        default=60.0,
        help="at most this long to wait for full size and the top bitrate (s)",
    )
    args = parser.parse_args()
    if args.mode == "latency":
        result = asyncio.run(latency(args.url, args.impl, args.seconds, args.size, args.settle))
    elif args.mode == "load":
        result = asyncio.run(
            load(args.url, args.viewers, args.seconds, args.warmup, args.pid, args.settle)
        )
    else:
        result = asyncio.run(cycles(args.url, args.cycles, args.pid))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
