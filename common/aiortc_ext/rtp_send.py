"""The RTP loop of a video sender whose frames are encoded once for many viewers (aiortc
1.16.0).

aiortc 1.16.0's ``RTCRtpSender._run_rtp`` takes a frame from its track, packetizes it with
its own encoder's ``pack()`` and, for each RTP packet, makes an ``RtpPacket``, reads the
wall clock twice through ``datetime`` (the abs-send-time extension, and the NTP time its
next sender report will carry), builds the header extensions in Python and serializes the
packet. Our viewers share one encoder per tier (``sender.encoding``), so every viewer's
sender packetized the same frame again, and with 8 viewers of 1920x1080 H.264 the send
loops took about 0.08 of a core of the sender's event loop.

``apply(sender, payloads)`` changes one sender of ours (instance attributes, as the other
modules here do; every other sender in the process is stock):

- its encoder (the private ``__encoder`` aiortc makes on the first frame) is set to one
  whose ``pack(packet)`` asks ``payloads``: the viewer's track hands out the payloads its
  tier made once for every viewer (``packetize``; a VP8 picture id runs per tier);
- ``_run_rtp`` is the same loop with, per frame, one clock reading and one set of header
  extensions (aiortc's own ``HeaderExtensionsMap`` builds them: the mid and abs-send-time
  are the same for every packet of a frame, which leaves in one go without yielding),
  and per packet a ``struct.pack`` of the header. It keeps what the rest of aiortc reads:
  each packet in the history NACKs are answered from (an ``RtpPacket``, for
  ``_retransmit`` and RTX), the packet and octet counts and the NTP/RTP times of the
  sender reports, the started/exited events ``stop()`` waits on, and it still takes each
  frame through ``_next_encoded_frame``, so the per-object hooks on it
  (``sender_reports``) run as before;
- ``apply()`` returns the loop's ``send_now``, which the track calls as the encoder hands
  it a frame while the loop waits on an empty queue: the same steps (``_next_encoded_frame``,
  then the packets) run at once, in the encoder's own task, until they first have to wait
  (``common.tasks.start_eagerly``). A task waiting for a queued item resumes only on the
  event loop's next turn, after whatever else is ready: about 0.08 ms of a 640x480 frame's
  path (docs/performance.md). A send that has to wait (a TURN channel being bound) goes on
  as a task; the loop sends nothing before it is done, and frames handed over meanwhile
  queue for the loop, so packets leave in order.

``tests/test_rtp_send.py`` fails if an upgrade renames what this relies on, if a packet it
sends differs by a byte from the one aiortc would have serialized, or if frames stop
leaving as they are handed over or leave out of order.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable
from typing import Any

import av
from aiortc import RTCRtpSender
from aiortc.codecs.h264 import H264Encoder
from aiortc.codecs.vpx import Vp8Encoder
from aiortc.mediastreams import VIDEO_TIME_BASE, MediaStreamError, convert_timebase
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtcrtpsender import RTCEncodedFrame, random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, HeaderExtensionsMap, RtpPacket
from aiortc.utils import random32, uint16_add, uint32_add

from common.tasks import start_eagerly

from . import check, private
from .sender_report_tap import abs_send_time, ntp_time

logger = logging.getLogger(__name__)

# A frame's RTP payloads and its RTP timestamp (before the sender's random origin).
Payloads = tuple[list[bytes], int]
PayloadSource = Callable[["av.Packet[Any]"], Payloads]
SendNow = Callable[[Callable[[], None]], bool]  # ``_Loop.send_now``

PICTURE_IDS = 1 << 15  # VP8's 15-bit picture id
HEADER = struct.Struct("!BBHLL")
HEADER_WITH_EXTENSIONS = struct.Struct("!BBHLLHH")
VERSION_2 = 0x80
HAS_EXTENSIONS = 0x10


def packetize(codec: str, packet: av.Packet[Any], picture_id: int = 0) -> Payloads:
    """``packet``'s RTP payloads as aiortc's encoder's ``pack()`` makes them (its own
    packetizers), and its RTP timestamp; ``picture_id`` is VP8's."""
    data = bytes(packet)
    if codec == "vp8":
        payloads = Vp8Encoder._packetize(data, picture_id % PICTURE_IDS)
    elif codec == "h264":
        payloads = H264Encoder._packetize(H264Encoder._split_bitstream(data))
    else:
        raise ValueError(f"no RTP packetizer for {codec}")
    assert packet.pts is not None and packet.time_base is not None
    return payloads, convert_timebase(packet.pts, packet.time_base, VIDEO_TIME_BASE)


def ntp_now() -> int:
    """The 64-bit NTP time now, as ``aiortc.clock.current_ntp_time()`` gives it, without
    going through ``datetime``."""
    return ntp_time(time.time())


class _SharedPacker:
    """What aiortc's ``_next_encoded_frame`` calls ``pack()`` on, in place of its encoder."""

    def __init__(self, payloads: PayloadSource) -> None:
        self._payloads = payloads

    def pack(self, packet: av.Packet[Any]) -> Payloads:
        return self._payloads(packet)


