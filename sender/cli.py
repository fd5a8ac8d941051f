"""``webcam-sender``: publish a camera (or the fake camera) over WebRTC."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import signal
import socket
import ssl
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path

from aiohttp import web

from common import config, ice, loop_budget, turn_check
from common.cli import (
    CliError,
    add_logging_options,
    count,
    fail,
    not_empty,
    port,
    positive,
    run_main,
    size,
    stop_on_signals,
)
from common.codecs import CODECS
from common.janus import JanusError, JanusTarget, parse_janus_url
from common.logs import setup_logging
from common.sdnotify import Notifier

from . import audio, audio_sources, cameras, encoders, formats, live, sources
from .app import SenderConfig, create_app
from .camera import DEFAULT_NAME, CameraConfig, mask, parse_source
from .reload import Reloader

logger = logging.getLogger(__name__)
PROG = "webcam-sender"
TOKEN_ENV = "WEBCAM_SENDER_TOKEN"
MIN_FPS, MAX_FPS = 1.0, 240.0
CAMERAS_KEY = "cameras"  # --config's table of named cameras
MIN_BITRATE, MAX_BITRATE = 10_000, 100_000_000  # bit/s
MAX_VIEWERS = 10_000
TURN_SECRET_ENV = "WEBCAM_SENDER_TURN_SECRET"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The options, from the command line and ``--config``'s file (the command line wins).
    Raises ConfigError for a file that cannot be used."""
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__)
    config.add_argument(parser, "contrib/sender.toml")
    parser.add_argument(
        "--source",
        action="append",
        metavar="[NAME=]SPEC",
        help="auto (default camera, else the fake camera), testsrc (the fake camera's flat "
        "pattern), scene (a camera-like fake camera: landscape, pan, noise), /dev/videoN, "
        "avfoundation:NAME, dshow:NAME, a network camera (rtsp://[USER:PASSWORD@]HOST[:PORT]"
        "/PATH, rtsps://..., or an http(s):// MJPEG stream: live, reconnected when it "
        "drops), or a video file (looped). Repeatable as NAME=SPEC (NAME: letters, digits, "
        "_ and -): several cameras, each at /whep/NAME; a bare SPEC is named 'camera'",
    )
    parser.add_argument(
        "--rtsp-transport",
        choices=live.TRANSPORTS,
        default=None,
        help="how an RTSP camera sends its stream: tcp (default: inside the RTSP "
        "connection, through NAT and firewalls, no picture broken by lost packets) or udp "
        "(RTP over UDP: no retransmission delay on a clean LAN)",
    )
    parser.add_argument(
        "--audio",
        default=audio.AUTO,
        metavar="SOURCE",
        help="audio to send along, as Opus: auto (default: the default microphone if it "
        "gives samples, else none), none, testsrc (a tone with a click at every whole "
        "second), a microphone (alsa:NAME such as alsa:default or alsa:hw:1,0, oss:PATH, "
        "avfoundation::INDEX, dshow:audio=NAME, or lavfi:GRAPH, an FFmpeg audio filter "
        "graph), an audio or video file (its audio, looped in real time), or an rtsp:// "
        "URL (a network camera's audio: AAC, G.711...), or camera (the audio of --source's "
        "file or network camera, read on its own connection). A lost microphone or camera is "
        "reopened until it returns; one that does not open at start is an error",
    )
    parser.add_argument("--size", type=size, default=(640, 480), help="WIDTHxHEIGHT (640x480)")
    parser.add_argument(
        "--fps",
        type=positive(float, MAX_FPS, MIN_FPS),
        default=30.0,
        help=f"frames per second ({MIN_FPS:g}-{MAX_FPS:g}; 30)",
    )
    parser.add_argument(
        "--input-format",
        type=formats.input_format,
        default=None,
        metavar="FORMAT",
        help="the camera's format: auto (default: raw if it reaches --size at --fps, else "
        "mjpeg, else h264, else the closest mode), raw, mjpeg, h264, or a pixel format "
        "(yuyv422, nv12, ...); a format the camera lacks is an error",
    )
    parser.add_argument(
        "--list-sources",
        action="store_true",
        help="list the cameras, their formats, sizes and rates, and what --size/--fps "
        "(and --input-format) would pick; then exit",
    )
    parser.add_argument("--codec", choices=CODECS, default="vp8", help="preferred video codec")
    parser.add_argument(
        "--encoder",
        default=encoders.AUTO,
        metavar="auto|software|NAME",
        help="auto (default: a hardware encoder for --codec if one works here, else "
        "software), software (libvpx, libx264), or an FFmpeg encoder of --codec "
        "(e.g. h264_v4l2m2m); a hardware encoder that fails falls back to software",
    )
    parser.add_argument(
        "--encoder-speed",
        choices=encoders.SPEEDS,
        default=encoders.DEFAULT_SPEED,
        help="fast: least CPU (x264 ultrafast, VP8 cpu-used -11); balanced (default: "
        "veryfast, above 1280x720 as fast; cpu-used -10); quality: aiortc's own "
        "settings (x264 medium, VP8 cpu-used -6 with its denoiser), 2-5x the CPU",
    )
    parser.add_argument(
        "--loop-encode-ms",
        type=count(1000),
        default=round(loop_budget.MAX_ENCODE_SECONDS * 1000),
        metavar="MS",
        help="encode a frame on the event loop, saving two thread hand-overs (about "
        "1 ms), while one encode takes at most this long and encodes use under 30%% of "
        "the loop (default 10; 0: every encode in a worker thread)",
    )
    ice.add_arguments(parser, sender=True)
    parser.add_argument(
        "--host",
        type=not_empty,
        default="127.0.0.1",
        help="address to serve on (0.0.0.0 for a LAN)",
    )
    parser.add_argument("--port", type=port, default=8080, help="port to serve on (8080)")
    parser.add_argument(
        "--bitrate",
        type=positive(int, MAX_BITRATE, MIN_BITRATE),
        metavar="BPS",
        help="fixed video bitrate in bits/s (default: follow the weakest viewer's estimate)",
    )
    parser.add_argument(
        "--transcode",
        action="store_true",
        help="always decode and re-encode; by default a camera's (or file's) own H.264 is "
        "sent as it is to viewers that accept its profile (H.264 passthrough)",
    )
    parser.add_argument(
        "--max-viewers", type=positive(int, MAX_VIEWERS), default=16, help="viewer limit (16)"
    )
    parser.add_argument(
        "--token",
        type=not_empty,
        default=os.environ.get(TOKEN_ENV) or None,
        help=f"require 'Authorization: Bearer TOKEN' for signalling (or set {TOKEN_ENV})",
    )
    parser.add_argument("--cert", metavar="FILE", help="serve HTTPS with this certificate (PEM)")
    parser.add_argument("--key", metavar="FILE", help="the certificate's private key (PEM)")
    parser.add_argument(
        "--allow-origin",
        action="append",
        type=origin,
        default=[],
        metavar="ORIGIN",
        help="let pages from ORIGIN (e.g. https://example.org) call the sender (repeatable)",
    )
    parser.add_argument(
        "--publish",
        action="append",
        default=[],
        metavar="URL",
        help="also publish into a Janus VideoRoom: janus+http://HOST:PORT/janus?room=ROOM "
        "(repeatable)",
    )
    parser.add_argument(
        "--publish-token", type=not_empty, help="Janus token for --publish URLs without one"
    )
    parser.add_argument(
        "--name",
        type=not_empty,
        default=socket.gethostname(),
        help="display name in the room (host name)",
    )
    parser.add_argument(
        "--no-local",
        action="store_true",
        help="only publish: serve no viewers here (no page, /whep or /offer)",
    )
    add_logging_options(parser)
    argv = sys.argv[1:] if argv is None else argv
    merged, _ = config.merge(parser, argv, extra={CAMERAS_KEY: cameras_from_file})
    return parser.parse_args(merged)


