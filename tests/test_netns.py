"""Two hosts: the sender and the receiver in their own network namespaces, joined by a
veth pair (10.231.0.1 <-> 10.231.0.2), with and without 5% random UDP loss into the
receiver. Needs root, ``ip`` and ``nft``: skipped without them, failed in CI."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import av

from .helpers import SenderProcess
from .netns import TwoHosts, require, two_hosts

PORT = 8080
DURATION = 10
STARTUP_TIMEOUT = 30.0
RECEIVER_TIMEOUT = 90.0
STOP_TIMEOUT = 15.0
LOSS_PERCENT = 5


def namespaced_sender(net: TwoHosts, log: Path) -> SenderProcess:
    """``python -m sender --source testsrc`` inside the sender's namespace."""
    return SenderProcess(
        ["--source", "testsrc", "--host", net.sender_addr],
        log,
        prefix=net.command(net.sender, []),
        port=PORT,
    )


@dataclass
class Run:
    summary: dict
    record: Path
    sender_exit: int
    dropped_by_nft: int
    detail: str

    @property
    def stamped_fps(self) -> float:
        return self.summary["stamped_frames"] / self.summary["seconds"]


def run_two_hosts(
    tmp_path: Path, loss_percent: int, duration: int = DURATION, *receiver_args: str
) -> Run:
    """Sender in one namespace, a recording receiver in the other for ``duration`` s; the
    sender is stopped with SIGTERM afterwards. Everything is torn down, whatever happens."""
    require()
    record, stats = tmp_path / "received.mkv", tmp_path / "stats.json"
    with two_hosts(loss_percent) as net:
        sender = namespaced_sender(net, tmp_path / "sender.log")
        try:
            args = f"-m receiver {sender.url} --duration {duration} --quiet".split()
            args += receiver_args
            # The stamps are read from decoded pictures: decode, and record those re-encoded.
            args += ["--record", str(record), "--record-mode", "encode", "--stats-json", str(stats)]
            result = net.run(net.receiver, args, timeout=RECEIVER_TIMEOUT + duration)
        finally:
            sender_exit = sender.stop()
        dropped = net.dropped_packets() if loss_percent else 0
    detail = f"receiver exited {result.returncode}: {result.stderr}\nsender: {sender.stderr()}"
    assert result.returncode == 0, detail
    summary = json.loads(stats.read_text())
    print(f"{loss_percent}% UDP loss, {dropped} dropped by nft: {json.dumps(summary)}")
    detail = f"{json.dumps(summary)}\n{detail}"
    return Run(summary, record, sender_exit, dropped, detail)


def check_common(run: Run) -> None:
    summary, detail = run.summary, run.detail
    assert run.sender_exit == 0, detail  # SIGTERM: a clean stop
    assert "Traceback" not in run.detail, detail
    assert summary["seconds"] >= DURATION / 2, detail
    assert (summary["width"], summary["height"]) == (640, 480), detail
    latency = summary["latency_ms"]
    assert latency is not None and math.isfinite(latency["p50"]), detail
    assert decoded_frames(run.record) >= 200, detail
    # Every frame takes at least one RTP packet of the media stream. Fewer means the
    # counters are another stream's: aiortc 1.16's RTCRtpReceiver.getStats() files the
    # media and the RTX stream under one id, so once a retransmission has happened the
    # RTX stream's counters replace the media stream's.
    assert summary["packets_received"] >= summary["frames"], (
        "packets_received < frames: the RTX stream's counters, not the video's\n" + detail
    )


def decoded_frames(record: Path) -> int:
    """Frames in the recording, all decoded (PyAV raises on a broken stream) at 640x480."""
    frames = 0
    with av.open(str(record)) as container:
        for frame in container.decode(container.streams.video[0]):
            assert (frame.width, frame.height) == (640, 480)
            frames += 1
    return frames


def test_two_hosts_without_loss(tmp_path: Path) -> None:
    run = run_two_hosts(tmp_path, 0)
    check_common(run)
    assert run.stamped_fps >= 28, run.detail
    assert run.summary["packets_lost"] == 0, run.detail


def test_two_hosts_with_udp_loss(tmp_path: Path) -> None:
    run = run_two_hosts(tmp_path, LOSS_PERCENT)
    check_common(run)
    assert run.dropped_by_nft > 0, run.detail
    assert run.summary["packets_lost"] > 0, run.detail
    assert 0.01 <= run.summary["loss"] <= 0.15, run.detail
    assert run.stamped_fps >= 25, run.detail
