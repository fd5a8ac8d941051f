"""Repair lost packets in time, and give up on those that will not come (aiortc 1.16.0).

aiortc's ``RTCRtpReceiver`` sends one NACK when a gap appears. If the retransmission is
lost as well, nothing asks again until another gap appears, and the jitter buffer holds
every later frame meanwhile; a packet lost for good (older than the sender's
retransmission history: aiortc's ``RTCRtpSender`` keeps the last ``RTP_HISTORY_SIZE`` =
128 packets, and its ``NackGenerator`` stops asking for older ones) holds them until ~512
packets overflow the buffer: seconds.

``NackRetry`` runs every ``TICK_SECONDS`` beside one video receiver of ours:

- **Repeated NACKs.** A packet still missing one retry interval after it was last asked
  for is asked for again, up to ``max_tries`` times. The interval follows the round-trip
  time when one is known (``RTT_FACTOR`` x RTT + ``RTT_MARGIN_SECONDS``, at least
  ``MIN_INTERVAL_SECONDS``; ``INTERVAL_SECONDS`` without one). Each packet has its own
  timer, checked every 10 ms: on a LAN a twice-lost packet is asked for again 40 ms after
  the first NACK, not 50-100 ms later as with one 50 ms period for all.
- **A keyframe early.** A hole at the buffer's head still missing after
  ``keyframe_after`` (``KEYFRAME_AFTER_SECONDS``, at least two intervals) asks the sender
  for a keyframe while its repair is still asked for: whichever comes first ends the
  freeze. A complete keyframe behind the hole (asked for or not) ends it at once: the hole
  is given up and the picture goes on from the keyframe. A hole that outlives a stall of
  either peer, or every retransmission, so freezes the picture for about
  ``KEYFRAME_AFTER_SECONDS`` plus a keyframe's round trip, not ``GIVE_UP_SECONDS`` plus it
  (a CI run at 5% random loss: one hole unrepaired for 300 ms, a 415 ms gap).
- **Giving up.** The packet that holds the buffer's head is given up when it cannot come
  any more: a keyframe came after it (above), aiortc no longer asks for it (it is older
  than the sender's history), its retries are used up (two intervals after the last), or
  it has been missing for ``give_up_after`` (``GIVE_UP_SECONDS``, stretched to two
  intervals on long round trips). The buffer (``jitterbuffer.LowLatencyJitterBuffer.
  give_up``) then skips the hole and drops frames until a keyframe, and a PLI asks the
  sender for one at once unless one is in hand (again every ``PLI_REPEAT_SECONDS`` while
  none has come).

It reads the receiver's private NACK generator and stream table and needs the buffer of
``jitterbuffer.apply``. ``Connection`` starts one for each video receiver it creates
(``max_tries=0``: aiortc's single NACK, but holes are still given up);
``tests/test_nack_retry.py`` fails if an aiortc upgrade renames what it reads, and
``tests/test_loss.py`` (no freeze across lossy links) fails if it stops working.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiortc import RTCRtpReceiver
from aiortc.rtcrtpreceiver import NackGenerator

from ..tasks import cancel
from . import check, jitterbuffer, private
from .streams import media_ssrc

logger = logging.getLogger(__name__)

TICK_SECONDS = 0.01
INTERVAL_SECONDS = 0.05  # between NACKs for one packet while the round trip is unknown
# Above the sender's own guard (rtcp_feedback.RESEND_MIN_INTERVAL, 30 ms: a packet is
# resent at most once per that), or every other request of ours would be ignored.
MIN_INTERVAL_SECONDS = 0.04
RTT_FACTOR = 1.5
RTT_MARGIN_SECONDS = 0.01
MAX_INTERVAL_SECONDS = 1.0
MAX_TRIES = 10
GIVE_UP_SECONDS = 0.3  # a hole older than this is given up (at least two intervals)
KEYFRAME_AFTER_SECONDS = 0.1  # a hole older than this asks for a keyframe (at least two intervals)
KEYFRAME_CAME = "a keyframe came after it"
PLI_REPEAT_SECONDS = 0.3  # ask again while no keyframe has come
EPSILON = 1e-6  # timer comparisons: a tick on the due time counts


@dataclass
class _Missing:
    first: float  # when we first saw it missing (aiortc's NACK went out then)
    last: float  # when it was last asked for
    tries: int = 0  # our NACKs for it


class NackRetry:
    """Owned by one receiving connection; ``close()`` stops it.

    ``rtt``: returns the latest round-trip time in seconds (None when unknown).
    ``give_up_after``: None turns giving up off (the buffer then waits for its overflow).
    ``keyframe_after``: None asks for a keyframe only once a hole is given up. Either way
    only while giving up is on: ``give_up_after=None`` asks for none for a hole.
    """

    def __init__(
        self,
        receiver: RTCRtpReceiver,
        interval: float | None = None,
        max_tries: int = MAX_TRIES,
        *,
        rtt: Callable[[], float | None] | None = None,
        give_up_after: float | None = GIVE_UP_SECONDS,
        keyframe_after: float | None = KEYFRAME_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check(__name__)
        generator = private(receiver, RTCRtpReceiver, "nack_generator")
        if not isinstance(generator, NackGenerator):
            raise ValueError("NACKs are repeated for a video receiver only")
        self._generator = generator
        media_ssrc(receiver)  # raises now if aiortc renamed what it reads
        self.fixed_interval = interval  # None: follow the round trip
        self.max_tries = max_tries
        self.give_up_after = give_up_after
        self.keyframe_after = keyframe_after
        self.sent = 0  # NACKs we repeated
        self.given_up = 0  # holes given up
        self.packets_given_up = 0  # sequence numbers skipped with them
        self.keyframe_requests = 0  # PLIs we sent
        self._receiver = receiver
        self._rtt = rtt
        self._clock = clock
        self._missing: dict[int, _Missing] = {}
        self._last_pli: float | None = None  # while awaiting a keyframe
        self._task: asyncio.Task[None] | None = None

    @property
    def interval(self) -> float:
        """Between two NACKs for one packet: a round trip and some (on a LAN the 40 ms
        minimum)."""
        if self.fixed_interval is not None:
            return self.fixed_interval
        rtt = self._rtt() if self._rtt is not None else None
        if rtt is None:
            return INTERVAL_SECONDS
        interval = RTT_FACTOR * rtt + RTT_MARGIN_SECONDS
        return min(max(interval, MIN_INTERVAL_SECONDS), MAX_INTERVAL_SECONDS)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="nack retry")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(TICK_SECONDS)
            await self.tick()

    async def tick(self, now: float | None = None) -> list[int]:
        """Ask again for what is due, give up the head's hole if it cannot be repaired;
        returns the sequence numbers asked for again."""
        now = self._clock() if now is None else now
        interval = self.interval
        buffer = jitterbuffer.buffer_of(self._receiver)
        missing = self._generator.missing
        if buffer is not None:
            # Packets skipped or jumped over: aiortc would ask for them with every new gap.
            missing.difference_update([s for s in missing if not buffer.waits_for(s)])
        for seq in list(self._missing):
            if seq not in missing:
                del self._missing[seq]  # arrived, skipped, or too old for aiortc to ask
        for seq in missing:
            if seq not in self._missing:
                self._missing[seq] = _Missing(first=now, last=now)
        ssrc = media_ssrc(self._receiver)
        if (
            buffer is not None
            and ssrc is not None
            and self.give_up_after is not None
            and await self._give_up(buffer, ssrc, now, interval)
        ):
            skipped = [s for s in missing if not buffer.waits_for(s)]
            missing.difference_update(skipped)
            for seq in skipped:
                del self._missing[seq]
        due = sorted(
            s
            for s, m in self._missing.items()
            if m.tries < self.max_tries and now - m.last >= interval - EPSILON
        )
        if due and ssrc is not None:
            for seq in due:
                self._missing[seq].last = now
                self._missing[seq].tries += 1
            logger.debug("asking again for %d lost packets", len(due))
            await self._receiver._send_rtcp_nack(ssrc, due)
            self.sent += 1
        return due

    def _keyframe_due(self, seq: int, now: float, interval: float) -> bool:
        """The missing packet ``seq`` has waited long enough to ask for a keyframe too."""
        state = self._missing.get(seq)
        return (
            self.keyframe_after is not None
            and state is not None
            and now - state.first >= max(self.keyframe_after, 2 * interval) - EPSILON
        )

    def _hopeless(self, seq: int, now: float, interval: float) -> str | None:
        """Why the missing packet ``seq`` will not be repaired in time, or None."""
        state = self._missing.get(seq)
        if state is None:
            return "older than the sender's retransmission history"
        if state.tries >= self.max_tries and now - state.last >= 2 * interval - EPSILON:
            return f"no retransmission after {state.tries + 1} NACKs"
        assert self.give_up_after is not None
        if now - state.first >= max(self.give_up_after, 2 * interval) - EPSILON:
            return f"missing for {1000 * (now - state.first):.0f} ms"
        return None

    async def _give_up(
        self, buffer: jitterbuffer.LowLatencyJitterBuffer, ssrc: int, now: float, interval: float
    ) -> bool:
        """Give up the head's hole if it is hopeless, and ask for a keyframe while the
        buffer awaits one or its hole is overdue; True if a hole was given up."""
        gave_up = False
        hole = buffer.head_hole()
        reason = None
        if hole is not None:
            keyframe = buffer.keyframe_after_hole(hole)
            reason = KEYFRAME_CAME if keyframe else self._hopeless(hole, now, interval)
        if reason is not None:
            skipped = buffer.give_up()
            jitterbuffer.drain(self._receiver)  # a keyframe already behind the hole goes now
            gave_up = True
            self.given_up += 1
            self.packets_given_up += skipped
            if reason != KEYFRAME_CAME:
                self._last_pli = None  # ask at once
            logger.info(
                "gave up %d lost packet(s) from %d (%s): skipping to a keyframe",
                skipped,
                hole,
                reason,
            )
        hole = buffer.head_hole()
        overdue = hole is not None and self._keyframe_due(hole, now, interval)
        if not buffer.awaiting_keyframe and not overdue:
            self._last_pli = None
        elif self._last_pli is None or now - self._last_pli >= PLI_REPEAT_SECONDS - EPSILON:
            self._last_pli = now
            self.keyframe_requests += 1
            await self._receiver._send_rtcp_pli(ssrc)
        return gave_up

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    async def __aenter__(self) -> NackRetry:
        self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
