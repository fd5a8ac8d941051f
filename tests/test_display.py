"""--display shows the live picture in a real window (on a virtual X server).

The window is read back from the X server itself (FFmpeg's x11grab), so the test sees what
a person would: the stamped picture at the top-left of a window that is really painted.
Xvfb runs without a window manager, so the window sits at the origin and the grab of the
top-left 640x480 covers exactly the picture.
"""

from __future__ import annotations

import ctypes
import os
import select
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import av
import cv2
import numpy as np
import pytest

from common import stamp

from .ci import require_or_skip
from .helpers import ROOT, child_env

XVFB_START_TIMEOUT = 20.0
GRAB_TIMEOUT = 60.0
LIVE_STAMPS = 5  # grabs showing a fresh stamp before we call the picture live
LIVE_AGE_US = 5_000_000  # a stamp captured in the last 5 s is live, not a frozen picture
WIDTH, HEIGHT = 640, 480
RECEIVER_ARGS = ("--display", "--frames", "240", "--quiet")
XVFB_ARGS = ("-screen", "0", "1024x768x24", "-nolisten", "tcp")


def _read_display_number(fd: int, xvfb: subprocess.Popen[bytes], within: float) -> str:
    """What Xvfb writes to its -displayfd: the display number, once it accepts clients.
    Read up to the newline (Xvfb treats a closed pipe before its newline as fatal)."""
    deadline = time.monotonic() + within
    data = b""
    while not data.endswith(b"\n"):
        remaining = deadline - time.monotonic()
        if remaining <= 0 or xvfb.poll() is not None:
            break
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 64)
            if not chunk:
                break
            data += chunk
    return data.decode().strip()


@pytest.fixture
def x_display(tmp_path: Path) -> Iterator[str]:
    """A private Xvfb server; its display name, e.g. ':57'. Xvfb picks a free number
    itself (-displayfd) and reports it only once it accepts connections, so concurrent
    runs, stale /tmp/.X*-lock files and a server not yet listening cannot bite."""
    require_or_skip(
        None if shutil.which("Xvfb") else "Xvfb is not installed (apt-get install xvfb)",
        "the display test",
    )
    log = tmp_path / "xvfb.log"
    read_end, write_end = os.pipe()
    with open(log, "wb") as err:
        server = subprocess.Popen(
            [*("Xvfb", "-displayfd", str(write_end)), *XVFB_ARGS],
            pass_fds=(write_end,),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    os.close(write_end)
    try:
        number = _read_display_number(read_end, server, XVFB_START_TIMEOUT)
        if not number.isdigit():
            server.kill()
            server.wait()
            pytest.fail(f"Xvfb did not start: {log.read_text(errors='replace')[-2000:]}")
        yield f":{number}"
    finally:
        os.close(read_end)
        server.terminate()
        try:
            server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


def window_tree(display: str) -> str:
    """The X server's windows (name, size, position), to tell "no window" from "a window
    that is never painted"; empty without xwininfo (Debian: x11-utils)."""
    if not shutil.which("xwininfo"):
        return ""
    result = subprocess.run(
        ["xwininfo", "-root", "-tree", "-display", display],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return result.stdout


def test_display_shows_the_live_stamped_picture(sender_process, x_display, tmp_path) -> None:
    sender = sender_process("--source", "testsrc")
    env = child_env()
    env["DISPLAY"] = x_display
    log = tmp_path / "receiver.log"
    with open(log, "wb") as err:  # a file, not a pipe: a full pipe would freeze the receiver
        receiver = subprocess.Popen(
            [sys.executable, "-m", "receiver", sender.url, *RECEIVER_ARGS],
            env=env,
            cwd=ROOT,
            stderr=err,
        )
    seen: list[stamp.Stamp] = []
    screen: np.ndarray | None = None
    windows = ""
    started = time.monotonic()
    try:
        options = {"video_size": f"{WIDTH}x{HEIGHT}", "draw_mouse": "0"}
        with av.open(x_display, format="x11grab", options=options) as grab:
            for frame in grab.decode(video=0):
                screen = frame.to_ndarray(format="bgr24")
                found = stamp.read(frame.to_ndarray(format="gray"))
                if stamp.age_us(found) < LIVE_AGE_US:
                    seen.append(found)
                elif not seen and receiver.poll() is None and time.monotonic() - started > 5:
                    windows = windows or window_tree(x_display)  # while the window exists
                if len(seen) >= LIVE_STAMPS or time.monotonic() - started > GRAB_TIMEOUT:
                    break
                if receiver.poll() is not None:  # it ended: nothing more will be painted
                    break
        if len(seen) < LIVE_STAMPS:
            try:
                code: int | None = receiver.wait(timeout=5)
            except subprocess.TimeoutExpired:
                code = None
            picture = tmp_path / "last-screen.png"
            if screen is not None:
                cv2.imwrite(str(picture), screen)
            pytest.fail(
                f"the window does not show the live picture: {len(seen)} live stamps in"
                f" {time.monotonic() - started:.0f} s; receiver exit code"
                f" {'still running' if code is None else code}; last grabbed screen:"
                f" {picture if screen is not None else 'none'}\n"
                f"windows on {x_display}:\n{windows or window_tree(x_display)}\n"
                f"receiver stderr:\n{log.read_text(errors='replace')[-4000:]}",
                pytrace=False,
            )
        assert seen[-1].sequence > seen[0].sequence, "the picture does not move"
        assert receiver.wait(timeout=60) == 0, log.read_text(errors="replace")
    finally:
        if receiver.poll() is None:
            receiver.kill()
            receiver.wait()
    assert "Traceback" not in log.read_text(errors="replace")


QT_BINDING_CHECK = """
import ctypes, sys
from receiver.sinks import DisplaySink
DisplaySink()  # what --display does before Qt opens the connection to the X server
system = ctypes.CDLL("libX11-xcb.so.1")
try:
    bound = ctypes.CDLL(None).XSetEventQueueOwner  # what Qt's xcb plugin will bind to
except AttributeError:
    sys.exit("XSetEventQueueOwner is not in the global scope: Qt binds the wheel's copy")
same = ctypes.cast(bound, ctypes.c_void_p).value == ctypes.cast(
    system.XSetEventQueueOwner, ctypes.c_void_p).value
sys.exit(0 if same else "Qt binds an XSetEventQueueOwner that is not the system's")
"""


def test_qt_takes_the_x_event_queue_with_the_systems_libx11_xcb(x_display) -> None:
    """Why the window above used to stay black, about one run in four on a busy machine.
    opencv-python bundles libX11-xcb but uses the system's libX11; the bundled
    ``XSetEventQueueOwner`` writes the field at an older libX11's offset, so Qt never
    takes the event queue from Xlib, and Xlib calls (libXcursor loading the cursor) move
    pending X events, the window's MapNotify among them, into Xlib's own queue: Qt then
    never considers the window mapped and never paints it. The display sink must make
    the system's libX11-xcb, which matches the system's libX11, the one Qt binds."""
    try:
        ctypes.CDLL("libX11-xcb.so.1")
        problem = None
    except OSError:
        problem = "the system has no libX11-xcb.so.1 (apt-get install libx11-xcb1)"
    require_or_skip(problem, "the libX11-xcb check")
    env = child_env()
    env["DISPLAY"] = x_display
    result = subprocess.run(
        [sys.executable, "-c", QT_BINDING_CHECK],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
