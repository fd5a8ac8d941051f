"""common.aiortc_ext.audio_jitter: behind a lost Opus packet the audio goes on after three
later packets (stock aiortc 1.16 holds it until 16 have piled up); otherwise the stock
delay, order and once-only delivery are kept; apply() reaches aiortc's RTCRtpReceiver, and
only the audio receiver it is given."""

from __future__ import annotations

import fractions
import logging
import queue
import types

import aiortc
import av
import numpy as np
import pytest
from aiortc.codecs import depayload
from aiortc.codecs.opus import OpusEncoder
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpreceiver import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from common.aiortc_ext import AIORTC_VERSION, audio_jitter, jitterbuffer
from common.aiortc_ext.audio_jitter import SKIP_AFTER, SkippingAudioBuffer

OPUS = RTCRtpCodecParameters(mimeType="audio/opus", clockRate=48000, channels=2, payloadType=111)
CAPACITY, PREFETCH = 16, 4  # what aiortc 1.16's RTCRtpReceiver gives audio
SAMPLES = 960  # 20 ms at 48 kHz
SSRC = 0x5EED


def opus_packets(count: int, first_seq: int = 65530) -> list[RtpPacket]:
    """``count`` consecutive RTP packets of a real Opus stream (a 440 Hz tone), as aiortc's
    sender makes them; the sequence numbers wrap around 65535 early on."""
    encoder = OpusEncoder()
    packets = []
    t = np.arange(SAMPLES * count) / 48000
    tone = (0.1 * 32767 * np.sin(2 * np.pi * 440 * t)).astype(np.int16)
    for i in range(count):
        chunk = np.repeat(tone[i * SAMPLES : (i + 1) * SAMPLES], 2).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(chunk, format="s16", layout="stereo")
        frame.sample_rate, frame.pts = 48000, i * SAMPLES
        frame.time_base = fractions.Fraction(1, 48000)
        payloads, timestamp = encoder.encode(frame)
        assert len(payloads) == 1
        packets.append(
            RtpPacket(
                payload_type=OPUS.payloadType,
                sequence_number=(first_seq + i) & 0xFFFF,
                timestamp=(1_000_000 + timestamp) & 0xFFFFFFFF,
                ssrc=SSRC,
                payload=payloads[0],
            )
        )
    return packets


def arrive(packet: RtpPacket) -> RtpPacket:
    """The packet as aiortc's receiver hands it to the jitter buffer: parsed off the wire,
    with ``_data`` depayloaded (RTCRtpReceiver._handle_rtp_packet)."""
    parsed = RtpPacket.parse(packet.serialize())
    parsed._data = depayload(OPUS, parsed.payload)  # type: ignore[attr-defined]  # as aiortc sets it
    return parsed


def feed(buffer: JitterBuffer, packets: list[RtpPacket], order: list[int]) -> list[list[int]]:
    """Add ``packets[i]`` for each i in ``order``; after each, the indices released (the
    frame ``add()`` returns and, for ours, every other one ready, as apply()'s hook does)."""
    by_timestamp = {p.timestamp: i for i, p in enumerate(packets)}
    out = []
    for i in order:
        _, frame = buffer.add(arrive(packets[i]))
        frames = [frame] if frame is not None else []
        if isinstance(buffer, SkippingAudioBuffer):
            while (more := buffer.next_frame()) is not None:
                frames.append(more)
        out.append([by_timestamp[f.timestamp] for f in frames])
    return out


def released_by(out: list[list[int]], order: list[int]) -> dict[int, int]:
    """Packet index -> the index of the packet whose arrival released it."""
    return {index: order[step] for step, indices in enumerate(out) for index in indices}


def test_without_loss_the_stock_delay_and_order() -> None:
    packets = opus_packets(40)
    order = list(range(40))
    ours = feed(SkippingAudioBuffer(CAPACITY, PREFETCH), packets, order)
    stock = feed(JitterBuffer(CAPACITY, prefetch=PREFETCH), packets, order)
    assert ours == stock
    assert released_by(ours, order) == {i: i + PREFETCH for i in range(40 - PREFETCH)}


