"""Audio from the sender to the Python receiver: the fake audio arrives with its sound,
one Opus encoder serves every listener, and a sender or viewer without audio behaves
as before."""

import re

import aiohttp
import numpy as np

from receiver import Receiver
from receiver.audio import rms
from sender.audio import TONE_AMPLITUDE, AudioSpec

from .helpers import assert_one_line_error, run_sender, wait_until

TESTSRC = AudioSpec("testsrc")


async def test_fake_audio_reaches_the_python_receiver(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    async with Receiver(sender.url) as rx:
        assert rx.receives_audio
        frames = []
        async for frame in rx.audio_frames():
            frames.append(frame)
            if len(frames) == 100:  # two seconds
                break
    assert {f.sample_rate for f in frames} == {48000}
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and pts[-1] - pts[0] >= 90 * 960  # RTP-timed, in order
    # The tone (0.1 of full scale, so an RMS of 0.07), and a click at each whole second.
    levels = [rms(f) for f in frames]
    assert abs(np.median(levels) - TONE_AMPLITUDE / 2**0.5) < 0.02, levels
    assert max(levels) > 0.3, "no click in two seconds"


async def test_one_opus_encoder_for_every_listener(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    shared = sender.sessions.audio
    assert shared is not None and shared.opens == 0  # nothing opened before a listener
    async with Receiver(sender.url) as first, Receiver(sender.url) as second:
        for rx in (first, second):
            async for _ in rx.audio_frames():
                break
        assert shared.listeners == 2 and shared.opens == 1
        encoded = shared.packets_encoded
        await wait_until(lambda: shared.packets_encoded >= encoded + 50, what="a second more")
        # Each packet encoded once and sent to both (a few may still wait in a queue).
        assert shared.packets_sent >= 2 * shared.packets_encoded - 60
    await wait_until(lambda: not shared.is_open, what="the audio to close after the last one")
    assert shared.opens == 1


async def test_a_sender_without_audio_serves_video_as_before(sender) -> None:
    async with Receiver(sender.url) as rx:  # it offers audio; the sender has none
        assert not rx.receives_audio
        async for _ in rx.frames():
            if rx.stats.frames == 10:
                break
    assert sender.sessions.audio is None


async def test_a_receiver_that_refuses_audio_gets_video_only(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    async with Receiver(sender.url, audio=False) as rx:
        sdp = rx.connection.pc.localDescription.sdp
        assert "m=audio" not in sdp
        assert not rx.receives_audio
        async for _ in rx.frames():
            if rx.stats.frames == 10:
                break
    assert sender.sessions.audio.opens == 0


async def test_audio_in_metrics_stats_and_status_line(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    rx = Receiver(sender.url)
    await rx.connect()
    try:
        count = 0
        async for _ in rx.audio_frames():
            count += 1
            if count == 10:
                break
        # The tone is -23 dBFS (RMS); a click in the last frame makes it louder.
        assert re.fullmatch(r"audio -(\d+) dBFS", rx.stats.audio.status())
        assert 3 <= int(rx.stats.audio.status().split()[1][1:]) <= 30

        async def scrape() -> str:
            async with aiohttp.ClientSession() as http, http.get(sender.url + "/metrics") as resp:
                return await resp.text()

        async def reported() -> bool:  # the listener's first receiver report
            return "webcam_viewer_audio_jitter_seconds{session=" in await scrape()

        await wait_until(reported, what="the listener's loss and jitter")
        text = await scrape()
        assert "webcam_audio_listeners 1.0" in text
        samples = dict(line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
        encoded = float(samples["webcam_audio_packets_encoded_total"])
        assert encoded >= 25
        assert "webcam_viewer_audio_packets_lost{session=" in text
    finally:
        await rx.close()
    audio = rx.stats.summary()["audio"]
    assert audio is not None and audio["packets_received"] >= 25, audio
    assert audio["packets_lost"] == 0 and audio["jitter_ms"] is not None, audio


async def test_no_audio_in_the_status_line_without_it(sender) -> None:
    async with Receiver(sender.url) as rx:
        async for _ in rx.frames():
            break
        assert rx.stats.status_line().endswith("no audio")
    assert rx.stats.summary()["audio"] is None


def test_an_unknown_audio_source_is_one_line_and_exit_2() -> None:
    result = run_sender("--audio", "bogus")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "--audio: unknown audio source 'bogus'" in result.stderr
