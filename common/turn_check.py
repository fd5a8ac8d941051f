"""Why a TURN server gave no relayed candidate, in one line for the user.

aioice drops a failed TURN allocation silently, so a receiver behind a NAT would only see
"no video". These ask the server once more, the same way, to learn why (wrong or expired
credentials, a refused connection, no answer); the sender checks its TURN server once at
start-up. Messages name the server, never its credentials.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field

from aioice import Connection, stun, turn
from aiortc import RTCIceServer, RTCPeerConnection
from aiortc.rtcicetransport import parse_stun_turn_uri

from .aiortc_ext.relay_pairs import connection, ice_transports
from .ice import IceServers, _urls, is_turn

logger = logging.getLogger(__name__)

# aioice waits this long for a TURN allocation while gathering, then gives up silently.
AIOICE_GATHER_TIMEOUT = 5.0
PROBE_TIMEOUT_SECONDS = 3.0
CREDENTIAL_ERRORS = (401, 441)  # Unauthorized; Wrong Credentials (RFC 5766)


class TurnError(Exception):
    """A TURN server gave us no relayed candidate; one line for the user, naming the
    server but never its credentials. ``credentials``: it refused them (wrong or
    expired), which trying again will not fix."""

    def __init__(self, message: str, *, credentials: bool = False) -> None:
        super().__init__(message)
        self.credentials = credentials


def _connections(pc: RTCPeerConnection) -> list[Connection]:
    return [connection(transport) for transport in ice_transports(pc)]


@dataclass(frozen=True)
class _TurnTarget:
    """Where and how to ask a TURN server for an allocation."""

    url: str  # for messages: no credentials
    addr: tuple[str, int]
    username: str | None = field(repr=False)
    password: str | None = field(repr=False)
    ssl: bool = False
    transport: str = "udp"

    @classmethod
    def of_connection(cls, conn: Connection) -> _TurnTarget:
        assert conn.turn_server is not None
        scheme = "turns" if conn.turn_ssl else "turn"
        host, port = conn.turn_server
        url = f"{scheme}:{host}:{port}?transport={conn.turn_transport}"
        return cls(
            url,
            conn.turn_server,
            conn.turn_username,
            conn.turn_password,
            conn.turn_ssl,
            conn.turn_transport,
        )

    @classmethod
    def of_server(cls, server: RTCIceServer) -> _TurnTarget:
        (url,) = _urls(server)
        parsed = parse_stun_turn_uri(url)
        shown = f"{parsed['scheme']}:{parsed['host']}:{parsed['port']}"
        return cls(
            f"{shown}?transport={parsed['transport']}",  # as of_connection() shows it
            (parsed["host"], parsed["port"]),
            server.username,
            server.credential,
            parsed["scheme"] == "turns",
            parsed["transport"],
        )


async def turn_failure(pc: RTCPeerConnection, gathering_seconds: float) -> TurnError | None:
    """After ``pc`` gathered its candidates: why its TURN server gave no relayed
    candidate, or None (none configured, or it gave one).

    aioice drops a failed allocation silently (``Connection.get_component_candidates``),
    so ask once more, the same way, to learn why: the server's error (401 for wrong or
    expired credentials), a refused connection, no answer. A gathering that used up
    aioice's whole 5 s already means no answer."""
    for conn in _connections(pc):
        if conn.turn_server is None or any(c.type == "relay" for c in conn.local_candidates):
            continue
        target = _TurnTarget.of_connection(conn)
        if gathering_seconds >= AIOICE_GATHER_TIMEOUT - 0.5:
            return TurnError(
                f"TURN server {target.url} did not answer within {AIOICE_GATHER_TIMEOUT:g} s"
            )
        problem = await probe_turn(target, PROBE_TIMEOUT_SECONDS)
        if problem is None:
            logger.info("TURN server %s answered only when asked again", target.url)
        return problem
    return None


async def check_turn_servers(servers: IceServers) -> None:
    """Ask each TURN server of ``servers`` for an allocation (with our own credentials)
    and log what came of it: a sender says at start-up when its TURN server refuses it,
    instead of viewers behind NATs silently not connecting."""
    for server in servers.resolved("sender"):
        if not is_turn(server):
            continue
        target = _TurnTarget.of_server(server)
        problem = await probe_turn(target, AIOICE_GATHER_TIMEOUT)
        if problem is None:
            logger.info("TURN server %s: relaying works", target.url)
        else:
            logger.warning("%s: viewers behind NATs may not connect", problem)


async def probe_turn(target: _TurnTarget, within: float) -> TurnError | None:
    """One TURN allocation, released at once: None when granted, else why not."""
    url = target.url
    try:
        async with asyncio.timeout(within):
            transport, _ = await turn.create_turn_endpoint(
                asyncio.DatagramProtocol,
                server_addr=target.addr,
                username=target.username,
                password=target.password,
                ssl=target.ssl,
                transport=target.transport,
            )
    except stun.TransactionFailed as exc:
        code, reason = exc.response.attributes.get("ERROR-CODE", (0, "no reason"))
        if code in CREDENTIAL_ERRORS:
            return TurnError(
                f"TURN server {url} refused the credentials: {code} {reason} "
                "(wrong or expired user name or password)",
                credentials=True,
            )
        return TurnError(f"TURN server {url} refused the allocation: {code} {reason}")
    except (stun.TransactionTimeout, TimeoutError):
        return TurnError(f"TURN server {url} did not answer within {within:g} s")
    except OSError as exc:
        if isinstance(exc, socket.gaierror):  # its errno is not an OS one
            reason = exc.strerror
        else:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return TurnError(f"TURN server {url} cannot be reached: {reason}")
    transport.close()
    return None