@pytest.mark.parametrize("lost", [[10], [10, 11], [10, 17, 24, 31]])
def test_packets_behind_a_loss_come_out_within_a_few_packets(lost: list[int]) -> None:
    packets = opus_packets(60)
    order = [i for i in range(60) if i not in lost]
    ours = feed(SkippingAudioBuffer(CAPACITY, PREFETCH), packets, order)
    when = released_by(ours, order)
    # Every packet that arrived leaves once PREFETCH later sequence numbers have passed
    # (the same delay as without loss), in order, once, and the lost ones are skipped.
    assert [i for step in ours for i in step] == [i for i in order if i < 60 - PREFETCH]
    for i in order[: -PREFETCH - 1]:
        assert when[i] == min(j for j in order if j >= i + PREFETCH), (i, when[i])

    # Stock aiortc: nothing behind the first hole leaves until the buffer overflows.
    stock = released_by(feed(JitterBuffer(CAPACITY, prefetch=PREFETCH), packets, order), order)
    after = min(j for j in order if j > lost[0])  # the first packet behind the hole
    assert when[after] - after <= PREFETCH + 1
    assert stock.get(after, 99) >= lost[0] + CAPACITY - 1  # on overflow: 300 ms late


def test_a_reordered_packet_within_the_window_is_not_skipped() -> None:
    packets = opus_packets(20)
    # 6 arrives after 7 and 8 (two later packets: fewer than SKIP_AFTER)
    order = [0, 1, 2, 3, 4, 5, 7, 8, 6, *range(9, 20)]
    buffer = SkippingAudioBuffer(CAPACITY, PREFETCH)
    out = feed(buffer, packets, order)
    assert [i for step in out for i in step] == list(range(20 - PREFETCH))
    assert buffer.skipped == 0


def test_a_packet_later_than_the_window_is_skipped_and_dropped_when_it_comes() -> None:
    packets = opus_packets(20)
    late = [0, 1, 2, 3, 4, 5, 7, 8, 9, 10, 6, *range(11, 20)]  # 6 after four later ones
    buffer = SkippingAudioBuffer(CAPACITY, PREFETCH)
    out = feed(buffer, packets, late)
    released = [i for step in out for i in step]
    assert 6 not in released and released == sorted(released)
    assert released == [i for i in range(20 - PREFETCH) if i != 6]
    assert buffer.skipped == 1
    assert out[late.index(6)] == []  # given up: dropped, nothing released twice


def test_a_jump_far_ahead_drops_the_oldest_and_goes_on() -> None:
    packets = opus_packets(60)
    order = [*range(10), *range(40, 60)]  # 30 packets missing: more than the capacity
    buffer = SkippingAudioBuffer(CAPACITY, PREFETCH)
    released = [i for step in feed(buffer, packets, order) for i in step]
    assert released == sorted(released) and released[-1] == 60 - PREFETCH - 1
    assert set(range(40, 60 - PREFETCH)) <= set(released)
    assert buffer.overflowed == len(range(10)) - len([i for i in released if i < 10])


def test_a_stream_that_starts_over_is_followed() -> None:
    first, second = opus_packets(10, first_seq=1000), opus_packets(10, first_seq=30000)
    buffer = SkippingAudioBuffer(CAPACITY, PREFETCH)
    for packet in first:
        buffer.add(arrive(packet))
    out = []
    for packet in second:
        _, frame = buffer.add(arrive(packet))
        out += [frame] if frame is not None else []
    assert [f.timestamp for f in out] == [p.timestamp for p in second[: 10 - PREFETCH]]


def test_aiortc_is_the_version_the_change_was_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION, (
        f"aiortc is {aiortc.__version__}: re-check common/aiortc_ext/audio_jitter.py against "
        "aiortc/jitterbuffer.py and aiortc/rtcrtpreceiver.py (the audio buffer's capacity "
        "and prefetch, no NACK for audio, how add() is called), then update "
        "common/aiortc_ext/__init__.py and this test"
    )


