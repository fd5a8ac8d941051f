"""Our changes to aiortc stay on our own connections: a plain ``RTCPeerConnection`` made in
the same process as a running sender and a ``Receiver`` is stock aiortc, side by side with
ours (common/aiortc_ext)."""

from __future__ import annotations

import asyncio
import queue

import aiohttp
from aioice import Connection
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpReceiver,
    RTCRtpSender,
    RTCSessionDescription,
    VideoStreamTrack,
)
from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate
from aiortc.rtp import RTCP_PSFB_PLI, RtcpPsfbPacket
from OpenSSL import SSL

from common.aiortc_ext import (
    audio_jitter,
    dtls_ciphers,
    eager_receive,
    frame_timing,
    jitterbuffer,
    relay_pairs,
    remb_later,
    remb_rtt,
    rtcp_feedback,
    rtp_send,
)
from common.aiortc_ext.jitterbuffer import LowLatencyJitterBuffer
from common.aiortc_ext.loop_decode import LoopDecoder
from common.aiortc_ext.passthrough import TapQueue
from receiver import Receiver
from sender.audio import AudioSpec

from .helpers import wait_until

PLAIN = RTCConfiguration(iceServers=[])  # offline: no implicit STUN server
FRAMES = 10
STOCK_REMB_RTT_MS = 200  # aiortc.rate.AimdRateControl assumes this round trip


def cipher_names(certificate: RTCCertificate) -> list[str]:
    """The DTLS 1.2 suites the connection with this certificate offers."""
    context = certificate._create_ssl_context(srtp_profiles=SRTP_PROFILES)
    return [name for name in SSL.Connection(context).get_cipher_list() if "-" in name]


def certificate(pc: RTCPeerConnection) -> RTCCertificate:
    return pc._RTCPeerConnection__certificates[0]  # type: ignore[attr-defined]  # aiortc's private list


def jitter_buffer(receiver: RTCRtpReceiver) -> JitterBuffer:
    return receiver._RTCRtpReceiver__jitter_buffer  # type: ignore[attr-defined]  # aiortc's private buffer


def count_frames(pc: RTCPeerConnection) -> asyncio.Future[int]:
    """Done with ``FRAMES`` once that many frames of the connection's track are decoded."""
    loop = asyncio.get_running_loop()
    counted: asyncio.Future[int] = loop.create_future()

    async def count(track: MediaStreamTrack) -> None:
        for _ in range(FRAMES):
            await track.recv()
        counted.set_result(FRAMES)

    @pc.on("track")
    def _on_track(track: MediaStreamTrack) -> None:
        task = loop.create_task(count(track))
        counted.add_done_callback(lambda _: task.cancel())

    return counted


async def plain_pair() -> tuple[RTCPeerConnection, RTCPeerConnection, asyncio.Future[int]]:
    """A stock aiortc sender and receiver, connected in memory; the future counts
    ``FRAMES`` decoded frames."""
    sending, receiving = RTCPeerConnection(PLAIN), RTCPeerConnection(PLAIN)
    sending.addTrack(VideoStreamTrack())
    counted = count_frames(receiving)

    await sending.setLocalDescription(await sending.createOffer())
    await receiving.setRemoteDescription(sending.localDescription)
    await receiving.setLocalDescription(await receiving.createAnswer())
    await sending.setRemoteDescription(receiving.localDescription)
    return sending, receiving, counted


async def plain_viewer(url: str) -> tuple[RTCPeerConnection, asyncio.Future[int]]:
    """A stock aiortc viewer of our sender (video and audio), through WHEP."""
    pc = RTCPeerConnection(PLAIN)
    pc.addTransceiver("video", direction="recvonly")
    pc.addTransceiver("audio", direction="recvonly")
    counted = count_frames(pc)

    await pc.setLocalDescription(await pc.createOffer())
    async with (
        aiohttp.ClientSession() as http,
        http.post(
            url + "/whep",
            data=pc.localDescription.sdp,
            headers={"Content-Type": "application/sdp"},
        ) as response,
    ):
        assert response.status == 201, await response.text()
        answer = await response.text()
    await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    return pc, counted


