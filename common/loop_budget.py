"""How much encoding or decoding an event loop may do itself.

A frame handed to a worker thread, and its result handed back, cost two wake-ups of
another core. On our 2-core machines at 640x480 that is 0.3-1 ms per frame on each side
(sender: capture to sent 5.1 ms with the encode in a thread, 4.0 ms on the loop;
receiver: complete to decoded 1.1 ms in aiortc's decoder thread, 0.8 on the loop, with
H.264), against a capture-to-decoded latency of about 7 ms.

Working on the loop blocks everything else it does (packets, RTCP, audio, signalling)
for the work's length, and would put several cameras' or streams' work on one core. So a
frame is encoded or decoded on the loop only while that stays cheap: the same work on
the last frame took at most ``max_seconds``, and the loop's share of such work over the
last second, this one included, stays under ``MAX_SHARE``. The rest goes to threads, as
before. The sender has one budget for all its encodes (``sender.encoding``,
``--loop-encode-ms``); each receiving connection one for its decodes
(``common.aiortc_ext.loop_decode``).
"""

from __future__ import annotations

from collections import deque

MAX_ENCODE_SECONDS = 0.010  # a longer block of the sender's loop delays audio and RTCP
MAX_DECODE_SECONDS = 0.005  # the receiver's: 640x480 to 1280x720 frames (1-3 ms) fit
MAX_SHARE = 0.3  # of the loop's time (the rest: packets and everything else)
WINDOW_SECONDS = 1.0


class LoopBudget:
    """The work the loop did in the last ``WINDOW_SECONDS``, and whether one more piece
    fits; ``max_seconds=0`` keeps all of it off the loop."""

    def __init__(self, max_seconds: float, max_share: float = MAX_SHARE) -> None:
        self.max_seconds = max_seconds
        self.max_share = max_share
        self._spent: deque[tuple[float, float]] = deque()  # (when, seconds) per piece
        self._total = 0.0

    def allows(self, expected: float | None, now: float) -> bool:
        """Whether work expected to take ``expected`` seconds (None: not known yet, so
        not on the loop) may run on the loop at ``now``."""
        if expected is None or expected > self.max_seconds:
            return False
        while self._spent and self._spent[0][0] <= now - WINDOW_SECONDS:
            self._total -= self._spent.popleft()[1]
        return self._total + expected <= self.max_share * WINDOW_SECONDS

    def spent(self, seconds: float, now: float) -> None:
        """Work on the loop took ``seconds``, ending at ``now``."""
        self._spent.append((now, seconds))
        self._total += seconds
