"""Which encoder each codec uses, and its settings (sender/encoders.py): real FFmpeg
encoders, real hardware encoders failing for want of a device, and a stand-in for one
that fails mid-stream, watched through a real sender and receiver on 127.0.0.1."""

from __future__ import annotations

import errno
import logging
import re
import threading
from typing import Any

import aiohttp
import av
import pytest
from av.codec.context import Flags
from av.video.reformatter import VideoReformatter

from common import h264
from receiver import Receiver
from receiver.encoded import EncodedFrame
from receiver.stats import read_stamp
from sender import encoders
from sender.encoders import Candidate, Encoder, EncoderParams, open_encoder
from sender.sources import TIME_BASE, TestPattern

V4L2 = {"h264": "h264_v4l2m2m", "vp8": "vp8_v4l2m2m"}  # no V4L2 M2M device here
FAIL_AFTER = 45  # frames the stand-in encodes before it fails
FRAMES_AFTER = 45  # frames the viewer must decode after the failure


def require_v4l2(codec: str) -> str:
    name = V4L2[codec]
    if name not in encoders.encoders_for(codec):
        pytest.skip(f"this FFmpeg has no {name}")
    return name


def messages(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == "sender.encoders" and r.levelno == level
    ]


async def test_software_is_libx264_and_libvpx(caplog) -> None:
    caplog.set_level(logging.INFO, "sender.encoders")
    chosen = await encoders.choose("software", "fast")
    assert {c: (f.name, f.hardware, f.speed) for c, f in chosen.items()} == {
        "vp8": ("libvpx", False, "fast"),
        "h264": ("libx264", False, "fast"),
    }
    assert sorted(messages(caplog, logging.INFO)) == [
        "h264: using libx264 (software): --encoder software",
        "vp8: using libvpx (software): --encoder software",
    ]


@pytest.mark.parametrize("codec", ["h264", "vp8"])
async def test_auto_falls_back_to_software_when_the_hardware_does_not_open(caplog, codec) -> None:
    """The real V4L2 M2M encoder, probed where there is no such device: FFmpeg's own
    reason, in the one INFO line (not a warning: auto expects this)."""
    name = require_v4l2(codec)
    caplog.set_level(logging.INFO, "sender.encoders")
    chosen = await encoders.choose("auto", hardware={codec: [Candidate(name)]})
    factory = chosen[codec]
    assert (factory.name, factory.hardware) == (encoders.SOFTWARE[codec], False)
    assert (
        factory.reason
        == f"{name} failed to open: Could not find a valid device; can't configure encoder"
    )
    [line] = [m for m in messages(caplog, logging.INFO) if m.startswith(f"{codec}:")]
    assert line == f"{codec}: using {encoders.SOFTWARE[codec]} (software): {factory.reason}"
    assert not messages(caplog, logging.WARNING)


async def test_auto_tries_every_hardware_encoder_here_in_order(caplog) -> None:
    caplog.set_level(logging.INFO, "sender.encoders")
    tried = [c.name for c in encoders.candidates("h264")]
    if not tried:
        pytest.skip("this FFmpeg has no hardware H.264 encoder")
    assert tried == [n for n in encoders.HARDWARE["h264"] if n in encoders.encoders_for("h264")]
    factory = (await encoders.choose("auto"))["h264"]
    if factory.hardware:  # a machine with a working one
        assert factory.name in tried
        return
    reasons = re.findall(r"(\w+) failed to open: ", factory.reason)
    assert reasons == tried, factory.reason


async def test_a_named_hardware_encoder_that_fails_is_a_warning(caplog) -> None:
    name = require_v4l2("h264")
    caplog.set_level(logging.INFO, "sender.encoders")
    chosen = await encoders.choose(name)
    assert chosen["h264"].name == "libx264"
    assert messages(caplog, logging.WARNING) == [
        f"h264: using libx264 (software): {name} failed to open: Could not find a valid "
        "device; can't configure encoder"
    ]
    # The other codec keeps its software encoder, and says why.
    assert chosen["vp8"].name == "libvpx"
    assert f"vp8: using libvpx (software): --encoder {name} is not a vp8 encoder" in messages(
        caplog, logging.INFO
    )


def test_encoder_names_are_checked_against_the_codec() -> None:
    encoders.check_choice("h264", "auto")
    encoders.check_choice("vp8", "software")
    encoders.check_choice("h264", "libx264")
    with pytest.raises(encoders.EncoderChoiceError, match="libx264 encodes h264, not vp8"):
        encoders.check_choice("vp8", "libx264")
    with pytest.raises(encoders.EncoderChoiceError, match=r"no h264 encoder 'x265'.*libx264"):
        encoders.check_choice("h264", "x265")


