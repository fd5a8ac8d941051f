"""``--audio-out``: the received audio played on a sound device, for real, without a sound
card: a PulseAudio server with a null sink (it plays in real time, like a card), ALSA's
default device routed to it (``~/.asoundrc`` in a temporary home), PortAudio's ALSA
backend under ``sounddevice``, and ``parec`` recording what the sink plays. In that
recording the fake audio's tone and its clicks must be there, one per second, one
second apart (nothing lost or repeated in between). Also: the message without the extra,
a device that does not exist, and the queue between the event loop and the device, fed
with real decoded frames."""

from __future__ import annotations

import importlib
import importlib.util
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import pytest

from bench.av_sync import click_times
from receiver import Receiver, ReceiverError
from receiver.audio import SAMPLE_RATE
from receiver.playback import PcmQueue, interleaved
from sender.audio import AudioSpec

from .ci import require_or_skip
from .helpers import ROOT, assert_one_line_error, child_env, run_receiver

SECONDS = 8
FAKE = ("--source", "testsrc", "--audio", "testsrc")
ASOUNDRC = "pcm.!default { type pulse }\nctl.!default { type pulse }\n"
PULSE_PLUGIN = "libasound_module_pcm_pulse.so"


def missing_for_real_output() -> str | None:
    """What this machine lacks to play through PortAudio into PulseAudio's null sink."""
    if importlib.util.find_spec("sounddevice") is None:
        return "sounddevice is not installed (pip install -e '.[test]')"
    try:
        importlib.import_module("sounddevice")
    except OSError as exc:
        return f"PortAudio is missing ({exc}; apt install libportaudio2)"
    for tool in ("pulseaudio", "parec"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (apt install pulseaudio pulseaudio-utils)"
    if not any(Path("/usr/lib").glob(f"*/alsa-lib/{PULSE_PLUGIN}")):
        return "ALSA's pulse plugin is missing (apt install libasound2-plugins)"
    return None


@pytest.fixture
def sound_server(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A PulseAudio server of our own with one null sink, ``out``; the environment for
    a process whose ALSA default device plays into it."""
    require_or_skip(missing_for_real_output(), "playing audio through PortAudio")
    home = tmp_path / "home"
    runtime = home / "run"
    runtime.mkdir(parents=True, mode=0o700)
    (home / ".asoundrc").write_text(ASOUNDRC)
    socket = runtime / "native"
    env = child_env()
    env.update(
        HOME=str(home),
        XDG_RUNTIME_DIR=str(runtime),
        PULSE_RUNTIME_PATH=str(runtime),
        PULSE_SERVER=f"unix:{socket}",
    )
    server = subprocess.Popen(
        [
            "pulseaudio",
            "-n",
            "--daemonize=no",
            "--exit-idle-time=-1",
            "--use-pid-file=no",
            "-L",
            f"module-native-protocol-unix auth-anonymous=1 socket={socket}",
            "-L",
            f"module-null-sink sink_name=out rate={SAMPLE_RATE} channels=2",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(tmp_path / "pulseaudio.log", "wb"),  # noqa: SIM115 (closed with the process)
    )
    try:
        deadline = time.monotonic() + 20
        while subprocess.run(["pactl", "info"], env=env, capture_output=True).returncode:
            assert server.poll() is None, (tmp_path / "pulseaudio.log").read_text()
            assert time.monotonic() < deadline, "PulseAudio did not start"
            time.sleep(0.1)
        yield env
    finally:
        server.terminate()
        server.wait(timeout=10)


def play_and_record(
    sound_server: dict[str, str], wav: Path, *receiver_args: str
) -> subprocess.CompletedProcess[str]:
    """Run the receiver CLI with ``receiver_args`` (which play into the null sink)
    while ``parec`` records what the sink plays into ``wav``."""
    recorder = subprocess.Popen(
        [
            *("parec", "-d", "out.monitor", "--rate", str(SAMPLE_RATE), "--channels", "2"),
            *("--format", "s16le", "--file-format=wav", str(wav)),
        ],
        env=sound_server,
    )
    try:
        return run_receiver(*receiver_args, env=sound_server)
    finally:
        recorder.send_signal(signal.SIGINT)  # parec finishes the WAV header
        recorder.wait(timeout=10)


def test_plays_the_tone_and_every_click(sender_process, sound_server, tmp_path: Path) -> None:
    sender = sender_process(*FAKE)
    played = tmp_path / "played.wav"
    stats = tmp_path / "stats.json"
    result = play_and_record(
        sound_server,
        played,
        sender.url,
        "--audio-out",
        "--quiet",
        *("--duration", str(SECONDS), "--stats-json", str(stats)),
    )
    assert result.returncode == 0, result.stderr
    clicks = click_times(played)
    print("clicks at", clicks)
    # PulseAudio takes a new stream's first second or two slowly (measured: 0 to 1.7 s
    # of sound dropped by the queue, the oldest first), never adding any: no gap is
    # longer than a second. Once it runs, every click exactly a second after the last:
    # nothing dropped, repeated or stretched in between.
    assert len(clicks) >= SECONDS - 3, clicks
    gaps = np.diff(clicks)
    assert np.all(gaps <= 1.005), gaps
    assert np.all(np.abs(gaps[-3:] - 1.0) <= 0.005), gaps
    # Between two clicks, the 440 Hz tone at 0.1 of full scale.
    tone = samples(played, clicks[0] + 0.1, 0.8)
    spectrum = np.abs(np.fft.rfft(tone))
    peak = np.fft.rfftfreq(len(tone), 1 / SAMPLE_RATE)[np.argmax(spectrum)]
    assert abs(peak - 440) <= 2, peak
    assert abs(np.sqrt(np.mean(tone**2)) - 0.1 / np.sqrt(2)) <= 0.02
    # Playing did not hold the video back.
    summary = json.loads(stats.read_text())
    assert summary["fps"] >= 25 and summary["latency_ms"]["p95"] <= 100, summary


def samples(path: Path, start: float, seconds: float) -> np.ndarray:
    """The first channel of a WAV file from ``start`` for ``seconds``, as floats."""
    with av.open(str(path)) as container:
        chunks = [interleaved(frame)[:, 0] for frame in container.decode(audio=0)]
    signal_ = np.concatenate(chunks).astype(np.float64) / 32768.0
    first = round(start * SAMPLE_RATE)
    return signal_[first : first + round(seconds * SAMPLE_RATE)]


def test_a_device_that_does_not_exist_is_one_line(sound_server) -> None:
    result = run_receiver(
        "http://127.0.0.1:9", "--audio-out", "--audio-device", "no such device", env=sound_server
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert "cannot play on 'no such device'" in result.stderr


def test_without_the_extra_it_says_what_to_install() -> None:
    # As on a machine without sounddevice: its import fails.
    code = (
        "import sys; sys.modules['sounddevice'] = None; from receiver.cli import main; "
        "sys.exit(main(['http://127.0.0.1:9', '--audio-out']))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert "pip install 'webrtc-webcam[audio-out]'" in result.stderr
    assert "libportaudio2" in result.stderr


@pytest.mark.parametrize(
    ("options", "message"),
    [(["--no-audio"], "drop --no-audio"), (["http://127.0.0.1:8"], "give one URL")],
)
def test_audio_out_with_no_audio_or_several_cameras_is_one_line(
    options: list[str], message: str
) -> None:
    result = run_receiver("http://127.0.0.1:9", *options, "--audio-out")
    assert result.returncode == 2, result.stderr
    assert_one_line_error(result.stderr)
    assert message in result.stderr


async def test_the_queue_with_real_decoded_frames(sender_factory) -> None:
    """Underruns play silence and wait for a few packets; overruns drop the oldest;
    otherwise samples come out in order, whatever the device's block size."""
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    # A copy recording's receiver: no video decoding, decoded audio all the same.
    frames: list[av.AudioFrame] = []
    async with Receiver(sender.url, encoded=True, decode=False, decoded_audio=True) as rx:
        async for item in rx.items():
            if isinstance(item, av.AudioFrame):
                frames.append(item)
            if len(frames) == 50:
                break
    pcm = [interleaved(f) for f in frames]
    assert all(p.shape == (960, 2) and p.dtype == np.int16 for p in pcm)
    everything = np.concatenate(pcm)
    assert np.abs(everything).max() > 8000  # the tone (3277) and a click (26214)

    queue = PcmQueue(max_samples=9600, prefill_samples=2880)
    out = np.ones((256, 2), dtype=np.int16)
    queue.read(out)  # nothing yet: silence
    assert not out.any() and queue.silence == 256
    queue.put(pcm[0])
    queue.put(pcm[1])
    queue.read(out)  # 40 ms queued, 60 ms needed before it plays
    assert not out.any() and queue.played == 0
    queue.put(pcm[2])
    played = []
    while queue.queued >= 256:
        queue.read(out)
        played.append(out.copy())
    assert np.array_equal(np.concatenate(played), everything[: len(played) * 256])
    queue.read(out)  # ran dry mid-block: what was left, then silence
    rest = 3 * 960 - len(played) * 256
    assert np.array_equal(out[:rest], everything[len(played) * 256 : 3 * 960])
    assert not out[rest:].any() and queue.underruns == 1

    for chunk in pcm[3:13]:  # 200 ms: the most it holds
        queue.put(chunk)
    assert queue.queued == 9600 and queue.dropped == 0
    queue.put(pcm[13])  # one more: back down to the newest 60 ms, not to 200
    assert queue.queued == 2880 and queue.dropped == 10560 - 2880
    kept = np.empty((2880, 2), dtype=np.int16)
    queue.read(kept)
    assert np.array_equal(kept, everything[14 * 960 - 2880 : 14 * 960])


async def test_audio_frames_need_decoding_or_decoded_audio(sender_factory) -> None:
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    async with Receiver(sender.url, encoded=True, decode=False) as rx:
        with pytest.raises(ReceiverError, match="decoded_audio=True"):
            async for _ in rx.audio_frames():
                break