def cameras_from_file(key: str, value: object, path: Path) -> list[str]:
    """``[cameras]`` in ``--config``'s file: ``NAME = "SPEC"`` for each camera, as
    ``--source NAME=SPEC`` (the command line's ``--source`` replaces them)."""
    if not isinstance(value, dict) or not value:
        raise config.ConfigError(f'{path}: {key}: expected a table of NAME = "SPEC"')
    options = []
    for name, spec in value.items():
        if not isinstance(spec, str) or not spec:
            raise config.ConfigError(f"{path}: {key}.{name}: expected the camera's SPEC (text)")
        options += ["--source", f"{name}={spec}"]
    return options


def origin(text: str) -> str:
    """A browser origin as the Origin header carries it: scheme://host[:port]."""
    if not re.fullmatch(r"https?://[^/\s?#]+", text):
        raise argparse.ArgumentTypeError(f"not an origin (https://HOST[:PORT]): {text!r}")
    return text


def tls_context(args: argparse.Namespace) -> ssl.SSLContext | None:
    if not args.cert and not args.key:
        return None
    if not (args.cert and args.key):
        raise CliError("--cert and --key go together")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(args.cert, args.key)
    except (OSError, ssl.SSLError) as exc:
        raise CliError(
            f"cannot load --cert/--key: {getattr(exc, 'strerror', None) or exc}"
        ) from None
    return context


