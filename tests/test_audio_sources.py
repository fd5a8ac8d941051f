"""The sender's real audio sources reach a real receiver with their sound: a microphone
(an FFmpeg filter graph as the device, and ALSA through its ``file`` plugin, no sound
card needed), an audio file, an RTSP camera's AAC and G.711 audio; bad input is one line
and exit 2; ``auto`` without a microphone sends video alone; a microphone lost mid-stream
pauses the audio, never the video, and comes back."""

from __future__ import annotations

import asyncio
import fractions
import itertools
import logging
import time
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pytest

from bench.rtsp_camera import AUDIO_HZ, RtspCamera
from receiver import Receiver
from sender.audio import DEVICE, FILE, NETWORK, TIME_BASE, AudioSpec, OpusEncoder, resolve
from sender.audio_sources import AvAudioSource, Stamper, capture_time
from sender.sources import CLOCK_ORIGIN

from .helpers import SenderProcess, assert_one_line_error, run_sender, wait_until
from .rtsp_camera import rtsp_camera

SECONDS = 2.0  # of audio measured
RATE = 48000


def dominant_hz(frames: list[av.AudioFrame]) -> float:
    """The strongest frequency in decoded audio (the receiver's 48 kHz s16 stereo)."""
    samples = np.concatenate([f.to_ndarray().reshape(-1, 2)[:, 0] for f in frames])
    samples = samples.astype(np.float64) * np.hanning(len(samples))
    spectrum = np.abs(np.fft.rfft(samples))
    return float(np.argmax(spectrum) * RATE / len(samples))


async def listen(url: str, seconds: float = SECONDS) -> list[av.AudioFrame]:
    """``seconds`` of the sender's audio, as a receiver decodes it (after its first
    half second, which may hold the encoder's start)."""
    frames: list[av.AudioFrame] = []

    async def receive(rx: Receiver) -> None:
        async for frame in rx.audio_frames():
            frames.append(frame)
            if sum(f.samples for f in frames) >= (seconds + 0.5) * RATE:
                return

    async with Receiver(url) as rx:
        assert rx.receives_audio
        try:
            await asyncio.wait_for(receive(rx), seconds + 30)
        except TimeoutError:
            raise AssertionError(f"{len(frames)} audio frames, not {seconds:g} s") from None
    return frames[25:]


def assert_tone(frames: list[av.AudioFrame], hz: float) -> None:
    measured = dominant_hz(frames)
    assert abs(measured - hz) < 5, f"heard {measured:.0f} Hz, not {hz:g} Hz"
    samples = np.concatenate([f.to_ndarray().ravel() for f in frames]).astype(np.float64)
    level = float(np.sqrt(np.mean(samples**2)))
    assert level > 0.05 * 32768, f"too quiet: RMS {level / 32768:.3f}"


def sine_wav(path: Path, hz: float, seconds: float, rate: int = RATE) -> Path:
    """A mono s16 WAV file of a sine at 0.3 of full scale."""
    write_audio(path, "pcm_s16le", hz, seconds, rate)
    return path


def write_audio(path: Path, codec: str, hz: float, seconds: float, rate: int = RATE) -> None:
    n = np.arange(round(seconds * rate))
    signal = np.round(0.3 * 32767 * np.sin(2 * np.pi * hz * n / rate)).astype(np.int16)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        step = 1024
        for start in range(0, len(signal), step):
            frame = av.AudioFrame.from_ndarray(
                signal[None, start : start + step], format="s16", layout="mono"
            )
            frame.sample_rate = rate
            frame.pts = start
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)


ALSA_RATE = 4000  # the test microphone's: ALSA's null device gives 1 sample a read (see below)


def alsa_config(tmp_path: Path, raw: Path | None) -> Path:
    """An ALSA configuration whose ``default`` and ``mic`` capture ``raw`` (s16 mono at
    ``ALSA_RATE``, through the ``file`` plugin over the ``null`` device): a microphone
    without a sound card. ``null`` has no minimum period, so FFmpeg reads 1 frame at a
    time; at 4 kHz behind ``plug`` (converting to the 48 kHz FFmpeg asks for) that is 4000
    packets of 12 samples a second (20% of a core for the sender; at 48 kHz it could not
    keep up). The device is not paced: the sender's source holds it to real time.
    Without ``raw``: no devices."""
    conf = tmp_path / "asound.conf"
    text = ""
    if raw is not None:
        text = f"""pcm.silence {{ type null }}
pcm.raw {{ type file; slave.pcm "silence"; file "/dev/null"; infile "{raw}"; format "raw" }}
pcm.!default {{ type plug; slave {{ pcm "raw"; rate {ALSA_RATE}; channels 1; format S16_LE }} }}
pcm.mic {{ type plug; slave {{ pcm "raw"; rate {ALSA_RATE}; channels 1; format S16_LE }} }}
"""
    conf.write_text(text)
    return conf


