"""How much encoding the sender's event loop may do itself.

A frame handed to a worker thread, and its packets handed back, cost two wake-ups of
another core: at 640x480 on our 2-core machines, capture to sent took 5.1 ms with every
encode in a thread and 4.0 ms with the encode on the loop (the encode itself was no
slower: the frame was drawn on that core, and its cache is warm). That millisecond is
a fifth of the whole capture-to-decoded latency.

Encoding on the loop blocks everything else the loop does (every viewer's packets,
RTCP, audio, signalling) for the encode's length, and would put several cameras'
encoders on one core. So a frame is encoded on the loop only while that stays cheap:
it is the one encode of its frame (several tiers still encode in parallel threads), its
tier's last encode took at most ``max_encode`` (10 ms by default, ``--loop-encode-ms``),
and the encodes the loop did in the last second, with this one, stay under
``MAX_SHARE`` of that second. Anything else goes to a worker thread, as before. One
budget per sender, shared by every camera and codec.
"""

from __future__ import annotations

import logging
from collections import deque

logger = logging.getLogger(__name__)

MAX_ENCODE_SECONDS = 0.010  # a longer block of the loop delays audio and RTCP too much
MAX_SHARE = 0.3  # of the loop's time, spent on encodes (the rest: packets and the others)
WINDOW_SECONDS = 1.0


class LoopBudget:
    """The encodes the loop did in the last ``WINDOW_SECONDS``, and whether one more
    fits; ``max_encode=0`` keeps every encode off the loop."""

    def __init__(self, max_encode: float = MAX_ENCODE_SECONDS, max_share: float = MAX_SHARE):
        self.max_encode = max_encode
        self.max_share = max_share
        self._spent: deque[tuple[float, float]] = deque()  # (when, seconds) per encode
        self._total = 0.0

    def allows(self, expected: float | None, now: float) -> bool:
        """Whether an encode expected to take ``expected`` seconds (None: not known
        yet, so not on the loop) may run on the loop at ``now``."""
        if expected is None or expected > self.max_encode:
            return False
        while self._spent and self._spent[0][0] <= now - WINDOW_SECONDS:
            self._total -= self._spent.popleft()[1]
        return self._total + expected <= self.max_share * WINDOW_SECONDS

    def spent(self, seconds: float, now: float) -> None:
        """An encode on the loop took ``seconds``, ending at ``now``."""
        self._spent.append((now, seconds))
        self._total += seconds
