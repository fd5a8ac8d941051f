"""``webcam-receiver URL [URL ...]``: receive the sender's video, decode it, and show,
record, save or count the frames. Several URLs (several cameras) are received at once in
this one process, each reconnecting on its own; ``{name}`` in ``--record`` or
``--snapshots`` is each camera's name (``camera_names``). ``--no-video`` receives the
sender's audio alone (its camera stays closed): played, recorded, counted."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import re
import ssl
import sys
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import av

from common import config, ice
from common.aiortc_ext.nack_retry import MAX_TRIES
from common.backoff import Backoff
from common.cli import (
    CliError,
    add_logging_options,
    count,
    fail,
    not_empty,
    positive,
    run_main,
    stop_on_signals,
)
from common.logs import setup_logging
from common.loop_budget import MAX_DECODE_SECONDS
from common.sdnotify import Notifier

from .audio import AudioPacket
from .client import Gap, Receiver, ReceiverError
from .encoded import EncodedFrame
from .playback import DEFAULT_DEVICE, AudioOut
from .recorder import MODES
from .signalling import SIGNALLING, SignallingError, tls_context
from .sinks import (
    AudioPacketSink,
    DisplaySink,
    EncodedSink,
    FrameSink,
    Sink,
    SinkError,
    SnapshotSink,
    record_sink,
)
from .stats import FrameStats

logger = logging.getLogger(__name__)
PROG = "webcam-receiver"
TOKEN_ENV = "WEBCAM_RECEIVER_TOKEN"
STREAMS = "streams"  # --config's key for the URLs
MAX_COUNT = 1000  # retries: more is a typo (--retry-forever says forever)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, from the command line and ``--config``'s file (the command line wins;
    its ``streams`` are the URLs when the command line gives none). Raises ConfigError
    for a file that cannot be used."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    config.add_argument(parser, "contrib/receiver.toml")
    parser.add_argument(
        "urls",
        nargs="*",
        metavar="URL",
        help="the sender's URL (http://127.0.0.1:8080), any WHEP endpoint URL (a camera of "
        "a sender with several: http://HOST:8080/whep/NAME), or a janus+http(s):// feed; "
        "several: every one at once, recorded with {name} in --record",
    )
    parser.add_argument(
        "--signalling",
        choices=SIGNALLING,
        default="whep",
        help="whep (default: POST /whep) or json (the tutorial's POST /offer)",
    )
    parser.add_argument(
        "--token",
        type=not_empty,
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"bearer token the sender requires (or set {TOKEN_ENV})",
    )
    parser.add_argument("--cafile", metavar="FILE", help="trust this CA for an HTTPS sender")
    parser.add_argument(
        "--insecure", action="store_true", help="do not verify the sender's HTTPS certificate"
    )
    parser.add_argument("--display", action="store_true", help="show the picture in a window")
    parser.add_argument(
        "--record",
        metavar="FILE",
        help="record to a video file (.mkv, .mp4, .webm, .mov; with --no-video also the audio "
        "files .mka, .m4a, .ogg, .opus); strftime fields (%%Y%%m%%d-%%H%%M%%S) "
        "and {name} (the camera: the URL's last path segment after /whep/, else its host) "
        "are filled in; needs {name} with several URLs",
    )
    parser.add_argument(
        "--snapshots", metavar="DIR", help="save image files into DIR ({name} as for --record)"
    )
    parser.add_argument(
        "--snapshot-every", type=positive(int), default=30, metavar="N", help="every Nth frame (30)"
    )
    parser.add_argument("--frames", type=positive(int), metavar="N", help="stop after N frames")
    parser.add_argument(
        "--duration",
        type=positive(float),
        metavar="S",
        help="stop S seconds after the first frame (set-up not counted)",
    )
    parser.add_argument(
        "--connect-timeout", type=positive(float), default=10.0, metavar="S", help="(10)"
    )
    ice.add_arguments(parser, sender=False)
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
        type=count(MAX_COUNT),
        default=3,
        metavar="N",
        help="reconnect up to N times in a row when the sender is away (3)",
    )
    parser.add_argument("--retry-forever", action="store_true", help="never give up reconnecting")
    parser.add_argument(
        "--loop-decode-ms",
        type=count(1000),
        default=round(MAX_DECODE_SECONDS * 1000),
        metavar="MS",
        help="decode a frame on the event loop, saving two thread hand-overs (0.2-0.4 ms), "
        "while one decode takes at most this long and decodes use under 30%% of the loop "
        f"(default {round(MAX_DECODE_SECONDS * 1000)}; 0: every frame in aiortc's decoder "
        "thread)",
    )
    parser.add_argument(
        "--nack-retries",
        type=count(MAX_COUNT),
        default=MAX_TRIES,
        metavar="N",
        help=f"ask again for a lost packet up to N times, at the round-trip time (40 ms on a "
        f"LAN) ({MAX_TRIES}; 0: only aiortc's single NACK; holes that cannot be repaired are "
        "skipped to a keyframe either way)",
    )
    parser.add_argument(
        "--stall-timeout",
        type=positive(float),
        default=3.0,
        metavar="S",
        help="treat S seconds without video (--no-video: without audio) as a lost connection (3)",
    )
    parser.add_argument(
        "--no-audio",
        action="store_true",
        help="do not ask for the sender's audio (by default it is received when the sender "
        "has some, and recorded along)",
    )
    parser.add_argument(
        "--no-video",
        action="store_true",
        help="ask for the sender's audio alone (its camera stays closed): played with "
        "--audio-out, recorded with --record (.mka, .m4a, .ogg, .opus, ...), counted",
    )
    parser.add_argument(
        "--audio-out",
        action="store_true",
        help="play the sender's audio on this computer's sound output (needs pip install "
        "'webrtc-webcam[audio-out]')",
    )
    parser.add_argument(
        "--audio-device",
        default=DEFAULT_DEVICE,
        type=not_empty,
        metavar="DEVICE",
        help="--audio-out's device: an index or part of a name as 'python -m sounddevice' "
        f"lists them ({DEFAULT_DEVICE}: the system's default output)",
    )
    parser.add_argument(
        "--audio-codec",
        choices=("opus", "aac"),
        help="the recording's audio: opus (the default, except .mov) copies the received "
        "Opus as it is; aac decodes it and encodes AAC (.mp4, .mkv, .mov; .webm holds Opus "
        "only, .mov AAC only)",
    )
    parser.add_argument("--quiet", action="store_true", help="no status line, warnings only")
    parser.add_argument(
        "--stats-breakdown",
        action="store_true",
        help="the status line also shows where the milliseconds go: p50/p95 of capture to "
        "first packet, first packet to complete frame, complete to decoded",
    )
    parser.add_argument(
        "--stats-json",
        metavar="FILE",
        help="write the final summary as JSON (several URLs: an object keyed by camera name)",
    )
    add_logging_options(parser)
    merged, streams = config.merge(
        parser, sys.argv[1:] if argv is None else argv, positional=STREAMS
    )
    args = parser.parse_args(merged)
    if not args.urls:
        args.urls = streams
    if not args.urls:
        parser.error(f"give the sender's URL (or several), or {STREAMS} in --config's file")
    args.url = args.urls[0]
    return args


NAME_PLACEHOLDER = "{name}"


def camera_name(url: str) -> str:
    """A camera's name for ``{name}``: the URL's last path segment after ``/whep/``
    (``http://host:8080/whep/front`` is ``front``), else its host; only letters, digits,
    ``.``, ``_`` and ``-``, so that it is safe in a file name."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        parts, host = None, ""
    path = parts.path.rstrip("/") if parts is not None else ""
    _, whep, tail = path.rpartition("/whep/")
    name = tail if whep and tail and "/" not in tail else host
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name) or "camera"


