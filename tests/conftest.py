from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from .helpers import FAKE_AV, InProcessSender, SenderProcess, senders
from .janus_server import JanusServer
from .lossy import LOSSY_CLIP, LOSSY_SECONDS, Run, run_lossy


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


@pytest.fixture(scope="session")
def lossy_minute(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The fake camera and fake audio for a minute through 5% random UDP loss between two
    namespaces, recorded (``Run.folder / LOSSY_CLIP``), run once for the session:
    ``test_loss`` judges its picture, ``test_av_sync`` its lip sync. A recording copies
    the frames as received; the snapshots make the receiver decode each one too, so that
    its statistics have the picture's latency and gaps."""
    folder = tmp_path_factory.mktemp("lossy-minute")
    record = ("--record", str(folder / LOSSY_CLIP))
    decode = ("--snapshots", str(folder / "snapshots"), "--snapshot-every", "600")
    return run_lossy(folder, LOSSY_SECONDS, [], 5, *record, *decode, source=FAKE_AV)
