"""Which video encoder each codec uses, and its settings for live video.

**Settings** (``--encoder-speed``, per codec and picture size): one frame in, one frame
out, no lookahead, no B-frames; keyframes when a viewer asks (a new viewer, a PLI), with
one every ``KEYFRAME_INTERVAL`` frames only as a backstop; the bitrate respected frame by
frame, so a keyframe is a few frames' worth of bits, not a burst a narrow link queues.

- ``fast``: x264 ``ultrafast`` (with its deblocking filter); libvpx ``cpu-used -11``, no
  denoiser.
- ``balanced`` (default): x264 ``veryfast`` up to 1280x720 (on camera-like content within
  0.1 dB PSNR of x264's default preset, at a third of its time), above it ``fast``'s
  (0.4 dB above the default preset, at a sixth of its time);
  libvpx ``cpu-used -10``, no denoiser.
- ``quality``: what aiortc itself uses: x264's default preset (``medium``); libvpx
  ``cpu-used -6`` with its temporal denoiser (``noise-sensitivity 4``).

Measured on a 2-core machine with ``bench/encoder_speed.py`` (docs/encoders.md).

**Choice** (``--encoder``): ``software`` (libx264, libvpx), ``auto`` (the hardware encoders
this FFmpeg has, in ``HARDWARE`` order, the first that opens and encodes a test frame at
start, else software) or an encoder's name. A hardware encoder that fails later (to open at
another size, or mid-stream) is replaced by the software one for the rest of the run, with a
warning; the software encoder's first frame is a keyframe, so viewers carry on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fractions
import logging
import multiprocessing
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, NamedTuple

import av
import av.logging
import numpy as np
from aiortc.codecs import vpx as aiortc_vpx
from av.codec import Capabilities
from av.video.reformatter import VideoReformatter

from common import h264
from common.codecs import CODECS

from . import ffmpeg_log
from .sources import TIME_BASE

logger = logging.getLogger(__name__)

Speed = Literal["fast", "balanced", "quality"]
SPEEDS: tuple[Speed, ...] = ("fast", "balanced", "quality")
DEFAULT_SPEED: Speed = "balanced"
AUTO, SOFTWARE_CHOICE = "auto", "software"

SOFTWARE = {"vp8": "libvpx", "h264": "libx264"}
# Tried in this order by ``auto`` (those this FFmpeg has): the Raspberry Pi's (and other
# boards') V4L2 memory-to-memory encoder first, then NVIDIA, Intel, AMD, Apple. Not
# h264_vaapi: it takes frames already uploaded to the GPU, which PyAV cannot do.
HARDWARE: dict[str, tuple[str, ...]] = {
    "h264": ("h264_v4l2m2m", "h264_nvenc", "h264_qsv", "h264_amf", "h264_videotoolbox"),
    "vp8": ("vp8_v4l2m2m",),
}

KEYFRAME_INTERVAL = 3000  # frames (100 s at 30 fps): a backstop, keyframes come on demand
VBV_FRAMES = 5  # x264's rate buffer, in frames: a keyframe is about 4 frames' worth (VP8's
# max-intra-rate: 3). Measured at 1280x720 and 2 Mbit/s: 38 KB instead of 125 KB without
# one; with 3 frames, a 320x240 start at 115 kbit/s was too blurred to read and the next
# frames were skipped to refill the buffer.


class X264Preset(NamedTuple):
    """An x264 preset and what we set on top of it (``x264-params``)."""

    preset: str
    params: str = ""


# x264's preset per speed: up to 1280x720, and above. ultrafast always with its deblocking
# filter back on: on the camera-like scene (2 cores, bench.encoder_speed --scene scene) it
# costs no measurable CPU and is worth 1.5 dB PSNR at 1920x1080 and 3 Mbit/s (ultrafast's
# blocks stay in the picture and in its references). At "balanced", larger pictures take
# it too: 14 ms of CPU a frame against superfast's 16-19 and the default preset's 84, and
# 0.4-0.5 dB PSNR above both (SSIM 0.915 against 0.912 and 0.910): superfast's adaptive
# quantization (ultrafast has none) spends bits where PSNR and SSIM do not look. Up to
# 1280x720 veryfast stays: there an encode is cheap already.
ULTRAFAST = X264Preset("ultrafast", "deblock=0,0")
X264_PRESETS: dict[Speed, tuple[X264Preset, X264Preset]] = {
    "fast": (ULTRAFAST, ULTRAFAST),
    "balanced": (X264Preset("veryfast"), ULTRAFAST),
    "quality": (X264Preset("medium"), X264Preset("medium")),
}
X264_LARGE = 1280 * 720  # pixels
# libvpx: cpu-used (negative: that speed, fixed) and noise-sensitivity (its denoiser).
# Not above 11: from 12 on it stopped holding the bitrate on moving pictures (the fake
# camera at 640x360 and 300 kbit/s: 430 kbit/s at -12, 690 at -16), and a viewer behind a
# narrow link froze.
VP8_SPEEDS: dict[Speed, tuple[str, str]] = {
    "fast": ("-11", "0"),
    "balanced": ("-10", "0"),
    "quality": ("-6", "4"),
}
# Hardware encoders: their options for live video, and the one that trades speed for quality.
HARDWARE_OPTIONS: dict[str, dict[str, str]] = {
    "h264_nvenc": {"tune": "ull", "zerolatency": "1", "delay": "0", "rc": "cbr"}
    | {"forced-idr": "1", "profile": "baseline"},
    "h264_qsv": {"async_depth": "1", "forced_idr": "1"},
    "h264_amf": {"usage": "ultralowlatency", "rc": "cbr", "profile": "constrained_baseline"},
    "h264_videotoolbox": {"realtime": "1"},
}
HARDWARE_SPEED: dict[str, tuple[str, dict[Speed, str]]] = {
    "h264_nvenc": ("preset", {"fast": "p1", "balanced": "p2", "quality": "p4"}),
    "h264_qsv": ("preset", {"fast": "veryfast", "balanced": "faster", "quality": "medium"}),
    "h264_amf": ("quality", {"fast": "speed", "balanced": "speed", "quality": "balanced"}),
    "h264_videotoolbox": ("prio_speed", {"fast": "1", "balanced": "1", "quality": "0"}),
}
PROBE_SIZE = (640, 480)
PROBE_TIMEOUT = 10.0  # seconds for a hardware encoder to open and encode one frame


class EncoderChoiceError(ValueError):
    """``--encoder`` names no encoder of the codec; the message is one line for the user."""


@dataclass(frozen=True)
class EncoderParams:
    """What an encoder is opened for."""

    codec: str
    width: int
    height: int
    bitrate: int
    fps: float
    speed: Speed = DEFAULT_SPEED


@dataclass(frozen=True)
class Settings:
    """One encoder's configuration, as FFmpeg gets it."""

    pix_fmt: str
    options: dict[str, str]
    threads: int = 1
    profile: str | None = None
    qrange: tuple[int, int] | None = None


