"""Round-trip time on the receiving side (aiortc 1.16.0 / aioice 0.13).

aiortc's receiver reports loss and jitter but no round-trip time: that needs RTCP XR,
which it does not send. We time a STUN binding request on the selected ICE pair, the
same request aioice sends for its consent checks (RFC 7675). This reaches into
aioice's ``Connection``; ``tests/test_reconnect.py`` checks it still works.
"""

from __future__ import annotations

import logging
import time

from aioice import stun
from aiortc import RTCPeerConnection

logger = logging.getLogger(__name__)


async def measure(pc: RTCPeerConnection) -> float | None:
    """One round trip in seconds, or None when there is no selected pair or no answer."""
    transceivers = pc.getTransceivers()
    if not transceivers or transceivers[0].receiver.transport is None:
        return None
    connection = transceivers[0].receiver.transport.transport._connection
    pairs = list(connection._nominated.values())
    if not pairs or connection.remote_password is None:
        return None
    pair = pairs[0]
    request = connection.build_request(pair, nominate=False)
    started = time.perf_counter()
    try:
        await pair.protocol.request(
            request,
            pair.remote_addr,
            integrity_key=connection.remote_password.encode("utf8"),
            retransmissions=0,
        )
    except (stun.TransactionError, OSError, AttributeError) as exc:
        logger.debug("RTT probe failed: %s", exc)
        return None
    return time.perf_counter() - started
