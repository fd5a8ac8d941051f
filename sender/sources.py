"""Video sources: the fake camera, capture devices, looped video files and live network
cameras (``sender.live``).

Every source hands out ``yuv420p`` frames at the configured size, converted once
here: several viewers' encoders share each frame, and concurrent ``reformat()`` calls
on one frame crash libswscale (seen with aiortc 1.16 / PyAV 18).
"""

from __future__ import annotations

import asyncio
import dataclasses
import fractions
import logging
import os
import platform
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import av
import numpy as np

from common import stamp
from common.backoff import Backoff

from . import cameras, ffmpeg_devices, formats, live, scene
from .h264_stream import PacketSink, StreamInfo

logger = logging.getLogger(__name__)

PIXEL_FORMAT = "yuv420p"
REOPEN_FIRST = 0.5  # seconds before a lost device is first reopened, doubling...
REOPEN_CAP = 5.0  # ...up to this
DEVICE_PREFIXES = ("avfoundation", "dshow", "v4l2", "lavfi")  # FFmpeg's input devices
VIDEO_CLOCK_RATE = 90000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK_RATE)
# Every frame's presentation time counts from this one monotonic instant, whichever source
# and however often it was opened, so the capture time can be read back from a frame, or
# from a packet encoded from it (``capture_time``), to time the stages after capture.
CLOCK_ORIGIN = time.monotonic()


class SourceError(Exception):
    """A source that cannot be opened or read; the message is one line for the user."""


@dataclass(frozen=True)
class SourceSpec:
    """What ``--source`` names, resolved: how to open it, not yet opened."""

    # "testsrc", "scene", "device", "file" or "network" (a camera on the network: live.py)
    kind: str
    url: str = field(default="", repr=False)  # may hold a password: describe() masks it
    format: str | None = None
    # A camera's format, size and rate, chosen once at start (``settle``); None: FFmpeg is
    # asked for the configured size and rate only.
    choice: formats.Choice | None = None
    rtsp_transport: str = live.DEFAULT_TRANSPORT  # an RTSP camera's: "tcp" or "udp"

    def describe(self) -> str:
        """For logs, messages and /healthz: never a password."""
        if self.kind in SYNTHETIC:
            return f"fake camera ({self.kind})"
        if self.kind == NETWORK:
            return f"network camera {live.redact(self.url)}"
        return f"{self.kind} {live.redact(self.url)}"


class Source(ABC):
    """One opened capture. ``read()`` paces itself to the source's frame rate (a network
    camera's, to its stream)."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        self.width = width
        self.height = height
        self.fps = fps
        self._started = time.monotonic()
        self._last_pts = -1  # the last frame's (``_stamp_time``)

    async def open(self) -> None:
        """Acquire the device or file; the fake camera has nothing to acquire."""

    @abstractmethod
    async def read(self) -> av.VideoFrame: ...

    async def close(self) -> None:
        """Release the device or file."""

    @property
    def state(self) -> str:
        """``live`` while frames come; a network camera may be connecting or reconnecting."""
        return live.LIVE

    @property
    def reconnects(self) -> int:
        """Times the source came back after a drop (network cameras only)."""
        return 0

    @property
    def error(self) -> str | None:
        """Why the source is not live, when it is not (network cameras only)."""
        return None

    @property
    def stream_info(self) -> StreamInfo | None:
        """What its reader receives (H.264 profile, size), once known; None for sources
        that only make frames (the fake cameras, files and devices decoded by PyAV)."""
        return None

    def feed(self, sink: PacketSink | None) -> None:
        """Hand an H.264 stream's packets to ``sink`` as they come (H.264 passthrough);
        sources without packets never call it."""

    def set_decoding(self, wanted: bool) -> None:
        """Whether anyone wants frames: a source with packets decodes only then."""

    def hear(self, sink: live.AudioSink | None) -> None:
        """Hand the audio of the video's own connection to ``sink`` (None: not wanted):
        a network camera's (``--audio camera``); other sources never call it."""

    async def __aenter__(self) -> Source:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _stamp_time(self, frame: av.VideoFrame, captured: float | None = None) -> av.VideoFrame:
        """Give ``frame`` a 90 kHz presentation time on the capture clock: ``captured``
        (``time.monotonic()``) when the source knows it, else now; never back."""
        at = time.monotonic() if captured is None else captured
        pts = max(int((at - CLOCK_ORIGIN) * VIDEO_CLOCK_RATE), self._last_pts + 1)
        self._last_pts = frame.pts = pts
        frame.time_base = TIME_BASE
        return frame