def x264_threads(width: int, height: int, cpus: int) -> int:
    """x264's sliced threads (zerolatency) shorten each encode but cost CPU: on 2 cores,
    two threads took 12% more CPU a frame at 1280x720 and 1920x1080 (11.5 against 10.1 ms,
    paced at 30 fps) for 2.3 ms less wall time, and a 1920x1080 sender with 8 viewers
    0.04-0.06 core more. So one thread below 3 cores, as libvpx (aiortc's rule)."""
    if cpus < 3:
        return 1
    pixels = width * height
    wanted = 1 if pixels <= 640 * 480 else 2 if pixels <= 1280 * 720 else 4
    return min(wanted, cpus)


def settings(name: str, params: EncoderParams, cpus: int | None = None) -> Settings:
    """The settings of encoder ``name`` for live video at ``params``."""
    cpus = cpus or multiprocessing.cpu_count()
    bitrate, speed = params.bitrate, params.speed
    if name == "libvpx":
        cpu_used, noise = VP8_SPEEDS[speed]
        return Settings(
            "yuv420p",
            {
                "bufsize": str(bitrate),
                "cpu-used": cpu_used,
                "deadline": "realtime",
                "lag-in-frames": "0",
                # A keyframe at most 3 frames' worth of bits (libwebrtc: 3-9): a larger one
                # is a burst that a narrow link queues, and that REMB reads as overuse.
                "max-intra-rate": "300",
                "minrate": str(bitrate),  # minrate = maxrate = bitrate: CBR
                "maxrate": str(bitrate),
                "noise-sensitivity": noise,
                "overshoot-pct": "15",
                "partitions": "0",
                "static-thresh": "1",
                "undershoot-pct": "100",
            },
            # libvpx's threads cost CPU (1.5x at 1080p on 2 cores): aiortc's rule, one
            # thread below 3 cores.
            threads=aiortc_vpx.number_of_threads(params.width * params.height, cpus),
            qrange=(2, 56),
        )
    if name == "libx264":
        preset = X264_PRESETS[speed][params.width * params.height > X264_LARGE]
        return Settings(
            "yuv420p",
            {
                "preset": preset.preset,
                "tune": "zerolatency",  # no lookahead, no B-frames, sliced threads
                "level": "31",
                # no keyframes nobody asked for
                "x264-params": ":".join(p for p in ("scenecut=0", preset.params) if p),
            }
            | rate_buffer(params),
            threads=x264_threads(params.width, params.height, cpus),
            profile="Baseline",  # constrained baseline, as browsers need
        )
    options = dict(HARDWARE_OPTIONS.get(name, {}))
    if name in HARDWARE_SPEED:
        option, values = HARDWARE_SPEED[name]
        options[option] = values[speed]
    if params.codec == "h264":
        options |= rate_buffer(params)
    profile = "Constrained Baseline" if params.codec == "h264" else None
    return Settings(pixel_format(name), options, profile=profile)


