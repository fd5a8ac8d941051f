"""ALSA's own error messages, to our log instead of stderr.

libasound (bundled with PyAV) prints its errors straight to stderr: two lines for every
device that does not open, around our one-line error, and on every start where ``--audio
auto`` finds no microphone. ``snd_lib_error_set_handler`` takes them instead; the last one
(``Unknown PCM nope``) says why a device did not open better than FFmpeg's "Input/output
error" does.

The handler is variadic in C; ctypes cannot make such a callback, so ours takes the first
variadic argument as a string (passed like a fixed one on x86-64 and arm64 Linux, where ALSA
lives): it fills a lone ``%s`` and is not read otherwise.
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import threading

import av

logger = logging.getLogger(__name__)

_HANDLER_TYPE = ctypes.CFUNCTYPE(
    None, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
    ctypes.c_char_p,
)  # fmt: skip
_installed: list[object] = []  # the callback, kept alive while libasound may call it
_lock = threading.Lock()
_last = threading.local()


def _libasound() -> ctypes.CDLL | None:
    """The libasound FFmpeg uses: PyAV's bundled copy, else the system's."""
    bundled = glob.glob(os.path.join(os.path.dirname(av.__file__) + ".libs", "libasound*.so*"))
    for name in [*bundled, "libasound.so.2"]:
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def _handle(file: bytes, line: int, function: bytes, err: int, fmt: bytes, arg: bytes) -> None:
    text = (fmt or b"").decode(errors="replace")
    if text.count("%") == 1 and "%s" in text and arg:
        text = text.replace("%s", arg.decode(errors="replace"))
    _last.message = text
    logger.debug("ALSA: %s", text)


def install() -> None:
    """Route ALSA's messages to DEBUG (once per process; nothing without libasound)."""
    with _lock:
        if _installed:
            return
        lib = _libasound()
        if lib is None:
            _installed.append(None)
            return
        handler = _HANDLER_TYPE(_handle)
        lib.snd_lib_error_set_handler(handler)
        _installed.append(handler)


def last_message() -> str | None:
    """The last message ALSA gave in this thread (then forgotten)."""
    message: str | None = getattr(_last, "message", None)
    _last.message = None
    return message
