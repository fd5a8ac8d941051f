"""Route viewers' RTCP feedback to the shared encoder (aiortc 1.16.0).

Stock aiortc's ``RTCRtpSender`` acts on PLI/FIR by forcing a keyframe in its *own*
encoder and on REMB by setting its *own* encoder's bitrate. With encode-once fan-out
(``sender.encoding``) the sender only packetizes packets, so both would be lost. We wrap
``RTCRtpSender._send_keyframe`` and ``RTCRtpSender._handle_rtcp_packet`` to also tell the
track, when the track is one of our ``EncodedTrack``s. ``tests/test_rtcp_feedback.py``
fails if an aiortc upgrade renames or stops calling these.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiortc import RTCRtpSender
from aiortc.rtp import RTCP_PSFB_APP, AnyRtcpPacket, RtcpPsfbPacket, unpack_remb_fci

from common import aiortc_version

from .encoding import EncodedTrack

logger = logging.getLogger(__name__)

_installed = False


def installed() -> bool:
    return _installed


def install() -> None:
    """Patch RTCRtpSender once per process."""
    global _installed
    if _installed:
        return
    aiortc_version.check(__name__)
    send_keyframe: Callable[[RTCRtpSender], None] = RTCRtpSender._send_keyframe
    handle_rtcp: Callable[[RTCRtpSender, AnyRtcpPacket], Awaitable[None]] = (
        RTCRtpSender._handle_rtcp_packet
    )

    def _send_keyframe(self: RTCRtpSender) -> None:
        send_keyframe(self)
        if isinstance(self.track, EncodedTrack):
            self.track.request_keyframe()

    async def _handle_rtcp_packet(self: RTCRtpSender, packet: AnyRtcpPacket) -> None:
        await handle_rtcp(self, packet)
        track = self.track
        if (
            isinstance(track, EncodedTrack)
            and isinstance(packet, RtcpPsfbPacket)
            and packet.fmt == RTCP_PSFB_APP
        ):
            try:
                bitrate, ssrcs = unpack_remb_fci(packet.fci)
            except ValueError:
                return
            if self._ssrc in ssrcs:
                track.set_bitrate_estimate(bitrate)

    RTCRtpSender._send_keyframe = _send_keyframe  # type: ignore[method-assign]
    RTCRtpSender._handle_rtcp_packet = _handle_rtcp_packet  # type: ignore[method-assign]
    _installed = True
