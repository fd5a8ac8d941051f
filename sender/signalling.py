"""HTTP signalling: WHEP (draft-ietf-wish-whep) and the tutorial's JSON ``/offer``.

WHEP: ``POST /whep`` (application/sdp offer) creates a session and answers 201 with the
SDP answer and the session URL in ``Location``; ``PATCH`` on it trickles candidates;
``DELETE`` ends it. With several cameras (``sender.camera``), ``POST /whep/NAME`` watches
camera NAME and ``/whep`` the first; ``/offer`` takes the camera in its ``camera`` field.
Session URLs (``/whep/sessions/ID``) are unique across cameras.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web
from aiortc.sdp import candidate_from_sdp

from common.ice import IceServers

from .access import ACCESS
from .camera import Camera, Cameras, CameraUnavailable
from .sessions import CapacityError, OfferError, Session, Sessions

logger = logging.getLogger(__name__)

SESSIONS = web.AppKey("sessions", Sessions)  # the first camera's
CAMERAS = web.AppKey("cameras", Cameras)
# The ICE servers we use and advertise in Link headers (fresh TURN credentials each time)
ICE_LINKS = web.AppKey("ice_links", IceServers)

SDP = "application/sdp"
SDPFRAG = "application/trickle-ice-sdpfrag"
WHEP_PATH = "/whep"
CAMERA_PATH = "/whep/{camera}"
SESSION_PATH = "/whep/sessions/{session_id}"
RETRY_AFTER_SECONDS = "5"


def json_error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def remote_of(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else (request.remote or "unknown")


async def open_session(
    request: web.Request, sdp: str, camera: Camera
) -> tuple[Session, str] | web.Response:
    """The one place both signalling flavours create a session; errors become responses."""
    try:
        session, answer = await camera.open_session(sdp, remote_of(request))
    except OfferError as exc:
        return json_error(400, str(exc))
    except (CapacityError, CameraUnavailable) as exc:
        return json_error(503, str(exc), **{"Retry-After": RETRY_AFTER_SECONDS})
    return session, answer.sdp


def no_such_camera(cameras: Cameras, name: str) -> str:
    return f"no such camera: {name!r} (cameras: {', '.join(cameras.names())})"


# --- the tutorial's JSON endpoint -------------------------------------------------


def parse_json_offer(text: str) -> str:
    """The SDP of a ``{"sdp": ..., "type": "offer"}`` body; OfferError otherwise."""
    return parse_json_request(text)[0]


def parse_json_request(text: str) -> tuple[str, str | None]:
    """The SDP and the camera (None: the first) of a ``{"sdp": ..., "type": "offer",
    "camera": NAME}`` body; OfferError otherwise."""
    try:
        params = json.loads(text)
    except ValueError:
        raise OfferError("body is not valid JSON") from None
    if not isinstance(params, dict):
        raise OfferError('body must be a JSON object {"sdp": ..., "type": "offer"}')
    sdp = params.get("sdp")
    if not isinstance(sdp, str):
        raise OfferError('missing or non-string "sdp"')
    if params.get("type") != "offer":
        raise OfferError(f'"type" must be "offer", got {params.get("type")!r}')
    camera = params.get("camera")
    if camera is not None and not isinstance(camera, str):
        raise OfferError('"camera" must be a camera\'s name (a string)')
    return sdp, camera


async def read_text(request: web.Request) -> str:
    try:
        return (await request.read()).decode("utf-8")
    except UnicodeDecodeError:
        raise OfferError("body is not UTF-8 text") from None


async def post_offer(request: web.Request) -> web.Response:
    try:
        sdp, name = parse_json_request(await read_text(request))
    except OfferError as exc:
        return json_error(400, str(exc))
    cameras = request.app[CAMERAS]
    camera = cameras.first if name is None else cameras.get(name)
    if camera is None:
        return json_error(400, no_such_camera(cameras, str(name)))
    opened = await open_session(request, sdp, camera)
    if isinstance(opened, web.Response):
        return opened
    return web.json_response({"sdp": opened[1], "type": "answer"})


# --- WHEP ----------------------------------------------------------------------------


def whep_camera(request: web.Request) -> Camera:
    """The camera a WHEP URL names: ``/whep/NAME``, or the first for ``/whep``."""
    cameras = request.app[CAMERAS]
    name = request.match_info.get("camera")
    camera = cameras.first if name is None else cameras.get(name)
    if camera is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": no_such_camera(cameras, str(name))}),
            content_type="application/json",
        )
    return camera


async def post_whep(request: web.Request) -> web.Response:
    camera = whep_camera(request)
    if request.content_type != SDP:
        return json_error(415, f"Content-Type must be {SDP}", **{"Accept-Post": SDP})
    try:
        sdp = await read_text(request)
    except OfferError as exc:
        return json_error(400, str(exc))
    opened = await open_session(request, sdp, camera)
    if isinstance(opened, web.Response):
        return opened
    session, answer = opened
    location = request.app.router["whep_session"].url_for(session_id=session.id)
    response = web.Response(status=201, text=answer, content_type=SDP)
    response.headers["Location"] = str(location)
    response.headers["ETag"] = f'"{session.etag}"'
    add_ice_links(response, request)
    return response


def add_ice_links(response: web.Response, request: web.Request) -> None:
    """The ICE servers, each viewer with its own TURN credentials when we make them."""
    for link in request.app[ICE_LINKS].link_headers():
        response.headers.add("Link", link)


async def options_whep(request: web.Request) -> web.Response:
    """WHEP allows the ICE servers here too, for clients that gather before they offer
    (aiortc). They carry TURN credentials, so only for a request that may also POST
    (the bearer token when one is required); a CORS pre-flight never gets here."""
    whep_camera(request)
    headers = {"Accept-Post": SDP, "Allow": "OPTIONS, POST"}
    response = web.Response(status=204, headers=headers)
    if request.app[ACCESS].authorized(request):
        add_ice_links(response, request)
    return response


def find_session(request: web.Request) -> Session:
    session = request.app[CAMERAS].find_session(request.match_info["session_id"])
    if session is None:
        raise web.HTTPNotFound(
            text=json.dumps({"error": "no such session"}), content_type="application/json"
        )
    return session


async def delete_session(request: web.Request) -> web.Response:
    session = find_session(request)
    await session.close("ended by viewer (DELETE)")
    return web.Response(status=200)


async def patch_session(request: web.Request) -> web.Response:
    session = find_session(request)
    if request.content_type != SDPFRAG:
        return json_error(415, f"Content-Type must be {SDPFRAG}")
    try:
        fragment = parse_sdpfrag(await read_text(request))
    except OfferError as exc:
        return json_error(400, str(exc))
    if fragment.restarts(session):
        # ICE restart is not supported: the status the draft names for PATCH requests
        # a session does not support.
        return json_error(422, "ICE restart is not supported; start a new session")
    candidates = []
    for mid, line in fragment.candidates:
        try:
            candidate = candidate_from_sdp(line.split(":", 1)[1])
        except Exception:  # aiortc's parser raises whatever the bad line provokes
            return json_error(400, f"bad candidate line: {line[:80]!r}")
        candidate.sdpMid = mid
        candidates.append(candidate)
    # Chromium's candidates carry mDNS (.local) names that aioice resolves with a 1 s
    # time-out each: answer now, let the session add them in the background.
    session.add_candidates(candidates, fragment.end_of_candidates)
    return web.Response(status=204)


class SdpFragment:
    """The parts of an ``application/trickle-ice-sdpfrag`` body (RFC 8840) we use."""

    def __init__(self) -> None:
        self.ufrag: str | None = None
        self.pwd: str | None = None
        self.candidates: list[tuple[str | None, str]] = []
        self.end_of_candidates = False

    def restarts(self, session: Session) -> bool:
        return self.ufrag is not None and self.ufrag != session.remote_ufrag


def parse_sdpfrag(text: str) -> SdpFragment:
    fragment = SdpFragment()
    mid: str | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if len(line) < 2 or line[1] != "=":
            raise OfferError(f"not an SDP line: {line[:80]!r}")
        if line.startswith("m="):
            mid = None
        elif line.startswith("a=mid:"):
            mid = line[len("a=mid:") :]
        elif line.startswith("a=ice-ufrag:"):
            fragment.ufrag = line[len("a=ice-ufrag:") :]
        elif line.startswith("a=ice-pwd:"):
            fragment.pwd = line[len("a=ice-pwd:") :]
        elif line.startswith("a=candidate:"):
            fragment.candidates.append((mid, line[2:]))
        elif line == "a=end-of-candidates":
            fragment.end_of_candidates = True
    return fragment


def add_routes(app: web.Application) -> None:
    app.router.add_post("/offer", post_offer)
    whep = app.router.add_resource(WHEP_PATH, name="whep")
    whep.add_route("POST", post_whep)
    whep.add_route("OPTIONS", options_whep)
    session = app.router.add_resource(SESSION_PATH, name="whep_session")
    session.add_route("DELETE", delete_session)
    session.add_route("PATCH", patch_session)
    camera = app.router.add_resource(CAMERA_PATH, name="whep_camera")
    camera.add_route("POST", post_whep)
    camera.add_route("OPTIONS", options_whep)