def mono_raw(path: Path, hz: float, seconds: float, rate: int) -> Path:
    n = np.arange(round(seconds * rate))
    np.round(0.3 * 32767 * np.sin(2 * np.pi * hz * n / rate)).astype("<i2").tofile(path)
    return path


# -- microphones ------------------------------------------------------------------------


async def test_a_lavfi_microphone_reaches_the_receiver_with_its_frequency(sender_factory) -> None:
    # 44.1 kHz from the device: resampled to 48 kHz on the way.
    spec = AudioSpec(DEVICE, "sine=frequency=1000:sample_rate=44100,arealtime", "lavfi")
    sender = await sender_factory(audio=spec)
    frames = await listen(sender.url)
    assert_tone(frames, 1000)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts)


@pytest.fixture
def alsa_microphone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> float:
    """ALSA's ``default`` and ``mic`` play a 1500 Hz sine (for a sender started now)."""
    hz = 1500.0
    raw = mono_raw(tmp_path / "mic.raw", hz, 60, ALSA_RATE)
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(alsa_config(tmp_path, raw)))
    return hz


@pytest.mark.parametrize("name", ["auto", "alsa:mic"])
async def test_an_alsa_microphone_reaches_the_receiver(
    name: str, alsa_microphone: float, sender_process: Callable[..., SenderProcess]
) -> None:
    sender = sender_process("--audio", name)
    frames = await listen(sender.url)
    assert_tone(frames, alsa_microphone)
    if name == "auto":
        assert "audio: the default microphone, microphone alsa:default" in sender.stderr()


def test_a_missing_microphone_is_one_line_and_exit_2() -> None:
    result = run_sender("--audio", "alsa:nope")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "--audio: cannot open microphone alsa:nope: Unknown PCM nope" in result.stderr


def test_a_missing_audio_file_is_one_line_and_exit_2(tmp_path: Path) -> None:
    result = run_sender("--audio", str(tmp_path / "gone.m4a"))
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert f"no such audio device or file: {tmp_path / 'gone.m4a'}" in result.stderr


async def test_auto_without_a_microphone_sends_video_alone(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    sender_process: Callable[..., SenderProcess],
) -> None:
    monkeypatch.setenv("ALSA_CONFIG_PATH", str(alsa_config(tmp_path, None)))
    started = time.monotonic()
    sender = sender_process("--audio", "auto")
    assert time.monotonic() - started < 30
    async with Receiver(sender.url) as rx:
        assert not rx.receives_audio
        async for _ in rx.frames():
            if rx.stats.frames == 10:
                break
    said = [line for line in sender.stderr().splitlines() if "microphone" in line]
    assert len(said) == 1 and " INFO " in said[0] and "sending no audio" in said[0], said


async def test_a_lost_microphone_pauses_the_audio_not_the_video(
    tmp_path: Path, sender_factory, caplog: pytest.LogCaptureFixture
) -> None:
    """The microphone: a 3 s WAV file played by a filter graph; it ends (the device is
    lost), cannot be reopened while the file is away, and comes back with it."""
    caplog.set_level(logging.INFO, logger="sender.audio_sources")
    wav = sine_wav(tmp_path / "mic.wav", 1000, 3)
    away = tmp_path / "away.wav"
    spec = AudioSpec(DEVICE, f"amovie={wav},arealtime", "lavfi")
    sender = await sender_factory(audio=spec)
    video: list[float] = []
    audio: list[tuple[float, av.AudioFrame]] = []
    async with Receiver(sender.url) as rx:

        async def receive() -> None:
            async for item in rx.items():
                now = time.monotonic()
                if isinstance(item, av.VideoFrame):
                    video.append(now)
                elif isinstance(item, av.AudioFrame):
                    audio.append((now, item))

        task = asyncio.create_task(receive())
        try:
            await wait_until(lambda: len(audio) > 0, what="the microphone's sound")
            wav.rename(away)  # the open device plays on to its end, then cannot reopen
            await wait_until(lambda: "is lost" in caplog.text, what="the device to be lost")
            lost = time.monotonic()
            health = (await sender.health())["audio"]
            assert health["open"] and "lost" in health["error"], health
            heard = len(audio)
            await wait_until(lambda: time.monotonic() - lost > 3, what="3 s without audio")
            assert len(audio) - heard < 10, "audio went on while the device was gone"
            away.rename(wav)
            await wait_until(lambda: "is back" in caplog.text, what="the device to be back")
            back = len(audio)
            assert (await sender.health())["audio"]["error"] is None
            await wait_until(lambda: len(audio) >= back + 100, what="2 s of audio once back")
        finally:
            task.cancel()
    assert caplog.text.count("is lost") == 1 and caplog.text.count("is back") == 1
    gaps = np.diff(video)
    assert len(video) > 100 and gaps.max() < 0.5, f"video stalled {gaps.max():.2f} s"
    assert_tone([frame for _, frame in audio[back + 25 :]], 1000)


