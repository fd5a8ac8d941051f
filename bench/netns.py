"""Two hosts on one machine: a sender and a receiver network namespace joined by a veth
pair, with optional random UDP loss (nftables) on the receiver's input.

    with TwoHosts() as net:              # wwc-s-<pid>-<n> and wwc-r-<pid>-<n>
        net.add_udp_loss(5)              # 5% of UDP packets into the receiver dropped
        proc = net.popen(net.sender, ["-m", "sender", "--host", net.sender_addr])

Everything lives inside the namespaces this module creates: the host's own interfaces,
routes and firewall are never touched. ``close()`` (also on errors) ends the processes
left in the namespaces, deletes the nftables table and the namespaces. Needs root,
``ip`` (Debian: iproute2) and ``nft`` (Debian: nftables).
"""

from __future__ import annotations

import abc
import contextlib
import itertools
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Self

from .senders import ROOT, child_env

PREFIX = "wwc"
SENDER_ADDR = "10.231.0.1"
RECEIVER_ADDR = "10.231.0.2"
PREFIX_LEN = 30
VETH = "wwc0"  # the same name on both sides: each namespace has its own
LOSS_TABLE = "wwc_loss"
COMMAND_TIMEOUT = 15.0
APT_PACKAGES = {"ip": "iproute2", "nft": "nftables"}