async def test_a_probe_gives_up_on_an_encoder_that_hangs() -> None:
    release = threading.Event()

    def hang(params: EncoderParams) -> Encoder:
        release.wait(60)
        raise OSError("released")

    try:
        error = await encoders.probe(Candidate("stuck", opener=hang), "h264", within=0.5)
    finally:
        release.set()
    assert error == "did not answer within 0.5 s"


# -- settings --------------------------------------------------------------------------


def x264_options(packet: av.Packet[Any]) -> str:
    """The settings x264 writes into its first keyframe (an SEI message)."""
    found = re.search(rb"options: ([^\x00\x80]*)", bytes(packet))
    assert found, "no x264 settings in the first packet"
    return found[1].decode()


@pytest.mark.parametrize(
    ("speed", "size", "subme", "deblock"),
    [
        ("fast", (640, 480), 0, "1:0:0"),  # ultrafast, deblocking on
        ("balanced", (640, 480), 2, "1:0:0"),  # veryfast
        ("balanced", (1920, 1080), 0, "1:0:0"),  # ultrafast, deblocking on
        ("quality", (640, 480), 7, "1:0:0"),  # medium
    ],
)
def test_the_speed_reaches_x264(speed, size, subme, deblock) -> None:
    width, height = size
    params = EncoderParams("h264", width, height, 600_000, 30.0, speed)
    encoder = open_encoder("libx264", params)
    frame = TestPattern(width, height, 30)._draw(0)
    frame.pts, frame.time_base = 0, TIME_BASE
    options = x264_options(encoder.encode(frame)[0])
    assert f" subme={subme} " in options, options
    assert f" deblock={deblock} " in options, options
    # Live video whatever the speed: no B-frames, keyframes on demand, the bitrate capped
    # with a buffer of 5 frames (600 kbit/s / 30 fps * 5 = 100 kbit).
    for setting in ("bframes=0", "keyint=3000", "scenecut=0", "vbv_maxrate=600", "vbv_bufsize=100"):
        assert f" {setting} " in f" {options} ", (setting, options)


def test_settings_per_size_and_speed() -> None:
    def threads(name: str, width: int, height: int, cpus: int) -> int:
        return encoders.settings(
            name, EncoderParams("h264", width, height, 10**6, 30), cpus
        ).threads

    assert [threads("libx264", w, h, 8) for w, h in ((640, 480), (1280, 720), (1920, 1080))] == [
        1,
        2,
        4,
    ]
    assert threads("libx264", 1280, 720, 4) == 2
    # sliced threads and libvpx's threads cost CPU: one below 3 cores
    assert threads("libx264", 1920, 1080, 2) == 1
    assert threads("libvpx", 1920, 1080, 2) == 1
    assert threads("libvpx", 1280, 720, 4) == 2
    cpu_used = {
        speed: encoders.settings("libvpx", EncoderParams("vp8", 640, 480, 10**6, 30, speed))
        for speed in encoders.SPEEDS
    }
    assert {
        s: (c.options["cpu-used"], c.options["noise-sensitivity"]) for s, c in cpu_used.items()
    } == {
        "fast": ("-11", "0"),
        "balanced": ("-10", "0"),
        "quality": ("-6", "4"),
    }


@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize("speed", encoders.SPEEDS)
def test_every_speed_holds_the_bitrate(codec, speed) -> None:
    """The fake camera's moving bands at 640x360 (scaled down from 1280x720, as the
    reduced tier gets them) and 300 kbit/s: libvpx above cpu-used 11 sent 1.4-2.3x that,
    and a viewer behind a narrow link froze."""
    bitrate = 300_000
    camera = TestPattern(1280, 720, 30)
    scaler = VideoReformatter()
    encoder = open_encoder(
        encoders.SOFTWARE[codec], EncoderParams(codec, 640, 360, bitrate, 30.0, speed)
    )
    sizes = []
    for i in range(90):
        frame = scaler.reformat(camera._draw(i), width=640, height=360)
        frame.pts, frame.time_base = i * 3000, TIME_BASE
        sizes += [p.size for p in encoder.encode(frame)]
    sent = sum(sizes[1:]) * 8 * 30 / (len(sizes) - 1)  # after the first keyframe
    assert sent <= 1.15 * bitrate, f"{sent / 1000:.0f} kbit/s"


