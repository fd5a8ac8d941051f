"""Never relay ICE checks to a peer's private host address (aiortc 1.16.0 / aioice 0.13.0).

The problem, behind two NATs with one TURN server on both sides and the default
(``all``) ICE transport policy: ICE stays in "checking" and no video arrives, while the
``relay`` policy connects at once. aioice pairs every local candidate with every remote
one (``Connection._pair_remote_candidate``), so our relayed candidate is also paired with
the peer's host candidate, a private address behind the peer's NAT
(``relay 10.232.0.1:54337 -> host 10.233.1.2:58787``). Checking that pair binds a TURN
channel to the private address and sends the check through the TURN server, which cannot
reach it. coturn (4.6.1, Debian bookworm; ``send_data_from_ioa_socket_nbh()`` in
``ns_ioalib_engine_impl.c``) treats a failed ``sendto()`` to a peer as fatal for the
relay socket: ENETUNREACH when it has no route there, EPERM from its own egress
firewall, anything but ENOBUFS/EAGAIN/ECONNRESET/ECONNREFUSED. It prints "udp send:
Network is unreachable", marks the socket to be closed, and from then on that
allocation relays nothing ("wrote to peer -1 bytes" at ``--Verbose``) or is torn down at
once ("closed ... reason: general"; the client's next CHANNEL_BIND gets 438, then 400).
It is the same allocation the relayed-to-relayed pair needs, checked a few milliseconds
later, on both sides: those checks are never relayed, and aioice retransmits them (7
times, 0.5 s doubling) until ICE fails after 63.5 s. With the relay policy there are no
host candidates, so the private address is never tried and the one relayed pair
connects. A TURN server that silently drops such packets (a default route, no firewall)
is not hurt, which is why this depends on the TURN host.

``apply(pc)`` drops, on that connection's ICE connections only, every pair of a local
relayed candidate with a remote host candidate whose address is not globally routable
(RFC 1918, shared 100.64/10, link-local, loopback, unique-local IPv6: what
``ipaddress.is_global`` rejects). Those addresses are only reachable inside the peer's
own network, never through a TURN server on the Internet; a peer with a public host
address (a server) is still paired with our relayed candidate, and host-to-host,
host-to-relayed and relayed-to-relayed pairs are untouched. Limitation: a TURN server
inside the peer's private network that the peer does not use itself cannot reach the
peer's private host address through us any more; the peer giving the same TURN server
(our documented setup) connects relayed-to-relayed.

The hook is an instance attribute on each of this peer connection's aioice
``Connection`` objects (wrapping ``_pair_remote_candidate``, which aioice calls when it
forms the check list in ``connect()`` and for each trickled candidate), installed when
the connection starts gathering. Other peer connections in the process keep stock
behaviour. ``tests/test_nat_turn.py`` fails if an upgrade breaks it.
"""

from __future__ import annotations

import ipaddress
import logging

from aioice import Candidate, Connection
from aiortc import RTCPeerConnection
from aiortc.rtcicetransport import RTCIceTransport

from . import check

logger = logging.getLogger(__name__)

HOOK = "_pair_remote_candidate"


def apply(pc: RTCPeerConnection) -> None:
    """Keep this connection's relayed candidates away from the peer's private host
    addresses. Call it before ``setLocalDescription()`` (right after creating ``pc`` is
    best): it hooks the ICE connections that exist now and those created later, when
    they start gathering candidates, which is before any pair is formed."""
    check(__name__)

    def hook_all() -> None:
        for transport in ice_transports(pc):
            hook(transport)

    pc.on("icegatheringstatechange", hook_all)
    hook_all()


def applied(pc: RTCPeerConnection) -> bool:
    """Whether ``pc`` has ICE connections and every one carries the hook."""
    transports = ice_transports(pc)
    return bool(transports) and all(HOOK in vars(connection(t)) for t in transports)


def ice_transports(pc: RTCPeerConnection) -> list[RTCIceTransport]:
    """The ICE transports of ``pc``'s media and data channel, each once."""
    transports: list[RTCIceTransport] = []
    dtls = [t.receiver.transport for t in pc.getTransceivers()]
    if pc.sctp is not None:
        dtls.append(pc.sctp.transport)
    for transport in dtls:
        if transport.transport not in transports:  # one for all, when bundled
            transports.append(transport.transport)
    return transports


def connection(transport: RTCIceTransport) -> Connection:
    """The aioice connection behind an aiortc ICE transport."""
    return transport._connection


def unreachable_through_relay(remote: Candidate) -> bool:
    """A remote host candidate on an address no TURN server on the Internet can reach."""
    if remote.type != "host":
        return False
    try:
        address = ipaddress.ip_address(remote._network_host)  # the resolved address (mDNS)
    except ValueError:
        return False
    return not address.is_global


def hook(transport: RTCIceTransport) -> None:
    """Wrap this ICE connection's pairing (once)."""
    conn = connection(transport)
    if HOOK in vars(conn):
        return
    stock = conn._pair_remote_candidate

    def _pair_remote_candidate(remote_candidate: Candidate) -> None:
        stock(remote_candidate)
        if not unreachable_through_relay(remote_candidate):
            return
        for pair in [p for p in conn._check_list if p.remote_candidate is remote_candidate]:
            if pair.local_candidate.type == "relay" and pair.task is None:
                logger.debug("not checking %s: a private address, unreachable via TURN", pair)
                conn._check_list.remove(pair)

    # an instance attribute: this connection only
    conn._pair_remote_candidate = _pair_remote_candidate  # type: ignore[method-assign]  # per-object hook
