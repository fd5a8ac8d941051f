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

``add()`` still returns at most one frame per packet: that is all aiortc's receiver takes
from it. Frames that complete together (behind a repaired gap) would then leave one per
following packet, and at a low bitrate (one packet per frame) they never catch up: every
repaired loss added a frame interval of delay for good (5% loss, 60 s at 250 kbit/s:
median latency 38 ms, p95 73 ms without this; 5-6 ms and 24-39 ms with it). So ``apply()`` also wraps that receiver's ``_handle_rtp_packet`` (an instance
attribute: other receivers are untouched) to hand the rest to the decoder at once,
``drain()``, as aiortc hands over the one ``add()`` returns.

Giving up a hole (``nack_retry.NackRetry`` decides when: the packet is older than the
sender's retransmission history, or its retries are used up): ``give_up()`` skips the
missing packets at the head instead of holding every later frame until ~512 packets overflow
the buffer (seconds). What follows a lost frame cannot be decoded, so from then on frames
wait for a keyframe: ``add()`` drops the frames before it and jumps to the first packet of a
keyframe as soon as one is in the buffer (VP8 and H.264 keyframe starts are recognised from
the packet itself, so the frame before it need not be complete). The stock overflow and
reset paths wait for a keyframe the same way.

``apply(receiver)`` gives one video ``RTCRtpReceiver`` of ours this buffer in place of the
one aiortc made for it (a private attribute, before any packet arrives); every other
receiver in the process keeps stock aiortc's (our audio receivers get ``audio_jitter``'s,
which hands frames over through ``drain_after_each_packet`` too).
``tests/test_jitterbuffer.py`` fails if an aiortc upgrade renames the attribute or changes
what ``add()`` relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Protocol

from aiortc import RTCRtpCodecParameters, RTCRtpReceiver
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import MAX_MISORDER, JitterBuffer, JitterFrame
from aiortc.rtp import RtpPacket
from aiortc.utils import uint16_add, uint16_gt

from . import check, private

logger = logging.getLogger(__name__)

ATTRIBUTE = "_RTCRtpReceiver__jitter_buffer"

VP8_START_CODE = b"\x9d\x01\x2a"  # in every VP8 keyframe's header (RFC 6386 9.1)
H264_START_CODE = b"\x00\x00\x00\x01"  # aiortc's depayloader writes this before each NAL
H264_IDR, H264_SPS = 5, 7


def vp8_keyframe_start(packet: RtpPacket) -> bool:
    """The packet begins a VP8 keyframe: partition 0 starts here (payload descriptor S=1,
    PID=0) and the frame tag says keyframe (RFC 7741 4.3, RFC 6386 9.1)."""
    try:
        descriptor, data = VpxPayloadDescriptor.parse(packet.payload)
    except ValueError:
        return False
    return (
        bool(descriptor.partition_start)
        and descriptor.partition_id == 0
        and len(data) >= 6
        and not data[0] & 1
        and data[3:6] == VP8_START_CODE
    )


def h264_keyframe_start(data: bytes) -> bool:
    """The depayloaded packet begins an H.264 keyframe: it carries a sequence parameter set
    (x264 and browsers send SPS/PPS in front of each IDR picture), or the first slice of an
    IDR picture (first_mb_in_slice = 0: the slice header's first bit is 1)."""
    for nal in data.split(H264_START_CODE)[1:]:
        if not nal:
            continue
        kind = nal[0] & 0x1F
        if kind == H264_SPS:
            return True
        if kind == H264_IDR:
            return len(nal) > 1 and bool(nal[1] & 0x80)
    return False


