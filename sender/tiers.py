"""Quality tiers: a viewer on a slow link gets its own, smaller encoding instead of
lowering everyone's picture.

Each codec has two tiers, encoded from the same captured frames:

- **full**: the capture size. Its bitrate follows the lowest estimate among the viewers
  on it, between ``down`` and the codec's maximum (VP8 1.5 Mbit/s, H.264 3 Mbit/s).
- **reduced**: half the width and height (the capture size when half would be narrower
  than 320 pixels). Its bitrate follows the lowest estimate among its viewers, between
  100 kbit/s and ``up``; its encoder starts at no more than ``down / 2``.

``down`` is 0.025 bit per pixel at the capture rate (1280x720 at 30 fps: 691 kbit/s;
640x480: 230 kbit/s), between 150 kbit/s and 80% of the codec's maximum; ``up`` is
1.25 x ``down`` (864 and 288 kbit/s). Each viewer's estimate (``sender.congestion``: its
REMB, capped further by the loss and round-trip times in its receiver reports) moves it:

- from full to reduced as soon as the estimate is below ``down``;
- from reduced to full once the estimate has stayed at or above ``up`` for ``UP_HOLD``
  (2 s) and the viewer has been on the reduced tier for ``MIN_DWELL`` (4 s);
- a new viewer's estimate is ``up`` (at least 300 kbit/s) until its own feedback comes
  (a REMB, or loss or a queue in its receiver reports), and until then it does not count
  for its tier's bitrate. It starts on the full tier when that tier is not running or
  runs at no more than that (the requested size from the first frame); otherwise, as
  the full stream may be more than its link takes, on the reduced tier, and moves up
  once its feedback shows it can (a start estimate never moves a viewer up).

A move takes effect at a keyframe of the tier moved to (asked for at once; until it
comes, the viewer keeps getting the old tier). A tier's encoder runs only while a viewer
is on it or moving to it: with every viewer on one tier there is one encoder per codec.
So a slow viewer costs the others nothing but, when it moves, the keyframe a new viewer
would cost, and the sender one more (smaller) encode per frame. With ``--bitrate`` there
is one tier, the full one, at that bitrate.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full"
REDUCED = "reduced"
TIERS = (FULL, REDUCED)

FULL_BITS_PER_PIXEL = 0.025
FULL_MIN_OF_MAX = 0.8
UP_FACTOR = 1.25
FULL_MIN_FLOOR = 150_000
REDUCED_MIN_BITRATE = 100_000
REDUCED_START = 0.5  # of ``down``: the most the reduced tier's encoder starts at
START_BITRATE = 300_000  # the least a new viewer's estimate starts at (as Chrome starts)
REDUCED_MIN_WIDTH = 320
UP_HOLD = 2.0  # seconds the estimate must stay at or above ``up`` before moving up
MIN_DWELL = 4.0  # seconds on the reduced tier before moving up again
CONGESTION_EVIDENCE = 3.0  # seconds loss or a queue counts as a reason to move down


@dataclass(frozen=True)
class Tier:
    """One encoding of a codec: its picture size and the bitrates it may use."""

    name: str
    width: int
    height: int
    min_bitrate: int
    max_bitrate: int

    def clamp(self, bitrate: int) -> int:
        return max(self.min_bitrate, min(bitrate, self.max_bitrate))


@dataclass(frozen=True)
class Ladder:
    """The tiers of one codec for one capture size, and the thresholds between them."""

    full: Tier
    reduced: Tier
    down: int  # below this estimate a viewer leaves the full tier
    up: int  # at or above this (for UP_HOLD seconds) it comes back

    def get(self, name: str) -> Tier:
        return self.full if name == FULL else self.reduced

    @property
    def join_limit(self) -> int:
        """A new viewer joins the full tier if it runs at no more than this (``up``, at
        least ``START_BITRATE``); a faster full stream could swamp its unknown link."""
        return max(START_BITRATE, self.up)

    def start(self, name: str, target: int, newcomers_only: bool) -> int:
        """The bitrate a tier's encoder starts at. The full tier, started for newcomers
        only (no feedback yet), starts at ``START_BITRATE`` and steps up to its minimum
        from there: starting at its minimum made a newcomer behind a slow link lose the
        first keyframe and more in a full queue, and the picture stalled. The reduced
        tier starts at no more than half of ``down``: a viewer arrives there because its
        link turned out too slow, usually while that link is congested."""
        tier = self.get(name)
        if self.full is self.reduced:
            return tier.clamp(target)
        if name == FULL:
            return min(tier.clamp(target), START_BITRATE) if newcomers_only else tier.clamp(target)
        return tier.clamp(min(target, int(REDUCED_START * self.down)))


def ladder(
    width: int, height: int, fps: float, codec_max: int, fixed_bitrate: int | None = None
) -> Ladder:
    """The two tiers for a capture of ``width`` x ``height`` at ``fps``."""
    if fixed_bitrate:
        full = Tier(FULL, width, height, fixed_bitrate, fixed_bitrate)
        return Ladder(full, full, 0, 0)
    down = int(FULL_BITS_PER_PIXEL * width * height * fps)
    down = max(FULL_MIN_FLOOR, min(down, int(FULL_MIN_OF_MAX * codec_max)))
    up = int(UP_FACTOR * down)
    full = Tier(FULL, width, height, down, codec_max)
    if width // 2 >= REDUCED_MIN_WIDTH:
        small = (width // 4 * 2, height // 4 * 2)  # halved, kept even for yuv420p
    else:
        small = (width, height)
    reduced = Tier(REDUCED, *small, REDUCED_MIN_BITRATE, up)
    return Ladder(full, reduced, down, up)


class TierChoice:
    """Which tier one viewer should be on, with hysteresis (see the module docstring)."""

    def __init__(self, ladder: Ladder, now: float, tier: str = FULL) -> None:
        self.ladder = ladder
        self.tier = tier
        self.changed_at = now
        self._up_since: float | None = None

    def update(
        self, estimate: int, now: float, informed: bool = True, congested: bool = True
    ) -> str:
        """The tier for this ``estimate`` at ``now`` (monotonic seconds). ``informed``:
        whether the estimate rests on the viewer's own feedback yet (a start estimate
        never moves a viewer up); ``congested``: whether the viewer has just shown loss
        or a queue (a low estimate alone, such as a REMB that has not caught up with a
        link nobody has filled yet, never moves it down)."""
        if self.ladder.full is self.ladder.reduced:
            return self.tier
        if self.tier == FULL:
            if estimate < self.ladder.down and congested:
                self._move(REDUCED, now)
        elif estimate >= self.ladder.up and informed:
            if self._up_since is None:
                self._up_since = now
            if now - self._up_since >= UP_HOLD and now - self.changed_at >= MIN_DWELL:
                self._move(FULL, now)
        else:
            self._up_since = None
        return self.tier

    def _move(self, tier: str, now: float) -> None:
        self.tier = tier
        self.changed_at = now
        self._up_since = None
