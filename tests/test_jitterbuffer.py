"""common.aiortc_ext.jitterbuffer: video frames leave aiortc's jitter buffer at their marker
packet, complete, once, in order; aiortc's loss recovery (NACK wait, PLI) is kept; apply()
still reaches aiortc's RTCRtpReceiver, and only the receiver it is given."""

from __future__ import annotations

import hashlib
import logging
import queue
import types
from dataclasses import dataclass

import aiortc
import pytest
from aiortc.codecs import depayload
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.jitterbuffer import JitterBuffer, JitterFrame
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket
from hypothesis import given, settings
from hypothesis import strategies as st

from common.aiortc_ext import AIORTC_VERSION, jitterbuffer
from common.aiortc_ext.jitterbuffer import LowLatencyJitterBuffer

VP8 = RTCRtpCodecParameters(mimeType="video/VP8", clockRate=90000, payloadType=96)
H264 = RTCRtpCodecParameters(mimeType="video/H264", clockRate=90000, payloadType=102)
CAPACITY = 512  # what aiortc 1.16's RTCRtpReceiver gives video
TS_STEP = 3000  # 30 fps at 90 kHz
SSRC = 0x1234ABCD


@dataclass
class Frame:
    index: int
    timestamp: int
    data: bytes  # the encoded frame as the decoder must get it
    packets: list[RtpPacket]


def arrive(packet: RtpPacket, codec: RTCRtpCodecParameters = VP8) -> RtpPacket:
    """The packet as aiortc's receiver hands it to the jitter buffer: parsed off the wire,
    with ``_data`` depayloaded (RTCRtpReceiver._handle_rtp_packet)."""
    parsed = RtpPacket.parse(packet.serialize())
    parsed._data = depayload(codec, parsed.payload) if parsed.payload else b""  # type: ignore[attr-defined]
    return parsed


