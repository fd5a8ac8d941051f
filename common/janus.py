"""Janus WebRTC Server: ``janus+http(s)://`` URLs and a client for its plain HTTP/JSON API.

A Janus *session* is created with ``POST /janus``; plugin *handles* are attached to it with
``POST /janus/<session>``; plugin messages go to ``POST /janus/<session>/<handle>``. Janus
answers quick requests at once (``success``) and slow ones with ``ack``, delivering the
real answer later as an ``event`` carrying the same ``transaction``. Those events, and the
ones nobody asked for (``webrtcup``, ``hangup``, a publisher leaving...), arrive through a
long poll: ``GET /janus/<session>?maxev=10``. A session with no request for 60 s (Janus's
default ``session_timeout``) is dropped, hence a keepalive every 25 s. ``classify()`` says
what a message means (session lost, hung up, room destroyed, publisher gone...): one rule
for the session, the publisher (sender/janus_publisher.py) and the subscriber
(receiver/janus_subscriber.py).

Secrets (the API secret, the auth token, the room pin) never appear in messages or logs.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import secrets
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import aiohttp

logger = logging.getLogger(__name__)

SCHEMES = {"janus+http": "http", "janus+https": "https"}
DEFAULT_PATH = "/janus"
VIDEOROOM = "janus.plugin.videoroom"
REQUEST_TIMEOUT_SECONDS = 10.0
EVENT_TIMEOUT_SECONDS = 30.0  # the asynchronous answer to a plugin message
KEEPALIVE_SECONDS = 25.0  # Janus drops a session after 60 s without a request
LONG_POLL_SECONDS = 30.0  # Janus answers an idle long poll after 30 s
MAX_EVENTS = 10
_QUERY_KEYS = ("room", "feed", "display", "secret", "token", "pin")
_SECRET_KEYS = ("secret", "token", "pin")

# Janus core error codes (janus/apierror.h) and VideoRoom ones (janus_videoroom.c).
SESSION_NOT_FOUND = 458
HANDLE_NOT_FOUND = 459
UNAUTHORIZED = 403
UNAUTHORIZED_PLUGIN = 405
PLUGIN_NOT_FOUND = 460
VIDEOROOM_NO_SUCH_ROOM = 426
VIDEOROOM_NO_SUCH_FEED = 428
VIDEOROOM_UNAUTHORIZED = 433
# Retrying cannot fix these: the configuration (room, secret, pin, token, plugin) is wrong,
# or we sent something Janus can never accept.
PERMANENT_ERRORS = frozenset(
    {
        UNAUTHORIZED,
        UNAUTHORIZED_PLUGIN,
        PLUGIN_NOT_FOUND,
        VIDEOROOM_NO_SUCH_ROOM,
        VIDEOROOM_UNAUTHORIZED,
        421,  # no message
        422,  # invalid JSON
        423,  # invalid request
        429,  # missing element
        430,  # invalid element
        431,  # invalid SDP type
        437,  # invalid SDP
    }
)


class JanusError(Exception):
    """Janus refused, could not be reached, or went away; the message is one line.

    ``code`` is Janus's (core or plugin) error code when Janus gave one."""

    def __init__(
        self, message: str, code: int | None = None, *, permanent: bool | None = None
    ) -> None:
        super().__init__(" ".join(message.split()))
        self.code = code
        # Retrying will not help: unknown room, wrong secret or pin...
        self.permanent = code in PERMANENT_ERRORS if permanent is None else permanent


@dataclass(frozen=True)
class JanusTarget:
    """Where to publish or subscribe: a Janus API root and a VideoRoom room.

    ``secret`` is the Janus API secret (sent as ``apisecret``), ``token`` the Janus auth
    token (``token``), ``pin`` the room's pin (sent when joining)."""

    api: str
    room: int
    feed: int | None = None
    display: str | None = None
    secret: str | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)
    pin: str | None = field(default=None, repr=False)

    def describe(self) -> str:
        """For logs: the API root and the room, never the credentials."""
        who = ""
        if self.feed is not None:
            who = f" feed {self.feed}"
        elif self.display is not None:
            who = f" display {self.display!r}"
        return f"{self.api} room {self.room}{who}"


