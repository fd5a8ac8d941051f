"""common.janus.classify: what each Janus message means, one rule for the publisher, the
subscriber and the session. First the shapes Janus 1.x sends (captured from the Debian
package's Janus 1.1.2), then a real Janus: participants kicked, publishers leaving, a room
destroyed, and what JanusPublication and JanusSubscription do about it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection

from common.ice import rtc_configuration
from common.janus import (
    EventKind,
    JanusEvent,
    JanusSession,
    JanusTarget,
    classify,
)
from receiver.janus_subscriber import JanusSubscription
from sender.janus_publisher import JanusPublication

from .helpers import InProcessSender, wait_until
from .janus_server import JanusServer

FEED = 2765059603042596
OTHER_FEED = 8051193445004312
ROOM = 777
ROOM_SECRET = "adminsecret"


def event(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A VideoRoom event as the long poll delivers it."""
    return {
        "janus": "event",
        "session_id": 1,
        "sender": 2,
        "plugindata": {"plugin": "janus.plugin.videoroom", "data": data},
        **extra,
    }


def inactive_video(active: bool) -> dict[str, Any]:
    return {
        "videoroom": "updated",
        "room": ROOM,
        "streams": [{"type": "video", "active": active, "mindex": 0, "mid": "0", "send": True}],
    }


@pytest.mark.parametrize(
    ("message", "feed", "kind", "reason"),
    [
        ({"janus": "timeout", "session_id": 1}, None, EventKind.SESSION_LOST, "timed"),
        (
            {"janus": "error", "error": {"code": 458, "reason": "No such session 1"}},
            None,
            EventKind.SESSION_LOST,
            "no longer knows",
        ),
        (
            {"janus": "error", "error": {"code": 403, "reason": "Unauthorized request"}},
            None,
            EventKind.ERROR,
            "Janus error 403: Unauthorized request",
        ),
        ({"janus": "hangup", "sender": 2, "reason": "DTLS alert"}, None, EventKind.HANGUP,
         "Janus hung up (DTLS alert)"),
        ({"janus": "hangup", "sender": 2}, None, EventKind.HANGUP, "no reason given"),
        ({"janus": "detached", "sender": 2}, None, EventKind.DETACHED, "detached"),
        (event({"videoroom": "destroyed", "room": ROOM}), None, EventKind.ROOM_DESTROYED,
         f"room {ROOM} was destroyed"),
        (event({"videoroom": "event", "room": ROOM, "leaving": "ok", "reason": "kicked"}), None,
         EventKind.REMOVED, f"Janus removed us from room {ROOM} (kicked)"),
        (event({"videoroom": "event", "room": ROOM, "unpublished": FEED}), FEED,
         EventKind.PUBLISHER_LEFT, f"the publisher (feed {FEED}) left"),
        (event({"videoroom": "event", "room": ROOM, "leaving": FEED}), FEED,
         EventKind.PUBLISHER_LEFT, f"the publisher (feed {FEED}) left"),
        (event(inactive_video(False), jsep={"type": "offer", "sdp": "v=0"}), FEED,
         EventKind.PUBLISHER_LEFT, f"the publisher (feed {FEED}) stopped publishing"),
        (event({"videoroom": "updated", "room": ROOM}), FEED, EventKind.PUBLISHER_LEFT,
         "stopped publishing"),
        (event({"videoroom": "event", "error_code": 428, "error": "No such feed"}), FEED,
         EventKind.ERROR, "VideoRoom error 428: No such feed"),
        # Nothing that ends anything:
        ({"janus": "keepalive"}, None, EventKind.OTHER, ""),
        ({"janus": "webrtcup", "sender": 2}, None, EventKind.OTHER, ""),
        ({"janus": "media", "sender": 2, "type": "video", "receiving": True}, None,
         EventKind.OTHER, ""),
        ({"janus": "slowlink", "sender": 2, "uplink": True, "lost": 10}, None, EventKind.OTHER,
         ""),
        (event(inactive_video(True)), FEED, EventKind.OTHER, ""),
        # Someone else leaving, or a publisher's own handle hearing of others:
        (event({"videoroom": "event", "room": ROOM, "unpublished": OTHER_FEED}), FEED,
         EventKind.OTHER, ""),
        (event({"videoroom": "event", "room": ROOM, "leaving": FEED}), None, EventKind.OTHER,
         ""),
        (event({"videoroom": "event", "room": ROOM, "kicked": OTHER_FEED}), FEED,
         EventKind.OTHER, ""),
        (event({"videoroom": "event", "room": ROOM, "unpublished": "ok"}), None,
         EventKind.OTHER, ""),
        (event({"videoroom": "event", "room": ROOM, "publishers": [{"id": OTHER_FEED}]}), FEED,
         EventKind.OTHER, ""),
        # Malformed: never a reason to drop a working publication.
        ({"janus": "event", "plugindata": "?"}, FEED, EventKind.OTHER, ""),
        ({"janus": "error", "error": "?"}, None, EventKind.ERROR, "unknown error"),
        ({}, None, EventKind.OTHER, ""),
    ],
)  # fmt: skip
def test_janus_messages_are_classified(
    message: dict[str, Any], feed: int | None, kind: EventKind, reason: str
) -> None:
    classified = classify(message, feed=feed)
    assert classified.kind is kind
    assert reason in classified.reason
    assert "\n" not in classified.reason
    # Only what leaves a handle (or session) useless ends a publication or subscription.
    assert classified.ends == (kind not in (EventKind.OTHER, EventKind.ERROR))