def camera_names(urls: list[str]) -> list[str]:
    """Each URL's ``camera_name``, made unique with -2, -3... in the order given."""
    names: list[str] = []
    for url in urls:
        base = name = camera_name(url)
        number = 1
        while name in names:
            number += 1
            name = f"{base}-{number}"
        names.append(name)
    return names


def check_several(args: argparse.Namespace) -> None:
    """With several URLs, every file name must tell the cameras apart; one window only."""
    if len(args.urls) < 2:
        return
    for option, value in (("--record", args.record), ("--snapshots", args.snapshots)):
        if value and NAME_PLACEHOLDER not in value:
            raise CliError(
                f"{option} with several URLs needs {NAME_PLACEHOLDER} in it "
                f"(e.g. --record '{{name}}-%Y%m%d-%H%M%S.mkv')"
            )
    if args.display:
        raise CliError("--display shows one camera: give one URL")
    if args.audio_out:
        raise CliError("--audio-out plays one camera: give one URL")


# Options about the video, refused with --no-video: (option, given?).
VIDEO_OPTIONS: tuple[tuple[str, Callable[[argparse.Namespace], bool]], ...] = (
    ("--display", lambda a: a.display),
    ("--snapshots", lambda a: a.snapshots is not None),
    ("--frames", lambda a: a.frames is not None),
    ("--record-mode encode", lambda a: a.record_mode == "encode"),
    ("--stats-breakdown", lambda a: a.stats_breakdown),
)


