"""Soak: 200 viewers come and go against one sender; nothing fails, nothing piles up."""

import asyncio

from receiver import Receiver

from .helpers import wait_until

CYCLES = 200
WARMUP_CYCLES = 50  # allocator pools and caches fill during the first cycles
MAX_GROWTH_MB = 10


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        kb = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return kb / 1024


async def test_200_connect_disconnect_cycles(sender_process) -> None:
    sender = sender_process("--source", "testsrc")
    baseline = None
    for cycle in range(1, CYCLES + 1):
        async with Receiver(sender.url, connect_timeout=30) as rx:
            async for frame in rx.frames():
                assert frame.width == 640
                break
        if cycle == WARMUP_CYCLES:
            await wait_until(lambda: sender.health()["viewers"] == 0, what="viewers to leave")
            baseline = rss_mb(sender.proc.pid)
    await wait_until(lambda: sender.health()["viewers"] == 0, what="viewers to leave")
    await wait_until(lambda: not sender.health()["source_open"], what="camera release")
    await asyncio.sleep(0)  # nothing else to wait for: the numbers are final
    growth = rss_mb(sender.proc.pid) - baseline
    print(f"sender RSS growth over {CYCLES - WARMUP_CYCLES} cycles: {growth:.1f} MB")
    assert growth < MAX_GROWTH_MB, f"{growth:.1f} MB"
    health = sender.health()
    assert health["source_opens"] >= 1
    log = sender.stderr()
    assert log.count("viewer joined") == CYCLES and log.count("viewer left") == CYCLES
    assert "Traceback" not in log and "ERROR" not in log
