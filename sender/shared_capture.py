"""A capture shared by whoever uses it: the camera (``sender.fanout``) and the audio
(``sender.audio``) both open their device for the first user, read it in one owned task,
and close it shortly after the last user left, so that a user arriving right after
another left does not reopen it."""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from typing import Self

from common.tasks import cancel

IDLE_CLOSE_SECONDS = 1.0


class SharedCapture(ABC):
    """The lifecycle; subclasses say who uses it (``in_use``), how to read (``_run``),
    how to tell the users it ended (``_end_users``: they then leave on their own) and how
    to drop them at once (``_forget_users``, on ``close()``)."""

    def __init__(self, idle_close: float = IDLE_CLOSE_SECONDS, name: str = "capture") -> None:
        self._idle_close = idle_close
        self._task_name = name
        self._task: asyncio.Task[None] | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self.opens = 0  # how many times the device was opened (tests and /healthz)
        self.is_open = False

    @property
    @abstractmethod
    def in_use(self) -> bool:
        """Whether anyone still wants what the capture reads."""

    @abstractmethod
    async def _run(self) -> None:
        """Open the device and read it until cancelled or it fails."""

    @abstractmethod
    def _end_users(self) -> None:
        """Tell every user the capture has ended."""

    @abstractmethod
    def _forget_users(self) -> None:
        """Drop every user (closing)."""

    def _start(self) -> None:
        """A user came: keep the capture (running it if it is not)."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name=self._task_name)

    def _idle(self) -> None:
        """A user left: when nobody is left, close the capture shortly."""
        if self.in_use or self._task is None or self._idle_timer is not None:
            return
        self._idle_timer = asyncio.get_running_loop().call_later(self._idle_close, self._stop)

    def _stop(self) -> None:
        self._idle_timer = None
        if not self.in_use and self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """Stop now and release the device, whoever is still using it."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._end_users()
        self._forget_users()
        await cancel(self._task)
        self._task = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
