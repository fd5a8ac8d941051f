"""Publishing through Janus's VideoRoom: a real Janus (tests/janus_server.py), the fake
camera, aiortc subscribers; the modules directly, not the CLIs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import statistics
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiortc import MediaStreamTrack, RTCPeerConnection

from common import stamp
from common.ice import rtc_configuration
from common.janus import JanusError, JanusSession, JanusTarget, parse_janus_url
from receiver import Receiver
from receiver.janus_subscriber import JanusSubscription
from receiver.stats import read_stamp
from sender.janus_publisher import JanusPublication

from .helpers import InProcessSender, SenderProcess, wait_until
from .janus_server import PIN, PIN_ROOM, JanusServer, free_port
from .test_audio_offers import TESTSRC, assert_the_tone

NAME = "test-cam"
MIN_FPS = 25.0
WINDOW_SECONDS = 5.0
CLK_TCK = os.sysconf("SC_CLK_TCK")


def publish(sender: InProcessSender, target: JanusTarget, name: str = NAME) -> JanusPublication:
    """As the sender's camera does: its encoder's VP8, and its audio if it has some."""
    return JanusPublication(
        target,
        lambda: sender.sessions.encoders.subscribe("vp8"),
        name,
        shared_audio=sender.sessions.audio,
    )


async def publishing(publication: JanusPublication, within: float = 15.0) -> None:
    await wait_until(
        lambda: publication.state == "publishing",
        within,
        f"the publication (state {publication.state}, last error {publication.last_error})",
    )


class Viewer:
    """An aiortc subscriber through JanusSubscription, as the lead's Receiver will be."""

    def __init__(self, target: JanusTarget) -> None:
        self.subscription = JanusSubscription(target)
        self.pc = RTCPeerConnection(rtc_configuration(()))
        self._track: asyncio.Future[MediaStreamTrack] = asyncio.get_running_loop().create_future()
        self.audio: MediaStreamTrack | None = None  # when the publication carries audio

        @self.pc.on("track")
        def _on_track(track: MediaStreamTrack) -> None:
            if track.kind == "audio":
                self.audio = track
            elif track.kind == "video" and not self._track.done():
                self._track.set_result(track)

    async def connect(self) -> MediaStreamTrack:
        try:
            await self.subscription.connect(self.pc)
            return await asyncio.wait_for(self._track, 10)
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        await self.subscription.close()
        await self.pc.close()


@pytest.fixture
async def viewers() -> AsyncIterator[list[Viewer]]:
    """Viewers to close after the test, whatever happened."""
    made: list[Viewer] = []
    yield made
    await asyncio.gather(*(v.close() for v in made), return_exceptions=True)


async def watch(viewers: list[Viewer], target: JanusTarget) -> MediaStreamTrack:
    """Subscribe a new viewer and wait for its first frame."""
    viewer = Viewer(target)
    viewers.append(viewer)
    track = await viewer.connect()
    await asyncio.wait_for(track.recv(), 10)
    return track


@contextlib.asynccontextmanager
async def published(
    janus: JanusServer,
    sender_factory: Callable[..., Awaitable[InProcessSender]],
) -> AsyncIterator[tuple[InProcessSender, JanusTarget, JanusPublication]]:
    """An in-process sender publishing the fake camera into the test room."""
    sender = await sender_factory()
    target = parse_janus_url(janus.url())
    async with publish(sender, target) as publication:
        await publishing(publication)
        yield sender, target, publication


async def count_frames(track: MediaStreamTrack, seconds: float) -> tuple[int, list[int]]:
    """Frames decoded in ``seconds`` after the first one, and their stamped sequences."""
    await asyncio.wait_for(track.recv(), 10)
    frames, sequences = 0, []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        frame = await asyncio.wait_for(track.recv(), 5)
        frames += 1
        found = read_stamp(frame)
        if found is not None:
            sequences.append(found.sequence)
    return frames, sequences


