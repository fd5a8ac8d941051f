"""What we read from, and send through, an aiortc 1.16.0 ``RTCRtpReceiver`` beyond its API.

``getStats()`` files the media and the RTX stream under one id, so after the first
retransmission it reports the RTX stream's counters; the per-SSRC table it keeps privately
is right. ``tests/test_netns.py`` (packets received >= frames) fails if this reads the wrong
stream; ``tests/test_nack_retry.py`` fails if an upgrade renames the attributes.
"""

from __future__ import annotations

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import StreamStatistics

from . import private


def media_streams(receiver: RTCRtpReceiver) -> dict[int, StreamStatistics]:
    """The receiver's media streams (SSRC -> counters), without their RTX streams."""
    streams = private(receiver, RTCRtpReceiver, "remote_streams")
    rtx = private(receiver, RTCRtpReceiver, "rtx_ssrc")  # RTX SSRC -> media SSRC
    assert isinstance(streams, dict) and isinstance(rtx, dict)
    return {ssrc: stream for ssrc, stream in streams.items() if ssrc not in rtx}


def media_ssrc(receiver: RTCRtpReceiver) -> int | None:
    """The SSRC of the media stream being received, once a packet has arrived."""
    return next(iter(media_streams(receiver)), None)


async def send_pli(receiver: RTCRtpReceiver) -> None:
    """Ask for a keyframe (RTCP PLI) on every media stream: aiortc sends PLIs only on its
    own triggers (decode errors, jitter buffer resets), through a private method."""
    for ssrc in media_streams(receiver):
        await receiver._send_rtcp_pli(ssrc)