def test_hardware_h264_keyframes_carry_their_parameter_sets() -> None:
    """An encoder that puts SPS and PPS only in its extradata (libx264 with a global
    header, as some hardware does): each keyframe gets them, so a viewer joining at a
    later keyframe can decode it."""
    params = EncoderParams("h264", 320, 240, 500_000, 30.0)
    camera = TestPattern(320, 240, 30)

    def keyframes(hardware: bool) -> list[bytes]:
        context = open_encoder("libx264", params).context
        context.flags |= Flags.global_header
        encoder = Encoder("stand-in", params, context, hardware=hardware)
        found = []
        for i in range(10):
            frame = camera._draw(i)
            frame.pts, frame.time_base = i * 3000, TIME_BASE
            if i == 5:
                frame.pict_type = av.video.frame.PictureType.I
            found += [bytes(p) for p in encoder.encode(frame) if p.is_keyframe]
        return found

    assert all(h264.NAL_SPS not in h264.nal_types(k) for k in keyframes(hardware=False))
    completed = keyframes(hardware=True)
    assert len(completed) == 2
    for keyframe in completed:
        assert h264.NAL_SPS in h264.nal_types(keyframe)
        decoder = av.CodecContext.create("h264", "r")
        [picture] = decoder.decode(av.Packet(keyframe)) + decoder.decode(None)
        assert (picture.width, picture.height) == (320, 240)


# -- a hardware encoder failing mid-stream, end to end ---------------------------------


class FailsAfter(Encoder):
    """Stands in for a hardware encoder: libx264 until ``limit`` frames, then the error a
    vanished device gives."""

    def __init__(self, params: EncoderParams, limit: int, failed: threading.Event) -> None:
        super().__init__("flaky_h264", params, open_encoder("libx264", params).context, True)
        self._limit = limit
        self._failed = failed

    def encode(self, frame: av.VideoFrame | None) -> list[av.Packet[Any]]:
        if frame is not None and self.frames >= self._limit:
            self._failed.set()
            raise OSError(errno.EIO, "Input/output error")
        return super().encode(frame)


async def video_encoders(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(url + "/healthz") as resp:
        body: dict[str, Any] = await resp.json()
        return body["video_encoders"]


async def test_a_hardware_encoder_failing_mid_stream_is_replaced_by_software(
    sender_factory, caplog
) -> None:
    """The viewer keeps getting frames, whole and in order, from a keyframe of the new
    encoder on; one warning says what happened; /healthz names the encoder in use."""
    caplog.set_level(logging.INFO, "sender.encoders")
    failed = threading.Event()
    flaky = Candidate("flaky_h264", opener=lambda p: FailsAfter(p, FAIL_AFTER, failed))
    sender = await sender_factory(codec="h264", hardware_encoders={"h264": [flaky], "vp8": []})
    before = await video_encoders(sender.url)
    assert (before["h264"]["encoder"], before["h264"]["hardware"]) == ("flaky_h264", True)
    assert before["vp8"]["encoder"] == "libvpx"

    decoded: list[int] = []  # stamp sequence numbers of every decoded frame
    after: list[int] = []  # ... of those decoded once the encoder had failed
    keyframes_after: list[int] = []  # indexes of keyframes among frames received after
    received_after = 0
    async with Receiver(sender.url, connect_timeout=30, encoded=True) as rx:
        async for item in rx.items():
            if isinstance(item, EncodedFrame):
                if failed.is_set():
                    if item.keyframe:
                        keyframes_after.append(received_after)
                    received_after += 1
            elif isinstance(item, av.VideoFrame):
                found = read_stamp(item)
                assert found is not None, f"frame {len(decoded)} decoded broken"
                decoded.append(found.sequence)
                if failed.is_set():
                    after.append(found.sequence)
                    if len(after) >= FRAMES_AFTER:
                        break
            else:
                pytest.fail(f"the video had a gap: {item}")
        [shared] = sender.sessions.encoders.active()
        assert [t.codec.name for t in shared.tier_encoders.values()] == ["libx264"]
    assert decoded == sorted(set(decoded)), "frames out of order or repeated"
    assert len(decoded) >= FAIL_AFTER // 2 + FRAMES_AFTER
    # The software encoder's first frame is a keyframe; frames the failed encoder made
    # may still be on their way (the viewer's queue holds up to 15).
    assert keyframes_after and keyframes_after[0] <= 30, keyframes_after
    assert messages(caplog, logging.WARNING) == [
        f"h264: flaky_h264 failed after {FAIL_AFTER} frames at 640x480: [Errno 5] "
        "Input/output error; using libx264 (software) from now on"
    ]
    now = await video_encoders(sender.url)
    assert (now["h264"]["encoder"], now["h264"]["hardware"], now["h264"]["fallbacks"]) == (
        "libx264",
        False,
        1,
    )
    assert now["h264"]["why"].startswith("flaky_h264 failed after")
