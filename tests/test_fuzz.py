"""Malformed requests of every kind at every endpoint: only 4xx, never 5xx, and the
daemon stays healthy with no viewer left behind. And the other side: real peers' offers,
varied in ways that must not matter, always get a working session, and every session
ends once its peer is gone."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import quote, urlsplit

from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.ice import rtc_configuration

from .test_signalling import CHROMIUM_OFFER

TOKEN = "fuzz-token"
METHODS = ["GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD"]
CONTENT_TYPES = [
    "application/sdp",
    "application/json",
    "application/trickle-ice-sdpfrag",
    "text/plain",
    "multipart/form-data; boundary=x",
    "application/sdp; charset=utf-8",
]

sdp_lines = CHROMIUM_OFFER.split("\r\n")


@st.composite
def sdp_bodies(draw: st.DrawFn) -> bytes:
    """Real offers, cut, shuffled, repeated, blown up, or with junk spliced in."""
    lines = list(sdp_lines)
    kind = draw(st.sampled_from(["whole", "truncated", "dropped", "junk", "huge", "json"]))
    if kind == "truncated":
        text = CHROMIUM_OFFER[: draw(st.integers(0, len(CHROMIUM_OFFER)))]
    elif kind == "dropped":
        drop = draw(st.sets(st.integers(0, len(lines) - 1), max_size=10))
        text = "\r\n".join(line for i, line in enumerate(lines) if i not in drop)
    elif kind == "junk":
        at = draw(st.integers(0, len(lines)))
        lines.insert(at, draw(st.text(max_size=200)))
        text = "\r\n".join(lines)
    elif kind == "huge":
        text = CHROMIUM_OFFER * draw(st.integers(2, 60))
    elif kind == "json":
        value = draw(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=50),
                lambda inner: (
                    st.lists(inner, max_size=4)
                    | st.dictionaries(st.sampled_from(["sdp", "type", "x"]), inner, max_size=3)
                ),
                max_leaves=10,
            )
        )
        text = json.dumps(value)
    else:
        text = CHROMIUM_OFFER
    return (
        text.encode("utf-8", "surrogatepass") if kind != "junk" else text.encode(errors="replace")
    )


# Each field draws the well-formed value often enough that requests get past the
# earlier checks and reach the later ones (auth, then content type, then the SDP).
requests = st.fixed_dictionaries(
    {
        "method": st.one_of(st.just("POST"), st.sampled_from(METHODS)),
        "path": st.one_of(
            st.sampled_from(["/offer", "/whep"]),
            st.sampled_from(["/whep/sessions/", "/whep/sessions/x", "/", "/healthz"]),
            st.text(max_size=40).map(lambda t: "/whep/sessions/" + quote(t, safe="")),
            st.text(max_size=40).map(lambda t: "/" + quote(t)),
        ),
        "content_type": st.one_of(
            st.sampled_from(["application/sdp", "application/json"]),
            st.none(),
            st.sampled_from(CONTENT_TYPES),
            st.text(max_size=30),
        ),
        "authorization": st.one_of(
            st.just(f"Bearer {TOKEN}"),
            st.just(f"Bearer {TOKEN}"),
            st.none(),
            st.text(max_size=40),
            st.text(max_size=40).map(lambda t: "Bearer " + t),
        ),
        "origin": st.one_of(
            st.none(), st.none(), st.just("https://evil.example"), st.text(max_size=20)
        ),
        "body": st.one_of(sdp_bodies(), sdp_bodies(), st.binary(max_size=2000)),
    }
)


def _header_safe(value: str) -> str:
    return "".join(ch for ch in value if 32 <= ord(ch) < 127)


def send(url: str, request: dict) -> tuple[int, dict[str, str]]:
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    headers = {}
    for name, key in [
        ("Content-Type", "content_type"),
        ("Authorization", "authorization"),
        ("Origin", "origin"),
    ]:
        if request[key] is not None:
            headers[name] = _header_safe(request[key])
    try:
        connection.request(
            request["method"], request["path"], body=request["body"], headers=headers
        )
        response = connection.getresponse()
        response.read()
        return response.status, dict(response.getheaders())
    finally:
        connection.close()


def test_no_input_gets_a_5xx(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--token", TOKEN, "--max-viewers", "1000")
    sessions: list[str] = []
    statuses: set[int] = set()

    @settings(
        max_examples=400,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        derandomize=True,
    )
    @given(request=requests)
    def check(request: dict) -> None:
        status, headers = send(sender.url, request)
        assert status < 500, (status, request)
        statuses.add(status)
        if status == 201 and "Location" in headers:
            sessions.append(headers["Location"])

    check()
    # the inputs reached every layer: routing, auth, content type, parsing, answering
    assert {201, 400, 401, 404, 405, 415} <= statuses, sorted(statuses)
    health = sender.health()
    assert health["status"] == "ok"
    for location in sessions:  # offers that were good enough to answer: end them
        status, _ = send(
            sender.url,
            {
                "method": "DELETE",
                "path": location,
                "content_type": None,
                "authorization": f"Bearer {TOKEN}",
                "origin": None,
                "body": b"",
            },
        )
        assert status in (200, 404)
    assert sender.health()["viewers"] == 0
    assert sender.proc.poll() is None, "the daemon must keep running"
    assert "Traceback" not in sender.stderr()


# --- valid offers: sessions that work, and end ---------------------------------------

# Lines an offer may carry or leave out without changing what is negotiated: stream ids,
# SSRC announcements (the sender only receives RTCP), header extensions, and feedback.
OPTIONAL_LINES = ("a=msid-semantic:", "a=msid:", "a=ssrc-group:", "a=ssrc:", "a=extmap:")
FEEDBACK = re.compile(r"^a=rtcp-fb:\d+ (nack pli|goog-remb)$")
TOKEN_CHARS = st.characters(min_codepoint=ord("a"), max_codepoint=ord("z"))
FRAME_TIMEOUT = 20.0
CLEANUP_TIMEOUT = 20.0


@dataclass(frozen=True)
class Variation:
    """How a real offer is rewritten, and how its session ends."""

    newline: str
    session_name: str
    username: str
    drop_optional: frozenset[str]
    drop_feedback: bool
    extra_attributes: tuple[str, ...]
    payload_order_seed: int
    endpoint: str  # "/offer" (JSON) or "/whep" (SDP)
    extra_json: bool
    end_by_delete: bool  # WHEP: DELETE the session first; otherwise the peer just leaves

    def apply(self, sdp: str) -> str:
        lines = [line for line in sdp.splitlines() if line]
        out = []
        for line in lines:
            if line.startswith(tuple(self.drop_optional)) or (
                self.drop_feedback and FEEDBACK.match(line)
            ):
                continue
            if line.startswith("s="):
                line = f"s={self.session_name}"
            elif line.startswith("o="):
                line = "o=" + " ".join([self.username, *line[2:].split()[1:]])
            elif line.startswith("m=video"):
                words = line.split()
                payloads = words[3:]
                rotate = self.payload_order_seed % len(payloads)
                line = " ".join(words[:3] + payloads[rotate:] + payloads[:rotate])
            out.append(line)
            if line.startswith("a=mid:"):  # unknown attributes, which must be ignored
                out.extend(f"a=x-fuzz-{name}" for name in self.extra_attributes)
        return self.newline.join(out) + self.newline


variations = st.builds(
    Variation,
    newline=st.sampled_from(["\r\n", "\n"]),
    session_name=st.text(TOKEN_CHARS, min_size=1, max_size=12) | st.just("-"),
    username=st.text(TOKEN_CHARS, min_size=1, max_size=12) | st.just("-"),
    drop_optional=st.frozensets(st.sampled_from(OPTIONAL_LINES)),
    drop_feedback=st.booleans(),
    extra_attributes=st.lists(st.text(TOKEN_CHARS, min_size=1, max_size=8), max_size=3).map(tuple),
    payload_order_seed=st.integers(0, 100),
    endpoint=st.sampled_from(["/offer", "/whep"]),
    extra_json=st.booleans(),
    end_by_delete=st.booleans(),
)


def post_offer(url: str, variation: Variation, sdp: str) -> tuple[int, str, str | None]:
    """POST the offer the way the endpoint wants it: status, answer SDP, session URL."""
    if variation.endpoint == "/offer":
        payload: dict[str, object] = {"sdp": sdp, "type": "offer"}
        if variation.extra_json:
            payload["client"] = "fuzz"  # unknown keys are ignored
        body, content_type = json.dumps(payload).encode(), "application/json"
    else:
        body, content_type = sdp.encode(), "application/sdp"
    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        headers = {"Content-Type": content_type, "Authorization": f"Bearer {TOKEN}"}
        connection.request("POST", variation.endpoint, body=body, headers=headers)
        response = connection.getresponse()
        text = response.read().decode(errors="replace")
        location = response.getheader("Location")
    finally:
        connection.close()
    if response.status in (200, 201) and variation.endpoint == "/offer":
        text = json.loads(text)["sdp"]
    return response.status, text, location


async def watch_once(url: str, variation: Variation) -> None:
    """A real aiortc viewer: offer (rewritten), answer, one decoded frame, then leave."""
    pc = RTCPeerConnection(rtc_configuration(()))
    track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()

    @pc.on("track")
    def _on_track(remote: MediaStreamTrack) -> None:
        if not track.done():
            track.set_result(remote)

    location = None
    try:
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        offer = variation.apply(pc.localDescription.sdp)
        status, answer, location = await asyncio.to_thread(post_offer, url, variation, offer)
        assert status in (200, 201), (status, answer, offer)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        async with asyncio.timeout(FRAME_TIMEOUT):
            frame = await (await track).recv()
        assert frame.width > 0
        if variation.end_by_delete and location is not None:
            status, _ = await asyncio.to_thread(send, url, {**DELETE, "path": location})
            assert status == 200
    finally:
        await pc.close()  # DTLS close: the sender ends a session whose peer left


DELETE = {
    "method": "DELETE",
    "content_type": None,
    "authorization": f"Bearer {TOKEN}",
    "origin": None,
    "body": b"",
}


def wait_for(condition: Callable[[], bool], within: float, what: str) -> None:
    deadline = time.monotonic() + within
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {within} s waiting for {what}"
        time.sleep(0.1)


def test_valid_offers_always_stream_and_leave_nothing_behind(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--token", TOKEN, "--max-viewers", "1000")
    tried: list[Variation] = []

    @settings(
        max_examples=30,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
        derandomize=True,
    )
    @given(variation=variations)
    def check(variation: Variation) -> None:
        tried.append(variation)
        asyncio.run(watch_once(sender.url, variation))

    check()
    assert {v.endpoint for v in tried} == {"/offer", "/whep"}
    # Every session ended with its peer (or its DELETE): no viewer, camera released.
    wait_for(lambda: sender.health()["viewers"] == 0, CLEANUP_TIMEOUT, "no viewers")
    wait_for(lambda: not sender.health()["source_open"], CLEANUP_TIMEOUT, "the camera release")
    log = sender.stderr()
    assert "Traceback" not in log
    assert log.count("viewer joined") == log.count("viewer left") == len(tried), log[-3000:]
