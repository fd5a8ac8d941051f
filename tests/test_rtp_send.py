"""``common.aiortc_ext.rtp_send`` (aiortc 1.16.0): our video senders packetize a frame
once for all its viewers and send it in their own RTP loop, byte for byte what aiortc's
would send. Fails if an aiortc upgrade renames what the loop keeps up to date (history,
counts, report times) or changes how it serializes a packet."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from typing import Any

import aiortc.clock
import av
import pytest
from aiortc import RTCRtpReceiver, RTCRtpSender
from aiortc.codecs.vpx import VpxPayloadDescriptor
from aiortc.rtp import RTP_HISTORY_SIZE, RtpPacket, is_rtcp

import sender.outgoing
from common.aiortc_ext import private, rtp_send
from receiver import Receiver
from receiver.stats import read_stamp

from .helpers import wait_until

PACKETS = 60


def video_sender(app_sender: Any, index: int = 0) -> RTCRtpSender:
    session = app_sender.sessions.live()[index]
    found = session.pc.getSenders()[0]
    assert isinstance(found, RTCRtpSender) and found.kind == "video"
    return found


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_each_packet_is_what_aiortc_would_send(sender_factory, codec: str) -> None:
    """Every datagram our loop hands to SRTP equals aiortc's own serialization of the
    packet it keeps for retransmission: header, mid and abs-send-time extensions, payload;
    and the counts its statistics and sender reports read go up with them."""
    app_sender = await sender_factory(codec=codec)
    sent: list[bytes] = []
    async with Receiver(app_sender.url) as rx:
        await anext(rx.frames())
        rtp = video_sender(app_sender)
        assert rtp_send.applied(rtp)
        transport = rtp.transport
        send_rtp = transport._send_rtp
        done = asyncio.Event()

        async def _send_rtp(data: bytes) -> None:
            if len(sent) < PACKETS and not is_rtcp(data):
                sent.append(data)
                if len(sent) == PACKETS:
                    done.set()
            await send_rtp(data)

        transport._send_rtp = _send_rtp  # type: ignore[method-assign]  # this test's tap
        await asyncio.wait_for(done.wait(), 30)
        history: dict[int, RtpPacket] = private(rtp, RTCRtpSender, "rtp_history")  # type: ignore[assignment]
        extensions = private(rtp, RTCRtpSender, "rtp_header_extensions_map")
        mid = private(rtp, RTCRtpSender, "mid")
        checked = 0
        for data in sent[-RTP_HISTORY_SIZE // 2 :]:
            packet = RtpPacket.parse(data, extensions)  # type: ignore[arg-type]
            kept = history.get(packet.sequence_number % RTP_HISTORY_SIZE)
            if kept is None or kept.sequence_number != packet.sequence_number:
                continue  # already replaced in the history
            assert kept.serialize(extensions) == data  # type: ignore[arg-type]
            assert packet.extensions.mid == mid and packet.extensions.abs_send_time is not None
            assert packet.ssrc == rtp._ssrc
            checked += 1
        assert checked >= 20, checked
        stats = await rtp.getStats()
        outbound = next(s for s in stats.values() if s.type == "outbound-rtp")
        assert outbound.packetsSent >= PACKETS
        assert outbound.bytesSent >= sum(len(d) for d in sent) - 40 * PACKETS
        # What its next sender report says: the last packet's RTP time and when it left.
        timestamps = {RtpPacket.parse(d).timestamp for d in sent}
        assert private(rtp, RTCRtpSender, "rtp_timestamp") not in (None, 0)
        assert private(rtp, RTCRtpSender, "ntp_timestamp") >> 32 > 3_900_000_000  # after 2023
        assert len(timestamps) >= 2


async def test_each_frame_is_packetized_once_for_all_viewers(
    sender_factory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Three viewers of one tier: each frame's payloads are made once, not per viewer."""
    calls = 0
    packetize = sender.outgoing.packetize

    def counted(*args: Any) -> Any:
        nonlocal calls
        calls += 1
        return packetize(*args)

    monkeypatch.setattr(sender.outgoing, "packetize", counted)
    app_sender = await sender_factory()
    url = app_sender.url
    async with Receiver(url) as a, Receiver(url) as b, Receiver(url) as c:
        for rx in (a, b, c):
            frames = rx.frames()
            for _ in range(30):
                await asyncio.wait_for(anext(frames), 10)
        await wait_until(lambda: len(app_sender.sessions.live()) == 3, what="3 viewers")
        assert all(rtp_send.applied(video_sender(app_sender, i)) for i in range(3))
        encoder = app_sender.sessions.encoders.active()[0]
        sent = sum(t.packets_sent for t in encoder.tracks)
        encoded = encoder.frames_encoded
    # Each frame sent is packetized by one viewer's sender for all three. (aiortc's own
    # loop packetizes per viewer, and never here: 0 calls.)
    assert sent >= 3 * 30
    assert 30 <= calls <= encoded + 1, (calls, encoded, sent)


