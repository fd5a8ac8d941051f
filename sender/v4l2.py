"""What a V4L2 camera offers: its formats, their frame sizes and the rates at each size.

Asked of the kernel with the enumeration ioctls (VIDIOC_QUERYCAP, VIDIOC_ENUM_FMT,
VIDIOC_ENUM_FRAMESIZES, VIDIOC_ENUM_FRAMEINTERVALS): FFmpeg's ``list_formats`` gives
sizes per format but no rates, and the rate decides between raw and MJPEG. The structs
hold only 32-bit fields, so their layout (and the ioctl numbers) are the same on 32- and
64-bit x86 and ARM; the numbers use the generic ``_IOC`` encoding, not the one of
PowerPC, MIPS or SPARC.

``parse_list_formats_ext`` reads the same facts from ``v4l2-ctl --list-formats-ext``
output, what users paste into bug reports: the tests keep such outputs of real cameras.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import logging
import os
import re
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from .formats import CameraMode

logger = logging.getLogger(__name__)

# struct v4l2_capability, v4l2_fmtdesc, v4l2_frmsizeenum, v4l2_frmivalenum (videodev2.h).
CAPABILITY = struct.Struct("=16s32s32sIII3I")  # driver card bus_info version caps device_caps
FMTDESC = struct.Struct("=III32sII3I")  # index type flags description pixelformat mbus_code
FRMSIZE = struct.Struct("=III6I2I")  # index pixel_format type {discrete | stepwise}
FRMIVAL = struct.Struct("=IIIII6I2I")  # index pixel_format width height type {fract | 3 fract}


def _ioc(direction: int, number: int, size: int) -> int:
    return direction << 30 | size << 16 | ord("V") << 8 | number


_READ, _READ_WRITE = 2, 3
VIDIOC_QUERYCAP = _ioc(_READ, 0, CAPABILITY.size)
VIDIOC_ENUM_FMT = _ioc(_READ_WRITE, 2, FMTDESC.size)
VIDIOC_ENUM_FRAMESIZES = _ioc(_READ_WRITE, 74, FRMSIZE.size)
VIDIOC_ENUM_FRAMEINTERVALS = _ioc(_READ_WRITE, 75, FRMIVAL.size)

BUF_TYPE_VIDEO_CAPTURE = 1
CAP_VIDEO_CAPTURE = 0x00000001
CAP_VIDEO_CAPTURE_MPLANE = 0x00001000
CAP_DEVICE_CAPS = 0x80000000
FMT_FLAG_COMPRESSED = 0x0001
FRMSIZE_DISCRETE, FRMSIZE_CONTINUOUS, FRMSIZE_STEPWISE = 1, 2, 3
FRMIVAL_DISCRETE, FRMIVAL_CONTINUOUS, FRMIVAL_STEPWISE = 1, 2, 3

# FFmpeg's v4l2 demuxer's formats (libavdevice/v4l2-common.c), by fourcc: only those its
# ``input_format`` option asks for by that name (YVU420 also reads as yuv420p, but
# ``input_format=yuv420p`` asks for YUV420; JPEG is reached by ``mjpeg`` when a camera has
# no MJPG).
FFMPEG_NAMES = {
    "YU12": "yuv420p", "422P": "yuv422p", "YUYV": "yuyv422", "UYVY": "uyvy422",
    "411P": "yuv411p", "YUV9": "yuv410p", "RGBO": "rgb555le", "RGBQ": "rgb555be",
    "RGBP": "rgb565le", "RGBR": "rgb565be", "BGR3": "bgr24", "RGB3": "rgb24",
    "BGR4": "bgr0", "RGB4": "0rgb", "GREY": "gray", "Y16 ": "gray16le", "NV12": "nv12",
    "MJPG": "mjpeg", "JPEG": "mjpeg", "H264": "h264", "BA81": "bayer_bggr8",
    "GBRG": "bayer_gbrg8", "GRBG": "bayer_grbg8", "RGGB": "bayer_rggb8",
}  # fmt: skip
# Sizes tried within a stepwise or continuous range (besides the size asked for and the
# largest): the common ones, as such cameras (the Raspberry Pi's) take any size.
COMMON_SIZES = (
    (160, 120), (320, 240), (640, 360), (640, 480), (800, 600), (1024, 768), (1280, 720),
    (1280, 960), (1600, 1200), (1920, 1080), (2560, 1440), (3840, 2160),
)  # fmt: skip


@dataclass(frozen=True)
class RateRange:
    """Any rate from ``low`` to ``high`` fps (a stepwise or continuous frame interval)."""

    low: float
    high: float


Rates = tuple[float, ...] | RateRange  # listed rates, a range, or () when not listed


@dataclass(frozen=True)
class FrameSize:
    width: int
    height: int
    rates: Rates = ()


@dataclass(frozen=True)
class SizeRange:
    """A stepwise (or, with steps of 1, continuous) range of frame sizes."""

    min_width: int
    min_height: int
    max_width: int
    max_height: int
    step_width: int = 1
    step_height: int = 1

    def holds(self, width: int, height: int) -> bool:
        return (
            self.min_width <= width <= self.max_width
            and self.min_height <= height <= self.max_height
            and (width - self.min_width) % max(1, self.step_width) == 0
            and (height - self.min_height) % max(1, self.step_height) == 0
        )

    def sizes(self, wanted: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
        """The sizes worth asking about: ``wanted``, the common ones, and the largest."""
        picked = [*wanted, *COMMON_SIZES, (self.max_width, self.max_height)]
        return sorted({s for s in picked if self.holds(*s)}, key=lambda s: (s[0] * s[1], s))


@dataclass(frozen=True)
class Format:
    """One of a camera's formats: its fourcc (``YUYV``), its driver's name for it, and the
    sizes it comes in (a stepwise range stands for the sizes worth asking about)."""

    fourcc: str
    description: str
    compressed: bool
    sizes: tuple[FrameSize, ...]
    size_range: SizeRange | None = None

    @property
    def ffmpeg_name(self) -> str | None:
        """FFmpeg's name of the format, None when FFmpeg cannot capture it."""
        return FFMPEG_NAMES.get(self.fourcc)


