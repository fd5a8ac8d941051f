"""``--list-sources``, ``--input-format`` and the format chosen at start: as a user runs
them on this camera-less machine, and with a fake kernel (``tests/fake_v4l2.py``) serving
kept outputs of real cameras."""

import glob
import logging
import platform

import pytest

from sender import cli, formats, sources, v4l2
from sender.formats import CameraMode, Choice
from sender.sources import SourceSpec

from .fake_v4l2 import UVC_METADATA_CAPS, FakeDevices, FakeNode, kept
from .helpers import assert_one_line_error, run_sender

linux = pytest.mark.skipif(platform.system() != "Linux", reason="V4L2 is Linux-only")


@pytest.fixture
def cameras(monkeypatch):
    """A C920 (and its metadata node), a LifeCam, and a node this user may not open."""
    c920 = kept("logitech_c920.txt")
    nodes = {
        "/dev/video0": FakeNode(c920),
        "/dev/video1": FakeNode(c920, UVC_METADATA_CAPS),
        "/dev/video2": FakeNode(kept("microsoft_lifecam_hd3000.txt")),
    }
    monkeypatch.setattr(v4l2, "DEVICES", FakeDevices(nodes, denied=("/dev/video10",)))


@pytest.mark.skipif(bool(glob.glob("/dev/video*")), reason="needs a machine without cameras")
def test_list_sources_without_cameras() -> None:
    result = run_sender("--list-sources")
    assert result.returncode == 0, result.stderr
    assert (
        result.stdout == "no cameras found (the fake cameras: --source testsrc, --source scene)\n"
    )
    assert "Traceback" not in result.stderr


def test_bad_input_format_is_a_one_line_error_and_exit_2() -> None:
    result = run_sender("--source", "testsrc", "--input-format", "mpeg2video")
    assert result.returncode == 2
    assert_one_line_error(result.stderr)
    assert "--input-format: unknown format 'mpeg2video'" in result.stderr


@linux
def test_list_sources_with_cameras(cameras, capsys) -> None:
    code = cli.main(["--list-sources", "--size", "1280x720", "--input-format", "yuyv"])
    out = capsys.readouterr().out
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "/dev/video0: HD Pro Webcam C920 (uvcvideo, usb-0000:00:14.0-2)"
    assert "  yuyv422 ('YUYV' YUYV 4:2:2)" in lines
    assert "    1280x720: 10, 7.5, 5 fps" in lines
    assert "    2304x1296 2304x1536: 2 fps" in lines
    assert "  mjpeg ('MJPG' Motion-JPEG)" in lines
    assert (
        "  auto picks for --size 1280x720 --fps 30: mjpeg 1280x720 at 30 fps "
        "(yuyv422 reaches only 10 fps at 1280x720)"
    ) in lines
    assert (
        "  --input-format yuyv422 picks for --size 1280x720 --fps 30: yuyv422 800x448 at "
        "30 fps, the closest (no mode in yuyv422 reaches 1280x720 at 30 fps; scaled to 1280x720)"
    ) in lines
    assert "/dev/video1:" not in out  # the C920's metadata node
    assert "/dev/video2: Microsoft® LifeCam HD-3000: Mi (uvcvideo, usb-3f980000.usb-1.3)" in lines
    assert lines[-2:] == [
        "/dev/video10",
        "  cannot be read: cannot open /dev/video10: Permission denied",
    ]


@linux
def test_a_format_the_camera_lacks_is_a_one_line_error_and_exit_2(cameras, capsys) -> None:
    code = cli.main(["--source", "v4l2:/dev/video2", "--input-format", "h264", "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2
    assert_one_line_error(err)
    assert (
        "webcam-sender: error: device /dev/video2: the camera does not offer h264 "
        "(it offers yuyv422, mjpeg); see --list-sources"
    ) in err


@linux
async def test_the_format_is_chosen_at_start(cameras, caplog) -> None:
    spec = await sources.settle(SourceSpec("device", "/dev/video0", "v4l2"), 1280, 720, 30)
    assert spec.choice == Choice(
        CameraMode("mjpeg", 1280, 720, 30), 30, True, "yuyv422 reaches only 10 fps at 1280x720"
    )
    assert sources.device_options("v4l2", spec.choice) == {
        "video_size": "1280x720", "framerate": "30", "input_format": "mjpeg",
    }  # fmt: skip
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


@linux
async def test_the_closest_mode_comes_with_a_warning(cameras, caplog) -> None:
    spec = await sources.settle(SourceSpec("device", "/dev/video2", "v4l2"), 1920, 1080, 30)
    assert spec.choice is not None and spec.choice.mode == CameraMode("mjpeg", 1280, 720, 30)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [
        "device /dev/video2: no mode reaches 1920x1080 at 30 fps; capturing mjpeg 1280x720 at "
        "30 fps instead, scaled to 1920x1080"
    ]


async def test_a_camera_whose_modes_cannot_be_read_opens_as_before() -> None:
    """/dev/null is no V4L2 device: nothing is chosen, FFmpeg gets the size and rate (and
    a forced format, unchecked); opening it then fails as before."""
    null = SourceSpec("device", "/dev/null", "v4l2")
    assert (await sources.settle(null, 640, 480, 30)).choice is None
    forced = await sources.settle(null, 640, 480, 30, "mjpeg")
    assert forced.choice is not None
    assert sources.device_options("v4l2", forced.choice) == {
        "video_size": "640x480", "framerate": "30", "input_format": "mjpeg",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("demuxer", "mode", "fps", "options"),
    [
        ("dshow", CameraMode("mjpeg", 1280, 720, 30, 5), 25, {"vcodec": "mjpeg"}),
        ("dshow", CameraMode("yuyv422", 640, 480, 30, 5), 25, {"pixel_format": "yuyv422"}),
        ("avfoundation", CameraMode("raw", 1280, 720, 30), 30, {}),
        ("avfoundation", CameraMode("nv12", 1280, 720, 30), 30, {"pixel_format": "nv12"}),
        ("v4l2", CameraMode("yuv420p", 1920, 1080, None), 30, {"input_format": "yuv420p"}),
    ],
)
def test_each_demuxer_gets_the_format_in_its_own_option(demuxer, mode, fps, options) -> None:
    choice = formats.choose([mode], mode.width, mode.height, fps)
    expected = {"video_size": mode.size, "framerate": f"{fps:g}", **options}
    assert sources.device_options(demuxer, choice) == expected