def cpu_seconds(pid: int | str = "self") -> float:
    """utime + stime of a process, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def test_publish_the_fake_camera_and_subscribe(janus, sender_factory, viewers) -> None:
    async with published(janus, sender_factory) as (sender, target, publication):
        assert publication.publications == 1
        assert publication.last_error is None
        started = time.monotonic()
        track = await watch(viewers, target)
        first_frame = time.monotonic() - started
        assert viewers[0].subscription.feed == publication.feed
        assert viewers[0].subscription.display == NAME
        sequences, latencies = [], []
        while len(sequences) < 90:
            frame = await asyncio.wait_for(track.recv(), 10)
            assert (frame.width, frame.height) == (640, 480)
            found = read_stamp(frame)
            assert found is not None, "a frame without its stamp"
            sequences.append(found.sequence)
            latencies.append(stamp.age_us(found) / 1000)
        assert sequences == sorted(sequences) and len(set(sequences)) == len(sequences)
        assert sequences[-1] - sequences[0] < 150, "frames should be mostly consecutive"
        assert all(0 <= ms < 5000 for ms in latencies), latencies
        bitrate = await publication.bitrate()
        assert bitrate > 0
        print(
            f"\nthrough Janus: capture-to-decoded latency p50 {statistics.median(latencies):.1f}"
            f" ms, max {max(latencies):.1f} ms; first frame {first_frame:.2f} s after subscribing;"
            f" publication {bitrate / 1000:.0f} kbit/s"
        )
        await viewers[0].close()
        assert publication.state == "publishing"  # viewers come and go, the publication stays
    assert publication.state != "publishing"
    assert await publication.bitrate() == 0.0
    # Closing the publication stopped its track: nothing keeps the encoder or camera busy.
    await wait_until(lambda: not sender.sessions.encoders.active(), what="the encoder to stop")
    await wait_until(lambda: not sender.source.is_open, what="the camera to close")


async def test_five_subscribers_one_publication(janus, sender_factory, viewers) -> None:
    async with published(janus, sender_factory) as (sender, target, publication):
        tracks = await asyncio.gather(*(watch(viewers, target) for _ in range(5)))

        [encoder] = sender.sessions.encoders.active()
        encoded, captured = encoder.frames_encoded, sender.source.frames_captured
        encode_seconds = sender.sessions.encoders.totals.encode_seconds
        cpu, janus_cpu, started = cpu_seconds(), cpu_seconds(janus.proc.pid), time.monotonic()
        results = await asyncio.gather(*(count_frames(t, WINDOW_SECONDS) for t in tracks))
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds() - cpu) / elapsed
        janus_cpu = (cpu_seconds(janus.proc.pid) - janus_cpu) / elapsed
        encode = (sender.sessions.encoders.totals.encode_seconds - encode_seconds) / elapsed
        encoded = encoder.frames_encoded - encoded
        captured = sender.source.frames_captured - captured

        fps = [frames / WINDOW_SECONDS for frames, _ in results]
        print(
            f"\n5 subscribers through Janus: fps {', '.join(f'{f:.1f}' for f in fps)};"
            f" frames captured {captured}, encoded {encoded} (one encoder);"
            f" encoder {encode:.2f} core; this process (sender + 5 decoding subscribers)"
            f" {cpu:.2f} core; janus {janus_cpu:.2f} core"
        )
        assert all(f >= MIN_FPS for f in fps), fps
        for _, sequences in results:
            assert sequences == sorted(sequences)
        # The sender's work is one publication, whatever the number of viewers.
        assert sender.sessions.encoders.active() == [encoder]
        assert encoder.viewers == 1
        assert len(sender.sessions) == 0
        assert abs(encoded - captured) <= 3
        assert publication.publications == 1


async def test_sender_cpu_does_not_grow_with_subscribers(janus, viewers, tmp_path) -> None:
    """The sender CLI in its own process, to tell its CPU from the subscribers'."""
    sender = SenderProcess(
        ["--source", "testsrc", "--publish", janus.url(), "--no-local"], tmp_path / "s.log"
    )
    try:
        await wait_until(
            lambda: sender.health()["publications"][0]["state"] == "publishing", 30, "publishing"
        )
        target = parse_janus_url(janus.url())
        usage = {}
        for count in (1, 5):
            await asyncio.gather(*(watch(viewers, target) for _ in range(count - len(viewers))))
            await asyncio.sleep(1)  # past the newcomers' keyframes
            before, started = cpu_seconds(sender.proc.pid), time.monotonic()
            await asyncio.sleep(WINDOW_SECONDS)
            usage[count] = (cpu_seconds(sender.proc.pid) - before) / (time.monotonic() - started)
        print(
            f"\nsender process CPU: {usage[1]:.2f} core with 1 subscriber,"
            f" {usage[5]:.2f} core with 5"
        )
        # Janus fans out: five viewers cost the sender about what one does.
        assert usage[5] < usage[1] * 1.5 + 0.1, usage
    finally:
        assert sender.stop() == 0, sender.stderr()


