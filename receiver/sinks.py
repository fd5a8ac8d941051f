"""Where frames go: a window, a recording, image files, or nowhere (counting).

A sink takes decoded frames (``FrameSink``) or frames as received (``EncodedSink``, for
copy recording); the receiver decodes only when some sink needs decoded frames."""

from __future__ import annotations

import abc
import asyncio
import contextlib
import ctypes
import logging
import os
import sys
from collections.abc import Callable

import av
import cv2

from .audio import AudioPacket
from .encoded import EncodedFrame
from .recorder import COPY_CODECS, Recorder, RecorderError

logger = logging.getLogger(__name__)


class SinkError(Exception):
    """A sink cannot work here; one line for the user."""


class Sink:
    """What every sink does besides taking frames."""

    async def gap(self) -> None:
        """The connection was lost; frames after this come from a new one."""

    async def close(self) -> None:
        """The run is over."""


class FrameSink(Sink, abc.ABC):
    """Takes decoded frames."""

    @abc.abstractmethod
    async def write(self, frame: av.VideoFrame) -> None: ...


class EncodedSink(Sink, abc.ABC):
    """Takes frames as received, never decoded."""

    @abc.abstractmethod
    async def write(self, frame: EncodedFrame) -> None: ...

    @abc.abstractmethod
    def codecs(self) -> list[str]:
        """The codecs it can take: the receiver offers only these."""


def _bind_system_libx11_xcb() -> None:
    """opencv-python 5.0 bundles libX11-xcb but not libX11, and its XSetEventQueueOwner
    writes the field at an older libX11's offset: Qt's xcb plugin never takes the X event
    queue from Xlib, events (the window's MapNotify) get lost in Xlib's queue, and the
    window is never painted (tests/test_display.py flaked under load). Loaded globally
    first, the system's copy, which matches the system libX11, is the one Qt binds to."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libX11-xcb.so.1", mode=ctypes.RTLD_GLOBAL)


class DisplaySink(FrameSink):
    """An OpenCV window with the live picture; closing it (or q/Esc) stops the receiver."""

    def __init__(self, title: str = "webrtc-webcam") -> None:
        if sys.platform.startswith("linux") and not (
            os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
        ):
            raise SinkError("--display needs a graphical session, and DISPLAY is not set")
        _bind_system_libx11_xcb()
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

    async def close(self) -> None:
        if self._shown:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)


class SnapshotSink(FrameSink):
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

    async def close(self) -> None:
        if self.written:
            logger.info("wrote %d snapshots to %s", len(self.written), self.directory)


class AudioPacketSink(Sink, abc.ABC):
    """Takes the sender's audio as received (Opus packets on the video's clock)."""

    @abc.abstractmethod
    async def write_audio(self, packet: AudioPacket) -> None: ...

    @abc.abstractmethod
    def expect_audio(self, audio: bool) -> None:
        """Whether the connection the next frames come from carries audio."""


class _Recording(AudioPacketSink):
    """A Recorder whose errors become SinkErrors; it records the audio too."""

    def __init__(
        self,
        pattern: str,
        fps: float,
        segment_seconds: float | None,
        mode: str,
        request_keyframe: Callable[[], None] | None,
        audio_codec: str | None = None,
        video: bool = True,
    ) -> None:
        try:
            self.recorder = Recorder(
                pattern, fps, segment_seconds, mode, request_keyframe, audio_codec, video
            )
        except RecorderError as exc:
            raise SinkError(str(exc)) from None

    async def _write(self, frame: av.VideoFrame | EncodedFrame | AudioPacket) -> None:
        try:
            await self.recorder.write(frame)
        except RecorderError as exc:
            raise SinkError(f"recording stopped: {exc}") from None

    async def write_audio(self, packet: AudioPacket) -> None:
        await self._write(packet)

    def expect_audio(self, audio: bool) -> None:
        self.recorder.audio = audio

    async def gap(self) -> None:
        await self.recorder.split()

    async def close(self) -> None:
        try:
            await self.recorder.close()
        except RecorderError as exc:
            raise SinkError(f"recording stopped: {exc}") from None


class RecordSink(_Recording, FrameSink):
    """Records decoded frames, re-encoded (``--record-mode encode``)."""

    def __init__(
        self,
        pattern: str,
        fps: float = 30.0,
        segment_seconds: float | None = None,
        audio_codec: str | None = None,
    ) -> None:
        super().__init__(pattern, fps, segment_seconds, "encode", None, audio_codec)

    async def write(self, frame: av.VideoFrame) -> None:
        await self._write(frame)


class CopyRecordSink(_Recording, EncodedSink):
    """Records frames as received (``--record-mode copy``), starting files at keyframes
    it asks for with ``request_keyframe``."""

    def __init__(
        self,
        pattern: str,
        fps: float = 30.0,
        segment_seconds: float | None = None,
        request_keyframe: Callable[[], None] | None = None,
        audio_codec: str | None = None,
    ) -> None:
        super().__init__(pattern, fps, segment_seconds, "copy", request_keyframe, audio_codec)

    def codecs(self) -> list[str]:
        return sorted(COPY_CODECS[os.path.splitext(self.recorder.pattern)[1].lower()])

    async def write(self, frame: EncodedFrame) -> None:
        await self._write(frame)


class AudioRecordSink(_Recording):
    """Records the audio alone (``--no-video``): its packets as received, or AAC."""

    def __init__(
        self,
        pattern: str,
        segment_seconds: float | None = None,
        audio_codec: str | None = None,
    ) -> None:
        super().__init__(pattern, 0.0, segment_seconds, "copy", None, audio_codec, video=False)


def record_sink(
    pattern: str,
    mode: str = "copy",
    segment_seconds: float | None = None,
    request_keyframe: Callable[[], None] | None = None,
    audio_codec: str | None = None,
    video: bool = True,
) -> RecordSink | CopyRecordSink | AudioRecordSink:
    """A recording in ``mode``; ``audio_codec`` opus or aac (None: the container's
    default, ``recorder.AUDIO_CODECS``); ``video=False``: the audio alone."""
    if not video:
        return AudioRecordSink(pattern, segment_seconds, audio_codec)
    if mode == "copy":
        return CopyRecordSink(
            pattern,
            segment_seconds=segment_seconds,
            request_keyframe=request_keyframe,
            audio_codec=audio_codec,
        )
    return RecordSink(pattern, segment_seconds=segment_seconds, audio_codec=audio_codec)