# -- a real Janus ----------------------------------------------------------------------


class Participant:
    """A bare VideoRoom participant (joined as a publisher, sending nothing) keeping every
    event Janus sends its handle; also the room's admin (create, kick, destroy)."""

    def __init__(self, api: str) -> None:
        self.session = JanusSession(api)
        self.messages: list[dict[str, Any]] = []
        self._changed = asyncio.Event()
        self.handle = 0

    async def open(self) -> None:
        await self.session.create()
        self.handle = await self.session.attach()
        self.session.on_event(self.handle, self._keep)

    def _keep(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()

    async def request(self, body: dict[str, Any]) -> dict[str, Any]:
        data, _ = await self.session.message(self.handle, body)
        return data

    async def join(self, room: int, name: str) -> int:
        joined = await self.request(
            {"request": "join", "ptype": "publisher", "room": room, "display": name}
        )
        return int(joined["id"])

    async def next(self, kind: EventKind, feed: int | None = None) -> JanusEvent:
        """The first event Janus sent us that classifies as ``kind`` (waits up to 10 s)."""
        async with asyncio.timeout(10):
            while True:
                for message in self.messages:
                    found = classify(message, feed=feed)
                    if found.kind is kind:
                        return found
                self._changed.clear()
                await self._changed.wait()

    async def close(self) -> None:
        await self.session.destroy()
        await self.session.close()


@contextlib.asynccontextmanager
async def participants(janus: JanusServer) -> AsyncIterator[Callable[[], Awaitable[Participant]]]:
    made: list[Participant] = []

    async def make() -> Participant:
        participant = Participant(janus.api)
        made.append(participant)
        await participant.open()
        return participant

    try:
        yield make
    finally:
        for participant in made:
            await participant.close()


async def create_room(admin: Participant) -> JanusTarget:
    """A room of our own, which its secret lets us kick participants from and destroy."""
    await admin.request(
        {
            "request": "create",
            "room": ROOM,
            "secret": ROOM_SECRET,
            "videocodec": "vp8",
            "publishers": 10,
        }
    )
    return JanusTarget(api=admin.session.api, room=ROOM)


async def publishing(publication: JanusPublication, count: int = 1) -> None:
    await wait_until(
        lambda: publication.state == "publishing" and publication.publications == count,
        20,
        f"publication {count} (state {publication.state}, last error {publication.last_error})",
    )


async def subscribe(target: JanusTarget) -> tuple[JanusSubscription, RTCPeerConnection]:
    """A subscription receiving frames."""
    subscription = JanusSubscription(target)
    pc = RTCPeerConnection(rtc_configuration(()))
    track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
    pc.on("track", lambda t: track.done() or track.set_result(t))
    try:
        await subscription.connect(pc)
        await asyncio.wait_for((await asyncio.wait_for(track, 10)).recv(), 10)
    except BaseException:
        await subscription.close()
        await pc.close()
        raise
    return subscription, pc


def publication_of(sender: InProcessSender, target: JanusTarget) -> JanusPublication:
    return JanusPublication(target, lambda: sender.sessions.encoders.subscribe("vp8"), "cam")


async def test_real_janus_events_are_classified(janus, sender_factory) -> None:
    """Kicked, the publisher leaving, the room destroyed: each as Janus really sends it."""
    sender = await sender_factory()
    async with participants(janus) as participant:
        admin = await participant()
        target = await create_room(admin)
        kicked, bystander = await participant(), await participant()
        kicked_feed = await kicked.join(ROOM, "to-kick")
        await bystander.join(ROOM, "bystander")
        async with publication_of(sender, target) as publication:
            await publishing(publication)
            feed = publication.feed
            assert feed is not None
            subscription, pc = await subscribe(target)
            try:
                await admin.request(
                    {"request": "kick", "room": ROOM, "secret": ROOM_SECRET, "id": kicked_feed}
                )
                removed = await kicked.next(EventKind.REMOVED)
                assert removed.reason == f"Janus removed us from room {ROOM} (kicked)"

                await publication.close()
                # The subscriber hears of it on its handle and is lost, saying why.
                await asyncio.wait_for(subscription.lost.wait(), 10)
                assert subscription.reason in (
                    f"the publisher (feed {feed}) stopped publishing",
                    f"the publisher (feed {feed}) left",
                )
            finally:
                await subscription.close()
                await pc.close()
        # Another participant hears of the publisher too: it left, for whoever watches
        # that feed; nothing that ends its own handle.
        left = await bystander.next(EventKind.PUBLISHER_LEFT, feed=feed)
        assert left.reason == f"the publisher (feed {feed}) left"
        assert not any(classify(m).ends for m in bystander.messages), bystander.messages

        await admin.request({"request": "destroy", "room": ROOM, "secret": ROOM_SECRET})
        destroyed = await bystander.next(EventKind.ROOM_DESTROYED)
        assert destroyed.reason == f"room {ROOM} was destroyed"


async def test_publication_comes_back_after_a_kick_and_fails_in_a_destroyed_room(
    janus, sender_factory, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="sender.janus_publisher")
    sender = await sender_factory()
    async with participants(janus) as participant:
        admin = await participant()
        target = await create_room(admin)
        async with publication_of(sender, target) as publication:
            await publishing(publication)
            first_feed = publication.feed
            await admin.request(
                {"request": "kick", "room": ROOM, "secret": ROOM_SECRET, "id": first_feed}
            )
            await publishing(publication, count=2)  # re-joined, with a new feed
            assert publication.feed != first_feed
            lost = [r.getMessage() for r in caplog.records if "publication lost" in r.getMessage()]
            assert len(lost) == 1, lost

            await admin.request({"request": "destroy", "room": ROOM, "secret": ROOM_SECRET})
            # Re-joining a room that is gone is refused for good (though still retried).
            await wait_until(lambda: publication.state == "failed", 10, "failed")
            assert "No such room" in (publication.last_error or "")
            assert publication.publications == 2
        await wait_until(lambda: not sender.sessions.encoders.active(), what="the encoder to stop")
