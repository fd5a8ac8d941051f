"""SIGTERM / SIGINT with viewers connected: every peer closed, camera released, exit 0."""

import asyncio
import signal
import time

import pytest

from receiver import Receiver


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_signal_with_viewers_exits_cleanly(sender_process, sig) -> None:
    sender = sender_process("--source", "testsrc")
    receivers = [Receiver(sender.url, connect_timeout=30) for _ in range(2)]
    await asyncio.gather(*(rx.connect() for rx in receivers))
    try:
        assert sender.health()["viewers"] == 2
        started = time.monotonic()
        sender.proc.send_signal(sig)
        code = await asyncio.to_thread(sender.proc.wait, 10)
        elapsed = time.monotonic() - started
    finally:
        await asyncio.gather(*(rx.close() for rx in receivers))
    log = sender.stderr()
    assert code == 0, log
    assert elapsed < 3.0, f"took {elapsed:.1f} s"
    assert "Traceback" not in log
    assert log.count("viewer left") == 2 and "server shutting down" in log
    assert "camera closed" in log
