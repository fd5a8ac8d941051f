"""Recording decoded frames to a video file, timed by the stream's RTP timestamps."""

from __future__ import annotations

import asyncio
import fractions
import logging
import os

import av

logger = logging.getLogger(__name__)

TIME_BASE = fractions.Fraction(1, 90000)  # the RTP video clock
RTP_WRAP = 1 << 32
ENCODERS = {
    ".webm": "libvpx",
    ".mkv": "libx264",
    ".mp4": "libx264",
    ".mov": "libx264",
    ".avi": "libx264",
}
QUEUE_FRAMES = 90


class RecorderError(Exception):
    """The file cannot be written; one line for the user."""


class RtpClock:
    """Turns 32-bit RTP timestamps into a monotonic count from the first frame."""

    def __init__(self) -> None:
        self._first: int | None = None
        self._last = 0
        self._wraps = 0

    def __call__(self, timestamp: int) -> int:
        if self._first is None:
            self._first = self._last = timestamp
        if timestamp < self._last and self._last - timestamp > RTP_WRAP // 2:
            self._wraps += 1
        self._last = timestamp
        return timestamp + self._wraps * RTP_WRAP - self._first


class Recorder:
    """Encodes frames into ``path`` on a worker thread, so decoding never waits on disk."""

    def __init__(self, path: str, fps: float = 30.0) -> None:
        extension = os.path.splitext(path)[1].lower()
        if extension not in ENCODERS:
            raise RecorderError(
                f"cannot record to {path!r}: use one of {', '.join(sorted(ENCODERS))}"
            )
        self.path = path
        self._codec = ENCODERS[extension]
        self._fps = fps
        self._clock = RtpClock()
        self._last_pts = -1
        self._container: av.container.OutputContainer | None = None
        self._stream: av.VideoStream | None = None
        self._queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue(QUEUE_FRAMES)
        self._worker: asyncio.Task[None] | None = None
        self.frames = 0
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
            raise RecorderError(f"cannot write {path}: {folder} is not a writable folder")
        try:
            self._container = av.open(path, mode="w")
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"cannot write {path}: {_reason(exc)}") from None

    async def write(self, frame: av.VideoFrame) -> None:
        if self._worker is None:
            self._worker = asyncio.create_task(self._run(), name=f"record {self.path}")
        if self._worker.done():
            self._worker.result()  # raises the worker's RecorderError
        await self._queue.put(frame)

    async def _run(self) -> None:
        while (frame := await self._queue.get()) is not None:
            await asyncio.to_thread(self._encode, frame)

    def _encode(self, frame: av.VideoFrame | None) -> None:
        assert self._container is not None
        if frame is not None:
            if self._stream is None:
                self._open_stream(frame)
            assert self._stream is not None
            pts = self._clock(frame.pts) if frame.pts is not None else self._last_pts + 1
            if pts <= self._last_pts:  # never let a repeated timestamp break the muxer
                return
            self._last_pts = pts
            if (frame.width, frame.height) != (self._stream.width, self._stream.height):
                frame = frame.reformat(width=self._stream.width, height=self._stream.height)
            frame.pts, frame.time_base = pts, TIME_BASE
            packets = self._stream.encode(frame)
            self.frames += 1
        elif self._stream is not None:
            packets = self._stream.encode(None)
        else:
            return
        try:
            self._container.mux(packets)
        except (av.FFmpegError, OSError) as exc:
            raise RecorderError(f"writing {self.path} failed: {_reason(exc)}") from None

    def _open_stream(self, frame: av.VideoFrame) -> None:
        assert self._container is not None
        stream = self._container.add_stream(self._codec, rate=round(self._fps))
        stream.width, stream.height = frame.width, frame.height
        stream.pix_fmt = "yuv420p"
        stream.time_base = TIME_BASE
        stream.codec_context.time_base = TIME_BASE
        if self._codec == "libx264":
            stream.codec_context.options = {"preset": "veryfast", "tune": "zerolatency"}
        self._stream = stream

    async def close(self) -> None:
        """Flush the encoder and finish the file."""
        if self._container is None:
            return
        try:
            if self._worker is not None:
                await self._queue.put(None)
                await self._worker
            await asyncio.to_thread(self._encode, None)
        finally:
            container, self._container = self._container, None
            await asyncio.to_thread(container.close)
            logger.info("recording closed: %s (%d frames)", self.path, self.frames)


def _reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc)
