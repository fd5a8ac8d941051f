"""Shared test helpers. The real senders (in-process or as a subprocess) come from
bench/senders.py, which the benchmarks use too; they are re-exported here."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import av

from bench.senders import (
    ROOT,
    InProcessSender,
    SenderProcess,
    child_env,
    start_sender,
)

__all__ = [
    "FAKE_AV",
    "ROOT",
    "InProcessSender",
    "SenderProcess",
    "assert_one_line_error",
    "audio_packet_times",
    "child_env",
    "record_across_restart",
    "run_receiver",
    "run_sender",
    "senders",
    "start_sender",
    "wait_until",
    "wait_until_recorded",
    "watch_stamps",
]

# The fake camera and the fake audio: what the recording tests record.
FAKE_AV = ("--source", "testsrc", "--audio", "testsrc")


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


async def watch_stamps(url: str, frames: int) -> list[int]:
    """Decode ``frames`` frames of the fake camera at ``url`` and return their stamped
    sequence numbers (every frame must carry its stamp)."""
    # Here, not at the top: this module imports av, and cv2 (which receiver loads for
    # --display) must be imported before av.
    from receiver import Receiver
    from receiver.stats import read_stamp

    sequences = []
    async with Receiver(url, connect_timeout=60) as rx:
        async for frame in rx.frames():
            found = read_stamp(frame)
            assert found is not None, "a viewer decoded a frame without its stamp"
            sequences.append(found.sequence)
            if len(sequences) >= frames:
                break
    return sequences


def run_receiver(
    *args: str, timeout: float = 90.0, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``python -m receiver ARGS`` to its end (``env``: the child's whole environment)."""
    return subprocess.run(
        [sys.executable, "-m", "receiver", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env if env is not None else child_env(),
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


def audio_packet_times(path: Path) -> list[float]:
    """The times (s) of the audio packets in a recording, in order: where its audio is
    and where a packet is missing; empty without an audio track."""
    with av.open(str(path)) as container:
        if not container.streams.audio:
            return []
        return sorted(
            float(packet.pts * packet.time_base)
            for packet in container.demux(container.streams.audio[0])
            if packet.pts is not None and packet.time_base is not None
        )


def wait_until_recorded(clip: Path, seconds: float) -> None:
    """Block until the recording's audio reaches ``seconds`` (read, not decoded, as it
    grows)."""

    def enough() -> bool:
        if not clip.exists():
            return False
        try:
            with av.open(str(clip)) as container:
                if not container.streams.audio:
                    return False
                stream = container.streams.audio[0]
                times = [p.pts * p.time_base for p in container.demux(stream) if p.pts]
        except av.FFmpegError:  # nothing complete written yet
            return False
        return bool(times) and max(times) >= seconds

    asyncio.run(wait_until(enough, within=90, what=f"{seconds} s recorded"))


def record_across_restart(
    tmp_path: Path,
    clip: Path,
    *options: str,
    restart_after: float,
    duration: float,
    kill: bool = False,
) -> tuple[list[Path], str]:
    """The receiver CLI records ``clip`` from a sender of the fake camera and audio,
    which restarts on the same port once ``restart_after`` seconds of audio are in the
    file (stopped, or with ``kill`` killed: it vanishes without a goodbye); the receiver
    reconnects (``--retry-forever``) and records the next segment, ``clip-2``. Both
    segments and the receiver's stderr, once it ended well."""
    first = SenderProcess(FAKE_AV, tmp_path / "sender.log")
    port = urllib.parse.urlsplit(first.url).port
    assert port is not None
    receiver = subprocess.Popen(
        [
            *(sys.executable, "-m", "receiver", first.url, "--record", str(clip), "--quiet"),
            *("--duration", str(duration), "--retry-forever", *options),
        ],
        env=child_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        wait_until_recorded(clip, restart_after)
        if kill:
            first.proc.send_signal(signal.SIGKILL)
        first.stop()
        second = SenderProcess(FAKE_AV, tmp_path / "sender-2.log", port=port)
        _, stderr = receiver.communicate(timeout=120)
    finally:
        receiver.kill()
        if second is not None:
            second.stop()
        first.stop()
    assert receiver.returncode == 0, stderr
    segments = [clip, clip.with_name(f"{clip.stem}-2{clip.suffix}")]
    assert all(path.exists() for path in segments), list(tmp_path.iterdir())
    return segments, stderr