async def test_janus_killed_and_restarted(janus, sender_factory, viewers) -> None:
    async with published(janus, sender_factory) as (_, target, publication):
        await watch(viewers, target)

        janus.kill()
        await asyncio.wait_for(viewers[0].subscription.lost.wait(), 5)
        assert "Janus went away" in (viewers[0].subscription.reason or "")
        await wait_until(lambda: publication.state == "retrying", 5, what="retrying")
        attempts = publication.attempts
        await asyncio.sleep(2)  # Janus stays down for a while: attempts fail and back off
        assert publication.attempts > attempts
        assert publication.state == "retrying"  # unreachable is worth retrying: not "failed"
        assert "cannot reach Janus" in (publication.last_error or "")

        await asyncio.to_thread(janus.start)
        back = time.monotonic()
        await publishing(publication, 10)
        assert publication.publications == 2
        # A new subscription receives frames within 10 s of Janus being back.
        while True:
            try:
                await watch(viewers, target)
                break
            except JanusError:
                assert time.monotonic() - back < 10
                await asyncio.sleep(0.2)
        recovered = time.monotonic() - back
        print(
            f"\nJanus back: publishing again and a new subscriber's first frame in {recovered:.1f} s"
        )
        assert recovered < 10


async def test_subscriber_leaves_when_the_publisher_does(janus, sender_factory, viewers) -> None:
    async with published(janus, sender_factory) as (_, target, _):
        await watch(viewers, target)
    await asyncio.wait_for(viewers[0].subscription.lost.wait(), 5)
    print(f"\nsubscription lost: {viewers[0].subscription.reason}")


async def test_choosing_among_several_publishers(janus, sender_factory, viewers) -> None:
    sender = await sender_factory()
    async with (
        publish(sender, parse_janus_url(janus.url()), "cam-a") as first,
        publish(sender, parse_janus_url(janus.url()), "cam-b") as second,
    ):
        await publishing(first)
        await publishing(second)
        with pytest.raises(JanusError, match="2 publishers in room") as raised:
            await watch(viewers, parse_janus_url(janus.url()))
        assert "cam-a" in str(raised.value) and "cam-b" in str(raised.value)
        await watch(viewers, parse_janus_url(janus.url(display="cam-b")))
        assert viewers[-1].subscription.feed == second.feed
        await watch(viewers, parse_janus_url(janus.url(feed=first.feed)))
        assert viewers[-1].subscription.display == "cam-a"
        with pytest.raises(JanusError, match="no publisher named 'cam-c'"):
            await watch(viewers, parse_janus_url(janus.url(display="cam-c")))
        # One encoder for both publications.
        assert [e.viewers for e in sender.sessions.encoders.active()] == [2]


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("http://127.0.0.1:8088/janus?room=1", "janus+http or janus+https"),
        ("janus+http://127.0.0.1:8088/janus", "room=NUMBER is missing"),
        ("janus+http://127.0.0.1:8088/janus?room=abc", "room must be a number"),
        ("janus+http://127.0.0.1:8088/janus?room=1&feed=x", "feed must be a number"),
        ("janus+http://127.0.0.1:8088/janus?room=1&feed=2&display=a", "not both"),
        ("janus+http://127.0.0.1:8088/janus?room=1&rom=2", "unknown parameter 'rom'"),
        ("janus+http://127.0.0.1:8088/janus?room=1&room=2", "room is given twice"),
        ("janus+http:///janus?room=1&secret=hunter2", "no host"),
        ("janus+http://127.0.0.1:99999/janus?room=1&token=hunter2", "out of range"),
        ("janus+http://me:hunter2@127.0.0.1:8088/janus?room=1", "credentials"),
    ],
)
def test_bad_janus_urls(url: str, reason: str) -> None:
    with pytest.raises(JanusError) as raised:
        parse_janus_url(url)
    message = str(raised.value)
    assert reason in message
    assert "\n" not in message
    assert "hunter2" not in message


