"""Asking the kernel what a V4L2 camera offers: the ioctl numbers and struct layouts
against videodev2.h's, then whole cameras through a fake kernel (``tests/fake_v4l2.py``)."""

import errno

import pytest

from sender import v4l2

from .fake_v4l2 import UVC_METADATA_CAPS, FakeDevices, FakeNode, kept


@pytest.fixture
def devices(monkeypatch):
    """Install a fake kernel with the given nodes: ``devices({"/dev/video0": node})``."""

    def install(nodes):
        monkeypatch.setattr(v4l2, "DEVICES", FakeDevices(nodes))

    return install


def test_ioctl_numbers_are_videodev2s() -> None:
    # As strace and <linux/videodev2.h> give them on x86-64 and arm64.
    assert v4l2.VIDIOC_QUERYCAP == 0x80685600
    assert v4l2.VIDIOC_ENUM_FMT == 0xC0405602
    assert v4l2.VIDIOC_ENUM_FRAMESIZES == 0xC02C564A
    assert v4l2.VIDIOC_ENUM_FRAMEINTERVALS == 0xC034564B
    sizes = [v4l2.CAPABILITY.size, v4l2.FMTDESC.size, v4l2.FRMSIZE.size, v4l2.FRMIVAL.size]
    assert sizes == [104, 64, 44, 52]


def test_fourccs() -> None:
    assert v4l2.fourcc(0x47504A4D) == "MJPG"  # V4L2_PIX_FMT_MJPEG
    assert v4l2.fourcc(0x56595559) == "YUYV"  # V4L2_PIX_FMT_YUYV
    assert v4l2.fourcc_code("H264") == 0x34363248  # V4L2_PIX_FMT_H264
    assert v4l2.fourcc_code("Y16 ") == 0x20363159


def _u32(*values: int) -> bytes:
    return b"".join(v.to_bytes(4, "little") for v in values)


def test_capability_layout() -> None:
    """A C920's v4l2_capability, byte by byte: the node's caps are its device_caps."""
    raw = (
        b"uvcvideo".ljust(16, b"\0")
        + b"HD Pro Webcam C920".ljust(32, b"\0")
        + b"usb-0000:00:14.0-2".ljust(32, b"\0")
        + _u32(0x00050F4E, 0x84A00001, 0x04200001, 0, 0, 0)
    )
    assert len(raw) == 104
    driver, card, bus, caps = v4l2.unpack_capability(raw)
    assert (driver, card, bus, caps) == (
        "uvcvideo", "HD Pro Webcam C920", "usb-0000:00:14.0-2", 0x04200001,
    )  # fmt: skip
    # Without V4L2_CAP_DEVICE_CAPS (old drivers), the capabilities field is the node's.
    old = raw[:80] + _u32(0x00040E00, 0x05000001, 0, 0, 0, 0)
    assert v4l2.unpack_capability(old)[3] == 0x05000001


class ByteNode:
    """A node answering from hand-written bytes, checking the requests' bytes too."""

    def __call__(self, request: int, buffer: bytearray) -> None:
        index = int.from_bytes(buffer[:4], "little")
        if request == v4l2.VIDIOC_QUERYCAP:
            answer = b"\0" * 80 + _u32(0, 0x84A00001, 0x04200001, 0, 0, 0)
        elif request == v4l2.VIDIOC_ENUM_FMT and index == 0:
            assert buffer[4:8] == _u32(1)  # V4L2_BUF_TYPE_VIDEO_CAPTURE
            description = b"Motion-JPEG".ljust(32, b"\0")
            answer = _u32(0, 1, 1) + description + b"MJPG" + _u32(0, 0, 0, 0)
        elif request == v4l2.VIDIOC_ENUM_FRAMESIZES and index == 0:
            assert buffer[4:8] == b"MJPG"
            # Stepwise: min_width max_width step_width min_height max_height step_height.
            answer = _u32(0) + b"MJPG" + _u32(3, 32, 1920, 2, 32, 1080, 2, 0, 0)
        elif (
            request == v4l2.VIDIOC_ENUM_FRAMEINTERVALS
            and buffer[8:16] == _u32(1280, 720)
            and index < 2
        ):
            assert buffer[4:8] == b"MJPG"
            # Discrete intervals, in seconds per frame: 333333/10000000 s as uvcvideo
            # reports 30 fps, then 1/15 s. Other sizes: refused, their rates unknown.
            interval = [_u32(333333, 10_000_000), _u32(1, 15)][index]
            answer = bytes(buffer[:16]) + _u32(1) + interval + _u32(0, 0, 0, 0, 0, 0)
        else:
            raise OSError(errno.EINVAL, "Invalid argument")
        assert len(answer) == len(buffer)
        buffer[:] = answer


