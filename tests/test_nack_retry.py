"""A lost retransmission is asked for again (receiver/nack_retry.py), through a real
aiortc RTCRtpReceiver fed real RTP packets."""

import types

import aiortc
from aiortc import RTCRtpReceiver
from aiortc.rtp import RtpPacket

from receiver import nack_retry
from receiver.nack_retry import MAX_TRIES, NackRetry

from .test_jitterbuffer import VP8, vp8_stream


def make_receiver() -> tuple[RTCRtpReceiver, list[list[int]]]:
    rx = RTCRtpReceiver("video", types.SimpleNamespace(state="new"))  # type: ignore[arg-type]
    rx._RTCRtpReceiver__codecs[VP8.payloadType] = VP8  # type: ignore[attr-defined]
    nacks: list[list[int]] = []

    async def send_nack(media_ssrc: int, lost: list[int]) -> None:
        nacks.append(lost)

    async def send_pli(media_ssrc: int) -> None:
        pass

    rx._send_rtcp_nack = send_nack  # type: ignore[method-assign]
    rx._send_rtcp_pli = send_pli  # type: ignore[method-assign]
    return rx, nacks


async def deliver(rx: RTCRtpReceiver, packet: RtpPacket) -> None:
    await rx._handle_rtp_packet(RtpPacket.parse(packet.serialize()), arrival_time_ms=0)


def test_aiortc_still_has_what_it_reads() -> None:
    assert aiortc.__version__ == "1.16.0", "re-check receiver/nack_retry.py"
    rx, _ = make_receiver()
    for name in (nack_retry.GENERATOR, nack_retry.STREAMS, nack_retry.RTX):
        assert hasattr(rx, name), name
    NackRetry(rx)  # raises if they were gone


async def test_a_packet_still_missing_is_asked_for_again() -> None:
    rx, nacks = make_receiver()
    retry = NackRetry(rx)
    (a0, a1), (b0, b1, b2), (c,) = (f.packets for f in vp8_stream([2, 3, 1]))
    for packet in (a0, a1, b0, b2):
        await deliver(rx, packet)
    assert nacks == [[b1.sequence_number]]  # aiortc's own, once
    assert await retry.tick() == []  # just lost: aiortc has asked already
    assert await retry.tick() == [b1.sequence_number]  # its retransmission was lost too
    assert nacks[-1] == [b1.sequence_number]
    await deliver(rx, b1)  # the retransmission arrives
    assert await retry.tick() == []
    await deliver(rx, c)
    assert await retry.tick() == [] and len(nacks) == 2


async def test_retries_are_bounded() -> None:
    rx, nacks = make_receiver()
    retry = NackRetry(rx)
    (a0, a1), (b0, _, b2) = (f.packets for f in vp8_stream([2, 3]))
    for packet in (a0, a1, b0, b2):
        await deliver(rx, packet)
    asked = [await retry.tick() for _ in range(MAX_TRIES + 5)]
    assert sum(1 for due in asked if due) == MAX_TRIES
    assert len(nacks) == 1 + MAX_TRIES
