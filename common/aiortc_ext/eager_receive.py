"""Handle a connection's SRTP datagrams as they arrive (aiortc 1.16.0, aioice 0.10).

aioice hands each datagram to its ``Connection.data_received``, which puts it in the
connection's queue; aiortc's DTLS transport task takes it from there on the event loop's
next turn, decrypts it and gives it to the RTP receiver. For a video frame that turn is
about 0.04 ms of its path to the decoder (docs/performance.md), on every packet.

``apply(dtls)`` wraps ``data_received`` of the aioice connection under one DTLS transport
of ours (an instance attribute; every other connection in the process is untouched): once
the transport is connected and has its SRTP session, an SRTP or SRTCP datagram is
decrypted and handled at once, by the same steps as aiortc's ``_recv_next`` (the
transport's counters, ``clock.current_ms()`` as the arrival time, ``_handle_rtp_data`` or
``_handle_rtcp_data``), run in the caller until they first wait
(``common.tasks.start_eagerly``). While aioice's queue still holds datagrams (those that
came as the handshake ended), new ones join it, so none overtakes another. Handling that
has to wait (a NACK or a report sent through a TURN server while a channel is bound) goes
on as a task, and the datagrams that arrive meanwhile wait behind it, in order. Everything
else (STUN, DTLS records, anything before the handshake ends) takes aiortc's path. A
packet that fails to decrypt is dropped, as aiortc drops it; one that makes aiortc raise
is logged and dropped, where aiortc's task would have ended the connection.

``tests/test_eager_receive.py`` fails if an upgrade renames what this relies on, or if
the receiver stops getting its packets this way.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

import pylibsrtp
from aioice import Connection
from aiortc import RTCDtlsTransport, clock
from aiortc.rtcdtlstransport import State
from aiortc.rtp import is_rtcp

from common.tasks import start_eagerly

from . import check, private, relay_pairs

logger = logging.getLogger(__name__)

HOOK = "data_received"
BACKLOG_MAX = 1000  # datagrams behind a waiting one: beyond, the oldest go (a stalled loop)


class EagerReceive:
    """One DTLS transport's SRTP datagrams, handled as they arrive, in order."""

    def __init__(self, dtls: RTCDtlsTransport, conn: Connection) -> None:
        self._dtls = dtls
        self._stock = conn.data_received  # aioice's own: to its queue, for aiortc's task
        self._queue = conn._queue
        self._state = vars(dtls)
        self._rest: asyncio.Task[None] | None = None  # a handling that had to wait
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_MAX)
        self.handled = 0  # datagrams handled here, not by aiortc's task
        dtls.on("statechange", self._ended)

    def data_received(self, data: bytes, component: int) -> None:
        """aioice's hand-over of a datagram."""
        dtls = self._dtls
        srtp = 127 < data[0] < 192 and dtls._state is State.CONNECTED and self._ready(dtls)
        if not srtp or not self._queue.empty():
            # aiortc's own path: not SRTP, not yet, or behind what came as the handshake ended
            self._stock(data, component)
        elif self._rest is not None:
            self._backlog.append(data)  # behind the one that waits
        else:
            self._handle(data)

    @staticmethod
    def _ready(dtls: RTCDtlsTransport) -> bool:
        return dtls._rx_srtp is not None  # typed as always there; None until the handshake

    def _handle(self, data: bytes) -> None:
        self.handled += 1
        self._rest = start_eagerly(self._srtp(data))
        if self._rest is not None:
            self._rest.add_done_callback(self._resumed)

    def _resumed(self, _: asyncio.Task[None]) -> None:
        self._rest = None
        while self._backlog and self._rest is None:
            self._handle(self._backlog.popleft())

    async def _srtp(self, data: bytes) -> None:
        """What aiortc 1.16.0's ``RTCDtlsTransport._recv_next`` does with SRTP."""
        dtls, state = self._dtls, self._state
        state["_RTCDtlsTransport__rx_bytes"] += len(data)
        state["_RTCDtlsTransport__rx_packets"] += 1
        arrival_time_ms = clock.current_ms()
        try:
            if is_rtcp(data):
                await dtls._handle_rtcp_data(dtls._rx_srtp.unprotect_rtcp(data))
            else:
                plain = dtls._rx_srtp.unprotect(data)
                await dtls._handle_rtp_data(plain, arrival_time_ms=arrival_time_ms)
        except pylibsrtp.Error as exc:
            logger.debug("SRTP unprotect failed: %s", exc)
        except Exception:
            logger.warning("an RTP or RTCP packet could not be handled", exc_info=True)

    def _ended(self) -> None:
        if self._dtls._state in (State.CLOSED, State.FAILED):
            self._backlog.clear()
            if self._rest is not None:
                self._rest.cancel()


def connection(dtls: RTCDtlsTransport) -> Connection:
    """The aioice connection under an aiortc DTLS transport."""
    found = relay_pairs.connection(dtls.transport)
    if not isinstance(found, Connection):
        raise RuntimeError("aiortc changed: RTCIceTransport's aioice connection")
    return found


def apply(dtls: RTCDtlsTransport) -> EagerReceive:
    """Handle this DTLS transport's SRTP datagrams as they arrive; call before it
    connects. Once per transport (a bundled audio and video share one)."""
    check(__name__)
    conn = connection(dtls)
    hooked = getattr(conn.data_received, "__self__", None)
    if isinstance(hooked, EagerReceive):
        return hooked
    for name in ("rx_bytes", "rx_packets"):
        private(dtls, RTCDtlsTransport, name)  # raises if aiortc renamed it
    eager = EagerReceive(dtls, conn)
    # an instance attribute: this connection only
    conn.data_received = eager.data_received  # type: ignore[method-assign]  # per-object hook
    return eager


def applied(dtls: RTCDtlsTransport) -> bool:
    return isinstance(getattr(vars(connection(dtls)).get(HOOK), "__self__", None), EagerReceive)
