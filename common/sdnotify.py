"""systemd's service notifications (sd_notify(3)): readiness, status, reload, watchdog.

Under a unit with ``Type=notify`` systemd sets ``$NOTIFY_SOCKET`` (a path, or ``@name`` in
the abstract namespace) and waits for ``READY=1`` before it counts the service as
started; with ``WatchdogSec=`` it also sets ``$WATCHDOG_USEC`` and restarts a service
that stops sending ``WATCHDOG=1``. The protocol is one datagram per message, so it is
written here rather than pulled in (``python-systemd`` needs libsystemd's headers to
build). Without ``$NOTIFY_SOCKET`` (not under systemd) every call does nothing.

The watchdog pings come from a task on the event loop, so a loop that hangs stops them:
that is what the watchdog is for.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

from .tasks import cancel

logger = logging.getLogger(__name__)


class Notifier:
    """Sends notifications to systemd, if it is listening; owns the watchdog task."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        self._address = "\0" + address[1:] if address.startswith("@") else address
        self.watchdog: float | None = None  # seconds between pings systemd expects
        usec = env.get("WATCHDOG_USEC", "")
        pid = env.get("WATCHDOG_PID", "")
        if usec.isdigit() and int(usec) > 0 and (not pid or pid == str(os.getpid())):
            self.watchdog = int(usec) / 1e6
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return bool(self._address)

    def notify(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` fields in one message; False when nobody listens."""
        if not self._address:
            return False
        message = "\n".join(fields).encode()
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.setblocking(False)  # never hold up the event loop: a full queue drops it
            try:
                sock.sendto(message, self._address)
            except OSError as exc:
                logger.debug("sd_notify to %r failed: %s", self._address, exc)
                return False
        logger.debug("sd_notify: %s", " ".join(fields))
        return True

    def ready(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def status(self, status: str) -> None:
        self.notify(f"STATUS={status}")

    def reloading(self) -> None:
        """Before re-reading the configuration (``systemctl reload``)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self.notify("RELOADING=1", f"MONOTONIC_USEC={usec}")

    def reloaded(self, status: str) -> None:
        self.notify("READY=1", f"STATUS={status}")

    def stopping(self) -> None:
        self.notify("STOPPING=1")

    async def _ping(self, interval: float) -> None:
        while True:
            self.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def start_watchdog(self) -> None:
        """Ping at half the interval systemd asked for (its own recommendation)."""
        if self.enabled and self.watchdog is not None and self._task is None:
            self._task = asyncio.create_task(self._ping(self.watchdog / 2), name="watchdog")

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None

    async def __aenter__(self) -> Notifier:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