async def test_plain_aiortc_next_to_ours_is_stock(sender_factory) -> None:
    sender = await sender_factory(audio=AudioSpec("testsrc"))
    async with Receiver(sender.url, connect_timeout=30, encoded=True) as ours:
        plain_sending, plain_receiving, plain_frames = await plain_pair()
        viewer, viewer_frames = await plain_viewer(sender.url)
        try:
            assert await asyncio.wait_for(plain_frames, 30) == FRAMES
            assert await asyncio.wait_for(viewer_frames, 30) == FRAMES
            await wait_until(lambda: len(sender.sessions) == 2, what="both viewers joined")

            # Ours: every change applied.
            assert ours.connection is not None
            our_pc = ours.connection.pc
            our_receiver = our_pc.getReceivers()[0]
            assert type(jitter_buffer(our_receiver)) is LowLatencyJitterBuffer
            assert frame_timing.applied(our_receiver)
            assert remb_later.applied(our_receiver)
            decoder_queue = our_receiver._RTCRtpReceiver__decoder_queue  # type: ignore[attr-defined]  # aiortc's private queue
            assert isinstance(decoder_queue, TapQueue)
            assert isinstance(decoder_queue.inner, LoopDecoder)  # the tap wraps it
            assert ours.connection.audio is not None
            our_audio = ours.connection.audio.receiver
            assert type(jitter_buffer(our_audio)) is audio_jitter.SkippingAudioBuffer
            assert audio_jitter.applied(our_audio)
            assert dtls_ciphers.applied(our_pc)
            assert relay_pairs.applied(our_pc)
            assert eager_receive.applied(our_receiver.transport)
            assert all(relay_pairs.applied(s.pc) for s in sender.sessions.live())
            assert cipher_names(certificate(our_pc)) == list(dtls_ciphers.CIPHERS)
            session_senders = [s.pc.getSenders()[0] for s in sender.sessions.live()]
            assert sum(rtcp_feedback.applied(s) for s in session_senders) == 2
            assert sum(rtp_send.applied(s) for s in session_senders) == 2
            # Our REMB estimator works with the round trip measured (ICE), not 200 ms.
            stats = ours.connection.stats
            await wait_until(lambda: bool(stats.rtt_ms), what="a round trip measured")
            assert remb_rtt.rtt_ms(our_receiver) == max(
                remb_rtt.MIN_RTT_MS, round(stats.rtt_ms[-1])
            )
            assert remb_rtt.rtt_ms(our_receiver) != STOCK_REMB_RTT_MS

            # Plain: stock aiortc in every respect we change.
            for pc in (plain_sending, plain_receiving, viewer):
                assert not dtls_ciphers.applied(pc)
                assert not relay_pairs.applied(pc)
                assert not eager_receive.applied(pc.getTransceivers()[0].receiver.transport)
                assert cipher_names(certificate(pc)) == list(dtls_ciphers.STOCK_CIPHERS)
            for pc in (plain_receiving, viewer):
                receiver = pc.getReceivers()[0]
                assert type(jitter_buffer(receiver)) is JitterBuffer
                assert not jitterbuffer.applied(receiver)
                assert not frame_timing.applied(receiver)
                assert not remb_later.applied(receiver)
                assert type(receiver._RTCRtpReceiver__decoder_queue) is queue.Queue  # type: ignore[attr-defined]  # aiortc's private queue
                assert remb_rtt.rtt_ms(receiver) == STOCK_REMB_RTT_MS
            # The plain viewer's audio keeps aiortc's prefetching buffer.
            plain_audio = viewer.getReceivers()[1]
            assert plain_audio.track.kind == "audio"
            assert type(jitter_buffer(plain_audio)) is JitterBuffer
            assert not audio_jitter.applied(plain_audio)
            assert "_handle_rtp_packet" not in vars(plain_audio)
            plain_sender = plain_sending.getSenders()[0]
            assert not rtcp_feedback.applied(plain_sender)
            assert not rtp_send.applied(plain_sender)
            assert "_run_rtp" not in vars(plain_sender)
            # ... and its RTCP handling is aiortc's: a PLI forces its own encoder's keyframe.
            await plain_sender._handle_rtcp_packet(
                RtcpPsfbPacket(fmt=RTCP_PSFB_PLI, ssrc=0, media_ssrc=plain_sender._ssrc)
            )
            assert plain_sender._RTCRtpSender__force_keyframe  # type: ignore[attr-defined]  # aiortc's private flag

            # Nothing process-wide was replaced.
            assert RTCRtpSender._handle_rtcp_packet.__module__ == "aiortc.rtcrtpsender"
            assert RTCRtpSender._send_keyframe.__module__ == "aiortc.rtcrtpsender"
            assert RTCRtpSender._run_rtp.__module__ == "aiortc.rtcrtpsender"
            assert RTCCertificate._create_ssl_context.__module__ == "aiortc.rtcdtlstransport"
            assert Connection._pair_remote_candidate.__module__ == "aioice.ice"
            assert Connection.data_received.__module__ == "aioice.ice"
            import aiortc.rtcrtpreceiver

            assert aiortc.rtcrtpreceiver.JitterBuffer is JitterBuffer
            assert aiortc.rtcrtpreceiver.TimestampMapper.map.__module__ == "aiortc.rtcrtpreceiver"
        finally:
            for pc in (plain_sending, plain_receiving, viewer):
                await pc.close()
