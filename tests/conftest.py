from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from .helpers import InProcessSender, SenderProcess, senders
from .janus_server import JanusServer


@pytest.fixture
async def sender_factory() -> AsyncIterator[Callable[..., Awaitable[InProcessSender]]]:
    """Start in-process senders on free ports; all are closed after the test."""
    async with senders() as start:
        yield start


@pytest.fixture
def janus(tmp_path: Path) -> Iterator[JanusServer]:
    """A real Janus with the VideoRoom plugin on a free loopback port."""
    server = JanusServer(tmp_path / "janus")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def sender(sender_factory) -> InProcessSender:
    return await sender_factory()


@pytest.fixture
def sender_process(tmp_path: Path) -> Iterator[Callable[..., SenderProcess]]:
    """Start ``python -m sender`` subprocesses; all are stopped after the test."""
    started: list[SenderProcess] = []

    def spawn(*args: str) -> SenderProcess:
        proc = SenderProcess(list(args), tmp_path / f"sender-{len(started)}.log")
        started.append(proc)
        return proc

    yield spawn
    for proc in started:
        proc.stop()
