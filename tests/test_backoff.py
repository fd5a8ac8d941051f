"""common.backoff: the waits between reconnection attempts (receiver and Janus publisher)."""

import pytest

from common.backoff import Backoff


def test_waits_double_from_a_quarter_second_up_to_five() -> None:
    retry = Backoff()
    assert [retry.next_delay() for _ in range(8)] == [0.25, 0.5, 1.0, 2.0, 4.0, 5.0, 5.0, 5.0]
    assert retry.failures == 8


def test_gives_up_after_max_tries_failures_in_a_row() -> None:
    retry = Backoff(max_tries=3)
    assert [retry.next_delay() for _ in range(3)] == [0.25, 0.5, 1.0]
    assert retry.next_delay() is None
    assert retry.next_delay() is None  # stays given up until a success


def test_a_success_starts_again_at_the_first_wait() -> None:
    retry = Backoff(max_tries=2)
    assert [retry.next_delay(), retry.next_delay()] == [0.25, 0.5]
    retry.reset()
    assert [retry.next_delay(), retry.next_delay(), retry.next_delay()] == [0.25, 0.5, None]


@pytest.mark.parametrize("max_tries", [0, -1])
def test_no_retries_at_all(max_tries: int) -> None:
    """``--max-retries 0``: the first failure is final."""
    assert Backoff(max_tries=max_tries).next_delay() is None


def test_failure_ignores_max_tries_for_callers_that_never_give_up() -> None:
    retry = Backoff(first=0.5, cap=2.0, max_tries=1)
    assert [retry.failure() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]
    assert retry.next_delay() is None  # the same count: five failures, one allowed


def test_a_very_long_outage_stays_at_the_cap() -> None:
    retry = Backoff()
    for _ in range(5000):  # about seven hours of failures at the cap
        delay = retry.next_delay()
    assert delay == 5.0


@pytest.mark.parametrize(("first", "cap"), [(0.0, 5.0), (-1.0, 5.0), (2.0, 1.0)])
def test_nonsense_waits_are_refused(first: float, cap: float) -> None:
    with pytest.raises(ValueError, match="first"):
        Backoff(first=first, cap=cap)
