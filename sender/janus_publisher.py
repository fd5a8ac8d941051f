"""Publish the camera once into a Janus VideoRoom; viewers then subscribe there.

    async with JanusPublication(target, lambda: sessions.encoders.subscribe("vp8"), "cam"):
        ...  # publishing, re-joining whenever Janus goes away

One task keeps the publication up: a Janus session, a VideoRoom handle joined as a
publisher, one sendonly VP8 peer connection. When Janus restarts, becomes unreachable or
hangs up, or the peer connection fails, it starts over with a new session after 0.5 s,
doubling up to 5 s, until closed. A refusal that retrying cannot fix (no such room, wrong
secret or pin) sets ``state`` to "failed", but is retried and logged all the same: the
room may be created later.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable, Sequence

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription
from aiortc.stats import RTCOutboundRtpStreamStats

from common.codecs import preferred_codecs
from common.ice import rtc_configuration
from common.janus import VIDEOROOM, JanusError, JanusSession, JanusTarget

from . import rtcp_feedback

logger = logging.getLogger(__name__)

CODEC = "vp8"  # what track_factory's packets are; Janus must accept it
FIRST_RETRY_SECONDS = 0.5
MAX_RETRY_SECONDS = 5.0
CONNECT_TIMEOUT_SECONDS = 15.0  # ICE and DTLS with Janus, after its answer
REPEAT_LOG_SECONDS = 60.0  # the same failure again is logged at INFO at most this often
BITRATE_WINDOW_SECONDS = 1.0

PUBLISHING = "publishing"
RETRYING = "retrying"
FAILED = "failed"


class _Ended(Exception):
    """The publication ended after it was up; the message says why."""


class JanusPublication:
    """One publication into a Janus VideoRoom, kept up until ``close()``.

    ``state``: "publishing" (media flows to Janus), "retrying" (not yet, or not any more:
    the next attempt is scheduled) or "failed" (the last attempt was refused for a reason
    retrying will not fix, such as an unknown room or a wrong secret; it is retried anyway).
    ``track_factory`` is called once per (re)publication and must return a track of
    encoded VP8 packets; the track is stopped when that publication ends.
    """

    def __init__(
        self,
        target: JanusTarget,
        track_factory: Callable[[], MediaStreamTrack],
        name: str,
        ice_servers: Sequence[str] = (),
    ) -> None:
        rtcp_feedback.install()  # Janus's PLI/REMB must reach the shared encoder
        self.target = target
        self.name = name
        self.state = RETRYING
        self.last_error: str | None = None
        self.publications = 0  # successful joins (media flowing)
        self.attempts = 0
        self.feed: int | None = None  # our publisher id in the room while publishing
        self.since = time.monotonic()  # when state last changed
        self._track_factory = track_factory
        self._configuration = rtc_configuration(ice_servers)
        self._pc: RTCPeerConnection | None = None
        self._samples: collections.deque[tuple[float, int]] = collections.deque()
        self._task: asyncio.Task[None] | None = None
        self._last_logged: tuple[str, float] | None = None

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
        delay = FIRST_RETRY_SECONDS
        while True:
            self.attempts += 1
            try:
                await self._publish_once()
            except _Ended as ended:
                # It was up: start over quickly.
                delay = FIRST_RETRY_SECONDS
                self.last_error = str(ended)
                self._set_state(RETRYING)
                logger.info(
                    "janus publication lost (%s); re-joining %s in %.1f s",
                    ended,
                    self.target.describe(),
                    delay,
                )
            except JanusError as exc:
                self._failed(str(exc), FAILED if exc.permanent else RETRYING, delay)
            except Exception as exc:  # aiortc refusing Janus's SDP, a failing track...
                self._failed(f"{type(exc).__name__}: {exc}", RETRYING, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_SECONDS)

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
            "janus publication %s (attempt %d): %s; retrying in %.1f s",
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
        target = self.target
        session = JanusSession(target.api, token=target.token, apisecret=target.secret)
        pc: RTCPeerConnection | None = None
        track: MediaStreamTrack | None = None
        loop = asyncio.get_running_loop()
        ended: asyncio.Future[str] = loop.create_future()
        connected = asyncio.Event()

        def end(reason: str) -> None:
            if not ended.done():
                ended.set_result(reason)

        try:
            await session.create()
            handle = await session.attach(VIDEOROOM)
            session.on_event(handle, lambda message: _on_event(message, end))
            join: dict[str, object] = {
                "request": "join",
                "ptype": "publisher",
                "room": target.room,
                "display": self.name,
            }
            if target.pin:
                join["pin"] = target.pin
            if target.feed is not None:
                join["id"] = target.feed
            joined, _ = await session.message(handle, join)
            feed = joined.get("id")

            self._pc = pc = RTCPeerConnection(self._configuration)

            @pc.on("connectionstatechange")
            def _on_state() -> None:
                logger.debug("janus publication: peer connection %s", pc.connectionState)
                if pc.connectionState == "connected":
                    connected.set()
                elif pc.connectionState in ("failed", "closed"):
                    end(f"peer connection {pc.connectionState}")

            track = self._track_factory()
            # The source failed or went away: start over with a fresh track.
            track.on("ended", lambda: end("the camera track ended"))
            transceiver = pc.addTransceiver(track, direction="sendonly")
            # Only VP8 (and its retransmissions): the track's packets are VP8.
            transceiver.setCodecPreferences(
                [c for c in preferred_codecs(CODEC) if c.name.lower() in (CODEC, "rtx")]
            )
            await pc.setLocalDescription(await pc.createOffer())
            _, answer = await session.message(
                handle,
                {"request": "configure", "audio": False, "video": True},
                jsep={"type": "offer", "sdp": pc.localDescription.sdp},
            )
            if answer is None or answer.get("type") != "answer" or "sdp" not in answer:
                raise JanusError("Janus accepted the publication without an SDP answer")
            _check_answer(answer["sdp"], target.room)
            await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], "answer"))

            waiters = [
                asyncio.ensure_future(connected.wait()),
                asyncio.ensure_future(session.lost.wait()),
                ended,
            ]
            try:
                await asyncio.wait(
                    waiters, timeout=CONNECT_TIMEOUT_SECONDS, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                for waiter in waiters[:2]:
                    waiter.cancel()
            if session.lost.is_set():
                raise JanusError(f"Janus went away: {session.lost_reason}")
            if ended.done():
                raise JanusError(f"the connection to Janus ended: {ended.result()}")
            if not connected.is_set():
                raise JanusError(
                    f"no ICE/DTLS connection to Janus within {CONNECT_TIMEOUT_SECONDS:g} s"
                )

            self.publications += 1
            self.feed = feed if isinstance(feed, int) else None
            self.last_error = None
            self._samples.clear()
            self._samples.append((time.monotonic(), 0))  # nothing sent yet
            self._set_state(PUBLISHING)
            logger.info(
                "janus publication publishing: %s as %r, feed %s (publication %d)",
                target.describe(),
                self.name,
                self.feed,
                self.publications,
            )

            lost = asyncio.ensure_future(session.lost.wait())
            try:
                await asyncio.wait([lost, ended], return_when=asyncio.FIRST_COMPLETED)
            finally:
                lost.cancel()
            if session.lost.is_set():
                raise _Ended(f"Janus went away: {session.lost_reason}")
            raise _Ended(ended.result())
        finally:
            self.feed = None
            self._pc = None
            ended.cancel()
            if pc is not None:
                await pc.close()
            if track is not None:
                # aiortc stops a sender's track only when RTP started; stop it anyway so
                # the shared encoder (and the camera) are not held by a dead publication.
                track.stop()
            await session.destroy()
            await session.close()


def _on_event(message: dict, end: Callable[[str], None]) -> None:
    """Events about our publisher handle that end the publication."""
    kind = message.get("janus")
    if kind == "hangup":
        end(f"Janus hung up ({message.get('reason') or 'no reason given'})")
    elif kind == "detached":
        end("Janus detached our handle")
    elif kind == "event":
        plugindata = message.get("plugindata")
        data = plugindata.get("data") if isinstance(plugindata, dict) else None
        if isinstance(data, dict) and data.get("videoroom") == "destroyed":
            end("the room was destroyed")


def _check_answer(sdp: str, room: int) -> None:
    """Janus's answer must send VP8 back to us (a room without VP8 rejects the video)."""
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