class LowLatencyJitterBuffer(JitterBuffer):
    """aiortc's video jitter buffer, plus: a frame leaves as soon as its marker packet completes
    it. Frames leave in sequence order, once each, and only when complete."""

    def __init__(
        self,
        capacity: int,
        prefetch: int = 0,
        is_video: bool = False,
        codecs: Mapping[int, RTCRtpCodecParameters] | None = None,
    ) -> None:
        """``codecs`` (payload type -> codec: the receiver's own table, filled when it
        starts) lets the buffer recognise keyframes; without it, a skipped hole only drops
        the frames whose start is unknown, as after a stock overflow."""
        if prefetch:
            # Prefetch holds frames back on purpose (audio); that defeats this class.
            raise ValueError("LowLatencyJitterBuffer releases frames at once: prefetch must be 0")
        super().__init__(capacity, prefetch=0, is_video=is_video)
        self._codecs = codecs
        # The packet with sequence number origin - 1, if it was received: it tells whether the
        # packet at the origin starts a frame.
        self._before: RtpPacket | None = None
        # True while the origin is known to start a frame whatever precedes it: the very
        # first packet received (as in stock aiortc: the sender starts at one), or a
        # keyframe's first packet jumped to.
        self._trust_origin = False
        # The newest sequence number received: ahead of the origin while a hole is open.
        self._newest: int | None = None
        # Whether the stream's codec has keyframes we can recognise (VP8, H.264).
        self._keyframes_known = False
        # After a hole was given up (or the stock overflow or reset): frames are dropped
        # until a keyframe starts.
        self.awaiting_keyframe = False
        self.frames_skipped = 0  # complete frames dropped while awaiting a keyframe
        self.released_payload_type: int | None = None  # of the last frame released

    def add(self, packet: RtpPacket) -> tuple[bool, JitterFrame | None]:
        """Stock ``JitterBuffer.add``: returns (send a PLI, the next complete frame or None)."""
        pli_flag = False
        search = False  # look through the buffer for a keyframe start
        self._keyframes_known = self._codec_name(packet) in ("VP8", "H264")
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
                self._newest = None
                delta = misorder = 0
                if self._is_video:
                    pli_flag = True
                    self._await_keyframe()
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
                search = self._await_keyframe()

        self._packets[packet.sequence_number % self._capacity] = packet
        if self._newest is None or uint16_gt(packet.sequence_number, self._newest):
            self._newest = packet.sequence_number
        if self.awaiting_keyframe:
            if self._keyframe_start(packet) and not self._in_head_frame(packet):
                self._jump_to(packet.sequence_number)
            elif search:
                self._jump_to_keyframe()
        return pli_flag, self._remove_frame(packet.sequence_number)

    # --- holes that will not be repaired (nack_retry.NackRetry decides when) ----------------

    def next_frame(self) -> JitterFrame | None:
        """The next complete frame, if one is ready (``add()`` returns only one)."""
        if self._origin is None:
            return None
        return self._remove_frame(self._origin)

    def head_hole(self) -> int | None:
        """The first missing sequence number from the origin on, when a newer packet has
        arrived: it holds the oldest frame, and every later one, back."""
        if self._origin is None or self._newest is None:
            return None
        span = uint16_add(self._newest, -self._origin)
        if span >= self._capacity:
            return None  # everything received has left the buffer
        for offset in range(span):
            if self._packets[(self._origin + offset) % self._capacity] is None:
                return uint16_add(self._origin, offset)
        return None

    def waits_for(self, sequence_number: int) -> bool:
        """Whether the buffer still needs this packet: not yet received, released or
        skipped."""
        if self._origin is None:
            return True
        if uint16_add(sequence_number, -self._origin) >= self._capacity:
            return False  # behind the origin
        return self._packets[sequence_number % self._capacity] is None

    def keyframe_after_hole(self, hole: int) -> bool:
        """Whether a complete keyframe waits behind ``hole`` (the first: ``head_hole()``).
        What the hole holds back is older than that keyframe and not needed to decode it:
        skipping to it beats any repair (libwebrtc's frame buffer decodes such a keyframe
        at once too)."""
        if self._newest is None or not self._keyframes_known:
            return False
        for offset in range(1, uint16_add(self._newest, -hole) + 1):
            packet = self._packets[(hole + offset) % self._capacity]
            if (
                packet is not None
                and self._keyframe_start(packet)
                and self._frame_length(packet.sequence_number) is not None
            ):
                return True
        return False

    def give_up(self) -> int:
        """Skip the first hole (those packets will not come) and the incomplete frame it
        is in; frames await a keyframe from then on. Returns how many sequence numbers
        were missing."""
        hole = self.head_hole()
        if hole is None:
            return 0
        self.remove(uint16_add(hole, -self._head))  # the head frame's packets before it
        skipped = 0
        while self._packets[self._head % self._capacity] is None and self.head_hole() is not None:
            self._pop()
            skipped += 1
        if self._await_keyframe():
            self._jump_to_keyframe()
        return skipped

    def _await_keyframe(self) -> bool:
        """Frames wait for a keyframe (only if we can recognise one); True if they do."""
        if self._codecs is not None and self._keyframes_known:
            self.awaiting_keyframe = True
        return self.awaiting_keyframe

    def _codec_name(self, packet: RtpPacket) -> str | None:
        codec = self._codecs.get(packet.payload_type) if self._codecs is not None else None
        return codec.name if codec is not None else None

    def _keyframe_start(self, packet: RtpPacket) -> bool:
        name = self._codec_name(packet)
        if name == "VP8":
            return vp8_keyframe_start(packet)
        if name == "H264":
            return h264_keyframe_start(getattr(packet, "_data", b""))
        return False

    def _in_head_frame(self, packet: RtpPacket) -> bool:
        """The packet belongs to the frame whose first packet is at the origin (an H.264
        keyframe's IDR slice after its SPS: the frame starts at the SPS)."""
        head = self._packets[self._head % self._capacity]
        return (
            head is not None
            and head.sequence_number != packet.sequence_number
            and head.timestamp == packet.timestamp
        )

    def _jump_to_keyframe(self) -> None:
        """Jump to the first keyframe start in the buffer, if there is one."""
        if self._origin is None or self._newest is None:
            return
        span = uint16_add(self._newest, -self._origin)
        if span >= self._capacity:
            return  # everything received has left the buffer
        for offset in range(span + 1):
            packet = self._packets[(self._origin + offset) % self._capacity]
            if packet is not None and self._keyframe_start(packet):
                self._jump_to(packet.sequence_number)
                return

    def _jump_to(self, sequence_number: int) -> None:
        """Drop everything before the keyframe that starts at ``sequence_number``."""
        delta = uint16_add(sequence_number, -self._head)
        if delta >= self._capacity:
            return  # behind the origin: a late copy
        self.remove(delta)
        self._trust_origin = True  # a keyframe's first packet: its frame starts here

    @property
    def _head(self) -> int:
        """The origin's sequence number; set once the first packet arrived."""
        assert self._origin is not None
        return self._origin

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
            packets = [self._packets[(self._head + i) % self._capacity] for i in range(length)]
            first = packets[0]
            assert first is not None
            starts = self._head_starts_frame(first)
            self.remove(length)
            if starts and self.awaiting_keyframe:
                if not self._keyframe_start(first):
                    self.frames_skipped += 1
                    logger.debug(
                        "dropped the frame at RTP timestamp %d: awaiting a keyframe",
                        first.timestamp,
                    )
                    continue
                self.awaiting_keyframe = False
            if starts:
                self.released_payload_type = first.payload_type
                # aiortc's receiver sets _data (the depayloaded payload) on each packet
                data = b"".join(p._data for p in packets if p is not None)  # type: ignore[attr-defined]  # set by aiortc, not declared
                return JitterFrame(data=data, timestamp=first.timestamp)
            logger.debug(
                "dropped the frame at RTP timestamp %d: its start is unknown", first.timestamp
            )

    def _head_frame_length(self) -> int | None:
        """How many packets the frame at the origin has, once it is complete; else None."""
        return self._frame_length(self._head)

    def _frame_length(self, start: int) -> int | None:
        """How many packets the frame whose first packet is ``start`` has, once it is
        complete; else None.

        It ends at its marker packet (the addition) or before a packet with another
        timestamp (stock aiortc), with no sequence number missing in between.
        """
        first = self._packets[start % self._capacity]
        if first is None:
            return None
        for count in range(self._capacity):
            packet = self._packets[(start + count) % self._capacity]
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
        pos = self._head % self._capacity
        self._before = self._packets[pos]
        self._packets[pos] = None
        self._origin = uint16_add(self._head, 1)
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
            packet = self._packets[self._head % self._capacity]
            if packet is not None:
                if i >= count and timestamp != packet.timestamp:
                    break
                timestamp = packet.timestamp
            self._pop()
            if i == self._capacity - 1:
                return True
        return False


