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
import numpy as np
import pytest

from bench.av_sync import measure
from receiver.transcode import OpusToAac, add_aac_stream

from .helpers import FAKE_AV, assert_one_line_error, record_across_restart, run_receiver

SECONDS = 8
TOLERANCE_MS = 20.0
FAKE = FAKE_AV


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
    check_file(clip, codec, SECONDS - 2)


def check_file(clip: Path, codec: str, seconds: float) -> None:
    """It plays, with ``codec`` audio as long as the video (at least ``seconds``), and
    at least five clicks, every one where the stamped frames put its second."""
    played = play(clip)
    print(played)
    assert played.audio_codec == codec
    assert played.video_seconds >= seconds, played
    assert abs(played.audio_seconds - played.video_seconds) <= 0.2, played
    sync = measure(clip)
    detail = json.dumps(sync.summary())
    print(detail)
    assert len(sync.offsets_ms) >= 5, detail
    assert len(sync.offsets_ms) == sync.clicks, detail
    assert max(map(abs, sync.offsets_ms)) <= TOLERANCE_MS, detail


def test_aac_in_mp4_across_a_sender_restart(tmp_path: Path) -> None:
    """A reconnection starts a new file (``clip-2.mp4``); each starts at a video
    keyframe with its own AAC encoder, both in sync."""
    clip = tmp_path / "clip.mp4"
    segments, _ = record_across_restart(
        tmp_path, clip, "--audio-codec", "aac", restart_after=7, duration=20
    )
    for path in segments:
        check_file(path, "aac", 5)


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


def test_aac_keeps_rtp_time_across_lost_packets(tmp_path: Path) -> None:
    """Opus packets from a real encoder, one in ten lost: the AAC track is as long as
    the RTP time they span, each lost packet is silence in its place, and the tone after
    each hole is where its timestamps say (so the track stays aligned with the video)."""
    rate, size, count = 48000, 960, 100
    t = np.arange(size * count) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    encoder = av.CodecContext.create("libopus", "w")
    assert isinstance(encoder, av.AudioCodecContext)
    encoder.sample_rate, encoder.layout, encoder.format = rate, "stereo", "flt"
    packets = []
    for index in range(count):
        chunk = np.repeat(tone[index * size : (index + 1) * size], 2)[None, :]
        frame = av.AudioFrame.from_ndarray(chunk, format="flt", layout="stereo")
        frame.sample_rate, frame.pts = rate, index * size
        packets += [(bytes(p), index * size) for p in encoder.encode(frame)]
    lost = {pts for n, (_, pts) in enumerate(packets) if n % 10 == 5}

    path = tmp_path / "lossy.mp4"
    with av.open(str(path), "w") as container:
        stream = add_aac_stream(container)
        transcoder = OpusToAac(stream)
        for data, pts in packets:
            if pts not in lost:
                container.mux(transcoder.encode(data, pts))
        container.mux(transcoder.flush())
    assert transcoder.silence == len(lost) * size

    with av.open(str(path)) as container:
        decoded = [f for f in container.decode(audio=0)]
    played = np.concatenate([f.to_ndarray()[0] for f in decoded])
    first = float(decoded[0].pts * decoded[0].time_base)
    assert abs(first - packets[0][1] / rate) < 0.001
    # The span of the packets sent, not of those received (less by the lost ones).
    span = packets[-1][1] + size - packets[0][1]
    assert abs(len(played) - span) <= 1024, (len(played), span)
    # Opus delays its output by its look-ahead: find that lag before the first hole.
    clean = played[1000:3000]
    lag = max(range(600), key=lambda d: float(np.dot(clean, tone[1000 - d : 3000 - d])))
    for pts in sorted(lost):
        hole = played[pts + lag + 200 : pts + size - 200]
        assert np.sqrt(np.mean(hole**2)) < 0.03, f"no silence at {pts}"
        # After the hole, the tone in phase with what was sent at that time, the same
        # lag behind: a hole that shifted the rest would put it out of phase.
        after = played[pts + size + 300 : pts + 2 * size]
        sent = tone[pts + size + 300 - lag : pts + 2 * size - lag]
        assert np.corrcoef(after, sent)[0, 1] > 0.9, f"tone out of place after {pts}"