_counter = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip``/``nft`` command failed while building or removing the topology."""


def missing_requirements() -> str | None:
    """Why the namespace tests cannot run here, or None when they can."""
    problems = []
    if os.geteuid() != 0:
        problems.append("root is needed to create network namespaces")
    missing = [tool for tool in APT_PACKAGES if shutil.which(tool) is None]
    if missing:
        packages = " ".join(APT_PACKAGES[tool] for tool in missing)
        problems.append(f"missing {', '.join(missing)} (apt-get install {packages})")
    return "; ".join(problems) or None


def _run(args: Sequence[str], check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(args), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
    )
    if check and result.returncode != 0:
        raise NetnsError(f"{' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(roles: Sequence[str] = ("s", "r")) -> list[str]:
    """Delete namespaces left by an earlier run that was killed before it could clean up:
    only ``wwc-<role>-PID-N`` of these roles whose PID no longer exists."""
    result = _run(["ip", "netns", "list"], check=False)
    removed = []
    for line in result.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        parts = name.split("-")
        if len(parts) != 4 or parts[0] != PREFIX or parts[1] not in roles:
            continue
        if not (parts[2].isdigit() and parts[3].isdigit()) or _pid_alive(int(parts[2])):
            continue
        _delete_namespace(name)
        removed.append(name)
    return removed


def _namespace_pids(name: str) -> list[int]:
    result = _run(["ip", "netns", "pids", name], check=False)
    return [int(pid) for pid in result.stdout.split() if pid.isdigit()]


def _delete_namespace(name: str) -> None:
    """End what still runs inside ``name`` (processes our tests started there), drop the
    loss table, delete the namespace. Bounded: a few seconds at most."""
    pids = _namespace_pids(name)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3.0
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _pid_alive(pid) and pid in _namespace_pids(name)]
            if pids:
                time.sleep(0.05)
        if not pids:
            break
    _run(["ip", "netns", "exec", name, "nft", "delete", "table", "inet", LOSS_TABLE], check=False)
    _run(["ip", "netns", "delete", name], check=False)


class Namespaces(abc.ABC):
    """Network namespaces this module created, and commands run inside them; ``close()``
    (also on errors) ends what runs there and deletes them."""

    def __init__(self) -> None:
        self._created: list[str] = []

    def __enter__(self) -> Self:
        try:
            self.open()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abc.abstractmethod
    def open(self) -> None:
        """Build the topology."""

    def command(self, namespace: str, args: Sequence[str]) -> list[str]:
        """``args`` run inside ``namespace`` (the executable itself: ``ip netns exec``
        execs it, so its PID and signals are the command's own)."""
        return ["ip", "netns", "exec", namespace, *args]

    def exec(self, namespace: str, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
        return _run(self.command(namespace, args))

    def popen(self, namespace: str, args: Sequence[str], **kwargs: object) -> subprocess.Popen:
        """``python ARGS`` inside ``namespace`` with the project on PYTHONPATH."""
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("cwd", ROOT)
        return subprocess.Popen(self.command(namespace, [sys.executable, *args]), **kwargs)  # type: ignore[call-overload]

    def run(
        self, namespace: str, args: Sequence[str], timeout: float, **kwargs: object
    ) -> subprocess.CompletedProcess[str]:
        """``python ARGS`` inside ``namespace``, to completion (output captured as text)."""
        kwargs.setdefault("env", child_env())
        kwargs.setdefault("cwd", ROOT)
        return subprocess.run(  # type: ignore[call-overload]
            self.command(namespace, [sys.executable, *args]),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )

    def close(self) -> None:
        for name in reversed(self._created):
            _delete_namespace(name)
        self._created.clear()

    def add_namespace(self, name: str) -> None:
        """A new namespace, IPv4 only (no IPv6 link-local candidates to muddy ICE)."""
        _run(["ip", "netns", "add", name])
        self._created.append(name)
        for key in ("all", "default"):
            self.exec(name, ["sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"])


class TwoHosts(Namespaces):
    """The sender's and the receiver's namespaces on a /30 (sender .1, receiver .2)."""

    def __init__(self, tag: str | None = None) -> None:
        super().__init__()
        tag = tag or f"{os.getpid()}-{next(_counter)}"
        self.sender = f"{PREFIX}-s-{tag}"
        self.receiver = f"{PREFIX}-r-{tag}"
        self.sender_addr = SENDER_ADDR
        self.receiver_addr = RECEIVER_ADDR

    def open(self) -> None:
        for name in (self.sender, self.receiver):
            self.add_namespace(name)
        # Created directly inside the namespaces: never visible in the host's own.
        veth = f"ip -n {self.sender} link add {VETH} type veth peer name {VETH}"
        _run([*veth.split(), "netns", self.receiver])
        for name, addr in ((self.sender, SENDER_ADDR), (self.receiver, RECEIVER_ADDR)):
            _run(["ip", "-n", name, "addr", "add", f"{addr}/{PREFIX_LEN}", "dev", VETH])
            _run(["ip", "-n", name, "link", "set", "lo", "up"])
            _run(["ip", "-n", name, "link", "set", VETH, "up"])
        self.wait_reachable()

    def wait_reachable(self, within: float = 10.0) -> None:
        """Until the veth carries traffic (its carrier can take a moment to come up)."""
        deadline = time.monotonic() + within
        while True:
            up = [
                "UP" in _run(["ip", "-n", name, "-br", "link", "show", VETH]).stdout.split()
                for name in (self.sender, self.receiver)
            ]
            if all(up):
                return
            if time.monotonic() > deadline:
                raise NetnsError(f"the veth pair did not come up within {within} s")
            time.sleep(0.05)

    def add_udp_loss(self, percent: int, namespace: str | None = None) -> None:
        """Drop ``percent``% of the UDP packets arriving in ``namespace`` (the receiver's
        by default), at random: ``meta l4proto udp numgen random mod 100 < N drop``."""
        if not 0 <= percent <= 100:
            raise ValueError(f"loss must be 0-100 %, not {percent}")
        name = namespace or self.receiver
        nft = ["ip", "netns", "exec", name, "nft"]
        _run([*nft, "add", "table", "inet", LOSS_TABLE])
        chain = "{ type filter hook input priority 0; policy accept; }"
        _run([*nft, "add", "chain", "inet", LOSS_TABLE, "input", chain])
        rule = f"meta l4proto udp numgen random mod 100 < {percent} counter drop"
        _run([*nft, "add", "rule", "inet", LOSS_TABLE, "input", *rule.split()])

    def dropped_packets(self, namespace: str | None = None) -> int:
        """What the loss rule has dropped so far (its counter)."""
        name = namespace or self.receiver
        result = _run(["ip", "netns", "exec", name, "nft", "list", "table", "inet", LOSS_TABLE])
        for line in result.stdout.splitlines():
            words = line.split()
            if "drop" in words and "packets" in words:
                return int(words[words.index("packets") + 1])
        return 0


@contextlib.contextmanager
def two_hosts(loss_percent: int = 0) -> Iterator[TwoHosts]:
    """``TwoHosts`` with ``loss_percent``% random UDP loss into the receiver (after
    deleting what a killed earlier run left behind)."""
    reap_stale()
    with TwoHosts() as net:
        if loss_percent:
            net.add_udp_loss(loss_percent)
        yield net
