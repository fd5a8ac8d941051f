from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from .helpers import InProcessSender, SenderProcess, start_sender


@pytest.fixture
async def sender_factory() -> AsyncIterator[Callable[..., object]]:
    """Start in-process senders on free ports; all are closed after the test."""
    started: list[InProcessSender] = []

    async def start(**config: object) -> InProcessSender:
        sender = await start_sender(**config)
        started.append(sender)
        return sender

    yield start
    for sender in started:
        await sender.close()


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
