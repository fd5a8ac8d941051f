"""Choosing a camera's format, size and rate, on kept outputs of real cameras.

No camera here: tests/data/cameras/ holds ``v4l2-ctl --list-formats-ext`` outputs (both of
its layouts), FFmpeg's DirectShow ``list_options`` and AVFoundation "Supported modes"
outputs, reproduced from what these cameras report (see the README's Cameras section).
"""

import argparse

import pytest

from sender import ffmpeg_devices, formats, v4l2
from sender.formats import CameraMode, choose

from .fake_v4l2 import DATA, kept

C920 = "logitech_c920.txt"
LIFECAM = "microsoft_lifecam_hd3000.txt"
PI = "raspberry_pi_camera_v2_bcm2835.txt"
MJPEG_ONLY = "usb2_mjpeg_only_720p.txt"
WANTED = ((640, 480), (1280, 720), (1920, 1080))


def modes(name: str) -> list[CameraMode]:
    text = (DATA / name).read_text()
    if name.startswith("dshow"):
        return ffmpeg_devices.parse_dshow_options(text)
    if name.startswith("avfoundation"):
        return ffmpeg_devices.parse_avfoundation_modes(text)
    return kept(name, WANTED).modes()


# --- the parsers, on each kept output ------------------------------------------------------


def test_c920_new_layout() -> None:
    camera = kept(C920)
    assert (camera.card, camera.driver, camera.bus) == (
        "HD Pro Webcam C920", "uvcvideo", "usb-0000:00:14.0-2",
    )  # fmt: skip
    assert [(f.fourcc, f.ffmpeg_name, f.compressed) for f in camera.formats] == [
        ("YUYV", "yuyv422", False), ("H264", "h264", True), ("MJPG", "mjpeg", True),
    ]  # fmt: skip
    yuyv, h264, mjpeg = camera.formats
    assert yuyv.description == "YUYV 4:2:2" and mjpeg.description == "Motion-JPEG"
    assert len(yuyv.sizes) == 19 and len(h264.sizes) == len(mjpeg.sizes) == 17
    sizes = {(s.width, s.height): s.rates for s in yuyv.sizes}
    assert sizes[(640, 480)] == (30, 24, 20, 15, 10, 7.5, 5)
    assert sizes[(1280, 720)] == (10, 7.5, 5)
    assert sizes[(1920, 1080)] == (5,)
    assert sizes[(2304, 1536)] == (2,)
    assert {s.rates for s in mjpeg.sizes} == {(30, 24, 20, 15, 10, 7.5, 5)}


def test_lifecam_old_layout() -> None:
    camera = kept(LIFECAM)
    assert camera.card == "Microsoft® LifeCam HD-3000: Mi" and camera.driver == "uvcvideo"
    assert [(f.fourcc, f.description, f.compressed) for f in camera.formats] == [
        ("YUYV", "YUYV 4:2:2", False), ("MJPG", "Motion-JPEG", True),
    ]  # fmt: skip
    yuyv = {(s.width, s.height): s.rates for s in camera.formats[0].sizes}
    assert yuyv[(1280, 720)] == (10, 7.5) and yuyv[(960, 544)] == (20, 15, 10, 7.5)
    assert len(camera.formats[1].sizes) == 11


def test_pi_stepwise_sizes_stand_for_the_common_ones_and_those_asked_for() -> None:
    camera = kept(PI, wanted=((1000, 562), (1001, 563)))  # 1001x563 is off the 2-pixel grid
    assert camera.driver == "bm2835 mmal"  # sic: the driver's own spelling
    assert len(camera.formats) == 14
    yu12 = camera.formats[0]
    assert yu12.size_range == v4l2.SizeRange(32, 32, 3280, 2464, 2, 2)
    sizes = [(s.width, s.height) for s in yu12.sizes]
    assert (1000, 562) in sizes and (1001, 563) not in sizes
    assert (1920, 1080) in sizes and sizes[-1] == (3280, 2464) and (3840, 2160) not in sizes
    assert {s.rates for s in yu12.sizes} == {()}  # v4l2-ctl lists no rates for ranges
    usable = [f.fourcc for f in camera.formats if f.ffmpeg_name]
    assert usable == ["YU12", "YUYV", "RGB3", "JPEG", "H264", "MJPG", "UYVY", "NV12", "BGR3"]
    # JPEG and MJPG are both FFmpeg's mjpeg: one mode each, not two.
    assert len([m for m in camera.modes() if m.format == "mjpeg" and m.size == "640x480"]) == 1


def test_mjpeg_only_camera() -> None:
    camera = kept(MJPEG_ONLY)
    assert [f.fourcc for f in camera.formats] == ["MJPG"]
    assert {m.fps for m in camera.modes()} == {30, 25, 20, 15, 10, 5}


