"""A Janus WebRTC Server (Debian's ``janus`` package) for the tests, on 127.0.0.1.

    server = JanusServer(tmp_path)   # writes the configuration
    server.start()                   # waits until GET /janus/info answers
    target = parse_janus_url(server.url())
    server.kill(); server.start()    # SIGKILL, then the same port again
    server.stop()

Only the VideoRoom plugin and the plain HTTP transport load: the configuration points
Janus's plugin and transport folders at directories holding just those two libraries.
The HTTP API listens on 127.0.0.1 only (admin API off). No STUN or TURN server is set, so
Janus offers host candidates only.

ICE on one machine: Janus (libnice) never gathers loopback addresses, and neither does
aiortc (aioice skips 127.0.0.1), so ``ice_enforce_list = "lo"`` cannot work: with no
usable enforced interface Janus falls back to all its non-loopback interfaces. Both ends
therefore use the host's own addresses; packets between two local addresses never leave
the machine (the kernel delivers them through its loopback path).

Rooms: ROOM (open, VP8) and PIN_ROOM (VP8, joining needs PIN).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlencode

from .ci import require_or_skip

ROOM = 1234
PIN_ROOM = 4321
PIN = "letmein"
ROOM_SECRET = "roomsecret"  # the room's admin secret (create/destroy), not needed to join
PLUGIN = "libjanus_videoroom.so"
TRANSPORT = "libjanus_http.so"
STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
# Where Debian (and source builds) put Janus's plugins and transports.
LIBRARY_DIRS = (
    "/usr/lib/*/janus",
    "/usr/lib/janus",
    "/usr/local/lib/janus",
    "/opt/janus/lib/janus",
)


def janus_binary() -> str | None:
    return shutil.which("janus") or next(
        (p for p in ("/usr/bin/janus", "/opt/janus/bin/janus") if os.access(p, os.X_OK)), None
    )


def library_dir() -> Path | None:
    """The directory with ``plugins/`` and ``transports/`` holding what we need."""
    for pattern in LIBRARY_DIRS:
        for candidate in sorted(glob.glob(pattern)):
            base = Path(candidate)
            if (base / "plugins" / PLUGIN).exists() and (base / "transports" / TRANSPORT).exists():
                return base
    return None


def require() -> None:
    """Skip the calling test when Janus is not installed, except in CI (``CI`` set and not
    false/0), where that is a failure: CI installs it (apt-get install janus)."""
    problem = None
    if janus_binary() is None:
        problem = "janus is not installed (Debian: apt-get install janus)"
    elif library_dir() is None:
        problem = f"janus is installed but {PLUGIN} or {TRANSPORT} was not found"
    require_or_skip(problem, "the Janus tests")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class JanusServer:
    """One Janus process with its own configuration in ``workdir``; the port stays the same
    across restarts. ``api_secret`` makes every request need it (``?secret=`` in our URLs);
    ``session_timeout``: Janus drops a session after that many seconds without a request
    (long polls do not count)."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        api_secret: str | None = None,
        session_timeout: int = 60,
        debug_level: int = 4,
    ) -> None:
        require()
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.api_secret = api_secret
        self.session_timeout = session_timeout
        self.debug_level = debug_level
        self.log = workdir / "janus.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self._binary = janus_binary()
        self._write_config()

    @property
    def api(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    def url(self, room: int = ROOM, **params: str | int) -> str:
        """A ``janus+http://`` URL for ``room`` (plus feed=, display=, secret=, pin=...)."""
        query = urlencode({"room": room, **params})
        return f"janus+http://127.0.0.1:{self.port}/janus?{query}"

    # -- configuration ---------------------------------------------------------------

    def _write_config(self) -> None:
        conf = self.workdir / "conf"
        libs = library_dir()
        assert libs is not None
        folders = {}
        for name, library in (("plugins", PLUGIN), ("transports", TRANSPORT)):
            folder = self.workdir / name
            folder.mkdir(parents=True, exist_ok=True)
            link = folder / library
            if not link.exists():
                link.symlink_to(libs / name / library)
            folders[name] = folder
        for name in ("events", "loggers"):
            folders[name] = self.workdir / name
            folders[name].mkdir(parents=True, exist_ok=True)
        conf.mkdir(parents=True, exist_ok=True)
        secret = f"\tapi_secret = {_q(self.api_secret)}\n" if self.api_secret else ""
        (conf / "janus.jcfg").write_text(
            "general: {\n"
            f"\tconfigs_folder = {_q(conf)}\n"
            f"\tplugins_folder = {_q(folders['plugins'])}\n"
            f"\ttransports_folder = {_q(folders['transports'])}\n"
            f"\tevents_folder = {_q(folders['events'])}\n"
            f"\tloggers_folder = {_q(folders['loggers'])}\n"
            f"\tdebug_level = {self.debug_level}\n"
            '\tserver_name = "webrtc-webcam-tests"\n'
            f"\tsession_timeout = {self.session_timeout}\n"
            f"{secret}"
            "}\n"
            "certificates: {\n}\n"  # a DTLS certificate is generated at start-up
            "media: {\n\tipv6 = false\n}\n"
            # No stun_server/turn_server: host candidates only. ignore_mdns: no lookups.
            'nat: {\n\tnice_debug = false\n\tignore_mdns = true\n\tice_ignore_list = "vmnet"\n}\n'
            "plugins: {\n}\ntransports: {\n}\nloggers: {\n}\nevents: {\n\tbroadcast = false\n}\n"
        )
        (conf / "janus.transport.http.jcfg").write_text(
            "general: {\n"
            '\tjson = "compact"\n'
            '\tbase_path = "/janus"\n'
            "\thttp = true\n"
            f"\tport = {self.port}\n"
            '\tip = "127.0.0.1"\n'
            "\thttps = false\n"
            "}\n"
            "admin: {\n\tadmin_http = false\n\tadmin_https = false\n}\n"
            "cors: {\n}\n"
        )
        room = (
            "\tpublishers = 10\n"
            '\tvideocodec = "vp8"\n'
            '\taudiocodec = "opus"\n'
            "\tfir_freq = 10\n"
            "\trecord = false\n"
        )
        (conf / "janus.plugin.videoroom.jcfg").write_text(
            "general: {\n}\n"
            f'room-{ROOM}: {{\n\tdescription = "webrtc-webcam tests"\n{room}}}\n'
            f'room-{PIN_ROOM}: {{\n\tdescription = "with a pin"\n'
            f"\tsecret = {_q(ROOM_SECRET)}\n\tpin = {_q(PIN)}\n{room}}}\n"
        )

    # -- the process -----------------------------------------------------------------

    def start(self) -> None:
        """Start Janus and wait until its HTTP API answers ``GET /janus/info``."""
        assert self.proc is None or self.proc.poll() is not None, "Janus is already running"
        assert self._binary is not None
        conf = self.workdir / "conf"
        self.starts += 1
        with open(self.log, "ab") as log:
            log.write(f"\n=== start {self.starts} ===\n".encode())
            self.proc = subprocess.Popen(
                [
                    self._binary,
                    "--config",
                    str(conf / "janus.jcfg"),
                    "--configs-folder",
                    str(conf),
                    "--log-file",
                    str(self.log),
                    "--disable-stdout",
                    "--disable-colors",
                    "--debug-timestamps",
                ],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                cwd=self.workdir,
                start_new_session=True,  # Ctrl-C on pytest does not hit it first
            )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"janus exited with {self.proc.returncode} at start-up: {self.tail()}"
                )
            if self.info() is not None:
                return
            time.sleep(0.05)
        self.kill()
        raise AssertionError(f"janus did not answer on {self.api} in time: {self.tail()}")

    def info(self) -> dict | None:
        """Janus's ``server_info``, or None when it does not answer."""
        try:  # no secret needed for info
            with urllib.request.urlopen(f"{self.api}/info", timeout=1) as response:
                body = json.load(response)
        except (OSError, ValueError):
            return None
        return body if isinstance(body, dict) and body.get("janus") == "server_info" else None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """SIGTERM (Janus's clean shutdown), SIGKILL if it takes too long."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: Janus vanishes with its sessions, as in a crash."""
        if not self.running:
            return
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def restart(self) -> None:
        self.stop()
        self.start()

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> JanusServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _q(value: object) -> str:
    """A libconfig string."""
    return json.dumps(str(value))