def rate_buffer(params: EncoderParams) -> dict[str, str]:
    """H.264's rate buffer (VBV): at most ``VBV_FRAMES`` frames' worth of bits at once."""
    return {
        "maxrate": str(params.bitrate),
        "bufsize": str(int(params.bitrate * VBV_FRAMES / params.fps)),
    }


def pixel_format(name: str) -> str:
    """yuv420p (the source's) when the encoder takes it, else nv12 (some hardware's only
    format), else its first."""
    formats = [f.name for f in av.codec.Codec(name, "w").video_formats or ()]
    for wanted in ("yuv420p", "nv12"):
        if not formats or wanted in formats:
            return wanted
    return formats[0]


@cache
def encoders_for(codec: str) -> tuple[str, ...]:
    """The encoders this FFmpeg has for ``codec`` (by their own names, not aliases)."""
    names = []
    for name in sorted(av.codecs_available):
        try:
            found = av.codec.Codec(name, "w")
        except Exception:  # a decoder only, or unusable here
            continue
        if found.type == "video" and found.name == name and found.canonical_name == codec:
            names.append(name)
    return tuple(names)


def is_hardware(name: str) -> bool:
    try:
        capabilities = av.codec.Codec(name, "w").capabilities
    except Exception:  # not an FFmpeg encoder (a test double)
        return False
    return bool(capabilities & (Capabilities.hardware | Capabilities.hybrid))


def codec_of(name: str) -> str | None:
    """The codec encoder ``name`` makes, when it is one of ours."""
    return next((codec for codec in CODECS if name in encoders_for(codec)), None)


