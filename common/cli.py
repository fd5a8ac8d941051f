"""What both command-line tools share: one-line errors and signal-driven shutdown."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import re
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from typing import TypeVar

from . import logs

N = TypeVar("N", int, float)
MAX_SIDE = 8192  # pixels: 8K is 7680x4320; more is a typo, and memory the first frame lacks


class CliError(Exception):
    """A failure the user can act on; printed as one line, exit code ``code``."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def fail(prog: str, exc: CliError) -> int:
    print(f"{prog}: error: {exc}", file=sys.stderr)
    return exc.code


def run_main(prog: str, main: Coroutine[object, object, int]) -> int:
    """Run a tool's coroutine: CliErrors become one line and their exit code."""
    try:
        return asyncio.run(main)
    except CliError as exc:
        return fail(prog, exc)
    except KeyboardInterrupt:
        return 0


def add_logging_options(parser: argparse.ArgumentParser) -> None:
    """``-v`` and ``--log-format``, the same on both tools."""
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="more logging (-vv: debug)"
    )
    parser.add_argument(
        "--log-format",
        choices=logs.LOG_FORMATS,
        default=logs.TEXT,
        help="text (default) or json: one JSON object per line, for journald and log shippers",
    )


def size(text: str) -> tuple[int, int]:
    """Parse ``WxH`` for argparse."""
    match = re.fullmatch(r"(\d+)[xX](\d+)", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}")
    width, height = int(match[1]), int(match[2])
    if width % 2 or height % 2 or not width or not height:
        raise argparse.ArgumentTypeError(f"width and height must be even and positive: {text!r}")
    if max(width, height) > MAX_SIDE:
        raise argparse.ArgumentTypeError(f"at most {MAX_SIDE} pixels a side: {text!r}")
    return width, height


def sizes(text: str) -> list[tuple[int, int]]:
    """Parse ``WxH,WxH,...`` for argparse."""
    return [size(part) for part in text.split(",")]


def positive(
    kind: Callable[[str], N], maximum: N | None = None, minimum: N | None = None
) -> Callable[[str], N]:
    """An argparse type for positive, finite numbers of ``kind`` (int or float), at
    least ``minimum`` and at most ``maximum`` when given."""

    def parse(text: str) -> N:
        value = _number(kind, text, "not a number")
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"not a finite number: {text!r}")
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be positive: {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}: {text!r}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}: {text!r}")
        return value

    return parse


def _number(kind: Callable[[str], N], text: str, problem: str) -> N:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{problem}: {text!r}") from None


def port(text: str) -> int:
    """A TCP port for argparse: 0 (any free one) to 65535."""
    value = _number(int, text, "not a port number")
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535: {text!r}")
    return value


def count(maximum: int) -> Callable[[str], int]:
    """An argparse type for a whole number from 0 to ``maximum`` (retries, say)."""

    def parse(text: str) -> int:
        value = _number(int, text, "not a whole number")
        if not 0 <= value <= maximum:
            raise argparse.ArgumentTypeError(f"must be 0-{maximum}: {text!r}")
        return value

    return parse


def not_empty(text: str) -> str:
    """A string option that means nothing when empty (a name, a token)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("must not be empty")
    return text


@contextlib.contextmanager
def stop_on_signals(stop: asyncio.Event) -> Iterator[None]:
    """Set ``stop`` on SIGINT/SIGTERM instead of raising inside whatever is running."""
    loop = asyncio.get_running_loop()
    installed = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        except (NotImplementedError, RuntimeError):  # Windows: KeyboardInterrupt instead
            pass
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
