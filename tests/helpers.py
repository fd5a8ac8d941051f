"""Shared helpers: real senders (in-process or as a subprocess) on 127.0.0.1."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from sender.app import SOURCE, SenderConfig, create_app
from sender.fanout import SharedSource
from sender.sessions import Sessions
from sender.signalling import SESSIONS

ROOT = Path(__file__).resolve().parent.parent
STARTUP_TIMEOUT = 30.0


@dataclass
class InProcessSender:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def source(self) -> SharedSource:
        return self.app[SOURCE]

    @property
    def sessions(self) -> Sessions:
        return self.app[SESSIONS]

    async def close(self) -> None:
        await self.runner.cleanup()


async def start_sender(**config: object) -> InProcessSender:
    app = create_app(SenderConfig(**config))  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return InProcessSender(f"http://127.0.0.1:{port}", app, runner)


@contextlib.asynccontextmanager
async def senders() -> AsyncIterator[Callable[..., Awaitable[InProcessSender]]]:
    """Start in-process senders on free ports; all are closed on the way out."""
    started: list[InProcessSender] = []

    async def start(**config: object) -> InProcessSender:
        sender = await start_sender(**config)
        started.append(sender)
        return sender

    try:
        yield start
    finally:
        for sender in started:
            await sender.close()


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]], within: float = 20.0, what: str = "condition"
) -> None:
    """Wait for a state change, checking often; fail after a generous ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = condition()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    return env


class SenderProcess:
    """``python -m sender`` (on a free port unless ``port`` is given); its URL read from its
    first line. ``prefix`` runs it through another command (``ip netns exec NAME``)."""

    def __init__(
        self, args: list[str], log: Path, prefix: Sequence[str] = (), port: int = 0
    ) -> None:
        self.log = log
        self._log_file = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [*prefix, sys.executable, "-m", "sender", "--port", str(port), *args],
            stdout=subprocess.PIPE,
            stderr=self._log_file,
            env=child_env(),
            cwd=ROOT,
        )
        lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, args=(lines,), daemon=True).start()
        try:
            line = lines.get(timeout=STARTUP_TIMEOUT)
        except queue.Empty:
            self.stop()
            raise AssertionError(f"sender did not start: {self.stderr()}") from None
        if " on http" not in line:
            self.stop()
            raise AssertionError(f"sender did not start: {line} {self.stderr()}")
        self.url = line.rsplit(" on ", 1)[1].strip().rstrip("/")

    def _read(self, lines: queue.Queue[str]) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            lines.put(raw.decode(errors="replace"))
        lines.put("")

    def health(self) -> dict:
        with urllib.request.urlopen(self.url + "/healthz", timeout=10) as response:
            return json.load(response)

    def stderr(self) -> str:
        if not self._log_file.closed:
            self._log_file.flush()
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log_file.close()
        return self.proc.returncode


def run_receiver(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=ROOT,
    )


def assert_one_line_error(stderr: str) -> None:
    """A user-facing failure: no traceback, and an error line naming the tool."""
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if ": error: " in line]
    assert len(errors) == 1, stderr
