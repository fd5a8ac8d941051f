"""``common.tasks.start_eagerly``: a coroutine runs in its caller until it first waits,
and the rest runs on as a task, as Python 3.12's eager tasks do."""

from __future__ import annotations

import asyncio

import pytest

from common.tasks import start_eagerly


async def test_a_coroutine_that_never_waits_is_done_before_the_call_returns() -> None:
    steps: list[str] = []

    async def quick() -> None:
        steps.append("ran")

    assert start_eagerly(quick()) is None
    assert steps == ["ran"]


async def test_the_rest_of_a_coroutine_that_waits_runs_as_a_task() -> None:
    steps: list[str] = []
    gate = asyncio.get_running_loop().create_future()

    async def waits() -> None:
        steps.append("before")
        steps.append(f"got {await gate}")
        await asyncio.sleep(0)  # a bare yield too
        steps.append("after")

    rest = start_eagerly(waits())
    assert steps == ["before"]  # up to its first wait, in the caller
    assert rest is not None and not rest.done()
    gate.set_result("it")
    await asyncio.wait_for(rest, 5)
    assert steps == ["before", "got it", "after"]


async def test_the_rest_can_be_cancelled_and_its_errors_reach_the_task() -> None:
    cleaned = asyncio.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            cleaned.set()

    rest = start_eagerly(forever())
    assert rest is not None
    await asyncio.sleep(0)
    rest.cancel()
    with pytest.raises(asyncio.CancelledError):
        await rest
    assert cleaned.is_set()  # the coroutine itself saw the cancellation

    async def fails() -> None:
        await asyncio.sleep(0)
        raise ValueError("late")

    rest = start_eagerly(fails())
    assert rest is not None
    with pytest.raises(ValueError, match="late"):
        await rest


async def test_an_error_before_the_first_wait_reaches_the_caller() -> None:
    async def fails() -> None:
        raise ValueError("early")

    with pytest.raises(ValueError, match="early"):
        start_eagerly(fails())
