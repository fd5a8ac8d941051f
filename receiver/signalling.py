"""Getting an answer for our offer: WHEP (the default) or the tutorial's JSON ``/offer``."""

from __future__ import annotations

import json
import logging
import ssl
from urllib.parse import urljoin, urlsplit

import aiohttp
from aiortc import RTCSessionDescription

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 10.0
DELETE_TIMEOUT_SECONDS = 2.0  # leaving must not hang on a sender that went away
SIGNALLING = ("whep", "json")


class SignallingError(Exception):
    """The sender could not be reached or refused the offer; one line for the user.
    ``status``: the HTTP status it answered, if it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


def endpoint(url: str, signalling: str) -> str:
    """The endpoint to post to: a sender's base URL gets ``/whep`` (or ``/offer``);
    any other URL is taken as the endpoint itself (e.g. another server's WHEP URL)."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise SignallingError(f"not an http(s) URL: {url!r}")
    if parts.path in ("", "/"):
        return url.rstrip("/") + ("/whep" if signalling == "whep" else "/offer")
    return url


def tls_context(cafile: str | None = None, insecure: bool = False) -> ssl.SSLContext | bool:
    """Certificates are verified unless ``insecure``; ``cafile`` adds a private CA."""
    if insecure:
        logger.warning("--insecure: the sender's certificate is NOT verified")
        return False
    try:
        return ssl.create_default_context(cafile=cafile)
    except (OSError, ssl.SSLError) as exc:
        raise SignallingError(f"cannot load --cafile {cafile}: {exc}") from None


class Signalling:
    """One offer/answer exchange and, for WHEP, the session it creates (DELETEd on close)."""

    def __init__(
        self,
        url: str,
        signalling: str = "whep",
        token: str | None = None,
        tls: ssl.SSLContext | bool = True,
    ) -> None:
        if signalling not in SIGNALLING:
            raise SignallingError(f"unknown signalling {signalling!r}: use whep or json")
        self.kind = signalling
        self.url = endpoint(url, signalling)
        self.session_url: str | None = None
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._tls = tls
        self._http: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS),
                headers=self._headers,
                connector=aiohttp.TCPConnector(ssl=self._tls),
            )
        return self._http

    async def exchange(self, offer: RTCSessionDescription) -> RTCSessionDescription:
        if self.kind == "whep":
            body: str | bytes = offer.sdp
            headers = {"Content-Type": "application/sdp"}
        else:
            body = json.dumps({"sdp": offer.sdp, "type": offer.type})
            headers = {"Content-Type": "application/json"}
        try:
            async with self._client().post(self.url, data=body, headers=headers) as response:
                text = await response.text()
                expected = 201 if self.kind == "whep" else 200
                if response.status not in (expected, 200):
                    raise SignallingError(
                        f"{self.url} answered {response.status} {response.reason}: {_reason(text)}",
                        status=response.status,
                    )
                location = response.headers.get("Location")
        except aiohttp.ClientSSLError as exc:
            raise SignallingError(f"TLS with {self.url} failed: {_tls_reason(exc)}") from None
        except aiohttp.ClientError as exc:
            raise SignallingError(
                f"cannot reach {self.url}: {str(exc) or type(exc).__name__}"
            ) from None
        except TimeoutError:
            raise SignallingError(
                f"{self.url} did not answer within {HTTP_TIMEOUT_SECONDS:g} s"
            ) from None
        if self.kind == "whep":
            if location:
                self.session_url = urljoin(self.url, location)
            return _sdp_answer(self.url, text)
        return _json_answer(self.url, text)

    async def close(self) -> None:
        """End the WHEP session (DELETE) and the HTTP client."""
        if self._http is None:
            return
        http, self._http = self._http, None
        try:
            if self.session_url:
                timeout = aiohttp.ClientTimeout(total=DELETE_TIMEOUT_SECONDS)
                async with http.delete(self.session_url, timeout=timeout) as response:
                    logger.debug("DELETE %s: %s", self.session_url, response.status)
        except (aiohttp.ClientError, TimeoutError) as exc:
            logger.debug("DELETE %s failed: %s", self.session_url, exc)
        finally:
            self.session_url = None
            await http.close()


def _sdp_answer(url: str, text: str) -> RTCSessionDescription:
    if not text.lstrip().startswith("v=0"):
        raise SignallingError(f"{url} did not answer with SDP")
    return RTCSessionDescription(sdp=text, type="answer")


def _json_answer(url: str, text: str) -> RTCSessionDescription:
    try:
        body = json.loads(text)
    except ValueError:
        raise SignallingError(f"{url} did not answer with JSON") from None
    if not isinstance(body, dict) or body.get("type") != "answer":
        raise SignallingError(f"{url} did not answer with an SDP answer")
    if not isinstance(body.get("sdp"), str):
        raise SignallingError(f"{url} did not answer with an SDP answer")
    return RTCSessionDescription(sdp=body["sdp"], type="answer")


def _tls_reason(exc: aiohttp.ClientSSLError) -> str:
    inner = getattr(exc, "certificate_error", None) or getattr(exc, "os_error", None) or exc
    return str(getattr(inner, "verify_message", None) or getattr(inner, "reason", None) or inner)


def _reason(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200] or "no reason given"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return " ".join(text.split())[:200]
