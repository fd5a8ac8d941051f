"""Who may call the signalling endpoints: bearer token and browser origins (CORS)."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from aiohttp import web

logger = logging.getLogger(__name__)

PROTECTED_PREFIXES = ("/offer", "/whep")
ALLOW_METHODS = "OPTIONS, POST, PATCH, DELETE"
ALLOW_HEADERS = "Authorization, Content-Type, If-Match"
EXPOSE_HEADERS = "Location, Link, ETag, Accept-Post, Retry-After, WWW-Authenticate"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class AccessPolicy:
    token: str | None = None
    allowed_origins: frozenset[str] = field(default_factory=frozenset)

    def authorized(self, request: web.Request) -> bool:
        if not self.token:
            return True
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        return hmac.compare_digest(given.strip().encode(), self.token.encode())

    def origin_allowed(self, origin: str, request: web.Request) -> bool:
        """The sender's own page always; other origins only when listed."""
        return origin == f"{request.scheme}://{request.host}" or origin in self.allowed_origins


ACCESS = web.AppKey("access", AccessPolicy)


def _protected(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in PROTECTED_PREFIXES)


def _cors(response: web.StreamResponse, origin: str) -> None:
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    response.headers.add("Vary", "Origin")


@web.middleware
async def access_control(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not _protected(request.path):
        return await handler(request)
    policy = request.app[ACCESS]
    origin = request.headers.get("Origin")
    if origin and not policy.origin_allowed(origin, request):
        return web.json_response(
            {"error": f"origin {origin} may not call this sender (see --allow-origin)"},
            status=403,
        )
    if (
        request.method == "OPTIONS"
        and origin
        and "Access-Control-Request-Method" in request.headers
    ):
        preflight = web.Response(status=204)
        preflight.headers["Access-Control-Allow-Methods"] = ALLOW_METHODS
        preflight.headers["Access-Control-Allow-Headers"] = ALLOW_HEADERS
        preflight.headers["Access-Control-Max-Age"] = "600"
        if request.path == "/whep":
            preflight.headers["Accept-Post"] = "application/sdp"
        _cors(preflight, origin)
        return preflight
    if request.method != "OPTIONS" and not policy.authorized(request):
        response: web.StreamResponse = web.json_response(
            {"error": "a bearer token is required"},
            status=401,
            headers={"WWW-Authenticate": 'Bearer realm="webrtc-webcam"'},
        )
    else:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if origin:
                _cors(exc, origin)
            raise
    if origin:
        _cors(response, origin)
    return response