async def test_vp8_picture_ids_count_up_for_each_viewer(sender_factory) -> None:
    """A receiver reads a jump in VP8's picture id as a lost frame: each viewer's ids
    run on by one per frame, the late joiner's (started from the recent keyframe) too."""
    app_sender = await sender_factory(codec="vp8")

    async def picture_ids(rx: Receiver, count: int) -> list[int]:
        frames = rx.frames()
        await asyncio.wait_for(anext(frames), 10)
        assert rx.connection is not None
        receiver = rx.connection.pc.getReceivers()[0]
        assert isinstance(receiver, RTCRtpReceiver)
        ids: list[int] = []
        seen: set[int] = set()
        handle = receiver._handle_rtp_packet

        async def _handle_rtp_packet(packet: RtpPacket, arrival_time_ms: int) -> None:
            if packet.timestamp not in seen and packet.payload:
                descriptor, _ = VpxPayloadDescriptor.parse(packet.payload)
                if descriptor.partition_start and descriptor.picture_id is not None:
                    seen.add(packet.timestamp)
                    ids.append(descriptor.picture_id)
            await handle(packet, arrival_time_ms)

        receiver._handle_rtp_packet = _handle_rtp_packet  # type: ignore[method-assign]  # this test's tap
        await wait_until(lambda: len(ids) >= count, 30, f"{count} frames")
        return ids

    async with Receiver(app_sender.url) as first:
        early = asyncio.create_task(picture_ids(first, 60))
        await asyncio.sleep(0.5)
        async with Receiver(app_sender.url) as late:
            ids = [await picture_ids(late, 40), await early]
    for each in ids:
        steps = [(b - a) % rtp_send.PICTURE_IDS for a, b in itertools.pairwise(each)]
        assert set(steps) == {1}, each


async def stamped_sequences(frames: AsyncIterator[av.VideoFrame], count: int) -> list[int]:
    """The stamped sequence numbers of the next ``count`` frames."""
    sequences = []
    for _ in range(count):
        found = read_stamp(await asyncio.wait_for(anext(frames), 10))
        assert found is not None
        sequences.append(found.sequence)
    return sequences


def in_order(sequences: list[int]) -> bool:
    return sequences == sorted(set(sequences))


async def test_a_frame_leaves_as_the_encoder_hands_it_over(sender_factory) -> None:
    """A viewer's RTP loop waits for its next frame; the encoder's hand-over sends it at
    once (``EncodedTrack._send``, the loop's ``send_now``) rather than on the loop's next
    turn. Most frames go that way (``webcam_frames_sent_at_once_total``), whole and in
    order."""
    app_sender = await sender_factory()
    async with Receiver(app_sender.url) as rx:
        assert in_order(await stamped_sequences(rx.frames(), 60))
        totals = app_sender.sessions.encoders.active()[0].totals
        assert totals.frames_sent_at_once >= totals.frames_sent // 2, totals
        # the RTP loop has sent the rest: the first frames, and any that found it busy
        assert totals.frames_sent_at_once < totals.frames_sent


async def test_a_send_that_has_to_wait_keeps_the_packets_in_order(sender_factory) -> None:
    """A send that has to wait (over TURN, while a channel is bound) goes on as a task;
    frames handed over meanwhile go to the RTP loop, which waits for it: every packet
    still leaves in order, and the viewer decodes every frame in order."""
    app_sender = await sender_factory(codec="vp8")
    async with Receiver(app_sender.url) as rx:
        frames = rx.frames()
        await asyncio.wait_for(anext(frames), 10)
        rtp = video_sender(app_sender)
        totals = app_sender.sessions.encoders.active()[0].totals
        transport = rtp.transport
        send_rtp = transport._send_rtp
        order: list[int] = []
        waits = 0

        async def _send_rtp(data: bytes) -> None:
            nonlocal waits
            if not is_rtcp(data):
                packet = RtpPacket.parse(data)
                if packet.ssrc == rtp._ssrc:  # not a retransmission (RTX)
                    if packet.sequence_number % 10 == 0:
                        waits += 1
                        await asyncio.sleep(0.05)  # longer than a frame interval
                    order.append(packet.sequence_number)
            await send_rtp(data)

        transport._send_rtp = _send_rtp  # type: ignore[method-assign]  # this test's tap
        sent_at_once = totals.frames_sent_at_once
        assert in_order(await stamped_sequences(frames, 60))
    steps = {(b - a) % 2**16 for a, b in itertools.pairwise(order)}
    assert steps == {1}, sorted(steps)
    assert waits >= 5
    assert totals.frames_sent_at_once > sent_at_once


def test_the_ntp_time_is_aiortcs() -> None:
    """abs-send-time and the reports' NTP time are read as aiortc reads them, without
    ``datetime``: the same 64-bit value to within a millisecond."""
    ours, theirs = rtp_send.ntp_now(), aiortc.clock.current_ntp_time()
    assert abs(ours - theirs) < (1 << 32) // 1000, (ours, theirs)
