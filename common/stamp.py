"""The frame stamp: capture time and sequence number drawn into the picture.

The format is fixed because other tools read it. With cell size ``s = width // 40``,
row 0 (``y`` in ``[0, s)``) holds the capture wall-clock time in microseconds since
the Unix epoch modulo 2**40, row 1 (``y`` in ``[s, 2s)``) the frame sequence number
modulo 2**40. Cell ``i`` (``x`` in ``[i*s, (i+1)*s)``) holds bit ``i``, least
significant first: 255 for 1, 0 for 0. Readers sample each cell's centre (luma or
green) with threshold 128.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

BITS = 40
MODULUS = 1 << BITS
MIN_WIDTH = 320
THRESHOLD = 128

_WEIGHTS = np.array([1 << i for i in range(BITS)], dtype=np.uint64)


@dataclass(frozen=True)
class Stamp:
    capture_us: int
    sequence: int


STALL_SECONDS = 0.001  # two monotonic reads further apart: the thread was descheduled


def now_us() -> int:
    """Wall-clock microseconds modulo 2**40, the clock the stamp carries."""
    return time.time_ns() // 1000 % MODULUS


def wall_offset() -> float:
    """Wall clock minus ``time.monotonic()``, in seconds, now: what puts an instant on the
    capture clock on the stamp's. The wall clock is read between two monotonic reads and
    read again if they lie far apart: a thread descheduled between two plain reads (a
    busy virtual machine) would skew the pair by as long as it waited."""
    for _ in range(3):
        before = time.monotonic()
        wall = time.time()
        after = time.monotonic()
        if after - before < STALL_SECONDS:
            break
    return wall - (before + after) / 2


def wall_us(monotonic: float) -> int:
    """The stamp's clock (``now_us``) at the ``time.monotonic()`` instant ``monotonic``."""
    return round((monotonic + wall_offset()) * 1e6) % MODULUS


def cell_size(width: int) -> int:
    if width < MIN_WIDTH:
        raise ValueError(f"the stamp needs a width of at least {MIN_WIDTH} pixels, got {width}")
    return width // BITS


def _bits(value: int) -> np.ndarray:
    return ((value % MODULUS) >> np.arange(BITS, dtype=np.uint64)) & 1


CAPTURE_ROW, SEQUENCE_ROW = 0, 1


def draw(plane: np.ndarray, stamp: Stamp) -> None:
    """Draw ``stamp`` into a luma (or single channel) plane, in place."""
    draw_row(plane, CAPTURE_ROW, stamp.capture_us)
    draw_row(plane, SEQUENCE_ROW, stamp.sequence)


def draw_row(plane: np.ndarray, row: int, value: int) -> None:
    """One row of the stamp: a source can draw the sequence before it reads the clock."""
    s = cell_size(plane.shape[1])
    plane[row * s : (row + 1) * s, : BITS * s] = (_bits(value).astype(np.uint8) * 255).repeat(s)


def read(plane: np.ndarray) -> Stamp:
    """Read a stamp from a luma or green plane (2-D uint8 array)."""
    s = cell_size(plane.shape[1])
    centres = np.arange(BITS) * s + s // 2
    values = []
    for row in range(2):
        bits = plane[row * s + s // 2, centres] >= THRESHOLD
        values.append(int(np.dot(bits.astype(np.uint64), _WEIGHTS)))
    return Stamp(capture_us=values[0], sequence=values[1])


def age_us(stamp: Stamp, now: int | None = None) -> int:
    """Microseconds from the stamped capture to ``now``, across the 2**40 wrap."""
    current = now_us() if now is None else now
    return (current - stamp.capture_us) % MODULUS
