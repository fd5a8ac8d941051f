"""Low-latency video jitter buffer for aiortc 1.16.0: release a frame when its last packet arrives.

Stock aiortc 1.16.0 (``aiortc/jitterbuffer.py``, used by ``RTCRtpReceiver._handle_rtp_packet``)
finds the end of a video frame only by seeing the RTP timestamp change: a frame goes to the
decoder when the first packet of the *next* frame arrives. That adds one frame interval
(33 ms at 30 fps) to every frame. Senders set the RTP marker bit on a frame's last packet
(RFC 3550 5.1; aiortc's ``RTCRtpSender`` does), so a frame is complete as soon as every
sequence number from its first packet up to its marker packet is there.

``LowLatencyJitterBuffer`` keeps the stock ring buffer and its rules (timestamp change ends a
frame; head-of-line wait so that aiortc's NACKs can repair a gap; reset and PLI when a packet
is far out of order; ``smart_remove`` and PLI on overflow) and adds the marker rule. It also
checks a frame's start: a frame is released only if the packet just before it (sequence
number minus one) was received and is the previous frame's end (marker set or another
timestamp). A frame whose start cannot be known (after a reset or an overflow that skipped
lost packets) is dropped, never released; aiortc has already asked for a keyframe then.
Nothing precedes the very first packet received: as stock aiortc does, it is taken as a
frame start (our sender starts every viewer at a keyframe's first packet); if it was not,
the decoder fails and aiortc's decode-error PLI recovers, as without this module.

``add()`` still returns at most one frame per packet (that is how the receiver calls it), so
frames that complete together behind a repaired gap leave one per following packet.

``install()`` swaps the name ``JitterBuffer`` in ``aiortc.rtcrtpreceiver`` for a factory that
builds this class for video; audio keeps stock aiortc's buffer (it uses ``prefetch``).
"""

from __future__ import annotations

import logging

import aiortc
import aiortc.rtcrtpreceiver
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add

from common import aiortc_version

logger = logging.getLogger(__name__)


class LowLatencyJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus: a frame leaves as soon as its marker packet completes
    it. Frames leave in sequence order, once each, and only when complete."""

    def __init__(self, capacity: int, prefetch: int = 0, is_video: bool = False) -> None:
        if prefetch:
            # Prefetch holds frames back on purpose (audio); that defeats this class.
            raise ValueError("LowLatencyJitterBuffer releases frames at once: prefetch must be 0")
        super().__init__(capacity, prefetch=0, is_video=is_video)
        # The packet with sequence number origin - 1, if it was received: it tells whether the
        # packet at the origin starts a frame.
        self._before: RtpPacket | None = None
        # True while the very first packet received is still the origin. Nothing precedes it,
        # so, as in stock aiortc, it is taken as a frame start (the sender starts at one).
        self._trust_origin = False

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Stock ``JitterBuffer.add``: returns (send a PLI, the next complete frame or None)."""
        pli_flag = False
        if self._origin is None:
            self._origin = packet.sequence_number
            self._before = None
            self._trust_origin = True
            delta = 0
            misorder = 0
        else:
            delta = uint16_add(packet.sequence_number, -self._origin)
            misorder = uint16_add(self._origin, -packet.sequence_number)

        if misorder < delta:
            if misorder >= MAX_MISORDER:
                # Far behind the origin: stock aiortc starts over and asks for a keyframe.
                self.remove(self.capacity)
                self._restart(packet.sequence_number)
                delta = misorder = 0
                if self._is_video:
                    pli_flag = True
            else:
                # Already released or given up (a duplicate or a late retransmission). Stock
                # returns nothing here; a complete frame still waiting may go (one per call).
                return pli_flag, self._remove_frame(packet.sequence_number)

        if delta >= self.capacity:
            # Stock: drop the oldest frames until the packet fits, and ask for a keyframe.
            excess = delta - self.capacity + 1
            if self.smart_remove(excess):
                self._restart(packet.sequence_number)
            if self._is_video:
                pli_flag = True

        self._packets[packet.sequence_number % self._capacity] = packet
        return pli_flag, self._remove_frame(packet.sequence_number)

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        """Take the oldest frame out if it is complete; return it if its start is known.

        Only the oldest frame is looked at, so that a gap waits for aiortc's NACK to repair
        it (as in stock aiortc) and frames stay in order. Frames with an unknown start are
        dropped so that what follows them can go.
        """
        while True:
            length = self._head_frame_length()
            if length is None:
                return None
            packets = [self._packets[(self._origin + i) % self._capacity] for i in range(length)]
            first = packets[0]
            assert first is not None
            starts = self._head_starts_frame(first)
            self.remove(length)
            if starts:
                return JitterFrame(
                    data=b"".join(p._data for p in packets),  # type: ignore[union-attr]
                    timestamp=first.timestamp,
                )
            logger.debug(
                "dropped the frame at RTP timestamp %d: its start is unknown", first.timestamp
            )

    def _head_frame_length(self) -> int | None:
        """How many packets the frame at the origin has, once it is complete; else None.

        It ends at its marker packet (the addition) or before a packet with another
        timestamp (stock aiortc), with no sequence number missing in between.
        """
        first = self._packets[self._origin % self._capacity]
        if first is None:
            return None
        for count in range(self._capacity):
            packet = self._packets[(self._origin + count) % self._capacity]
            if packet is None:
                return None
            if packet.timestamp != first.timestamp:
                return count
            if packet.marker:
                return count + 1
        return None

    def _head_starts_frame(self, first: RtpPacket) -> bool:
        """Whether the packet at the origin is its frame's first packet."""
        if self._trust_origin:
            return True
        before = self._before  # the packet at origin - 1, if received
        return before is not None and (bool(before.marker) or before.timestamp != first.timestamp)

    def _pop(self) -> None:
        """Empty the origin's slot and move the origin on, remembering what was there."""
        pos = self._origin % self._capacity
        self._before = self._packets[pos]
        self._packets[pos] = None
        self._origin = uint16_add(self._origin, 1)
        self._trust_origin = False

    def _restart(self, sequence_number: int) -> None:
        """The origin jumps (stock reset or overflow): nothing is known before it."""
        self._origin = sequence_number
        self._before = None
        self._trust_origin = False

    def remove(self, count: int) -> None:
        """Stock ``remove``, remembering the last packet removed."""
        assert count <= self._capacity
        for _ in range(count):
            self._pop()

    def smart_remove(self, count: int) -> bool:
        """Stock ``smart_remove`` (drop at least ``count`` packets, up to a timestamp change),
        remembering the last packet removed."""
        timestamp = None
        for i in range(self._capacity):
            packet = self._packets[self._origin % self._capacity]
            if packet is not None:
                if i >= count and timestamp != packet.timestamp:
                    break
                timestamp = packet.timestamp
            self._pop()
            if i == self._capacity - 1:
                return True
        return False


def _receiver_jitter_buffer(
    capacity: int, prefetch: int = 0, is_video: bool = False
) -> JitterBuffer:
    """Stands in for ``JitterBuffer`` in ``aiortc.rtcrtpreceiver``: ours for video only."""
    if is_video and not prefetch:
        return LowLatencyJitterBuffer(capacity, is_video=True)
    return JitterBuffer(capacity, prefetch=prefetch, is_video=is_video)  # aiortc's own


def install() -> None:
    """Make aiortc's ``RTCRtpReceiver`` build a ``LowLatencyJitterBuffer`` for video.

    Idempotent. Affects receivers created afterwards.
    """
    aiortc_version.check(__name__)
    if not installed():
        aiortc.rtcrtpreceiver.JitterBuffer = _receiver_jitter_buffer  # type: ignore[misc,assignment]
        logger.debug("aiortc video receivers release frames at their marker packet")


def installed() -> bool:
    """Whether ``install()`` is in effect."""
    return aiortc.rtcrtpreceiver.JitterBuffer is _receiver_jitter_buffer
