"""Real senders on 127.0.0.1, in-process or as a subprocess: one implementation for the
benchmarks and the tests (tests/helpers.py re-exports it; bench/ never imports tests/).

    sender = SenderProcess(["--source", "testsrc"], Path("sender.log"))
    ... sender.url, sender.health(), sender.stderr() ...
    sender.stop()

    stock = SenderProcess(["--codec", "vp8"], Path("stock.log"), module="bench.stock_sender")

    sender = await start_sender(source="testsrc")   # the aiohttp app in this process
    await sender.close()
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, web

from sender.app import SOURCE, SenderConfig, create_app
from sender.camera import Cameras
from sender.fanout import SharedSource
from sender.sessions import Sessions
from sender.signalling import CAMERAS, SESSIONS

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


@dataclass
class InProcessSender:
    """The sender's aiohttp app served from this process's event loop."""

    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def source(self) -> SharedSource:
        return self.app[SOURCE]

    @property
    def sessions(self) -> Sessions:
        return self.app[SESSIONS]

    @property
    def cameras(self) -> Cameras:
        return self.app[CAMERAS]

    async def health(self) -> dict[str, Any]:
        """``GET /healthz``, as a client sees it."""
        async with ClientSession() as http, http.get(self.url + "/healthz") as response:
            response.raise_for_status()
            body: dict[str, Any] = await response.json()
            return body

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sender(**config: Any) -> InProcessSender:
    """Serve ``SenderConfig(**config)`` on a free port of 127.0.0.1."""
    app = create_app(SenderConfig(**config))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return InProcessSender(f"http://127.0.0.1:{port}", app, runner)


def child_env() -> dict[str, str]:
    """The environment for our subprocesses: the checkout importable, no display (a
    sender or receiver must never open a window by accident)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


class SenderDidNotStart(AssertionError):
    """The sender exited or said nothing before its start-up timeout; the message carries
    its error output. An AssertionError: for the tests it is a failed check."""


def stop_process(proc: subprocess.Popen[Any], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM (a clean shutdown), SIGKILL after ``timeout`` s; the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


class SenderProcess:
    """``python -m MODULE --port PORT ARGS`` (``sender`` by default, on a free port unless
    ``port`` is given), its stderr in ``log``, its URL read from its first stdout line
    ("... on http://HOST:PORT/"). ``prefix`` runs it through another command
    (``ip netns exec NAME``)."""

    def __init__(
        self,
        args: Sequence[str],
        log: Path,
        prefix: Sequence[str] = (),
        port: int = 0,
        *,
        module: str = "sender",
        startup_timeout: float = STARTUP_TIMEOUT,
    ) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", module, "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=child_env(),
            cwd=ROOT,
        )
        lines: queue.Queue[str] = queue.Queue()
        # Reads every line, so that the sender never blocks on a full stdout pipe.
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        try:
            line = lines.get(timeout=startup_timeout)
        except queue.Empty:
            self.stop()
            raise SenderDidNotStart(f"sender did not start: {self.stderr()}") from None
        if " on http" not in line:
            self.stop()
            raise SenderDidNotStart(f"sender did not start: {line} {self.stderr()}")
        self.url = line.rsplit(" on ", 1)[1].strip().rstrip("/")

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    def health(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "/healthz", timeout=10) as response:
            body: dict[str, Any] = json.load(response)
            return body

    def stderr(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        """SIGTERM (the sender's clean shutdown), SIGKILL if it takes too long; the exit
        code."""
        code = stop_process(self.proc)
        self._log_file.close()
        return code
