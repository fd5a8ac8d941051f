"""Soak: 200 viewers come and go against one sender; nothing fails, nothing piles up.

What piles up grows with every viewer; the resident memory also steps up once when the
default executor starts one more encoding thread (glibc gives it a malloc arena of its
own: seen once, 4 -> 5 threads, +15 MB, on a run whose other windows grew 0-1 MB). So the
memory is read every ``WINDOW`` viewers after the warm-up, and the growth that counts is
the median window's, over the 150 viewers: a leak shows in every window, a step in one."""

import itertools
import statistics

from receiver import Receiver

from .helpers import wait_until

CYCLES = 200
WARMUP_CYCLES = 50  # allocator pools and caches fill during the first cycles
WINDOW = 25  # viewers between two readings of the memory
MAX_GROWTH_MB = 10  # over the 150 viewers after the warm-up, at the median window's rate


def status(pid: int, field: str) -> int:
    """A number from /proc/PID/status (``VmRSS`` in kB, ``Threads``...)."""
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(f"{field}:"))


async def test_200_connect_disconnect_cycles(sender_process) -> None:
    sender = sender_process("--source", "testsrc")
    readings: list[tuple[int, float, int]] = []  # (cycle, RSS MB, threads)
    for cycle in range(1, CYCLES + 1):
        async with Receiver(sender.url, connect_timeout=30) as rx:
            async for frame in rx.frames():
                assert frame.width == 640
                break
        if cycle >= WARMUP_CYCLES and (cycle - WARMUP_CYCLES) % WINDOW == 0:
            await wait_until(lambda: sender.health()["viewers"] == 0, what="viewers to leave")
            pid = sender.proc.pid
            readings.append((cycle, status(pid, "VmRSS") / 1024, status(pid, "Threads")))
    await wait_until(lambda: not sender.health()["source_open"], what="camera release")
    steps = [b[1] - a[1] for a, b in itertools.pairwise(readings)]
    growth = statistics.median(steps) * (CYCLES - WARMUP_CYCLES) / WINDOW
    total = readings[-1][1] - readings[0][1]
    detail = (
        f"{growth:.1f} MB at the median window's rate ({total:.1f} MB in all); every "
        f"{WINDOW} viewers (cycle, MB, threads): {[(c, round(m, 1), t) for c, m, t in readings]}"
    )
    print(f"sender RSS over {CYCLES - WARMUP_CYCLES} cycles: {detail}")
    assert growth < MAX_GROWTH_MB, detail
    health = sender.health()
    assert health["source_opens"] >= 1
    log = sender.stderr()
    assert log.count("viewer joined") == CYCLES and log.count("viewer left") == CYCLES
    assert "Traceback" not in log and "ERROR" not in log
