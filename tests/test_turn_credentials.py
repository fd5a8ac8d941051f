"""TURN credentials that can be handed out (the TURN REST API, coturn's
``use-auth-secret``), and TURN servers that fail: a real coturn on 127.0.0.1, real
senders and receivers.

The sender holds the secret and gives each WHEP client its own short-lived user name
and password; coturn accepts them, and refuses them once expired or made with another
secret. A receiver whose TURN server refuses its credentials, refuses the connection or
does not answer says so in one line naming the server (never the password) and exits 1
at once; with the default policy it carries on without a relay. Through the NAT
topology (root), nothing the sender or receiver logs, even at -vv, holds the secret or
a password that coturn accepted. Needs coturn: skipped without it, failed in CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aioice import stun, turn

from common.ice import TurnSecret, parse_link_headers

from .helpers import assert_one_line_error, run_receiver
from .test_nat_turn import run_through_nat, turn_users
from .test_signalling import CHROMIUM_OFFER
from .turn_server import PASSWORD, USER, TurnServer

SECRET = "0123456789abcdef-test-secret"
WRONG = "Wr0ngPassw0rd"


def free_port() -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (coturn listens on both)."""
    while True:
        with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with contextlib.suppress(OSError):
                udp.bind(("127.0.0.1", port))
                return port


@pytest.fixture
def coturn(tmp_path: Path) -> Iterator[Callable[..., TurnServer]]:
    """Start coturn on a free port of 127.0.0.1 (static user u/p, or ``secret``)."""
    started: list[TurnServer] = []

    def start(secret: str | None = None) -> TurnServer:
        server = TurnServer(
            tmp_path / f"turn{len(started)}", "127.0.0.1", port=free_port(), secret=secret
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


async def allocate(server: TurnServer, username: str, password: str) -> tuple[str, int]:
    """A TURN allocation with these credentials (released at once): its relayed address."""
    transport, _ = await turn.create_turn_endpoint(
        asyncio.DatagramProtocol,
        server_addr=(server.addr, server.port),
        username=username,
        password=password,
    )
    relayed = transport.get_extra_info("sockname")
    transport.close()
    return relayed


async def refused(server: TurnServer, username: str, password: str) -> int:
    """The STUN error code coturn refuses an allocation with."""
    with pytest.raises(stun.TransactionFailed) as error:
        await allocate(server, username, password)
    return error.value.response.attributes["ERROR-CODE"][0]


async def test_each_viewer_gets_its_own_credentials_coturn_accepts(coturn, sender_factory) -> None:
    server = coturn(secret=SECRET)
    sender = await sender_factory(
        ice_servers=(f"turn:127.0.0.1:{server.port}", f"stun:127.0.0.1:{server.port}"),
        turn_secret=SECRET,
        turn_ttl=600,
    )
    asked = time.time()
    async with aiohttp.ClientSession() as http:
        async with http.options(sender.url + "/whep") as resp:
            first = resp.headers.getall("Link")
        headers = {"Content-Type": "application/sdp"}
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=headers) as resp:
            assert resp.status == 201
            second = resp.headers.getall("Link")
            async with http.delete(sender.url + resp.headers["Location"]):
                pass
    answered = time.time()
    assert SECRET not in "".join(first + second)
    servers = [parse_link_headers(links) for links in (first, second)]
    for turn_server, stun_server in servers:
        assert turn_server.urls == f"turn:127.0.0.1:{server.port}"
        assert stun_server.username is None  # STUN needs none
        expiry, name = turn_server.username.split(":")
        assert int(asked) + 600 <= int(expiry) <= answered + 600
        assert re.fullmatch(r"viewer-[0-9a-f]{8}", name)
        relayed = await allocate(server, turn_server.username, turn_server.credential)
        assert relayed[0] == "127.0.0.1"
    assert servers[0][0].username != servers[1][0].username  # one per client

    expired = TurnSecret(SECRET, ttl=-60).credentials("viewer-late")
    assert await refused(server, *expired) == 401
    other = TurnSecret("another secret", ttl=600).credentials("viewer-x")
    assert await refused(server, *other) == 401


def turn_url(server: TurnServer, username: str, password: str) -> str:
    return f"turn:{quote(username, safe='')}:{quote(password, safe='')}@127.0.0.1:{server.port}"


