"""A fake kernel for ``sender.v4l2``: V4L2 nodes that answer the enumeration ioctls the
way a driver does, for cameras read from kept ``v4l2-ctl --list-formats-ext`` outputs.

It stands in at ``v4l2.DEVICES``, the one seam between our code and the kernel, so the
listing, the choice at start and ``--list-sources`` run as they would with a camera.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator
from pathlib import Path

from sender import v4l2

DATA = Path(__file__).parent / "data" / "cameras"
UVC_CAPS = (0x84A00001, 0x04200001)  # capabilities, device caps: a uvcvideo capture node
UVC_METADATA_CAPS = (0x84A00001, 0x04A00000)  # its metadata node: no video capture


def kept(name: str, wanted: tuple[tuple[int, int], ...] = ()) -> v4l2.Camera:
    """A kept v4l2-ctl output, parsed."""
    return v4l2.parse_list_formats_ext((DATA / name).read_text(), wanted=wanted)


def _einval() -> OSError:
    return OSError(errno.EINVAL, "Invalid argument")


class FakeNode:
    """One node's ioctls. ``ranges`` gives every size of a stepwise format this range of
    rates, as bcm2835-v4l2 does (1-90 fps); otherwise a size has the rates listed."""

    def __init__(
        self,
        camera: v4l2.Camera,
        caps: tuple[int, int] = UVC_CAPS,
        ranges: v4l2.RateRange | None = None,
    ) -> None:
        self.camera = camera
        self.caps = caps
        self.ranges = ranges
        self.requests: list[int] = []

    def __call__(self, request: int, buffer: bytearray) -> None:
        self.requests.append(request)
        handlers = {
            v4l2.VIDIOC_QUERYCAP: self._querycap,
            v4l2.VIDIOC_ENUM_FMT: self._enum_fmt,
            v4l2.VIDIOC_ENUM_FRAMESIZES: self._enum_framesizes,
            v4l2.VIDIOC_ENUM_FRAMEINTERVALS: self._enum_frameintervals,
        }
        if request not in handlers:
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")
        buffer[:] = handlers[request](bytes(buffer))

    def _querycap(self, _request: bytes) -> bytes:
        c = self.camera
        return v4l2.CAPABILITY.pack(
            c.driver.encode(), c.card.encode(), c.bus.encode(), 0x050F00, *self.caps, 0, 0, 0
        )

    def _format(self, code: int) -> v4l2.Format:
        for fmt in self.camera.formats:
            if v4l2.fourcc_code(fmt.fourcc) == code:
                return fmt
        raise _einval()

    def _enum_fmt(self, request: bytes) -> bytes:
        index, kind, *_ = v4l2.FMTDESC.unpack(request)
        if kind != v4l2.BUF_TYPE_VIDEO_CAPTURE or index >= len(self.camera.formats):
            raise _einval()
        fmt = self.camera.formats[index]
        flags = v4l2.FMT_FLAG_COMPRESSED if fmt.compressed else 0
        code = v4l2.fourcc_code(fmt.fourcc)
        return v4l2.FMTDESC.pack(index, kind, flags, fmt.description.encode(), code, 0, 0, 0, 0)

    def _enum_framesizes(self, request: bytes) -> bytes:
        index, code, *_ = v4l2.FRMSIZE.unpack(request)
        fmt = self._format(code)
        if fmt.size_range is not None:
            if index:
                raise _einval()
            r = fmt.size_range
            union = (r.min_width, r.max_width, r.step_width, r.min_height, r.max_height)
            return v4l2.FRMSIZE.pack(0, code, v4l2.FRMSIZE_STEPWISE, *union, r.step_height, 0, 0)
        if index >= len(fmt.sizes):
            raise _einval()
        size = fmt.sizes[index]
        union = (size.width, size.height, 0, 0, 0, 0)
        return v4l2.FRMSIZE.pack(index, code, v4l2.FRMSIZE_DISCRETE, *union, 0, 0)

    def _enum_frameintervals(self, request: bytes) -> bytes:
        index, code, width, height, *_ = v4l2.FRMIVAL.unpack(request)
        fmt = self._format(code)
        head = (index, code, width, height)
        if fmt.size_range is not None:
            if index or self.ranges is None or not fmt.size_range.holds(width, height):
                raise _einval()
            fastest, slowest = (1, round(self.ranges.high)), (1, round(self.ranges.low))
            kind = v4l2.FRMIVAL_CONTINUOUS
            return v4l2.FRMIVAL.pack(*head, kind, *fastest, *slowest, 1, 1, 0, 0)
        rates = next((s.rates for s in fmt.sizes if (s.width, s.height) == (width, height)), ())
        if not isinstance(rates, tuple) or index >= len(rates):
            raise _einval()
        # uvcvideo reports intervals in 100 ns units: 30 fps is 333333/10000000 s.
        interval = (round(10_000_000 / rates[index]), 10_000_000)
        return v4l2.FRMIVAL.pack(*head, v4l2.FRMIVAL_DISCRETE, *interval, 0, 0, 0, 0, 0, 0)


class FakeDevices(v4l2.Devices):
    """``/dev/video*`` as the given nodes, and ``denied`` ones this user may not open."""

    def __init__(self, nodes: dict[str, v4l2.Ioctl], denied: tuple[str, ...] = ()) -> None:
        self.nodes = nodes
        self.denied = denied

    def paths(self) -> list[str]:
        return sorted([*self.nodes, *self.denied], key=v4l2.node_order)

    @contextlib.contextmanager
    def open(self, path: str) -> Iterator[v4l2.Ioctl]:
        if path in self.denied:
            raise OSError(errno.EACCES, f"cannot open {path}: Permission denied")
        if path not in self.nodes:
            raise OSError(errno.ENOENT, f"cannot open {path}: No such file or directory")
        yield self.nodes[path]