def test_good_janus_urls() -> None:
    target = parse_janus_url(
        "janus+https://sfu.example.org:8089/janus/?room=5&display=cam"
        "&secret=sekrit&token=tok3n&pin=p1n"
    )
    assert target.api == "https://sfu.example.org:8089/janus"
    assert (target.room, target.feed, target.display) == (5, None, "cam")
    assert (target.secret, target.token, target.pin) == ("sekrit", "tok3n", "p1n")
    for secret in ("sekrit", "tok3n", "p1n"):
        assert secret not in repr(target) and secret not in target.describe()
    assert parse_janus_url("janus+http://127.0.0.1:8088?room=7&feed=9").api == (
        "http://127.0.0.1:8088/janus"
    )
    assert parse_janus_url("janus+http://[::1]:8088/janus?room=7").api == "http://[::1]:8088/janus"


async def test_subscriber_errors_are_one_line(janus, tmp_path) -> None:
    async def refused(url: str) -> str:
        pc = RTCPeerConnection(rtc_configuration(()))
        subscription = JanusSubscription(parse_janus_url(url))
        try:
            with pytest.raises(JanusError) as raised:
                await subscription.connect(pc)
        finally:
            await subscription.close()
            await pc.close()
        message = str(raised.value)
        assert "\n" not in message and "hunter2" not in message, message
        return message

    assert "room 9999 does not exist" in await refused(janus.url(room=9999))
    assert "nobody is publishing in room" in await refused(janus.url())
    assert "connection refused" in await refused(
        f"janus+http://127.0.0.1:{free_port()}/janus?room=1"
    )
    with JanusServer(tmp_path / "locked", api_secret="s3cret") as locked:
        message = await refused(locked.url(secret="hunter2"))
        assert "Unauthorized" in message and "403" in message
        assert "Unauthorized" in await refused(locked.url())


async def test_wrong_pin(janus, sender_factory, viewers) -> None:
    sender = await sender_factory()
    async with publish(sender, parse_janus_url(janus.url(room=PIN_ROOM, pin=PIN))) as publication:
        await publishing(publication)
        with pytest.raises(JanusError, match="wrong or missing pin") as raised:
            await watch(viewers, parse_janus_url(janus.url(room=PIN_ROOM, pin="hunter2")))
        assert "hunter2" not in str(raised.value) and "\n" not in str(raised.value)
        await watch(viewers, parse_janus_url(janus.url(room=PIN_ROOM, pin=PIN)))


@pytest.mark.parametrize("case", ["unknown room", "wrong pin", "wrong secret"])
async def test_publisher_refused_is_failed_and_retried(
    case, janus, sender_factory, tmp_path, caplog
) -> None:
    caplog.set_level(logging.DEBUG, logger="sender.janus_publisher")
    caplog.set_level(logging.DEBUG, logger="common.janus")
    sender = await sender_factory()
    server = janus
    if case == "unknown room":
        url = janus.url(room=9999)
    elif case == "wrong pin":
        url = janus.url(room=PIN_ROOM, pin="hunter2")
    else:
        server = JanusServer(tmp_path / "locked", api_secret="s3cret")
        server.start()
        url = server.url(secret="hunter2")
    try:
        async with publish(sender, parse_janus_url(url)) as publication:
            await wait_until(lambda: publication.attempts >= 3, 10, what="three attempts")
            assert publication.state == "failed"
            assert publication.publications == 0
            assert publication.last_error and "\n" not in publication.last_error
            print(f"\n{case}: {publication.last_error}")
            # Refused before any media: the encoder never ran for it.
            assert not sender.sessions.encoders.active()
    finally:
        if server is not janus:
            server.stop()
    assert "Traceback" not in caplog.text
    assert "hunter2" not in caplog.text
    failures = [r for r in caplog.records if "janus publication failed" in r.getMessage()]
    assert failures and failures[0].levelno == logging.INFO
    assert not any(r.exc_info for r in caplog.records)