# Each case: coturn's secret (None: static user u/p; "none": no coturn at all), the
# sender's and the receiver's options (given the server and its port), what the one
# error line says.
CASES = {
    "wrong password": (
        None,
        lambda s: [],
        lambda s, port: ["--ice-server", f"turn:{USER}:{WRONG}@127.0.0.1:{port}"],
        "refused the credentials: 401",
    ),
    "expired credentials": (
        SECRET,
        lambda s: [],
        lambda s, port: [
            "--ice-server",
            turn_url(s, *TurnSecret(SECRET, ttl=-60).credentials("viewer-late")),
        ],
        "refused the credentials: 401",
    ),
    "sender's secret is not coturn's": (
        SECRET,
        lambda s: ["--ice-server", f"turn:127.0.0.1:{s.port}", "--turn-secret", WRONG],
        lambda s, port: [],  # takes the sender's
        "they came from the sender: does its --turn-secret match?",
    ),
    "TURN server refusing TCP": (
        "none",
        lambda s: [],
        lambda s, port: [
            *("--ice-server", f"turn:{USER}:{WRONG}@127.0.0.1:{port}?transport=tcp"),
            *("--ice-transport-policy", "relay"),
            *("--max-retries", "0"),  # not final: the server may come back
        ],
        "cannot be reached: Connection refused",
    ),
    "TURN server not answering": (
        "none",
        lambda s: [],
        lambda s, port: [
            *("--ice-server", f"turn:{USER}:{WRONG}@127.0.0.1:{port}"),
            *("--ice-transport-policy", "relay"),
            *("--max-retries", "0"),
        ],
        "did not answer within 5 s",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_turn_failures_are_one_line_and_exit_1(case: str, coturn, sender_process) -> None:
    secret, sender_args, receiver_args, message = CASES[case]
    server = coturn(secret=secret) if secret != "none" else None
    port = server.port if server else free_port()  # nothing listens there
    sender = sender_process("--source", "testsrc", *sender_args(server))
    started = time.monotonic()
    result = run_receiver(sender.url, *receiver_args(server, port), "--frames", "5")
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr, result.stderr
    assert f"TURN server turn:127.0.0.1:{port}" in result.stderr, result.stderr  # named
    assert WRONG not in result.stderr and "retrying" not in result.stderr, result.stderr
    assert elapsed < 15, f"{elapsed:.1f} s: {result.stderr}"
    print(f"{case}: exit 1 after {elapsed:.1f} s: {result.stderr.strip().splitlines()[-1]}")


def test_default_policy_carries_on_without_a_failing_turn_server(sender_process) -> None:
    """On a LAN a dead TURN server must not stop the video: a warning naming it."""
    sender = sender_process("--source", "testsrc")
    port = free_port()
    url = f"turn:{USER}:{PASSWORD}@127.0.0.1:{port}?transport=tcp"
    result = run_receiver(sender.url, "--ice-server", url, "--frames", "10")
    assert result.returncode == 0, result.stderr
    warning = f"TURN server turn:127.0.0.1:{port}?transport=tcp cannot be reached"
    assert warning in result.stderr and "trying without a relay" in result.stderr


def test_sender_says_at_start_whether_its_turn_server_works(coturn, sender_process) -> None:
    """An operator learns at once that viewers behind NATs will not connect."""
    server = coturn()
    good = sender_process("--source", "testsrc", "--ice-server", server.url())
    bad = sender_process(
        "--source", "testsrc", "--ice-server", f"turn:{USER}:{WRONG}@127.0.0.1:{server.port}"
    )
    url = f"turn:127.0.0.1:{server.port}?transport=udp"
    deadline = time.monotonic() + 20
    while "TURN server" not in good.stderr() or "TURN server" not in bad.stderr():
        assert time.monotonic() < deadline, good.stderr() + bad.stderr()
        time.sleep(0.05)
    assert f"TURN server {url}: relaying works" in good.stderr()
    assert f"TURN server {url} refused the credentials: 401" in bad.stderr()
    assert "WARNING" in bad.stderr() and WRONG not in bad.stderr()


def test_no_secret_or_password_in_the_logs_even_at_debug_level(tmp_path: Path) -> None:
    """Through the NAT topology, with the REST secret and -vv on both sides: the video
    comes through the relay, and no log line holds the secret or any password coturn
    accepted (each is recomputed from the user names in coturn's own log)."""
    run = run_through_nat(tmp_path, secret=SECRET, verbose=True)
    assert run.summary["frames"] > 0, run.detail
    assert run.from_turn("udp") >= run.summary["frames"], run.detail
    users = turn_users(run.turn_log)
    assert any(u.endswith(":sender") for u in users), run.detail
    assert any(":viewer-" in u for u in users), run.detail
    secret = TurnSecret(SECRET)
    passwords = set()
    for username in users:
        expiry = int(username.split(":")[0])
        passwords.add(secret.credentials(username.split(":", 1)[1], now=expiry - secret.ttl)[1])
    assert "DEBUG" in run.logs  # -vv did log, down to the TURN messages with user names:
    assert any(username in run.logs for username in users), run.logs[-3000:]
    for leak in (SECRET, *passwords):
        assert leak not in run.logs, f"{leak!r} is in the logs"