@dataclass(frozen=True)
class Camera:
    path: str
    card: str = ""
    driver: str = ""
    bus: str = ""
    formats: tuple[Format, ...] = ()

    def modes(self) -> list[CameraMode]:
        """Every format, size and rate FFmpeg can capture, in the camera's order."""
        modes = []
        for fmt in self.formats:
            name = fmt.ffmpeg_name
            if name is None:
                continue
            for size in fmt.sizes:
                rates = size.rates
                if isinstance(rates, RateRange):
                    modes.append(CameraMode(name, size.width, size.height, rates.high, rates.low))
                elif not rates:
                    modes.append(CameraMode(name, size.width, size.height, None))
                else:
                    modes.extend(CameraMode(name, size.width, size.height, r) for r in rates)
        return list(dict.fromkeys(modes))  # JPEG and MJPG both read as mjpeg


class NotACamera(OSError):
    """A V4L2 node that captures no video (a UVC metadata node, an encoder)."""


# An ioctl on one open device: fills in ``buffer`` (the request struct) or raises OSError.
Ioctl = Callable[[int, bytearray], None]


class Devices:
    """The kernel's V4L2 nodes: which there are, and ioctls on one. The one seam the
    tests stand a fake kernel in (``DEVICES``), as this machine has no camera."""

    def paths(self) -> list[str]:
        return sorted(glob.glob("/dev/video*"), key=node_order)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[Ioctl]:
        import fcntl  # here: Windows has none, and imports this module too

        try:
            fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        except OSError as exc:
            raise OSError(exc.errno, f"cannot open {path}: {exc.strerror}") from None

        def ioctl(request: int, buffer: bytearray) -> None:
            fcntl.ioctl(fd, request, buffer, True)

        try:
            yield ioctl
        finally:
            os.close(fd)


DEVICES = Devices()


@dataclass(frozen=True)
class Unreadable:
    """A ``/dev/video*`` node that could not be asked (no permission, gone)."""

    path: str
    reason: str


def list_cameras(wanted: Iterable[tuple[int, int]] = ()) -> list[Camera | Unreadable]:
    """Every ``/dev/video*`` capture device; nodes that capture no video are left out."""
    wanted = tuple(wanted)
    found: list[Camera | Unreadable] = []
    for path in DEVICES.paths():
        try:
            found.append(read_camera(path, wanted))
        except NotACamera:
            logger.debug("%s captures no video: not listed", path)
        except OSError as exc:
            found.append(Unreadable(path, exc.strerror or str(exc)))
    return found


def node_order(path: str) -> tuple[int, str]:
    """/dev/video2 before /dev/video10."""
    digits = re.sub(r"\D", "", path)
    return (int(digits) if digits else -1, path)


