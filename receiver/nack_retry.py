"""Ask again for packets that stay lost (aiortc 1.16.0).

aiortc's ``RTCRtpReceiver`` sends one NACK when a gap appears. If the retransmission is
lost as well, nothing asks again until another gap appears, and the jitter buffer holds
every later frame meanwhile: with 5% loss between two hosts, stalls of 0.2-1.3 s were
measured, and at low loss rates one lasts until the buffer overflows (seconds). We repeat
the NACK for packets still missing one interval after aiortc's, up to ``MAX_TRIES`` times.
This reads the receiver's private NACK generator and stream table;
``tests/test_nack_retry.py`` fails if an aiortc upgrade renames them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiortc import RTCRtpReceiver

from common import aiortc_version

logger = logging.getLogger(__name__)

INTERVAL_SECONDS = 0.05  # a LAN round trip is well under this; a WAN one scales it up
MAX_TRIES = 10
GENERATOR = "_RTCRtpReceiver__nack_generator"
STREAMS = "_RTCRtpReceiver__remote_streams"
RTX = "_RTCRtpReceiver__rtx_ssrc"


class NackRetry:
    """Owned by one receiving connection; ``close()`` stops it."""

    def __init__(self, receiver: RTCRtpReceiver, interval: float = INTERVAL_SECONDS) -> None:
        aiortc_version.check(__name__)
        for name in (GENERATOR, STREAMS, RTX):
            if not hasattr(receiver, name):
                raise RuntimeError(f"aiortc changed: RTCRtpReceiver has no {name}")
        self.interval = interval
        self.sent = 0  # NACKs we repeated
        self._receiver = receiver
        self._tries: dict[int, int] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nack retry")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            await self.tick()

    async def tick(self) -> list[int]:
        """Repeat the NACK for what was already missing at the previous tick."""
        missing = set(getattr(self._receiver, GENERATOR).missing)
        due = sorted(s for s in missing if s in self._tries and self._tries[s] < MAX_TRIES)
        self._tries = {s: self._tries.get(s, 0) + (s in due) for s in missing}
        ssrc = self._media_ssrc()
        if due and ssrc is not None:
            logger.debug("asking again for %d lost packets", len(due))
            await self._receiver._send_rtcp_nack(ssrc, due)
            self.sent += 1
        return due

    def _media_ssrc(self) -> int | None:
        rtx = getattr(self._receiver, RTX)
        return next((s for s in getattr(self._receiver, STREAMS) if s not in rtx), None)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
