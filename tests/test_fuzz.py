"""Malformed requests of every kind at every endpoint: only 4xx, never 5xx, and the
daemon stays healthy with no viewer left behind."""

import http.client
import json
from urllib.parse import quote, urlsplit

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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
