"""One encoded frame on its way to the viewers of its tier.

Every viewer on a tier gets the same ``av.Packet``; its RTP payloads are made once, by
the first viewer's sender that needs them (``common.aiortc_ext.rtp_send``), and shared
with the others. A VP8 frame's payloads carry a picture id, which a receiver reads to
tell a lost frame from a skipped one: it counts up per tier (``PictureIds``), so each
viewer sees consecutive ids as long as it stays on the tier, and a jump only where it
starts again at a keyframe (a new tier, or after dropping a backlog).
"""

from __future__ import annotations

import random
from typing import Any

import av

from common.aiortc_ext.rtp_send import PICTURE_IDS, Payloads, packetize


class Outgoing:
    """An encoded frame, with its RTP payloads made on first use."""

    __slots__ = ("_payloads", "is_keyframe", "packet", "picture_id", "size")

    def __init__(self, packet: av.Packet[Any], picture_id: int = 0) -> None:
        self.packet = packet
        self.is_keyframe = bool(packet.is_keyframe)
        self.size = packet.size
        self.picture_id = picture_id
        self._payloads: Payloads | None = None

    def payloads(self, codec: str) -> Payloads:
        if self._payloads is None:
            self._payloads = packetize(codec, self.packet, self.picture_id)
        return self._payloads


class PictureIds:
    """One tier's VP8 picture ids: from a random start (as aiortc's encoder), one per frame."""

    def __init__(self) -> None:
        self._next = random.randrange(PICTURE_IDS)

    def wrap(self, packets: list[av.Packet[Any]]) -> list[Outgoing]:
        wrapped = []
        for packet in packets:
            wrapped.append(Outgoing(packet, self._next))
            self._next = (self._next + 1) % PICTURE_IDS
        return wrapped
