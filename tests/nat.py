"""Two hosts behind two NATs on one machine: five network namespaces.

    public   wwc-pub-<pid>-<n>    the "internet": a bridge with TURN_ADDR (coturn runs here)
    nat-s    wwc-nats-<pid>-<n>   the sender's router: NAT_S_PUBLIC <-> NAT_S_PRIVATE
    nat-r    wwc-natr-<pid>-<n>   the receiver's router: NAT_R_PUBLIC <-> NAT_R_PRIVATE
    priv-s   wwc-privs-<pid>-<n>  the sender, SENDER_ADDR, default route via nat-s
    priv-r   wwc-privr-<pid>-<n>  the receiver, RECEIVER_ADDR, default route via nat-r

    with NatTopology() as net:
        net.forward_tcp(8080)    # the sender's HTTP signalling, port-forwarded on nat-s
        proc = net.popen(net.sender, ["-m", "sender", "--host", net.sender_addr])

Each router masquerades its private side behind its public address (nftables). The
routers' public sides share one segment with the TURN server, so a router could send UDP
straight to the other one (a Linux masquerading NAT even lets hole punching through):
that is dropped, in both directions, as is UDP to any public address but the TURN
server's. The private networks have no route to each other: the public namespace has
no route to them (nor a default route) and does not forward. So the only way for media
is a TURN relay. The TURN server's ``sendto()`` to a private address therefore fails at
once (ENETUNREACH), as it would behind an egress firewall that drops private
destinations; coturn gives up the allocation on that error, which is what made stock
aiortc stall here (``common/aiortc_ext/relay_pairs.py``). ``block_turn_udp()`` also drops UDP
to the TURN server, leaving TURN over TCP.

Everything lives inside the namespaces this module creates, on private test addresses:
the host's own interfaces, routes and firewall are never touched. ``close()`` (also on
errors) ends the processes left in the namespaces and deletes the namespaces (their
interfaces and nftables tables go with them). Needs root, ``ip`` and ``nft``, like
``tests/netns.py`` (``netns.require()``).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import subprocess
import sys
import time
from collections.abc import Iterator

from .netns import PREFIX, Namespaces, NetnsError, _run, reap_stale

PUBLIC_NET = "10.232.0.0/24"
TURN_ADDR = "10.232.0.1"
NAT_S_PUBLIC = "10.232.0.2"
NAT_R_PUBLIC = "10.232.0.3"
NAT_S_PRIVATE = "10.233.1.1"
SENDER_ADDR = "10.233.1.2"
NAT_R_PRIVATE = "10.233.2.1"
RECEIVER_ADDR = "10.233.2.2"
PUBLIC_PREFIX_LEN = 24
PRIVATE_PREFIX_LEN = 24
ROLES = ("pub", "nats", "natr", "privs", "privr")
BRIDGE = "wwcbr"
PUBLIC_IF = "pub"  # a router's public side
PRIVATE_IF = "priv"  # a router's private side
HOST_IF = "wwc0"  # a private host's only interface
TABLE = "wwc_nat"
# Exit 0 when a TCP connection to port 9 (discard; nothing listens) is refused.
PROBE = """
import socket, sys
try:
    socket.create_connection(("{addr}", 9), timeout=1).close()
except ConnectionRefusedError:
    sys.exit(0)
except OSError:
    sys.exit(1)
