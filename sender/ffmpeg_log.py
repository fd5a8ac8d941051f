"""FFmpeg's own log messages, caught while one call runs.

Some answers exist only there: why a hardware encoder failed ("Could not find a valid
device"), which modes a DirectShow or AVFoundation camera has. PyAV drops FFmpeg's log
unless its logging is on, so it is turned on (at ``level``) while the caller's block runs,
and what this thread logs meanwhile is kept instead of being passed to ``logging``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import av.logging

Message = tuple[int, str, str]  # (FFmpeg level, context name, text)


@contextlib.contextmanager
def captured(level: int) -> Iterator[list[Message]]:
    """The messages at ``level`` or more severe that this thread logs inside the block."""
    previous = av.logging.get_level()
    av.logging.set_level(level)
    try:
        with av.logging.Capture(local=True) as logs:
            yield logs
    finally:
        av.logging.set_level(previous)


def text(logs: list[Message]) -> str:
    """The messages as FFmpeg would print them, without its ``[name @ 0x...]`` prefixes: one
    printed line can take several calls (dshow prints ``pixel_format=...`` and its sizes
    apart), so the messages are joined before splitting into lines."""
    return "".join(message for _, _, message in logs)
