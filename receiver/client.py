"""The receiving peer: offer, answer, and decoded frames for the caller.

async with Receiver("http://127.0.0.1:8080") as rx:
    async for frame in rx.frames():  # av.VideoFrame, decoded
        img = frame.to_ndarray(format="bgr24")
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TypeVar

import av
from aiortc import MediaStreamTrack, RTCPeerConnection, RTCRtpReceiver
from aiortc.mediastreams import MediaStreamError

from common import dtls_ciphers
from common.ice import rtc_configuration
from common.janus import JanusError, parse_janus_url

from . import ice_rtt, jitterbuffer, passthrough
from .janus_subscriber import JanusSubscription
from .nack_retry import NackRetry
from .passthrough import EncodedFrame
from .signalling import Signalling, SignallingError
from .stats import FrameStats

logger = logging.getLogger(__name__)

RTT_INTERVAL_SECONDS = 2.0
ENCODED_QUEUE_FRAMES = 300
T = TypeVar("T")


class ReceiverError(Exception):
    """Connecting or receiving failed; the message is one line for the user."""


class Receiver:
    """A connection to one sender. Owns its peer connection; ``close()`` ends it.

    ``encoded=True`` also hands out the frames as received (``encoded_frames()``), for
    lossless recording; ``decode=False`` then skips decoding altogether."""

    def __init__(
        self,
        url: str,
        *,
        ice_servers: Iterable[str] = (),
        connect_timeout: float = 10.0,
        signalling: str = "whep",
        token: str | None = None,
        tls: ssl.SSLContext | bool = True,
        stall_timeout: float = 3.0,
        stats: FrameStats | None = None,
        encoded: bool = False,
        decode: bool = True,
        codecs: Sequence[str] | None = None,
    ) -> None:
        dtls_ciphers.install()  # peers with RSA certificates (GStreamer)
        jitterbuffer.install()  # frames leave on their marker packet: one frame less latency
        if not (encoded or decode):
            raise ReceiverError("a receiver that neither decodes nor keeps encoded frames")
        self.url = url
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.stats = stats if stats is not None else FrameStats()
        self.ended: str | None = None  # why frames() stopped
        self.decode = decode
        self.codecs = [c.lower() for c in codecs] if codecs else None
        self._configuration = rtc_configuration(ice_servers)
        self._signalling: Signalling | None = None
        self._janus: JanusSubscription | None = None
        try:
            if url.startswith("janus+"):  # subscribe through an SFU
                self._janus = JanusSubscription(parse_janus_url(url), tls=tls)
            else:
                self._signalling = Signalling(url, signalling, token=token, tls=tls)
        except (SignallingError, JanusError) as exc:
            raise ReceiverError(str(exc)) from None
        self._pc: RTCPeerConnection | None = None
        self._track: asyncio.Future[MediaStreamTrack] | None = None
        self._first: av.VideoFrame | None = None
        self._encoded: asyncio.Queue[EncodedFrame] | None = (
            asyncio.Queue(ENCODED_QUEUE_FRAMES) if encoded else None
        )
        self._probe: asyncio.Task[None] | None = None
        self._requests: set[asyncio.Future[None]] = set()  # keyframe requests in flight
        self._nack_retry: NackRetry | None = None

    async def connect(self) -> None:
        """Negotiate, then wait for the first frame (``connect_timeout``)."""
        loop = asyncio.get_running_loop()
        self._pc = pc = RTCPeerConnection(self._configuration)
        self._track = track = loop.create_future()

        @pc.on("track")
        def _on_track(remote: MediaStreamTrack) -> None:
            if remote.kind != "video" or track.done():
                return
            if self._encoded is not None:  # before the receiver starts: see passthrough.py
                receiver = next(
                    t.receiver for t in pc.getTransceivers() if t.receiver.track is remote
                )
                passthrough.tap(receiver, self._on_encoded, decode=self.decode)
            track.set_result(remote)

        try:
            async with asyncio.timeout(self.connect_timeout):
                if self._janus is not None:
                    await self._janus.connect(pc)  # Janus offers, we answer
                else:
                    await self._offer(pc)
                if self.decode:
                    self._first = await (await track).recv()
                else:
                    assert self._encoded is not None
                    await track
                    first = await self._encoded.get()
                    self._encoded.put_nowait(first)  # still the first one out
        except JanusError as exc:
            await self.close()
            raise ReceiverError(str(exc)) from None
        except SignallingError as exc:
            await self.close()
            raise ReceiverError(str(exc)) from None
        except TimeoutError:
            await self.close()
            raise ReceiverError(
                f"no video from {self.url} within {self.connect_timeout:g} s"
            ) from None
        except MediaStreamError:
            await self.close()
            raise ReceiverError(f"{self.url} closed the connection before any video") from None
        except ValueError as exc:  # an answer aiortc cannot apply
            await self.close()
            raise ReceiverError(f"unusable answer from {self.url}: {exc}") from None
        logger.info("receiving from %s", self.url)
        self._probe = asyncio.create_task(self._measure_rtt(), name="rtt")

    async def _offer(self, pc: RTCPeerConnection) -> None:
        """We offer to receive video (WHEP or JSON), the sender answers."""
        assert self._signalling is not None
        transceiver = pc.addTransceiver("video", direction="recvonly")
        if self.codecs:
            transceiver.setCodecPreferences(
                [
                    c
                    for c in RTCRtpReceiver.getCapabilities("video").codecs
                    if c.name.lower() in self.codecs or c.name.lower() == "rtx"
                ]
            )
        await pc.setLocalDescription(await pc.createOffer())
        answer = await self._signalling.exchange(pc.localDescription)
        await pc.setRemoteDescription(answer)

    def _on_encoded(self, frame: EncodedFrame) -> None:
        assert self._encoded is not None
        if self._encoded.full():  # the consumer is stuck: drop, and restart on a keyframe
            self._encoded.get_nowait()
            self.request_keyframe()
        self._encoded.put_nowait(frame)

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe (RTCP PLI), e.g. to start a new recording file."""
        if self._pc is None:
            return
        receiver = self._pc.getReceivers()[0]
        for source in receiver.getSynchronizationSources():
            task = asyncio.ensure_future(receiver._send_rtcp_pli(source.source))
            self._requests.add(task)
            task.add_done_callback(self._requests.discard)

    async def _measure_rtt(self) -> None:
        while self._pc is not None:
            rtt = await ice_rtt.measure(self._pc)
            if rtt is not None:
                self.stats.rtt_ms.append(rtt * 1000)
            await asyncio.sleep(RTT_INTERVAL_SECONDS)

    async def _read_transport_stats(self) -> None:
        """Loss and jitter of the video stream, kept before the pc closes. Read from the
        receiver's per-SSRC counters: aiortc 1.16's getStats() files the RTX stream under
        the same id as the video, so after a retransmission it reports the RTX counters."""
        if self._pc is None:
            return
        for transceiver in self._pc.getTransceivers():
            if transceiver.kind != "video":
                continue
            receiver = transceiver.receiver
            streams = getattr(receiver, "_RTCRtpReceiver__remote_streams", {})
            rtx = getattr(receiver, "_RTCRtpReceiver__rtx_ssrc", {})  # RTX SSRC -> media SSRC
            for ssrc, stream in streams.items():
                if ssrc not in rtx:
                    self.stats.add_transport(
                        stream.packets_received, stream.packets_lost, stream.jitter
                    )

    async def _until_stalled(self, next_item: Callable[[], Awaitable[T]]) -> AsyncIterator[T]:
        """Items until the stream ends or stalls (no video for ``stall_timeout`` s: the
        sender vanished without a goodbye)."""
        while True:
            try:
                yield await asyncio.wait_for(next_item(), self.stall_timeout)
            except MediaStreamError:
                self.ended = "the sender ended the stream"
                return
            except TimeoutError:
                self.ended = f"no video for {self.stall_timeout:g} s"
                return

    async def frames(self) -> AsyncIterator[av.VideoFrame]:
        """Decoded frames until the connection ends, stalls or the receiver is closed."""
        if self._track is None or not self.decode:
            raise ReceiverError("not connected (or decode=False): connect() first")
        track = self._track.result()
        if self._first is not None:
            first, self._first = self._first, None
            self.stats.update(first)
            yield first
        async for frame in self._until_stalled(track.recv):
            self.stats.update(frame)
            yield frame

    async def encoded_frames(self) -> AsyncIterator[EncodedFrame]:
        """Frames as received, before decoding (needs ``encoded=True``)."""
        if self._encoded is None or self._pc is None:
            raise ReceiverError("encoded frames need Receiver(encoded=True) and connect()")
        async for frame in self._until_stalled(self._encoded.get):
            if not self.decode:
                self.stats.update_encoded(*frame.size)
            yield frame

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc else "closed"

    async def close(self) -> None:
        """End the signalling session (WHEP DELETE), then close the peer connection."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        if self._nack_retry is not None:
            await self._nack_retry.close()
        await self._read_transport_stats()
        if self._signalling is not None:
            await self._signalling.close()
        if self._janus is not None:
            await self._janus.close()
        if self._pc is not None:
            pc, self._pc = self._pc, None
            await pc.close()

    async def __aenter__(self) -> Receiver:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