def apply(receiver: RTCRtpReceiver) -> None:
    """Give this video receiver a ``LowLatencyJitterBuffer``, and hand every frame that
    is ready to its decoder after each packet; call before it receives."""
    check(__name__)
    stock = private(receiver, RTCRtpReceiver, "jitter_buffer")
    if not isinstance(stock, JitterBuffer) or not stock._is_video:
        raise ValueError("only a video receiver's jitter buffer is replaced")
    codecs = private(receiver, RTCRtpReceiver, "codecs")  # filled when it starts receiving
    if not isinstance(codecs, dict):
        raise RuntimeError("aiortc changed: RTCRtpReceiver's codec table is not a dict")
    buffer = LowLatencyJitterBuffer(stock.capacity, is_video=True, codecs=codecs)
    setattr(receiver, ATTRIBUTE, buffer)
    drain_after_each_packet(receiver, buffer)
    logger.debug("video receiver releases frames at their marker packet")


class Releasing(Protocol):
    """A replaced jitter buffer that can hand over every frame that is ready."""

    released_payload_type: int | None

    def next_frame(self) -> JitterFrame | None: ...


def drain_after_each_packet(receiver: RTCRtpReceiver, buffer: Releasing) -> None:
    """Wrap this receiver's ``_handle_rtp_packet`` (an instance attribute: other receivers
    are untouched) to hand every frame ``buffer`` has ready to the decoder after each
    packet; aiortc 1.16 takes one per ``add()``."""
    for name in ("codecs", "timestamp_mapper", "decoder_queue", "decoder_thread"):
        private(receiver, RTCRtpReceiver, name)  # hand_over() needs them: raises if renamed
    handle = receiver._handle_rtp_packet

    async def _handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
        await handle(packet, arrival_time_ms)
        hand_over(receiver, buffer)

    # an instance attribute: aiortc's transport looks it up on the object (rtcdtlstransport)
    receiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]  # per-object hook


