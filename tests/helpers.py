"""Shared test helpers. The real senders (in-process or as a subprocess) come from
bench/senders.py, which the benchmarks use too; they are re-exported here."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from bench.senders import (
    ROOT,
    InProcessSender,
    SenderProcess,
    child_env,
    start_sender,
)

__all__ = [
    "ROOT",
    "InProcessSender",
    "SenderProcess",
    "assert_one_line_error",
    "child_env",
    "run_receiver",
    "run_sender",
    "senders",
    "start_sender",
    "wait_until",
]


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


def run_receiver(*args: str, timeout: float = 90.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=child_env(),
        cwd=ROOT,
    )


def run_sender(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    """``python -m sender ARGS`` to its end: for options it refuses at start."""
    return subprocess.run(
        [sys.executable, "-m", "sender", "--port", "0", *args],
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