def capture_time(item: av.VideoFrame | av.Packet[Any]) -> float | None:
    """When a captured frame (or a packet encoded from it, which keeps its presentation
    time) was captured, on ``time.monotonic()``'s clock; None without a time."""
    if item.pts is None or item.time_base is None:
        return None
    return CLOCK_ORIGIN + float(item.pts * item.time_base)


class Synthetic(Source):
    """A fake camera: frame n is drawn from n alone (``render``), paced to the frame
    rate, and carries the frame stamp."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        stamp.cell_size(width)  # fails early on widths the stamp cannot carry
        self._sequence = 0

    @abstractmethod
    def render_into(self, sequence: int, luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        """Write frame ``sequence``, without the stamp, into its planes (views whose rows
        may be padded)."""

    def render(self, sequence: int) -> np.ndarray:
        """Frame ``sequence`` as one flat yuv420p buffer, without the stamp."""
        image = np.empty(self.width * self.height * 3 // 2, np.uint8)
        self.render_into(sequence, *scene.planes(image, self.width, self.height))
        return image

    def picture(self, sequence: int) -> np.ndarray:
        """Frame ``sequence`` as one flat yuv420p buffer, stamped now: what the test RTSP
        camera (``bench.rtsp_camera``) encodes, so the same stamp survives one more hop."""
        image = self.render(sequence)
        self._stamp_into(sequence, time.monotonic(), *scene.planes(image, self.width, self.height))
        return image

    async def read(self) -> av.VideoFrame:
        due = self._started + self._sequence / self.fps
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:  # fell far behind (suspended, overloaded): do not burst
            self._started = time.monotonic() - self._sequence / self.fps
        frame = self._draw(self._sequence)
        self._sequence += 1
        return frame

    def _draw(self, sequence: int) -> av.VideoFrame:
        """Frame ``sequence``, drawn straight into a video frame's buffers, stamped."""
        frame = av.VideoFrame(self.width, self.height, PIXEL_FORMAT)
        luma, u, v = (
            np.frombuffer(memoryview(p), np.uint8).reshape(-1, p.line_size)[: p.height, : p.width]
            for p in frame.planes
        )
        self.render_into(sequence, luma, u, v)
        self._stamp_sequence(sequence, luma, u, v)
        # Captured once all but the time is drawn: one reading for the stamp and the pts.
        captured = time.monotonic()
        self._stamp_capture(captured, luma)
        return self._stamp_time(frame, captured)

    def _stamp_into(
        self, sequence: int, captured: float, luma: np.ndarray, u: np.ndarray, v: np.ndarray
    ) -> None:
        """Draw the stamp (captured at the monotonic instant ``captured``) over a rendered
        frame's planes."""
        self._stamp_sequence(sequence, luma, u, v)
        self._stamp_capture(captured, luma)

    @staticmethod
    def _stamp_capture(captured: float, luma: np.ndarray) -> None:
        """The stamp's time row: the monotonic instant ``captured`` on the stamp's clock."""
        stamp.draw_row(luma, stamp.CAPTURE_ROW, stamp.wall_us(captured))

    def _stamp_sequence(
        self, sequence: int, luma: np.ndarray, u: np.ndarray, v: np.ndarray
    ) -> None:
        """The stamp's sequence row, on neutral chroma under the whole stamp (so that its
        cells are true white and black)."""
        s = stamp.cell_size(self.width)
        u[:s] = v[:s] = 128
        stamp.draw_row(luma, stamp.SEQUENCE_ROW, sequence)