def check_choice(codec: str, choice: str) -> None:
    """Raise EncoderChoiceError unless ``choice`` is auto, software or a ``codec`` encoder."""
    if choice in (AUTO, SOFTWARE_CHOICE) or name_in(codec, choice):
        return
    other = codec_of(choice)
    if other is not None:
        raise EncoderChoiceError(f"{choice} encodes {other}, not {codec} (see --codec)")
    names = ", ".join(encoders_for(codec))
    raise EncoderChoiceError(
        f"no {codec} encoder {choice!r} in this FFmpeg (auto, software, or one of: {names})"
    )


def name_in(codec: str, name: str) -> bool:
    return name in encoders_for(codec)


class Encoder:
    """An open encoder for one size and bitrate: FFmpeg's context (opened by its first
    frame), which encoder it is, and what frames need for it (some hardware takes nv12
    only; some sends H.264's parameter sets only once)."""

    def __init__(
        self, name: str, params: EncoderParams, context: av.VideoCodecContext, hardware: bool
    ) -> None:
        self.name = name
        self.params = params
        self.context = context
        self.hardware = hardware
        self.frames = 0  # frames it has encoded
        self._reformatter = VideoReformatter()  # its own: frames are shared between threads
        # x264 repeats them itself; some hardware does not
        self._parameter_sets = ParameterSets() if params.codec == "h264" and hardware else None

    @property
    def bit_rate(self) -> int:
        return self.context.bit_rate or self.params.bitrate

    def encode(self, frame: av.VideoFrame | None) -> list[av.Packet[Any]]:
        """Encode ``frame`` (None: flush); a keyframe mark on it is kept."""
        if frame is not None and frame.format.name != self.context.pix_fmt:
            converted = self._reformatter.reformat(frame, format=self.context.pix_fmt)
            converted.pts, converted.time_base = frame.pts, frame.time_base
            converted.pict_type = frame.pict_type
            frame = converted
        packets = self.context.encode(frame)
        self.frames += frame is not None
        for packet in packets:
            packet.time_base = TIME_BASE
        if self._parameter_sets is not None:
            packets = [self._parameter_sets.complete(p, self.context.extradata) for p in packets]
        return packets


def open_encoder(name: str, params: EncoderParams) -> Encoder:
    """FFmpeg's encoder ``name`` with the settings for ``params``; it opens with its first
    frame (in the thread that encodes), so a failure to open shows there."""
    chosen = settings(name, params)
    context = av.CodecContext.create(name, "w")
    if not isinstance(context, av.VideoCodecContext):
        raise EncoderChoiceError(f"{name} is not a video encoder")
    context.width, context.height = params.width, params.height
    context.bit_rate = params.bitrate
    context.pix_fmt = chosen.pix_fmt
    context.time_base = TIME_BASE
    context.framerate = fractions.Fraction(round(params.fps), 1)
    context.gop_size = KEYFRAME_INTERVAL
    context.max_b_frames = 0
    if chosen.profile is not None:
        context.profile = chosen.profile
    if chosen.qrange is not None:
        context.qmin, context.qmax = chosen.qrange
    context.thread_count = chosen.threads
    context.options = chosen.options
    return Encoder(name, params, context, is_hardware(name))


class ParameterSets:
    """H.264's SPS and PPS in front of every keyframe: a viewer starts at any keyframe,
    and some hardware encoders send them once, or only in the codec's extradata."""

    def __init__(self) -> None:
        self._sets = b""

    def complete(self, packet: av.Packet[Any], extradata: bytes | None) -> av.Packet[Any]:
        data = bytes(packet)
        types = h264.nal_types(data)
        if h264.NAL_SPS in types:
            self._sets = h264.parameter_sets(data)
            return packet
        if h264.NAL_IDR not in types:
            return packet
        if not self._sets and extradata:
            self._sets = h264.parameter_sets(extradata)
        if not self._sets:
            return packet
        completed = av.Packet(self._sets + data)
        completed.pts, completed.dts, completed.time_base = packet.pts, packet.dts, packet.time_base
        completed.is_keyframe = True
        return completed


Opener = Callable[[EncoderParams], Encoder]