# -- files and network cameras ---------------------------------------------------------


async def test_an_audio_file_plays_looped_with_its_frequency(
    tmp_path: Path, sender_factory
) -> None:
    path = tmp_path / "tone.m4a"
    write_audio(path, "aac", 660, 1.0, rate=44100)  # shorter than what is measured: loops
    sender = await sender_factory(audio=AudioSpec(FILE, str(path)))
    frames = await listen(sender.url, 2.5)
    assert_tone(frames, 660)
    # In real time: 2.5 s of audio took about 2.5 s of RTP time, without a gap.
    pts = np.array([f.pts for f in frames])
    assert np.diff(pts).max() <= 960 * 3
    assert abs((pts[-1] - pts[0]) / RATE - sum(f.samples for f in frames[:-1]) / RATE) < 0.1


@pytest.mark.parametrize("codec", ["aac", "pcma"])
async def test_an_rtsp_cameras_audio_reaches_the_receiver(
    codec: str, tmp_path: Path, sender_factory
) -> None:
    with rtsp_camera(tmp_path, audio=codec) as camera:
        sender = await sender_factory(audio=AudioSpec(NETWORK, camera.url()))
        frames = await listen(sender.url)
    assert_tone(frames, AUDIO_HZ)


async def test_an_rtsp_cameras_audio_comes_back_after_a_restart(
    tmp_path: Path, sender_factory, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sender.audio_sources")
    with rtsp_camera(tmp_path, audio="pcma") as camera:
        sender = await sender_factory(audio=AudioSpec(NETWORK, camera.url()))
        after = await hear_across_restart(sender.url, camera, lambda: "is back" in caplog.text)
    assert "the audio of rtsp://127.0.0.1" in caplog.text and "is lost" in caplog.text
    assert_tone(after, AUDIO_HZ)


async def hear_across_restart(
    url: str, camera: RtspCamera, back: Callable[[], bool]
) -> list[av.AudioFrame]:
    """A receiver of ``url`` hears the camera's audio, the camera restarts; once ``back()``
    says the sender has it again, the audio heard from half a second on (2 s of it)."""
    async with Receiver(url) as rx:
        heard: list[av.AudioFrame] = []

        async def receive() -> None:
            async for frame in rx.audio_frames():
                heard.append(frame)

        task = asyncio.create_task(receive())
        try:
            await wait_until(lambda: len(heard) >= 25, what="the camera's audio")
            camera.restart()
            await wait_until(back, what="the camera's audio to be back")
            again = len(heard)
            await wait_until(lambda: len(heard) >= again + 125, what="audio once back")
        finally:
            task.cancel()
    return heard[again + 25 :]


async def test_audio_camera_is_the_rtsp_cameras_own_audio(
    tmp_path: Path, sender_process: Callable[..., SenderProcess]
) -> None:
    with rtsp_camera(tmp_path, audio="aac") as camera:
        sender = sender_process("--source", camera.url(), "--audio", "camera")
        frames = await listen(sender.url)
        assert "audio opened: the audio of rtsp://127.0.0.1:" in sender.stderr()
    assert_tone(frames, AUDIO_HZ)


def test_audio_camera_without_a_camera_with_audio_is_one_line_and_exit_2() -> None:
    result = run_sender("--source", "testsrc", "--audio", "camera")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "--audio: camera: fake camera (testsrc) is not a file or network camera" in (
        result.stderr
    )


async def test_the_source_resamples_once_to_what_opus_takes() -> None:
    source = AvAudioSource(AudioSpec(DEVICE, "aevalsrc=0.1*sin(2*PI*t*500)|0:s=22050", "lavfi"))
    await source.open()
    try:
        frames = [await source.read() for _ in range(5)]
    finally:
        await source.close()
    assert {(f.sample_rate, f.layout.name, f.format.name) for f in frames} == {
        (RATE, "mono", "s16")
    }
    for a, b in itertools.pairwise(frames):
        assert b.pts == a.pts + a.samples  # seamless, on the capture clock


def test_a_devices_own_capture_time_is_used_when_it_is_the_wall_clock() -> None:
    """ALSA stamps a packet with the wall clock of its first sample; 30 ms before it
    arrived, in a 20 ms frame, is 10 ms more than the arrival alone says. A time far off
    (the test ALSA device's is seconds off: its null device reports a full buffer as
    delay) and any other device's time (lavfi, RTSP: from 0) give way to the arrival."""
    frame = av.AudioFrame(format="s16", layout="mono", samples=960)
    frame.sample_rate = RATE
    frame.time_base = fractions.Fraction(1, 1_000_000)
    arrived = time.monotonic()
    wall = time.time() - (time.monotonic() - arrived)
    frame.pts = round((wall - 0.030) * 1_000_000)
    assert capture_time(frame, arrived, True) == pytest.approx(arrived - 0.030, abs=0.002)
    assert capture_time(frame, arrived, False) == pytest.approx(arrived - 0.020, abs=1e-9)
    frame.pts = round((wall - 3.0) * 1_000_000)
    assert capture_time(frame, arrived, True) == pytest.approx(arrived - 0.020, abs=1e-9)


@pytest.mark.parametrize(
    ("text", "kind", "url", "demuxer"),
    [
        ("alsa:hw:1,0", DEVICE, "hw:1,0", "alsa"),
        ("alsa:default", DEVICE, "default", "alsa"),
        ("avfoundation::0", DEVICE, ":0", "avfoundation"),
        ("dshow:Microphone (USB Audio)", DEVICE, "audio=Microphone (USB Audio)", "dshow"),
        ("dshow:audio=Mic", DEVICE, "audio=Mic", "dshow"),
        ("lavfi:sine=frequency=1000", DEVICE, "sine=frequency=1000", "lavfi"),
        ("rtsp://u:p@cam/live", NETWORK, "rtsp://u:p@cam/live", None),
    ],
)
def test_audio_sources_are_spelled_as_video_devices_are(
    text: str, kind: str, url: str, demuxer: str | None
) -> None:
    spec = resolve(text)
    assert spec is not None and (spec.kind, spec.url, spec.format) == (kind, url, demuxer)
    assert "p@" not in spec.describe()  # never a password in the logs


def pcm(samples: int, rate: int = RATE) -> av.AudioFrame:
    frame = av.AudioFrame.from_ndarray(np.zeros((1, samples), np.int16), "s16", "mono")
    frame.sample_rate = rate
    return frame


def test_the_audio_count_never_goes_back() -> None:
    """A camera's audio on its video's timeline (exact times): when the timeline is
    anchored afresh 0.5 s earlier, the frames whose time was handed out already are
    dropped, and the count goes on exactly at the capture time: RTP timestamps that go
    back read as a wrap to aiortc's receivers (one such run recorded one click in 15 s)."""
    stamper = Stamper()
    start = CLOCK_ORIGIN + 100.0
    times = [start + k * 0.02 for k in range(10)]  # 20 ms frames, on time
    times += [start + 0.2 - 0.5 + k * 0.02 for k in range(40)]  # then 0.5 s earlier
    out = [f for t in times for f in stamper.add(pcm(960), t, exact=True)]
    pts = [f.pts for f in out]
    assert all(b > a for a, b in itertools.pairwise(pts))
    assert len(out) == 10 + 40 - 25  # 0.5 s of frames dropped
    assert out[-1].pts == round((times[-1] - CLOCK_ORIGIN) * RATE)  # on time again
    # An estimate from the arrival (not exact) may wander 0.1 s before the count follows.
    loose = Stamper()
    first = loose.add(pcm(960), start)[0].pts
    assert loose.add(pcm(960), start + 0.02 + 0.05)[0].pts == first + 960


def test_the_opus_packets_follow_a_jump_in_the_frames_times() -> None:
    """Frames of 1024 samples (AAC) leave samples in the resampler's FIFO; after a 100 ms
    gap the packets are timed by the new frames' times, the FIFO's samples just before."""
    encoder = OpusEncoder()
    packets = []
    pts = 48_000
    for k in range(30):
        if k == 16:
            pts += 4800  # a gap, with 64 samples in the FIFO
        frame = pcm(1024)
        frame.pts, frame.time_base = pts, TIME_BASE
        packets += encoder.encode(frame)
        pts += 1024
    steps = [b.pts - a.pts for a, b in itertools.pairwise(packets)]
    assert sorted(set(steps)) == [960, 960 + 4800], steps
