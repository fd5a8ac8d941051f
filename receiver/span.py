"""The time between the first and the last arrival of something counted (frames,
audio packets): what rates in the receiver's summary are taken over."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Span:
    first_at: float | None = None  # monotonic seconds
    last_at: float | None = None

    def mark(self, now: float) -> None:
        """One more arrival at ``now``."""
        self.first_at = self.first_at if self.first_at is not None else now
        self.last_at = now

    @property
    def seconds(self) -> float:
        """Last arrival minus first; 0 before the first."""
        if self.first_at is None or self.last_at is None:
            return 0.0
        return self.last_at - self.first_at
