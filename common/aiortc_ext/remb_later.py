"""Feed a video receiver's bandwidth estimator after the frame is through (aiortc 1.16.0).

aiortc 1.16.0's ``RTCRtpReceiver._handle_rtp_packet`` gives every RTP packet to its
receive-side bandwidth estimator (``aiortc.rate.RemoteBitrateEstimator.add``: GCC's
arrival filter, overuse detector and rate control, in Python) before anything else. On
a 2-core VM that was 80 us of the packet's 150: a frame's last packet waited for it, and
with several packets a frame each packet waited for the one before's.

``apply()`` wraps ``add`` on one receiver's estimator (an instance attribute: the object
stays aiortc's, so ``remb_rtt`` still reaches it; other receivers are untouched). The
wrapper notes the packet's figures and returns None, so aiortc sends no REMB then; the
notes are fed to aiortc's ``add``, in arrival order, ``FEED_DELAY`` after the first of
them (by then a frame at 30 fps is decoded and with its reader, and the next is not
due), and a REMB that the estimator returns is sent as aiortc would have sent it. The
arrival times are aiortc's own, taken as each datagram came, so the estimate is the same;
only its report leaves up to ``FEED_DELAY`` later. ``tests/test_remb_later.py`` fails if
an upgrade renames the estimator or stops feeding it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from aiortc import RTCRtpReceiver
from aiortc.rate import RemoteBitrateEstimator
from aiortc.rtp import RTCP_PSFB_APP, RtcpPsfbPacket, pack_remb_fci

from . import check, private

logger = logging.getLogger(__name__)

FEED_DELAY = 0.008  # seconds after the first packet noted
MAX_NOTES = 2000  # fed at once beyond this (a stalled loop): memory stays bounded


Remb = tuple[int, list[int]]  # what aiortc's estimator returns: bitrate, SSRCs


class LaterEstimate:
    """One video receiver's deferred feeding of its REMB estimator (see the module):
    ``add`` is aiortc's, ``report`` sends a REMB it made."""

    def __init__(
        self,
        add: Callable[..., Remb | None],
        report: Callable[[Remb], Coroutine[Any, Any, None]],
    ) -> None:
        self._add = add
        self._report = report
        self._notes: list[dict[str, Any]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sending: set[asyncio.Task[None]] = set()
        self.fed = 0  # packets fed to aiortc's estimator, and REMBs it made of them
        self.reports = 0

    def note(self, **figures: Any) -> None:
        """aiortc's ``add``, as it calls it: noted, fed later; no REMB now."""
        self._notes.append(figures)
        if len(self._notes) >= MAX_NOTES:
            self.feed()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(FEED_DELAY, self.feed)

    def feed(self) -> None:
        """Every note to aiortc's estimator, in order; the last REMB it makes is sent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        notes, self._notes = self._notes, []
        remb = None
        for figures in notes:
            remb = self._add(**figures) or remb
        self.fed += len(notes)
        if remb is None:
            return
        self.reports += 1
        task = asyncio.create_task(self._report(remb), name="REMB")
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    async def close(self) -> None:
        """Drop what is not fed yet (the connection is ending) and any REMB being sent."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._notes.clear()
        for task in list(self._sending):
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)


def apply(receiver: RTCRtpReceiver) -> LaterEstimate | None:
    """Feed this video receiver's estimator after its frames; call before it receives.
    None when it has no estimator (aiortc makes one for video receivers only)."""
    check(__name__)
    estimator = private(receiver, RTCRtpReceiver, "remote_bitrate_estimator")
    if estimator is None:
        return None
    if not isinstance(estimator, RemoteBitrateEstimator):
        raise RuntimeError(f"aiortc's REMB estimator is a {type(estimator).__name__} now")

    async def report(remb: Remb) -> None:
        """As aiortc sends it (``_handle_rtp_packet``), when it knows its RTCP SSRC."""
        rtcp_ssrc = private(receiver, RTCRtpReceiver, "rtcp_ssrc")
        if isinstance(rtcp_ssrc, int):
            fci = pack_remb_fci(*remb)
            await receiver._send_rtcp(
                RtcpPsfbPacket(fmt=RTCP_PSFB_APP, ssrc=rtcp_ssrc, media_ssrc=0, fci=fci)
            )

    later = LaterEstimate(estimator.add, report)
    estimator.add = later.note  # type: ignore[method-assign,assignment]  # per-object hook
    logger.debug("video receiver feeds its bandwidth estimator after each frame")
    return later


def applied(receiver: RTCRtpReceiver) -> bool:
    estimator = private(receiver, RTCRtpReceiver, "remote_bitrate_estimator")
    return estimator is not None and "add" in vars(estimator)
