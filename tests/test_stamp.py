import numpy as np
import pytest

from common import stamp


@pytest.mark.parametrize("width", [320, 640, 1280, 1919])
def test_round_trip(width: int) -> None:
    plane = np.full((100, width), 100, dtype=np.uint8)
    value = stamp.Stamp(capture_us=(1 << 40) - 12345, sequence=987654321)
    stamp.draw(plane, value)
    assert stamp.read(plane) == value


def test_layout_is_the_documented_one() -> None:
    """Bit i of the time is cell i of row 0, least significant first; white is 1."""
    plane = np.zeros((64, 640), dtype=np.uint8)
    stamp.draw(plane, stamp.Stamp(capture_us=0b101, sequence=1 << 39))
    s = 640 // 40
    assert plane[s // 2, s // 2] == 255  # bit 0 of the time
    assert plane[s // 2, s + s // 2] == 0  # bit 1
    assert plane[s // 2, 2 * s + s // 2] == 255  # bit 2
    assert plane[s + s // 2, 39 * s + s // 2] == 255  # bit 39 of the sequence
    assert plane[s + s // 2, s // 2] == 0


def test_values_wrap_modulo_2_to_the_40() -> None:
    plane = np.zeros((64, 640), dtype=np.uint8)
    stamp.draw(plane, stamp.Stamp(capture_us=(1 << 40) + 7, sequence=(1 << 41) + 3))
    assert stamp.read(plane) == stamp.Stamp(7, 3)


def test_age_crosses_the_wrap() -> None:
    captured = stamp.Stamp(capture_us=(1 << 40) - 1000, sequence=0)
    assert stamp.age_us(captured, now=500) == 1500


def test_narrow_frames_are_refused() -> None:
    with pytest.raises(ValueError, match="at least 320"):
        stamp.cell_size(319)
