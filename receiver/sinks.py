"""Where decoded frames go: a window, a recording, image files, or nowhere (counting)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable
from typing import Protocol

import av
import cv2

from .passthrough import EncodedFrame
from .recorder import COPY_CODECS, Recorder, RecorderError

logger = logging.getLogger(__name__)


class SinkError(Exception):
    """A sink cannot work here; one line for the user."""


class Sink(Protocol):
    async def write(self, frame: av.VideoFrame) -> None: ...

    async def gap(self) -> None:
        """The connection was lost; frames after this come from a new one."""

    async def close(self) -> None: ...


class DisplaySink:
    """An OpenCV window with the live picture; closing it (or q/Esc) stops the receiver."""

    def __init__(self, title: str = "webrtc-webcam") -> None:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise SinkError("--display needs a graphical session, and DISPLAY is not set")
        self.title = title
        self.closed_by_user = asyncio.Event()
        self._shown = False

    async def write(self, frame: av.VideoFrame) -> None:
        try:
            if not self._shown:  # the picture alone, without Qt's toolbar
                cv2.namedWindow(self.title, cv2.WINDOW_AUTOSIZE | cv2.WINDOW_GUI_NORMAL)
            cv2.imshow(self.title, frame.to_ndarray(format="bgr24"))
            key = cv2.waitKey(1) & 0xFF
            visible = cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE)
        except cv2.error as exc:
            raise SinkError(f"cannot open a window: {str(exc).strip().splitlines()[-1]}") from None
        self._shown = True
        if key in (ord("q"), 27) or visible < 1:
            self.closed_by_user.set()

    async def gap(self) -> None:
        pass

    async def close(self) -> None:
        if self._shown:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)


class SnapshotSink:
    """Every ``every``-th frame as an image file in ``directory``."""

    def __init__(self, directory: str, every: int = 30, extension: str = ".jpg") -> None:
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise SinkError(f"cannot create {directory}: {exc.strerror}") from None
        if not os.access(directory, os.W_OK):
            raise SinkError(f"cannot write to {directory}")
        self.directory = directory
        self.every = every
        self.extension = extension
        self._count = 0
        self.written: list[str] = []

    async def write(self, frame: av.VideoFrame) -> None:
        self._count += 1
        if (self._count - 1) % self.every:
            return
        path = os.path.join(self.directory, f"frame-{self._count:06d}{self.extension}")
        image = frame.to_ndarray(format="bgr24")
        if not await asyncio.to_thread(cv2.imwrite, path, image):
            raise SinkError(f"cannot write {path}")
        self.written.append(path)

    async def gap(self) -> None:
        pass

    async def close(self) -> None:
        if self.written:
            logger.info("wrote %d snapshots to %s", len(self.written), self.directory)


class RecordSink:
    """Adapts the Recorder to the sink interface (its errors become SinkErrors). In copy
    mode it takes frames as received (``EncodedFrame``), in encode mode decoded ones."""

    def __init__(
        self,
        pattern: str,
        fps: float = 30.0,
        segment_seconds: float | None = None,
        mode: str = "copy",
        request_keyframe: Callable[[], None] | None = None,
    ) -> None:
        try:
            self.recorder = Recorder(pattern, fps, segment_seconds, mode, request_keyframe)
        except RecorderError as exc:
            raise SinkError(str(exc)) from None
        self.copies = mode == "copy"

    def codecs(self) -> list[str]:
        """The codecs this recording can take as received (copy mode)."""
        return sorted(COPY_CODECS[os.path.splitext(self.recorder.pattern)[1].lower()])

    async def write(self, frame: av.VideoFrame | EncodedFrame) -> None:
        try:
            await self.recorder.write(frame)
        except RecorderError as exc:
            raise SinkError(f"recording stopped: {exc}") from None

    async def gap(self) -> None:
        await self.recorder.split()

    async def close(self) -> None:
        try:
            await self.recorder.close()
        except RecorderError as exc:
            raise SinkError(f"recording stopped: {exc}") from None
