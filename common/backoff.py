"""Exponential backoff between attempts: one rule for every part that reconnects (the
receiver to its sender or Janus feed, the sender's Janus publications).

    retry = Backoff(max_tries=3)
    while True:
        try:
            await connect()
            retry.reset()          # it worked: the next failure waits ``first`` again
            ...
        except ConnectionError:
            delay = retry.next_delay()
            if delay is None:      # more than ``max_tries`` failures in a row
                raise
            await asyncio.sleep(delay)
"""

from __future__ import annotations

FIRST_SECONDS = 0.25
CAP_SECONDS = 5.0


class Backoff:
    """``first`` seconds after the first failure in a row, doubling, capped at ``cap``;
    at most ``max_tries`` failures in a row (None: forever; 0 or less: none).
    ``reset()`` after a success."""

    def __init__(
        self,
        first: float = FIRST_SECONDS,
        cap: float = CAP_SECONDS,
        max_tries: int | None = None,
    ) -> None:
        if first <= 0 or cap < first:
            raise ValueError(f"backoff needs 0 < first <= cap, not first={first}, cap={cap}")
        self.first = first
        self.cap = cap
        self.max_tries = max_tries
        self.failures = 0  # in a row, since the last reset()

    def failure(self) -> float:
        """Count one failure; the wait before the next attempt, whatever ``max_tries``
        says (for callers that never give up)."""
        self.failures += 1
        # Capped before it is computed: no float overflow after a very long outage.
        doublings = min(self.failures - 1, 64)
        return min(self.cap, self.first * 2.0**doublings)

    def next_delay(self) -> float | None:
        """Count one failure; the wait before the next attempt, or None when this failure
        is one more than ``max_tries`` allows (give up)."""
        delay = self.failure()
        if self.max_tries is not None and self.failures > self.max_tries:
            return None
        return delay

    def reset(self) -> None:
        """An attempt succeeded: the next failure starts again at ``first``."""
        self.failures = 0