def drain(receiver: RTCRtpReceiver) -> int:
    """Hand the frames that are ready to the receiver's decoder, as aiortc 1.16's
    ``_handle_rtp_packet`` does with the one ``add()`` returns; returns how many."""
    buffer = buffer_of(receiver)
    return 0 if buffer is None else hand_over(receiver, buffer)


def hand_over(receiver: RTCRtpReceiver, buffer: Releasing) -> int:
    """Put every frame ``buffer`` has ready on the receiver's decoder queue (mapped
    timestamps, as aiortc does); returns how many."""
    codecs = private(receiver, RTCRtpReceiver, "codecs")
    assert isinstance(codecs, dict)
    handed = 0
    while (frame := buffer.next_frame()) is not None:
        codec = codecs.get(buffer.released_payload_type)
        if codec is None or not private(receiver, RTCRtpReceiver, "decoder_thread"):
            continue  # stock drops frames while it does not decode
        mapper = private(receiver, RTCRtpReceiver, "timestamp_mapper")
        frame.timestamp = mapper.map(frame.timestamp)  # type: ignore[attr-defined]  # aiortc's TimestampMapper
        private(receiver, RTCRtpReceiver, "decoder_queue").put((codec, frame))  # type: ignore[attr-defined]  # a queue.Queue
        handed += 1
    return handed


def applied(receiver: RTCRtpReceiver) -> bool:
    return isinstance(getattr(receiver, ATTRIBUTE, None), LowLatencyJitterBuffer)


def buffer_of(receiver: RTCRtpReceiver) -> LowLatencyJitterBuffer | None:
    """This receiver's buffer, if ``apply()`` gave it one."""
    buffer = getattr(receiver, ATTRIBUTE, None)
    return buffer if isinstance(buffer, LowLatencyJitterBuffer) else None
