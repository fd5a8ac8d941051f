"""The receiving side for Python code: connect, reconnect, and hand out frames.

    async with Receiver("http://127.0.0.1:8080", retry=Backoff(max_tries=3)) as rx:
        async for frame in rx.frames():  # av.VideoFrame, decoded
            img = frame.to_ndarray(format="bgr24")

Audio alone (the sender's camera stays closed)::

    async with Receiver("http://127.0.0.1:8080", video=False) as rx:
        async for frame in rx.audio_frames():  # av.AudioFrame, 48 kHz
            ...

With ``retry`` the receiver reconnects (with that backoff) when the sender goes away or
the video stalls, as the CLI does; ``items()`` then also yields a ``Gap`` between two
connections, so a consumer can split a recording there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import av
from aiortc import RTCConfiguration, RTCIceTransportPolicy

from common.aiortc_ext.nack_retry import MAX_TRIES
from common.backoff import Backoff
from common.ice import fetch_link_ice_servers, is_turn, rtc_configuration
from common.janus import JanusError, JanusTarget, parse_janus_url
from common.loop_budget import MAX_DECODE_SECONDS
from common.tasks import cancel
from common.turn_check import TurnError

from .audio import AudioPacket
from .connection import Connection
from .encoded import EncodedFrame
from .janus_subscriber import JanusSubscription
from .signalling import Signalling, SignallingError, endpoint
from .stats import FrameStats

logger = logging.getLogger(__name__)

# Ten seconds for a consumer that stalls (30 video frames, 50 audio packets and 50 decoded
# audio frames a second), then the oldest go.
QUEUE_ITEMS = 1300
BAD_REQUEST = 400


class ReceiverError(Exception):
    """Connecting or receiving failed; the message is one line for the user. ``final``:
    trying again cannot help (refused TURN credentials), so no retry is made."""

    def __init__(self, message: str, *, final: bool = False) -> None:
        super().__init__(message)
        self.final = final


@dataclass(frozen=True)
class Gap:
    """The connection was lost (``reason``); what follows comes from a new one."""

    reason: str


Item = av.VideoFrame | EncodedFrame | av.AudioFrame | AudioPacket | Gap


class _End:
    """The last item: nothing more will come (``Receiver.ended`` says why)."""


class Receiver:
    """Video from one sender (or one Janus feed), across reconnections. Owns its
    connection; ``close()`` ends it.

    ``encoded=True`` also hands out the frames as received (``encoded_frames()``), for
    lossless recording; ``decode=False`` then skips decoding altogether. ``retry``: how to
    wait between attempts when connecting fails or the connection is lost (None: one
    connection only). ``nack_retries``: how often a lost packet is asked for again after
    aiortc's single NACK (0: aiortc's behaviour). ``loop_decode``: the longest decode (s)
    done on the event loop rather than in a thread (``common.aiortc_ext.loop_decode``; 0:
    aiortc's decoder thread decodes every frame).

    ``video=False`` asks for the audio alone (``audio_frames()``; with ``encoded=True``
    also its packets as received, ``AudioPacket``): the audio's packets then say that the
    connection is alive. Not through Janus.

    ICE: ``ice_servers`` (URLs) are ours; without any, over WHEP, each connection asks
    the sender which to use (OPTIONS: its ``Link`` headers, with the TURN credentials it
    hands out). ``ice_transport_policy="relay"``: only through a TURN server."""

    def __init__(
        self,
        url: str,
        *,
        ice_servers: Iterable[str] = (),
        ice_transport_policy: str = "all",
        connect_timeout: float = 10.0,
        signalling: str = "whep",
        token: str | None = None,
        tls: ssl.SSLContext | bool = True,
        stall_timeout: float = 3.0,
        stats: FrameStats | None = None,
        encoded: bool = False,
        decode: bool = True,
        codecs: Sequence[str] | None = None,
        retry: Backoff | None = None,
        nack_retries: int = MAX_TRIES,
        loop_decode: float = MAX_DECODE_SECONDS,
        audio: bool = True,
        decoded_audio: bool = False,
        video: bool = True,
    ) -> None:
        if not (encoded or decode):
            raise ReceiverError("a receiver that neither decodes nor keeps encoded frames")
        if not (video or audio):
            raise ReceiverError(
                "a receiver of neither video nor audio: drop video=False or audio=False"
            )
        if not video and url.startswith("janus+"):
            raise ReceiverError("Janus subscriptions are not supported with --no-video")
        self.url = url
        self.connect_timeout = connect_timeout
        self.stall_timeout = stall_timeout
        self.stats = stats if stats is not None else FrameStats()
        self.ended: str | None = None  # why the frames stopped
        self.encoded = encoded
        self.decode = decode
        self.codecs = [c.lower() for c in codecs] if codecs else None
        self.retry = retry
        self.nack_retries = nack_retries
        self.loop_decode = loop_decode
        self.audio = audio
        self.video = video
        self.media = "video" if video else "audio"  # what must keep arriving
        self.stats.video = video
        # decoded audio frames in items() also with decode=False (playing a copy recording)
        self.decoded_audio = audio and (decode or decoded_audio)
        ice_servers = list(ice_servers)
        self._configuration = rtc_configuration(ice_servers, ice_transport_policy)
        self._ice_from_sender = not ice_servers and signalling == "whep"
        self._signalling_kind = signalling
        self._token = token
        self._tls = tls
        self._janus_target: JanusTarget | None = None
        try:
            if url.startswith("janus+"):  # subscribe through an SFU
                self._janus_target = parse_janus_url(url)
                self._ice_from_sender = False
            else:
                self._new_signalling()  # a bad URL is an error now, not at connect()
        except (SignallingError, JanusError) as exc:
            raise ReceiverError(str(exc)) from None
        self._items: asyncio.Queue[Item | _End] = asyncio.Queue(QUEUE_ITEMS)
        self._connection: Connection | None = None
        self._supervisor: asyncio.Task[None] | None = None
        self._receiving = asyncio.Event()  # the current connection delivers (video or audio)
        self._last_arrival = 0.0
        self._iterating = False

    def _new_signalling(self) -> Signalling:
        return Signalling(self.url, self._signalling_kind, token=self._token, tls=self._tls)

    # -- connecting -------------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (retrying as ``retry`` says) and wait for the first frame; from then on
        the connection is kept up in the background. Raises ReceiverError."""
        if self._supervisor is not None:
            raise ReceiverError("already connected")
        self._supervisor = asyncio.create_task(self._supervise(), name=f"receiver {self.url}")
        receiving = asyncio.create_task(self._receiving.wait())
        either: set[asyncio.Future[Any]] = {self._supervisor, receiving}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            receiving.cancel()
        if not self._receiving.is_set():
            await self.close()
            raise ReceiverError(self.ended or f"no {self.media} from {self.url}")
        logger.info("receiving from %s", self.url)

    async def _supervise(self) -> None:
        """Connections one after the other, until one ends for good."""
        try:
            while True:
                try:
                    connection = await self._open()
                except ReceiverError as exc:
                    if exc.final:
                        self.ended = str(exc)
                        return
                    if not await self._wait_to_retry(str(exc)):
                        return
                    continue
                if self.retry is not None:
                    self.retry.reset()
                try:
                    reason = await self._until_lost(connection)
                finally:
                    self._receiving.clear()
                    self._connection = None
                    await connection.close()
                self._mark(Gap(reason))
                self.stats.gap()
                if not await self._wait_to_retry(reason, self._received_so_far()):
                    return
        finally:
            self._finish()

    def _received_so_far(self) -> str:
        if self.video:
            return f"after {self.stats.frames} frames"
        return f"after {self.stats.audio.packets} audio packets"

    async def _wait_to_retry(self, reason: str, detail: str = "") -> bool:
        """Wait before the next attempt; False (and ``ended`` set) when there is none."""
        delay = self.retry.next_delay() if self.retry is not None else None
        if delay is None:
            self.ended = reason
            return False
        logger.warning("%s%s; retrying in %.2g s", reason, f" {detail}" if detail else "", delay)
        await asyncio.sleep(delay)
        return True

    async def _open(self) -> Connection:
        """A new connection, up to its first frame (``connect_timeout``)."""
        janus = None
        if self._janus_target is not None:
            janus = JanusSubscription(self._janus_target, tls=self._tls)
        connection = Connection(
            await self._ice_configuration(),
            self.stats,
            signalling=None if janus else self._new_signalling(),
            janus=janus,
            codecs=self.codecs,
            decode=self.decode,
            on_frame=self._on_frame,
            on_encoded=self._on_encoded if self.encoded else None,
            nack_retries=self.nack_retries,
            loop_decode=self.loop_decode,
            receive_audio=self.audio,
            receive_video=self.video,
            on_audio_arrival=None if self.video else self._arrived,
            on_audio_packet=self._offer if self.encoded else None,
            on_audio_frame=self._offer if self.decoded_audio else None,
        )
        self._connection = connection
        try:
            async with asyncio.timeout(self.connect_timeout):
                await connection.negotiate()
                receiving = asyncio.create_task(self._receiving.wait())
                either: set[asyncio.Future[Any]] = {receiving, connection.ended}
                try:
                    await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    receiving.cancel()
                if not self._receiving.is_set():
                    raise ReceiverError(f"{self.url} closed the connection before any {self.media}")
        except BaseException as exc:
            self._connection = None
            await connection.close()
            if isinstance(exc, SignallingError):
                # 400: the sender refused this offer (e.g. audio alone from a sender with
                # --audio none); the same offer again would be refused again.
                raise ReceiverError(str(exc), final=exc.status == BAD_REQUEST) from None
            if isinstance(exc, JanusError):
                raise ReceiverError(str(exc)) from None
            if isinstance(exc, TurnError):
                hint = ""
                if exc.credentials and self._ice_from_sender:
                    hint = "; they came from the sender: does its --turn-secret match?"
                raise ReceiverError(f"{exc}{hint}", final=exc.credentials) from None
            if isinstance(exc, TimeoutError):
                why = f"; {connection.turn_problem}" if connection.turn_problem else ""
                raise ReceiverError(
                    f"no {self.media} from {self.url} within {self.connect_timeout:g} s{why}"
                ) from None
            if isinstance(exc, ValueError):  # an answer aiortc cannot apply
                raise ReceiverError(f"unusable answer from {self.url}: {exc}") from None
            raise
        return connection

    async def _ice_configuration(self) -> RTCConfiguration:
        """Our ICE servers, or the ones the sender advertises now (fresh credentials)."""
        if not self._ice_from_sender:
            return self._configuration
        headers = {"Authorization": f"Bearer {self._token}"} if self._token else {}
        servers = await fetch_link_ice_servers(endpoint(self.url, "whep"), headers, self._tls)
        policy = self._configuration.iceTransportPolicy
        if policy == RTCIceTransportPolicy.RELAY and not any(map(is_turn, servers)):
            raise ReceiverError(
                f"--ice-transport-policy relay needs a TURN server, and {self.url} "
                "advertises none: give --ice-server turn:...",
                final=True,
            )
        return RTCConfiguration(iceServers=servers, iceTransportPolicy=policy)

    async def _until_lost(self, connection: Connection) -> str:
        """Why the connection ended: the sender said so, or no video (audio alone: no
        audio) for ``stall_timeout`` s (the sender vanished without a goodbye)."""
        while True:
            quiet = time.monotonic() - self._last_arrival
            if quiet >= self.stall_timeout:
                return f"no {self.media} for {self.stall_timeout:g} s"
            with contextlib.suppress(TimeoutError):
                return await asyncio.wait_for(
                    asyncio.shield(connection.ended), self.stall_timeout - quiet
                )

    # -- what arrives -----------------------------------------------------------------

    def _arrived(self) -> None:
        self._last_arrival = time.monotonic()
        self._receiving.set()

    def _on_frame(self, frame: av.VideoFrame) -> None:
        self._arrived()
        self._offer(frame)

    def _on_encoded(self, frame: EncodedFrame) -> None:
        if not self.decode:
            self._arrived()
        self._offer(frame)

    def _count(self, item: Item) -> None:
        """Statistics count what the caller gets (decoded frames when decoding)."""
        if isinstance(item, av.VideoFrame):
            self.stats.update(item)
        elif isinstance(item, EncodedFrame) and not self.decode:
            self.stats.update_encoded(*item.size)

    def _offer(self, item: Item) -> None:
        """Queue an item; a consumer that stopped reading loses the oldest, and encoded
        frames then restart at a keyframe."""
        if self._items.full():
            dropped = self._items.get_nowait()
            if isinstance(dropped, EncodedFrame):
                self.request_keyframe()
        self._items.put_nowait(item)

    def _mark(self, item: Gap | _End) -> None:
        """Queue a marker: it is never dropped, the oldest frame is."""
        if self._items.full():
            self._items.get_nowait()
        self._items.put_nowait(item)

    def _finish(self) -> None:
        self._receiving.clear()
        self._mark(_End())

    # -- for the caller ---------------------------------------------------------------

    async def items(self) -> AsyncIterator[Item]:
        """Decoded frames, encoded frames (``encoded=True``) and ``Gap``s, in the order
        they came, until the receiver ends (``ended`` says why) or is closed."""
        if self._supervisor is None:
            raise ReceiverError("not connected: connect() first")
        if self._iterating:
            raise ReceiverError("one reader at a time: use items() to get everything")
        self._iterating = True
        try:
            while True:
                item = await self._items.get()
                if isinstance(item, _End):
                    self._items.put_nowait(item)  # a later reader ends at once too
                    return
                self._count(item)
                yield item
        finally:
            self._iterating = False

    async def frames(self) -> AsyncIterator[av.VideoFrame]:
        """Decoded frames (reconnections are invisible here; see ``items()``)."""
        if not self.video:
            raise ReceiverError("video=False: no video frames; use audio_frames()")
        if not self.decode:
            raise ReceiverError("decode=False: use encoded_frames()")
        async for item in self.items():
            if isinstance(item, av.VideoFrame):
                yield item

    async def audio_frames(self) -> AsyncIterator[av.AudioFrame]:
        """Decoded audio (48 kHz, s16, stereo; ``pts`` counts samples from the stream's
        first packet) when the sender sends audio. Video items are skipped: to get both,
        iterate ``items()``."""
        if not self.decoded_audio:
            raise ReceiverError(
                "decoded audio needs audio=True, and decode=True or decoded_audio=True"
            )
        async for item in self.items():
            if isinstance(item, av.AudioFrame):
                yield item

    @property
    def receives_audio(self) -> bool:
        """Whether the current connection carries the sender's audio."""
        return self._connection is not None and self._connection.audio is not None

    async def encoded_frames(self) -> AsyncIterator[EncodedFrame]:
        """Frames as received, before decoding (needs ``encoded=True``)."""
        if not self.video:
            raise ReceiverError("video=False: no video frames; use items() for audio packets")
        if not self.encoded:
            raise ReceiverError("encoded frames need Receiver(encoded=True)")
        async for item in self.items():
            if isinstance(item, EncodedFrame):
                yield item

    def request_keyframe(self) -> None:
        """Ask the sender for a keyframe (RTCP PLI), e.g. to start a new recording file."""
        if self._connection is not None:
            self._connection.request_keyframe()

    @property
    def connection(self) -> Connection | None:
        """The current connection (its ``pc`` is aiortc's peer connection), if any."""
        return self._connection

    @property
    def connection_state(self) -> str:
        return self._connection.pc.connectionState if self._connection else "closed"

    async def close(self) -> None:
        """End the connection (WHEP DELETE, peer connection closed) and stop reconnecting."""
        await cancel(self._supervisor)
        if self._connection is not None:  # cancelled while opening
            await self._connection.close()
            self._connection = None
        if self.ended is None:
            self.ended = "closed"

    async def __aenter__(self) -> Receiver:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