def frame_bytes(index: int, length: int) -> bytes:
    seed = hashlib.sha256(index.to_bytes(4, "big")).digest()
    return (seed * (length // len(seed) + 1))[:length]


def vp8_stream(
    sizes: list[int],
    first_seq: int = 1000,
    first_ts: int = 90000,
    first_index: int = 0,
    chunk: int = 40,
) -> list[Frame]:
    """Frames of ``sizes[i]`` packets each, packetized like aiortc's VP8 encoder: a payload
    descriptor with the picture id, S=1 on the first packet; marker on the last."""
    frames, seq = [], first_seq
    for n, size in enumerate(sizes):
        index = first_index + n
        timestamp = (first_ts + n * TS_STEP) & 0xFFFFFFFF
        data = frame_bytes(index, size * chunk - index % chunk)  # last chunk shorter
        packets = []
        for i in range(size):
            descriptor = VpxPayloadDescriptor(
                partition_start=int(i == 0), partition_id=0, picture_id=index & 0x7FFF
            )
            packets.append(
                RtpPacket(
                    payload_type=VP8.payloadType,
                    marker=int(i == size - 1),
                    sequence_number=seq,
                    timestamp=timestamp,
                    ssrc=SSRC,
                    payload=bytes(descriptor) + data[i * chunk : (i + 1) * chunk],
                )
            )
            seq = (seq + 1) & 0xFFFF
        frames.append(Frame(index, timestamp, data, packets))
    return frames


def following(frames: list[Frame], sizes: list[int]) -> list[Frame]:
    """More frames of the same stream, sent after ``frames``."""
    return vp8_stream(
        sizes,
        first_seq=(frames[-1].packets[-1].sequence_number + 1) & 0xFFFF,
        first_ts=frames[-1].timestamp + TS_STEP,
        first_index=frames[-1].index + 1,
    )


def all_packets(frames: list[Frame]) -> list[RtpPacket]:
    return [p for f in frames for p in f.packets]


def identify(frames: list[Frame], out: JitterFrame) -> int:
    """Which sent frame ``out`` is; fails unless it is byte-identical to one."""
    for frame in frames:
        if out.data == frame.data and out.timestamp == frame.timestamp:
            return frame.index
    raise AssertionError(f"released a frame that was never sent: {len(out.data)} bytes")


def feed(
    buffer: JitterBuffer, frames: list[Frame], packets: list[RtpPacket]
) -> list[tuple[bool, int | None]]:
    """(pli_flag, index of the frame released) for each packet, in delivery order."""
    results = []
    for packet in packets:
        pli, out = buffer.add(arrive(packet))
        results.append((pli, None if out is None else identify(frames, out)))
    return results


def released(results: list[tuple[bool, int | None]]) -> list[int]:
    return [index for _, index in results if index is not None]


def new_buffer() -> LowLatencyJitterBuffer:
    return LowLatencyJitterBuffer(capacity=CAPACITY, is_video=True)


# --- in order -------------------------------------------------------------------------------


def test_in_order_each_frame_leaves_at_its_marker_packet() -> None:
    frames = vp8_stream([1, 3, 5, 2, 4, 1, 1, 2])
    results = feed(new_buffer(), frames, all_packets(frames))
    expected = [(False, f.index if p.marker else None) for f in frames for p in f.packets]
    assert results == expected


def test_stock_aiortc_waits_for_the_next_frame() -> None:
    """What this module changes: stock aiortc releases each frame one packet later, at the
    next frame's first packet, and the last frame not at all."""
    frames = vp8_stream([1, 3, 2])
    stock = feed(JitterBuffer(capacity=CAPACITY, is_video=True), frames, all_packets(frames))
    ours = feed(new_buffer(), frames, all_packets(frames))
    assert stock == [
        (False, None),
        (False, 0),
        (False, None),
        (False, None),
        (False, 1),
        (False, None),
    ]
    assert ours == [(False, 0), (False, None), (False, None), (False, 1), (False, None), (False, 2)]


def test_frames_without_marker_still_leave_at_the_next_timestamp() -> None:
    """Stock aiortc's rule is kept for a sender that never sets the marker bit."""
    frames = vp8_stream([2, 1, 3])
    for packet in all_packets(frames):
        packet.marker = 0
    results = feed(new_buffer(), frames, all_packets(frames))
    assert results == [(False, None)] * 2 + [(False, 0)] + [(False, 1)] + [(False, None)] * 2


def test_h264_frames_leave_at_their_marker_packet() -> None:
    """Codec independent: aiortc's H.264 packetization (STAP-A, FU-A) and depayloading."""
    nal_units = [
        [
            b"\x67" + frame_bytes(100, 20),
            b"\x68" + frame_bytes(101, 4),
            b"\x65" + frame_bytes(0, 3000),
        ],
        [b"\x41" + frame_bytes(1, 700)],
        [b"\x41" + frame_bytes(2, 1500)],
    ]
    frames, seq = [], 65530
    for index, nals in enumerate(nal_units):
        payloads = H264Encoder._packetize(nals)
        packets = [
            RtpPacket(
                payload_type=H264.payloadType,
                marker=int(i == len(payloads) - 1),
                sequence_number=(seq + i) & 0xFFFF,
                timestamp=index * TS_STEP,
                payload=payload,
            )
            for i, payload in enumerate(payloads)
        ]
        seq += len(payloads)
        annex_b = b"".join(b"\x00\x00\x00\x01" + nal for nal in nals)
        frames.append(Frame(index, index * TS_STEP, annex_b, packets))
    assert [len(f.packets) for f in frames] == [4, 1, 2]
    buffer = new_buffer()
    out = [buffer.add(arrive(p, H264)) for p in all_packets(frames)]
    got = [(pli, None if f is None else identify(frames, f)) for pli, f in out]
    expected = [(False, f.index if p.marker else None) for f in frames for p in f.packets]
    assert got == expected


# --- reordering, duplicates -----------------------------------------------------------------


def test_reordering_within_a_frame() -> None:
    frames = vp8_stream([1, 4, 1])
    a, (b0, b1, b2, b3), c = frames[0].packets[0], frames[1].packets, frames[2].packets[0]
    # the marker packet first: the frame leaves when its last gap fills, not before
    results = feed(new_buffer(), frames, [a, b3, b1, b0, b2, c])
    assert results == [
        (False, 0),
        (False, None),
        (False, None),
        (False, None),
        (False, 1),
        (False, 2),
    ]


def test_reordering_across_frames() -> None:
    """A later frame complete first waits for the earlier one; aiortc takes one frame per
    packet, so it follows with the next packet."""
    frames = vp8_stream([1, 2, 2, 1])
    (a,), (b0, b1), (c0, c1), (d,) = (f.packets for f in frames)
    buffer = new_buffer()
    results = feed(buffer, frames, [a, c1, b0, c0, b1, d])
    assert results == [
        (False, 0),
        (False, None),
        (False, None),
        (False, None),
        (False, 1),
        (False, 2),
    ]
    more = following(frames, [1])
    assert feed(buffer, frames + more, all_packets(more)) == [(False, 3)]  # then d


def test_duplicates_never_make_a_second_copy() -> None:
    frames = vp8_stream([2, 3, 1, 2])
    packets = all_packets(frames)
    # every packet twice at once, then all of them again late (retransmissions)
    doubled = [p for p in packets for _ in range(2)] + packets
    results = feed(new_buffer(), frames, doubled)
    assert released(results) == [0, 1, 2, 3]
    assert not any(pli for pli, _ in results)


def test_marker_packet_duplicated_before_the_frame_is_complete() -> None:
    frames = vp8_stream([1, 3, 1])
    (a,), (b0, b1, b2), (c,) = (f.packets for f in frames)
    results = feed(new_buffer(), frames, [a, b2, b2, b0, b2, b1, b1, b2, c, b0])
    assert released(results) == [0, 1, 2]
    assert results[5] == (False, 1)


# --- wraparound -----------------------------------------------------------------------------


@pytest.mark.parametrize("first_seq", [65530, 65533, 65535, 0])
def test_sequence_number_wraparound(first_seq: int) -> None:
    frames = vp8_stream([3, 2, 4, 1, 2], first_seq=first_seq)
    seqs = [p.sequence_number for p in all_packets(frames)]
    assert 65535 in seqs or first_seq == 0
    results = feed(new_buffer(), frames, all_packets(frames))
    assert results == [(False, f.index if p.marker else None) for f in frames for p in f.packets]
    # and shuffled across the wrap: everything still comes out, once, in order
    packets = all_packets(frames)
    shuffled = packets[:1] + packets[5:8] + packets[1:2] + packets[3:5] + packets[8:] + packets[2:3]
    more = following(frames, [2] * 5)  # one frame out per packet: the backlog drains
    results = feed(new_buffer(), frames + more, shuffled + all_packets(more))
    assert released(results) == list(range(10))


def test_rtp_timestamp_wraparound() -> None:
    frames = vp8_stream([2, 1, 3, 2], first_ts=(1 << 32) - 2 * TS_STEP)
    assert frames[2].timestamp < frames[1].timestamp  # wrapped
    results = feed(new_buffer(), frames, all_packets(frames))
    assert results == [(False, f.index if p.marker else None) for f in frames for p in f.packets]


# --- loss: NACK wait, PLI -------------------------------------------------------------------


def test_lost_packet_holds_later_frames_until_retransmitted() -> None:
    """As stock aiortc: while a gap may still be repaired by aiortc's NACK, nothing after it
    leaves (the decoder needs the frames in order); the retransmission releases it all."""
    frames = vp8_stream([1, 3, 2, 1, 2])
    (a,), (b0, b1, b2), (c0, c1), (d,), (e0, e1) = (f.packets for f in frames)
    buffer = new_buffer()
    assert released(feed(buffer, frames, [a, b0, b2, c0, c1, d])) == [0]
    results = feed(buffer, frames, [b1, e0, e1])  # b1 retransmitted
    assert results == [(False, 1), (False, 2), (False, 3)]
    assert released(feed(buffer, frames, [b1, c0])) == [4]  # late duplicates, and e is out


def test_unrepaired_loss_overflows_with_pli_like_stock() -> None:
    """A gap never repaired: at the packet that overflows the 512-packet buffer, PLI (the same
    packet as stock aiortc); the incomplete frame never leaves, the complete ones after it do."""
    frames = vp8_stream([1, 3] + [2] * 300)
    lost = frames[1].packets[1]
    packets = [p for p in all_packets(frames) if p is not lost]
    ours = feed(new_buffer(), frames, packets)
    stock = feed(JitterBuffer(capacity=CAPACITY, is_video=True), frames, packets)
    pli_at = [i for i, (pli, _) in enumerate(ours) if pli]
    assert pli_at == [i for i, (pli, _) in enumerate(stock) if pli]
    assert len(pli_at) == 1
    # the packet that lies 512 after the oldest one held (frame 1's first packet)
    assert packets[pli_at[0]].sequence_number == frames[1].packets[0].sequence_number + CAPACITY
    out = released(ours)
    assert 1 not in out
    assert out == sorted(out) and len(out) == len(set(out))
    assert out[:3] == [0, 2, 3]
    assert all(index is None for _, index in ours[1 : pli_at[0]])  # held, waiting for a NACK


def test_frame_after_a_lost_marker_packet_is_dropped() -> None:
    """When the previous frame's last packet is lost for good, nothing proves where the next
    frame starts: it is dropped, never released (a PLI has gone out with the overflow)."""
    frames = vp8_stream([1, 3] + [2] * 300)
    lost = frames[1].packets[2]
    packets = [p for p in all_packets(frames) if p is not lost]
    out = released(feed(new_buffer(), frames, packets))
    assert out[:3] == [0, 3, 4]


def test_first_packet_of_a_frame_lost_for_good() -> None:
    frames = vp8_stream([1, 3] + [2] * 300)
    lost = frames[1].packets[0]
    packets = [p for p in all_packets(frames) if p is not lost]
    out = released(feed(new_buffer(), frames, packets))
    assert out[:3] == [0, 2, 3]


def test_far_out_of_order_packet_resets_with_pli_like_stock() -> None:
    """Stock aiortc: a packet 100 or more behind the oldest one held starts the buffer over
    and asks for a keyframe. The reset buffer knows nothing before its new origin, so the
    old packet's frame is not released."""
    frames = vp8_stream([1] * 120 + [2, 2])
    first = frames[0].packets[0]
    packets = all_packets(frames[:110])
    straggler = frames[3].packets[0]
    resumed = all_packets(frames[110:])
    ours = feed(new_buffer(), frames, [*packets, straggler, *resumed])
    stock = feed(
        JitterBuffer(capacity=CAPACITY, is_video=True), frames, [*packets, straggler, *resumed]
    )
    assert first.sequence_number + 110 == resumed[0].sequence_number
    assert [pli for pli, _ in ours] == [pli for pli, _ in stock]
    assert ours[110] == (True, None)
    assert released(ours) == list(range(110))  # then the straggler's gap blocks, as in stock


def test_first_packet_received_is_taken_as_a_frame_start() -> None:
    """Nothing precedes the very first packet, so, as stock aiortc does, it is taken to start
    a frame: our sender starts every viewer at a keyframe's first packet. If that packet was
    lost before anything arrived, the tail goes out as stock aiortc sends it (the decoder
    fails and aiortc asks for a keyframe): the one case where a frame's start is assumed."""
    frames = vp8_stream([3, 2])
    results = feed(new_buffer(), frames, all_packets(frames))
    assert results == [(False, None), (False, None), (False, 0), (False, None), (False, 1)]

    tail = all_packets(frames)[1:]
    ours_buffer, stock_buffer = new_buffer(), JitterBuffer(capacity=CAPACITY, is_video=True)
    ours = [ours_buffer.add(arrive(p)) for p in tail][1][1]  # at its marker
    stock = [stock_buffer.add(arrive(p)) for p in tail][2][1]  # at the next frame
    assert ours is not None and stock is not None
    assert ours.data == stock.data == b"".join(arrive(p)._data for p in tail[:2])  # type: ignore[attr-defined]


# --- property ------------------------------------------------------------------------------


@st.composite
def deliveries(draw: st.DrawFn, loss: bool) -> tuple[list[Frame], list[RtpPacket], set[int]]:
    """A frame everyone has seen (the stream so far), then 1-15 frames of 1-5 packets whose
    packets arrive permuted, some twice, some (``loss``) never. Returns the frames, the
    delivery and the sequence numbers delivered."""
    sizes = draw(st.lists(st.integers(1, 5), min_size=1, max_size=15))
    first_seq = draw(st.integers(0, 0xFFFF))
    first_ts = draw(st.integers(0, 0xFFFFFFFF))
    frames = vp8_stream([draw(st.integers(1, 3)), *sizes], first_seq=first_seq, first_ts=first_ts)
    later = all_packets(frames[1:])
    lost = draw(st.sets(st.sampled_from(range(len(later))))) if loss else set()
    kept = [p for i, p in enumerate(later) if i not in lost]
    twice = draw(st.lists(st.sampled_from(kept), max_size=10)) if kept else []
    delivery = frames[0].packets + draw(st.permutations(kept + twice))
    return frames, delivery, {p.sequence_number for p in frames[0].packets + kept}


@settings(max_examples=500, deadline=None, derandomize=True)
@given(deliveries(loss=False))
def test_property_without_loss_frames_leave_as_soon_as_complete(
    case: tuple[list[Frame], list[RtpPacket], set[int]],
) -> None:
    """Permuted and duplicated: each frame leaves exactly once, byte-identical, in order, at
    the first packet after which it and every frame before it are complete."""
    frames, delivery, _ = case
    # then the stream goes on in order, long enough to drain what one packet at a time left
    more = following(frames, [2] * len(frames))
    frames, delivery = frames + more, delivery + all_packets(more)
    results = feed(new_buffer(), frames, delivery)
    received: set[int] = set()
    next_frame = 0
    for packet, (pli, index) in zip(delivery, results, strict=True):
        received.add(packet.sequence_number)
        assert not pli
        if next_frame < len(frames) and all(
            p.sequence_number in received for p in frames[next_frame].packets
        ):
            assert index == next_frame
            next_frame += 1
        else:
            assert index is None
    assert next_frame == len(frames)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(deliveries(loss=True))
def test_property_with_loss_exactly_the_complete_frames_leave(
    case: tuple[list[Frame], list[RtpPacket], set[int]],
) -> None:
    """Permuted, duplicated, lossy, then the stream goes on until the buffer has given up on
    every gap: out come exactly the complete frames (whose start is known: the packet before
    them arrived), each once, byte-identical, in order; never an incomplete one."""
    frames, delivery, delivered = case
    buffer = new_buffer()
    results = feed(buffer, frames, delivery)
    # the stream goes on, in order, until one of its frames leaves: all before are decided
    more = following(frames, [2] * 1000)
    for packet in all_packets(more):
        pli, out = buffer.add(arrive(packet))
        index = None if out is None else identify(frames + more, out)
        results.append((pli, index))
        if index is not None and index >= len(frames):
            break
    else:
        raise AssertionError("the buffer never got past the lost packets")

    out = [i for i in released(results) if i < len(frames)]
    complete = [
        i for i, f in enumerate(frames) if all(p.sequence_number in delivered for p in f.packets)
    ]
    start_known = [
        i for i in complete if i == 0 or frames[i - 1].packets[-1].sequence_number in delivered
    ]
    assert out == start_known
    assert any(pli for pli, _ in results) == (len(delivered) < len(all_packets(frames)))


# --- apply() reaches aiortc, for one receiver only ------------------------------------------


def test_aiortc_is_the_version_the_change_was_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION, (
        f"aiortc is {aiortc.__version__}: re-check common/aiortc_ext/jitterbuffer.py against "
        "aiortc/jitterbuffer.py and aiortc/rtcrtpreceiver.py (how add() is called, "
        "JitterBuffer's fields), then update common/aiortc_ext/__init__.py and this test"
    )


def new_receiver(kind: str) -> RTCRtpReceiver:
    return RTCRtpReceiver(kind, types.SimpleNamespace(state="new"))  # type: ignore[arg-type]  # no transport needed


def receiver_buffer(rx: RTCRtpReceiver) -> JitterBuffer:
    return rx._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]  # aiortc's private buffer


def test_apply_changes_that_video_receiver_only() -> None:
    ours, theirs = new_receiver("video"), new_receiver("video")
    assert type(receiver_buffer(ours)) is JitterBuffer
    jitterbuffer.apply(ours)
    assert jitterbuffer.applied(ours) and not jitterbuffer.applied(theirs)
    video = receiver_buffer(ours)
    assert type(video) is LowLatencyJitterBuffer
    assert video.capacity == CAPACITY and video._is_video
    assert type(receiver_buffer(theirs)) is JitterBuffer  # stock, untouched
    assert type(receiver_buffer(new_receiver("video"))) is JitterBuffer  # and new ones too
    # the packet handler that drains the buffer is that object's own
    assert "_handle_rtp_packet" in vars(ours) and "_handle_rtp_packet" not in vars(theirs)
    with pytest.raises(ValueError, match="video"):
        jitterbuffer.apply(new_receiver("audio"))  # audio keeps aiortc's prefetching buffer


async def test_changed_receiver_decodes_at_the_marker_and_still_nacks() -> None:
    """Through RTCRtpReceiver._handle_rtp_packet itself: the frame is queued for the decoder
    on its marker packet; a gap still makes aiortc send a NACK."""
    rx = new_receiver("video")
    jitterbuffer.apply(rx)
    rx._RTCRtpReceiver__codecs[VP8.payloadType] = VP8  # type: ignore[attr-defined]
    rx._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]  # "decoding"
    decoder_queue: queue.Queue = rx._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]
    nacks: list[list[int]] = []
    plis: list[int] = []

    async def send_nack(media_ssrc: int, lost: list[int]) -> None:
        nacks.append(lost)

    async def send_pli(media_ssrc: int) -> None:
        plis.append(media_ssrc)

    rx._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    rx._send_rtcp_pli = send_pli  # type: ignore[method-assign]

    frames = vp8_stream([2, 3, 1])
    (a0, a1), (b0, b1, b2), (c,) = (f.packets for f in frames)

    async def deliver(packet: RtpPacket) -> list[bytes]:
        await rx._handle_rtp_packet(RtpPacket.parse(packet.serialize()), arrival_time_ms=0)
        queued = []
        while not decoder_queue.empty():
            codec, frame = decoder_queue.get_nowait()
            assert codec is VP8
            queued.append(frame.data)
        return queued

    assert await deliver(a0) == []
    assert await deliver(a1) == [frames[0].data]
    assert await deliver(b0) == []
    assert await deliver(b2) == []
    assert nacks == [[b1.sequence_number]]
    assert await deliver(b1) == [frames[1].data]  # the retransmission
    assert await deliver(c) == [frames[2].data]
    assert plis == []


