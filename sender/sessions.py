"""Viewer sessions: one peer connection per viewer, owned by the registry."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

from aiortc import (
    RTCConfiguration,
    RTCIceCandidate,
    RTCPeerConnection,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import MediaDescription, SessionDescription

from common import aiortc_ext
from common.aiortc_ext import rtcp_feedback, rtp_send, sender_reports
from common.codecs import prefer_codec
from common.loop_budget import LoopBudget

from . import audio
from .encoders import EncoderFactory
from .encoding import EncodedTrack, Encoders
from .fanout import SharedSource
from .passthrough import Passthrough
from .sources import CLOCK_ORIGIN, VIDEO_CLOCK_RATE

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT_SECONDS = 30.0


class OfferError(ValueError):
    """An offer we refuse; the message is safe to send back to the client."""


class CapacityError(RuntimeError):
    """Every viewer slot is taken."""


@dataclass(frozen=True)
class Wanted:
    """What an offer asks us to send: video, audio, or both."""

    video: bool
    audio: bool

    def describe(self) -> str:
        return (
            "video and audio" if self.video and self.audio else "video" if self.video else "audio"
        )


def _receives(media: list[MediaDescription]) -> bool:
    return any(m.direction in ("recvonly", "sendrecv") for m in media)


def check_offer(sdp: str, has_audio: bool = False) -> Wanted:
    """What the offer asks for and we can send (``has_audio``: the sender has audio);
    OfferError for offers aiortc cannot parse or that ask for nothing we send."""
    if not sdp.strip():
        raise OfferError("empty SDP")
    if not sdp.lstrip().startswith("v=0"):
        raise OfferError("cannot parse SDP: it must start with v=0")
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:  # aiortc raises whatever its parser hits
        raise OfferError(f"cannot parse SDP: {str(exc) or type(exc).__name__}") from None
    video = [m for m in description.media if m.kind == "video"]
    sound = [m for m in description.media if m.kind == "audio"]
    wanted = Wanted(video=_receives(video), audio=has_audio and _receives(sound))
    if wanted.video or wanted.audio:
        if not wanted.video and not any(
            c.name.lower() == "opus" for m in sound for c in m.rtp.codecs
        ):
            raise OfferError("the offer's audio section has no Opus (the only audio we send)")
        return wanted
    if not video and not sound:
        raise OfferError("the offer has no video or audio section")
    why = (
        "the offer does not ask to receive video (needs recvonly or sendrecv)"
        if video
        else "the offer has no video section"
    )
    if not sound:
        raise OfferError(why)
    if not has_audio:
        raise OfferError(f"{why}, and this sender has no audio (--audio none)")
    raise OfferError(f"{why} nor audio (needs recvonly or sendrecv)")


def _sections(sdp: str, kind: str) -> list[MediaDescription]:
    return [m for m in SessionDescription.parse(sdp).media if m.kind == kind]


def _sending_codec(answer: str) -> str:
    """The codec we send: the first one of our answer's video section."""
    video = next(m for m in SessionDescription.parse(answer).media if m.kind == "video")
    return video.rtp.codecs[0].name.lower()


def _ice_ufrag(sdp: str) -> str | None:
    for line in sdp.splitlines():
        if line.startswith("a=ice-ufrag:"):
            return line.split(":", 1)[1].strip()
    return None


