"""Lost packets are asked for again, and holes that cannot be repaired are given up
(common/aiortc_ext/nack_retry.py with the jitter buffer of common/aiortc_ext/jitterbuffer.py),
through a real aiortc RTCRtpReceiver fed real RTP packets from aiortc's own VP8 and H.264
encoders. Time is passed to ``tick()``, so each case runs at once. That the receiver runs it
across lossy links is tests/test_loss.py's job."""

from __future__ import annotations

import fractions
import logging
import queue
import types
from dataclasses import dataclass

import aiortc
import av
import numpy as np
import pytest
from aiortc import RTCRtpReceiver
from aiortc.codecs import depayload
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket

from common.aiortc_ext import AIORTC_VERSION, jitterbuffer
from common.aiortc_ext.nack_retry import (
    GIVE_UP_SECONDS,
    INTERVAL_SECONDS,
    KEYFRAME_AFTER_SECONDS,
    MAX_INTERVAL_SECONDS,
    MAX_TRIES,
    MIN_INTERVAL_SECONDS,
    PLI_REPEAT_SECONDS,
    RTT_FACTOR,
    RTT_MARGIN_SECONDS,
    TICK_SECONDS,
    NackRetry,
)

from .test_jitterbuffer import CAPACITY, H264, SSRC, TS_STEP, VP8, vp8_stream

FRAME_SECONDS = 0.03  # three ticks
WIDTH, HEIGHT = 320, 240


@dataclass
class Sent:
    """One encoded frame as the sender put it on the wire."""

    index: int
    keyframe: bool
    data: bytes  # what the decoder must get: the depayloaded packets, joined
    packets: list[RtpPacket]


TEXTURE = np.random.default_rng(0).integers(0, 256, (HEIGHT + 200, WIDTH + 400), np.uint8)