async def test_session_loses_janus_on_restart(janus) -> None:
    """A session whose Janus restarted (same port, sessions gone) is lost."""
    async with JanusSession(janus.api) as session:
        await session.attach()
        janus.kill()
        await asyncio.to_thread(janus.start)
        await asyncio.wait_for(session.lost.wait(), 5)
        with pytest.raises(JanusError):
            await session.attach()


async def test_keepalives_keep_the_session(tmp_path) -> None:
    """Janus drops a session with no request for session_timeout seconds; long polls do
    not count, keepalives do."""
    with JanusServer(tmp_path / "short", session_timeout=2) as server:
        async with (
            JanusSession(server.api, keepalive=0.5) as kept,
            JanusSession(server.api, keepalive=1000) as forgotten,
        ):
            await asyncio.wait_for(forgotten.lost.wait(), 10)
            assert "timed" in (forgotten.lost_reason or "")
            await asyncio.sleep(1)
            assert not kept.lost.is_set()
            await kept.attach()


async def camera_publishing(
    sender_factory: Callable[..., Awaitable[InProcessSender]], target: JanusTarget
) -> tuple[InProcessSender, JanusPublication]:
    """A sender with the fake audio whose camera publishes into ``target`` (--publish)."""
    sender = await sender_factory(audio=TESTSRC, publish=(target,))
    [publication] = sender.cameras.first.publications
    await publishing(publication)
    return sender, publication


async def test_the_publication_carries_the_audio(janus, sender_factory, viewers) -> None:
    target = parse_janus_url(janus.url())
    sender, publication = await camera_publishing(sender_factory, target)
    shared = sender.sessions.audio
    assert shared.listeners == 1  # the publication, our only listener
    health = await sender.cameras.first.health()
    assert health["publications"][0]["audio"] is True
    await watch(viewers, target)
    sound = viewers[0].audio
    assert sound is not None, "Janus offered the subscriber no audio"
    frames = [await asyncio.wait_for(sound.recv(), 10) for _ in range(50)]
    assert_the_tone(frames)  # 440 Hz at -23 dBFS, through Janus
    async with Receiver(janus.url()) as rx:  # the receiver's Janus path hears it too
        assert rx.receives_audio
        frames = []
        async for frame in rx.audio_frames():
            frames.append(frame)
            if len(frames) == 50:
                break
        assert_the_tone(frames)
    assert shared.opens == 1 and len(sender.sessions) == 0
    await publication.close()
    await wait_until(lambda: not shared.is_open, what="the audio to close with the publication")
    assert shared.listeners == 0


async def test_a_room_refusing_audio_gets_video_only(
    janus, sender_factory, viewers, caplog
) -> None:
    pcmu_room = 5678
    async with JanusSession(janus.api) as session:  # a room whose audio is PCMU only
        handle = await session.attach()
        create = {"request": "create", "room": pcmu_room, "audiocodec": "pcmu"}
        await session.message(handle, {**create, "videocodec": "vp8", "publishers": 4})
    caplog.set_level(logging.INFO, logger="sender.janus_publisher")
    target = parse_janus_url(janus.url(pcmu_room))
    sender, publication = await camera_publishing(sender_factory, target)
    health = await sender.cameras.first.health()
    assert health["publications"][0]["audio"] is False
    assert publication.publications == 1
    await watch(viewers, target)  # its first video frame
    assert viewers[0].audio is None
    assert sender.sessions.audio.opens == 0  # the refused audio was never opened
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "sender.janus_publisher"
    ]
    assert warnings == [
        f"janus publication: room {pcmu_room} refuses Opus audio; publishing video only"
    ]
