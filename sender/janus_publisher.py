"""Publish the camera once into a Janus VideoRoom; viewers then subscribe there.

    async with JanusPublication(target, lambda: sessions.encoders.subscribe("vp8"), "cam"):
        ...  # publishing, re-joining whenever Janus goes away

One task keeps the publication up: a Janus session, a VideoRoom handle joined as a
publisher, one sendonly peer connection: VP8, and the sender's Opus audio when it has some
(a listener of the viewers' shared encoder, ``sender.audio``). When Janus restarts,
becomes unreachable or hangs up, or the peer connection fails, it starts over with a new
session, waiting as common.backoff says (0.25 s doubling up to 5 s), until closed. A
refusal that retrying cannot fix (no such room, wrong secret or pin) sets ``state`` to
"failed", but is retried and logged all the same: the room may be created later. A room
that refuses the audio (its ``audiocodec`` lacks opus) gets the video alone from the next
attempt on, at once, with one WARNING.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCRtpTransceiver,
    RTCSessionDescription,
)
from aiortc.sdp import SessionDescription
from aiortc.stats import RTCOutboundRtpStreamStats

from common import aiortc_ext
from common.aiortc_ext import rtcp_feedback, rtp_send
from common.backoff import Backoff
from common.codecs import preferred_codecs
from common.ice import rtc_configuration
from common.janus import VIDEOROOM, JanusError, JanusSession, JanusTarget, classify

from . import audio
from .encoding import EncodedTrack

logger = logging.getLogger(__name__)

CODEC = "vp8"  # what track_factory's packets are; Janus must accept it
AUDIO_CODEC = "opus"  # the shared audio's packets
CONNECT_TIMEOUT_SECONDS = 15.0  # ICE and DTLS with Janus, after its answer
REPEAT_LOG_SECONDS = 60.0  # the same failure again is logged at INFO at most this often
BITRATE_WINDOW_SECONDS = 1.0

PUBLISHING = "publishing"
RETRYING = "retrying"
FAILED = "failed"


class _Ended(Exception):
    """The publication ended after it was up; the message says why."""


class _AudioRefused(JanusError):
    """Janus's answer rejects our audio (the room's ``audiocodec`` has no opus)."""


class JanusPublication:
    """One publication into a Janus VideoRoom, kept up until ``close()``.

    ``state``: "publishing" (media flows to Janus), "retrying" (not yet, or not any more:
    the next attempt is scheduled) or "failed" (the last attempt was refused for a reason
    retrying will not fix, such as an unknown room or a wrong secret; it is retried anyway).
    ``track_factory`` is called once per (re)publication and must return a track of
    encoded VP8 packets; the track is stopped when that publication ends. ``shared_audio``:
    the sender's audio, published along while the room accepts it (``audio`` says whether
    it does, as far as we know).
    """

    def __init__(
        self,
        target: JanusTarget,
        track_factory: Callable[[], EncodedTrack],
        name: str,
        configuration: RTCConfiguration | None = None,
        shared_audio: audio.SharedAudio | None = None,
    ) -> None:
        self.target = target
        self.name = name
        self.state = RETRYING
        self.last_error: str | None = None
        self.publications = 0  # successful joins (media flowing)
        self.attempts = 0
        self.feed: int | None = None  # our publisher id in the room while publishing
        self.since = time.monotonic()  # when state last changed
        self._track_factory = track_factory
        self._shared_audio = shared_audio
        self.audio = shared_audio is not None  # False once the room refused it
        # the sender's ICE servers, policy and handed-out TURN credentials; none: host only
        self._configuration = configuration or rtc_configuration()
        self._pc: RTCPeerConnection | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._last_logged: tuple[str, float] | None = None
        self._retry = Backoff()  # forever: the room may be created later

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="janus publication")

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        if self.state == PUBLISHING:
            logger.info("janus publication closed: %s", self.target.describe())
        self._set_state(RETRYING)

    async def __aenter__(self) -> JanusPublication:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def bitrate(self) -> float:
        """Bits per second sent to Janus over about the last second (outbound-rtp
        bytesSent); 0 when not publishing. Any number of callers (/healthz, /metrics) may
        ask at any pace: each answer spans at least BITRATE_WINDOW_SECONDS when it can."""
        pc = self._pc
        if pc is None or self.state != PUBLISHING:
            self._samples.clear()
            return 0.0
        sent = 0
        for item in (await pc.getStats()).values():
            if isinstance(item, RTCOutboundRtpStreamStats):
                sent += item.bytesSent
        now = time.monotonic()
        if self._samples and sent < self._samples[-1][1]:  # a new peer connection
            self._samples.clear()
        self._samples.append((now, sent))
        while len(self._samples) > 2 and now - self._samples[1][0] >= BITRATE_WINDOW_SECONDS:
            self._samples.popleft()
        then, before = self._samples[0]
        return max(0.0, (sent - before) * 8 / (now - then)) if now > then else 0.0

    # -- the publishing loop ---------------------------------------------------------

    async def _run(self) -> None:
        while True:
            self.attempts += 1
            try:
                await self._publish_once()
            except _AudioRefused as exc:
                # Not the room's fault, nor a reason to wait: publish the video alone.
                self.audio = False
                logger.warning("janus publication: %s; publishing video only", exc)
                continue
            except _Ended as ended:
                # It was up, so the backoff was reset: start over after the first wait.
                delay = self._retry.failure()
                self.last_error = str(ended)
                self._set_state(RETRYING)
                logger.info(
                    "janus publication lost (%s); re-joining %s in %.2g s",
                    ended,
                    self.target.describe(),
                    delay,
                )
            except JanusError as exc:
                delay = self._retry.failure()
                self._failed(str(exc), FAILED if exc.permanent else RETRYING, delay)
            except Exception as exc:  # aiortc refusing Janus's SDP, a failing track...
                delay = self._retry.failure()
                self._failed(f"{type(exc).__name__}: {exc}", RETRYING, delay)
            await asyncio.sleep(delay)

    def _failed(self, error: str, state: str, delay: float) -> None:
        changed = state != self.state or error != self.last_error
        self.last_error = error
        self._set_state(state)
        now = time.monotonic()
        repeated = (
            not changed
            and self._last_logged is not None
            and self._last_logged[0] == error
            and now - self._last_logged[1] < REPEAT_LOG_SECONDS
        )
        level = logging.DEBUG if repeated else logging.INFO
        if not repeated:
            self._last_logged = (error, now)
        logger.log(
            level,
            "janus publication %s (attempt %d): %s; retrying in %.2g s",
            state,
            self.attempts,
            error,
            delay,
        )

    def _set_state(self, state: str) -> None:
        if state != self.state:
            self.state = state
            self.since = time.monotonic()

    async def _publish_once(self) -> None:
        """One publication: returns only by raising (JanusError before it is up,
        _Ended after), or when cancelled."""
        attempt = _Attempt(self.target)
        try:
            await attempt.open()
            feed = await attempt.join(self.name)
            self._pc = attempt.add_track(
                self._configuration,
                self._track_factory,
                self._shared_audio if self.audio else None,
            )
            await attempt.negotiate()
            await attempt.connected()
            self._publishing(feed)
            raise _Ended(await attempt.ended())
        finally:
            self.feed = None
            self._pc = None
            await attempt.close()

    def _publishing(self, feed: int | None) -> None:
        """Media flows to Janus: count it, reset the backoff and the bitrate window."""
        self.publications += 1
        self.feed = feed
        self.last_error = None
        self._retry.reset()
        self._samples.clear()
        self._samples.append((time.monotonic(), 0))  # nothing sent yet
        self._set_state(PUBLISHING)
        logger.info(
            "janus publication publishing: %s as %r, feed %s (publication %d, %s)",
            self.target.describe(),
            self.name,
            self.feed,
            self.publications,
            "vp8, opus" if self.audio else "vp8",
        )


class _Attempt:
    """One try at publishing: a Janus session and VideoRoom handle, one sendonly peer
    connection and its track. Each step raises JanusError when it fails; ``close()``
    releases everything, whichever step was reached."""

    def __init__(self, target: JanusTarget) -> None:
        self.target = target
        self.session = JanusSession(target.api, token=target.token, apisecret=target.secret)
        self.handle: int | None = None
        self.pc: RTCPeerConnection | None = None
        self.track: EncodedTrack | None = None
        self.sound: RTCRtpTransceiver | None = None  # the audio's, when we offer it
        self.audio_track: audio.AudioTrack | None = None
        self._shared_audio: audio.SharedAudio | None = None
        # The first reason the publication ends (Janus's events, the peer connection,
        # the track); the session's loss is watched separately.
        self._ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._connected = asyncio.Event()

    def end(self, reason: str) -> None:
        if not self._ended.done():
            self._ended.set_result(reason)

    async def open(self) -> None:
        """A new Janus session and a VideoRoom handle whose events we watch."""
        await self.session.create()
        self.handle = await self.session.attach(VIDEOROOM)
        self.session.on_event(self.handle, self._on_event)

    def _on_event(self, message: dict[str, Any]) -> None:
        """Janus hung up, detached us, destroyed the room or removed us from it: the
        publication is over (common.janus.classify decides)."""
        event = classify(message)
        if event.ends:
            self.end(event.reason)

    async def join(self, name: str) -> int | None:
        """Join the room as a publisher named ``name``; our feed id, if Janus gave one."""
        assert self.handle is not None
        target = self.target
        join: dict[str, object] = {
            "request": "join",
            "ptype": "publisher",
            "room": target.room,
            "display": name,
        }
        if target.pin:
            join["pin"] = target.pin
        if target.feed is not None:
            join["id"] = target.feed
        joined, _ = await self.session.message(self.handle, join)
        feed = joined.get("id")
        return feed if isinstance(feed, int) else None

    def add_track(
        self,
        configuration: RTCConfiguration,
        track_factory: Callable[[], EncodedTrack],
        shared_audio: audio.SharedAudio | None = None,
    ) -> RTCPeerConnection:
        """The peer connection, sending a fresh track of VP8 packets, and an Opus section
        for ``shared_audio`` (whose listener is added once Janus accepts it)."""
        self.pc = pc = aiortc_ext.peer_connection(configuration)

        @pc.on("connectionstatechange")
        def _on_state() -> None:
            logger.debug("janus publication: peer connection %s", pc.connectionState)
            if pc.connectionState == "connected":
                self._connected.set()
            elif pc.connectionState in ("failed", "closed"):
                self.end(f"peer connection {pc.connectionState}")

        self.track = track = track_factory()
        # The source failed or went away: start over with a fresh track.
        track.on("ended", lambda: self.end("the camera track ended"))
        transceiver = pc.addTransceiver(track, direction="sendonly")
        rtcp_feedback.apply(transceiver.sender, track)  # Janus's PLI/REMB reach the encoder
        # packetized once for all viewers, and sent as it is handed over
        track.send_now = rtp_send.apply(transceiver.sender, track.payloads)
        # Only VP8 (and its retransmissions): the track's packets are VP8.
        transceiver.setCodecPreferences(
            [c for c in preferred_codecs(CODEC) if c.name.lower() in (CODEC, "rtx")]
        )
        if shared_audio is not None:
            self._shared_audio = shared_audio
            self.sound = pc.addTransceiver("audio", direction="sendonly")
            capabilities = RTCRtpSender.getCapabilities("audio")
            assert capabilities is not None
            self.sound.setCodecPreferences(
                [c for c in capabilities.codecs if c.name.lower() == AUDIO_CODEC]
            )
        return pc

    async def negotiate(self) -> None:
        """Offer with ``configure``; apply Janus's answer, which must take our VP8."""
        assert self.pc is not None and self.handle is not None
        pc = self.pc
        await pc.setLocalDescription(await pc.createOffer())
        _, answer = await self.session.message(
            self.handle,
            {"request": "configure", "audio": self.sound is not None, "video": True},
            jsep={"type": "offer", "sdp": pc.localDescription.sdp},
        )
        if answer is None or answer.get("type") != "answer" or "sdp" not in answer:
            raise JanusError("Janus accepted the publication without an SDP answer")
        takes_audio = _check_answer(answer["sdp"], self.target.room)
        if self.sound is not None and not takes_audio:
            raise _AudioRefused(f"room {self.target.room} refuses Opus audio")
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))
        if self.sound is not None and self._shared_audio is not None:
            self.audio_track = audio.attach(self.sound, self._shared_audio, "janus")

    async def connected(self) -> None:
        """Wait until ICE and DTLS with Janus are up; JanusError if Janus goes away,
        the publication ends first, or it takes longer than CONNECT_TIMEOUT_SECONDS."""
        session = self.session
        waiters: list[asyncio.Future[Any]] = [
            asyncio.ensure_future(self._connected.wait()),
            asyncio.ensure_future(session.lost.wait()),
        ]
        try:
            await asyncio.wait(
                [*waiters, self._ended],
                timeout=CONNECT_TIMEOUT_SECONDS,
                return_when=asyncio.FIRST_COMPLETED,
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if session.lost.is_set():
            raise JanusError(f"Janus went away: {session.lost_reason}")
        if self._ended.done():
            raise JanusError(f"the connection to Janus ended: {self._ended.result()}")
        if not self._connected.is_set():
            raise JanusError(
                f"no ICE/DTLS connection to Janus within {CONNECT_TIMEOUT_SECONDS:g} s"
            )

    async def ended(self) -> str:
        """Wait while media flows; why the publication ended."""
        session = self.session
        lost: asyncio.Future[Any] = asyncio.ensure_future(session.lost.wait())
        try:
            await asyncio.wait([lost, self._ended], return_when=asyncio.FIRST_COMPLETED)
        finally:
            lost.cancel()
        if session.lost.is_set():
            return f"Janus went away: {session.lost_reason}"
        return self._ended.result()

    async def close(self) -> None:
        """Close the peer connection, stop the track, destroy the session."""
        self._ended.cancel()
        if self.pc is not None:
            await self.pc.close()
        if self.track is not None:
            # aiortc stops a sender's track only when RTP started; stop it anyway so
            # the shared encoder (and the camera) are not held by a dead publication.
            self.track.stop()
        if self.audio_track is not None:
            self.audio_track.stop()
        await self.session.destroy()
        await self.session.close()


def _check_answer(sdp: str, room: int) -> bool:
    """Janus's answer must take our VP8 (a room without VP8 rejects the video); whether
    it takes Opus audio too (a room whose ``audiocodec`` lacks it rejects the audio)."""
    try:
        description = SessionDescription.parse(sdp)
    except Exception as exc:
        raise JanusError(f"cannot parse Janus's SDP answer: {exc}") from None
    video = [m for m in description.media if m.kind == "video"]
    codecs = [c.name.lower() for m in video if m.port for c in m.rtp.codecs]
    if CODEC not in codecs:
        raise JanusError(
            f'room {room} does not accept {CODEC.upper()} video (set videocodec = "vp8")',
            permanent=True,
        )
    sound = [m for m in description.media if m.kind == "audio" and m.port]
    return any(c.name.lower() == AUDIO_CODEC for m in sound for c in m.rtp.codecs)
