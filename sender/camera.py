"""Several cameras in one sender: each one its own shared source, viewer sessions,
encoders and Janus publications, so that each opens and closes with its own viewers.

``--source NAME=SPEC`` names a camera (``parse_source``); a bare ``--source SPEC`` is the
unnamed camera, called ``camera``, and a sender with only that one behaves exactly as a
single-camera sender always has (its metrics carry no ``camera`` label, its Janus display
name is ``--name`` alone).

A camera that cannot be opened at start-up, when it is one of several, does not stop the
others: it is *unavailable*, its viewers get a 503 saying why, and it is tried again in
the background with backoff until it opens (``Camera._retry``).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

from aiortc import RTCConfiguration, RTCSessionDescription

from common.backoff import Backoff
from common.janus import JanusTarget
from common.loop_budget import LoopBudget

from . import live, sources
from .audio import SharedAudio
from .encoders import EncoderFactory
from .fanout import SharedSource
from .janus_publisher import JanusPublication
from .sessions import CONNECT_TIMEOUT_SECONDS, OfferError, Session, Sessions
from .shared_capture import IDLE_CLOSE_SECONDS

logger = logging.getLogger(__name__)

DEFAULT_NAME = "camera"  # the name of a bare ``--source SPEC``
NAME_PATTERN = re.compile(r"[A-Za-z0-9_-]+")
_URL = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_URL_IN_TEXT = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s,;]+")
UNAVAILABLE = "unavailable"  # the state of a camera that has not opened yet
RETRY_FIRST_SECONDS = 1.0
RETRY_CAP_SECONDS = 30.0


def mask(text: str) -> str:
    """``text`` with every URL in it masked (``live.redact``): for errors that quote one."""
    return _URL_IN_TEXT.sub(lambda m: live.redact(m.group()), text)


def parse_source(text: str) -> tuple[str | None, str]:
    """``--source`` into (name, spec): ``NAME=SPEC`` names a camera only when NAME is
    ``[A-Za-z0-9_-]+``, SPEC is not empty and the whole text is not a URL (a URL's query
    string has ``=`` of its own). Anything else is a bare spec (name None): a file whose
    name has ``=`` in it is ``./a=b.mp4`` or ``cam=a=b.mp4``."""
    if _URL.match(text):
        return None, text
    name, sep, spec = text.partition("=")
    if sep and spec and NAME_PATTERN.fullmatch(name):
        return name, spec
    return None, text


@dataclass(frozen=True)
class CameraConfig:
    """One camera of the sender: its name and resolved source. ``error``: why it did not
    open at start-up (it starts unavailable, and ``reopen`` is tried with backoff until
    it returns the settled spec)."""

    name: str
    spec: sources.SourceSpec
    named: bool = True  # False: the bare --source (no camera label, no display suffix)
    error: str | None = None
    reopen: Callable[[], Awaitable[sources.SourceSpec]] | None = field(
        default=None, repr=False, compare=False
    )


@dataclass(frozen=True)
class CameraSettings:
    """What every camera of one sender shares (from ``SenderConfig``)."""

    width: int
    height: int
    fps: float
    codec: str
    max_viewers: int
    idle_close: float = IDLE_CLOSE_SECONDS
    connect_timeout: float = CONNECT_TIMEOUT_SECONDS
    bitrate: int | None = None
    publish: tuple[JanusTarget, ...] = field(default=(), repr=False)
    display_name: str = ""  # --name: the Janus display name, or its prefix
    transcode: bool = False  # never send a camera's own H.264 as it is (sender.passthrough)


class CameraUnavailable(RuntimeError):
    """The camera has not opened yet; the message is for the viewer."""


class Camera:
    """One camera and everything that serves it; owned by the app (``Cameras``)."""

    def __init__(
        self,
        config: CameraConfig,
        settings: CameraSettings,
        configuration: RTCConfiguration,
        factories: Mapping[str, EncoderFactory],
        labelled: bool,
        shared_audio: SharedAudio | None = None,
        budget: LoopBudget | None = None,
    ) -> None:
        self.name = config.name
        self.labelled = labelled  # its metrics and logs carry its name
        self.spec = config.spec
        self.unavailable: str | None = mask(config.error) if config.error is not None else None
        self.url = f"/whep/{self.name}"
        self._settings = settings
        self._reopen = config.reopen
        tag = self.name if labelled else ""
        self.source = SharedSource(self._open, idle_close=settings.idle_close, name=tag)
        self.sessions = Sessions(
            self.source,
            configuration,
            settings.codec,
            settings.max_viewers,
            settings.connect_timeout,
            settings.fps,
            settings.bitrate,
            factories,
            passthrough=not settings.transcode and sources.has_packets(config.spec),
            name=tag,
            shared_audio=shared_audio,
            budget=budget,
        )
        display = f"{settings.display_name}-{self.name}" if labelled else settings.display_name
        self.publications = [
            JanusPublication(
                target,
                lambda: self.sessions.encoders.subscribe("vp8"),  # shares the viewers' encoder
                display,
                configuration,
                shared_audio,
            )
            for target in settings.publish
        ]
        self._retrying: asyncio.Task[None] | None = None

    async def _open(self) -> sources.Source:
        s = self._settings
        source = await sources.open_source(self.spec, s.width, s.height, s.fps)
        if self.labelled:
            logger.info("camera %s opened for its viewers", self.name)
        return source

    @property
    def state(self) -> str:
        """``unavailable`` until it has opened once, then its source's state."""
        return UNAVAILABLE if self.unavailable is not None else self.source.state

    @property
    def error(self) -> str | None:
        """Why it is not live: its start-up failure, or a network camera's last one."""
        return self.unavailable if self.unavailable is not None else self.source.error

    async def start(self) -> None:
        """Publish, or (unavailable) start trying to open it again."""
        if self.unavailable is None:
            for publication in self.publications:
                await publication.start()
        elif self._reopen is not None:
            self._retrying = asyncio.create_task(self._retry(), name=f"retry camera {self.name}")

    async def _retry(self) -> None:
        """Try the camera's start-up check again, with backoff, until it passes."""
        assert self._reopen is not None
        backoff = Backoff(RETRY_FIRST_SECONDS, RETRY_CAP_SECONDS)
        while True:
            await asyncio.sleep(backoff.failure())
            try:
                spec = await self._reopen()
            except (sources.SourceError, ValueError) as exc:
                self.unavailable = mask(str(exc))
                logger.debug("camera %s still unavailable: %s", self.name, self.unavailable)
                continue
            self.spec = spec
            self.unavailable = None
            logger.info("camera %s is available: %s", self.name, spec.describe())
            for publication in self.publications:
                await publication.start()
            return

    async def open_session(
        self, offer_sdp: str, remote: str
    ) -> tuple[Session, RTCSessionDescription]:
        """A viewer of this camera and our answer; CameraUnavailable before it has opened,
        unless the viewer asks for audio alone (and the Sessions' OfferError or
        CapacityError)."""
        if self.unavailable is not None and not self._audio_only(offer_sdp):
            raise CameraUnavailable(f"camera {self.name} is not available: {self.unavailable}")
        return await self.sessions.open(offer_sdp, remote)

    def _audio_only(self, offer_sdp: str) -> bool:
        try:
            return not self.sessions.wants(offer_sdp).video
        except OfferError:
            return False  # refused as unavailable first, as every offer always was

    async def health(self) -> dict[str, object]:
        """Its part of /healthz."""
        source, sessions = self.source, self.sessions
        return {
            "url": self.url,
            "viewers": len(sessions),  # every one, audio-only ones too
            "video_viewers": sessions.video_viewers(),
            "source_open": source.is_open,
            "source_opens": source.opens,
            "source": self.spec.describe(),
            "source_state": self.state,  # live, connecting, reconnecting, closed, unavailable
            "source_reconnects": source.reconnects,
            "source_error": self.error,  # masked (live.redact)
            "encoders": {e.profile.name: e.viewers for e in sessions.encoders.active()},
            "tiers": sessions.encoders.describe(),
            "video_encoders": sessions.encoders.describe_encoders(),
            "viewer_tiers": sessions.viewer_tiers(),
            "passthrough": sessions.passthrough.describe(),
            "publications": [
                {
                    "target": p.target.describe(),
                    "state": p.state,
                    "error": p.last_error,
                    "audio": p.audio,
                    "bitrate": round(await p.bitrate()),
                }
                for p in self.publications
            ],
        }

    async def close(self) -> None:
        """Publications, then every viewer's peer connection, then the device."""
        if self._retrying is not None:
            self._retrying.cancel()
            await asyncio.gather(self._retrying, return_exceptions=True)
            self._retrying = None
        await asyncio.gather(*(p.close() for p in self.publications))
        await self.sessions.close()
        await self.source.close()