def new_receiver(kind: str) -> RTCRtpReceiver:
    return RTCRtpReceiver(kind, types.SimpleNamespace(state="new"))  # type: ignore[arg-type]  # no transport needed


def receiver_buffer(rx: RTCRtpReceiver) -> JitterBuffer:
    return rx._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]  # aiortc's private buffer


def test_stock_audio_buffer_is_what_this_was_written_against() -> None:
    stock = receiver_buffer(new_receiver("audio"))
    assert type(stock) is JitterBuffer
    assert (stock.capacity, stock._prefetch, stock._is_video) == (CAPACITY, PREFETCH, False)
    assert new_receiver("audio")._RTCRtpReceiver__nack_generator is None  # type: ignore[attr-defined]  # aiortc's private NACK state


def test_apply_changes_that_audio_receiver_only() -> None:
    ours, theirs = new_receiver("audio"), new_receiver("audio")
    audio_jitter.apply(ours)
    assert audio_jitter.applied(ours) and not audio_jitter.applied(theirs)
    buffer = receiver_buffer(ours)
    assert type(buffer) is SkippingAudioBuffer
    assert (buffer.capacity, buffer._prefetch, buffer.skip_after) == (
        CAPACITY,
        PREFETCH,
        SKIP_AFTER,
    )
    assert type(receiver_buffer(theirs)) is JitterBuffer
    assert "_handle_rtp_packet" in vars(ours) and "_handle_rtp_packet" not in vars(theirs)
    assert not jitterbuffer.applied(ours)
    with pytest.raises(ValueError, match="audio"):
        audio_jitter.apply(new_receiver("video"))


async def deliver_all(rx: RTCRtpReceiver, packets: list[RtpPacket], order: list[int]) -> list[int]:
    """Through RTCRtpReceiver._handle_rtp_packet itself; the indices queued for the decoder
    (in queue order) by the end; ``packets[order[0]]`` must be the stream's first."""
    rx._RTCRtpReceiver__codecs[OPUS.payloadType] = OPUS  # type: ignore[attr-defined]  # as receive() fills it
    rx._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]  # "decoding"
    decoder_queue: queue.Queue = rx._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]  # aiortc's private queue
    for i in order:
        await rx._handle_rtp_packet(RtpPacket.parse(packets[i].serialize()), arrival_time_ms=0)
    queued = []
    while not decoder_queue.empty():
        codec, frame = decoder_queue.get_nowait()
        assert codec is OPUS
        queued.append(frame.timestamp // SAMPLES)  # aiortc maps the first one to 0
    return queued


async def test_through_the_receiver_five_percent_loss_loses_only_the_lost_packets() -> None:
    packets = opus_packets(400)
    lost = set(range(7, 400, 20))  # 5%, one every 400 ms
    order = [i for i in range(400) if i not in lost]
    ours = new_receiver("audio")
    audio_jitter.apply(ours)
    queued = await deliver_all(ours, packets, order)
    assert queued == [i for i in order if i < 400 - PREFETCH]
    # Stock aiortc (the feature off): about a fifth of what arrived never reaches the decoder.
    stock = await deliver_all(new_receiver("audio"), packets, order)
    assert len(stock) < 0.85 * len(order), len(stock)


def test_skip_after_must_fit_the_buffer() -> None:
    with pytest.raises(ValueError):
        SkippingAudioBuffer(CAPACITY, PREFETCH, skip_after=CAPACITY)


def test_apply_warns_on_another_aiortc(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(aiortc, "__version__", "1.17.0")
    rx = new_receiver("audio")
    with caplog.at_level(logging.WARNING, logger="common.aiortc_ext.audio_jitter"):
        audio_jitter.apply(rx)
    assert audio_jitter.applied(rx)
    assert "common.aiortc_ext.audio_jitter" in caplog.text and "1.17.0" in caplog.text
