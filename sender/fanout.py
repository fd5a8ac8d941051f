"""One camera, many viewers.

The source is opened when the first viewer subscribes, read by one capture task, and
each frame is offered to every viewer's track. It is closed shortly after the last
viewer leaves (``sender.shared_capture``). A network camera that drops reconnects inside its source (``sender.live``): ``read()`` just
takes longer, and the viewers' encoders wait for the next frame, connected.

Besides frames, a source that receives H.264 hands its packets to ``listen()``ers (H.264
passthrough, ``sender.passthrough``); it decodes only while a frame viewer subscribes.
A network camera's audio goes to ``hear()``ers (``--audio camera``,
``audio_sources.CameraAudioSource``): they are users like the others, so one connection
serves video viewers, passthrough viewers and audio listeners, opened for whichever comes
first and closed after the last; with only audio listeners no video is decoded.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import av
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from . import live
from .h264_stream import PacketSink, StreamInfo
from .shared_capture import IDLE_CLOSE_SECONDS, SharedCapture
from .sources import Source, SourceError

logger = logging.getLogger(__name__)


class ViewerTrack(MediaStreamTrack):
    """A viewer's view of the shared source: always the newest frame, never a backlog."""

    kind = "video"

    def __init__(self, owner: SharedSource) -> None:
        super().__init__()
        self._owner = owner
        self._queue: asyncio.Queue[av.VideoFrame | None] = asyncio.Queue(maxsize=1)
        self.dropped = 0
        # A consumer that may take a frame at once, in the capture task (``SharedEncoder``
        # encoding on the loop): True, taken. That spares the frame a loop iteration in
        # the queue (0.04 ms at 640x480: docs/performance.md).
        self.take: Callable[[av.VideoFrame], bool] | None = None

    def offer(self, frame: av.VideoFrame | None) -> None:
        """Hand over a frame, replacing one the viewer has not taken yet."""
        take = self.take
        if frame is not None and take is not None and self._queue.empty() and take(frame):
            return
        if self._queue.full():
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(frame)

    async def recv(self) -> av.VideoFrame:
        if self.readyState != "live":
            raise MediaStreamError
        frame = await self._queue.get()
        if frame is None:
            self.stop()
            raise MediaStreamError
        return frame

    def stop(self) -> None:
        if self.readyState == "live":
            self._owner.unsubscribe(self)
        super().stop()


class SharedSource(SharedCapture):
    """Owns the capture: opens it for the first viewer, closes it after the last."""

    def __init__(
        self,
        opener: Callable[[], Awaitable[Source]],
        idle_close: float = IDLE_CLOSE_SECONDS,
        name: str = "",
    ) -> None:
        super().__init__(idle_close, f"capture {name}".strip())
        self._opener = opener
        self.name = name  # the camera's, for the logs of a sender with several
        self._viewers: set[ViewerTrack] = set()
        self.frames_captured = 0
        self._source: Source | None = None
        self._reconnects = 0  # by the sources opened before the current one
        self._listeners: set[PacketSink] = set()  # H.264 packets (sender.passthrough)
        self._hearers: set[live.AudioSink] = set()  # the camera's audio (--audio camera)

    @property
    def in_use(self) -> bool:
        return bool(self._viewers or self._listeners or self._hearers)

    @property
    def state(self) -> str:
        """``closed`` (no viewer), else the open source's: ``live``, or a network camera's
        ``connecting`` or ``reconnecting``."""
        return self._source.state if self._source is not None else live.CLOSED

    @property
    def reconnects(self) -> int:
        """Times a network camera came back after a drop, over every opening."""
        current = self._source.reconnects if self._source is not None else 0
        return self._reconnects + current

    @property
    def error(self) -> str | None:
        """Why the open source is not live (a network camera's last failure)."""
        return self._source.error if self._source is not None else None

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    @property
    def stream_info(self) -> StreamInfo | None:
        """What the open source receives (codec, H.264 profile), once known."""
        return self._source.stream_info if self._source is not None else None

    def subscribe(self) -> ViewerTrack:
        track = ViewerTrack(self)
        self._viewers.add(track)
        self._start()
        self._demand()
        return track

    def unsubscribe(self, track: ViewerTrack) -> None:
        self._viewers.discard(track)
        self._demand()
        self._idle()

    def listen(self, listener: PacketSink) -> None:
        """Packets for ``listener`` (opening the source if need be); its ``on_stream``
        hears at once what the open source receives."""
        self._listeners.add(listener)
        self._start()
        info = self.stream_info
        if info is not None:
            listener.on_stream(info)

    def unlisten(self, listener: PacketSink) -> None:
        self._listeners.discard(listener)
        self._idle()

    def hear(self, hearer: live.AudioSink) -> None:
        """The camera's audio for ``hearer`` (opening the source if need be); its
        ``on_audio(None)`` says the source has closed for good."""
        self._hearers.add(hearer)
        self._start()
        self._demand()

    def unhear(self, hearer: live.AudioSink) -> None:
        self._hearers.discard(hearer)
        self._demand()
        self._idle()

    def _demand(self) -> None:
        """Decode only while frames are wanted (a source with packets may not need to),
        and the audio only while someone listens."""
        if self._source is not None:
            self._source.set_decoding(bool(self._viewers))
            self._source.hear(self if self._hearers else None)

    # -- AudioSink: the open source's audio, to every hearer ------------------------------

    def on_audio(self, frame: av.AudioFrame | None) -> None:
        for hearer in list(self._hearers):
            hearer.on_audio(frame)

    # -- PacketSink: the open source's packets, to every listener ------------------------

    def on_stream(self, info: StreamInfo) -> None:
        for listener in list(self._listeners):
            listener.on_stream(info)

    def on_packet(self, packet: av.Packet[Any]) -> None:
        for listener in list(self._listeners):
            listener.on_packet(packet)

    async def _run(self) -> None:
        try:
            source = await self._opener()
        except SourceError as exc:
            logger.error("%s", exc)
            self._end_users()
            return
        self.opens += 1
        self.is_open = True
        self._source = source
        source.feed(self)
        self._demand()
        try:
            while True:
                frame = await source.read()
                self.frames_captured += 1
                for viewer in list(self._viewers):
                    viewer.offer(frame)
        except SourceError as exc:
            logger.error("%s", exc)
            self._end_users()
        finally:
            self.is_open = False
            self._source = None
            source.feed(None)
            source.hear(None)
            self._reconnects += source.reconnects
            # Shielded so that a cancelled capture still releases the device.
            await asyncio.shield(source.close())
            logger.info("camera closed%s", f": {self.name}" if self.name else "")

    def _end_users(self) -> None:
        for viewer in list(self._viewers):
            viewer.offer(None)
        self.on_audio(None)

    def _forget_users(self) -> None:
        self._viewers.clear()
        self._hearers.clear()