def check_no_video(args: argparse.Namespace) -> None:
    """--no-video asks for audio alone: nothing that needs the video goes with it."""
    if not args.no_video:
        return
    if args.no_audio:
        raise CliError("--no-video with --no-audio asks for nothing: drop one of them")
    for option, given in VIDEO_OPTIONS:
        if given(args):
            raise CliError(f"{option} needs the video: drop it or --no-video")


def make_sinks(
    args: argparse.Namespace, request_keyframe: Callable[[], None], name: str = ""
) -> list[Sink]:
    sinks: list[Sink] = []
    if args.display:
        sinks.append(DisplaySink())
    if args.record:
        sinks.append(
            record_sink(
                args.record.replace(NAME_PLACEHOLDER, name),
                mode=args.record_mode,
                segment_seconds=args.segment_seconds,
                request_keyframe=request_keyframe,
                audio_codec=args.audio_codec,
                video=not args.no_video,
            )
        )
    if args.audio_out and not args.no_audio:
        sinks.append(AudioOut(args.audio_device))
    if args.snapshots:
        directory = args.snapshots.replace(NAME_PLACEHOLDER, name)
        sinks.append(SnapshotSink(directory, args.snapshot_every))
    return sinks


async def report_status(stats: FrameStats, breakdown: bool, prefix: str = "") -> None:
    while True:
        await asyncio.sleep(1.0)
        print(prefix + stats.status_line(breakdown), file=sys.stderr, flush=True)


class Run:
    """One receiver (reconnecting as the options say) feeding the sinks. ``url`` and
    ``name``: one of several cameras (default: the only URL)."""

    def __init__(
        self,
        args: argparse.Namespace,
        tls: ssl.SSLContext | bool,
        url: str | None = None,
        name: str = "",
        prefix: str = "",
    ) -> None:
        self.args = args
        self.name = name
        self.prefix = prefix  # before its status lines, when there are several
        url = url or args.url
        self.sinks = make_sinks(args, self.request_keyframe, name or camera_name(url))
        self.encoded = [s for s in self.sinks if isinstance(s, EncodedSink)]
        self.decoded = [s for s in self.sinks if isinstance(s, FrameSink)]
        self.audio_packets = [s for s in self.sinks if isinstance(s, AudioPacketSink)]
        self.players = [s for s in self.sinks if isinstance(s, AudioOut)]
        audio = not args.no_audio
        self.receiver = Receiver(
            url,
            ice_servers=args.ice_server,
            ice_transport_policy=args.ice_transport_policy,
            connect_timeout=args.connect_timeout,
            signalling=args.signalling,
            token=args.token,
            tls=tls,
            stall_timeout=args.stall_timeout,
            # audio packets come with the encoded frames: a recording copies them
            encoded=bool(self.encoded) or (audio and bool(self.audio_packets)),
            # with no sink at all it decodes, to read the stamps for the statistics
            decode=bool(self.decoded) or not self.encoded,
            codecs=self.encoded[0].codecs() if self.encoded else None,
            retry=Backoff(max_tries=None if args.retry_forever else args.max_retries),
            nack_retries=args.nack_retries,
            loop_decode=args.loop_decode_ms / 1000,
            audio=audio,
            decoded_audio=bool(self.players),
            video=not args.no_video,
        )
        self.stats = self.receiver.stats

    def request_keyframe(self) -> None:
        self.receiver.request_keyframe()

    async def __call__(self) -> None:
        rx = self.receiver
        status = None
        try:
            await rx.connect()
            if not self.args.quiet:
                status = asyncio.create_task(
                    report_status(self.stats, self.args.stats_breakdown, self.prefix)
                )
            async for item in rx.items():
                if isinstance(item, Gap):
                    for sink in self.sinks:
                        await sink.gap()
                    continue
                if isinstance(item, AudioPacket):
                    for audio_sink in self.audio_packets:
                        await audio_sink.write_audio(item)
                elif isinstance(item, av.AudioFrame):
                    for player in self.players:
                        player.play(item)
                if isinstance(item, (AudioPacket, av.AudioFrame)):
                    if rx.video or not self.finished():  # audio alone: audio says when
                        continue
                    return
                for audio_sink in self.audio_packets:
                    audio_sink.expect_audio(rx.receives_audio)
                if isinstance(item, EncodedFrame):
                    for encoded in self.encoded:
                        await encoded.write(item)
                    if rx.decode:  # its decoded picture follows: count and stop on that
                        continue
                else:
                    for decoded in self.decoded:
                        await decoded.write(item)
                if self.finished():
                    return
            raise ReceiverError(rx.ended or "the connection ended")
        finally:
            if status is not None:
                status.cancel()
            await rx.close()

    def finished(self) -> bool:
        """Whether to stop, asked as each frame has gone to the sinks. ``--duration``
        counts from the first arrival the statistics saw (video, or audio alone), so that
        a 5-s clip is 5 s of video however long the connection took (seconds under loss:
        DTLS resends a lost flight after 1, 2, 4 s)."""
        args, stats = self.args, self.stats
        if args.frames and stats.frames >= args.frames:
            return True
        first = (stats if stats.video else stats.audio).first_at
        if args.duration and first is not None and time.monotonic() - first >= args.duration:
            return True
        return any(isinstance(s, DisplaySink) and s.closed_by_user.is_set() for s in self.sinks)


