"""Quality tiers: a slow viewer gets its own, smaller encoding instead of lowering
everyone's.

Each codec has two tiers, encoded from the same captured frames:

- **full**: the capture size; its bitrate follows the weakest estimate among the viewers
  on it, between ``full_min`` and the codec's maximum (VP8 1.5 Mbit/s, H.264 3 Mbit/s).
- **reduced**: half the width and height (the capture size when that would be narrower
  than 320 pixels); its bitrate follows the weakest estimate among its viewers, between
  100 kbit/s and ``up``.

``full_min`` is 0.03 bits per pixel at the capture rate (1280x720 at 30 fps: 829 kbit/s;
640x480: 276 kbit/s), kept between 150 kbit/s and 80% of the codec's maximum. A viewer
whose estimate (``sender.congestion``) falls below ``full_min`` moves to the reduced tier;
one whose estimate has stayed at or above ``up = 1.25 * full_min`` for ``UP_HOLD``
seconds (and that has been on the reduced tier for at least ``MIN_DWELL``) moves back. A
new viewer starts on the tier its start estimate (300 kbit/s, as Chrome starts) falls in:
at 640x480 the full one, at 1280x720 the reduced one. A move takes effect at a keyframe of the tier it
moves to (asked for at once). A tier's encoder exists only while a viewer is on it, so
with every viewer on the same tier there is one encoder per codec, as before.

With ``--bitrate`` there is one tier, the full one, at that bitrate.
"""

from __future__ import annotations

from dataclasses import dataclass

FULL = "full"
REDUCED = "reduced"
TIERS = (FULL, REDUCED)

FULL_BITS_PER_PIXEL = 0.03
FULL_MIN_OF_MAX = 0.8
UP_FACTOR = 1.25
FULL_MIN_FLOOR = 150_000
REDUCED_MIN_BITRATE = 100_000
REDUCED_START = 0.5  # of ``down``: the most the reduced tier's encoder starts at
START_BITRATE = 300_000  # a new viewer's estimate until its feedback says more (as Chrome)
REDUCED_MIN_WIDTH = 320
UP_HOLD = 2.0  # seconds the estimate must stay at or above ``up`` before moving up
MIN_DWELL = 4.0  # seconds on the reduced tier before moving up again


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

    def initial(self, estimate: int) -> str:
        return FULL if estimate >= self.down else REDUCED

    def start(self, name: str, target: int) -> int:
        """The bitrate a tier's encoder starts at. The reduced tier starts at no more than
        half of ``down``: a viewer arrives there because its link turned out too slow,
        usually while that link is congested; it goes up in steps from there."""
        tier = self.get(name)
        if name == REDUCED and self.full is not self.reduced:
            target = min(target, int(REDUCED_START * self.down))
        return tier.clamp(target)


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

    def __init__(self, ladder: Ladder, estimate: int, now: float) -> None:
        self.ladder = ladder
        self.tier = ladder.initial(estimate)
        self.changed_at = now
        self._up_since: float | None = None

    def update(self, estimate: int, now: float) -> str:
        """The tier for this ``estimate`` at ``now`` (monotonic seconds)."""
        if self.ladder.full is self.ladder.reduced:
            return self.tier
        if self.tier == FULL:
            if estimate < self.ladder.down:
                self._move(REDUCED, now)
        elif estimate >= self.ladder.up:
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
