"""The sender's aiohttp application: routes, and the resources that live as long as it."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources

from aiohttp import web

from common.ice import IceServers, TurnSecret
from common.janus import JanusTarget

from . import audio, encoders, metrics, signalling, sources
from .access import ACCESS, AccessPolicy, access_control
from .fanout import SharedSource
from .janus_publisher import JanusPublication
from .sessions import Sessions
from .signalling import ICE_LINKS, SESSIONS

logger = logging.getLogger(__name__)

MAX_BODY_BYTES = 64 * 1024


@dataclass(frozen=True)
class SenderConfig:
    source: sources.SourceSpec = field(default_factory=lambda: sources.SourceSpec("testsrc"))
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
    token: str | None = field(default=None, repr=False)  # never logged
    allowed_origins: tuple[str, ...] = ()
    publish: tuple[JanusTarget, ...] = field(default=(), repr=False)  # may hold secrets
    name: str = field(default_factory=socket.gethostname)
    local: bool = True  # serve our own viewers (WHEP, /offer, the page)
    encoder: str = encoders.AUTO  # "auto", "software" or an encoder's name (sender.encoders)
    encoder_speed: encoders.Speed = encoders.DEFAULT_SPEED
    # The hardware encoders "auto" tries per codec (None: those FFmpeg has, in
    # sender.encoders.HARDWARE order); tests give stand-ins that fail mid-stream.
    hardware_encoders: Mapping[str, Sequence[encoders.Candidate]] | None = field(
        default=None, repr=False
    )


CONFIG = web.AppKey("config", SenderConfig)
SOURCE = web.AppKey("source", SharedSource)
PUBLICATIONS = web.AppKey("publications", list)


async def media(app: web.Application) -> AsyncIterator[None]:
    """The shared source and the session registry: made at start-up, closed at shutdown.
    Each codec's encoder is chosen (and hardware probed) first."""
    config = app[CONFIG]
    factories = await encoders.choose(
        config.encoder, config.encoder_speed, config.hardware_encoders
    )

    async def open_camera() -> sources.Source:
        return await sources.open_source(config.source, config.width, config.height, config.fps)

    shared_audio = (
        audio.SharedAudio(config.audio, idle_close=config.idle_close) if config.audio else None
    )
    async with (
        audio.closing(shared_audio),
        SharedSource(open_camera, idle_close=config.idle_close) as source,
        Sessions(
            source,
            app[ICE_LINKS].configuration(),
            config.codec,
            config.max_viewers,
            config.connect_timeout,
            config.fps,
            config.bitrate,
            factories,
            shared_audio,
        ) as sessions,
    ):
        app[SOURCE] = source
        app[SESSIONS] = sessions
        publications = [
            JanusPublication(
                target,
                lambda: sessions.encoders.subscribe("vp8"),  # shares the local viewers' encoder
                config.name,
                app[ICE_LINKS].configuration(),
            )
            for target in config.publish
        ]
        app[PUBLICATIONS] = publications
        metrics.install(app, source, sessions, publications)
        for publication in publications:
            await publication.start()
        try:
            yield
        finally:
            await asyncio.gather(*(p.close() for p in publications))
    # Leaving the blocks closed every peer connection first, then the camera.


def _static(name: str, content_type: str) -> web.Response:
    text = resources.files("sender").joinpath("static", name).read_text(encoding="utf-8")
    return web.Response(text=text, content_type=content_type)


async def index(request: web.Request) -> web.Response:
    return _static("index.html", "text/html")


async def client_js(request: web.Request) -> web.Response:
    return _static("client.js", "application/javascript")


async def healthz(request: web.Request) -> web.Response:
    source = request.app[SOURCE]
    return web.json_response(
        {
            "status": "ok",
            "viewers": len(request.app[SESSIONS]),
            "source_open": source.is_open,
            "source_opens": source.opens,
            "source": request.app[CONFIG].source.describe(),
            "source_state": source.state,  # live, connecting, reconnecting or closed
            "source_reconnects": source.reconnects,
            "source_error": source.error,  # a network camera's last failure, masked
            "encoders": {
                e.profile.name: e.viewers for e in request.app[SESSIONS].encoders.active()
            },
            "tiers": request.app[SESSIONS].encoders.describe(),
            "video_encoders": request.app[SESSIONS].encoders.describe_encoders(),
            "viewer_tiers": request.app[SESSIONS].viewer_tiers(),
            "publications": [
                {
                    "target": p.target.describe(),
                    "state": p.state,
                    "error": p.last_error,
                    "bitrate": round(await p.bitrate()),
                }
                for p in request.app[PUBLICATIONS]
            ],
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
        signalling.add_routes(app)
    return app
