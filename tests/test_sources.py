"""Sources other than the fake camera, and what happens when one cannot be opened."""

import fractions
import platform
from pathlib import Path

import av
import numpy as np
import pytest

from receiver import Receiver

from .helpers import SenderProcess


def make_clip(path: Path, frames: int = 20, size: tuple[int, int] = (320, 240)) -> None:
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=10)
        stream.width, stream.height = size
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            image = np.full((size[1], size[0], 3), (i * 12) % 256, dtype=np.uint8)
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            frame.pts, frame.time_base = i, fractions.Fraction(1, 10)
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


async def test_video_file_is_looped_at_the_requested_size(sender_factory, tmp_path) -> None:
    from sender.sources import resolve

    clip = tmp_path / "clip.mp4"
    make_clip(clip, frames=10)  # one second at 10 fps: three seconds need two loops
    sender = await sender_factory(source=resolve(str(clip)), width=640, height=480, fps=10)
    async with Receiver(sender.url, connect_timeout=20) as rx:
        async for frame in rx.frames():
            assert (frame.width, frame.height) == (640, 480)
            if rx.stats.seconds >= 2.5:
                break
        assert rx.stats.frames >= 20, "the file should loop and keep playing"


@pytest.mark.skipif(platform.system() != "Linux", reason="V4L2 device paths are Linux-only")
@pytest.mark.parametrize(
    ("source", "message"),
    [
        ("/dev/video99", "no such camera"),
        ("v4l2:/dev/null", "cannot open"),
        ("no-such-file.mp4", "no such camera or video file"),
    ],
)
def test_missing_device_is_a_one_line_error_and_exit_2(tmp_path, source, message) -> None:
    with pytest.raises(AssertionError, match="did not start"):
        SenderProcess(["--source", source], tmp_path / "sender.log")
    log = (tmp_path / "sender.log").read_text()
    assert "Traceback" not in log
    assert message in log
    errors = [line for line in log.splitlines() if line.startswith("webcam-sender: error:")]
    assert len(errors) == 1, log


def test_sender_exit_code_is_2_for_a_missing_device(tmp_path) -> None:
    import subprocess
    import sys

    from .helpers import ROOT, child_env

    result = subprocess.run(
        [sys.executable, "-m", "sender", "--source", "/dev/video99"],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("webcam-sender: error:")


@pytest.mark.skipif(
    platform.system() != "Linux" or Path("/dev/video0").exists(), reason="needs a camera-less Linux"
)
def test_auto_falls_back_to_the_fake_camera_with_a_warning(sender_process) -> None:
    sender = sender_process()  # --source auto is the default
    assert sender.health()["source"] == "fake camera (testsrc)"
    assert "using the fake camera" in sender.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--source", "testsrc", "--size", "100x100"], "at least 320"),
        (["--source", "scene", "--size", "100x100"], "at least 320"),
        (["--size", "10x10"], "at least 320"),  # auto falling back to the fake camera too
        (["--source", "testsrc", "--size", "big"], "WIDTHxHEIGHT"),
        (["--source", "testsrc", "--ice-server", "stun"], "ICE server"),
        (["--source", "testsrc", "--codec", "av1"], "invalid choice"),
    ],
)
def test_bad_sender_options(tmp_path, args, message) -> None:
    with pytest.raises(AssertionError, match="did not start"):
        SenderProcess(args, tmp_path / "sender.log")
    log = (tmp_path / "sender.log").read_text()
    assert "Traceback" not in log and message in log


def test_busy_port_is_a_one_line_error(sender_process, tmp_path) -> None:
    first = sender_process("--source", "testsrc")
    port = first.url.rsplit(":", 1)[1]
    import subprocess
    import sys

    from .helpers import ROOT, child_env

    result = subprocess.run(
        [sys.executable, "-m", "sender", "--source", "testsrc", "--port", port],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "cannot serve on" in result.stderr
