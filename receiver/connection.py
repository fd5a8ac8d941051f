"""One peer connection to a sender: offer (or answer Janus's offer), then video.

``Receiver`` (``client.py``) owns these, one after the other, and reconnects; a
``Connection`` only knows its own life: it connects, feeds what it receives to its
``on_frame``/``on_encoded`` callbacks, and ends when the sender ends the stream, the video
stalls or it is closed. ``receive_video=False`` offers audio alone: the audio's packets
then tell that the connection is alive, and its end ends the connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

import av
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCRtpReceiver,
)
from aiortc.mediastreams import MediaStreamError

from common import aiortc_ext
from common.aiortc_ext import (
    audio_jitter,
    eager_receive,
    frame_timing,
    h264_profiles,
    ice_rtt,
    jitterbuffer,
    loop_decode,
    passthrough,
    remb_later,
    remb_rtt,
    streams,
)
from common.aiortc_ext.loop_decode import LoopDecoder
from common.aiortc_ext.nack_retry import MAX_TRIES, NackRetry
from common.loop_budget import MAX_DECODE_SECONDS
from common.turn_check import turn_failure

from . import audio
from .encoded import EncodedFrame
from .janus_subscriber import JanusSubscription
from .signalling import Signalling
from .stats import FrameStats

logger = logging.getLogger(__name__)

RTT_INTERVAL_SECONDS = 2.0


class Connection:
    """A peer connection and the tasks that read it. ``close()`` ends both."""

    def __init__(
        self,
        configuration: RTCConfiguration,
        stats: FrameStats,
        *,
        signalling: Signalling | None = None,
        janus: JanusSubscription | None = None,
        codecs: Sequence[str] | None = None,
        decode: bool = True,
        on_frame: Callable[[av.VideoFrame], None],
        on_encoded: Callable[[EncodedFrame], None] | None = None,
        nack_retries: int = MAX_TRIES,
        loop_decode: float = MAX_DECODE_SECONDS,
        receive_audio: bool = False,
        receive_video: bool = True,
        on_audio_arrival: Callable[[], None] | None = None,
        on_audio_packet: Callable[[audio.AudioPacket], None] | None = None,
        on_audio_frame: Callable[[av.AudioFrame], None] | None = None,
    ) -> None:
        self.pc: RTCPeerConnection = aiortc_ext.peer_connection(configuration)
        self._relay_only = configuration.iceTransportPolicy == RTCIceTransportPolicy.RELAY
        self.turn_problem: str | None = None  # our TURN server gave no relay (see negotiate)
        self.stats = stats
        self.ended: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._signalling = signalling
        self._janus = janus
        self._codecs = codecs
        self._decode = decode
        self._on_frame = on_frame
        self._on_encoded = on_encoded
        self._nack_retries = nack_retries
        self._loop_decode = loop_decode
        # Decodes quick frames on the event loop (None: aiortc's decoder thread does all).
        self.loop_decoder: LoopDecoder | None = None
        self._receiver: RTCRtpReceiver | None = None
        self._clock: frame_timing.FrameClock | None = None  # times the decoded frames
        self._tasks: list[asyncio.Task[None]] = []
        self._nack_retry: NackRetry | None = None
        self.remb_later: remb_later.LaterEstimate | None = None
        self._requests: set[asyncio.Future[None]] = set()  # keyframe requests in flight
        self._closed = False
        self._receive_audio = receive_audio or not receive_video
        self._receive_video = receive_video
        self._on_audio_arrival = on_audio_arrival
        self._on_audio_packet = on_audio_packet
        self._on_audio_frame = on_audio_frame
        self.audio: audio.AudioStream | None = None  # when the sender sends audio
        self.eager: eager_receive.EagerReceive | None = None  # once a track arrives
        self.pc.on("track", self._on_track)

    def _on_track(self, track: MediaStreamTrack) -> None:
        receiver = next(t.receiver for t in self.pc.getTransceivers() if t.receiver.track is track)
        # each datagram decrypted and handled as it arrives (before the first one)
        self.eager = eager_receive.apply(receiver.transport)
        if track.kind == "audio":
            self._on_audio_track(track, receiver)
            return
        if track.kind != "video" or self._receiver is not None or not self._receive_video:
            return
        self._receiver = receiver
        if self.audio is not None:
            self.audio.set_sync(audio.Lipsync(receiver, self.audio.receiver))
        # Our changes to this receiver (common/aiortc_ext), before its first packet.
        jitterbuffer.apply(receiver)  # frames leave on their marker packet
        self.remb_later = remb_later.apply(receiver)  # the estimator fed after the frame
        # NACKs repeated at the round-trip time; holes that will not be repaired skipped to
        # a keyframe (with nack_retries=0 too: then only aiortc's single NACK is sent).
        self._nack_retry = NackRetry(receiver, max_tries=self._nack_retries, rtt=self._rtt)
        self._nack_retry.start()
        if self._decode and self._loop_decode > 0:  # before the tap, which wraps it
            self.loop_decoder = loop_decode.apply(receiver, self._loop_decode)
        if self._on_encoded is not None:
            on_encoded = self._on_encoded
            passthrough.tap(
                receiver,
                lambda codec, data, ts: on_encoded(EncodedFrame.received(codec, data, ts)),
                decode=self._decode,
            )
        if self._decode:
            self._clock = frame_timing.apply(receiver)  # for the stats' breakdown
            if self.loop_decoder is not None:
                self.loop_decoder.clock = self._clock  # each frame's decode time too
                self.loop_decoder.reader = self._picture  # each picture at once
            self._tasks.append(asyncio.create_task(self._read(track), name="decoded frames"))
        self._tasks.append(asyncio.create_task(self._measure_rtt(), name="rtt"))
        if self._janus is not None:
            self._tasks.append(asyncio.create_task(self._watch_janus(), name="janus"))

    def _on_audio_track(self, track: MediaStreamTrack, receiver: RTCRtpReceiver) -> None:
        """The sender's audio (``receiver.audio``), placed on the video's clock."""
        if self.audio is not None or not self._receive_audio:
            return
        audio_jitter.apply(receiver)  # a lost packet holds the rest back 60 ms, not 300
        alone = not self._receive_video  # its own clock; its packets keep us alive
        sync: audio.Lipsync | audio.OwnClock | None = None
        if alone:
            sync = audio.OwnClock()
        elif self._receiver is not None:
            sync = audio.Lipsync(self._receiver, receiver)
        self.audio = audio.AudioStream(
            receiver,
            track,
            sync,
            self.stats.audio,
            on_packet=self._on_audio_packet,
            on_frame=self._on_audio_frame,
            on_arrival=self._on_audio_arrival if alone else None,
            on_ended=(lambda: self.end("the sender ended the stream")) if alone else None,
        )
        if alone:  # what the video track starts otherwise
            self._tasks.append(asyncio.create_task(self._measure_rtt(), name="rtt"))

    async def negotiate(self) -> None:
        """Offer and answer; raises SignallingError, JanusError, ValueError or TurnError."""
        if self._janus is not None:
            await self._janus.connect(self.pc)  # Janus offers, we answer
            await self._check_turn(0.0)
            return
        assert self._signalling is not None
        if self._receive_video:
            self._add_video_transceiver()
        if self._receive_audio:
            audio.add_transceiver(self.pc)
        started = time.monotonic()
        await self.pc.setLocalDescription(await self.pc.createOffer())  # gathers
        await self._check_turn(time.monotonic() - started)
        answer = await self._signalling.exchange(self.pc.localDescription)
        await self.pc.setRemoteDescription(answer)

    def _add_video_transceiver(self) -> None:
        transceiver = self.pc.addTransceiver("video", direction="recvonly")
        # Main and High H.264 too (FFmpeg decodes them): a camera's own stream can then
        # be passed through to us as it is (sender.passthrough).
        h264_profiles.offer_profiles(transceiver)
        if self._codecs:
            capabilities = RTCRtpReceiver.getCapabilities("video")
            assert capabilities is not None
            transceiver.setCodecPreferences(
                [
                    c
                    for c in capabilities.codecs
                    if c.name.lower() in self._codecs or c.name.lower() == "rtx"
                ]
            )

    async def _check_turn(self, gathering_seconds: float) -> None:
        """Our TURN server gave no relayed candidate: refused credentials, or the relay
        policy (nothing else to try) end this attempt at once; otherwise direct paths may
        still work, and the reason is kept for the time-out message."""
        problem = await turn_failure(self.pc, gathering_seconds)
        if problem is None:
            return
        if problem.credentials or self._relay_only:
            raise problem
        logger.warning("%s; trying without a relay", problem)
        self.turn_problem = str(problem)

    async def _read(self, track: MediaStreamTrack) -> None:
        """The track's pictures (from aiortc's decoder thread; ours hands them to
        ``_picture`` itself), until it ends."""
        try:
            while True:
                frame = await track.recv()
                assert isinstance(frame, av.VideoFrame)
                self._picture(frame)
        except MediaStreamError:
            self.end("the sender ended the stream")

    def _picture(self, frame: av.VideoFrame) -> None:
        times = self._clock.decoded(frame.pts) if self._clock is not None else None
        self._on_frame(frame)
        if times is not None:  # once the reader has the frame (it runs first)
            asyncio.get_running_loop().call_soon(self.stats.decoded, frame, times)

    async def _watch_janus(self) -> None:
        assert self._janus is not None
        await self._janus.lost.wait()
        self.end(self._janus.reason or "Janus ended the subscription")

    def end(self, reason: str) -> None:
        if not self.ended.done():
            self.ended.set_result(reason)

    @property
    def signalling(self) -> Signalling | None:
        """The WHEP (or JSON) exchange of this connection; None through Janus."""
        return self._signalling

    @property
    def nack_retries_sent(self) -> int:
        return self._nack_retry.sent if self._nack_retry is not None else 0

    def _rtt(self) -> float | None:
        """The latest round trip measured (seconds), for the NACK retry interval."""
        return self.stats.rtt_ms[-1] / 1000 if self.stats.rtt_ms else None

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe (RTCP PLI)."""
        if self._receiver is None:
            return
        task = asyncio.ensure_future(streams.send_pli(self._receiver))
        self._requests.add(task)
        task.add_done_callback(self._requests.discard)

    async def _measure_rtt(self) -> None:
        while True:
            rtt = await ice_rtt.measure(self.pc)
            if rtt is not None:
                self.stats.rtt_ms.append(rtt * 1000)
                if self._receiver is not None:
                    remb_rtt.update(self._receiver, rtt)  # its REMB grows per round trip
            await asyncio.sleep(RTT_INTERVAL_SECONDS)

    def _read_transport_stats(self) -> None:
        """Loss and jitter of the video stream, kept before the pc closes."""
        if self._receiver is None:
            return
        for stream in streams.media_streams(self._receiver).values():
            self.stats.add_transport(stream.packets_received, stream.packets_lost, stream.jitter)

    async def close(self) -> None:
        """End the signalling session (WHEP DELETE), then close the peer connection."""
        if self._closed:
            return
        self._closed = True
        self.end("closed")
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.audio is not None:
            await self.audio.close()
        if self._nack_retry is not None:
            await self._nack_retry.close()
        if self.remb_later is not None:
            await self.remb_later.close()
        self._read_transport_stats()
        if self._signalling is not None:
            await self._signalling.close()
        if self._janus is not None:
            await self._janus.close()
        await self.pc.close()
