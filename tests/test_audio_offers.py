"""Offers for audio only, video only, both or neither, from plain aiortc viewers, on every
signalling path: each viewer gets what it asked for and nothing else, an audio-only one
leaves the camera closed, and closing it releases everything."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp
import av
import numpy as np
import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCSessionDescription

from common.ice import rtc_configuration
from sender.audio import SAMPLE_RATE, TONE_AMPLITUDE, TONE_HZ, AudioSpec
from sender.camera import CameraConfig
from sender.sources import SourceSpec

from .helpers import InProcessSender, wait_until

TESTSRC = AudioSpec("testsrc")
SDP = {"Content-Type": "application/sdp"}
AUDIO_FRAMES = 50  # one second


def tone_of(frames: list[av.AudioFrame]) -> tuple[float, float]:
    """(the median RMS of 20 ms frames, the strongest frequency in Hz) of decoded audio,
    its first channel, leaving out the clicks (a 2 kHz square wave each second)."""
    channels = [f.to_ndarray().reshape(-1, len(f.layout.channels))[:, 0] for f in frames]
    levels = [float(np.sqrt(np.mean((c / 32768.0) ** 2))) for c in channels]
    quiet = [c for c, level in zip(channels, levels, strict=True) if level < 0.2]
    samples = np.concatenate(quiet).astype(np.float64)
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    peak = float(np.fft.rfftfreq(len(samples), 1 / SAMPLE_RATE)[int(np.argmax(spectrum))])
    return float(np.median(levels)), peak


def assert_the_tone(frames: list[av.AudioFrame]) -> None:
    level, peak = tone_of(frames)
    assert abs(level - TONE_AMPLITUDE / 2**0.5) < 0.02, level  # -23 dBFS RMS
    assert abs(peak - TONE_HZ) < 5, peak


class Viewer:
    """A plain aiortc peer offering to receive video and/or audio; the tracks it gets."""

    def __init__(self, video: bool, audio: bool) -> None:
        self.pc = RTCPeerConnection(rtc_configuration())
        self.tracks: dict[str, MediaStreamTrack] = {}
        if video:
            self.pc.addTransceiver("video", direction="recvonly")
        if audio:
            self.pc.addTransceiver("audio", direction="recvonly")

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            self.tracks[track.kind] = track

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def answer(self, sdp: str) -> None:
        await self.pc.setRemoteDescription(RTCSessionDescription(sdp, "answer"))
        await wait_until(lambda: self.pc.connectionState == "connected", what="ICE+DTLS")

    async def audio_frames(self, count: int = AUDIO_FRAMES) -> list[av.AudioFrame]:
        track = self.tracks["audio"]
        return [await asyncio.wait_for(track.recv(), 10) for _ in range(count)]

    async def video_frames(self, count: int = 10) -> list[av.VideoFrame]:
        track = self.tracks["video"]
        return [await asyncio.wait_for(track.recv(), 10) for _ in range(count)]

    def sending(self) -> set[str]:
        """The kinds our answer says the sender sends."""
        description = self.pc.remoteDescription
        assert description is not None
        kinds = set()
        for section in description.sdp.split("\nm=")[1:]:
            if "a=sendonly" in section or "a=sendrecv" in section:
                kinds.add(section.split(" ", 1)[0])
        return kinds


@contextlib.asynccontextmanager
async def whep(
    sender: InProcessSender, *, video: bool, audio: bool, path: str = "/whep"
) -> AsyncIterator[Viewer]:
    """A viewer connected through WHEP; its session DELETEd on the way out."""
    viewer = Viewer(video, audio)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(sender.url + path, data=await viewer.offer(), headers=SDP) as r:
                assert r.status == 201, await r.text()
                location = r.headers["Location"]
                answer = await r.text()
            await viewer.answer(answer)
            yield viewer
            async with http.delete(sender.url + location) as r:
                assert r.status == 200
    finally:
        await viewer.pc.close()


async def post(
    sender: InProcessSender, path: str, body: str, headers: dict[str, str] | None = None
) -> tuple[int, str]:
    """POST an offer (WHEP, or the JSON ``/offer``): the status and the body."""
    async with (
        aiohttp.ClientSession() as http,
        http.post(sender.url + path, data=body, headers=headers) as resp,
    ):
        return resp.status, await resp.text()


async def get_json(sender: InProcessSender, path: str) -> dict:
    async with aiohttp.ClientSession() as http, http.get(sender.url + path) as resp:
        assert resp.status == 200
        return await resp.json()


async def scrape(sender: InProcessSender) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(sender.url + "/metrics") as resp:
        text = await resp.text()
    return {
        name: float(value)
        for name, value in (line.rsplit(" ", 1) for line in text.splitlines() if line[:1] != "#")
    }


async def test_an_audio_only_viewer_gets_the_tone_and_leaves_the_camera_closed(
    sender_factory,
) -> None:
    sender = await sender_factory(audio=TESTSRC, max_viewers=1)
    shared = sender.sessions.audio
    async with whep(sender, video=False, audio=True) as viewer:
        assert viewer.sending() == {"audio"}
        assert_the_tone(await viewer.audio_frames())
        assert set(viewer.tracks) == {"audio"}  # no video track was ever announced
        health = await get_json(sender, "/healthz")
        assert health["viewers"] == 1 and health["video_viewers"] == 0
        assert health["source_open"] is False and health["source_opens"] == 0
        assert health["encoders"] == {} and health["viewer_tiers"] == []
        audio = health["audio"]
        assert audio["configured"] is True and audio["source"] == "fake audio (testsrc)"
        assert audio["open"] is True and audio["listeners"] == 1 and audio["opens"] == 1
        assert audio["packets_sent"] >= AUDIO_FRAMES
        metrics = await scrape(sender)
        assert metrics["webcam_viewers"] == 1 and metrics["webcam_video_viewers"] == 0
        assert metrics["webcam_source_open"] == 0 and metrics["webcam_frames_encoded_total"] == 0
        assert metrics["webcam_audio_listeners"] == 1
        # It takes a viewer slot like any viewer (--max-viewers 1).
        other = Viewer(video=True, audio=False)
        try:
            status, text = await post(sender, "/whep", await other.offer(), SDP)
            assert status == 503 and "viewer slots" in json.loads(text)["error"]
        finally:
            await other.pc.close()
    # DELETE released everything at once; the audio closes a moment later.
    assert len(sender.sessions) == 0 and shared.listeners == 0
    await wait_until(lambda: not shared.is_open, what="the audio to close")
    health = await get_json(sender, "/healthz")
    assert health["audio"]["open"] is False and health["audio"]["listeners"] == 0
    assert health["viewers"] == 0 and health["source_opens"] == 0


async def test_a_video_only_viewer_gets_video_alone(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    async with whep(sender, video=True, audio=False) as viewer:
        assert viewer.sending() == {"video"}
        frames = await viewer.video_frames()
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert set(viewer.tracks) == {"video"}
        health = await get_json(sender, "/healthz")
        assert health["video_viewers"] == 1 and health["source_open"] is True
        assert health["audio"]["listeners"] == 0 and health["audio"]["opens"] == 0
    await wait_until(lambda: not sender.source.is_open, what="the camera to close")
    assert sender.sessions.audio.opens == 0


async def test_a_viewer_of_both_gets_both(sender_factory) -> None:
    sender = await sender_factory(audio=TESTSRC)
    async with whep(sender, video=True, audio=True) as viewer:
        assert viewer.sending() == {"video", "audio"}
        frames, sound = await asyncio.gather(viewer.video_frames(), viewer.audio_frames())
        assert {(f.width, f.height) for f in frames} == {(640, 480)}
        assert_the_tone(sound)
        health = await get_json(sender, "/healthz")
        assert health["video_viewers"] == 1 and health["audio"]["listeners"] == 1
    await wait_until(lambda: not sender.source.is_open, what="the camera to close")
    await wait_until(lambda: not sender.sessions.audio.is_open, what="the audio to close")


@pytest.mark.parametrize(
    ("audio", "video_offered", "audio_offered", "reason"),
    [
        (TESTSRC, False, False, "no video or audio section"),
        (None, False, True, "this sender has no audio (--audio none)"),
        (None, False, False, "no video or audio section"),
    ],
)
async def test_offers_for_nothing_we_send_are_400(
    sender_factory, audio, video_offered, audio_offered, reason
) -> None:
    sender = await sender_factory(audio=audio)
    viewer = Viewer(video_offered, audio_offered)
    if not (video_offered or audio_offered):
        viewer.pc.createDataChannel("nothing")  # an offer with no media at all
    try:
        offer = await viewer.offer()
    finally:
        await viewer.pc.close()
    for path, body, headers in [
        ("/whep", offer, SDP),
        ("/offer", json.dumps({"sdp": offer, "type": "offer"}), None),
    ]:
        status, text = await post(sender, path, body, headers)
        assert status == 400 and reason in json.loads(text)["error"], text
    health = await get_json(sender, "/healthz")
    assert health["viewers"] == 0 and health["source_opens"] == 0
    assert health["audio"]["opens"] == 0 and health["audio"]["configured"] is (audio is not None)


async def test_audio_only_through_every_path_of_several_cameras(sender_factory) -> None:
    cameras = (CameraConfig("a", SourceSpec("testsrc")), CameraConfig("b", SourceSpec("scene")))
    sender = await sender_factory(audio=TESTSRC, cameras=cameras)
    shared = sender.sessions.audio
    async with whep(sender, video=False, audio=True, path="/whep/b") as viewer:
        assert_the_tone(await viewer.audio_frames())
        # The legacy JSON endpoint, camera a, audio only too.
        legacy = Viewer(video=False, audio=True)
        try:
            body = json.dumps({"sdp": await legacy.offer(), "type": "offer", "camera": "a"})
            status, text = await post(sender, "/offer", body)
            assert status == 200, text
            await legacy.answer(json.loads(text)["sdp"])
            assert legacy.sending() == {"audio"}
            assert_the_tone(await legacy.audio_frames())
            health = await get_json(sender, "/healthz")
            for name in ("a", "b"):
                camera = health["cameras"][name]
                assert camera["viewers"] == 1 and camera["video_viewers"] == 0, camera
                assert camera["source_open"] is False and camera["source_opens"] == 0
            assert health["audio"]["listeners"] == 2 and shared.opens == 1
            # The audio's series once, without a camera label; the cameras' labelled.
            metrics = await scrape(sender)
            assert metrics["webcam_audio_listeners"] == 2
            assert metrics["webcam_audio_open"] == 1
            assert not any(k.startswith("webcam_audio_") and "camera=" in k for k in metrics)
            assert metrics['webcam_video_viewers{camera="b"}'] == 0
            assert metrics['webcam_viewers{camera="b"}'] == 1
        finally:
            await legacy.pc.close()
        await wait_until(lambda: shared.listeners == 1, what="the legacy viewer to leave")
    assert len(sender.cameras.get("b").sessions) == 0
    await wait_until(lambda: not shared.is_open, what="the audio to close")
    assert all(camera.source.opens == 0 for camera in sender.cameras)


async def test_an_unavailable_camera_still_serves_its_audio(sender_factory) -> None:
    down = CameraConfig("b", SourceSpec("testsrc"), error="cannot open /dev/video9: gone")
    cameras = (CameraConfig("a", SourceSpec("testsrc")), down)
    sender = await sender_factory(audio=TESTSRC, cameras=cameras)
    video = Viewer(video=True, audio=True)
    try:
        status, text = await post(sender, "/whep/b", await video.offer(), SDP)
        assert status == 503 and "camera b is not available" in json.loads(text)["error"]
    finally:
        await video.pc.close()
    async with whep(sender, video=False, audio=True, path="/whep/b") as viewer:
        assert_the_tone(await viewer.audio_frames())
        health = await get_json(sender, "/healthz")
        assert health["cameras"]["b"]["source_state"] == "unavailable"
        assert health["cameras"]["b"]["viewers"] == 1


async def test_a_video_section_that_does_not_receive_is_answered_inactive(sender_factory) -> None:
    """A viewer that would send video and receive audio gets the audio; we take no video."""
    sender = await sender_factory(audio=TESTSRC)
    viewer = Viewer(video=False, audio=True)
    viewer.pc.addTransceiver("video", direction="sendonly")
    try:
        status, answer = await post(sender, "/whep", await viewer.offer(), SDP)
        assert status == 201, answer
        await viewer.answer(answer)
        video = answer.split("\nm=video", 1)[1].split("\nm=", 1)[0]
        assert "a=inactive" in video, answer
        assert viewer.sending() == {"audio"}
        assert_the_tone(await viewer.audio_frames())
        assert sender.cameras.first.sessions.video_viewers() == 0
    finally:
        await viewer.pc.close()
    await wait_until(lambda: len(sender.sessions) == 0, what="the session to end")
    assert sender.source.opens == 0