def test_dshow_list_options() -> None:
    parsed = modes("dshow_list_options_c920.txt")
    assert len(parsed) == 19 + 17  # each line printed twice (with colour details): kept once
    assert parsed[0] == CameraMode("yuyv422", 640, 480, 30, 5)
    assert CameraMode("yuyv422", 1280, 720, 10, 5) in parsed
    assert CameraMode("yuyv422", 2304, 1536, 2) in parsed  # min = max: no range
    assert CameraMode("mjpeg", 1920, 1080, 30, 5) in parsed


def test_dshow_lines_as_pyav_captures_them() -> None:
    """Through PyAV each av_log call is a message of its own, without the prefix."""
    said = [
        (32, "dshow", "  pixel_format=nv12"),
        (32, "dshow", "  min s=1280x720 fps=5 max s=1280x720 fps=30.0003"),
        (32, "dshow", " (tv, bt470bg/bt709/unknown, topleft)\n"),
        (32, "dshow", "  unknown compression type 0x34363248"),
        (32, "dshow", "  min s=1280x720 fps=5 max s=1280x720 fps=30\n"),
    ]
    from sender import ffmpeg_log

    parsed = ffmpeg_devices.parse_dshow_options(ffmpeg_log.text(said))
    assert parsed == [CameraMode("nv12", 1280, 720, 30.0003, 5)]


def test_avfoundation_modes() -> None:
    assert modes("avfoundation_facetime_hd.txt") == [
        CameraMode("raw", 1280, 720, 30), CameraMode("raw", 640, 480, 30),
    ]  # fmt: skip


# --- the choice -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("camera", "request_", "picked", "exact"),
    [
        (C920, (640, 480), ("yuyv422", 640, 480, 30), True),
        (C920, (1280, 720), ("mjpeg", 1280, 720, 30), True),  # YUYV: 10 fps at 720p
        (C920, (1920, 1080), ("mjpeg", 1920, 1080, 30), True),  # YUYV: 5 fps at 1080p
        (LIFECAM, (640, 480), ("yuyv422", 640, 480, 30), True),
        (LIFECAM, (1280, 720), ("mjpeg", 1280, 720, 30), True),
        (LIFECAM, (1920, 1080), ("mjpeg", 1280, 720, 30), False),  # 720p at most
        (PI, (640, 480), ("yuv420p", 640, 480, 30), True),  # 4:2:0 before 4:2:2
        (PI, (1280, 720), ("yuv420p", 1280, 720, 30), True),
        (PI, (1920, 1080), ("yuv420p", 1920, 1080, 30), True),
        (MJPEG_ONLY, (640, 480), ("mjpeg", 640, 480, 30), True),
        (MJPEG_ONLY, (1280, 720), ("mjpeg", 1280, 720, 30), True),
        (MJPEG_ONLY, (1920, 1080), ("mjpeg", 1280, 720, 30), False),
        ("dshow_list_options_c920.txt", (640, 480), ("yuyv422", 640, 480, 30), True),
        ("dshow_list_options_c920.txt", (1280, 720), ("mjpeg", 1280, 720, 30), True),
        ("dshow_list_options_c920.txt", (1920, 1080), ("mjpeg", 1920, 1080, 30), True),
        ("avfoundation_facetime_hd.txt", (640, 480), ("raw", 640, 480, 30), True),
        ("avfoundation_facetime_hd.txt", (1280, 720), ("raw", 1280, 720, 30), True),
        ("avfoundation_facetime_hd.txt", (1920, 1080), ("raw", 1280, 720, 30), False),
    ],
)
def test_choice_at_30_fps(camera, request_, picked, exact) -> None:
    choice = choose(modes(camera), *request_, 30)
    mode = choice.mode
    assert (mode.format, mode.width, mode.height, choice.fps) == picked
    assert choice.exact is exact


def test_why_says_what_the_better_formats_lack() -> None:
    assert choose(modes(C920), 640, 480, 30).why == "raw reaches 640x480 at 30 fps"
    assert choose(modes(C920), 1280, 720, 30).why == "yuyv422 reaches only 10 fps at 1280x720"
    assert choose(modes(MJPEG_ONLY), 1280, 720, 30).why == "no raw format"
    without_mjpeg = [m for m in modes(C920) if m.format != "mjpeg"]
    choice = choose(without_mjpeg, 1920, 1080, 30)
    assert choice.mode.format == "h264"
    assert choice.why == "yuyv422 reaches only 5 fps at 1920x1080; no mjpeg format"
    assert "lists no rates" in choose(modes(PI), 1280, 720, 30).why


