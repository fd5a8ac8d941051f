"""``--no-video`` / ``Receiver(video=False)``: a receiver that asks a real sender (fake
camera, fake audio: a 440 Hz tone with a click at every whole second) for its audio
alone. It gets the tone and no video while the sender's camera stays closed, on every
signalling path; it records the audio alone (every packet decodes, one audio stream, as
long as the run, a click every second); it reconnects after a sender restart, into a
new file; and it plays the audio. Options that need the video, and a sender without
audio, are one line."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import av
import numpy as np
import pytest

from bench.av_sync import click_times
from receiver import Receiver, ReceiverError
from sender.camera import CameraConfig
from sender.sources import SourceSpec

from .helpers import (
    FAKE_AV,
    assert_one_line_error,
    record_across_restart,
    run_receiver,
)
from .test_audio_offers import AUDIO_FRAMES, TESTSRC, assert_the_tone, get_json
from .test_audio_out import play_and_record, sound_server  # noqa: F401 (a fixture, used by name)

FAKE = FAKE_AV
SECONDS = 6
CLICK_SPACING_TOLERANCE = 0.005  # seconds: RTP time, one 20 ms packet is 0.02


@pytest.mark.parametrize("signalling", ["whep", "json"])
async def test_the_api_gets_the_tone_and_no_video(sender_factory, signalling: str) -> None:
    sender = await sender_factory(audio=TESTSRC)
    kinds: set[str] = set()
    frames: list[av.AudioFrame] = []
    async with Receiver(sender.url, video=False, signalling=signalling) as rx:
        with pytest.raises(ReceiverError, match="video=False"):
            await anext(rx.frames())
        async for item in rx.items():
            kinds.add(type(item).__name__)
            if isinstance(item, av.AudioFrame):
                frames.append(item)
            if len(frames) == AUDIO_FRAMES:
                # While it listens, the camera is closed: no video viewer, no capture.
                health = await get_json(sender, "/healthz")
                assert health["viewers"] == 1 and health["video_viewers"] == 0, health
                assert health["source_open"] is False and health["source_opens"] == 0
                assert health["audio"]["listeners"] == 1
                break
        transceivers = rx.connection.pc.getTransceivers() if rx.connection else []
        assert [t.kind for t in transceivers] == ["audio"]  # the offer had audio alone
    assert kinds == {"AudioFrame"}
    assert_the_tone(frames)
    summary = rx.stats.summary()
    assert "frames" not in summary and "fps" not in summary, summary
    assert summary["audio"]["packets_received"] >= AUDIO_FRAMES, summary
    # The last frame decoded: the tone (-23 dBFS RMS), or louder when it held a click
    # (5 ms at 0.8 of full scale: -8 dBFS for its 20 ms frame), one frame in fifty.
    assert -24 <= summary["audio"]["level_dbfs"] <= -7, summary


async def test_several_cameras_audio_alone_from_the_cli(sender_factory, tmp_path: Path) -> None:
    cameras = (CameraConfig("a", SourceSpec("testsrc")), CameraConfig("b", SourceSpec("scene")))
    sender = await sender_factory(audio=TESTSRC, cameras=cameras)
    stats = tmp_path / "stats.json"
    urls = [f"{sender.url}/whep/a", f"{sender.url}/whep/b"]
    result = await asyncio.to_thread(
        run_receiver, *urls, "--no-video", "--duration", "3", "--stats-json", str(stats)
    )
    assert result.returncode == 0, result.stderr
    summaries = json.loads(stats.read_text())
    assert set(summaries) == {"a", "b"}
    for name, summary in summaries.items():
        assert "frames" not in summary, summary
        assert summary["audio"]["packets_received"] >= 100, (name, summary)
        assert summary["audio"]["packets_lost"] == 0, (name, summary)
    # The status lines: each camera's audio packets and level, no video part.
    status = [line for line in result.stderr.splitlines() if "audio packets" in line]
    assert any(line.startswith("a ") for line in status), result.stderr
    assert any(line.startswith("b ") for line in status), result.stderr
    assert all("dBFS" in line and "fps" not in line for line in status), status
    health = await get_json(sender, "/healthz")
    for name in ("a", "b"):
        assert health["cameras"][name]["source_opens"] == 0, health


def played(path: Path) -> tuple[list[str], str, float]:
    """Decode every packet (an error fails the test): the file's stream kinds, its
    audio codec, and the audio's span from its first timestamp to its last frame's end."""
    with av.open(str(path)) as container:
        kinds = [s.type for s in container.streams]
        audio = container.streams.audio[0]
        spans: list[float] = []
        for packet in container.demux(audio):
            for frame in packet.decode():
                assert isinstance(frame, av.AudioFrame) and frame.pts is not None
                start = float(frame.pts * frame.time_base)
                spans += [start, start + frame.samples / frame.sample_rate]
        return kinds, audio.codec_context.name, max(spans) - min(spans)


def check_clicks(path: Path, at_least: int) -> None:
    clicks = click_times(path)
    print(path.name, "clicks at", clicks)
    assert len(clicks) >= at_least, clicks
    gaps = np.diff(clicks)
    assert np.all(np.abs(gaps - 1.0) <= CLICK_SPACING_TOLERANCE), gaps


@pytest.mark.parametrize(
    ("extension", "asked", "codec"),
    [(".mka", None, "opus"), (".m4a", "aac", "aac"), (".ogg", None, "opus")],
)
def test_audio_alone_recorded(
    sender_process, tmp_path: Path, extension: str, asked: str | None, codec: str
) -> None:
    sender = sender_process(*FAKE)
    clip = tmp_path / f"clip{extension}"
    stats = tmp_path / "stats.json"
    options = ["--audio-codec", asked] if asked else []
    result = run_receiver(
        *(sender.url, "--no-video", "--duration", str(SECONDS), "--record", str(clip)),
        *("--stats-json", str(stats), "--quiet", *options),
    )
    assert result.returncode == 0, result.stderr
    kinds, audio_codec, seconds = played(clip)
    assert kinds == ["audio"] and audio_codec == codec
    received = json.loads(stats.read_text())["seconds"]  # first to last packet
    print(f"{clip.name}: {seconds:.3f} s of audio, received for {received:.3f} s")
    # --duration counts from the first packet: the run is SECONDS of audio, give or take
    # the packet that crosses the deadline and the sinks' time on it
    assert SECONDS - 0.1 <= received <= SECONDS + 0.5
    assert abs(seconds - received) <= 0.5
    check_clicks(clip, SECONDS - 2)


@pytest.mark.parametrize("how", ["stopped", "killed"])
def test_a_sender_restart_starts_a_new_audio_file(tmp_path: Path, how: str) -> None:
    """Stopped: the sender says goodbye (the track ends); killed: it vanishes, and the
    audio's silence for --stall-timeout tells. Either way: a new connection, a new file."""
    clip = tmp_path / "clip.mka"
    segments, stderr = record_across_restart(
        tmp_path, clip, "--no-video", restart_after=3, duration=16, kill=how == "killed"
    )
    print(stderr)
    assert "retrying" in stderr, stderr  # the loss noticed, said once, and repaired
    ended = "no audio for 3 s" if how == "killed" else "the sender ended the stream"
    assert ended in stderr, stderr
    for path in segments:
        kinds, codec, seconds = played(path)
        assert kinds == ["audio"] and codec == "opus" and seconds >= 3, (path, seconds)
        check_clicks(path, 3)


