"""The sender's aiohttp application: routes, and the resources that live as long as it."""

from __future__ import annotations

import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web
from aiortc import RTCConfiguration

from common.ice import IceServers, TurnSecret
from common.janus import JanusTarget
from common.loop_budget import MAX_ENCODE_SECONDS, LoopBudget

from . import audio, audio_metrics, encoders, metrics, signalling, sources
from .access import ACCESS, AccessPolicy, access_control
from .camera import DEFAULT_NAME, Camera, CameraConfig, Cameras, CameraSettings
from .encoders import EncoderFactory
from .fanout import SharedSource
from .signalling import CAMERAS, ICE_LINKS, SESSIONS

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class SenderConfig:
    source: sources.SourceSpec = field(default_factory=lambda: sources.SourceSpec("testsrc"))
    # Several cameras (``--source NAME=SPEC``, sender.camera); empty: ``source`` alone,
    # the unnamed camera.
    cameras: tuple[CameraConfig, ...] = ()
    audio: audio.AudioSpec | None = None  # None: no audio (``--audio none``)
    width: int = 640
    height: int = 480
    fps: float = 30.0
    codec: str = "vp8"
    # ICE: the URLs may carry TURN passwords, and the secret makes them: never logged
    ice_servers: tuple[str, ...] = field(default=(), repr=False)
    ice_transport_policy: str = "all"  # or "relay": our own connections only through TURN
    turn_secret: str | None = field(default=None, repr=False)  # credentials per viewer
    turn_ttl: int = 3600  # seconds those credentials stay valid
    max_viewers: int = 16
    idle_close: float = 1.0
    connect_timeout: float = 30.0  # a viewer whose ICE has not connected by then is dropped
    bitrate: int | None = None  # fixed encoder bitrate; None follows the viewers' estimates
    transcode: bool = False  # never send a camera's own H.264 (sender.passthrough)
    token: str | None = field(default=None, repr=False)  # never logged
    allowed_origins: tuple[str, ...] = ()
    publish: tuple[JanusTarget, ...] = field(default=(), repr=False)  # may hold secrets
    name: str = field(default_factory=socket.gethostname)
    local: bool = True  # serve our own viewers (WHEP, /offer, the page)
    encoder: str = encoders.AUTO  # "auto", "software" or an encoder's name (sender.encoders)
    encoder_speed: encoders.Speed = encoders.DEFAULT_SPEED
    # The longest encode the event loop does itself (s); 0: all in threads (common.loop_budget)
    loop_encode: float = MAX_ENCODE_SECONDS
    # The hardware encoders "auto" tries per codec (None: those FFmpeg has, in
    # sender.encoders.HARDWARE order); tests give stand-ins that fail mid-stream.
    hardware_encoders: Mapping[str, Sequence[encoders.Candidate]] | None = field(
        default=None, repr=False
    )

    def camera_configs(self) -> tuple[CameraConfig, ...]:
        """The cameras to serve, the first being the default one."""
        return self.cameras or (CameraConfig(DEFAULT_NAME, self.source, named=False),)


@dataclass(frozen=True)
class CameraMaker:
    """Makes a camera as the app's were made (also for cameras a reload adds)."""

    settings: CameraSettings
    configuration: RTCConfiguration
    factories: Mapping[str, EncoderFactory]
    budget: LoopBudget  # the event loop's time for encodes, shared by every camera
    labelled: bool
    shared_audio: audio.SharedAudio | None

    def __call__(self, config: CameraConfig) -> Camera:
        return Camera(
            config,
            self.settings,
            self.configuration,
            self.factories,
            self.labelled,
            self.shared_audio,
            self.budget,
        )


CONFIG = web.AppKey("config", SenderConfig)
MAKE_CAMERA = web.AppKey("make_camera", CameraMaker)
# The first camera's source and publications (its sessions: signalling.SESSIONS), as a
# single-camera sender has always had them; every camera: CAMERAS.
SOURCE = web.AppKey("source", SharedSource)
PUBLICATIONS = web.AppKey("publications", list)


