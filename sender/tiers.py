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

- from full to reduced as soon as the estimate is below ``down`` and the viewer has shown
  loss or a queue in its receiver reports within ``CONGESTION_EVIDENCE`` (3 s): a low
  REMB alone follows what the encoder sends while it ramps up, and is no reason;
- from reduced to full once the estimate has stayed at or above ``up`` for ``UP_HOLD``
  (2 s) and the viewer has been on the reduced tier for ``MIN_DWELL`` (4 s);
- a new viewer's estimate is 300 kbit/s (as Chrome starts) until its own feedback comes
  (a REMB, or loss or a queue in its receiver reports), and until then it neither counts
  for its tier's bitrate nor moves up. It starts on the full tier when 300 kbit/s is
  enough for it (``down`` <= 300 kbit/s: 640x480 and smaller at 30 fps) and the full
  tier runs at no more than ``up`` (a faster full stream could swamp an unknown link);
  otherwise on the reduced tier, from where its feedback moves it up (at 1280x720 on an
  open link after 10-20 s, as aiortc's REMB grows about 8% a second).

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

    def first_tier(self, full_running: int) -> str:
        """Where a new viewer starts, its link unknown, its estimate ``START_BITRATE``:
        the full tier if that is enough for it (640x480 and smaller at 30 fps) and the
        full tier runs at no more than ``up`` (``full_running``: 0 when it does not run),
        else the reduced one. Starting a viewer behind a slow link at 1280x720 sent it
        keyframes as large as the bottleneck's queue, and the picture stalled."""
        if self.full is self.reduced:  # --bitrate: one tier
            return FULL
        if self.down <= START_BITRATE and full_running <= max(START_BITRATE, self.up):
            return FULL
        return REDUCED

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
        """The tier for this ``estimate`` at ``now`` (monotonic seconds); ``informed``:
        whether the estimate rests on the viewer's own feedback yet (a start estimate
        never moves a viewer up); ``congested``: whether its link showed loss or a queue
        lately (a low REMB alone, which follows what the encoder sends while it ramps up,
        never moves a viewer down)."""
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