def test_audio_out_plays_the_audio_alone(
    sender_process,
    sound_server,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
) -> None:
    sender = sender_process(*FAKE)
    sound = tmp_path / "played.wav"
    stats = tmp_path / "stats.json"
    result = play_and_record(
        sound_server,
        sound,
        sender.url,
        "--no-video",
        "--audio-out",
        "--quiet",
        *("--duration", str(SECONDS), "--stats-json", str(stats)),
    )
    assert result.returncode == 0, result.stderr
    # PulseAudio may drop a new stream's first second (tests/test_audio_out.py); after
    # that every click a second after the last.
    clicks = click_times(sound)
    print("clicks at", clicks)
    assert len(clicks) >= SECONDS - 3, clicks
    assert np.all(np.abs(np.diff(clicks)[-2:] - 1.0) <= CLICK_SPACING_TOLERANCE), clicks
    summary = json.loads(stats.read_text())
    assert "frames" not in summary and summary["audio"]["packets_received"] >= 200, summary


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (["--no-audio"], "--no-video with --no-audio asks for nothing"),
        (["--display"], "--display needs the video"),
        (["--snapshots", "{tmp}/shots"], "--snapshots needs the video"),
        (["--frames", "10"], "--frames needs the video"),
        (["--record", "{tmp}/a.mkv", "--record-mode", "encode"], "--record-mode encode needs"),
        (["--stats-breakdown"], "--stats-breakdown needs the video"),
        (["--record", "{tmp}/a.mp3"], "cannot record to"),
    ],
)
def test_what_needs_the_video_is_one_line(tmp_path: Path, options: list[str], message: str) -> None:
    # Refused before connecting: no sender needed (nothing listens on port 9).
    args = [option.replace("{tmp}", str(tmp_path)) for option in options]
    result = run_receiver("http://127.0.0.1:9", "--no-video", *args, timeout=30)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr
    assert list(tmp_path.iterdir()) == []  # no file, no folder made


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["janus+http://127.0.0.1:9/janus/1234", "--no-video"], "not supported with --no-video"),
        (["http://127.0.0.1:9", "--record", "{tmp}/a.mka"], ".mka files hold audio alone"),
    ],
)
def test_janus_and_audio_files_without_no_video_are_one_line(
    tmp_path: Path, args: list[str], message: str
) -> None:
    result = run_receiver(*(a.replace("{tmp}", str(tmp_path)) for a in args), timeout=30)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr


def test_a_sender_without_audio_is_one_clear_line(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--audio", "none")
    result = run_receiver(sender.url, "--no-video", "--duration", "5", timeout=60)
    assert result.returncode == 1, result.stderr
    assert_one_line_error(result.stderr)
    assert "400" in result.stderr and "--audio none" in result.stderr, result.stderr
    assert "retrying" not in result.stderr  # refused: asking again cannot help


def test_the_api_refuses_neither_video_nor_audio() -> None:
    with pytest.raises(ReceiverError, match="neither video nor audio"):
        Receiver("http://127.0.0.1:9", video=False, audio=False)


def test_the_config_file_key(tmp_path: Path) -> None:
    """``no-video = true`` in --config's file is --no-video (here refused with --display,
    before connecting; nothing listens on port 9)."""
    config = tmp_path / "receiver.toml"
    config.write_text('streams = ["http://127.0.0.1:9"]\nno-video = true\ndisplay = true\n')
    result = run_receiver("--config", str(config), timeout=30)
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert "--display needs the video" in result.stderr
