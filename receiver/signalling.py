"""Getting an answer for our offer from the sender."""

from __future__ import annotations

import json
import logging

import aiohttp
from aiortc import RTCSessionDescription

logger = logging.getLogger(__name__)

HTTP_TIMEOUT_SECONDS = 10.0


class SignallingError(Exception):
    """The sender could not be reached or refused the offer; one line for the user."""


def offer_url(url: str) -> str:
    """The JSON offer endpoint for a sender's base URL (or the endpoint itself)."""
    base = url.rstrip("/")
    return base if base.endswith("/offer") else base + "/offer"


async def exchange_json(url: str, offer: RTCSessionDescription) -> RTCSessionDescription:
    """POST ``{"sdp", "type"}`` to the sender's ``/offer`` and return its answer."""
    target = offer_url(url)
    timeout = aiohttp.ClientTimeout(total=HTTP_TIMEOUT_SECONDS)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.post(target, json={"sdp": offer.sdp, "type": offer.type}) as response,
        ):
            text = await response.text()
            if response.status != 200:
                raise SignallingError(
                    f"{target} answered {response.status} {response.reason}: {_reason(text)}"
                )
            body = json.loads(text)
    except aiohttp.ClientError as exc:
        raise SignallingError(f"cannot reach {target}: {exc or type(exc).__name__}") from None
    except TimeoutError:
        raise SignallingError(
            f"{target} did not answer within {HTTP_TIMEOUT_SECONDS:g} s"
        ) from None
    except ValueError:
        raise SignallingError(f"{target} did not answer with JSON") from None
    if (
        not isinstance(body, dict)
        or body.get("type") != "answer"
        or not isinstance(body.get("sdp"), str)
    ):
        raise SignallingError(f"{target} did not answer with an SDP answer")
    return RTCSessionDescription(sdp=body["sdp"], type="answer")


def _reason(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return " ".join(text.split())[:200] or "no reason given"
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return " ".join(text.split())[:200]
