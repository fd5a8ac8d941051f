"""Logging set-up shared by both command-line tools."""

from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
NOISY = ("aioice", "aiortc", "aiohttp.access")


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """INFO for our lifecycle events; -v adds aiortc/aioice detail, -vv our per-packet DEBUG."""
    level = logging.DEBUG if verbose >= 2 else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=level, format=FORMAT)
    for name in NOISY:
        logging.getLogger(name).setLevel(logging.DEBUG if verbose >= 1 else logging.WARNING)
