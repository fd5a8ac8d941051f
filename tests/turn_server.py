"""A TURN server (Debian's ``coturn``) for the tests, started like ``tests/janus_server.py``
starts Janus, usually inside the "public" namespace of ``tests/nat.py``.

    server = TurnServer(tmp_path / "turn", "10.232.0.1", prefix=net.command(net.public, []))
    server.start()                         # waits until UDP and TCP listen
    server.url()                           # turn:u:p@10.232.0.1:3478
    server.url(transport="tcp")            # ...?transport=tcp
    server.allocations()                   # allocations created so far (from its log)
    server.stop()

Long-term credentials with one static user (``u``/``p``), or with ``secret=`` the TURN
REST API's shared secret instead (coturn cannot have both; ``rest_credentials()`` makes
a time-limited user name and password). Plain UDP and TCP only: no TLS or DTLS
listeners, no CLI, no RFC 5780 second address. Its user database, pid file and log (at
verbose level: sessions and allocations) stay in ``workdir``: nothing outside it and its
namespace is touched.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

from bench.senders import stop_process

from .ci import require_or_skip

DEFAULT_PORT = 3478
USER = "u"
PASSWORD = "p"
REALM = "wwc.test"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


def turnserver_binary() -> str | None:
    return shutil.which("turnserver") or shutil.which("turnserver", path="/usr/bin:/usr/sbin")


def require() -> None:
    """Skip the calling test when coturn is not installed, except in CI, where that is a
    failure: CI installs it (apt-get install coturn)."""
    problem = None
    if turnserver_binary() is None:
        problem = "coturn is not installed (Debian: apt-get install coturn)"
    require_or_skip(problem, "the TURN tests")


def rest_credentials(secret: str, user: str = USER, ttl: int = 3600) -> tuple[str, str]:
    """A TURN REST API user name (``expiry:user``) and its password,
    base64(HMAC-SHA1(secret, username)), as coturn's ``--use-auth-secret`` checks them."""
    username = f"{int(time.time()) + ttl}:{user}"
    digest = hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()
    return username, base64.b64encode(digest).decode()


class TurnServer:
    """One ``turnserver`` process listening (and relaying) on ``addr:port``; ``prefix`` runs
    it through another command (``ip netns exec NAME``). The port is free by construction
    in a namespace of our own; pass another one when sharing a network."""

    def __init__(
        self,
        workdir: Path,
        addr: str,
        *,
        port: int = DEFAULT_PORT,
        prefix: Sequence[str] = (),
        secret: str | None = None,
    ) -> None:
        require()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.addr = addr
        self.port = port
        self.prefix = list(prefix)
        self.secret = secret
        self.log = workdir / "turnserver.log"
        self.output = workdir / "turnserver.out"  # stdout/stderr: perror() lines land here
        self.proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        binary = turnserver_binary()
        assert binary is not None
        auth = ["--use-auth-secret", f"--static-auth-secret={self.secret}"]
        if self.secret is None:
            auth = ["--lt-cred-mech", "--user", f"{USER}:{PASSWORD}"]
        return [
            *self.prefix,
            binary,
            "-n",  # no configuration file: everything is here
            "--listening-ip", self.addr,
            "--relay-ip", self.addr,
            "--listening-port", str(self.port),
            *auth,
            "--realm", REALM,
            "--fingerprint",
            "--no-tls", "--no-dtls", "--no-cli", "--no-rfc5780",
            "--userdb", str(self.workdir / "turndb"),
            "--pidfile", str(self.workdir / "turnserver.pid"),
            "--log-file", str(self.log), "--simple-log", "--no-stdout-log",
            "--verbose",
        ]  # fmt: skip

    def start(self) -> None:
        """Start it and wait until it listens on UDP and TCP (``ss`` in its namespace)."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with open(self.output, "ab") as output:
            self.proc = subprocess.Popen(self.command(), stdout=output, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while not self.listening():
            if self.proc.poll() is not None:
                raise AssertionError(f"turnserver exited {self.proc.returncode}: {self.text()}")
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"turnserver did not listen in time: {self.text()}")
            time.sleep(0.05)

    def listening(self) -> bool:
        where = f"src {self.addr}:{self.port}"
        for protocol in ("-lnu", "-lnt"):
            args = [*self.prefix, "ss", "-H", protocol, *where.split()]
            result = subprocess.run(args, capture_output=True, text=True, timeout=10, check=False)
            if not result.stdout.strip():
                return False
        return True

    def url(
        self, *, transport: str | None = None, user: str = USER, password: str = PASSWORD
    ) -> str:
        """``turn:USER:PASS@ADDR:PORT`` (our ``--ice-server`` syntax), optionally with
        ``?transport=tcp``."""
        query = f"?transport={transport}" if transport else ""
        return f"turn:{user}:{password}@{self.addr}:{self.port}{query}"

    def text(self) -> str:
        """Its log and what it printed (perror() goes to stderr, not to the log)."""
        return "".join(
            path.read_text(errors="replace") for path in (self.log, self.output) if path.exists()
        )

    def allocations(self) -> int:
        """Allocations the server granted so far: the log's successful ALLOCATE lines."""
        return sum("ALLOCATE processed, success" in line for line in self.text().splitlines())

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, STOP_TIMEOUT)
