"""The receiving peer: offer, answer, and decoded frames for the caller.

async with Receiver("http://127.0.0.1:8080") as rx:
    async for frame in rx.frames():  # av.VideoFrame, decoded
        img = frame.to_ndarray(format="bgr24")
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Iterable

import av
from aiortc import MediaStreamTrack, RTCPeerConnection
from aiortc.mediastreams import MediaStreamError
from aiortc.stats import RTCInboundRtpStreamStats

from common.ice import rtc_configuration

from . import ice_rtt
from .signalling import Signalling, SignallingError
from .stats import FrameStats

logger = logging.getLogger(__name__)

RTT_INTERVAL_SECONDS = 2.0


class ReceiverError(Exception):
    """Connecting or receiving failed; the message is one line for the user."""


class Receiver:
    """A connection to one sender. Owns its peer connection; ``close()`` ends it."""

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
    ) -> None:
        self.url = url
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.stats = stats if stats is not None else FrameStats()
        self.ended: str | None = None  # why frames() stopped
        self._configuration = rtc_configuration(ice_servers)
        try:
            self._signalling = Signalling(url, signalling, token=token, tls=tls)
        except SignallingError as exc:
            raise ReceiverError(str(exc)) from None
        self._pc: RTCPeerConnection | None = None
        self._track: asyncio.Future[MediaStreamTrack] | None = None
        self._first: av.VideoFrame | None = None
        self._probe: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Negotiate, then wait for the first decoded frame (``connect_timeout``)."""
        loop = asyncio.get_running_loop()
        self._pc = pc = RTCPeerConnection(self._configuration)
        self._track = track = loop.create_future()

        @pc.on("track")
        def _on_track(remote: MediaStreamTrack) -> None:
            if remote.kind == "video" and not track.done():
                track.set_result(remote)

        pc.addTransceiver("video", direction="recvonly")
        try:
            async with asyncio.timeout(self.connect_timeout):
                await pc.setLocalDescription(await pc.createOffer())
                answer = await self._signalling.exchange(pc.localDescription)
                await pc.setRemoteDescription(answer)
                self._first = await (await track).recv()
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

    async def _measure_rtt(self) -> None:
        while self._pc is not None:
            rtt = await ice_rtt.measure(self._pc)
            if rtt is not None:
                self.stats.rtt_ms.append(rtt * 1000)
            await asyncio.sleep(RTT_INTERVAL_SECONDS)

    async def _read_transport_stats(self) -> None:
        """Loss and jitter as aiortc's receiver counts them, kept before the pc closes."""
        if self._pc is None:
            return
        for item in (await self._pc.getStats()).values():
            if isinstance(item, RTCInboundRtpStreamStats) and item.kind == "video":
                self.stats.add_transport(item.packetsReceived, item.packetsLost, item.jitter)

    async def frames(self) -> AsyncIterator[av.VideoFrame]:
        """Decoded frames until the connection ends, stalls (no video for
        ``stall_timeout`` s: the sender vanished) or the receiver is closed."""
        if self._track is None:
            raise ReceiverError("not connected: use 'async with Receiver(...)' or connect()")
        track = self._track.result()
        while True:
            if self._first is not None:
                frame, self._first = self._first, None
            else:
                try:
                    frame = await asyncio.wait_for(track.recv(), self.stall_timeout)
                except MediaStreamError:
                    self.ended = "the sender ended the stream"
                    return
                except TimeoutError:
                    self.ended = f"no video for {self.stall_timeout:g} s"
                    return
            self.stats.update(frame)
            yield frame

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc else "closed"

    async def close(self) -> None:
        """End the signalling session (WHEP DELETE), then close the peer connection."""
        if self._probe is not None:
            self._probe.cancel()
            self._probe = None
        await self._read_transport_stats()
        await self._signalling.close()
        if self._pc is not None:
            pc, self._pc = self._pc, None
            await pc.close()

    async def __aenter__(self) -> Receiver:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