class TestPattern(Synthetic):
    """The flat fake camera: scrolling bands and a moving box (so encoders do real work)."""

    __test__ = False  # not a pytest class

    def __init__(self, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        x = np.arange(width * 2, dtype=np.uint32)
        y = np.arange(height, dtype=np.uint32)
        # Diagonal bands in luma, scrolled each frame; slow colour gradients in chroma.
        self._luma = ((x[None, :] + y[:, None]) * 2 % 256).astype(np.uint8)
        cw, ch = width // 2, height // 2
        self._chroma = np.concatenate(
            [
                np.tile(64 + np.arange(cw * 2, dtype=np.uint32) * 128 // (cw * 2), (ch, 1)),
                np.tile(64 + np.arange(ch, dtype=np.uint32)[:, None] * 128 // ch, (1, cw * 2)),
            ]
        ).astype(np.uint8)

    def render_into(self, sequence: int, luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        w, h = self.width, self.height
        cw, ch = w // 2, h // 2
        shift = (sequence * 4) % w
        luma[:] = self._luma[:, shift : shift + w]
        box = h // 4
        left = (sequence * 6) % max(1, w - box)
        luma[h // 2 : h // 2 + box, left : left + box] = 235
        offset = sequence % cw
        u[:] = self._chroma[:ch, offset : offset + cw]
        v[:] = self._chroma[ch:, offset : offset + cw]


class SceneCamera(Synthetic):
    """The camera-like fake camera: a landscape panned across, a car, sensor noise
    (``sender.scene``)."""

    def __init__(self, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        self._scene: scene.Scene | None = None

    async def open(self) -> None:
        # Made once per process and size (a second or two at 1080p): not on the loop.
        self._scene = await asyncio.to_thread(scene.shared, self.width, self.height)

    def render_into(self, sequence: int, luma: np.ndarray, u: np.ndarray, v: np.ndarray) -> None:
        if self._scene is None:  # not opened: made here (at once when choose() made it)
            self._scene = scene.shared(self.width, self.height)
        self._scene.render_into(sequence, luma, u, v)


# The fake cameras, by their ``--source`` names.
SYNTHETIC: dict[str, type[Synthetic]] = dict(testsrc=TestPattern, scene=SceneCamera)
NETWORK = "network"  # the kind of a network camera's spec


class AvSource(Source):
    """A capture device or a video file opened with PyAV; files loop at their own pace.

    A device that fails or ends after it gave frames (a USB camera unplugged, a driver
    reset) is reopened with backoff (``REOPEN_FIRST`` doubling to ``REOPEN_CAP`` seconds),
    for as long as it takes: ``read()`` just takes longer, so viewers stay connected, see
    a pause and get the picture back when the camera returns. One that fails before its
    first frame is an error (the start-up check must not wait forever)."""

    def __init__(self, spec: SourceSpec, width: int, height: int, fps: float) -> None:
        super().__init__(width, height, fps)
        self._spec = spec
        self._loop = spec.kind == "file"
        self._container: av.container.InputContainer | None = None
        self._frames: Iterator[av.VideoFrame] = iter(())
        self._file_clock: tuple[float, float] | None = None  # (wall start, first pts seconds)
        self._delivered = False  # a frame came: from now on a failing device is reopened
        self._state = live.LIVE
        self._reconnects = 0
        self._error: str | None = None

    @property
    def state(self) -> str:
        return self._state

    @property
    def reconnects(self) -> int:
        return self._reconnects

    @property
    def error(self) -> str | None:
        return self._error

    def _options(self) -> dict[str, str]:
        if self._spec.kind != "device":
            return {}
        if self._spec.choice is None:
            return {"video_size": f"{self.width}x{self.height}", "framerate": f"{self.fps:g}"}
        return device_options(self._spec.format, self._spec.choice)

    def _open(self) -> None:
        try:
            self._container = av.open(
                self._spec.url, format=self._spec.format, options=self._options(), timeout=5
            )
        except (av.FFmpegError, OSError) as exc:
            raise SourceError(f"cannot open {self._spec.describe()}: {_reason(exc)}") from None
        if not self._container.streams.video:
            self._container.close()
            raise SourceError(f"{self._spec.describe()} has no video stream")
        stream = self._container.streams.video[0]
        stream.thread_type = "AUTO"
        self._frames = self._container.decode(stream)

    async def open(self) -> None:
        await asyncio.to_thread(self._open)

    def _next(self) -> av.VideoFrame:
        assert self._container is not None
        while True:
            try:
                frame = next(self._frames)
            except StopIteration:
                if not self._loop:
                    raise SourceError(f"{self._spec.describe()} ended") from None
                self._container.seek(0)
                self._frames = self._container.decode(self._container.streams.video[0])
                self._file_clock = None
                continue
            except av.FFmpegError as exc:
                raise SourceError(
                    f"reading {self._spec.describe()} failed: {_reason(exc)}"
                ) from None
            return frame

    async def read(self) -> av.VideoFrame:
        while True:
            try:
                frame = await asyncio.to_thread(self._next)
                break
            except SourceError as exc:
                if self._spec.kind != "device" or not self._delivered:
                    raise
                await self._reopen(str(exc))
        self._delivered = True
        if self._loop and frame.pts is not None and frame.time_base is not None:
            await self._pace(float(frame.pts * frame.time_base))
        converted = frame.reformat(width=self.width, height=self.height, format=PIXEL_FORMAT)
        return self._stamp_time(converted)

    async def _reopen(self, reason: str) -> None:
        """The device failed mid-stream: reopen it until it comes back."""
        lost = time.monotonic()
        self._state, self._error = live.RECONNECTING, reason
        logger.warning("%s; reopening it (viewers stay connected)", reason)
        await self.close()
        backoff = Backoff(REOPEN_FIRST, REOPEN_CAP)
        while True:
            await asyncio.sleep(backoff.failure())
            try:
                await asyncio.to_thread(self._open)
            except SourceError as exc:
                self._error = str(exc)
                logger.debug("%s", exc)
                continue
            self._state, self._error = live.LIVE, None
            self._reconnects += 1
            logger.info("%s is back after %.1f s", self._spec.describe(), time.monotonic() - lost)
            return

    async def _pace(self, media_seconds: float) -> None:
        """Files decode faster than real time: hold each frame until its presentation time."""
        if self._file_clock is None:
            self._file_clock = (time.monotonic(), media_seconds)
        wall_start, media_start = self._file_clock
        delay = wall_start + (media_seconds - media_start) - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)

    async def close(self) -> None:
        if self._container is not None:
            container, self._container = self._container, None
            await asyncio.to_thread(container.close)


class LiveSource(Source):
    """A network camera (``sender.live``): frames as they come, scaled to the configured
    size, across reconnections. ``patience``: see ``live.LiveReader``. An H.264 file is
    read the same way (``paced``, looped), for its packets (``feed``)."""

    def __init__(
        self,
        spec: SourceSpec,
        width: int,
        height: int,
        fps: float,
        patience: float | None = None,
    ) -> None:
        super().__init__(width, height, fps)
        paced = spec.kind == "file"
        opts = {} if paced else live.options(spec.url, spec.rtsp_transport)
        self._reader = live.LiveReader(
            spec.url, opts, self._convert, patience=patience, paced=paced, origin=CLOCK_ORIGIN
        )

    def _convert(self, frame: av.VideoFrame, captured: float | None) -> av.VideoFrame:
        """In the reader's thread: the frame at our size and format, timed when it was
        captured if the stream says (``live.LiveReader``), else as it arrives."""
        converted = frame.reformat(width=self.width, height=self.height, format=PIXEL_FORMAT)
        return self._stamp_time(converted, captured)

    async def open(self) -> None:
        self._reader.start()

    async def read(self) -> av.VideoFrame:
        try:
            return await self._reader.next_frame()
        except live.LiveError as exc:
            raise SourceError(str(exc)) from None

    async def close(self) -> None:
        await self._reader.close()

    @property
    def state(self) -> str:
        return self._reader.state

    @property
    def reconnects(self) -> int:
        return self._reader.reconnects

    @property
    def error(self) -> str | None:
        return self._reader.error

    @property
    def stream_info(self) -> StreamInfo | None:
        return self._reader.stream_info

    def feed(self, sink: PacketSink | None) -> None:
        self._reader.sink = sink

    def set_decoding(self, wanted: bool) -> None:
        self._reader.decode = wanted

    def hear(self, sink: live.AudioSink | None) -> None:
        self._reader.audio = sink


def is_h264_file(path: str) -> bool:
    """Whether a local file's first video stream is H.264 (read by ``LiveSource`` for
    its packets); False for anything that does not open."""
    if not os.path.isfile(path):
        return False
    try:
        with av.open(path) as container:
            streams = container.streams.video
            return bool(streams) and streams[0].codec_context.name == "h264"
    except (av.FFmpegError, OSError):
        return False


def has_packets(spec: SourceSpec) -> bool:
    """Whether the source may deliver H.264 packets (H.264 passthrough): a network
    camera (which it is, is known once connected) or a local H.264 file."""
    return spec.kind == NETWORK or (spec.kind == "file" and is_h264_file(spec.url))


def device_options(demuxer: str | None, choice: formats.Choice) -> dict[str, str]:
    """FFmpeg's options for opening a camera in ``choice``: its size and rate, and its
    format in the option each demuxer takes it in (a codec for DirectShow's compressed
    formats, a pixel format for its raw ones; AVFoundation has only pixel formats)."""
    mode = choice.mode
    options = {"video_size": mode.size}
    if choice.fps is not None:
        options["framerate"] = f"{choice.fps:g}"
    if mode.format == formats.RAW:  # the platform picks the pixel format
        return options
    if demuxer == "v4l2":
        options["input_format"] = mode.format
    elif demuxer == "dshow" and not formats.is_raw(mode.format):
        options["vcodec"] = mode.format
    elif demuxer in ("dshow", "avfoundation"):
        options["pixel_format"] = mode.format
    return options


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or str(exc)
    return " ".join(str(text).split())


def default_camera() -> SourceSpec | None:
    """The platform's default camera, if the platform has an obvious one."""
    system = platform.system()
    if system == "Linux":
        return (
            SourceSpec("device", "/dev/video0", "v4l2") if os.path.exists("/dev/video0") else None
        )
    if system == "Darwin":
        return SourceSpec("device", "default:none", "avfoundation")
    if system == "Windows":
        return SourceSpec("device", "video=Integrated Camera", "dshow")
    return None


def resolve(source: str, rtsp_transport: str = live.DEFAULT_TRANSPORT) -> SourceSpec:
    """Turn ``--source`` into a spec, without opening anything.

    ``testsrc`` or ``scene`` (the fake cameras); ``/dev/videoN`` (V4L2); ``avfoundation:NAME``,
    ``dshow:NAME``, ``v4l2:PATH`` or ``lavfi:GRAPH`` (FFmpeg's virtual device: a filter
    graph, e.g. ``testsrc2=size=1280x720:rate=30,realtime``); ``rtsp://``, ``rtsps://`` or ``http(s)://`` (a network camera, see
    ``live.is_live``; ``rtsp_transport`` for RTSP); otherwise a video file path (or a URL
    PyAV can open). ``auto`` is not resolved here: ``choose()`` tries the default camera
    and falls back to ``testsrc``.
    """
    if source in SYNTHETIC:
        return SourceSpec(source)
    if live.is_live(source):
        return SourceSpec(NETWORK, source, rtsp_transport=rtsp_transport)
    if source == "auto":
        raise ValueError("resolve 'auto' with choose() instead")
    prefix, sep, rest = source.partition(":")
    if sep and prefix in DEVICE_PREFIXES and rest:
        if prefix == "dshow":  # FFmpeg opens "video=NAME"
            rest = ffmpeg_devices.dshow_url(rest)
        return SourceSpec("device", rest, prefix)
    if source.startswith("/dev/video"):
        if not os.path.exists(source):
            raise SourceError(f"no such camera: {source}")
        return SourceSpec("device", source, "v4l2")
    if "://" not in source and not os.path.isfile(source):
        raise SourceError(f"no such camera or video file: {source}")
    return SourceSpec("file", source)


def create(
    spec: SourceSpec, width: int, height: int, fps: float, patience: float | None = None
) -> Source:
    """The source ``spec`` names, not opened; ``patience`` is for network cameras
    (``live.LiveReader``)."""
    if spec.kind in SYNTHETIC:
        return SYNTHETIC[spec.kind](width, height, fps)
    if spec.kind == NETWORK or (spec.kind == "file" and is_h264_file(spec.url)):
        return LiveSource(spec, width, height, fps, patience)
    return AvSource(spec, width, height, fps)


async def open_source(
    spec: SourceSpec, width: int, height: int, fps: float, patience: float | None = None
) -> Source:
    source = create(spec, width, height, fps, patience)
    await source.open()
    if spec.kind == NETWORK:  # connecting in the background: it says when frames come
        logger.info("camera opened: %s, connecting", spec.describe())
    else:
        logger.info("camera opened: %s", _opened(spec, width, height, fps))
    return source


def _opened(spec: SourceSpec, width: int, height: int, fps: float) -> str:
    """What was opened: a camera's chosen format, size and rate, and the size sent on."""
    if spec.choice is None:
        return f"{spec.describe()} {width}x{height}@{fps:g}"
    mode = spec.choice.mode
    scaled = "" if (mode.width, mode.height) == (width, height) else f", scaled to {width}x{height}"
    return f"{spec.describe()}: {spec.choice.describe()}{scaled} ({spec.choice.why})"


async def probe(spec: SourceSpec, width: int, height: int, fps: float) -> None:
    """Open and close a source once at start-up, so a missing or busy device fails early
    (a network camera: one that gives no frame within ``live.START_SECONDS``, or refuses)."""
    source = await open_source(spec, width, height, fps, patience=live.START_SECONDS)
    try:
        await source.read()
    finally:
        await source.close()
        logger.info("camera closed: %s (start-up check)", spec.describe())


async def settle(
    spec: SourceSpec, width: int, height: int, fps: float, forced: str | None = None
) -> SourceSpec:
    """``spec`` with the camera's format, size and rate chosen for the request (once, at
    start: every later open uses it). A camera whose modes cannot be read is opened as
    before, with the size and rate asked for (and a forced format, unchecked).

    Raises FormatError when ``forced`` is a format the camera does not offer, SourceError
    when it offers nothing FFmpeg can capture.
    """
    if spec.kind != "device" or spec.format == "lavfi":  # a filter graph has no modes
        return spec
    try:
        modes = await asyncio.to_thread(cameras.modes_of, spec.format, spec.url, [(width, height)])
    except cameras.CameraListError as exc:
        logger.info("%s: its formats cannot be listed (%s)", spec.describe(), exc.strerror or exc)
        if forced is None or forced == formats.RAW:
            return spec
        unchecked = formats.CameraMode(forced, width, height, fps)
        return dataclasses.replace(
            spec, choice=formats.Choice(unchecked, fps, True, f"--input-format {forced}, unchecked")
        )
    try:
        choice = formats.choose(modes, width, height, fps, forced)
    except formats.FormatError as exc:
        raise formats.FormatError(f"{spec.describe()}: {exc}; see --list-sources") from None
    except ValueError as exc:
        raise SourceError(f"{spec.describe()}: {exc}") from None
    if not choice.exact:
        logger.warning(
            "%s: %s; capturing %s instead, scaled to %dx%d",
            spec.describe(), choice.why, choice.describe(), width, height,
        )  # fmt: skip
    return dataclasses.replace(spec, choice=choice)


async def choose(
    name: str,
    width: int,
    height: int,
    fps: float,
    input_format: str | None = None,
    rtsp_transport: str | None = None,
) -> SourceSpec:
    """Resolve ``--source``, choose a camera's format (``settle``) and check that it opens;
    ``auto`` falls back to the fake camera, though not from a format it was told to use.
    ``rtsp_transport``: an RTSP camera's (None: ``live.DEFAULT_TRANSPORT``)."""
    if name == "auto":
        camera = default_camera()
        if camera is not None:
            try:
                camera = await settle(camera, width, height, fps, input_format)
                await probe(camera, width, height, fps)
                return camera
            except SourceError as exc:
                logger.warning("%s; using the fake camera (testsrc)", exc)
        else:
            logger.warning("no camera found; using the fake camera (testsrc)")
        spec = SourceSpec("testsrc")
    else:
        transport = rtsp_transport or live.DEFAULT_TRANSPORT
        spec = await settle(resolve(name, transport), width, height, fps, input_format)
    if input_format is not None and spec.kind != "device":
        logger.warning("--input-format is for cameras: ignored for %s", spec.describe())
    if rtsp_transport is not None and not live.is_rtsp(spec.url):
        logger.warning("--rtsp-transport is for RTSP cameras: ignored for %s", spec.describe())
    if spec.kind in SYNTHETIC:
        stamp.cell_size(width)  # the fake camera's stamp needs the width: refuse it now
        if spec.kind == "scene":  # made now, so that the first viewer does not wait for it
            await asyncio.to_thread(scene.shared, width, height)
        return spec
    await probe(spec, width, height, fps)
    return spec