class Session:
    """A viewer: its peer connection and its subscription to the source."""

    def __init__(
        self,
        registry: Sessions,
        pc: RTCPeerConnection,
        remote: str,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
    ) -> None:
        self.id = secrets.token_urlsafe(16)  # 128 random bits
        self.pc = pc
        self.remote = remote
        self.started = time.monotonic()
        self.joined = False
        self.etag = secrets.token_hex(8)
        self.remote_ufrag: str | None = None
        self.track: EncodedTrack | None = None
        self.audio_track: audio.AudioTrack | None = None
        self.codec = ""
        self._registry = registry
        self._closing: asyncio.Task[None] | None = None
        self._trickle: asyncio.Task[None] | None = None
        self._timeout = asyncio.get_running_loop().call_later(
            connect_timeout, self.close_soon, "ICE did not connect in time"
        )

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            state = pc.connectionState
            logger.debug("session %s connection %s", self.id, state)
            if state == "connected":
                self._timeout.cancel()
            elif state in ("failed", "closed"):
                self.close_soon("connection " + state)

    def log_fields(self) -> dict[str, str]:
        """For ``--log-format json``: who this viewer is, as fields."""
        fields = {"session": self.id, "remote": self.remote, "codec": self.codec or ""}
        if self._registry.name:
            fields["camera"] = self._registry.name
        return fields

    def add_candidates(self, candidates: list[RTCIceCandidate], end: bool) -> None:
        """Add trickled candidates in order, behind any still being added."""
        previous = self._trickle

        async def add() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            try:
                for candidate in candidates:
                    await self.pc.addIceCandidate(candidate)
                if end:
                    await self.pc.addIceCandidate(None)
            except Exception as exc:  # a closed connection, a name that did not resolve
                logger.debug("session %s: trickled candidate not added: %s", self.id, exc)

        self._trickle = asyncio.create_task(add(), name=f"trickle {self.id}")

    def close_soon(self, reason: str) -> None:
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(reason), name=f"close {self.id}")

    async def close(self, reason: str = "closed by server") -> None:
        self.close_soon(reason)
        assert self._closing is not None
        await asyncio.shield(self._closing)

    async def _close(self, reason: str) -> None:
        self._timeout.cancel()
        if self._trickle is not None:
            self._trickle.cancel()
        await self.pc.close()
        if self.track is not None:
            # aiortc stops a sender's track only if RTP ever started (not so when ICE
            # never connected), and a live track keeps the camera open.
            self.track.stop()
        if self.audio_track is not None:
            self.audio_track.stop()
        self._registry._forget(self)
        if not self.joined:
            return
        logger.info(
            "viewer left: %ssession %s from %s after %.1f s (%s)",
            f"camera {self._registry.name}, " if self._registry.name else "",
            self.id,
            self.remote,
            time.monotonic() - self.started,
            reason,
            extra=self.log_fields(),
        )


