"""Cameras on macOS (AVFoundation) and Windows (DirectShow), as FFmpeg lists them.

Neither has an API we can reach from Python without more dependencies, so FFmpeg is
asked: PyAV lists the devices (``av.device.enumerate_input_devices``), and a device's
modes come from FFmpeg's log: DirectShow prints them for ``list_options``, AVFoundation
when asked for a size it does not have (1x1). The parsers read that text, with or without
FFmpeg's ``[dshow @ 0x...]`` prefixes; they are tested on kept outputs only (no Mac or
Windows machine here).

AVFoundation converts whatever the camera sends to the pixel format asked for, so its
modes are sizes and rates of format ``raw``; and it takes only a mode's top rate.
"""

from __future__ import annotations

import logging
import re

import av
import av.device
import av.logging

from . import ffmpeg_log
from .formats import RAW, CameraMode

logger = logging.getLogger(__name__)

_PREFIX = re.compile(r"^\[[^\]]* @ [^\]]*\] ?")
_DSHOW = re.compile(
    r"(?:pixel_format|vcodec)=(\S+)\s+min s=(\d+)x(\d+) fps=(\S+) max s=(\d+)x(\d+) fps=(\S+)"
)
_AVFOUNDATION = re.compile(r"(\d+)x(\d+)@\[([\d.]+) ([\d.]+)\]fps")


def _lines(text: str) -> list[str]:
    return [_PREFIX.sub("", line) for line in text.splitlines()]


def parse_dshow_options(text: str) -> list[CameraMode]:
    """The modes in DirectShow's ``list_options`` output: one per line (FFmpeg 5 prints
    many twice, with and without colour details), at any rate between its min and max."""
    modes = []
    for line in _lines(text):
        m = _DSHOW.search(line)
        if not m:
            continue
        name, low, high = m[1], float(m[4]), float(m[7])
        for width, height in dict.fromkeys([(int(m[2]), int(m[3])), (int(m[5]), int(m[6]))]):
            modes.append(CameraMode(name, width, height, high, low if low < high else None))
    return list(dict.fromkeys(modes))


def parse_avfoundation_modes(text: str) -> list[CameraMode]:
    """The modes under AVFoundation's "Supported modes:", each at its top rate (the only
    one FFmpeg can ask for)."""
    modes = []
    for line in _lines(text):
        m = _AVFOUNDATION.search(line)
        if m:
            modes.append(CameraMode(RAW, int(m[1]), int(m[2]), round(float(m[4]), 3)))
    return list(dict.fromkeys(modes))


def cameras(demuxer: str) -> list[str]:
    """The names of the cameras ``demuxer`` (avfoundation, dshow) sees; screens are left out."""
    try:
        devices = av.device.enumerate_input_devices(demuxer)
    except (av.FFmpegError, ValueError, NotImplementedError) as exc:
        logger.debug("%s cannot list its devices: %s", demuxer, exc)
        return []
    return [
        device.description or device.name
        for device in devices
        if "video" in device.media_types and not device.description.startswith("Capture screen")
    ]


def dshow_url(name: str) -> str:
    """What FFmpeg's dshow opens for camera ``name``: ``video=NAME``."""
    return name if name.startswith(("video=", "audio=")) else f"video={name}"


def modes(demuxer: str, name: str) -> list[CameraMode]:
    """The modes of camera ``name``, from what FFmpeg logs when asked for them."""
    if demuxer == "dshow":
        said = _ffmpeg_says(dshow_url(name), demuxer, {"list_options": "true"})
        return parse_dshow_options(said)
    said = _ffmpeg_says(name, demuxer, {"video_size": "1x1"})
    return parse_avfoundation_modes(said)


def _ffmpeg_says(url: str, demuxer: str, options: dict[str, str]) -> str:
    """What FFmpeg logs while opening ``url``; the open itself is expected to fail."""
    with ffmpeg_log.captured(av.logging.INFO) as logs:
        try:
            av.open(url, format=demuxer, options=options, timeout=5).close()
        except (av.FFmpegError, OSError) as exc:
            logger.debug("%s %s: %s", demuxer, url, exc)
    return ffmpeg_log.text(logs)
