"""The test RTSP camera (``bench/rtsp_camera.py``: the stamped fake camera over RTSP, from
GStreamer's RTSP server) for the tests: skipped here, failed in CI, where it is missing.

    with rtsp_camera(tmp_path, user="u", password="pw") as camera:
        camera.url(); camera.restart()

``audio="aac"`` or ``"pcma"``: the stream carries a ``bench.rtsp_camera.AUDIO_HZ`` sine too.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.rtsp_camera import RtspCamera, problem

from .ci import require_or_skip


def require() -> None:
    """Skip the calling test when GStreamer's RTSP server cannot run here, except in CI,
    where that is a failure: CI installs it (Makefile APT_PACKAGES)."""
    require_or_skip(problem(), "the RTSP tests")


def rtsp_camera(workdir: Path, **options: Any) -> RtspCamera:
    """A camera (not started yet: use it as a context manager) logging into ``workdir``."""
    require()
    workdir.mkdir(parents=True, exist_ok=True)
    return RtspCamera(log=workdir / "rtsp-camera.log", **options)
