"""The receiver keeps going when the sender is not there yet, dies, or restarts."""

import asyncio
import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import av

from common.aiortc_ext import ice_rtt
from receiver import Receiver

from .helpers import ROOT, SenderProcess, child_env, wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_receiver(*args: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "receiver", *args],
        env=child_env(),
        cwd=ROOT,
        stderr=log.open("wb"),
    )


def plays(path: Path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def wait_for(condition: Callable[[], object], within: float, what: str) -> float:
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic()


def test_sender_killed_and_restarted_while_recording(tmp_path) -> None:
    port = str(free_port())
    record = tmp_path / "rec.mkv"
    stats = tmp_path / "stats.json"
    sender = SenderProcess(["--source", "testsrc", "--port", port], tmp_path / "s1.log")
    log = tmp_path / "receiver.log"
    url = f"http://127.0.0.1:{port}"
    rx = spawn_receiver(
        url, "--record", str(record), "--retry-forever", "--stats-json", str(stats), log=log
    )
    restarted = None
    try:
        wait_for(lambda: record.exists() and record.stat().st_size > 20_000, 60, "recording")
        sender.proc.send_signal(signal.SIGKILL)  # no goodbye: the receiver sees video stop
        sender.proc.wait()
        sender.stop()
        time.sleep(1.0)  # the sender stays away for a moment
        restarted = SenderProcess(["--source", "testsrc", "--port", port], tmp_path / "s2.log")
        back = time.monotonic()
        second = tmp_path / "rec-2.mkv"
        receiving = wait_for(lambda: second.exists() and second.stat().st_size > 0, 30, "2nd")
        assert receiving - back < 3.0, f"receiving again {receiving - back:.1f} s after restart"
        wait_for(lambda: second.stat().st_size > 20_000, 30, "the second segment to grow")
    finally:
        rx.send_signal(signal.SIGINT)
        code = rx.wait(timeout=20)
        if restarted is not None:
            restarted.stop()
    text = log.read_text()
    assert code == 0, text
    assert "Traceback" not in text
    assert "retrying in" in text  # each gap is logged
    assert plays(record) > 30 and plays(second) > 10
    assert json.loads(stats.read_text())["reconnects"] >= 1


def test_receiver_waits_for_a_sender_that_is_not_there_yet(tmp_path) -> None:
    port = str(free_port())
    stats = tmp_path / "stats.json"
    rx = spawn_receiver(
        f"http://127.0.0.1:{port}", "--frames", "30", "--retry-forever",
        "--stats-json", str(stats), log=tmp_path / "receiver.log",
    )  # fmt: skip
    sender = None
    try:
        time.sleep(1.5)  # the receiver starts first and retries
        assert rx.poll() is None
        sender = SenderProcess(["--source", "testsrc", "--port", port], tmp_path / "s.log")
        assert rx.wait(timeout=60) == 0, (tmp_path / "receiver.log").read_text()
    finally:
        rx.kill()
        if sender is not None:
            sender.stop()
    assert json.loads(stats.read_text())["frames"] == 30


def test_retries_are_bounded_and_ctrl_c_is_immediate(tmp_path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    started = time.monotonic()
    bounded = subprocess.run(
        [sys.executable, "-m", "receiver", url, "--max-retries", "2"],
        env=child_env(), cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert bounded.returncode == 1
    assert bounded.stderr.count("retrying in") == 2
    assert "cannot reach" in bounded.stderr.splitlines()[-2] + bounded.stderr.splitlines()[-1]
    assert time.monotonic() - started < 20

    log = tmp_path / "forever.log"
    forever = spawn_receiver(url, "--retry-forever", log=log)
    wait_for(lambda: "retrying in" in log.read_text(), 30, "the first retry")
    interrupted = time.monotonic()
    forever.send_signal(signal.SIGINT)
    assert forever.wait(timeout=10) == 0
    assert time.monotonic() - interrupted < 2.0
    assert "Traceback" not in log.read_text()


def test_sender_frees_a_viewer_that_vanished(sender_process, tmp_path) -> None:
    """kill -9 of a receiver: no DELETE, no DTLS close; ICE consent gives up (~30 s)."""
    sender = sender_process("--source", "testsrc")
    rx = spawn_receiver(sender.url, "--quiet", log=tmp_path / "receiver.log")
    try:
        wait_for(lambda: sender.health()["viewers"] == 1, 60, "the viewer")
        rx.send_signal(signal.SIGKILL)
        rx.wait()
        wait_for(lambda: sender.health()["viewers"] == 0, 90, "the sender to free it")
        wait_for(lambda: not sender.health()["source_open"], 10, "the camera release")
    finally:
        rx.kill()
    assert "viewer left" in sender.stderr()


async def test_receiver_stats_report_rtt_loss_and_jitter(sender) -> None:
    """Fails if aioice changes what receiver/ice_rtt.py reaches into."""
    async with Receiver(sender.url, connect_timeout=30) as rx:
        async for _ in rx.frames():
            if rx.stats.frames >= 10:
                break
        rtt = await ice_rtt.measure(rx.connection.pc)
        assert rtt is not None and 0 < rtt < 1
        await wait_until(lambda: rx.stats.rtt_ms, what="an RTT sample")
    summary = rx.stats.summary()
    assert summary["rtt_ms"]["p50"] > 0
    assert summary["packets_received"] > 10 and summary["packets_lost"] == 0
    assert summary["loss"] == 0 and summary["jitter_ms"] is not None


async def until_the_end(frames: AsyncIterator[av.VideoFrame], within: float) -> float:
    """Read ``frames`` to their end; how long that took (fails after ``within`` s)."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        async for _ in frames:
            pass
    return time.monotonic() - started


async def test_a_frozen_sender_is_a_stall(sender_process) -> None:
    """SIGSTOP freezes the sender: no more video and no goodbye (no RTCP BYE, no DTLS
    close, its sockets stay open). Only the stall timeout can notice."""
    sender = sender_process("--source", "testsrc")
    rx = Receiver(sender.url, connect_timeout=30, stall_timeout=1.0)
    await rx.connect()
    frames = rx.frames()
    try:
        await anext(frames)
        sender.proc.send_signal(signal.SIGSTOP)
        try:
            took = await until_the_end(frames, within=20)
            assert sender.proc.poll() is None, "the sender must be frozen, not gone"
        finally:
            sender.proc.send_signal(signal.SIGCONT)
        assert rx.ended == "no video for 1 s"
        assert 0.9 < took < 10, f"frames() ended {took:.1f} s after the sender froze"
    finally:
        await frames.aclose()
        await rx.close()


async def test_a_sender_that_shuts_down_ends_the_stream(sender_process) -> None:
    """The other way frames stop: the sender closes the connection (RTCP BYE, DTLS
    close) when it shuts down; the receiver says so at once, long before a stall."""
    sender = sender_process("--source", "testsrc")
    rx = Receiver(sender.url, connect_timeout=30, stall_timeout=10.0)
    await rx.connect()
    frames = rx.frames()
    try:
        await anext(frames)
        sender.proc.send_signal(signal.SIGTERM)
        took = await until_the_end(frames, within=20)
        assert rx.ended == "the sender ended the stream"
        assert took < rx.stall_timeout, f"frames() ended {took:.1f} s after SIGTERM"
    finally:
        await frames.aclose()
        await rx.close()
    assert sender.proc.wait(timeout=10) == 0, sender.stderr()
