"""The cameras this machine has and their modes, on each platform; ``--list-sources``.

V4L2 cameras are read with ioctls (``v4l2``), AVFoundation and DirectShow ones through
FFmpeg (``ffmpeg_devices``). Each becomes a ``CameraInfo``: what ``--source`` takes to
open it, and its modes in FFmpeg's names, which ``formats.choose`` picks from.
"""

from __future__ import annotations

import logging
import platform
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from . import ffmpeg_devices, formats, v4l2
from .formats import CameraMode

logger = logging.getLogger(__name__)

Wanted = Iterable[tuple[int, int]]  # sizes asked about where a camera takes a range of sizes


class CameraListError(OSError):
    """A camera whose modes cannot be read; the message is one line."""


@dataclass(frozen=True)
class CameraInfo:
    """One camera: ``source`` is what ``--source`` takes to open it."""

    source: str
    name: str
    modes: tuple[CameraMode, ...] = ()
    labels: dict[str, str] = field(default_factory=dict)  # format: the camera's own name
    notes: tuple[str, ...] = ()  # what is not in ``modes`` and why
    error: str | None = None  # why it could not be read


def list_cameras(wanted: Wanted = ()) -> list[CameraInfo]:
    """The cameras this platform's capture API sees."""
    system = platform.system()
    if system == "Linux":
        return [_from_v4l2(found) for found in v4l2.list_cameras(wanted)]
    demuxer = {"Darwin": "avfoundation", "Windows": "dshow"}.get(system)
    if demuxer is None:
        return []
    return [
        CameraInfo(f"{demuxer}:{name}", name, tuple(ffmpeg_devices.modes(demuxer, name)))
        for name in ffmpeg_devices.cameras(demuxer)
    ]


def modes_of(demuxer: str | None, url: str, wanted: Wanted = ()) -> list[CameraMode]:
    """The modes of one camera, as ``--source`` named it. Raises CameraListError."""
    if demuxer == "v4l2":
        try:
            return v4l2.read_camera(url, wanted).modes()
        except OSError as exc:
            raise CameraListError(exc.errno, exc.strerror or str(exc)) from None
    if demuxer in ("avfoundation", "dshow"):
        modes = ffmpeg_devices.modes(demuxer, url)
        if not modes:
            raise CameraListError(f"FFmpeg listed no modes for {demuxer} {url}")
        return modes
    raise CameraListError(f"cannot list the modes of {demuxer or 'this'} device")


def _from_v4l2(found: v4l2.Camera | v4l2.Unreadable) -> CameraInfo:
    if isinstance(found, v4l2.Unreadable):
        return CameraInfo(found.path, "", error=found.reason)
    labels: dict[str, str] = {}
    unusable = []
    for fmt in found.formats:
        label = f"'{fmt.fourcc}' {fmt.description}".rstrip()
        if fmt.ffmpeg_name is None:
            unusable.append(label)
            continue
        if fmt.size_range is not None:
            r = fmt.size_range
            label += (
                f"; any size from {r.min_width}x{r.min_height} to {r.max_width}x{r.max_height}"
                f" in steps of {r.step_width}x{r.step_height}, the common ones shown"
            )
        labels.setdefault(fmt.ffmpeg_name, label)
    notes = (f"FFmpeg cannot capture {', '.join(unusable)}",) if unusable else ()
    detail = ", ".join(part for part in (found.driver, found.bus) if part)
    name = f"{found.card} ({detail})" if detail else found.card
    return CameraInfo(found.path, name, tuple(found.modes()), labels, notes)


def report(
    cameras: Sequence[CameraInfo], width: int, height: int, fps: float, forced: str | None
) -> str:
    """``--list-sources``: each camera's formats, sizes and rates, and what it would be
    opened in for ``--size``/``--fps`` (and ``--input-format`` when given)."""
    if not cameras:
        return "no cameras found (the fake cameras: --source testsrc, --source scene)\n"
    lines: list[str] = []
    for camera in cameras:
        lines.append(f"{camera.source}: {camera.name}".rstrip(": "))
        if camera.error:
            lines.append(f"  cannot be read: {camera.error}")
            continue
        lines.extend(_mode_lines(camera))
        lines.extend(f"  ({note})" for note in camera.notes)
        request = f"--size {width}x{height} --fps {fps:g}"
        lines.append(f"  auto picks for {request}: {_pick(camera, width, height, fps, None)}")
        if forced:
            picked = _pick(camera, width, height, fps, forced)
            lines.append(f"  --input-format {forced} picks for {request}: {picked}")
    return "\n".join(lines) + "\n"


def _mode_lines(camera: CameraInfo) -> list[str]:
    """Per format, its sizes grouped by the rates they share, smallest size first."""
    lines = []
    for name in dict.fromkeys(m.format for m in camera.modes):
        label = camera.labels.get(name)
        lines.append(f"  {name}" + (f" ({label})" if label else ""))
        rates: dict[tuple[int, int], list[CameraMode]] = {}
        for mode in camera.modes:
            if mode.format == name:
                rates.setdefault((mode.width, mode.height), []).append(mode)
        groups: dict[str, list[str]] = {}
        for (w, h), modes in sorted(rates.items(), key=lambda item: item[0][0] * item[0][1]):
            groups.setdefault(_rates_text(modes), []).append(f"{w}x{h}")
        lines.extend(f"    {' '.join(sizes)}: {text}" for text, sizes in groups.items())
    return lines


def _rates_text(modes: Sequence[CameraMode]) -> str:
    """``30, 15, 5 fps``, ``1-90 fps``, or that the camera does not say."""
    texts = []
    for mode in modes:
        if mode.fps is None:
            texts.append("rate not listed")
        elif mode.min_fps is not None:
            texts.append(f"{mode.min_fps:g}-{mode.fps:g} fps")
        else:
            texts.append(f"{mode.fps:g}")
    listed = [t for t in texts if not t.endswith(("fps", "listed"))]
    others = [t for t in texts if t.endswith(("fps", "listed"))]
    return ", ".join([*([", ".join(listed) + " fps"] if listed else []), *others])


def _pick(camera: CameraInfo, width: int, height: int, fps: float, forced: str | None) -> str:
    try:
        choice = formats.choose(camera.modes, width, height, fps, forced)
    except formats.FormatError as exc:
        return str(exc)
    except ValueError:
        return "nothing FFmpeg can capture"
    if choice.exact:
        return f"{choice.describe()} ({choice.why})"
    return f"{choice.describe()}, the closest ({choice.why}; scaled to {width}x{height})"