class Sessions:
    """Every live viewer session; the only place peer connections are created."""

    def __init__(
        self,
        source: SharedSource,
        configuration: RTCConfiguration,
        codec: str = "vp8",
        max_viewers: int = 16,
        connect_timeout: float = CONNECT_TIMEOUT_SECONDS,
        fps: float = 30.0,
        bitrate: int | None = None,
        factories: Mapping[str, EncoderFactory] | None = None,
        passthrough: bool = False,
        name: str = "",
        shared_audio: audio.SharedAudio | None = None,
        budget: LoopBudget | None = None,
    ) -> None:
        self.encoders = Encoders(source, fps, bitrate, factories, budget)
        # The camera's own H.264 to the viewers that take it (sender.passthrough).
        self.passthrough = Passthrough(source, self.encoders.totals, passthrough)
        self.name = name  # the camera's, for the logs of a sender with several
        self.audio = shared_audio  # None: no audio (--audio none); shared by every camera
        self._connect_timeout = connect_timeout
        self._configuration = configuration
        self._codec = codec
        self._max_viewers = max_viewers
        self._sessions: dict[str, Session] = {}
        self.started = 0
        self.failed = 0

    def __len__(self) -> int:
        return len(self._sessions)

    def live(self) -> list[Session]:
        return list(self._sessions.values())

    def get(self, session_id: str) -> Session | None:
        return self._sessions.get(session_id)

    async def open(self, offer_sdp: str, remote: str) -> tuple[Session, RTCSessionDescription]:
        """Answer a viewer's offer; raises OfferError or CapacityError."""
        try:
            return await self._open(offer_sdp, remote)
        except (OfferError, CapacityError):
            self.failed += 1
            raise

    def wants(self, offer_sdp: str) -> Wanted:
        """What a viewer's offer asks us to send; OfferError when it is nothing we send."""
        return check_offer(offer_sdp, self.audio is not None)

    async def _open(self, offer_sdp: str, remote: str) -> tuple[Session, RTCSessionDescription]:
        wanted = self.wants(offer_sdp)
        if len(self._sessions) >= self._max_viewers:
            raise CapacityError(f"all {self._max_viewers} viewer slots are taken")
        pc = aiortc_ext.peer_connection(self._configuration)
        session = Session(self, pc, remote, self._connect_timeout)
        self._sessions[session.id] = session
        passing = False
        try:
            if wanted.video:
                transceiver = pc.addTransceiver("video", direction="sendonly")
                prefer_codec(transceiver, self._codec)
            else:
                # Answered inactive: aiortc would make its own transceiver "recvonly".
                for _ in _sections(offer_sdp, "video"):
                    pc.addTransceiver("video", direction="inactive")
            sound = audio.add_transceiver(pc, self.audio, offer_sdp)
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            if wanted.video and transceiver.mid is None:
                raise OfferError("the offer's video section cannot be answered")
            session.remote_ufrag = _ice_ufrag(offer_sdp)
            if wanted.video:
                passing = await self.passthrough.answer(transceiver, offer_sdp)
            await pc.setLocalDescription(await pc.createAnswer())
            if wanted.video:
                self._send_video(session, transceiver, passing)
            if self.audio is not None:
                session.audio_track = audio.attach(sound, self.audio, session.id)
            if session.track is None and session.audio_track is None:
                raise OfferError("the offer's audio section cannot be answered")
        except Exception as exc:
            await session.close("offer refused")
            if isinstance(exc, OfferError):
                raise
            raise OfferError(f"cannot answer the offer: {str(exc) or type(exc).__name__}") from None
        self.started += 1
        session.joined = True
        how = f"{session.codec}{' passthrough' if passing else ''}" if wanted.video else ""
        with_audio = "" if session.audio_track is None else ", opus" if how else "opus only"
        logger.info(
            "viewer joined: %ssession %s from %s (%s%s)",
            f"camera {self.name}, " if self.name else "",
            session.id,
            remote,
            how,
            with_audio,
            extra=session.log_fields(),
        )
        return session, pc.localDescription

    def _send_video(self, session: Session, transceiver: RTCRtpTransceiver, passing: bool) -> None:
        """After the answer: the viewer's track on the shared encoder (or the camera's own
        H.264), with its RTCP feedback and lip-sync reports."""
        session.codec = _sending_codec(session.pc.localDescription.sdp)
        track: EncodedTrack = (
            self.passthrough.subscribe() if passing else self.encoders.subscribe(session.codec)
        )
        session.track = track
        track.name = session.id
        transceiver.sender.replaceTrack(track)
        rtcp_feedback.apply(transceiver.sender, track)  # PLI, REMB, RR to its encoder
        sender_reports.apply(transceiver.sender, VIDEO_CLOCK_RATE, CLOCK_ORIGIN)  # lip sync
        # packetized once for all viewers, and sent as it is handed over
        track.send_now = rtp_send.apply(transceiver.sender, track.payloads)

    def video_viewers(self) -> int:
        """Viewers getting video (an audio-only viewer keeps no camera open)."""
        return sum(1 for s in self._sessions.values() if s.track is not None)

    def viewer_tiers(self) -> list[dict[str, object]]:
        """Each viewer's codec, tier and bandwidth estimate (/healthz)."""
        result: list[dict[str, object]] = []
        for session in self.live():
            track = session.track
            if track is None:
                continue
            result.append(
                {
                    "session": session.id,
                    "codec": track.codec,
                    "tier": track.tier or track.wanted_tier,
                    "estimate": track.estimate,
                }
            )
        return result

    def _forget(self, session: Session) -> None:
        self._sessions.pop(session.id, None)

    async def close(self) -> None:
        """Close every session (shutdown)."""
        await asyncio.gather(
            *(s.close("server shutting down") for s in list(self._sessions.values()))
        )
        await self.passthrough.close()

    async def __aenter__(self) -> Sessions:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
