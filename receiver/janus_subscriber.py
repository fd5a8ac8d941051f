"""Subscribe to a camera published into a Janus VideoRoom.

    subscription = JanusSubscription(parse_janus_url("janus+http://host:8088/janus?room=1234"))
    pc = RTCPeerConnection(rtc_configuration(ice_servers))  # the caller's, explicit ICE servers
    pc.on("track", ...)
    await subscription.connect(pc)   # JanusError with a one-line reason when it cannot
    await subscription.lost.wait()   # Janus went away, or the publisher left
    await subscription.close()

Janus offers (the subscriber answers): join as a subscriber to the publisher's feed, apply
Janus's offer, answer with ``start``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from typing import Any

from aiortc import RTCPeerConnection, RTCSessionDescription

from common.janus import (
    VIDEOROOM,
    VIDEOROOM_NO_SUCH_ROOM,
    VIDEOROOM_UNAUTHORIZED,
    JanusError,
    JanusSession,
    JanusTarget,
    classify,
)
from common.tasks import cancel

logger = logging.getLogger(__name__)

LEAVE_TIMEOUT_SECONDS = 2.0


class JanusSubscription:
    """One subscriber session in a Janus VideoRoom, kept alive until ``close()``."""

    def __init__(self, target: JanusTarget, *, tls: ssl.SSLContext | bool = True) -> None:
        self.target = target
        self.lost = asyncio.Event()
        self.reason: str | None = None  # why ``lost`` was set
        self.feed: int | None = None
        self.display: str | None = None
        self._tls = tls
        self._session: JanusSession | None = None
        self._handle: int | None = None
        self._watch: asyncio.Task[None] | None = None

    async def connect(self, pc: RTCPeerConnection) -> None:
        """Find the publisher, subscribe, and answer Janus's offer on ``pc``."""
        target = self.target
        session = JanusSession(
            target.api, token=target.token, apisecret=target.secret, tls=self._tls
        )
        self._session = session
        try:
            await session.create()
            self._handle = handle = await session.attach(VIDEOROOM)
            self.feed, self.display = await self._find_publisher(session, handle)
            session.on_event(handle, self._on_event)
            join: dict[str, Any] = {
                "request": "join",
                "ptype": "subscriber",
                "room": target.room,
                "streams": [{"feed": self.feed}],
            }
            if target.pin:
                join["pin"] = target.pin
            try:
                _, offer = await session.message(handle, join)
            except JanusError as exc:
                raise self._explain(exc) from None
            if offer is None or offer.get("type") != "offer" or "sdp" not in offer:
                raise JanusError(f"Janus sent no offer for feed {self.feed}")
            try:
                await pc.setRemoteDescription(RTCSessionDescription(offer["sdp"], "offer"))
                await pc.setLocalDescription(await pc.createAnswer())
            except ValueError as exc:  # an offer aiortc cannot apply
                raise JanusError(f"cannot use Janus's offer: {exc}") from None
            await session.message(
                handle,
                {"request": "start"},
                jsep={"type": "answer", "sdp": pc.localDescription.sdp},
            )
        except BaseException:
            await self.close()
            raise
        logger.info("subscribed to feed %s (%r) in %s", self.feed, self.display, target.describe())
        self._watch = asyncio.create_task(self._watch_session(session), name="janus watch")

    async def _find_publisher(self, session: JanusSession, handle: int) -> tuple[int, str | None]:
        target = self.target
        try:
            data, _ = await session.message(
                handle, {"request": "listparticipants", "room": target.room}
            )
        except JanusError as exc:
            raise self._explain(exc) from None
        participants = data.get("participants")
        publishers = [
            p
            for p in (participants if isinstance(participants, list) else [])
            if isinstance(p, dict) and p.get("publisher") and isinstance(p.get("id"), int)
        ]
        where = f"room {target.room} on {target.api}"
        if target.feed is not None:
            chosen = [p for p in publishers if p["id"] == target.feed]
            if not chosen:
                raise JanusError(f"feed {target.feed} is not publishing in {where}")
        elif target.display is not None:
            chosen = [p for p in publishers if p.get("display") == target.display]
            if not chosen:
                raise JanusError(f"no publisher named {target.display!r} in {where}")
            if len(chosen) > 1:
                raise JanusError(
                    f"{len(chosen)} publishers are named {target.display!r} in {where}:"
                    f" choose one with &feed= ({_listing(chosen)})"
                )
        else:
            if not publishers:
                raise JanusError(f"nobody is publishing in {where}")
            if len(publishers) > 1:
                raise JanusError(
                    f"{len(publishers)} publishers in {where}: choose one with &feed= or"
                    f" &display= ({_listing(publishers)})"
                )
            chosen = publishers
        display = chosen[0].get("display")
        return chosen[0]["id"], display if isinstance(display, str) else None

    def _explain(self, exc: JanusError) -> JanusError:
        """A clearer one-line message for the refusals users cause."""
        where = f"on {self.target.api}"
        if exc.code == VIDEOROOM_NO_SUCH_ROOM:
            return JanusError(f"room {self.target.room} does not exist {where}", exc.code)
        if exc.code == VIDEOROOM_UNAUTHORIZED:
            return JanusError(
                f"room {self.target.room} {where} refused us: wrong or missing pin", exc.code
            )
        return exc

    def _on_event(self, message: dict[str, Any]) -> None:
        """Janus's events about our handle: hung up, detached, the room destroyed, the
        publisher gone (common.janus.classify decides which end the subscription)."""
        event = classify(message, feed=self.feed)
        if event.ends:
            self._lose(event.reason)

    async def _watch_session(self, session: JanusSession) -> None:
        await session.lost.wait()
        self._lose(f"Janus went away: {session.lost_reason}")

    def _lose(self, reason: str) -> None:
        if self.lost.is_set():
            return
        self.reason = reason
        logger.info("janus subscription lost: %s", reason)
        self.lost.set()

    async def close(self) -> None:
        """Leave the room and destroy the session (best effort: Janus may be gone)."""
        await cancel(self._watch)
        self._watch = None
        session, self._session = self._session, None
        if session is None:
            return
        if self._handle is not None and session.id is not None and not session.lost.is_set():
            with contextlib.suppress(JanusError, TimeoutError):
                async with asyncio.timeout(LEAVE_TIMEOUT_SECONDS):
                    await session.message(self._handle, {"request": "leave"})
        self._handle = None
        await session.destroy()
        await session.close()

    async def __aenter__(self) -> JanusSubscription:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def _listing(publishers: list[dict[str, Any]]) -> str:
    shown = [f"{p['id']} {p.get('display')!r}" for p in publishers[:5]]
    more = f", and {len(publishers) - 5} more" if len(publishers) > 5 else ""
    return ", ".join(shown) + more
