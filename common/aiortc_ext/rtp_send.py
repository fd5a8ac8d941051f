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
  (``sender_reports``) run as before.

``tests/test_rtp_send.py`` fails if an upgrade renames what this relies on, or if a packet
it sends differs by a byte from the one aiortc would have serialized.
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
from aiortc.rtcrtpsender import random_sequence_number
from aiortc.rtp import RTP_HISTORY_SIZE, HeaderExtensions, HeaderExtensionsMap, RtpPacket
from aiortc.utils import random32, uint16_add, uint32_add

from . import check, private
from .sender_report_tap import abs_send_time, ntp_time

logger = logging.getLogger(__name__)

# A frame's RTP payloads and its RTP timestamp (before the sender's random origin).
Payloads = tuple[list[bytes], int]
PayloadSource = Callable[["av.Packet[Any]"], Payloads]

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
    """One sender's RTP loop (see the module docstring)."""

    def __init__(self, sender: RTCRtpSender) -> None:
        self._sender = sender
        self._state = vars(sender)

    def _private(self, name: str) -> Any:
        return private(self._sender, RTCRtpSender, name)

    async def run(self, codec: RTCRtpCodecParameters) -> None:
        sender, state = self._sender, self._state
        started: asyncio.Event = self._private("rtp_started")
        exited: asyncio.Event = self._private("rtp_exited")
        history: dict[int, RtpPacket] = self._private("rtp_history")
        extensions_map: HeaderExtensionsMap = self._private("rtp_header_extensions_map")
        mid: str | None = self._private("mid")
        started.set()
        sequence_number = random_sequence_number()
        timestamp_origin = random32()
        payload_type = codec.payloadType
        assert payload_type is not None  # negotiated before send() starts this loop
        try:
            while True:
                if state["_RTCRtpSender__track"] is None:  # no track (yet): nothing to send
                    await asyncio.sleep(0.02)
                    continue
                frame = await sender._next_encoded_frame(codec)
                if frame is None:
                    continue
                timestamp = uint32_add(timestamp_origin, frame.timestamp)
                ntp = ntp_now()
                extensions = HeaderExtensions(mid=mid, abs_send_time=abs_send_time(ntp))
                profile, extension_bytes = extensions_map.set(extensions)
                ssrc = sender._ssrc
                last = len(frame.payloads) - 1
                octets = 0
                for i, payload in enumerate(frame.payloads):
                    marker = 1 if i == last else 0
                    packet = RtpPacket(payload_type, marker, sequence_number, timestamp, ssrc)
                    packet.payload = payload
                    packet.extensions = extensions
                    history[sequence_number % RTP_HISTORY_SIZE] = packet
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
                    await sender.transport._send_rtp(data)
                    octets += len(payload)
                    sequence_number = uint16_add(sequence_number, 1)
                # what aiortc's next sender report and its statistics read
                state["_RTCRtpSender__ntp_timestamp"] = ntp
                state["_RTCRtpSender__rtp_timestamp"] = timestamp
                state["_RTCRtpSender__octet_count"] += octets
                state["_RTCRtpSender__packet_count"] += last + 1
        except (asyncio.CancelledError, ConnectionError, MediaStreamError):
            pass
        except Exception:
            # stop() waits for the exit below: say what went wrong, as aiortc does
            logger.warning("RTP sender failed", exc_info=True)
        track = state["_RTCRtpSender__track"]
        if track is not None:
            track.stop()
            state["_RTCRtpSender__track"] = None
        state["_RTCRtpSender__encoder"] = None
        exited.set()


def apply(sender: RTCRtpSender, payloads: PayloadSource) -> None:
    """Send this video sender's frames with ``payloads(packet)``'s RTP payloads, in the
    loop above; call before it starts sending."""
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
    sender._run_rtp = _Loop(sender).run  # type: ignore[method-assign]  # per-object hook


def applied(sender: RTCRtpSender) -> bool:
    return isinstance(vars(sender).get("_RTCRtpSender__encoder"), _SharedPacker) and (
        "_run_rtp" in vars(sender)
    )