def picture(index: int) -> av.VideoFrame:
    """Noise moving across the picture: every frame differs, nothing looks like a scene
    cut (x264 would insert keyframes of its own)."""
    luma = TEXTURE[index : index + HEIGHT, 2 * index : 2 * index + WIDTH]
    chroma = np.full((HEIGHT // 2, WIDTH), 128, np.uint8)
    frame = av.VideoFrame.from_ndarray(np.vstack([luma, chroma]), format="yuv420p")
    frame.pts, frame.time_base = index, fractions.Fraction(1, 30)
    return frame


def is_keyframe(codec: RTCRtpCodecParameters, data: bytes) -> bool:
    """From the bitstream: VP8's frame tag (RFC 6386 9.1), H.264's IDR slice (type 5)."""
    if codec is VP8:
        return not data[0] & 1
    return any(nal and nal[0] & 0x1F == 5 for nal in data.split(b"\x00\x00\x00\x01"))


def encoded_stream(
    codec: RTCRtpCodecParameters, count: int, keyframes: set[int], first_seq: int = 65000
) -> list[Sent]:
    """``count`` frames from aiortc's own encoder (keyframes at the given indexes),
    packetized as its RTCRtpSender does: consecutive sequence numbers, marker on each
    frame's last packet. The sequence numbers wrap around 65535 on the way."""
    encoder = Vp8Encoder() if codec is VP8 else H264Encoder()
    sent, seq = [], first_seq
    for index in range(count):
        payloads, _ = encoder.encode(picture(index), force_keyframe=index in keyframes)
        packets = []
        for i, payload in enumerate(payloads):
            packets.append(
                RtpPacket(
                    payload_type=codec.payloadType,
                    marker=int(i == len(payloads) - 1),
                    sequence_number=seq,
                    timestamp=index * TS_STEP,
                    ssrc=SSRC,
                    payload=payload,
                )
            )
            seq = (seq + 1) & 0xFFFF
        data = b"".join(depayload(codec, p.payload) for p in packets)
        sent.append(Sent(index, is_keyframe(codec, data), data, packets))
    assert [s.index for s in sent if s.keyframe] == sorted(keyframes), "the encoder chose"
    return sent


class Viewer:
    """A real video RTCRtpReceiver with our jitter buffer and NackRetry, that records what
    it would send (NACKs, PLIs) and which frames it hands to its decoder."""

    def __init__(self, codec: RTCRtpCodecParameters = VP8, **retry: object) -> None:
        rx = RTCRtpReceiver("video", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
        jitterbuffer.apply(rx)
        rx._RTCRtpReceiver__codecs[codec.payloadType] = codec  # type: ignore[attr-defined]
        rx._RTCRtpReceiver__decoder_thread = True  # type: ignore[attr-defined]  # "decoding"
        self.rx = rx
        self.nacks: list[list[int]] = []
        self.plis: list[float] = []  # when, in the viewer's time
        self.now = 0.0
        self._decoded: list[bytes] = []

        async def send_nack(media_ssrc: int, lost: list[int]) -> None:
            assert media_ssrc == SSRC
            self.nacks.append(lost)

        async def send_pli(media_ssrc: int) -> None:
            assert media_ssrc == SSRC
            self.plis.append(self.now)

        rx._send_rtcp_nack = send_nack  # type: ignore[method-assign]
        rx._send_rtcp_pli = send_pli  # type: ignore[method-assign]
        self.retry = NackRetry(rx, **retry)  # type: ignore[arg-type]
        self._queue: queue.Queue = rx._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]

    async def deliver(self, packet: RtpPacket) -> None:
        await self.rx._handle_rtp_packet(RtpPacket.parse(packet.serialize()), arrival_time_ms=0)

    async def run_until(self, until: float) -> None:
        """Tick every TICK_SECONDS up to ``until``."""
        while self.now + TICK_SECONDS <= until + 1e-9:
            self.now += TICK_SECONDS
            await self.retry.tick(self.now)

    async def play(self, frames: list[Sent], lost: set[int] = frozenset()) -> None:  # type: ignore[assignment]
        """Frames arrive one frame interval apart (ticking in between), without ``lost``."""
        for frame in frames:
            for packet in frame.packets:
                if packet.sequence_number not in lost:
                    await self.deliver(packet)
            await self.run_until(self.now + FRAME_SECONDS)

    def indexes(self, sent: list[Sent]) -> list[int]:
        """Which sent frames the decoder got, in order (each must be one of them)."""
        by_data = {s.data: s.index for s in sent}
        handed = self.handed()
        assert all(data in by_data for data in handed), "a frame that was never sent"
        return [by_data[data] for data in handed]

    def handed(self) -> list[bytes]:
        """Every frame put on the decoder queue so far."""
        while not self._queue.empty():
            _, frame = self._queue.get_nowait()
            self._decoded.append(frame.data)
        return self._decoded


def test_aiortc_still_has_what_it_reads() -> None:
    assert aiortc.__version__ == AIORTC_VERSION, "re-check common/aiortc_ext/nack_retry.py"
    rx = RTCRtpReceiver("video", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
    for name in ("nack_generator", "remote_streams", "rtx_ssrc", "codecs", "jitter_buffer"):
        assert hasattr(rx, f"_RTCRtpReceiver__{name}"), name
    NackRetry(rx)  # raises if they were gone
    assert RTP_HISTORY_SIZE == 128  # what aiortc's sender keeps and its NackGenerator asks for


async def test_a_packet_still_missing_is_asked_for_again() -> None:
    viewer = Viewer(interval=0.05)
    (a0, a1), (b0, b1, b2), (c,) = (f.packets for f in vp8_stream([2, 3, 1]))
    for packet in (a0, a1, b0, b2):
        await viewer.deliver(packet)
    assert viewer.nacks == [[b1.sequence_number]]  # aiortc's own, once
    assert await viewer.retry.tick(0.0) == []  # just lost: aiortc has asked already
    assert await viewer.retry.tick(0.04) == []
    assert await viewer.retry.tick(0.05) == [b1.sequence_number]  # the resend was lost too
    assert viewer.nacks[-1] == [b1.sequence_number]
    await viewer.deliver(b1)  # the retransmission arrives
    assert await viewer.retry.tick(0.1) == []
    await viewer.deliver(c)
    assert await viewer.retry.tick(0.15) == [] and len(viewer.nacks) == 2
    assert viewer.plis == [] and viewer.retry.given_up == 0
    assert len(viewer.handed()) == 3


async def test_retries_are_bounded() -> None:
    viewer = Viewer(interval=0.05, give_up_after=None)
    (a0, a1), (b0, _, b2) = (f.packets for f in vp8_stream([2, 3]))
    for packet in (a0, a1, b0, b2):
        await viewer.deliver(packet)
    asked = [await viewer.retry.tick(0.05 * i) for i in range(MAX_TRIES + 5)]
    assert sum(1 for due in asked if due) == MAX_TRIES
    assert len(viewer.nacks) == 1 + MAX_TRIES
    assert viewer.plis == [] and viewer.retry.given_up == 0  # giving up is off


def test_the_retry_interval_follows_the_round_trip() -> None:
    rtt: list[float | None] = [None]
    viewer = Viewer(rtt=lambda: rtt[0])
    assert viewer.retry.interval == INTERVAL_SECONDS  # not measured yet
    rtt[0] = 0.001  # a LAN
    assert viewer.retry.interval == MIN_INTERVAL_SECONDS
    rtt[0] = 0.1
    assert viewer.retry.interval == pytest.approx(RTT_FACTOR * 0.1 + RTT_MARGIN_SECONDS)
    rtt[0] = 30.0
    assert viewer.retry.interval == MAX_INTERVAL_SECONDS


async def test_a_long_round_trip_spaces_the_nacks_out() -> None:
    viewer = Viewer(rtt=lambda: 0.1)  # interval 160 ms
    (a0, a1), (b0, b1, b2) = (f.packets for f in vp8_stream([2, 3]))
    for packet in (a0, a1, b0, b2):
        await viewer.deliver(packet)
    await viewer.run_until(0.15)
    assert viewer.nacks == [[b1.sequence_number]]  # its answer cannot have come yet
    await viewer.run_until(0.17)
    assert viewer.nacks[1:] == [[b1.sequence_number]]


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
async def test_a_hole_older_than_the_senders_history_is_given_up_at_once(
    codec: RTCRtpCodecParameters, caplog: pytest.LogCaptureFixture
) -> None:
    """More than RTP_HISTORY_SIZE packets arrive after a lost one (a stalled link that
    comes back with a burst): aiortc's sender can no longer resend it and its NACK
    generator stops asking. Stock, the buffer would hold every frame until 512 packets
    overflow it; here the hole is skipped at the next tick, a keyframe is asked for, the
    frames that depend on the lost one never reach the decoder, and the keyframe does."""
    sent = encoded_stream(codec, 160, keyframes={0, 150})
    viewer = Viewer(codec)
    await viewer.play(sent[:3])
    assert viewer.indexes(sent) == [0, 1, 2]
    lost = sent[3].packets[0].sequence_number
    behind = [p for s in sent[3:150] for p in s.packets if p.sequence_number != lost]
    assert RTP_HISTORY_SIZE < len(behind) < CAPACITY  # no overflow
    with caplog.at_level(logging.INFO, logger="common.aiortc_ext.nack_retry"):
        for packet in behind:  # all within one tick
            await viewer.deliver(packet)
        gave_up_at = viewer.now + TICK_SECONDS
        await viewer.run_until(gave_up_at)
    assert viewer.retry.given_up == 1 and viewer.plis == [gave_up_at]
    assert "older than the sender's retransmission history" in caplog.text
    assert viewer.indexes(sent) == [0, 1, 2]  # 3-149 depend on the lost packet
    await viewer.play(sent[150:])
    assert viewer.indexes(sent) == [0, 1, 2, *range(150, 160)]
    assert viewer.plis == [gave_up_at]  # the keyframe came: no second request
    assert viewer.rx._RTCRtpReceiver__nack_generator.missing == set()  # type: ignore[attr-defined]


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
async def test_a_packet_that_never_comes_is_given_up_within_300_ms(
    codec: RTCRtpCodecParameters,
) -> None:
    """Every retransmission is lost and no keyframe comes: it is asked for again each
    interval, a keyframe is asked for KEYFRAME_AFTER_SECONDS after it went missing, the
    hole is given up GIVE_UP_SECONDS after it and a keyframe asked for again at once; until
    one comes the frames are dropped, then the picture goes on from it."""
    sent = encoded_stream(codec, 40, keyframes={0, 30})
    viewer = Viewer(codec)
    await viewer.play(sent[:5])
    lost = sent[5].packets[-1].sequence_number  # a marker packet: seen missing one frame later
    await viewer.play(sent[5:7], lost={lost})
    missing_since = viewer.now - FRAME_SECONDS  # frame 6 showed the gap
    await viewer.play(sent[7:30], lost={lost})  # 690 ms
    assert viewer.retry.given_up == 1 and len(viewer.plis) == 3
    early, gave_up, again = viewer.plis
    assert KEYFRAME_AFTER_SECONDS <= early - missing_since <= KEYFRAME_AFTER_SECONDS + 0.02
    assert GIVE_UP_SECONDS <= gave_up - missing_since <= GIVE_UP_SECONDS + 2 * TICK_SECONDS
    assert again - gave_up == pytest.approx(PLI_REPEAT_SECONDS)  # none came
    asked_again = [n for n in viewer.nacks[1:] if lost in n]
    assert 3 <= len(asked_again) < MAX_TRIES  # repeated until given up
    assert viewer.indexes(sent) == [0, 1, 2, 3, 4]
    await viewer.play(sent[30:])
    assert viewer.indexes(sent) == [0, 1, 2, 3, 4, *range(30, 40)]
    assert len(viewer.plis) == 3


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
async def test_the_keyframe_asked_for_early_ends_the_freeze(
    codec: RTCRtpCodecParameters, caplog: pytest.LogCaptureFixture
) -> None:
    """Every retransmission is lost (or either peer stalled): the keyframe asked for
    KEYFRAME_AFTER_SECONDS after the packet went missing comes, and the hole is given up
    as soon as the keyframe is complete, not GIVE_UP_SECONDS after; nothing is asked for
    again. Without the early request the picture would wait for GIVE_UP_SECONDS and a
    keyframe's round trip after it (``test_loss``: a 400 ms gap, end to end)."""
    sent = encoded_stream(codec, 20, keyframes={0, 10})
    viewer = Viewer(codec)
    await viewer.play(sent[:5])
    lost = sent[5].packets[-1].sequence_number
    await viewer.play(sent[5:7], lost={lost})
    missing_since = viewer.now - FRAME_SECONDS  # frame 6 showed the gap
    await viewer.play(sent[7:10], lost={lost})
    assert len(viewer.plis) == 1 and viewer.retry.given_up == 0  # asked early
    assert viewer.plis[0] - missing_since <= KEYFRAME_AFTER_SECONDS + 2 * TICK_SECONDS
    with caplog.at_level(logging.INFO, logger="common.aiortc_ext.nack_retry"):
        await viewer.play(sent[10:11])  # the sender's answer
    assert viewer.retry.given_up == 1 and "a keyframe came after it" in caplog.text
    assert viewer.indexes(sent) == [0, 1, 2, 3, 4, 10]
    assert viewer.now - missing_since < GIVE_UP_SECONDS
    await viewer.play(sent[11:])
    assert viewer.indexes(sent) == [0, 1, 2, 3, 4, *range(10, 20)]
    assert len(viewer.plis) == 1


async def test_a_hole_is_given_up_when_its_retries_are_used_up() -> None:
    """With fewer retries than fit into GIVE_UP_SECONDS the hole goes sooner: two
    intervals after the last NACK."""
    sent = encoded_stream(VP8, 20, keyframes={0, 15})
    viewer = Viewer(max_tries=2, interval=0.04)
    await viewer.play(sent[:3])
    lost = sent[3].packets[0].sequence_number
    await viewer.play(sent[3:15], lost={lost})
    assert len([n for n in viewer.nacks if lost in n]) == 1 + 2
    assert viewer.retry.given_up == 1
    assert viewer.plis[0] <= 3 * FRAME_SECONDS + (1 + 2 + 2) * 0.04 + 2 * TICK_SECONDS
    await viewer.play(sent[15:])
    assert viewer.indexes(sent) == [0, 1, 2, *range(15, 20)]


async def test_a_repaired_hole_is_not_given_up() -> None:
    """The retransmission comes after several tries, before the deadline and before the
    keyframe asked for early: every frame reaches the decoder in order."""
    sent = encoded_stream(VP8, 15, keyframes={0})
    viewer = Viewer()
    await viewer.play(sent[:3])
    packet = sent[3].packets[0]
    await viewer.play(sent[3:9], lost={packet.sequence_number})  # 200 ms
    assert len([n for n in viewer.nacks if packet.sequence_number in n]) >= 3
    await viewer.deliver(packet)
    assert viewer.indexes(sent) == list(range(9))  # all at once, not one per later packet
    await viewer.play(sent[9:])
    assert viewer.indexes(sent) == list(range(15))
    assert len(viewer.plis) == 1 and viewer.retry.given_up == 0  # the early request


async def test_a_hole_repaired_in_time_asks_for_no_keyframe() -> None:
    """Repaired by the third NACK (80 ms): no keyframe is asked for."""
    sent = encoded_stream(VP8, 8, keyframes={0})
    viewer = Viewer(interval=0.04)
    await viewer.play(sent[:3])
    packet = sent[3].packets[-1]  # a marker packet: seen missing one frame later
    await viewer.play(sent[3:5], lost={packet.sequence_number})
    await viewer.run_until(viewer.now - FRAME_SECONDS + 0.09)
    await viewer.deliver(packet)
    await viewer.play(sent[5:])
    assert viewer.indexes(sent) == list(range(8))
    assert len([n for n in viewer.nacks if packet.sequence_number in n]) == 3
    assert viewer.plis == [] and viewer.retry.given_up == 0


async def test_a_keyframe_already_behind_the_hole_is_used_at_once() -> None:
    """A keyframe arrived complete behind the hole: the hole is given up at the next
    tick (whatever its age), no frame in between reaches the decoder, and the keyframe goes
    to the decoder at once with the frame after it; nothing is asked for."""
    sent = encoded_stream(VP8, 12, keyframes={0, 6})
    viewer = Viewer(max_tries=0, interval=0.04)
    await viewer.play(sent[:3])
    lost = sent[3].packets[0].sequence_number
    for packet in [p for s in sent[3:8] for p in s.packets if p.sequence_number != lost]:
        await viewer.deliver(packet)
    assert viewer.indexes(sent) == [0, 1, 2]
    await viewer.run_until(viewer.now + TICK_SECONDS)
    assert viewer.retry.given_up == 1
    assert viewer.indexes(sent) == [0, 1, 2, 6, 7] and viewer.plis == []
    await viewer.play(sent[8:])
    assert viewer.indexes(sent) == [0, 1, 2, *range(6, 12)]


async def test_giving_up_can_be_turned_off() -> None:
    """give_up_after=None: the hole holds the buffer, as in stock aiortc."""
    sent = encoded_stream(VP8, 30, keyframes={0})
    viewer = Viewer(give_up_after=None)
    await viewer.play(sent[:3])
    lost = sent[3].packets[0].sequence_number
    await viewer.play(sent[3:], lost={lost})  # 900 ms
    assert viewer.indexes(sent) == [0, 1, 2]
    assert viewer.plis == [] and viewer.retry.given_up == 0


@pytest.mark.parametrize("codec", [VP8, H264], ids=["vp8", "h264"])
def test_keyframe_starts_are_recognised_in_real_encoder_output(
    codec: RTCRtpCodecParameters,
) -> None:
    """What the buffer jumps to: a keyframe's first packet, recognised from that packet
    alone (an H.264 IDR slice after its SPS counts too: the buffer keeps the SPS)."""
    sent = encoded_stream(codec, 12, keyframes={0, 7})
    for frame in sent:
        flags = [
            jitterbuffer.vp8_keyframe_start(p)
            if codec is VP8
            else jitterbuffer.h264_keyframe_start(depayload(codec, p.payload))
            for p in frame.packets
        ]
        assert flags[0] == frame.keyframe, frame.index
        assert not any(flags) or frame.keyframe, frame.index