class _Loop:
    """One sender's RTP loop (see the module docstring), and its way to send a frame at
    once (``send_now``)."""

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._state = vars(sender)
        self._codec: RTCRtpCodecParameters | None = None  # set when the loop starts
        self._sequence_number = random_sequence_number()
        self._timestamp_origin = random32()
        self._rest: asyncio.Task[None] | None = None  # a frame ``send_now`` left waiting
        # aiortc's, read when the loop starts (``send()`` has set the mid by then)
        self._history: dict[int, RtpPacket] = {}
        self._extensions_map = HeaderExtensionsMap()
        self._mid: str | None = None

    def _private(self, name: str) -> Any:
        return private(self._sender, RTCRtpSender, name)

    async def run(self, codec: RTCRtpCodecParameters) -> None:
        sender, state = self._sender, self._state
        started: asyncio.Event = self._private("rtp_started")
        exited: asyncio.Event = self._private("rtp_exited")
        assert codec.payloadType is not None  # negotiated before send() starts this loop
        self._history = self._private("rtp_history")
        self._extensions_map = self._private("rtp_header_extensions_map")
        self._mid = self._private("mid")
        self._codec = codec
        started.set()
        try:
            while True:
                if state["_RTCRtpSender__track"] is None:  # no track (yet): nothing to send
                    await asyncio.sleep(0.02)
                    continue
                frame = await sender._next_encoded_frame(codec)
                if frame is not None:
                    if self._rest is not None:
                        await self._rest  # the frame before it leaves first
                    await self._send(frame, codec)
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # stop() waits for the exit below: say what went wrong, as aiortc does
            logger.warning("RTP sender failed", exc_info=True)
        self._codec = None
        if self._rest is not None:
            self._rest.cancel()
        track = state["_RTCRtpSender__track"]
        if track is not None:
            track.stop()
            state["_RTCRtpSender__track"] = None
        state["_RTCRtpSender__encoder"] = None
        exited.set()

    def send_now(self, done: Callable[[], None]) -> bool:
        """Take the next frame from the track and send it now, in the caller, rather than
        on the loop's next turn (the track calls this while the loop waits for it, empty);
        ``done()`` once it is sent. A send that has to wait (a TURN channel being bound)
        goes on as a task, which the loop's next frame waits for. False: not now (the loop
        has not started or has ended, or such a send is still going on)."""
        codec = self._codec
        if codec is None or (self._rest is not None and not self._rest.done()):
            return False
        self._rest = start_eagerly(self._send_next(codec))
        if self._rest is None:
            done()
        else:
            self._rest.add_done_callback(lambda _: done())
        return True

    async def _send_next(self, codec: RTCRtpCodecParameters) -> None:
        try:
            frame = await self._sender._next_encoded_frame(codec)
            if frame is not None:
                await self._send(frame, codec)
        except (ConnectionError, MediaStreamError):
            pass  # the loop meets it too, and ends
        except Exception:
            logger.warning("RTP sender failed to send a frame", exc_info=True)

    async def _send(self, frame: RTCEncodedFrame, codec: RTCRtpCodecParameters) -> None:
        sender, state, history = self._sender, self._state, self._history
        payload_type = codec.payloadType
        assert payload_type is not None
        timestamp = uint32_add(self._timestamp_origin, frame.timestamp)
        ntp = ntp_now()
        extensions = HeaderExtensions(mid=self._mid, abs_send_time=abs_send_time(ntp))
        profile, extension_bytes = self._extensions_map.set(extensions)
        ssrc = sender._ssrc
        last = len(frame.payloads) - 1
        octets = 0
        for i, payload in enumerate(frame.payloads):
            sequence_number = self._sequence_number
            marker = 1 if i == last else 0
            second = (marker << 7) | payload_type
            if extension_bytes:
                header = HEADER_WITH_EXTENSIONS.pack(
                    VERSION_2 | HAS_EXTENSIONS,
                    second,
                    sequence_number,
                    timestamp,
                    ssrc,
                    profile,
                    len(extension_bytes) >> 2,
                )
                data = header + extension_bytes + payload
            else:
                data = HEADER.pack(VERSION_2, second, sequence_number, timestamp, ssrc)
                data += payload
            self._sequence_number = uint16_add(sequence_number, 1)
            await sender.transport._send_rtp(data)
            # kept for a NACK once it is on its way (a NACK can only follow it)
            packet = RtpPacket(payload_type, marker, sequence_number, timestamp, ssrc)
            packet.payload = payload
            packet.extensions = extensions
            history[sequence_number % RTP_HISTORY_SIZE] = packet
            octets += len(payload)
        # what aiortc's next sender report and its statistics read
        state["_RTCRtpSender__ntp_timestamp"] = ntp
        state["_RTCRtpSender__rtp_timestamp"] = timestamp
        state["_RTCRtpSender__octet_count"] += octets
        state["_RTCRtpSender__packet_count"] += last + 1


def apply(sender: RTCRtpSender, payloads: PayloadSource) -> SendNow:
    """Send this video sender's frames with ``payloads(packet)``'s RTP payloads, in the
    loop above; call before it starts sending. Returns the loop's ``send_now``, for the
    track."""
    check(__name__)
    for name in (
        "encoder",
        "rtp_started",
        "rtp_exited",
        "rtp_history",
        "rtp_header_extensions_map",
        "mid",
        "track",
        "ntp_timestamp",
        "rtp_timestamp",
        "octet_count",
        "packet_count",
    ):
        private(sender, RTCRtpSender, name)  # raises if aiortc renamed it
    vars(sender)["_RTCRtpSender__encoder"] = _SharedPacker(payloads)
    # an instance attribute: send() starts it as self._run_rtp, so only this sender changes
    loop = _Loop(sender)
    sender._run_rtp = loop.run  # type: ignore[method-assign]  # per-object hook
    return loop.send_now


def applied(sender: RTCRtpSender) -> bool:
    return isinstance(vars(sender).get("_RTCRtpSender__encoder"), _SharedPacker) and (
        "_run_rtp" in vars(sender)
    )