def test_struct_unpacking_from_known_bytes(devices) -> None:
    devices({"/dev/video0": ByteNode()})
    camera = v4l2.read_camera("/dev/video0", [(1280, 720)])
    (mjpeg,) = camera.formats
    assert (mjpeg.fourcc, mjpeg.description, mjpeg.compressed) == ("MJPG", "Motion-JPEG", True)
    assert mjpeg.size_range == v4l2.SizeRange(32, 32, 1920, 1080, 2, 2)
    sizes = {(s.width, s.height): s.rates for s in mjpeg.sizes}
    assert sizes[(1280, 720)] == (30.0, 15.0)
    assert sizes[(1920, 1080)] == ()  # intervals refused: rates not known
    assert (800, 600) in sizes and (3840, 2160) not in sizes


@pytest.mark.parametrize(
    "name", ["logitech_c920.txt", "microsoft_lifecam_hd3000.txt", "usb2_mjpeg_only_720p.txt"]
)
def test_the_kernel_and_v4l2_ctl_say_the_same(devices, name) -> None:
    """A camera served by the fake kernel reads back as its v4l2-ctl output parses."""
    camera = kept(name)
    devices({"/dev/video0": FakeNode(camera)})
    assert v4l2.read_camera("/dev/video0") == camera


def test_stepwise_camera_with_continuous_rates(devices) -> None:
    """bcm2835-v4l2 takes any size in its range at 1-90 fps."""
    camera = kept("raspberry_pi_camera_v2_bcm2835.txt")
    devices({"/dev/video0": FakeNode(camera, ranges=v4l2.RateRange(1, 90))})
    read = v4l2.read_camera("/dev/video0", [(1000, 562)])
    sizes = {(s.width, s.height): s.rates for s in read.formats[0].sizes}
    assert sizes[(1000, 562)] == sizes[(1920, 1080)] == v4l2.RateRange(1, 90)
    modes = [m for m in read.modes() if m.size == "1000x562"]
    assert modes[0].format == "yuv420p" and (modes[0].min_fps, modes[0].fps) == (1, 90)
    assert modes[0].rate_for(30) == 30


def test_list_cameras_leaves_out_metadata_nodes_and_reports_unreadable_ones(monkeypatch) -> None:
    c920 = kept("logitech_c920.txt")
    nodes = {"/dev/video0": FakeNode(c920), "/dev/video1": FakeNode(c920, UVC_METADATA_CAPS)}
    monkeypatch.setattr(v4l2, "DEVICES", FakeDevices(nodes, denied=("/dev/video10",)))
    found = v4l2.list_cameras()
    assert found == [
        c920, v4l2.Unreadable("/dev/video10", "cannot open /dev/video10: Permission denied"),
    ]  # fmt: skip


def test_not_a_v4l2_device(devices) -> None:
    class Null:
        def __call__(self, request, buffer):
            raise OSError(errno.ENOTTY, "Inappropriate ioctl for device")

    devices({"/dev/null": Null()})
    with pytest.raises(v4l2.NotACamera, match="not a V4L2 device"):
        v4l2.read_camera("/dev/null")


def test_a_real_non_v4l2_node_is_not_a_camera() -> None:
    """The real ioctl path, on a device every Linux has: /dev/null answers ENOTTY."""
    with pytest.raises(v4l2.NotACamera):
        v4l2.read_camera("/dev/null")