"""

_counter = itertools.count()


class NatTopology(Namespaces):
    """The five namespaces (see the module docstring); addresses as attributes."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        tag = tag or f"{os.getpid()}-{next(_counter)}"
        self.public, self.nat_sender, self.nat_receiver, self.sender, self.receiver = (
            f"{PREFIX}-{role}-{tag}" for role in ROLES
        )
        self.turn_addr = TURN_ADDR
        self.sender_addr = SENDER_ADDR
        self.receiver_addr = RECEIVER_ADDR
        self.sender_public = NAT_S_PUBLIC
        self.receiver_public = NAT_R_PUBLIC

    @property
    def routers(self) -> tuple[str, str]:
        return (self.nat_sender, self.nat_receiver)

    def open(self) -> None:
        for name in (self.public, *self.routers, self.sender, self.receiver):
            self.add_namespace(name)
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
        # The public segment: a bridge holding the TURN server's address.
        _run(["ip", "-n", self.public, "link", "add", BRIDGE, "type", "bridge"])
        self._address(self.public, BRIDGE, TURN_ADDR, PUBLIC_PREFIX_LEN)
        sides = (
            (self.nat_sender, self.sender, "wwcs", NAT_S_PUBLIC, NAT_S_PRIVATE, SENDER_ADDR),
            (self.nat_receiver, self.receiver, "wwcr", NAT_R_PUBLIC, NAT_R_PRIVATE, RECEIVER_ADDR),
        )
        for router, host, port, public, gateway, host_addr in sides:
            self._veth(self.public, port, router, PUBLIC_IF)
            _run(["ip", "-n", self.public, "link", "set", port, "master", BRIDGE])
            _run(["ip", "-n", self.public, "link", "set", port, "up"])
            self._veth(router, PRIVATE_IF, host, HOST_IF)
            self._address(router, PUBLIC_IF, public, PUBLIC_PREFIX_LEN)
            self._address(router, PRIVATE_IF, gateway, PRIVATE_PREFIX_LEN)
            self._address(host, HOST_IF, host_addr, PRIVATE_PREFIX_LEN)
            _run(["ip", "-n", router, "route", "add", "default", "via", TURN_ADDR])
            _run(["ip", "-n", host, "route", "add", "default", "via", gateway])
            self.exec(router, ["sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._nft(router, nat_rules(PUBLIC_IF))
        self.wait_reachable()

    def _veth(self, namespace: str, name: str, peer_namespace: str, peer_name: str) -> None:
        """A veth pair created directly inside the namespaces: never visible in the host's."""
        peer = ["peer", "name", peer_name, "netns", peer_namespace]
        _run(["ip", "-n", namespace, "link", "add", name, "type", "veth", *peer])

    def _address(self, namespace: str, interface: str, addr: str, prefix_len: int) -> None:
        _run(["ip", "-n", namespace, "addr", "add", f"{addr}/{prefix_len}", "dev", interface])
        _run(["ip", "-n", namespace, "link", "set", interface, "up"])

    def _nft(self, namespace: str, ruleset: str) -> None:
        result = subprocess.run(
            self.command(namespace, ["nft", "-f", "-"]),
            input=ruleset,
            capture_output=True,
            text=True,
            timeout=15,
            check=False,
        )
        if result.returncode != 0:
            raise NetnsError(f"nft -f in {namespace} failed: {result.stderr.strip()}")

    def wait_reachable(self, within: float = 10.0) -> None:
        """Until each private host reaches the TURN server's address through its NAT (the
        veths' carriers can take a moment to come up): a TCP connection to a closed port
        there is refused, which needs the way there and back."""
        deadline = time.monotonic() + within
        for host in (self.sender, self.receiver):
            while True:
                if self.exec_python(host, PROBE.format(addr=TURN_ADDR)).returncode == 0:
                    break
                if time.monotonic() > deadline:
                    raise NetnsError(f"{host} cannot reach {TURN_ADDR} within {within} s")
                time.sleep(0.05)

    def exec_python(self, namespace: str, code: str) -> subprocess.CompletedProcess[str]:
        """``python -c CODE`` inside ``namespace``, to completion."""
        return _run(self.command(namespace, [sys.executable, "-c", code]), check=False)

    def forward_tcp(self, port: int) -> None:
        """Port-forward TCP ``port`` on the sender's NAT to the sender (its HTTP
        signalling): ``http://{sender_public}:{port}`` reaches ``sender_addr:{port}``."""
        rule = f'iifname "{PUBLIC_IF}" tcp dport {port} dnat to {SENDER_ADDR}:{port}'
        _run(
            self.command(self.nat_sender, ["nft", "add", "rule", "ip", TABLE, "pre", *rule.split()])
        )

    def block_turn_udp(self) -> None:
        """Drop UDP to the TURN server at both routers too: only TURN over TCP is left."""
        for router in self.routers:
            rule = f"ip daddr {TURN_ADDR} meta l4proto udp counter drop comment turn-blocked"
            chain = ["nft", "insert", "rule", "inet", TABLE, "forward"]
            _run(self.command(router, [*chain, *rule.split()]))

    def counters(self, router: str) -> dict[str, int]:
        """Packet counters of ``router``'s rules, by comment: ``direct`` (UDP between
        public addresses, dropped), ``turn-udp`` / ``turn-tcp`` (from the TURN server,
        forwarded to the private host), ``turn-blocked`` (UDP to the TURN server dropped
        after ``block_turn_udp()``)."""
        listing = _run(self.command(router, ["nft", "list", "table", "inet", TABLE])).stdout
        counts = {}
        for line in listing.splitlines():
            words = line.split()
            if "packets" in words and "comment" in words:
                name = words[words.index("comment") + 1].strip('"')
                counts[name] = counts.get(name, 0) + int(words[words.index("packets") + 1])
        return counts


def nat_rules(public_if: str) -> str:
    """A router's ruleset: masquerade the private side behind ``public_if``; drop UDP
    between public addresses unless it is to or from the TURN server; count what comes
    back from the TURN server (the tests read the counters by their comments)."""
    direct = f"ip daddr {PUBLIC_NET} ip daddr != {TURN_ADDR} meta l4proto udp counter drop"
    direct_in = f"ip saddr {PUBLIC_NET} ip saddr != {TURN_ADDR} meta l4proto udp counter drop"
    from_turn = f'iifname "{public_if}" ip saddr {TURN_ADDR} meta l4proto'
    return f"""
table ip {TABLE} {{
    chain pre {{ type nat hook prerouting priority dstnat; policy accept; }}
    chain post {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{public_if}" masquerade
    }}
}}
table inet {TABLE} {{
    chain raw {{
        type filter hook prerouting priority raw; policy accept;
        iifname "{public_if}" {direct_in} comment "direct"
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        oifname "{public_if}" {direct} comment "direct"
        {from_turn} udp counter comment "turn-udp"
        {from_turn} tcp counter comment "turn-tcp"
    }}
    chain output {{
        type filter hook output priority filter; policy accept;
        oifname "{public_if}" {direct} comment "direct"
    }}
}}
"""


@contextlib.contextmanager
def nat_topology() -> Iterator[NatTopology]:
    """``NatTopology`` (after deleting what a killed earlier run left behind)."""
    reap_stale(ROLES)
    with NatTopology() as net:
        yield net
