"""When each video frame's first packet arrived, and when it was complete (aiortc 1.16.0).

To show where a receiver's milliseconds go, each decoded frame gets three times on the
monotonic clock: its first RTP packet arrived (any of its packets, a retransmission
too), it was complete (the jitter buffer released it to the decoder), and its decoded
picture came out (the caller says when: ``FrameClock.decoded``); and, when our decoder
(``loop_decode``) decoded it, the decoder's own time (``FrameClock.took``).

aiortc 1.16.0 has no hook for either of the first two. ``apply()`` wraps two per-object
callables of one video ``RTCRtpReceiver`` of ours (instance attributes, as
``jitterbuffer.apply`` does; every other receiver is untouched):

- ``_handle_rtp_packet``: notes when each RTP timestamp is first seen;
- its private ``TimestampMapper``'s ``map``: aiortc calls it exactly once for each
  complete frame, as it hands it to the decoder (in ``_handle_rtp_packet`` and in our
  ``jitterbuffer.drain``), with the frame's RTP timestamp, and returns the one the decoded
  picture will carry as its ``pts``; so it marks completion and links the two.

A frame that is never completed or decoded (lost, skipped to a keyframe) leaves its note
behind; only the newest ``FRAMES_KEPT`` are kept. ``tests/test_breakdown.py`` fails if an
upgrade renames the mapper or stops calling it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import TimestampMapper
from aiortc.rtp import RtpPacket

from . import check, private

logger = logging.getLogger(__name__)

FRAMES_KEPT = 128  # about four seconds at 30 fps: frames in flight, and stale notes


@dataclass(frozen=True)
class FrameTimes:
    """One decoded frame's times (``time.monotonic()``)."""

    first_packet: float
    complete: float
    decoded: float
    decoding: float | None = None  # seconds the decoder took (part of complete to decoded)

    @property
    def receive_to_complete(self) -> float:
        return self.complete - self.first_packet

    @property
    def complete_to_decoded(self) -> float:
        return self.decoded - self.complete


class FrameClock:
    """One receiver's notes, RTP timestamp -> first packet, and decoded pts -> (first
    packet, complete) and -> the decoder's time; all bounded."""

    def __init__(self) -> None:
        self._arrivals: dict[int, float] = {}
        self._completed: dict[int, tuple[float, float]] = {}
        self._decoding: dict[int, float] = {}

    def arrived(self, timestamp: int) -> None:
        if timestamp not in self._arrivals:
            self._arrivals[timestamp] = time.monotonic()
            _bound(self._arrivals)

    def completed(self, timestamp: int, pts: int) -> None:
        first = self._arrivals.pop(timestamp, None)
        if first is not None:
            self._completed[pts] = (first, time.monotonic())
            _bound(self._completed)

    def took(self, pts: int | None, seconds: float) -> None:
        """The decoder took ``seconds`` for the picture with this ``pts``."""
        if pts is not None:
            self._decoding[pts] = seconds
            _bound(self._decoding)

    def decoded(self, pts: int | None, at: float | None = None) -> FrameTimes | None:
        """The times of the frame decoded (now, or ``at``) with this ``pts``; None for a
        frame not seen complete."""
        if pts is None:
            return None
        decoding = self._decoding.pop(pts, None)
        noted = self._completed.pop(pts, None)
        if noted is None:
            return None
        return FrameTimes(*noted, decoded=time.monotonic() if at is None else at, decoding=decoding)


def _bound(notes: dict[int, Any]) -> None:
    while len(notes) > FRAMES_KEPT:
        del notes[next(iter(notes))]  # the oldest note


class _TimedMap:
    """A receiver's ``TimestampMapper.map`` that also notes each frame as complete."""

    def __init__(self, stock: Callable[[int], int], clock: FrameClock) -> None:
        self._stock = stock
        self._clock = clock

    def __call__(self, timestamp: int) -> int:
        pts = self._stock(timestamp)
        self._clock.completed(timestamp, pts)
        return pts


def _mapper(receiver: RTCRtpReceiver) -> TimestampMapper:
    mapper = private(receiver, RTCRtpReceiver, "timestamp_mapper")
    if not isinstance(mapper, TimestampMapper):
        raise RuntimeError("aiortc changed: RTCRtpReceiver's timestamp mapper")
    return mapper


def apply(receiver: RTCRtpReceiver) -> FrameClock:
    """Time this video receiver's frames; call before it receives."""
    check(__name__)
    mapper = _mapper(receiver)
    clock = FrameClock()
    handle = receiver._handle_rtp_packet

    async def _handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        clock.arrived(packet.timestamp)
        await handle(packet, arrival_time_ms)

    # instance attributes: aiortc looks both up on the object
    receiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]  # per-object hook
    mapper.map = _TimedMap(mapper.map, clock)  # type: ignore[method-assign]  # per-object hook
    logger.debug("video receiver's frames are timed")
    return clock


def applied(receiver: RTCRtpReceiver) -> bool:
    return isinstance(vars(_mapper(receiver)).get("map"), _TimedMap)