def test_the_lowest_listed_rate_that_reaches_the_request_is_asked_for() -> None:
    choice = choose(modes(C920), 640, 480, 25)
    assert (choice.mode.format, choice.fps) == ("yuyv422", 30)
    choice = choose(modes(C920), 640, 480, 12)
    assert choice.fps == 15
    # A range (DirectShow) is asked for the rate itself.
    assert choose(modes("dshow_list_options_c920.txt"), 640, 480, 25).fps == 25
    # 29.97 fps counts as 30.
    ntsc = [CameraMode("yuyv422", 640, 480, 29.97), CameraMode("mjpeg", 640, 480, 30)]
    assert choose(ntsc, 640, 480, 30).mode.format == "yuyv422"


@pytest.mark.parametrize(
    ("camera", "forced", "request_", "picked", "exact"),
    [
        (C920, "h264", (1280, 720), ("h264", 1280, 720, 30), True),
        (C920, "mjpeg", (640, 480), ("mjpeg", 640, 480, 30), True),
        (C920, "raw", (640, 480), ("yuyv422", 640, 480, 30), True),
        # YUYV cannot do 720p30: the closest in it is 800x448 at 30 (same shape, full
        # rate) rather than 1280x720 at 10.
        (C920, "yuyv422", (1280, 720), ("yuyv422", 800, 448, 30), False),
        (LIFECAM, "yuyv422", (640, 480), ("yuyv422", 640, 480, 30), True),
        (PI, "mjpeg", (1280, 720), ("mjpeg", 1280, 720, 30), True),  # via 'JPEG'
        (PI, "nv12", (1920, 1080), ("nv12", 1920, 1080, 30), True),
        (PI, "h264", (1920, 1080), ("h264", 1920, 1080, 30), True),
    ],
)
def test_forced_format(camera, forced, request_, picked, exact) -> None:
    choice = choose(modes(camera), *request_, 30, forced)
    mode = choice.mode
    assert (mode.format, mode.width, mode.height, choice.fps) == picked
    assert choice.exact is exact
    if exact:
        assert choice.why == f"--input-format {forced}"
    else:
        assert choice.why == f"no mode in {forced} reaches 1280x720 at 30 fps"


@pytest.mark.parametrize(
    ("camera", "forced", "offers"),
    [
        (MJPEG_ONLY, "raw", "mjpeg"),
        (LIFECAM, "h264", "yuyv422, mjpeg"),
        (C920, "nv12", "yuyv422, h264, mjpeg"),
        ("avfoundation_facetime_hd.txt", "mjpeg", "raw"),
    ],
)
def test_forcing_a_format_the_camera_lacks_is_an_error(camera, forced, offers) -> None:
    with pytest.raises(formats.FormatError) as caught:
        choose(modes(camera), 1280, 720, 30, forced)
    assert str(caught.value) == f"the camera does not offer {forced} (it offers {offers})"


@pytest.mark.parametrize(
    ("camera", "request_", "picked"),
    [
        (C920, (3840, 2160, 60), ("mjpeg", 1920, 1080, 30)),
        (LIFECAM, (1280, 720, 60), ("mjpeg", 1280, 720, 30)),
        (MJPEG_ONLY, (1920, 1080, 60), ("mjpeg", 1280, 720, 30)),
        # Only 16:9 at 30 fps keeps 720p; 4:3 at 640x480 would stretch the picture.
        ("avfoundation_facetime_hd.txt", (960, 540, 60), ("raw", 1280, 720, 30)),
    ],
)
def test_impossible_request_takes_the_closest(camera, request_, picked) -> None:
    choice = choose(modes(camera), *request_)
    mode = choice.mode
    assert (mode.format, mode.width, mode.height, choice.fps) == picked
    width, height, fps = request_
    assert not choice.exact
    assert choice.why == f"no mode reaches {width}x{height} at {fps} fps"


def test_a_camera_with_nothing_ffmpeg_reads() -> None:
    with pytest.raises(ValueError, match="no format FFmpeg can capture"):
        choose([CameraMode("not-a-format", 640, 480, 30)], 640, 480, 30)


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("auto", None), ("raw", "raw"), ("mjpeg", "mjpeg"), ("MJPG", "mjpeg"), ("h264", "h264"),
        ("YUYV", "yuyv422"), ("yuyv422", "yuyv422"), ("nv12", "nv12"), ("I420", "yuv420p"),
    ],
)  # fmt: skip
def test_input_format_values(text, name) -> None:
    assert formats.input_format(text) == name


@pytest.mark.parametrize("text", ["foo", "", "vp8", "h265x"])
def test_input_format_refuses_unknown_names(text) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="unknown format"):
        formats.input_format(text)
