"""Recordings a user can rely on: timed by the stream, playable after a crash, split
into segments, and a clean stop when the disk fills up."""

import itertools
import os
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import av
import pytest

from receiver.encoded import EncodedFrame
from receiver.recorder import Recorder
from sender.encoding import PROFILES

from .ci import require_or_skip
from .helpers import ROOT, assert_one_line_error, child_env, run_receiver


def probe(path: Path) -> tuple[int, float]:
    """Decode every frame; return (frames, seconds covered by the timestamps)."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        times = [float(frame.pts * frame.time_base) for frame in container.decode(stream)]
    assert times, f"{path} holds no frame"
    return len(times), max(times) - min(times)


@pytest.mark.parametrize("extension", [".mkv", ".mp4"])
def test_duration_follows_the_stream_clock(sender_process, tmp_path, extension) -> None:
    sender = sender_process("--source", "testsrc")
    clip = tmp_path / f"clip{extension}"
    stats = tmp_path / "stats.json"
    result = run_receiver(
        sender.url, "--duration", "6", "--record", str(clip), "--stats-json", str(stats), "--quiet"
    )
    assert result.returncode == 0, result.stderr
    import json

    summary = json.loads(stats.read_text())
    frames, seconds = probe(clip)
    assert frames == summary["frames"]
    assert abs(seconds - summary["seconds"]) / summary["seconds"] < 0.02, (seconds, summary)


@pytest.mark.parametrize("extension", [".mkv", ".mp4"])
def test_kill_9_leaves_a_playable_file(sender_process, tmp_path, extension) -> None:
    sender = sender_process("--source", "testsrc")
    clip = tmp_path / f"crash{extension}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "receiver", sender.url, "--record", str(clip), "--quiet"],
        env=child_env(),
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not (clip.exists() and clip.stat().st_size > 50_000):
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the recording never grew"
            time.sleep(0.1)
        started = time.monotonic()  # about when the first frames were written
        while time.monotonic() - started < 5:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
        killed_after = time.monotonic() - started
    finally:
        proc.kill()
        proc.wait()
    frames, seconds = probe(clip)
    # what was on disk when the process died covers all but at most the last 2 s
    assert seconds >= killed_after - 2.0, (seconds, killed_after)
    assert frames >= 30


def test_segments_by_time_with_strftime_names(sender_process, tmp_path) -> None:
    sender = sender_process("--source", "testsrc")
    pattern = tmp_path / "cam-%Y%m%d-%H%M%S.mkv"
    result = run_receiver(
        sender.url, "--duration", "7", "--record", str(pattern), "--segment-seconds", "2",
        "--quiet",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    files = sorted(tmp_path.glob("cam-*.mkv"))
    assert len(files) >= 3, files
    today = time.strftime("%Y%m%d")
    assert all(f.name.startswith(f"cam-{today}-") for f in files)
    total = 0.0
    for path in files:
        frames, seconds = probe(path)
        assert frames > 0
        assert seconds <= 2.1, (path, seconds)
        total += seconds
    assert total > 5.0


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 400 KiB tmpfs: the recording runs out of space within a second or two."""
    require_or_skip(
        "mounting a tmpfs needs root" if os.geteuid() != 0 else None, "the disk-full test"
    )
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=400k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_cleanly_and_keeps_what_was_written(sender_process, tiny_disk) -> None:
    sender = sender_process("--source", "testsrc", "--size", "1280x720")
    clip = tiny_disk / "full.mkv"
    result = run_receiver(sender.url, "--duration", "30", "--record", str(clip), "--quiet")
    assert result.returncode != 0
    assert_one_line_error(result.stderr)
    assert "recording stopped" in result.stderr and "No space left" in result.stderr
    frames, _ = probe(clip)
    assert frames >= 1


def vp8_frames(count: int, keyframes: set[int]) -> list[EncodedFrame]:
    """``count`` VP8 frames at 30 fps (3000 ticks apart) from the sender's encoder,
    keyframes where asked."""
    encoder = PROFILES["vp8"].create(160, 120, 300_000, 30)
    frames = []
    for n in range(count):
        picture = av.VideoFrame(160, 120, "yuv420p")
        for plane in picture.planes:
            plane.update(bytes([n % 256]) * plane.buffer_size)
        picture.pts, picture.time_base = n * 3000, Fraction(1, 90000)
        if n in keyframes:
            picture.pict_type = av.video.frame.PictureType.I
        [packet] = encoder.encode(picture)
        assert packet.is_keyframe == (n in keyframes), n
        frames.append(EncodedFrame("vp8", bytes(packet), n * 3000, packet.is_keyframe))
    return frames


@pytest.mark.parametrize(
    ("keyframes", "starts", "asked"),
    [
        # The sender's own keyframe 0.17 s before the segment is due ends it: the one asked
        # for then would come 0.3 s after it (frame 70: a 2.33 s segment).
        ({0, 55, 70}, [0, 55], 0),
        # One before the last 0.3 s does not: the segment is due at frame 60, asks, and
        # ends at the keyframe that answers.
        ({0, 40, 63}, [0, 63], 1),
    ],
)
async def test_a_copied_segment_ends_at_the_keyframe_nearest_its_time(
    tmp_path: Path, keyframes: set[int], starts: list[int], asked: int
) -> None:
    requests: list[float] = []
    recorder = Recorder(
        str(tmp_path / "seg.mkv"), segment_seconds=2, mode="copy",
        request_keyframe=lambda: requests.append(time.monotonic()),
    )  # fmt: skip
    for frame in vp8_frames(90, keyframes):
        await recorder.write(frame)
    await recorder.close()
    lengths = [end - start for start, end in itertools.pairwise([*starts, 90])]
    assert [probe(Path(name))[0] for name in recorder.files] == lengths
    assert len(requests) == asked
