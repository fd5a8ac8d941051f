"""Running as a service: the systemd units in ``contrib/`` (checked by systemd itself),
readiness and watchdog through ``$NOTIFY_SOCKET`` (a socket this test listens on, as
systemd would), and logs a machine reads (``--log-format json``)."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from receiver import Receiver

from .ci import require_or_skip
from .helpers import ROOT, SenderProcess, run_receiver

UNITS = ("webcam-sender.service", "webcam-receiver.service")


@pytest.mark.parametrize("unit", UNITS)
def test_units_pass_systemd_analyze_verify(unit: str, tmp_path: Path) -> None:
    """``systemd-analyze verify`` wants ExecStart's program to exist: the unit is checked
    with it pointing at this checkout's entry point, everything else as shipped."""
    analyze = shutil.which("systemd-analyze")
    require_or_skip(None if analyze else "systemd-analyze is missing (Debian: systemd)", unit)
    assert analyze is not None
    program = unit.removesuffix(".service")
    installed = Path(sys.executable).parent / program
    assert installed.exists(), f"{installed}: the project is not installed in this venv"
    text = (ROOT / "contrib" / unit).read_text()
    assert f"ExecStart=/usr/local/bin/{program} " in text
    (tmp_path / unit).write_text(text.replace(f"/usr/local/bin/{program}", str(installed)))
    result = subprocess.run(
        [analyze, "verify", str(tmp_path / unit)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    # Unknown keys and bad values are only warnings: there must be none.
    assert result.stdout + result.stderr == "", result.stdout + result.stderr
    assert "Type=notify" in text and "WatchdogSec=" in text
    # The sender reloads its configuration on SIGHUP (sender.reload); the receiver does not.
    assert ("ExecReload=/bin/kill -HUP $MAINPID" in text) == (program == "webcam-sender")


class NotifySocket:
    """What systemd listens on: a datagram socket, read all along (as systemd does) by a
    thread; each message a set of KEY=VALUE."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if line)
            with self._changed:
                self.messages.append(fields)
                self._changed.notify_all()

    def until(self, key: str, within: float = 60.0, count: int = 1) -> dict[str, str]:
        """Wait for the ``count``-th message carrying ``key``; return it."""
        with self._changed:
            found: list[dict[str, str]] = []

            def enough() -> bool:
                found[:] = [m for m in self.messages if key in m]
                return len(found) >= count

            if not self._changed.wait_for(enough, timeout=within):
                raise AssertionError(f"no {key} ({count}) within {within} s: {self.messages}")
            return found[count - 1]

    def close(self) -> None:
        self._stop.set()
        self._reader.join(timeout=5)
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[NotifySocket]:
    listener = NotifySocket(tmp_path / "notify")
    monkeypatch.setenv("NOTIFY_SOCKET", str(listener.path))
    monkeypatch.setenv("WATCHDOG_USEC", "400000")  # a ping at least every 0.2 s
    try:
        yield listener
    finally:
        listener.close()


def test_sender_reports_ready_pings_the_watchdog_and_says_it_stops(
    notify_socket: NotifySocket, tmp_path: Path
) -> None:
    sender = SenderProcess(["--source", "testsrc"], tmp_path / "sender.log")
    try:
        ready = notify_socket.until("READY")
        # Ready means serving: the health check answers at once.
        assert sender.health()["status"] == "ok"
        assert ready["READY"] == "1"
        assert ready["STATUS"] == f"serving fake camera (testsrc) on {sender.url}/"
        notify_socket.until("WATCHDOG", within=30, count=3)
    finally:
        code = sender.stop()
    assert code == 0, sender.stderr()
    notify_socket.until("STOPPING", within=10)


def test_receiver_reports_ready_pings_the_watchdog_and_says_it_stops(
    notify_socket: NotifySocket, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as outside_systemd:  # only the receiver talks to it
        outside_systemd.delenv("NOTIFY_SOCKET")
        sender = SenderProcess(["--source", "testsrc"], tmp_path / "sender.log")
    try:
        result = run_receiver(sender.url, "--duration", "3", "--quiet")
    finally:
        sender.stop()
    assert result.returncode == 0, result.stderr
    ready = notify_socket.until("READY", within=5)
    assert ready["STATUS"] == f"receiving {sender.url}"
    notify_socket.until("WATCHDOG", within=5, count=3)
    notify_socket.until("STOPPING", within=5)


def test_without_notify_socket_nothing_is_sent(tmp_path: Path) -> None:
    """Not under systemd: the sender runs as before (and has nobody to tell)."""
    sender = SenderProcess(["--source", "testsrc"], tmp_path / "sender.log")
    try:
        assert sender.health()["status"] == "ok"
    finally:
        assert sender.stop() == 0
    assert "sd_notify" not in sender.stderr()


async def test_json_logs_are_one_object_per_line_with_fields(tmp_path: Path) -> None:
    sender = SenderProcess(["--source", "testsrc", "--log-format", "json"], tmp_path / "s.log")
    try:
        async with Receiver(sender.url, connect_timeout=30) as rx:
            frames = rx.frames()
            await anext(frames)
            await frames.aclose()
    finally:
        assert sender.stop() == 0
    lines = [line for line in sender.stderr().splitlines() if line.strip()]
    entries = [json.loads(line) for line in lines]  # every line is JSON
    for entry in entries:
        assert {"time", "level", "logger", "message"} <= entry.keys(), entry
    joined = [e for e in entries if e["message"].startswith("viewer joined")]
    assert len(joined) == 1, entries
    assert joined[0]["level"] == "INFO" and joined[0]["logger"] == "sender.sessions"
    assert joined[0]["session"] and joined[0]["remote"].startswith("127.0.0.1")
    left = [e for e in entries if e["message"].startswith("viewer left")]
    assert left and left[0]["session"] == joined[0]["session"], entries
