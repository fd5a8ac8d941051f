"""ICE options and servers (``common/ice.py``): URL checks, the transport policy, TURN
REST API credentials, WHEP ``Link`` headers both ways, and both command-line tools
refusing bad ICE options with one line and exit 2, never echoing a password."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import subprocess
import sys
import time

import aiohttp
import pytest
from aiortc import RTCIceServer, RTCIceTransportPolicy, RTCPeerConnection

from common.ice import (
    IceServers,
    TurnSecret,
    link_header,
    parse_ice_server,
    parse_link_headers,
    redact,
    rtc_configuration,
)

from .helpers import ROOT, assert_one_line_error, child_env
from .turn_server import rest_credentials

PASSWORD = "S3cretPassw0rd"  # must never show up in an error message


@pytest.mark.parametrize(
    ("url", "urls", "username", "credential"),
    [
        ("stun:stun.example.org:3478", "stun:stun.example.org:3478", None, None),
        ("stun:stun.example.org", "stun:stun.example.org", None, None),
        ("turn:u:p@10.0.0.1:3478", "turn:10.0.0.1:3478", "u", "p"),
        ("TURN:u:p@h:3478?transport=tcp", "turn:h:3478?transport=tcp", "u", "p"),
        ("turns:u:p@h:5349?transport=tcp", "turns:h:5349?transport=tcp", "u", "p"),
        ("turn:a%3Ab:p%40ss@h", "turn:h", "a:b", "p@ss"),
        ("turn:u:p@ss@h:3478", "turn:h:3478", "u", "p@ss"),  # the last @ ends the user part
        ("turn:h:3478", "turn:h:3478", None, None),  # credentials from --turn-secret
    ],
)
def test_good_ice_server_urls(url: str, urls: str, username: str, credential: str) -> None:
    server = parse_ice_server(url)
    assert (server.urls, server.username, server.credential) == (urls, username, credential)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://example.org", "not an ICE server URL"),
        ("turn", "not an ICE server URL"),
        ("turn:", "needs HOST"),
        (f"turn:u:{PASSWORD}@", "needs HOST"),
        (f"turn:u:{PASSWORD}@h:99999", "bad port"),
        (f"turn:u:{PASSWORD}@h:abc", "bad port"),
        (f"turn:u:{PASSWORD}@h:3478?transport=sctp", "transport must be udp or tcp"),
        (f"turns:u:{PASSWORD}@h?transport=udp", "transport must be udp or tcp"),
        (f"turn:u:{PASSWORD}@h?proto=udp", "only turn: takes ?transport"),
        ("stun:h:3478?transport=udp", "only turn: takes ?transport"),
        ("stuns:h:5349", "stuns: is not supported"),
        (f"stun:u:{PASSWORD}@h", "only TURN servers take credentials"),
        (f"turn:{PASSWORD}@h", "USER:PASS@"),
        (f"turn:u:{PASSWORD}@[::1]:3478", "aiortc cannot use"),
    ],
)
def test_bad_ice_server_urls_are_named_without_the_password(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        parse_ice_server(url)
    assert PASSWORD not in str(error.value)


def test_redact_hides_credentials_only() -> None:
    assert redact(f"turn:u:{PASSWORD}@h:3478") == "turn:***@h:3478"
    assert redact("stun:h:3478") == "stun:h:3478"


def test_policy_reaches_the_peer_connections_ice() -> None:
    relay = rtc_configuration(["turn:u:p@127.0.0.1:3478"], "relay")
    assert relay.iceTransportPolicy == RTCIceTransportPolicy.RELAY
    assert rtc_configuration().iceTransportPolicy == RTCIceTransportPolicy.ALL
    assert rtc_configuration().iceServers == []  # never aiortc's default Google STUN
    with pytest.raises(ValueError):
        rtc_configuration([], "none")


def test_rest_credentials_are_what_coturn_checks() -> None:
    secret = TurnSecret("s3cret", ttl=600)
    now = time.time()
    username, credential = secret.credentials("viewer-1", now=now)
    assert username == f"{int(now) + 600}:viewer-1"
    digest = hmac.new(b"s3cret", username.encode(), hashlib.sha1).digest()
    assert credential == base64.b64encode(digest).decode()
    # the tests' coturn helper (which coturn accepts) computes them the same way
    theirs = rest_credentials("s3cret", "viewer-1", ttl=600)
    expiry = int(theirs[0].split(":")[0])
    assert secret.credentials("viewer-1", now=expiry - 600) == theirs
    assert "s3cret" not in repr(secret)


def test_a_minting_configuration_is_fresh_at_each_read() -> None:
    """The sender's own configuration lives for weeks; each peer connection made from it
    reads credentials valid for the whole TTL from then on."""
    servers = IceServers(["turn:127.0.0.1:3478", "stun:127.0.0.1:3478"], "all", TurnSecret("x"))
    configuration = servers.configuration()
    first = configuration.iceServers
    expiry = int(first[0].username.split(":")[0])
    assert time.time() + 3600 - 2 <= expiry <= time.time() + 3600
    assert first[0].urls == "turn:127.0.0.1:3478" and first[0].username.endswith(":sender")
    assert first[1] == RTCIceServer(urls="stun:127.0.0.1:3478")  # no credentials for STUN
    assert "x" not in repr(configuration) and first[0].credential not in repr(configuration)
    links = [servers.link_headers(), servers.link_headers()]
    names = [parse_link_headers(links[i])[0].username for i in range(2)]
    assert names[0] != names[1] and all(re.fullmatch(r"\d+:viewer-[0-9a-f]{8}", n) for n in names)


async def test_a_minting_configuration_gathers_with_its_credentials() -> None:
    """aiortc reads the servers when the transceiver is added: the ICE agent gets the
    freshly made user name (and the relay policy)."""
    servers = IceServers(["turn:127.0.0.1:9"], "relay", TurnSecret("x"))
    pc = RTCPeerConnection(servers.configuration())
    try:
        transceiver = pc.addTransceiver("video", direction="recvonly")
        connection = transceiver.receiver.transport.transport.iceGatherer._connection
        assert connection.turn_username.endswith(":sender")
        assert connection.turn_server == ("127.0.0.1", 9)
    finally:
        await pc.close()


def test_link_headers_round_trip_with_awkward_credentials() -> None:
    servers = [
        RTCIceServer(urls="stun:stun.example.org:3478"),
        RTCIceServer(urls="turn:h:3478?transport=tcp", username='a"b,c', credential="x\\y;z="),
    ]
    headers = [link_header(s) for s in servers]
    assert headers[0] == '<stun:stun.example.org:3478>; rel="ice-server"'
    # one header, as fetch() and proxies join them, and a link of another kind
    joined = ", ".join([*headers, '</whep/sessions/x>; rel="self"'])
    assert parse_link_headers([joined]) == servers
    assert parse_link_headers(headers) == servers


@pytest.mark.parametrize(
    "header",
    [
        "no brackets at all",
        '<turn:h:3478>; rel="ice-server"; username="unterminated',
        '<http://example.org>; rel="ice-server"',  # not an ICE server URL
        '<turn:h:3478>; rel="ice-server"; username="u"; credential="p"; credential-type="oauth"',
    ],
)
def test_unusable_links_are_skipped(header: str) -> None:
    good = '<stun:h:3478>; rel="ice-server"'
    assert parse_link_headers([header, good]) == [RTCIceServer(urls="stun:h:3478")]


async def test_options_gives_credentials_only_to_whom_may_post(sender_factory) -> None:
    """Link headers carry TURN credentials: with a token they go only with the token,
    and a CORS pre-flight (which carries no token) never gets them."""
    sender = await sender_factory(
        token="tok", ice_servers=("turn:127.0.0.1:3478",), turn_secret="sec", turn_ttl=60
    )
    async with aiohttp.ClientSession() as http:
        async with http.options(sender.url + "/whep") as resp:
            assert resp.status == 204 and resp.headers.getall("Link", []) == []
        auth = {"Authorization": "Bearer tok"}
        async with http.options(sender.url + "/whep", headers=auth) as resp:
            links = resp.headers.getall("Link")
        preflight = {"Origin": sender.url, "Access-Control-Request-Method": "POST"}
        async with http.options(sender.url + "/whep", headers=preflight) as resp:
            assert resp.headers.getall("Link", []) == []
    (server,) = parse_link_headers(links)
    expiry = int(server.username.split(":")[0])
    assert abs(expiry - (time.time() + 60)) < 5
    assert "sec" not in "".join(links)


# --- the tools refuse bad ICE options: one line, exit 2 ---------------------------------

TURN = f"turn:u:{PASSWORD}@127.0.0.1:3478"


@pytest.mark.parametrize(
    ("tool", "args", "message"),
    [
        ("receiver", ["--ice-server", "http://example.org"], "not an ICE server URL"),
        ("receiver", ["--ice-server", f"turn:u:{PASSWORD}@h:99999"], "bad port"),
        ("receiver", ["--ice-server", f"{TURN}?transport=sctp"], "transport must be udp or tcp"),
        ("receiver", ["--ice-server", f"turn:u:{PASSWORD}@"], "needs HOST"),
        ("receiver", ["--ice-server", "turn:127.0.0.1:3478"], "has no credentials"),
        ("receiver", ["--ice-transport-policy", "none"], "invalid choice: 'none'"),
        ("receiver", ["--ice-transport-policy", "relay", "--ice-server", "stun:h"], "needs a TURN"),
        ("receiver", ["--ice-transport-policy", "relay", "--signalling", "json"], "needs a TURN"),
        ("sender", ["--ice-server", f"turns:u:{PASSWORD}@h?transport=udp"], "transport must be"),
        ("sender", ["--ice-transport-policy", "RELAY"], "invalid choice: 'RELAY'"),
        ("sender", ["--ice-transport-policy", "relay"], "needs a TURN server"),
        ("sender", ["--ice-server", "turn:127.0.0.1:3478"], "or --turn-secret"),
        ("sender", ["--turn-secret", PASSWORD, "--ice-server", TURN], "without them"),
        ("sender", ["--turn-ttl", "0"], "must be positive"),
    ],
)
def test_bad_ice_options_are_one_line_and_exit_2(tool: str, args: list[str], message: str) -> None:
    command = [sys.executable, "-m", tool]
    command += ["http://127.0.0.1:9"] if tool == "receiver" else ["--source", "testsrc"]
    result = subprocess.run(
        [*command, "--port", "0", *args] if tool == "sender" else [*command, *args],
        capture_output=True,
        text=True,
        timeout=30,
        env=child_env(),
        cwd=ROOT,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr, result.stderr
    assert PASSWORD not in result.stderr + result.stdout
