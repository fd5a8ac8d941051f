"""Decode quick frames on the event loop, not in aiortc's decoder thread (aiortc 1.16.0).

aiortc 1.16.0's ``RTCRtpReceiver`` puts each complete frame on a private ``queue.Queue``;
its decoder thread decodes it and hands the picture back with
``asyncio.run_coroutine_threadsafe``: two wake-ups of another core and a task per frame.
At 640x480 H.264 on 2 cores that made complete-to-decoded 1.1 ms for a 0.7 ms decode.

``apply()`` replaces that queue on one receiver of ours, before it starts, with a
``LoopDecoder``: a frame is decoded where aiortc puts it, on the loop, while
``common.loop_budget`` allows (the last decode took at most ``MAX_DECODE_SECONDS`` and
decodes used under 30% of the last second); otherwise in a worker thread of its own. One
decoder serves both, so a stream can move between them at any frame: a frame goes to the
loop only when the worker has nothing left, so pictures keep their order. aiortc's own
decoder thread still starts, waits on this queue and ends the track when aiortc stops it
(it puts None here), as before. A decode error asks for a keyframe as aiortc's thread
does (its private decoder-error event). Each picture's decode time goes to ``clock``
(``frame_timing.FrameClock``) when one is set: the receiver's "decoding" stage. With a
``reader`` set, each picture goes straight to it rather than to the track's queue, where
the reader's task would have taken it on the loop's next turn (on a cold core of these
virtual machines, 0.03-0.06 ms); the track then only ends, as before. Other receivers keep
aiortc's queue.
``tests/test_loop_decode.py`` fails if an upgrade renames the queue, the event or the
track's queue, or stops using them.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import av
from aiortc import RTCRtpReceiver
from aiortc.codecs import get_decoder
from aiortc.codecs.base import Decoder
from aiortc.rtcrtpreceiver import RemoteStreamTrack
from av.frame import Frame

from ..loop_budget import MAX_DECODE_SECONDS, LoopBudget
from . import check, private
from .frame_timing import FrameClock
from .passthrough import QUEUE_ATTRIBUTE, DecoderItem

logger = logging.getLogger(__name__)


class LoopDecoder(queue.Queue[DecoderItem]):
    """A receiver's decoder queue that decodes what is put on it (see the module)."""

    def __init__(
        self,
        output: asyncio.Queue[av.VideoFrame | None],
        error: threading.Event,
        budget: LoopBudget,
    ) -> None:
        """``output``: the track's queue of pictures; ``error``: set on a failed decode."""
        super().__init__()
        self._output = output
        self._error = error
        self._budget = budget
        self._loop = asyncio.get_running_loop()
        self._worker: ThreadPoolExecutor | None = None
        self._pending = 0  # frames handed to the worker and not yet delivered
        self._decoder: Decoder | None = None
        self._codec_name: str | None = None
        self._last_seconds: float | None = None  # the last decode's time
        self.on_loop = 0  # frames decoded on the loop, and in the worker
        self.in_thread = 0
        self.clock: FrameClock | None = None  # told each picture's decode time
        # Given each picture at once (on the loop); it must not raise: on the loop this
        # runs inside aiortc's DTLS transport task.
        self.reader: Callable[[av.VideoFrame], None] | None = None
        self.handed = 0  # pictures given to the reader

    def put(self, item: DecoderItem, block: bool = True, timeout: float | None = None) -> None:
        if item is None:  # aiortc stops: its decoder thread ends the track
            if self._worker is not None:
                self._worker.shutdown(wait=False, cancel_futures=True)
            super().put(None, block, timeout)
            return
        now = time.monotonic()
        if not self._pending and self._budget.allows(self._last_seconds, now):
            pictures, seconds = self._decode(item)
            self._budget.spent(seconds, time.monotonic())
            self.on_loop += 1
            self._deliver(pictures, seconds)
            return
        if self._worker is None:
            self._worker = ThreadPoolExecutor(1, thread_name_prefix="video-decoder-ours")
        self._pending += 1
        self._worker.submit(self._decode_in_worker, item)

    def _decode_in_worker(self, item: DecoderItem) -> None:
        pictures, seconds = self._decode(item)
        self._loop.call_soon_threadsafe(self._delivered_from_worker, pictures, seconds)

    def _delivered_from_worker(self, pictures: list[av.VideoFrame], seconds: float) -> None:
        self._pending -= 1
        self.in_thread += 1
        self._deliver(pictures, seconds)

    def _decode(self, item: DecoderItem) -> tuple[list[av.VideoFrame], float]:
        """Decode one frame, as aiortc's decoder thread does: its pictures, and the
        seconds it took (for the budget and the breakdown)."""
        assert item is not None
        codec, frame = item
        if codec.name != self._codec_name:
            self._decoder = get_decoder(codec)
            self._codec_name = codec.name
        assert self._decoder is not None
        started = time.perf_counter()
        pictures: list[Frame] = []
        try:
            pictures = self._decoder.decode(frame)
        except av.FFmpegError as exc:
            # Keep the decoder: resetting it would fail every frame until a keyframe.
            logger.warning("failed to decode a %s frame: %s", codec.name, exc)
            self._error.set()  # aiortc asks the sender for a keyframe
        except Exception:
            # On the loop this runs inside aiortc's DTLS transport task, which an error
            # would end (and the connection with it): a bad frame costs only itself.
            logger.exception("decoding a %s frame failed", codec.name)
            self._error.set()
        self._last_seconds = seconds = time.perf_counter() - started
        return [p for p in pictures if isinstance(p, av.VideoFrame)], seconds

    def _deliver(self, pictures: list[av.VideoFrame], seconds: float) -> None:
        for picture in pictures:
            if self.clock is not None:
                self.clock.took(picture.pts, seconds)
            if self.reader is None:
                self._output.put_nowait(picture)
                continue
            self.handed += 1
            try:
                self.reader(picture)
            except Exception:  # a bug in the reader must not end the connection
                logger.exception("the decoded frames' reader failed")


def apply(receiver: RTCRtpReceiver, max_seconds: float = MAX_DECODE_SECONDS) -> LoopDecoder:
    """Decode this video receiver's quick frames on the loop; call in the ``track``
    event, before it receives (and before ``passthrough.tap``, which wraps this queue)."""
    check(__name__)
    private(receiver, RTCRtpReceiver, "decoder_queue")  # raises if aiortc renamed it
    track = receiver.track
    error = private(receiver, RTCRtpReceiver, "decoder_error")
    if not isinstance(track, RemoteStreamTrack) or not isinstance(error, threading.Event):
        raise RuntimeError("aiortc changed: RTCRtpReceiver's track or decoder error")
    decoder = LoopDecoder(track._queue, error, LoopBudget(max_seconds))
    setattr(receiver, QUEUE_ATTRIBUTE, decoder)
    logger.debug("video receiver decodes quick frames on the event loop")
    return decoder
