"""``common.aiortc_ext.eager_receive`` (aiortc 1.16.0, aioice): our receiver decrypts and
handles each SRTP datagram as aioice hands it over, rather than on the event loop's next
turn, and keeps them in order when one has to wait. Fails if an upgrade renames what it
relies on, or if the receiver's packets stop going this way."""

from __future__ import annotations

import asyncio
import itertools

from aiortc import RTCDtlsTransport, RTCRtpReceiver
from aiortc.rtp import RtpPacket

from common.aiortc_ext import eager_receive
from receiver import Receiver

from .test_rtp_send import in_order, stamped_sequences

FRAMES = 60


def transport(rx: Receiver) -> RTCDtlsTransport:
    assert rx.connection is not None
    receiver = rx.connection.pc.getReceivers()[0]
    assert isinstance(receiver, RTCRtpReceiver)
    return receiver.transport


async def test_the_receivers_packets_are_handled_as_they_arrive(sender_factory) -> None:
    """Nearly every datagram of the stream is handled in aioice's hand-over (a few from
    the end of the handshake may go aiortc's way), and the transport still counts them."""
    app_sender = await sender_factory()
    async with Receiver(app_sender.url) as rx:
        assert in_order(await stamped_sequences(rx.frames(), FRAMES))
        dtls = transport(rx)
        assert eager_receive.applied(dtls)
        assert rx.connection is not None and rx.connection.eager is not None
        handled = rx.connection.eager.handled
        stats = [s for s in dtls._get_stats().values() if s.type == "transport"]
        received = stats[0].packetsReceived
    assert handled >= FRAMES
    assert received >= handled >= received - 20, (received, handled)


async def test_a_handling_that_waits_keeps_the_packets_in_order(sender_factory) -> None:
    """A packet whose handling has to wait (a NACK sent through a TURN server while a
    channel is bound) goes on as a task; the datagrams arriving meanwhile wait behind it,
    so aiortc's receiver still gets every packet in order."""
    app_sender = await sender_factory(codec="vp8")
    async with Receiver(app_sender.url) as rx:
        frames = rx.frames()
        assert in_order(await stamped_sequences(frames, 5))
        dtls = transport(rx)
        handle = dtls._handle_rtp_data
        order: list[int] = []
        waits = 0

        async def _handle_rtp_data(data: bytes, arrival_time_ms: int) -> None:
            nonlocal waits
            sequence = RtpPacket.parse(data).sequence_number
            if sequence % 10 == 0:
                waits += 1
                await asyncio.sleep(0.05)  # longer than a frame interval
            order.append(sequence)
            await handle(data, arrival_time_ms)

        dtls._handle_rtp_data = _handle_rtp_data  # type: ignore[method-assign]  # this test's tap
        assert in_order(await stamped_sequences(frames, FRAMES))
    steps = {(b - a) % 2**16 for a, b in itertools.pairwise(order)}  # one stream: no audio
    assert steps == {1}, sorted(steps)
    assert waits >= 5