def publish_targets(args: argparse.Namespace) -> tuple[JanusTarget, ...]:
    targets = []
    for url in args.publish:
        try:
            target = parse_janus_url(url)
        except JanusError as exc:
            raise CliError(str(exc)) from None
        if args.publish_token and not target.token:
            target = dataclasses.replace(target, token=args.publish_token)
        targets.append(target)
    if args.no_local and not targets:
        raise CliError("--no-local needs at least one --publish URL")
    return tuple(targets)


@contextlib.contextmanager
def reload_on_sighup(reload: Callable[[], None]) -> Iterator[None]:
    """SIGHUP (``systemctl reload``) re-reads the configuration (``sender.reload``)."""
    loop = asyncio.get_running_loop()
    try:
        loop.add_signal_handler(signal.SIGHUP, reload)
    except (AttributeError, NotImplementedError, RuntimeError):  # Windows: no SIGHUP
        yield
        return
    try:
        yield
    finally:
        loop.remove_signal_handler(signal.SIGHUP)


async def serve(args: argparse.Namespace, argv: Sequence[str] = ()) -> int:
    """Serve until SIGINT/SIGTERM; ``argv``: the command line, read again on SIGHUP."""
    width, height = args.size
    tls = tls_context(args)
    publish = publish_targets(args)
    turn_secret = args.turn_secret or os.environ.get(TURN_SECRET_ENV) or None
    try:
        encoders.check_choice(args.codec, args.encoder)
    except encoders.EncoderChoiceError as exc:
        raise CliError(f"--encoder: {exc}") from None
    ice_servers = ice.check_arguments(args, turn_secret=turn_secret)
    texts: list[str] = args.source or ["auto"]
    named = camera_names(texts)
    if len(named) == 1:  # one camera: one that does not open is an error
        try:
            spec = await choose_source(args, named[0][1])
        except (sources.SourceError, ValueError) as exc:
            raise CliError(str(exc)) from None
        chosen: tuple[CameraConfig, ...] = ()
        if texts[0] != named[0][1]:  # NAME=SPEC: a named camera
            chosen = (CameraConfig(named[0][0], spec),)
    else:
        chosen = await choose_cameras(args, named)
        spec = chosen[0].spec
    try:
        audio_spec = await audio_sources.choose(
            args.audio, args.rtsp_transport or live.DEFAULT_TRANSPORT, camera=spec
        )
    except audio.AudioSourceError as exc:
        raise CliError(f"--audio: {exc}") from None
    config = SenderConfig(
        source=spec,
        cameras=chosen,
        audio=audio_spec,
        width=width,
        height=height,
        fps=args.fps,
        codec=args.codec,
        ice_servers=tuple(args.ice_server),
        ice_transport_policy=args.ice_transport_policy,
        turn_secret=turn_secret,
        turn_ttl=args.turn_ttl,
        max_viewers=args.max_viewers,
        bitrate=args.bitrate,
        transcode=args.transcode,
        token=args.token,
        allowed_origins=tuple(args.allow_origin),
        publish=publish,
        name=args.name,
        local=not args.no_local,
        encoder=args.encoder,
        encoder_speed=args.encoder_speed,
        loop_encode=args.loop_encode_ms / 1000,
    )
    runner = web.AppRunner(
        create_app(config), handle_signals=False, access_log=None, shutdown_timeout=1.0
    )
    await runner.setup()
    notifier = Notifier()
    reloader = Reloader(
        runner.app,
        argv,
        args,
        named,
        parse_args,
        camera_names,
        choose_cameras,
        choose_source,
        notifier,
    )
    stop = asyncio.Event()
    # The handlers first: a SIGHUP or SIGTERM right after "serving" must not kill us.
    with stop_on_signals(stop), reload_on_sighup(reloader.request):
        try:
            site = web.TCPSite(runner, args.host, args.port, ssl_context=tls)
            try:
                await site.start()
            except OSError as exc:
                raise CliError(
                    f"cannot serve on {args.host}:{args.port}: {exc.strerror or exc}"
                ) from None
            shown = "127.0.0.1" if args.host in ("0.0.0.0", "::", "") else args.host
            port = runner.addresses[0][1] if args.port == 0 else args.port
            scheme = "https" if tls else "http"
            served = spec.describe() if len(named) == 1 else f"{len(named)} cameras"
            serving = f"serving {served} on {scheme}://{shown}:{port}/"
            print(f"{PROG}: {serving}", flush=True)
            # Listening, and every camera was checked before the app was made: ready.
            notifier.ready(serving)
            notifier.start_watchdog()
            # In the background: a TURN server that refuses us is worth a warning at once.
            checking = asyncio.create_task(turn_check.check_turn_servers(ice_servers))
            await stop.wait()
            checking.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checking
            logger.info("shutting down")
            notifier.stopping()
        finally:
            await reloader.close()
            await notifier.close()
            await runner.cleanup()
    return 0


