"""HTTP signalling: the JSON ``/offer`` endpoint the browser page and the tutorial use."""

from __future__ import annotations

import json
import logging

from aiohttp import web

from .sessions import CapacityError, OfferError, Sessions

logger = logging.getLogger(__name__)

SESSIONS = web.AppKey("sessions", Sessions)


def json_error(status: int, reason: str, **headers: str) -> web.Response:
    return web.json_response({"error": reason}, status=status, headers=headers or None)


def remote_of(request: web.Request) -> str:
    peer = request.transport.get_extra_info("peername") if request.transport else None
    return f"{peer[0]}:{peer[1]}" if peer else (request.remote or "unknown")


async def parse_json_offer(request: web.Request) -> str:
    """The SDP of a ``{"sdp": ..., "type": "offer"}`` body; OfferError otherwise."""
    try:
        params = json.loads(await request.text())
    except (ValueError, UnicodeDecodeError):
        raise OfferError("body is not valid JSON") from None
    if not isinstance(params, dict):
        raise OfferError('body must be a JSON object {"sdp": ..., "type": "offer"}')
    if not isinstance(params.get("sdp"), str):
        raise OfferError('missing or non-string "sdp"')
    if params.get("type") != "offer":
        raise OfferError(f'"type" must be "offer", got {params.get("type")!r}')
    return params["sdp"]


async def post_offer(request: web.Request) -> web.Response:
    try:
        sdp = await parse_json_offer(request)
        _, answer = await request.app[SESSIONS].open(sdp, remote_of(request))
    except OfferError as exc:
        return json_error(400, str(exc))
    except CapacityError as exc:
        return json_error(503, str(exc), **{"Retry-After": "5"})
    return web.json_response({"sdp": answer.sdp, "type": answer.type})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/offer", post_offer)
