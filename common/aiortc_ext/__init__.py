"""Every place we change or reach into aiortc (and aioice), one module per change.

Each change applies to one object we created (a peer connection, an RTP sender or
receiver of ours), never to a class or a module global: a user's own ``RTCPeerConnection``
in the same process behaves exactly like stock aiortc (``tests/test_aiortc_scope.py``).

The changes were written against aiortc ``AIORTC_VERSION``; ``check()`` warns when another
release is installed, and each module's test fails if an upgrade breaks what it relies on
(the README's "Where we change aiortc" table lists them).

``peer_connection()`` is how our code makes every peer connection, so that the
connection-wide changes (DTLS ciphers, relay pairs) are never forgotten.
"""

from __future__ import annotations

import logging

import aiortc
from aiortc import RTCConfiguration, RTCPeerConnection

AIORTC_VERSION = "1.16.0"


def check(module: str) -> None:
    """Warn, naming the module to re-check, when another aiortc is installed."""
    if aiortc.__version__ != AIORTC_VERSION:
        logging.getLogger(module).warning(
            "aiortc %s is not %s: re-check %s", aiortc.__version__, AIORTC_VERSION, module
        )


def private(obj: object, owner: type, name: str) -> object:
    """A name-mangled private attribute of an aiortc object, or a clear error naming what
    changed (an upgrade renamed or removed it)."""
    attribute = f"_{owner.__name__}__{name}"
    try:
        return getattr(obj, attribute)
    except AttributeError:
        raise RuntimeError(
            f"aiortc {aiortc.__version__} changed: {owner.__name__} has no {attribute} "
            f"(written against {AIORTC_VERSION})"
        ) from None


def peer_connection(configuration: RTCConfiguration) -> RTCPeerConnection:
    """A peer connection of ours, with the connection-wide changes applied."""
    from . import dtls_ciphers, relay_pairs  # they import this package: import them late

    pc = RTCPeerConnection(configuration)
    dtls_ciphers.apply(pc)
    relay_pairs.apply(pc)
    return pc