def read_camera(path: str, wanted: Iterable[tuple[int, int]] = ()) -> Camera:
    """What the device at ``path`` offers, with the sizes in ``wanted`` among those asked
    about where it takes a range. Raises NotACamera for nodes that capture no video,
    OSError when it cannot be read."""
    with DEVICES.open(path) as ioctl:
        return _read(path, ioctl, tuple(wanted))


def _read(path: str, ioctl: Ioctl, wanted: tuple[tuple[int, int], ...]) -> Camera:
    buffer = bytearray(CAPABILITY.size)
    try:
        ioctl(VIDIOC_QUERYCAP, buffer)
    except OSError as exc:
        if exc.errno in (errno.ENOTTY, errno.EINVAL):
            raise NotACamera(exc.errno, f"{path} is not a V4L2 device") from None
        raise OSError(exc.errno, f"cannot query {path}: {exc.strerror}") from None
    driver, card, bus, caps = unpack_capability(bytes(buffer))
    if not caps & CAP_VIDEO_CAPTURE:
        why = "multi-planar capture only" if caps & CAP_VIDEO_CAPTURE_MPLANE else "no capture"
        raise NotACamera(errno.ENODEV, f"{path}: {why}")
    return Camera(path, card, driver, bus, tuple(_formats(ioctl, wanted)))


def unpack_capability(data: bytes) -> tuple[str, str, str, int]:
    """(driver, card, bus, capabilities of this node) from a ``v4l2_capability``."""
    driver, card, bus, _version, caps, device_caps, *_ = CAPABILITY.unpack(data)
    node_caps = device_caps if caps & CAP_DEVICE_CAPS else caps
    return _text(driver), _text(card), _text(bus), node_caps


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def fourcc(code: int) -> str:
    return code.to_bytes(4, "little").decode("latin-1")


def fourcc_code(name: str) -> int:
    return int.from_bytes(name.encode("latin-1"), "little")


def _enumerate(ioctl: Ioctl, request: int, packed: Callable[[int], bytes]) -> Iterator[bytes]:
    """The kernel's answers to ``request`` for index 0, 1, ... until it says EINVAL."""
    for index in range(1000):  # a bound against a driver that never says EINVAL
        buffer = bytearray(packed(index))
        try:
            ioctl(request, buffer)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOTTY):
                return
            raise
        yield bytes(buffer)


def _formats(ioctl: Ioctl, wanted: tuple[tuple[int, int], ...]) -> Iterator[Format]:
    def request(index: int) -> bytes:
        return FMTDESC.pack(index, BUF_TYPE_VIDEO_CAPTURE, 0, b"", 0, 0, 0, 0, 0)

    for answer in _enumerate(ioctl, VIDIOC_ENUM_FMT, request):
        _index, _type, flags, description, code, *_ = FMTDESC.unpack(answer)
        size_range, sizes = _sizes(ioctl, code)
        if size_range is not None:
            sizes = size_range.sizes(wanted)
        frame_sizes = tuple(FrameSize(w, h, _rates(ioctl, code, w, h)) for w, h in sizes)
        yield Format(
            fourcc(code),
            _text(description),
            bool(flags & FMT_FLAG_COMPRESSED),
            frame_sizes,
            size_range,
        )


