"""A capture shared by whoever uses it: the camera (``sender.fanout``) and the audio
(``sender.audio``) both open their device for the first user, read it in one owned task,
and close it shortly after the last user left, so that a user arriving right after
another left does not reopen it. A user arriving while it closes gets it reopened once the
device is released."""

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
        self._closing: asyncio.Task[None] | None = None  # a stopped task releasing the device
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
            run = self._run_after(self._closing)
            self._task, self._closing = asyncio.create_task(run, name=self._task_name), None

    async def _run_after(self, closing: asyncio.Task[None] | None) -> None:
        """Run once ``closing`` (a stopped capture) has released the device: a camera opens
        once at a time. Cancelled meanwhile, it still waits, so that awaiting it means the
        device is free."""
        if closing is not None:
            try:
                await asyncio.wait([closing])
            except asyncio.CancelledError:
                await asyncio.wait([closing])
                raise
        await self._run()

    def _idle(self) -> None:
        """A user left: when nobody is left, close the capture shortly."""
        if self.in_use or self._task is None or self._idle_timer is not None:
            return
        self._idle_timer = asyncio.get_running_loop().call_later(self._idle_close, self._stop)

    def _stop(self) -> None:
        self._idle_timer = None
        if not self.in_use and self._task is not None:
            # The task is let go at once: a user arriving while it releases the device
            # must start a new one, not join one about to end.
            self._task.cancel()
            self._closing, self._task = self._task, None

    async def close(self) -> None:
        """Stop now and release the device, whoever is still using it."""
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        self._end_users()
        self._forget_users()
        await cancel(self._task)
        if self._closing is not None:
            # Cancelled already and releasing the device: cancelling it again would end
            # its wait for the release, not the release.
            await asyncio.wait([self._closing])
        self._task = self._closing = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
