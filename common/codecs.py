"""Video codec choice, shared by the sender (answer) and the receiver (offer)."""

from __future__ import annotations

from aiortc import RTCRtpSender, RTCRtpTransceiver
from aiortc.rtcrtpparameters import RTCRtpCodecCapability

CODECS = ("vp8", "h264")
# Constrained baseline, level 3.1: the profile every browser decodes.
H264_PROFILE_LEVEL_ID = "42e01f"


def preferred_codecs(name: str) -> list[RTCRtpCodecCapability]:
    """Capabilities with codec ``name`` first (H.264 as constrained baseline), then the
    others as fallbacks, then RTX, for ``setCodecPreferences``."""
    name = name.lower()
    if name not in CODECS:
        raise ValueError(f"unknown codec {name!r}, choose one of {', '.join(CODECS)}")
    capabilities = RTCRtpSender.getCapabilities("video").codecs

    def rank(codec: RTCRtpCodecCapability) -> int:
        if codec.name.lower() == "rtx":
            return 3
        if codec.name.lower() == name:
            baseline = codec.parameters.get("profile-level-id") == H264_PROFILE_LEVEL_ID
            return 0 if name != "h264" or baseline else 1
        return 2

    return sorted(capabilities, key=rank)


def prefer_codec(transceiver: RTCRtpTransceiver, name: str) -> None:
    transceiver.setCodecPreferences(preferred_codecs(name))