async def media(app: web.Application) -> AsyncIterator[None]:
    """The cameras (each its shared source, sessions and publications): made at start-up,
    closed at shutdown. Each codec's encoder is chosen (and hardware probed) first."""
    config = app[CONFIG]
    factories = await encoders.choose(
        config.encoder, config.encoder_speed, config.hardware_encoders
    )
    settings = CameraSettings(
        width=config.width,
        height=config.height,
        fps=config.fps,
        codec=config.codec,
        max_viewers=config.max_viewers,
        idle_close=config.idle_close,
        connect_timeout=config.connect_timeout,
        bitrate=config.bitrate,
        publish=config.publish,
        display_name=config.name,
        transcode=config.transcode,
    )
    configs = config.camera_configs()
    labelled = len(configs) > 1 or configs[0].named
    # One microphone for the whole sender: every camera's viewers share its encoder.
    # ``--audio camera``: the first camera's own connection (its shared source).
    shared_audio = (
        audio.SharedAudio(config.audio, idle_close=config.idle_close, camera=lambda: app[SOURCE])
        if config.audio
        else None
    )
    budget = LoopBudget(config.loop_encode)
    make = CameraMaker(
        settings, app[ICE_LINKS].configuration(), factories, budget, labelled, shared_audio
    )
    app[MAKE_CAMERA] = make
    cameras = Cameras([make(c) for c in configs])
    app[CAMERAS] = cameras
    point_at_first(app)
    metrics.install(app, cameras)
    async with audio.closing(shared_audio):
        try:
            await cameras.start()
            yield
        finally:
            # Each camera closes its publications, then every peer connection, then itself.
            await cameras.close()


def point_at_first(app: web.Application) -> None:
    """The single-camera keys follow the first camera (also after a reload)."""
    first = app[CAMERAS].first
    app[SOURCE] = first.source
    app[SESSIONS] = first.sessions
    app[PUBLICATIONS] = first.publications


def _static(name: str, content_type: str) -> web.Response:
    text = resources.files("sender").joinpath("static", name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type=content_type)


async def index(request: web.Request) -> web.Response:
    return _static("index.html", "text/html")


async def client_js(request: web.Request) -> web.Response:
    return _static("client.js", "application/javascript")


async def healthz(request: web.Request) -> web.Response:
    """The first camera's fields at the top level (as a single-camera sender has always
    answered), every camera's under ``cameras``, and the audio (shared by every camera)."""
    cameras = request.app[CAMERAS]
    each = {camera.name: await camera.health() for camera in cameras}
    top = {key: value for key, value in each[cameras.first.name].items() if key != "url"}
    sound = audio_metrics.health(request.app[MAKE_CAMERA].shared_audio)
    return web.json_response({"status": "ok", **top, "audio": sound, "cameras": each})


async def list_cameras(request: web.Request) -> web.Response:
    """``GET /cameras``: what the page offers to pick from, first the default."""
    return web.json_response(
        {
            "cameras": [
                {"name": c.name, "url": c.url, "state": c.state, "error": c.error}
                for c in request.app[CAMERAS]
            ]
        }
    )


def create_app(config: SenderConfig) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[access_control])
    app[CONFIG] = config
    app[ACCESS] = AccessPolicy(config.token, frozenset(config.allowed_origins))
    secret = TurnSecret(config.turn_secret, config.turn_ttl) if config.turn_secret else None
    app[ICE_LINKS] = IceServers(config.ice_servers, config.ice_transport_policy, secret)
    app.cleanup_ctx.append(media)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics.metrics)
    if config.local:
        app.router.add_get("/", index)
        app.router.add_get("/client.js", client_js)
        app.router.add_get("/cameras", list_cameras)
        signalling.add_routes(app)
    return app
