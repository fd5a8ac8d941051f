"""The aiortc release our changes to it were written against (see the README's table)."""

from __future__ import annotations

import logging

import aiortc

AIORTC_VERSION = "1.16.0"


def check(module: str) -> None:
    """Warn, naming the module to re-check, when another aiortc is installed."""
    if aiortc.__version__ != AIORTC_VERSION:
        logging.getLogger(module).warning(
            "aiortc %s is not %s: re-check %s", aiortc.__version__, AIORTC_VERSION, module
        )