async def test_frames_behind_a_repaired_gap_all_go_to_the_decoder_at_once() -> None:
    """One packet per frame (a low bitrate): stock aiortc takes one frame per packet from
    the buffer, so the frames held behind a repaired gap would each wait for a later packet,
    and the picture would stay that many frames late for good. The receiver of apply()
    hands them all to its decoder when the retransmission arrives."""
    rx = new_receiver("video")
    jitterbuffer.apply(rx)
    rx._RTCRtpReceiver__codecs[VP8.payloadType] = VP8  # type: ignore[attr-defined]
    rx._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]  # "decoding"
    decoder_queue: queue.Queue = rx._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]

    async def send_nack(media_ssrc: int, lost: list[int]) -> None:
        pass

    rx._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    frames = vp8_stream([1] * 6)
    a, b, c, d, e, f = (frame.packets[0] for frame in frames)

    async def deliver(packet: RtpPacket) -> list[int]:
        await rx._handle_rtp_packet(RtpPacket.parse(packet.serialize()), arrival_time_ms=0)
        queued = []
        while not decoder_queue.empty():
            codec, frame = decoder_queue.get_nowait()
            assert codec is VP8
            # the receiver maps RTP timestamps to start at 0: identify by the bytes
            queued.append(next(f.index for f in frames if f.data == frame.data))
        return queued

    assert await deliver(a) == [0]
    for packet in (c, d, e):  # b is lost: they wait
        assert await deliver(packet) == []
    assert await deliver(b) == [1, 2, 3, 4]  # the retransmission: all at once, in order
    assert await deliver(f) == [5]


def test_apply_warns_on_another_aiortc(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    rx = new_receiver("video")
    with caplog.at_level(logging.WARNING, logger="common.aiortc_ext.jitterbuffer"):
        jitterbuffer.apply(rx)
    assert jitterbuffer.applied(rx)
    assert "common.aiortc_ext.jitterbuffer" in caplog.text and "1.17.0" in caplog.text


def test_prefetch_is_refused() -> None:
    with pytest.raises(ValueError, match="prefetch"):
        LowLatencyJitterBuffer(capacity=16, prefetch=4)