def redact(url: str) -> str:
    """``url`` with the values of secret, token and pin (and any userinfo) masked."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    query = "&".join(
        f"{key}=***" if key in _SECRET_KEYS else (f"{key}={value}" if value else key)
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def parse_janus_url(url: str) -> JanusTarget:
    """``janus+http(s)://HOST:PORT/janus?room=ROOM[&feed=ID|&display=NAME][&secret=S]
    [&token=T][&pin=P]``; raises JanusError with a one-line reason."""
    shown = redact(url)
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError as exc:
        raise JanusError(f"not a Janus URL {shown}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise JanusError(f"not a Janus URL {shown}: the scheme must be janus+http or janus+https")
    if not parts.hostname:
        raise JanusError(f"not a Janus URL {shown}: no host")
    if "@" in parts.netloc:
        raise JanusError(f"not a Janus URL {shown}: give credentials as ?secret=, ?token= or ?pin=")
    if parts.fragment:
        raise JanusError(f"not a Janus URL {shown}: unexpected #fragment")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _QUERY_KEYS:
            raise JanusError(
                f"not a Janus URL {shown}: unknown parameter {key!r}"
                f" (known: {', '.join(_QUERY_KEYS)})"
            )
        if key in query:
            raise JanusError(f"not a Janus URL {shown}: {key} is given twice")
        query[key] = value
    if "room" not in query:
        raise JanusError(f"not a Janus URL {shown}: ?room=NUMBER is missing")
    room = _number(query["room"], "room", shown)
    feed = _number(query["feed"], "feed", shown) if "feed" in query else None
    display = query.get("display")
    if feed is not None and display is not None:
        raise JanusError(f"not a Janus URL {shown}: give feed or display, not both")
    if display == "":
        raise JanusError(f"not a Janus URL {shown}: display is empty")
    path = parts.path.rstrip("/") or DEFAULT_PATH
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = host if port is None else f"{host}:{port}"
    api = urlunsplit((SCHEMES[scheme], netloc, path, "", ""))
    return JanusTarget(
        api=api,
        room=room,
        feed=feed,
        display=display,
        secret=query.get("secret") or None,
        token=query.get("token") or None,
        pin=query.get("pin") or None,
    )


def _number(value: str, name: str, shown: str) -> int:
    try:
        number = int(value)
    except ValueError:
        raise JanusError(f"not a Janus URL {shown}: {name} must be a number") from None
    if number <= 0:
        raise JanusError(f"not a Janus URL {shown}: {name} must be a positive number")
    return number


class EventKind(enum.Enum):
    """What a message from Janus means for the session or handle it is about."""

    OTHER = "other"  # nothing ends: webrtcup, media, slowlink, keepalive, others coming and going
    SESSION_LOST = "session lost"  # Janus timed the session out or forgot it: start over
    ERROR = "error"  # a Janus or plugin error that answers none of our requests
    HANGUP = "hangup"  # Janus closed this handle's peer connection
    DETACHED = "detached"  # Janus detached this handle
    ROOM_DESTROYED = "room destroyed"
    REMOVED = "removed"  # Janus took us out of the room (a moderator kicked us)
    PUBLISHER_LEFT = "publisher left"  # the feed we subscribe to unpublished or left


@dataclass(frozen=True)
class JanusEvent:
    """A classified Janus message; ``reason`` is one line for logs and users."""

    kind: EventKind
    reason: str = ""
    code: int | None = None  # Janus's error code (ERROR, SESSION_LOST)

    @property
    def ends(self) -> bool:
        """The publication or subscription on this handle (or session) is over: start
        over, or give up."""
        return self.kind not in (EventKind.OTHER, EventKind.ERROR)


_OTHER = JanusEvent(EventKind.OTHER)


def classify(message: Mapping[str, Any], feed: int | None = None) -> JanusEvent:
    """One rule for every Janus message: what it means for us. ``feed``: the publisher
    we subscribe to (its unpublishing or leaving ends our subscription); None for a
    publisher's own handle. Shapes are Janus 1.x's (VideoRoom multistream)."""
    kind = message.get("janus")
    if kind == "timeout":
        return JanusEvent(EventKind.SESSION_LOST, "Janus timed the session out")
    if kind == "error":
        error = message.get("error")
        error = error if isinstance(error, dict) else {}
        code = error.get("code") if isinstance(error.get("code"), int) else None
        if code == SESSION_NOT_FOUND:
            return JanusEvent(EventKind.SESSION_LOST, "Janus no longer knows the session", code)
        reason = " ".join(str(error.get("reason") or "unknown error").split())
        return JanusEvent(EventKind.ERROR, f"Janus error {code}: {reason}", code)
    if kind == "hangup":
        reason = " ".join(str(message.get("reason") or "no reason given").split())
        return JanusEvent(EventKind.HANGUP, f"Janus hung up ({reason})")
    if kind == "detached":
        return JanusEvent(EventKind.DETACHED, "Janus detached our handle")
    if kind != "event":
        return _OTHER
    plugindata = message.get("plugindata")
    data = plugindata.get("data") if isinstance(plugindata, dict) else None
    return _classify_videoroom(data, feed) if isinstance(data, dict) else _OTHER


def _classify_videoroom(data: Mapping[str, Any], feed: int | None) -> JanusEvent:
    room = data.get("room")
    room_name = f"room {room}" if isinstance(room, int) else "the room"
    if "error_code" in data or "error" in data:
        code = data.get("error_code") if isinstance(data.get("error_code"), int) else None
        reason = " ".join(str(data.get("error") or "unknown error").split())
        return JanusEvent(EventKind.ERROR, f"VideoRoom error {code}: {reason}", code)
    if data.get("videoroom") == "destroyed":
        return JanusEvent(EventKind.ROOM_DESTROYED, f"{room_name} was destroyed")
    if data.get("leaving") == "ok":  # about us, not another participant (their id)
        why = data.get("reason") or "no reason given"
        return JanusEvent(EventKind.REMOVED, f"Janus removed us from {room_name} ({why})")
    if feed is not None and feed in (data.get("unpublished"), data.get("leaving")):
        return JanusEvent(EventKind.PUBLISHER_LEFT, f"the publisher (feed {feed}) left")
    if data.get("videoroom") == "updated":
        # Subscribers, Janus 1.x: when the publisher unpublishes, its streams go inactive
        # in an "updated" event (with a renegotiation offer we do not need).
        streams = data.get("streams")
        active = [
            s
            for s in (streams if isinstance(streams, list) else [])
            if isinstance(s, dict) and s.get("active", True) and s.get("type") == "video"
        ]
        if not active:
            who = f"the publisher (feed {feed})" if feed is not None else "the publisher"
            return JanusEvent(EventKind.PUBLISHER_LEFT, f"{who} stopped publishing")
    return _OTHER


EventCallback = Callable[[dict[str, Any]], None]


class JanusSession:
    """One Janus session over HTTP: requests, a long poll for events, keepalives.

    ``lost`` is set when the session is gone (Janus restarted or unreachable, the session
    timed out, the long poll keeps failing); every pending request then fails with
    JanusError and the owner should start over with a new session."""

    def __init__(
        self,
        api: str,
        *,
        token: str | None = None,
        apisecret: str | None = None,
        tls: ssl.SSLContext | bool = True,
        request_timeout: float = REQUEST_TIMEOUT_SECONDS,
        keepalive: float = KEEPALIVE_SECONDS,
        long_poll: float = LONG_POLL_SECONDS,
    ) -> None:
        self.api = api.rstrip("/")
        self.id: int | None = None
        self.lost = asyncio.Event()
        self.lost_reason: str | None = None
        self._auth: dict[str, str] = {}
        if token:
            self._auth["token"] = token
        if apisecret:
            self._auth["apisecret"] = apisecret
        self._secrets = [s for s in (token, apisecret) if s]
        self._tls = tls
        self._request_timeout = request_timeout
        self._keepalive_seconds = keepalive
        self._long_poll_seconds = long_poll
        self._http: aiohttp.ClientSession | None = None
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: dict[int, list[EventCallback]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._prefix = secrets.token_hex(4)
        self._counter = itertools.count(1)
        self._closed = False

    # -- the session ---------------------------------------------------------------

    async def create(self) -> int:
        """Create the session and start the long poll and the keepalives."""
        if self._http is None:
            self._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self._tls))
        response = await self._post(self.api, {"janus": "create"})
        self.id = _data_id(response, "create")
        logger.debug("janus session %s created on %s", self.id, self.api)
        self._tasks = [
            asyncio.create_task(self._poll(), name=f"janus poll {self.id}"),
            asyncio.create_task(self._keepalive(), name=f"janus keepalive {self.id}"),
        ]
        return self.id

    async def attach(self, plugin: str = VIDEOROOM) -> int:
        """Attach a handle to ``plugin``; returns the handle id."""
        response = await self._post(self._session_url(), {"janus": "attach", "plugin": plugin})
        handle = _data_id(response, "attach")
        logger.debug("janus session %s: handle %s attached to %s", self.id, handle, plugin)
        return handle

    def on_event(self, handle: int, callback: EventCallback) -> None:
        """Call ``callback(message)`` for every event about ``handle`` that answers none
        of our requests (``webrtcup``, ``media``, ``hangup``, plugin notifications...)."""
        self._listeners.setdefault(handle, []).append(callback)

    async def message(
        self,
        handle: int,
        body: Mapping[str, Any],
        jsep: Mapping[str, Any] | None = None,
        timeout: float = EVENT_TIMEOUT_SECONDS,  # noqa: ASYNC109 - bounds the event wait only
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """Send a plugin message; return the plugin's answer (``plugindata.data``) and its
        JSEP, if any. Waits for the asynchronous event when Janus acknowledges first.
        A plugin error (``error_code`` in the answer) raises JanusError."""
        request: dict[str, Any] = {"janus": "message", "body": dict(body)}
        if jsep is not None:
            request["jsep"] = dict(jsep)
        what = str(body.get("request", "message"))
        transaction = self._transaction()
        waiter = asyncio.get_running_loop().create_future()
        # Registered before sending: the event may arrive before the POST's answer.
        self._pending[transaction] = waiter
        try:
            response = await self._post(self._handle_url(handle), request, transaction)
            if response.get("janus") == "ack":
                try:
                    async with asyncio.timeout(timeout):
                        response = await waiter
                except TimeoutError:
                    raise JanusError(
                        f"Janus did not answer {what!r} within {timeout:g} s"
                    ) from None
        finally:
            self._pending.pop(transaction, None)
            if waiter.done() and not waiter.cancelled():
                waiter.exception()  # retrieved: no "exception was never retrieved" warning
            else:
                waiter.cancel()
        plugindata = response.get("plugindata")
        data = plugindata.get("data") if isinstance(plugindata, dict) else None
        if not isinstance(data, dict):
            raise JanusError(f"Janus answered {what!r} without plugin data")
        if "error_code" in data or "error" in data:
            code = data.get("error_code")
            reason = self._scrub(str(data.get("error") or "unknown error"))
            raise JanusError(
                f"Janus refused {what!r}: {reason} (error {code})",
                code if isinstance(code, int) else None,
            )
        jsep_out = response.get("jsep")
        return data, jsep_out if isinstance(jsep_out, dict) else None

    async def trickle(self, handle: int, candidate: Mapping[str, Any] | None) -> None:
        """Send one ICE candidate (``None``: gathering completed). aiortc gathers every
        candidate before the offer, so our peers never need this; it is here for others."""
        payload = dict(candidate) if candidate is not None else {"completed": True}
        await self._post(self._handle_url(handle), {"janus": "trickle", "candidate": payload})

    async def detach(self, handle: int) -> None:
        self._listeners.pop(handle, None)
        await self._post(self._handle_url(handle), {"janus": "detach"})

    async def destroy(self, seconds: float = 2.0) -> None:
        """Destroy the session on Janus (best effort: Janus may already be gone)."""
        if self.id is None or self._http is None or self.lost.is_set():
            return
        try:
            await self._post(self._session_url(), {"janus": "destroy"}, seconds=seconds)
            logger.debug("janus session %s destroyed", self.id)
        except JanusError as exc:
            logger.debug("janus session %s: destroy failed: %s", self.id, exc)

    async def close(self) -> None:
        """Stop the long poll and the keepalives and close the HTTP client (the session
        itself stays on Janus until ``destroy()`` or its timeout)."""
        self._closed = True
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._fail_pending("the Janus session was closed")
        if self._http is not None:
            http, self._http = self._http, None
            await http.close()

    async def __aenter__(self) -> JanusSession:
        try:
            await self.create()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()
        await self.close()

    # -- plumbing ------------------------------------------------------------------

    def _session_url(self) -> str:
        if self.id is None:
            raise JanusError("no Janus session: call create() first")
        return f"{self.api}/{self.id}"

    def _handle_url(self, handle: int) -> str:
        return f"{self._session_url()}/{handle}"

    def _transaction(self) -> str:
        return f"{self._prefix}-{next(self._counter)}"

    def _reason(self, exc: BaseException) -> str:
        """One line about a failed request, with no credentials (a URL may carry them)."""
        if isinstance(exc, aiohttp.ClientConnectorError):
            os_error = exc.os_error
            if isinstance(os_error, ConnectionRefusedError):
                return "connection refused"
            return self._scrub(os_error.strerror or str(os_error) or type(os_error).__name__)
        return self._scrub(str(exc) or type(exc).__name__)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    async def _post(
        self,
        url: str,
        request: dict[str, Any],
        transaction: str | None = None,
        seconds: float | None = None,
    ) -> dict[str, Any]:
        """POST one request; the answer, unless it is a Janus error (JanusError)."""
        if self._http is None:
            raise JanusError("the Janus session is closed")
        verb = request["janus"]
        payload = {**request, "transaction": transaction or self._transaction(), **self._auth}
        try:
            async with self._http.post(
                url,
                json=payload,
                timeout=aiohttp.ClientTimeout(total=seconds or self._request_timeout),
            ) as response:
                if response.status >= 400 and response.content_type != "application/json":
                    raise JanusError(
                        f"Janus at {self.api} answered {verb!r} with HTTP {response.status}"
                    )
                answer = await response.json(content_type=None)
        except aiohttp.ClientError as exc:
            raise JanusError(f"cannot reach Janus at {self.api}: {self._reason(exc)}") from None
        except TimeoutError:
            raise JanusError(f"Janus at {self.api} did not answer {verb!r} in time") from None
        except ValueError:
            raise JanusError(f"Janus at {self.api} answered {verb!r} with no JSON") from None
        if not isinstance(answer, dict):
            raise JanusError(f"Janus at {self.api} answered {verb!r} with unexpected JSON")
        if answer.get("janus") == "error":
            event = classify(answer)
            if event.kind is EventKind.SESSION_LOST:
                self._lose(event.reason)
            error = answer.get("error")
            details: dict[str, Any] = error if isinstance(error, dict) else {}
            code = details.get("code")
            reason = self._scrub(str(details.get("reason") or "unknown error"))
            raise JanusError(
                f"Janus refused {verb!r}: {reason} (error {code})",
                code if isinstance(code, int) else None,
            )
        return answer

    async def _poll(self) -> None:
        """The long poll: dispatch events until the session is lost or closed."""
        assert self._http is not None
        url = self._session_url()
        params = {"maxev": str(MAX_EVENTS), **self._auth}
        timeout = aiohttp.ClientTimeout(total=self._long_poll_seconds + self._request_timeout)
        failures = 0
        while not self._closed and not self.lost.is_set():
            try:
                async with self._http.get(url, params=params, timeout=timeout) as response:
                    body = await response.json(content_type=None)
            except aiohttp.ClientConnectorError:
                self._lose(f"Janus at {self.api} refuses connections")
                return
            except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
                # One broken poll may be a hiccup; two in a row mean Janus is gone.
                failures += 1
                logger.debug("janus session %s: long poll failed: %s", self.id, self._reason(exc))
                if failures >= 2:
                    self._lose(f"the long poll to Janus at {self.api} keeps failing")
                    return
                await asyncio.sleep(0.2)
                continue
            failures = 0
            for message in body if isinstance(body, list) else [body]:
                if isinstance(message, dict):
                    self._dispatch(message)

    def _dispatch(self, message: dict[str, Any]) -> None:
        """An answer to its waiting request; else the session's end; else to the
        handle's listeners."""
        kind = message.get("janus")
        if kind == "keepalive":
            return
        event = classify(message)
        if event.kind is EventKind.SESSION_LOST:
            self._lose(event.reason)
            return
        transaction = message.get("transaction")
        waiter = self._pending.get(transaction) if isinstance(transaction, str) else None
        if waiter is not None and kind != "ack":
            if not waiter.done():
                waiter.set_result(message)
            return
        if event.kind is EventKind.ERROR:
            logger.debug("janus session %s: %s", self.id, self._scrub(event.reason))
        handle = message.get("sender")
        listeners = self._listeners.get(handle, ()) if isinstance(handle, int) else ()
        for callback in list(listeners):
            try:
                callback(message)
            except Exception:
                logger.exception("janus event callback failed")

    async def _keepalive(self) -> None:
        while not self.lost.is_set():
            await asyncio.sleep(self._keepalive_seconds)
            try:
                await self._post(self._session_url(), {"janus": "keepalive"})
            except JanusError as exc:
                logger.debug("janus session %s: keepalive failed: %s", self.id, exc)
                if exc.code is None:  # no answer at all
                    self._lose(f"Janus at {self.api} does not answer keepalives")

    def _lose(self, reason: str) -> None:
        if self.lost.is_set() or self._closed:
            return
        self.lost_reason = reason
        logger.debug("janus session %s lost: %s", self.id, reason)
        self.lost.set()
        self._fail_pending(f"Janus session lost: {reason}")

    def _fail_pending(self, reason: str) -> None:
        for waiter in self._pending.values():
            if not waiter.done():
                waiter.set_exception(JanusError(reason))
        self._pending.clear()


def _data_id(response: dict[str, Any], what: str) -> int:
    data = response.get("data")
    ident = data.get("id") if isinstance(data, dict) else None
    if not isinstance(ident, int):
        raise JanusError(f"Janus answered {what!r} without an id")
    return ident
