"""H.264 Annex B byte streams: the NAL units the sender and the receiver look at."""

from __future__ import annotations

NAL_IDR, NAL_SPS, NAL_PPS = 5, 7, 8
START_CODE = b"\x00\x00\x00\x01"


def nal_units(data: bytes) -> list[bytes]:
    """Split an Annex B byte stream at its start codes."""
    units, start = [], None
    i = data.find(b"\x00\x00\x01")
    while i != -1:
        if start is not None:
            end = i - 1 if data[i - 1] == 0 else i
            units.append(data[start:end])
        start = i + 3
        i = data.find(b"\x00\x00\x01", start)
    if start is not None:
        units.append(data[start:])
    return [u for u in units if u]


def nal_types(data: bytes) -> set[int]:
    return {unit[0] & 0x1F for unit in nal_units(data)}


def parameter_sets(data: bytes) -> bytes:
    """The SPS and PPS in ``data``, in Annex B (a keyframe's, or an encoder's extradata)."""
    sets = [u for u in nal_units(data) if u[0] & 0x1F in (NAL_SPS, NAL_PPS)]
    return b"".join(START_CODE + u for u in sets)