@dataclass(frozen=True)
class Candidate:
    """An encoder to try: FFmpeg's of that name, unless ``opener`` makes it (tests use
    that to stand in for hardware that fails mid-stream)."""

    name: str
    hardware: bool = True
    opener: Opener | None = None

    def open(self, params: EncoderParams) -> Encoder:
        if self.opener is not None:
            return self.opener(params)
        return open_encoder(self.name, params)


def describe_error(exc: BaseException) -> str:
    return str(exc).strip() or type(exc).__name__


class EncoderFactory:
    """Makes one codec's encoders: the chosen encoder while it works, the software one
    for the rest of the run once it has failed. Shared by the codec's tiers, which
    encode in parallel threads."""

    def __init__(
        self,
        codec: str,
        speed: Speed = DEFAULT_SPEED,
        chosen: Candidate | None = None,
        reason: str = "software encoder",
    ) -> None:
        self.codec = codec
        self.speed = speed
        self.software = Candidate(SOFTWARE[codec], hardware=False)
        self.reason = reason
        self.fallbacks = 0
        self._current = chosen or self.software
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self._current.name

    @property
    def hardware(self) -> bool:
        return self._current.hardware

    def describe(self) -> dict[str, object]:
        """For /healthz: the encoder in use and why."""
        return {
            "encoder": self.name,
            "hardware": self.hardware,
            "speed": self.speed,
            "why": self.reason,
            "fallbacks": self.fallbacks,
        }

    def makes(self, encoder: Encoder) -> bool:
        """Whether ``encoder`` is what this factory makes now (else: replace it)."""
        return encoder.name == self.name

    def create(self, width: int, height: int, bitrate: int, fps: float) -> Encoder:
        params = EncoderParams(self.codec, width, height, bitrate, fps, self.speed)
        candidate = self._current
        try:
            return candidate.open(params)
        except Exception as exc:
            if candidate is self.software:
                raise
            self._fall_back(candidate.name, f"failed to open: {describe_error(exc)}")
            return self.software.open(params)

    def encode(
        self, encoder: Encoder, frame: av.VideoFrame
    ) -> tuple[Encoder, list[av.Packet[Any]]]:
        """Encode ``frame``; when a hardware (not software) encoder fails, with a new
        software encoder, returned with the packets (its first is a keyframe)."""
        try:
            return encoder, encoder.encode(frame)
        except Exception as exc:  # a driver may fail in any way; only ours is fatal
            if encoder.name == self.software.name:
                raise
            when = f"after {encoder.frames} frames" if encoder.frames else "to open"
            size = f"{encoder.params.width}x{encoder.params.height}"
            self._fall_back(encoder.name, f"failed {when} at {size}: {describe_error(exc)}")
            p = encoder.params
            replacement = self.create(p.width, p.height, encoder.bit_rate, p.fps)
            return replacement, replacement.encode(frame)

    def _fall_back(self, name: str, what: str) -> None:
        with self._lock:
            if self._current.name != name:
                return  # another tier's encoder failed first
            self._current = self.software
            self.fallbacks += 1
            self.reason = f"{name} {what}"
        logger.warning(
            "%s: %s %s; using %s (software) from now on",
            self.codec,
            name,
            what,
            self.software.name,
        )


def candidates(codec: str) -> tuple[Candidate, ...]:
    """The hardware encoders ``auto`` tries for ``codec``: those of ``HARDWARE`` here."""
    return tuple(Candidate(name) for name in HARDWARE.get(codec, ()) if name_in(codec, name))