def camera_names(texts: list[str]) -> list[tuple[str, str]]:
    """Each ``--source`` as (name, spec): ``NAME=SPEC`` (``sender.camera.parse_source``)
    or a bare SPEC, named ``camera``. Two cameras of one name are an error."""
    named: list[tuple[str, str]] = []
    for text in texts:
        name, spec = parse_source(text)
        name = name or DEFAULT_NAME
        if any(name == other for other, _ in named):
            hint = " (a bare --source SPEC is named 'camera')" if name == DEFAULT_NAME else ""
            raise CliError(f"--source: two cameras named {name!r}{hint}")
        named.append((name, spec))
    return named


async def choose_source(args: argparse.Namespace, text: str) -> sources.SourceSpec:
    """``sources.choose`` with the command line's size, rate and formats."""
    width, height = args.size
    return await sources.choose(
        text, width, height, args.fps, args.input_format, args.rtsp_transport
    )


async def choose_cameras(
    args: argparse.Namespace, named: list[tuple[str, str]]
) -> tuple[CameraConfig, ...]:
    """Several cameras, checked at once: a spec that names nothing (a typo) is an error,
    while a camera that does not open is a warning, and it is tried again in the
    background (``sender.camera.Camera``), so that one dead camera does not stop the rest."""
    specs = []
    for name, text in named:
        try:
            specs.append(sources.resolve(text, args.rtsp_transport or live.DEFAULT_TRANSPORT))
        except ValueError:  # "auto": resolved by choose()
            specs.append(sources.SourceSpec("testsrc"))
        except sources.SourceError as exc:
            raise CliError(f"camera {name}: {exc}") from None
    results = await asyncio.gather(
        *(choose_source(args, text) for _, text in named), return_exceptions=True
    )
    chosen = []
    for (name, text), spec, result in zip(named, specs, results, strict=True):
        if isinstance(result, sources.SourceSpec):
            chosen.append(CameraConfig(name, result, named=name != DEFAULT_NAME))
            continue
        if not isinstance(result, (sources.SourceError, ValueError)):
            raise result
        error = mask(str(result))
        logger.warning(
            "camera %s is not available: %s; trying again in the background", name, error
        )

        def reopen(text: str = text) -> Awaitable[sources.SourceSpec]:
            return choose_source(args, text)

        chosen.append(
            CameraConfig(name, spec, named=name != DEFAULT_NAME, error=error, reopen=reopen)
        )
    return tuple(chosen)


def list_sources(args: argparse.Namespace) -> int:
    """``--list-sources``: print the cameras and what each would be opened in."""
    width, height = args.size
    found = cameras.list_cameras([(width, height)])
    print(cameras.report(found, width, height, args.fps, args.input_format), end="", flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except CliError as exc:
        return fail(PROG, exc)
    setup_logging(args.verbose, log_format=args.log_format)
    if args.list_sources:
        return list_sources(args)
    return run_main(PROG, serve(args, sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(main())
