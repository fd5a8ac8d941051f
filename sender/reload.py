"""Reloading the configuration (SIGHUP, ``systemctl reload``) without dropping anyone.

The config file is read again with the same command line (whose flags still win).
Cameras are compared by name and by their SPEC text:

- unchanged: goes on untouched; its viewers notice nothing;
- added: starts (checked as at start-up);
- removed: stops; its viewers' connections end cleanly, as at shutdown;
- changed: stops, and starts anew with its new SPEC.

New and changed cameras are checked as at start-up: of several, one that does not open
is a warning and a camera retried in the background; a single camera that does not open
refuses the reload. The other options (size, codec, port, tokens...) are read at start
only: a change is a warning that a restart applies it. A file that does not parse (or
names a camera twice) is refused in one line, and the running configuration stays.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import web

from common.cli import CliError
from common.sdnotify import Notifier
from common.tasks import cancel

from . import sources
from .app import MAKE_CAMERA, point_at_first
from .camera import DEFAULT_NAME, CameraConfig
from .signalling import CAMERAS

logger = logging.getLogger(__name__)

# Options a running sender cannot change: a reload that changes them says so.
NOT_RELOADED = ("source", "config", "verbose", "log_format", "list_sources")

Named = list[tuple[str, str]]  # (camera name, SPEC text), in order


class Reloader:
    """Re-reads the configuration on request; one reload at a time, owned tasks."""

    def __init__(
        self,
        app: web.Application,
        argv: Sequence[str],
        args: argparse.Namespace,
        named: Named,
        parse: Callable[[list[str]], argparse.Namespace],
        names: Callable[[list[str]], Named],
        choose: Callable[[argparse.Namespace, Named], Awaitable[tuple[CameraConfig, ...]]],
        choose_one: Callable[[argparse.Namespace, str], Awaitable[sources.SourceSpec]],
        notifier: Notifier,
    ) -> None:
        self._app = app
        self._argv = list(argv)
        self._args = args
        self._texts = dict(named)
        self._parse = parse
        self._names = names
        self._choose = choose  # several cameras: one that does not open is retried
        self._choose_one = choose_one  # the single camera: one that does not open is an error
        self._notifier = notifier
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.reloads = 0  # applied
        self.refusals = 0

    def request(self) -> None:
        """SIGHUP: reload now, or once more after the reload that is running."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.create_task(self._run(), name="reload")

    async def _run(self) -> None:
        while True:
            self._again = False
            try:
                await self.reload()
            except Exception:  # a reload must never take the sender down
                logger.exception("reload failed; the running configuration stays")
            if not self._again:
                return

    async def reload(self) -> bool:
        """Apply the configuration as it reads now; False when it was refused."""
        self._notifier.reloading()
        try:
            applied = await self._apply()
        except CliError as exc:
            self.refusals += 1
            logger.error("reload refused: %s; the running configuration stays", exc)
            applied = False
        cameras = self._app[CAMERAS]
        self._notifier.reloaded(f"serving {len(cameras)} camera(s): {', '.join(cameras.names())}")
        return applied

    async def _apply(self) -> bool:
        try:
            args = self._parse(self._argv)
        except SystemExit:  # argparse has printed why (a flag, not the file)
            raise CliError("the options do not parse") from None
        named = self._names(args.source or ["auto"])
        labelled = len(named) > 1 or named[0][0] != DEFAULT_NAME
        cameras = self._app[CAMERAS]
        if labelled != cameras.labelled:
            raise CliError(
                "going from one unnamed camera to named cameras (or back) needs a restart"
            )
        self._warn_unreloaded(args)
        texts = dict(named)
        changed: Named = [(n, t) for n, t in named if self._texts.get(n) != t]
        if labelled:
            configs = await self._choose(args, changed)
        elif changed:  # the single camera: one that does not open refuses the reload
            try:
                spec = await self._choose_one(args, changed[0][1])
            except (sources.SourceError, ValueError) as exc:
                raise CliError(f"{changed[0][1]}: {exc}") from None
            configs = (CameraConfig(DEFAULT_NAME, spec, named=False),)
        else:
            configs = ()
        make = self._app[MAKE_CAMERA]
        new = {config.name: make(config) for config in configs}
        closed, started = await cameras.reconfigure([n for n, _ in named], new)
        point_at_first(self._app)
        self._texts = texts
        self._args = args
        self.reloads += 1
        unchanged = [n for n, _ in named if n not in new]
        logger.info(
            "configuration reloaded: started %s; stopped %s; unchanged %s",
            ", ".join(started) or "none",
            ", ".join(n for n in closed if n not in started) or "none",
            ", ".join(unchanged) or "none",
        )
        return True

    def _warn_unreloaded(self, args: argparse.Namespace) -> None:
        """Names only: values may be secrets (tokens, TURN passwords)."""
        old, new = vars(self._args), vars(args)
        for key in sorted(new):
            if key not in NOT_RELOADED and new[key] != old.get(key):
                logger.warning(
                    "--%s changed: it takes effect when the sender restarts",
                    key.replace("_", "-"),
                )

    async def close(self) -> None:
        await cancel(self._task)
        self._task = None
