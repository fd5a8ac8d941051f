"""Audio in every container the receiver records to: a real sender with the fake audio
(a tone, a click at every whole second) and the real receiver CLI recording a few
seconds; then the file is opened with PyAV as a player would. It plays (every packet of
both tracks decodes), its audio is the codec asked for, the audio covers the video's
time, and every click lies where the stamped frames put its second (``bench.av_sync``)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import av
import pytest

from bench.av_sync import measure

from .helpers import assert_one_line_error, run_receiver

SECONDS = 8
TOLERANCE_MS = 20.0
FAKE = ("--source", "testsrc", "--audio", "testsrc")


@dataclass(frozen=True)
class Played:
    """What decoding every packet of a file found."""

    audio_codec: str
    video_seconds: float
    audio_seconds: float
    video_frames: int
    audio_frames: int


def play(path: Path) -> Played:
    """Decode every packet of both tracks (a decoding error fails the test); each
    track's span from its first timestamp to the end of its last frame."""
    with av.open(str(path)) as container:
        video, audio = container.streams.video[0], container.streams.audio[0]
        spans: dict[str, list[float]] = {"video": [], "audio": []}
        counts = {"video": 0, "audio": 0}
        for packet in container.demux(video, audio):
            for frame in packet.decode():
                if frame.pts is None:
                    continue
                start = float(frame.pts * frame.time_base)
                if isinstance(frame, av.AudioFrame):
                    end, kind = start + frame.samples / frame.sample_rate, "audio"
                else:
                    end, kind = start + 1 / 30, "video"
                spans[kind] += [start, end]
                counts[kind] += 1
        codec = audio.codec_context.name
    return Played(
        codec,
        max(spans["video"]) - min(spans["video"]),
        max(spans["audio"]) - min(spans["audio"]),
        counts["video"],
        counts["audio"],
    )


@pytest.mark.parametrize(
    ("extension", "mode", "asked", "codec"),
    [
        (".mkv", "copy", None, "opus"),
        (".webm", "copy", None, "opus"),
        (".mp4", "copy", None, "opus"),
        (".mp4", "copy", "aac", "aac"),
        (".mov", "copy", None, "aac"),
        (".mkv", "encode", "aac", "aac"),
        (".webm", "encode", "opus", "opus"),
    ],
)
def test_audio_recorded_in_sync(
    sender_process, tmp_path: Path, extension: str, mode: str, asked: str | None, codec: str
) -> None:
    sender = sender_process(*FAKE)
    clip = tmp_path / f"clip{extension}"
    options = ["--record-mode", mode] + (["--audio-codec", asked] if asked else [])
    result = run_receiver(
        sender.url, "--duration", str(SECONDS), "--record", str(clip), *options, "--quiet"
    )
    assert result.returncode == 0, result.stderr
    played = play(clip)
    print(played)
    assert played.audio_codec == codec
    # Most of the run recorded (re-encoding VP8 on two busy cores can fall behind, and the
    # receiver then drops frames: the test is about the audio that goes with them).
    assert played.video_seconds >= SECONDS / 2, played
    assert abs(played.audio_seconds - played.video_seconds) <= 0.2, played
    sync = measure(clip)
    detail = json.dumps(sync.summary())
    print(detail)
    assert len(sync.offsets_ms) >= 5, detail
    assert len(sync.offsets_ms) == sync.clicks, detail
    assert max(map(abs, sync.offsets_ms)) <= TOLERANCE_MS, detail


@pytest.mark.parametrize(
    ("clip", "codec", "message"),
    [
        ("clip.webm", "aac", ".webm files hold Opus audio, not aac"),
        ("clip.mov", "opus", ".mov files hold AAC audio, not opus"),
    ],
)
def test_a_codec_the_container_cannot_hold_is_one_line(
    tmp_path: Path, clip: str, codec: str, message: str
) -> None:
    # Refused before connecting: no sender needed (nothing listens on port 9).
    path = tmp_path / clip
    result = run_receiver(
        "http://127.0.0.1:9", "--record", str(path), "--audio-codec", codec, timeout=30
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr
    assert not path.exists()
