"""Which of a camera's modes to capture in: raw when raw keeps up, else MJPEG, else H.264.

A camera opened with only a size and a rate gets whichever format its driver tries
first, and USB 2 carries uncompressed YUYV at 1280x720 at 10 fps at best: most webcams
give 720p and 1080p at 30 fps only as MJPEG (or H.264). So the format is chosen here,
from the modes the camera lists (``v4l2``, ``ffmpeg_devices``), in a pure function the
tests feed with kept outputs of real cameras:

1. A mode at the requested size that reaches the requested rate: raw first (no decoding;
   4:2:0 before 4:2:2, see ``RAW_FORMATS``), else MJPEG, else H.264 (decoded for now).
2. Else the closest mode (``_distance``: a rate below the request counts twice as much
   as a size, a smaller size twice as much as a larger one, another aspect ratio one
   step), with a warning that says what was picked and why; frames are scaled to the
   requested size either way.

``--input-format`` narrows the modes to one format (or to ``raw``) first; a camera
without it is an error, not a fallback.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import av

RAW = "raw"  # any uncompressed format; also a mode whose pixel format the camera decides
MJPEG = "mjpeg"
H264 = "h264"
AUTO = "auto"
COMPRESSED = (MJPEG, H264)  # in order of preference, after raw
# Uncompressed formats FFmpeg reads from cameras, best first: 4:2:0 is what the encoders
# take (no conversion), then 4:2:2 (a cheap one), then RGB, Bayer and grey.
RAW_FORMATS = (
    "yuv420p", "nv12", "yuyv422", "uyvy422", "yuv422p", "yuv411p", "yuv410p",
    "bgr0", "0rgb", "bgr24", "rgb24", "rgb565le", "rgb565be", "rgb555le", "rgb555be",
    "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8", "bayer_rggb8", "gray", "gray16le",
)  # fmt: skip
# What people call the formats (V4L2 fourccs, Windows names), for --input-format.
ALIASES = {
    "mjpg": MJPEG, "jpeg": MJPEG, "yuyv": "yuyv422", "yuy2": "yuyv422",
    "uyvy": "uyvy422", "yu12": "yuv420p", "i420": "yuv420p", "grey": "gray",
}  # fmt: skip
RATE_TOLERANCE = 0.01  # 29.97 fps counts as 30


class FormatError(ValueError):
    """``--input-format`` names a format the camera does not offer; one line for the user."""


@dataclass(frozen=True)
class CameraMode:
    """One way a camera can deliver frames.

    ``format`` is FFmpeg's name (``yuyv422``, ``mjpeg``, ``h264``; ``raw`` where the
    platform decides the pixel format). ``fps`` is the highest rate, None when the camera
    does not say; with ``min_fps`` any rate between the two can be asked for.
    """

    format: str
    width: int
    height: int
    fps: float | None
    min_fps: float | None = None

    def rate_for(self, fps: float) -> float | None:
        """The rate to ask for when ``fps`` is wanted (None: the camera's own)."""
        if self.fps is None:
            return fps
        if self.min_fps is not None:
            return min(max(fps, self.min_fps), self.fps)
        return self.fps

    def reaches(self, fps: float) -> bool:
        """Whether the mode can deliver ``fps``; a mode without a listed rate is trusted."""
        return self.fps is None or self.fps >= fps * (1 - RATE_TOLERANCE)

    @property
    def size(self) -> str:
        return f"{self.width}x{self.height}"


@dataclass(frozen=True)
class Choice:
    """The mode to capture in, the rate to ask for, whether it is what was asked for, and
    why (for the start-up log and ``--list-sources``)."""

    mode: CameraMode
    fps: float | None
    exact: bool
    why: str

    def describe(self) -> str:
        return describe(self.mode, self.fps)


def describe(mode: CameraMode, fps: float | None) -> str:
    """``mjpeg 1280x720 at 30 fps``: a mode at the rate asked of it."""
    rate = "the camera's rate" if fps is None else f"{fps:g} fps"
    return f"{mode.format} {mode.size} at {rate}"


def is_raw(name: str) -> bool:
    """Whether ``name`` is uncompressed: ``raw`` or any pixel format FFmpeg knows."""
    return name == RAW or name in RAW_FORMATS or _is_pixel_format(name)


def _is_pixel_format(name: str) -> bool:
    try:
        av.VideoFormat(name)
    except ValueError:
        return False
    return True


def usable(name: str) -> bool:
    """Whether FFmpeg can capture in format ``name`` (decoding it when compressed)."""
    return name in COMPRESSED or is_raw(name)


def _tier(name: str) -> int:
    return 0 if is_raw(name) else 1 + COMPRESSED.index(name)


def _raw_rank(name: str) -> int:
    return RAW_FORMATS.index(name) if name in RAW_FORMATS else len(RAW_FORMATS)


def input_format(text: str) -> str | None:
    """``--input-format``'s value (argparse type): None for ``auto``, ``raw``, or FFmpeg's
    name of a format, from its own name or a common alias (``MJPG``, ``YUYV``)."""
    name = ALIASES.get(text.lower(), text.lower())
    if name == AUTO:
        return None
    if usable(name):
        return name
    raise argparse.ArgumentTypeError(
        f"unknown format {text!r}: use auto, raw, mjpeg, h264 or a pixel format "
        "(yuyv422, nv12, yuv420p, ...)"
    )


def _matches(mode: CameraMode, forced: str) -> bool:
    return is_raw(mode.format) if forced == RAW else mode.format == forced


def choose(
    modes: Iterable[CameraMode], width: int, height: int, fps: float, forced: str | None = None
) -> Choice:
    """The mode to capture ``width`` x ``height`` at ``fps`` in (see the module's rule).

    Raises FormatError when ``forced`` is not among the modes, ValueError when no mode is
    usable at all.
    """
    offered = [m for m in modes if usable(m.format)]
    if not offered:
        raise ValueError("the camera lists no format FFmpeg can capture")
    candidates = [m for m in offered if forced is None or _matches(m, forced)]
    if not candidates:
        names = ", ".join(dict.fromkeys(m.format for m in offered))
        raise FormatError(f"the camera does not offer {forced} (it offers {names})")
    exact = [m for m in candidates if (m.width, m.height) == (width, height) and m.reaches(fps)]
    if exact:
        best = min(exact, key=lambda m: (*_preference(m), _rate_excess(m, fps)))
        why = f"--input-format {forced}" if forced else _why_exact(best, offered, fps)
        return Choice(best, best.rate_for(fps), True, why)
    best = min(candidates, key=lambda m: (_distance(m, width, height, fps), *_preference(m)))
    within = f" in {forced}" if forced else ""
    why = f"no mode{within} reaches {width}x{height} at {fps:g} fps"
    return Choice(best, best.rate_for(fps), False, why)


def _preference(mode: CameraMode) -> tuple[int, int, bool]:
    """Raw before MJPEG before H.264; the better raw format; a listed rate before none."""
    return _tier(mode.format), _raw_rank(mode.format), mode.fps is None


def _rate_excess(mode: CameraMode, fps: float) -> float:
    rate = mode.rate_for(fps)
    return 0.0 if rate is None else rate - fps


def _distance(mode: CameraMode, width: int, height: int, fps: float) -> float:
    """How far a mode is from the request, in doublings: a rate short of the request
    weighs twice (a stream at a third of its rate looks broken, a smaller picture does
    not), a smaller size twice a larger one (scaling up loses detail, down does not), and
    another aspect ratio one (the picture is stretched)."""
    rate = mode.rate_for(fps)
    slow = max(0.0, math.log2(fps / rate)) if rate else 0.0
    area = math.log2(mode.width * mode.height / (width * height))
    size = -2 * area if area < 0 else area
    aspect = abs(math.log2((mode.width / mode.height) / (width / height))) > 0.03
    return 2 * slow + size + float(aspect)


def _why_exact(best: CameraMode, offered: Sequence[CameraMode], fps: float) -> str:
    """Why ``best``'s format: raw keeps up, or what the better formats fall short of."""
    size = best.size
    if best.fps is None:
        return f"{best.format} at {size}; the camera lists no rates, so {fps:g} fps is asked for"
    if is_raw(best.format):
        return f"raw reaches {size} at {fps:g} fps"
    reasons = []
    for better in [RAW, *COMPRESSED[: COMPRESSED.index(best.format)]]:
        kind = [m for m in offered if _matches(m, better)]
        here = [m for m in kind if m.size == size]
        if not kind:
            reasons.append(f"no {better} format")
        elif not here:
            reasons.append(f"no {better} at {size}")
        else:
            top = max(here, key=lambda m: m.fps or 0.0)
            reasons.append(f"{top.format} reaches only {top.fps or 0:g} fps at {size}")
    return "; ".join(reasons)
