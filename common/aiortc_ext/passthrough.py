"""Encoded frames straight from aiortc's receiver, before (or instead of) decoding.

aiortc 1.16.0's ``RTCRtpReceiver`` puts each complete frame from its jitter buffer on a
private ``queue.Queue`` read by its decoder thread, and offers no way to see them. For
lossless, nearly free recording (``--record-mode copy``) ``tap()`` wraps that queue on
one receiver of ours, before it starts, in one that also hands every frame to us, and
can skip decoding; other receivers keep aiortc's queue.
``tests/test_passthrough.py`` fails if an aiortc upgrade renames or bypasses the queue.
"""

from __future__ import annotations

import logging
import queue
from collections.abc import Callable

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters

from . import check, private

logger = logging.getLogger(__name__)

QUEUE_ATTRIBUTE = "_RTCRtpReceiver__decoder_queue"

# (codec name in lower case, the frame's bytes, its RTP timestamp)
Tap = Callable[[str, bytes, int], None]


# What aiortc's receiver puts on its decoder queue: a frame and its codec; None stops it.
DecoderItem = tuple[RTCRtpCodecParameters, JitterFrame] | None


class TapQueue(queue.Queue[DecoderItem]):
    """aiortc's decoder queue, with a tap; ``decode=False`` keeps frames from the decoder.
    It wraps the queue installed before it (aiortc's, or ``loop_decode``'s), which gets
    what is to be decoded, and which aiortc's decoder thread reads through it."""

    def __init__(self, tap: Tap, decode: bool, inner: queue.Queue[DecoderItem]) -> None:
        super().__init__()
        self._tap = tap
        self._decode = decode
        self.inner = inner

    def put(self, item: DecoderItem, block: bool = True, timeout: float | None = None) -> None:
        if item is not None:
            codec, frame = item
            self._tap(codec.name.lower(), frame.data, frame.timestamp)
            if not self._decode:
                return
        self.inner.put(item, block, timeout)

    def get(self, block: bool = True, timeout: float | None = None) -> DecoderItem:
        return self.inner.get(block, timeout)


def tap(receiver: RTCRtpReceiver, callback: Tap, decode: bool) -> None:
    """Install the tap; call before the connection starts receiving."""
    check(__name__)
    inner = private(receiver, RTCRtpReceiver, "decoder_queue")  # raises if aiortc renamed it
    if not isinstance(inner, queue.Queue):
        raise RuntimeError("aiortc changed: RTCRtpReceiver's decoder queue")
    setattr(receiver, QUEUE_ATTRIBUTE, TapQueue(callback, decode, inner))
