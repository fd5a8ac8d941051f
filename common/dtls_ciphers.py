"""Widen aiortc's DTLS cipher list to ECDHE-RSA AEAD suites (aiortc 1.16.0).

Stock aiortc 1.16.0 builds every DTLS context in ``RTCCertificate._create_ssl_context``
(``aiortc/rtcdtlstransport.py``) with ECDHE-ECDSA suites only
(``ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA:
ECDHE-ECDSA-AES256-SHA``). That is enough between aiortc peers and with browsers, which
use ECDSA certificates, but not with a peer whose certificate is RSA: GStreamer 1.22's
webrtcbin (Debian bookworm) generates an RSA-2048 certificate, and as the DTLS server it
can only pick an RSA-authenticated suite, finds none in aiortc's ClientHello and aborts
with "no shared cipher".

We append the ECDHE-RSA AEAD suites (AES-GCM, and ChaCha20-Poly1305 to mirror aiortc's
ECDSA list) after aiortc's own ECDSA suites, which stay first and unchanged. Still forward
secret and authenticated-encryption only: no static-RSA key exchange, and no RSA CBC-SHA1
suite, since webrtcbin 1.22 (``ALL:!ADH:!LOW:!EXP:!MD5`` over DTLS 1.2) accepts GCM.

The list is set in a wrapper around ``RTCCertificate._create_ssl_context``, which
``RTCDtlsTransport.start`` calls for both DTLS roles. As the client (the sender answering
an actpass offer) the RSA suites are what lets an RSA server pick one; as the server our
certificate is ECDSA, so OpenSSL only ever chooses an ECDSA suite and the addition is inert.
``tests/test_gstreamer.py`` fails if an aiortc upgrade changes the stock list or the
method this relies on.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable

from aiortc.rtcdtlstransport import RTCCertificate, SRTPProtectionProfile
from OpenSSL import SSL

from common import aiortc_version

logger = logging.getLogger(__name__)


# What aiortc 1.16.0 sets, in its order: for ECDSA certificates (ours, browsers').
STOCK_CIPHERS: tuple[str, ...] = (
    "ECDHE-ECDSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-CHACHA20-POLY1305",
    "ECDHE-ECDSA-AES128-SHA",
    "ECDHE-ECDSA-AES256-SHA",
)
# What we add for peers with RSA certificates (GStreamer 1.22 webrtcbin).
RSA_CIPHERS: tuple[str, ...] = (
    "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-RSA-AES256-GCM-SHA384",
    "ECDHE-RSA-CHACHA20-POLY1305",
)
CIPHERS: tuple[str, ...] = STOCK_CIPHERS + RSA_CIPHERS
CIPHER_LIST: bytes = ":".join(CIPHERS).encode("ascii")

CreateContext = Callable[[RTCCertificate, list[SRTPProtectionProfile]], SSL.Context]

_installed = False


def installed() -> bool:
    """Whether ``install()`` ran in this process."""
    return _installed


def install() -> None:
    """Make every DTLS context aiortc builds from now on offer the wider list.

    Idempotent: the lead calls it from both ``Sessions`` and ``Receiver``. Transports that
    already started keep their context.
    """
    global _installed
    if _installed:
        return
    aiortc_version.check(__name__)
    create: CreateContext = RTCCertificate._create_ssl_context

    @functools.wraps(create)
    def _create_ssl_context(
        self: RTCCertificate, srtp_profiles: list[SRTPProtectionProfile]
    ) -> SSL.Context:
        context = create(self, srtp_profiles)
        context.set_cipher_list(CIPHER_LIST)  # replaces aiortc's list, a prefix of ours
        return context

    RTCCertificate._create_ssl_context = _create_ssl_context  # type: ignore[method-assign]
    _installed = True
    logger.debug("aiortc DTLS cipher list widened to %s", CIPHER_LIST.decode())
