"""Video frames as received, before decoding: what copy recording writes."""

from __future__ import annotations

from dataclasses import dataclass

from common.h264 import NAL_IDR, nal_units


@dataclass(frozen=True)
class EncodedFrame:
    """One complete video frame as received: VP8 bytes or H.264 Annex B."""

    codec: str  # "vp8" or "h264"
    data: bytes
    timestamp: int  # RTP clock (90 kHz), unwrapped by aiortc from the first frame
    keyframe: bool

    @property
    def size(self) -> tuple[int, int]:
        """(width, height) from a VP8 keyframe's header (RFC 6386 9.1); else (0, 0)."""
        if self.codec != "vp8" or not self.keyframe or len(self.data) < 10:
            return 0, 0
        width = int.from_bytes(self.data[6:8], "little") & 0x3FFF
        height = int.from_bytes(self.data[8:10], "little") & 0x3FFF
        return width, height

    @classmethod
    def received(cls, codec: str, data: bytes, timestamp: int) -> EncodedFrame:
        """A frame from ``common.aiortc_ext.passthrough``'s tap."""
        return cls(codec, data, timestamp, is_keyframe(codec, data))


def is_keyframe(codec: str, data: bytes) -> bool:
    if codec == "vp8":
        return bool(data) and not data[0] & 0x01  # P bit clear: a key frame (RFC 6386 9.1)
    return any(unit[0] & 0x1F == NAL_IDR for unit in nal_units(data))
