"""--display shows the live picture in a real window (on a virtual X server)."""

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import av
import pytest

from common import stamp

from .helpers import ROOT, child_env


@pytest.fixture
def x_display(tmp_path: Path):
    """A private Xvfb server; its display name, e.g. ':57'."""
    if not shutil.which("Xvfb"):
        if os.environ.get("CI"):
            pytest.fail("CI is set: the display test must run; apt-get install xvfb")
        pytest.skip("Xvfb is not installed")
    number = next(n for n in range(50, 200) if not Path(f"/tmp/.X11-unix/X{n}").exists())
    server = subprocess.Popen(
        ["Xvfb", f":{number}", "-screen", "0", "1024x768x24", "-nolisten", "tcp"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not Path(f"/tmp/.X11-unix/X{number}").exists():
        assert server.poll() is None and time.monotonic() < deadline, "Xvfb did not start"
        time.sleep(0.05)
    yield f":{number}"
    server.terminate()
    server.wait(timeout=10)


def test_display_shows_the_live_stamped_picture(sender_process, x_display) -> None:
    sender = sender_process("--source", "testsrc")
    env = child_env()
    env["DISPLAY"] = x_display
    receiver = subprocess.Popen(
        [sys.executable, "-m", "receiver", sender.url, "--display", "--frames", "240", "--quiet"],
        env=env,
        cwd=ROOT,
        stderr=subprocess.PIPE,
    )
    try:
        seen: list[stamp.Stamp] = []
        deadline = time.monotonic() + 60
        with av.open(x_display, format="x11grab", options={"video_size": "640x480"}) as screen:
            for frame in screen.decode(video=0):
                found = stamp.read(frame.to_ndarray(format="gray"))
                if stamp.age_us(found) < 5_000_000:  # a stamp from the last seconds: live
                    seen.append(found)
                if len(seen) >= 5 or time.monotonic() > deadline:
                    break
        assert len(seen) >= 5, "the window does not show the live picture"
        assert seen[-1].sequence > seen[0].sequence, "the picture does not move"
        assert receiver.wait(timeout=60) == 0
    finally:
        receiver.kill()
        stderr = receiver.stderr.read().decode()
    assert "Traceback" not in stderr