async def choose(
    choice: str = AUTO,
    speed: Speed = DEFAULT_SPEED,
    hardware: Mapping[str, Sequence[Candidate]] | None = None,
    within: float = PROBE_TIMEOUT,
) -> dict[str, EncoderFactory]:
    """Each codec's encoder for ``--encoder choice``, probed now; one INFO line per codec
    says which and why (a WARNING when a named encoder does not work). A named encoder
    applies to its codec; the others use software. ``hardware``: the candidates ``auto``
    tries per codec (default: ``candidates(codec)``)."""
    factories = {}
    for codec in CODECS:
        factory = await _choose(codec, choice, speed, hardware, within)
        named = name_in(codec, choice) and choice != SOFTWARE[codec]
        level = logging.WARNING if named and factory.name != choice else logging.INFO
        logger.log(
            level,
            "%s: using %s (%s): %s",
            codec,
            factory.name,
            "hardware" if factory.hardware else "software",
            factory.reason,
        )
        factories[codec] = factory
    return factories


async def _choose(
    codec: str,
    choice: str,
    speed: Speed,
    hardware: Mapping[str, Sequence[Candidate]] | None,
    within: float,
) -> EncoderFactory:
    if choice == SOFTWARE_CHOICE:
        return EncoderFactory(codec, speed, reason="--encoder software")
    if choice == SOFTWARE[codec]:
        return EncoderFactory(codec, speed, reason=f"--encoder {choice}")
    if choice == AUTO:
        tried = tuple(hardware[codec] if hardware and codec in hardware else candidates(codec))
    elif name_in(codec, choice):
        tried = (Candidate(choice, hardware=is_hardware(choice)),)
    else:
        return EncoderFactory(codec, speed, reason=f"--encoder {choice} is not a {codec} encoder")
    failures: list[str] = []
    for candidate in tried:
        error = await probe(candidate, codec, speed, within)
        if error is None:
            reason = "; ".join(failures) or (
                f"--encoder {choice}" if choice != AUTO else "it opened and encoded a test frame"
            )
            return EncoderFactory(codec, speed, candidate, reason)
        failures.append(f"{candidate.name} {error}")
    if not tried:
        return EncoderFactory(codec, speed, reason="no hardware encoder for it in this FFmpeg")
    return EncoderFactory(codec, speed, reason="; ".join(failures))


async def probe(
    candidate: Candidate, codec: str, speed: Speed = DEFAULT_SPEED, within: float = PROBE_TIMEOUT
) -> str | None:
    """None when ``candidate`` opens and encodes a test frame, else why not ("failed to
    open: Could not find a valid device"). It runs in a thread of its own: a driver that
    hangs is given up on after ``within`` seconds (the thread is left behind, as a daemon)."""
    params = EncoderParams(codec, *PROBE_SIZE, 1_000_000, 30.0, speed)
    result: concurrent.futures.Future[None] = concurrent.futures.Future()

    def run() -> None:
        result.set_running_or_notify_cancel()  # from now on, a timeout cannot cancel it
        try:
            # FFmpeg's messages alone say why a hardware encoder failed.
            with ffmpeg_log.captured(av.logging.ERROR) as logs:
                try:
                    _encode_test_frame(candidate, params)
                except Exception as exc:
                    errors = [m.strip() for level, _, m in logs if level <= av.logging.ERROR]
                    raise ProbeError("; ".join(errors) or describe_error(exc)) from exc
        except Exception as exc:
            result.set_exception(exc)
        else:
            result.set_result(None)

    threading.Thread(target=run, name=f"probe {candidate.name}", daemon=True).start()
    try:
        await asyncio.wait_for(asyncio.wrap_future(result), within)
    except TimeoutError:
        return f"did not answer within {within:g} s"
    except ProbeError as exc:
        return f"failed to open: {exc}"
    return None


class ProbeError(Exception):
    """Why a probed encoder failed, from FFmpeg's own error messages."""


def _encode_test_frame(candidate: Candidate, params: EncoderParams) -> None:
    encoder = candidate.open(params)
    picture = np.full((params.height * 3 // 2, params.width), 128, dtype=np.uint8)
    frame = av.VideoFrame.from_ndarray(picture, format="yuv420p")
    frame.pts, frame.time_base = 0, TIME_BASE
    packets = encoder.encode(frame) + encoder.encode(None)
    if not packets:
        raise ProbeError("no output for a test frame")
