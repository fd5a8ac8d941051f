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

``apply(pc)`` wraps ``_create_ssl_context`` on that connection's own certificate (an
instance attribute; ``RTCDtlsTransport.start`` calls it for both DTLS roles), so only our
connections offer the wider list. As the client (the sender answering an actpass offer)
the RSA suites are what lets an RSA server pick one; as the server our certificate is
ECDSA, so OpenSSL only ever chooses an ECDSA suite and the addition is inert.
``tests/test_gstreamer.py`` fails if an aiortc upgrade changes the stock list or the
method this relies on.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import SRTPProtectionProfile
from OpenSSL import SSL

from . import check, private

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


def apply(pc: RTCPeerConnection) -> None:
    """Make this connection's DTLS contexts offer the wider list (before it connects)."""
    check(__name__)
    certificates = private(pc, RTCPeerConnection, "certificates")
    assert isinstance(certificates, list)
    for certificate in certificates:
        stock = certificate._create_ssl_context

        def _create_ssl_context(
            srtp_profiles: list[SRTPProtectionProfile],
            stock: Callable[[list[SRTPProtectionProfile]], SSL.Context] = stock,
        ) -> SSL.Context:
            context = stock(srtp_profiles)
            context.set_cipher_list(CIPHER_LIST)  # replaces aiortc's list, a prefix of ours
            return context

        # an instance attribute: this certificate, this connection
        certificate._create_ssl_context = _create_ssl_context


def applied(pc: RTCPeerConnection) -> bool:
    """Whether ``apply()`` ran on this connection."""
    certificates = private(pc, RTCPeerConnection, "certificates")
    assert isinstance(certificates, list)
    return all("_create_ssl_context" in vars(c) for c in certificates)
