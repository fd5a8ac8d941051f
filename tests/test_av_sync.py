"""Lip sync, measured from the recording alone: the fake audio clicks at every whole
second of the capture clock and the fake camera stamps each frame with its capture time,
so in a file every click must lie within 20 ms of where the frame whose stamp marks that
second puts it (``bench.av_sync``). On a clean link, with 5% packet loss between two
network namespaces, and across a sender restart (the next segment)."""

import asyncio
import json
import statistics
import subprocess
import sys
import urllib.parse
from pathlib import Path

import av

from bench.av_sync import Sync, measure

from .helpers import ROOT, SenderProcess, child_env, run_receiver, wait_until
from .netns import require, two_hosts

TOLERANCE_MS = 20.0
EXACT_MS = 3.0
SECONDS = 60
FAKE = ("--source", "testsrc", "--audio", "testsrc")


def check(sync: Sync, seconds: float, found: float = 0.9) -> None:
    """Nearly every second's click found, and every one of them in sync."""
    detail = json.dumps(sync.summary())
    print(detail)
    assert sync.clicks >= found * (seconds - 2), detail
    assert len(sync.offsets_ms) == sync.clicks, detail
    assert max(map(abs, sync.offsets_ms)) <= TOLERANCE_MS, detail
    # Both tracks are timed from one capture clock and the sender's reports, so the
    # offset is a millisecond or less; timing each track from its own first packet is
    # off by however far apart those were (6 ms on 127.0.0.1), and aiortc's own reports
    # by the video's encode time (4-8 ms).
    assert abs(statistics.median(sync.offsets_ms)) <= EXACT_MS, detail


def test_sixty_seconds_in_sync(sender_process, tmp_path: Path) -> None:
    sender = sender_process(*FAKE)
    clip = tmp_path / "clip.mkv"
    result = run_receiver(sender.url, "--duration", str(SECONDS), "--record", str(clip), "--quiet")
    assert result.returncode == 0, result.stderr
    check(measure(clip), SECONDS)


def test_in_sync_with_five_percent_loss(tmp_path: Path) -> None:
    require()
    clip = tmp_path / "lossy.mkv"
    with two_hosts(5) as net:
        sender = SenderProcess(
            [*FAKE, "--host", net.sender_addr],
            tmp_path / "sender.log",
            prefix=net.command(net.sender, []),
            port=8080,
        )
        try:
            args = ["-m", "receiver", sender.url, "--duration", str(SECONDS), "--quiet"]
            result = net.run(net.receiver, [*args, "--record", str(clip)], timeout=SECONDS + 90)
        finally:
            sender.stop()
        dropped = net.dropped_packets()
    assert result.returncode == 0, result.stderr
    assert dropped > 0
    # A lost packet can take a click with it (5 ms of a 20 ms packet); the packets behind
    # it go on after three more (common.aiortc_ext.audio_jitter; stock aiortc 1.16 held
    # them until 16 had piled up and lost 20% of the audio: 46 of 60 clicks).
    check(measure(clip), SECONDS, found=0.8)


def test_in_sync_across_a_sender_restart(tmp_path: Path) -> None:
    log = tmp_path / "sender.log"
    first = SenderProcess(FAKE, log)
    port = urllib.parse.urlsplit(first.url).port
    assert port is not None
    clip = tmp_path / "clip.mkv"
    receiver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "receiver",
            first.url,
            "--record",
            str(clip),
            "--quiet",
            "--duration",
            "30",
            "--retry-forever",
        ],
        env=child_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
    )
    second = None
    try:
        # About ten seconds into the first segment (its clicks), the sender restarts.
        wait_until_recorded(clip, 10)
        first.stop()
        second = SenderProcess(FAKE, tmp_path / "sender-2.log", port=port)
        _, stderr = receiver.communicate(timeout=120)
    finally:
        receiver.kill()
        if second is not None:
            second.stop()
        first.stop()
    assert receiver.returncode == 0, stderr
    segments = [clip, tmp_path / "clip-2.mkv"]
    assert all(path.exists() for path in segments), list(tmp_path.iterdir())
    for path in segments:
        sync = measure(path)
        check(sync, sync.frames / 30)


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