def _sizes(ioctl: Ioctl, code: int) -> tuple[SizeRange | None, list[tuple[int, int]]]:
    """A format's discrete sizes, or its range of sizes."""

    def request(index: int) -> bytes:
        return FRMSIZE.pack(index, code, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    sizes = []
    for answer in _enumerate(ioctl, VIDIOC_ENUM_FRAMESIZES, request):
        _index, _code, kind, *union, _r0, _r1 = FRMSIZE.unpack(answer)
        if kind == FRMSIZE_DISCRETE:
            sizes.append((union[0], union[1]))
        else:  # stepwise or continuous: one answer, the range
            min_w, max_w, step_w, min_h, max_h, step_h = union
            return SizeRange(min_w, min_h, max_w, max_h, step_w, step_h), []
    return None, sizes


def _rates(ioctl: Ioctl, code: int, width: int, height: int) -> Rates:
    """The frame rates at one size, from its frame intervals (seconds per frame)."""

    def request(index: int) -> bytes:
        return FRMIVAL.pack(index, code, width, height, 0, 0, 0, 0, 0, 0, 0, 0, 0)

    rates = []
    for answer in _enumerate(ioctl, VIDIOC_ENUM_FRAMEINTERVALS, request):
        *_head, kind, n0, d0, n1, d1, _n2, _d2, _r0, _r1 = FRMIVAL.unpack(answer)
        if kind == FRMIVAL_DISCRETE:
            if n0 and d0:
                rates.append(_fps(n0, d0))
        elif n0 and d0 and n1 and d1:  # stepwise or continuous: min and max interval
            return RateRange(_fps(n1, d1), _fps(n0, d0))
    return tuple(rates)


def _fps(numerator: int, denominator: int) -> float:
    """Frames per second from a frame interval (``333333/10000000`` s is 30 fps)."""
    return round(denominator / numerator, 3)


# v4l2-ctl --list-formats-ext: "[0]: 'YUYV' (YUYV 4:2:2)" (v4l-utils 1.16 on) or
# "Pixel Format: 'YUYV'" and "Name        : YUYV 4:2:2" (before), then indented sizes and
# intervals. "-D" adds the driver's name, card type and bus.
_FORMAT = re.compile(r"\[\d+\]: '(.{4})' \((.*)\)$")
_OLD_FORMAT = re.compile(r"Pixel Format\s*: '(.{4})'( \(compressed\))?$")
_OLD_NAME = re.compile(r"Name\s*: (.*)$")
_DISCRETE = re.compile(r"Size: Discrete (\d+)x(\d+)$")
_RANGE = re.compile(
    r"Size: (?:Stepwise|Continuous) (\d+)x(\d+) - (\d+)x(\d+)(?: with step (\d+)/(\d+))?$"
)
_INTERVAL = re.compile(r"Interval: Discrete [\d.]+s \(([\d.]+) fps\)$")
_INTERVAL_RANGE = re.compile(r"Interval: (?:Stepwise|Continuous) .*\(([\d.]+)-([\d.]+) fps\)$")
_INFO = re.compile(r"(Driver name|Card type|Bus info)\s*: (.*)$")


def parse_list_formats_ext(
    text: str, path: str = "/dev/video0", wanted: Iterable[tuple[int, int]] = ()
) -> Camera:
    """The camera in ``v4l2-ctl [-D] --list-formats-ext`` output. A stepwise range of sizes
    stands for the sizes worth asking about, as when asking the kernel; v4l2-ctl lists no
    rates for those, so they have none."""
    wanted = tuple(wanted)
    info: dict[str, str] = {}
    formats: list[_Listed] = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        listed = formats[-1] if formats else None
        if m := _INFO.match(line):
            info.setdefault(m[1], m[2].strip())
        elif m := _FORMAT.match(line):
            description = m[2].replace(", emulated", "")
            compressed = ", compressed" in description
            formats.append(_Listed(m[1], description.replace(", compressed", ""), compressed))
        elif m := _OLD_FORMAT.match(line):
            formats.append(_Listed(m[1], "", bool(m[2])))
        elif listed is None:
            continue
        elif m := _OLD_NAME.match(line):
            listed.description = m[1]
        elif m := _DISCRETE.match(line):
            listed.sizes.append(FrameSize(int(m[1]), int(m[2])))
        elif m := _RANGE.match(line):
            step = (int(m[5]), int(m[6])) if m[5] else (1, 1)
            listed.size_range = SizeRange(int(m[1]), int(m[2]), int(m[3]), int(m[4]), *step)
        elif m := _INTERVAL.match(line):
            listed.add_rates((float(m[1]),))
        elif m := _INTERVAL_RANGE.match(line):
            listed.add_rates(RateRange(float(m[1]), float(m[2])))
    return Camera(
        path,
        info.get("Card type", ""),
        info.get("Driver name", ""),
        info.get("Bus info", ""),
        tuple(f.format(wanted) for f in formats),
    )


@dataclass
class _Listed:
    """A format as v4l2-ctl's lines build it up."""

    fourcc: str
    description: str
    compressed: bool
    sizes: list[FrameSize] = field(default_factory=list)
    size_range: SizeRange | None = None

    def add_rates(self, rates: Rates) -> None:
        """Rates for the last size listed: a range, or one more listed rate."""
        if not self.sizes:
            return
        last = self.sizes[-1]
        if isinstance(rates, tuple) and isinstance(last.rates, tuple):
            rates = (*last.rates, *rates)
        self.sizes[-1] = FrameSize(last.width, last.height, rates)

    def format(self, wanted: tuple[tuple[int, int], ...]) -> Format:
        sizes = tuple(self.sizes)
        if self.size_range is not None:
            sizes = tuple(FrameSize(w, h) for w, h in self.size_range.sizes(wanted))
        return Format(self.fourcc, self.description, self.compressed, sizes, self.size_range)
