"""Owned asyncio tasks: what every owner's ``close()`` does with its task."""

from __future__ import annotations

import asyncio
import contextlib
import types
from collections.abc import Coroutine, Generator
from typing import Any


async def cancel(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (None: nothing to do) and wait until it has ended: its own
    CancelledError is the expected end, and swallowed."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def start_eagerly(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now, in the caller, until it first has to wait; the rest, if any, as a
    task (None: it finished). Python 3.12's eager tasks, for 3.11: a task's first step
    waits one turn of the event loop, and a frame on its way out should not."""
    try:
        awaited = coro.send(None)
    except StopIteration:
        return None
    return asyncio.ensure_future(_finish(coro, awaited))


async def _finish(coro: Coroutine[Any, Any, None], awaited: Any) -> None:
    await _resume(coro, awaited)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], awaited: Any) -> Generator[Any, Any, None]:
    """Hand what ``coro`` waits on to the task, and the task's results (or its
    cancellation) back to ``coro``, until it returns."""
    while True:
        try:
            value = yield awaited
        except BaseException as exc:  # thrown in by the task: cancelled
            try:
                awaited = coro.throw(exc)
            except StopIteration:
                return
        else:
            try:
                awaited = coro.send(value)
            except StopIteration:
                return