class Cameras:
    """The sender's cameras in ``--source`` order; the first is the default one (``/whep``,
    ``/offer`` without ``camera``, /healthz's top-level fields)."""

    def __init__(self, cameras: list[Camera]) -> None:
        if not cameras:
            raise ValueError("a sender needs at least one camera")
        self._cameras = {camera.name: camera for camera in cameras}

    @property
    def first(self) -> Camera:
        return next(iter(self._cameras.values()))

    @property
    def labelled(self) -> bool:
        return self.first.labelled

    def get(self, name: str) -> Camera | None:
        return self._cameras.get(name)

    def names(self) -> list[str]:
        return list(self._cameras)

    def __iter__(self) -> Iterator[Camera]:
        return iter(list(self._cameras.values()))

    def __len__(self) -> int:
        return len(self._cameras)

    def find_session(self, session_id: str) -> Session | None:
        """A viewer session of any camera (session URLs are unique across cameras)."""
        for camera in self:
            session = camera.sessions.get(session_id)
            if session is not None:
                return session
        return None

    async def start(self) -> None:
        for camera in self:
            await camera.start()

    async def reconfigure(
        self, order: Sequence[str], new: Mapping[str, Camera]
    ) -> tuple[list[str], list[str]]:
        """Serve the cameras named in ``order`` from now: those in ``new`` are started
        (replacing a camera of that name, which is closed: its viewers' connections end),
        the others named go on untouched, and cameras not named are closed. Returns the
        names (closed, started)."""
        missing = [n for n in order if n not in new and n not in self._cameras]
        if missing or not order:
            raise ValueError(f"reconfigure: no camera for {missing or 'nothing'}")
        closing = [c for name, c in self._cameras.items() if name not in order or name in new]
        await asyncio.gather(*(camera.close() for camera in closing))
        self._cameras = {name: new.get(name) or self._cameras[name] for name in order}
        for name in order:
            if name in new:
                await new[name].start()
        return [c.name for c in closing], [n for n in order if n in new]

    async def close(self) -> None:
        await asyncio.gather(*(camera.close() for camera in self))
