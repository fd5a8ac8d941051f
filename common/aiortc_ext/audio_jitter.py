"""Audio jitter buffer for aiortc 1.16.0: a lost packet is skipped once a few later ones came.

Stock aiortc 1.16.0 gives an audio ``RTCRtpReceiver`` a ``JitterBuffer(capacity=16,
prefetch=4)`` (``aiortc/jitterbuffer.py``) and no NACK generator: audio codecs offer no
``nack`` feedback there, and the sender keeps no retransmission history for them, so a
lost Opus packet never comes. Yet that buffer only releases a packet when it and the four
after it are all there: behind a hole nothing leaves until 16 packets have piled up and
the overflow path drops the oldest, one per packet that arrives, while the buffer stays
full. At 5% loss about 20% of the audio was lost in 120-220 ms chunks
(``tests/test_av_sync.py``: 46 of 60 clicks recorded).

``SkippingAudioBuffer`` keeps the stock delay (a packet leaves when the one ``prefetch``
sequence numbers after it has arrived: 80 ms at 20 ms packets, room for reordering) and
releases packets one by one, each Opus packet being a frame. A missing packet at the head
is given up once ``SKIP_AFTER`` later packets have arrived (60 ms): the Opus decoder
starts again at the next packet (the RTP timestamps say where), so only the lost 20 ms are
missing. A packet arriving after it was given up is dropped, as stock drops any packet
behind its origin.

``apply(receiver)`` gives one audio ``RTCRtpReceiver`` of ours this buffer in place of the
one aiortc made for it (a private attribute, before any packet arrives) and wraps that
receiver's ``_handle_rtp_packet`` (an instance attribute) to hand every packet that is
ready to the decoder, as ``jitterbuffer.apply`` does for video: aiortc takes one frame per
``add()``. Every other receiver keeps stock aiortc's buffer. ``tests/test_audio_jitter.py``
fails if an aiortc upgrade renames the attribute or changes what this relies on.
"""

from __future__ import annotations

import logging

from aiortc import RTCRtpReceiver
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

from . import check, jitterbuffer, private

logger = logging.getLogger(__name__)

SKIP_AFTER = 3  # later packets that must have arrived before a missing one is given up


class SkippingAudioBuffer(JitterBuffer):
    """aiortc's audio jitter buffer with the same delay, where a lost packet holds the ones
    behind it back only until ``skip_after`` of them have arrived. Packets leave in sequence
    order, once each."""

    def __init__(self, capacity: int, prefetch: int, skip_after: int = SKIP_AFTER) -> None:
        if not 0 < skip_after < capacity or prefetch >= capacity:
            raise ValueError("skip_after and prefetch must be below the capacity")
        super().__init__(capacity, prefetch=prefetch)
        self.skip_after = skip_after
        self._newest: int | None = None  # the newest sequence number received
        self.skipped = 0  # sequence numbers given up (lost, or too late to be waited for)
        self.overflowed = 0  # packets dropped because a far newer one arrived
        self.released_payload_type: int | None = None  # of the last packet released

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Stock ``JitterBuffer.add``: returns (send a PLI: never for audio, the next packet
        that is ready or None)."""
        sequence_number = packet.sequence_number
        if self._origin is None or self._newest is None:
            self._origin = self._newest = sequence_number
        else:
            delta = uint16_add(sequence_number, -self._origin)
            misorder = uint16_add(self._origin, -sequence_number)
            if misorder < delta:
                if misorder < MAX_MISORDER:
                    # Behind the origin: released already, or given up. Stock drops it too.
                    return False, self.next_frame()
                # Far behind: the stream started over (stock resets the same way).
                self.remove(self.capacity)
                self._origin = self._newest = sequence_number
            elif delta >= self.capacity:
                # Far ahead: drop the oldest until it fits (stock: smart_remove).
                excess = min(delta - self.capacity + 1, self.capacity)
                self.overflowed += sum(
                    self._packets[uint16_add(self._origin, i) % self.capacity] is not None
                    for i in range(excess)
                )
                self.remove(excess)
                if excess == self.capacity:
                    self._origin = sequence_number  # nothing left before it
        self._packets[sequence_number % self.capacity] = packet
        if uint16_gt(sequence_number, self._newest):
            self._newest = sequence_number
        return False, self.next_frame()

    def next_frame(self) -> JitterFrame | None:
        """The next packet that is ready, as a frame; None while the head must wait."""
        while self._origin is not None and self._newest is not None:
            span = uint16_add(self._newest, -self._origin)
            if span >= self.capacity:
                return None  # nothing received since a reset
            head = self._packets[self._origin % self.capacity]
            if head is not None:
                if span < self._prefetch:
                    return None
                self.remove(1)
                self.released_payload_type = head.payload_type
                # aiortc's receiver sets _data (the depayloaded payload) on each packet
                return JitterFrame(data=head._data, timestamp=head.timestamp)  # type: ignore[attr-defined]  # set by aiortc, not declared
            later = sum(
                self._packets[uint16_add(self._origin, i) % self.capacity] is not None
                for i in range(1, span + 1)
            )
            if later < self.skip_after:
                return None
            logger.debug("gave up audio packet %d: %d later ones arrived", self._origin, later)
            self.remove(1)
            self.skipped += 1
        return None


def apply(receiver: RTCRtpReceiver) -> SkippingAudioBuffer:
    """Give this audio receiver a ``SkippingAudioBuffer`` (stock capacity and prefetch),
    and hand every packet that is ready to its decoder after each packet; call before it
    receives."""
    check(__name__)
    stock = private(receiver, RTCRtpReceiver, "jitter_buffer")
    if not isinstance(stock, JitterBuffer) or stock._is_video:
        raise ValueError("only an audio receiver's jitter buffer is replaced here")
    if private(receiver, RTCRtpReceiver, "nack_generator") is not None:
        raise RuntimeError("aiortc changed: its audio receiver NACKs; re-check this module")
    buffer = SkippingAudioBuffer(stock.capacity, prefetch=stock._prefetch)
    setattr(receiver, jitterbuffer.ATTRIBUTE, buffer)
    jitterbuffer.drain_after_each_packet(receiver, buffer)
    logger.debug("audio receiver skips lost packets after %d later ones", buffer.skip_after)
    return buffer


def applied(receiver: RTCRtpReceiver) -> bool:
    return isinstance(getattr(receiver, jitterbuffer.ATTRIBUTE, None), SkippingAudioBuffer)