async def run(args: argparse.Namespace) -> int:
    from_sender = args.signalling == "whep" and not any(u.startswith("janus+") for u in args.urls)
    ice.check_arguments(args, from_peer=from_sender)
    if args.audio_out and args.no_audio:
        raise CliError("--audio-out plays the sender's audio: drop --no-audio")
    check_no_video(args)
    check_several(args)
    try:
        tls = tls_context(args.cafile, args.insecure)
    except SignallingError as exc:
        raise CliError(str(exc)) from None
    async with Notifier() as notifier:
        if len(args.urls) > 1:
            return await run_several(args, tls, notifier)
        try:
            session = Run(args, tls)
        except (SignallingError, SinkError, ReceiverError) as exc:
            raise CliError(str(exc)) from None
        announce_ready(notifier, args.urls)
        stop = asyncio.Event()
        with stop_on_signals(stop):
            failure = await run_one(session, stop)
        notifier.stopping()
    write_summary(session.stats, args)
    if failure is not None:
        raise CliError(failure, code=1)
    return 0


def announce_ready(notifier: Notifier, urls: list[str]) -> None:
    """Under systemd: ready once every stream is set up (each then connects, and
    reconnects, on its own); the watchdog pinged from the event loop."""
    notifier.ready(f"receiving {len(urls)} streams" if len(urls) > 1 else f"receiving {urls[0]}")
    notifier.start_watchdog()


async def run_one(session: Run, stop: asyncio.Event) -> str | None:
    """Receive until done, failed or ``stop``; close the sinks. Why it failed, or None."""
    failure: BaseException | None = None
    try:
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
        for sink in session.sinks:
            try:
                await sink.close()
            except SinkError as exc:
                failure = failure or exc
    return str(failure) if failure is not None else None


async def run_several(
    args: argparse.Namespace, tls: ssl.SSLContext | bool, notifier: Notifier
) -> int:
    """One ``Run`` per URL, side by side: a camera that fails says so in one line and
    the others go on. Exit 1 when any failed."""
    names = camera_names(args.urls)
    width = max(len(n) for n in names)
    sessions: list[Run] = []
    try:
        for url, name in zip(args.urls, names, strict=True):
            sessions.append(Run(args, tls, url, name, prefix=f"{name:<{width}}  "))
    except (SignallingError, SinkError, ReceiverError) as exc:
        for started in sessions:
            for sink in started.sinks:
                with contextlib.suppress(SinkError):
                    await sink.close()
        raise CliError(f"{name}: {exc}") from None
    stop = asyncio.Event()

    async def one(session: Run) -> bool:
        failure = await run_one(session, stop)
        if failure is not None:
            print(f"{PROG}: error: {session.name}: {failure}", file=sys.stderr, flush=True)
        return failure is None

    announce_ready(notifier, args.urls)
    with stop_on_signals(stop):
        results = await asyncio.gather(*(one(session) for session in sessions))
    notifier.stopping()
    write_summaries({s.name: s.stats for s in sessions}, args)
    return 0 if all(results) else 1


def write_summary(stats: FrameStats, args: argparse.Namespace) -> None:
    summary = stats.summary()
    if not args.quiet and stats.received:  # nothing received: the error line says it all
        print(f"{PROG}: {json.dumps(summary)}", file=sys.stderr)
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as out:
            json.dump(summary, out, indent=2)


def write_summaries(stats: dict[str, FrameStats], args: argparse.Namespace) -> None:
    """Several cameras' summaries: a line each, and one JSON object keyed by name."""
    summaries: dict[str, Any] = {name: s.summary() for name, s in stats.items()}
    if not args.quiet:
        for name, each in stats.items():
            if each.received:
                print(f"{PROG}: {name}: {json.dumps(summaries[name])}", file=sys.stderr)
    if args.stats_json:
        with open(args.stats_json, "w", encoding="utf-8") as out:
            json.dump(summaries, out, indent=2)


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except CliError as exc:
        return fail(PROG, exc)
    setup_logging(args.verbose, quiet=args.quiet, log_format=args.log_format)
    return run_main(PROG, run(args))


if __name__ == "__main__":
    sys.exit(main())
