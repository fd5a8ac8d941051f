"""Interoperability with GStreamer 1.22's webrtcbin, and the DTLS cipher patch it needs.

The viewer (``tests/gst_viewer.py``) runs under Debian's ``/usr/bin/python3`` with
python3-gst-1.0 from apt, against a real sender subprocess. Stock aiortc 1.16.0 offers
ECDHE-ECDSA suites only, webrtcbin 1.22 has an RSA certificate: without
``common.aiortc_ext.dtls_ciphers`` (applied to each of our peer connections) its DTLS
server answers "no shared cipher".
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import math
import os
import subprocess
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiortc
import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcdtlstransport import SRTP_PROFILES, RTCCertificate, RTCDtlsTransport
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import SSL

from common.aiortc_ext import AIORTC_VERSION, dtls_ciphers, private
from sender.audio import TONE_AMPLITUDE

from .ci import require_or_skip
from .helpers import ROOT, SenderProcess

GST_PYTHON = "/usr/bin/python3"
VIEWER = ROOT / "tests" / "gst_viewer.py"
GST_PACKAGES = (
    "gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad "
    "gstreamer1.0-libav gstreamer1.0-nice python3-gst-1.0 gir1.2-gst-plugins-bad-1.0"
)
GST_CHECK = """
import gi
for namespace in ("Gst", "GstSdp", "GstVideo", "GstWebRTC"):
    gi.require_version(namespace, "1.0")
from gi.repository import Gst, GstSdp, GstVideo, GstWebRTC
Gst.init(None)
for name in ("webrtcbin", "nicesrc", "dtlssrtpdec", "rtpvp8depay", "vp8dec", "avdec_h264",
             "rtpopusdepay", "opusdec"):
    assert Gst.ElementFactory.find(name), name + " is missing"
"""
# The cipher string GStreamer 1.22's DTLS agent sets (ext/dtls/gstdtlsagent.c).
GSTREAMER_CIPHERS = b"ALL:!ADH:!LOW:!EXP:!MD5:@STRENGTH"
FRAMES = 30
AUDIO_SECONDS = 2.0  # decoded audio the viewer waits for: at least one click


# --- the patch itself (no GStreamer needed) ----------------------------------------


def tls12_names(context: SSL.Context) -> list[str]:
    """The DTLS 1.2 suites a context offers, read the way OpenSSL reports them."""
    return [name for name in SSL.Connection(context).get_cipher_list() if "-" in name]


def stock_context() -> SSL.Context:
    create = inspect.unwrap(RTCCertificate._create_ssl_context)
    return create(RTCCertificate.generateCertificate(), srtp_profiles=SRTP_PROFILES)


def our_certificate(pc: RTCPeerConnection) -> RTCCertificate:
    """The DTLS certificate a peer connection will use (aiortc makes one per connection)."""
    certificates = private(pc, RTCPeerConnection, "certificates")
    assert isinstance(certificates, list) and len(certificates) == 1
    return certificates[0]


def test_aiortc_is_the_version_the_patch_was_written_for() -> None:
    assert aiortc.__version__ == AIORTC_VERSION == "1.16.0", (
        f"aiortc is {aiortc.__version__}: re-check common/aiortc_ext/dtls_ciphers.py (does "
        "aiortc still build its DTLS context in RTCCertificate._create_ssl_context, ECDSA "
        "suites only?), then update AIORTC_VERSION in common/aiortc_ext/__init__.py and here"
    )
    # Stock aiortc's list is still what we keep as our prefix, and still lacks RSA.
    assert tls12_names(stock_context()) == list(dtls_ciphers.STOCK_CIPHERS)
    # RTCDtlsTransport still builds its context through the method we wrap, both roles.
    assert "_create_ssl_context(" in inspect.getsource(RTCDtlsTransport.start)


async def test_apply_widens_the_contexts_of_that_connection_only() -> None:
    ours, theirs = RTCPeerConnection(), RTCPeerConnection()
    try:
        dtls_ciphers.apply(ours)
        assert dtls_ciphers.applied(ours) and not dtls_ciphers.applied(theirs)
        names = tls12_names(our_certificate(ours)._create_ssl_context(SRTP_PROFILES))
        assert names[: len(dtls_ciphers.STOCK_CIPHERS)] == list(dtls_ciphers.STOCK_CIPHERS)
        assert "ECDHE-RSA-AES128-GCM-SHA256" in names
        assert all(name.startswith("ECDHE-") for name in names), names  # forward secret only
        added = names[len(dtls_ciphers.STOCK_CIPHERS) :]
        assert added == list(dtls_ciphers.RSA_CIPHERS)
        assert all(("GCM" in name or "POLY1305" in name) for name in added), added  # AEAD
        # Another connection in the same process, and the class, keep aiortc's list.
        stock = tls12_names(our_certificate(theirs)._create_ssl_context(SRTP_PROFILES))
        assert stock == list(dtls_ciphers.STOCK_CIPHERS)
        assert inspect.unwrap(RTCCertificate._create_ssl_context) is (
            RTCCertificate._create_ssl_context
        )
    finally:
        await ours.close()
        await theirs.close()


def rsa_peer_context() -> SSL.Context:
    """A DTLS context like GStreamer 1.22's: RSA-2048 certificate, its cipher string."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "gstreamer")])
    start = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - timedelta(days=1))
        .not_valid_after(start + timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    context = SSL.Context(SSL.DTLS_METHOD)
    context.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *_: True)
    context.use_certificate(cert)
    context.use_privatekey(key)
    context.set_cipher_list(GSTREAMER_CIPHERS)
    context.set_tlsext_use_srtp(b"SRTP_AES128_CM_SHA1_80")
    return context


def handshake(client: SSL.Connection, server: SSL.Connection) -> None:
    """Run a DTLS handshake over memory BIOs; raises the first side's SSL.Error."""
    client.set_connect_state()
    server.set_accept_state()
    done = {id(client): False, id(server): False}
    for _ in range(20):
        for this, other in ((client, server), (server, client)):
            if not done[id(this)]:
                try:
                    this.do_handshake()
                    done[id(this)] = True
                except SSL.WantReadError:
                    pass
            while True:
                try:
                    other.bio_write(this.bio_read(65536))
                except SSL.WantReadError:
                    break
        if all(done.values()):
            return
    raise AssertionError("DTLS handshake did not finish")


def test_stock_aiortc_client_and_rsa_server_share_no_cipher() -> None:
    """What GStreamer 1.22 says to stock aiortc (aiortc answers actpass: DTLS client)."""
    client = SSL.Connection(stock_context())
    server = SSL.Connection(rsa_peer_context())
    with pytest.raises(SSL.Error, match="no shared cipher"):
        handshake(client, server)


@pytest.mark.parametrize("aiortc_role", ["client", "server"])
async def test_patched_aiortc_handshakes_with_an_rsa_peer(aiortc_role: str) -> None:
    pc = RTCPeerConnection()
    try:
        dtls_ciphers.apply(pc)
        ours = SSL.Connection(our_certificate(pc)._create_ssl_context(SRTP_PROFILES))
    finally:
        await pc.close()
    theirs = SSL.Connection(rsa_peer_context())
    if aiortc_role == "client":
        handshake(ours, theirs)
        # RSA-authenticated: the suite came from our addition, and it is an AEAD one.
        assert ours.get_cipher_name() == "ECDHE-RSA-AES128-GCM-SHA256"
    else:
        handshake(theirs, ours)
        assert ours.get_cipher_name() in dtls_ciphers.STOCK_CIPHERS  # our cert is ECDSA
    assert ours.get_selected_srtp_profile() == b"SRTP_AES128_CM_SHA1_80"


# --- a real GStreamer viewer against a real sender ---------------------------------


@functools.cache
def gstreamer_problem() -> str | None:
    """Why the GStreamer viewer cannot run here, or None."""
    if not Path(GST_PYTHON).exists():
        return f"{GST_PYTHON} does not exist"
    try:
        check = subprocess.run(
            [GST_PYTHON, "-I", "-c", GST_CHECK], capture_output=True, text=True, timeout=60
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{GST_PYTHON} failed: {exc}"
    if check.returncode != 0:
        lines = check.stderr.strip().splitlines() or ["no output"]
        return lines[-1]
    return None


@pytest.fixture
def gstreamer() -> None:
    problem = gstreamer_problem()
    if problem is not None:
        problem = (
            f"GStreamer webrtcbin for {GST_PYTHON} is not usable ({problem}); "
            f"apt-get install {GST_PACKAGES}"
        )
    require_or_skip(problem, "the GStreamer interoperability tests")


def run_viewer(url: str, signalling: str, timeout: float = 30.0, *extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    args = [url, "--signalling", signalling, "--frames", str(FRAMES), "--timeout", str(timeout)]
    args += extra
    viewer = subprocess.run(
        [GST_PYTHON, "-I", str(VIEWER), *args],
        capture_output=True,
        text=True,
        timeout=timeout + 30,
        env=env,
        cwd=ROOT,
    )
    assert viewer.returncode == 0, f"GStreamer viewer failed: {viewer.stderr.strip()}"
    return json.loads(viewer.stdout.strip().splitlines()[-1])


@pytest.mark.usefixtures("gstreamer")
@pytest.mark.parametrize("codec", ["vp8", "h264"])
@pytest.mark.parametrize("signalling", ["json", "whep"])
def test_gstreamer_webrtcbin_views_the_sender(
    sender_process: Callable[..., SenderProcess], signalling: str, codec: str
) -> None:
    sender = sender_process("--source", "testsrc", "--codec", codec)
    try:
        result = run_viewer(sender.url, signalling)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsender log:\n{sender.stderr()[-3000:]}") from None
    assert result["codec"] == codec.upper()
    assert result["frames"] >= FRAMES
    assert (result["width"], result["height"]) == (640, 480)
    sequences = result["sequences"]
    assert len(sequences) >= 5, result  # stamps readable in most of the first frames
    assert all(a < b for a, b in itertools.pairwise(sequences)), sequences
    if signalling == "whep":  # the viewer's DELETE ended its session
        assert sender.health()["viewers"] == 0


def run_audio_viewer(url: str, seconds: float, timeout: float = 30.0) -> dict:
    """The viewer over WHEP, also offering Opus and waiting for ``seconds`` of it decoded."""
    return run_viewer(url, "whep", timeout, "--audio", str(seconds))


@pytest.mark.usefixtures("gstreamer")
def test_gstreamer_webrtcbin_hears_the_senders_audio(
    sender_process: Callable[..., SenderProcess],
) -> None:
    sender = sender_process("--source", "testsrc", "--audio", "testsrc")
    try:
        result = run_audio_viewer(sender.url, AUDIO_SECONDS)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsender log:\n{sender.stderr()[-3000:]}") from None
    assert result["frames"] >= FRAMES, result
    audio = result["audio"]
    print(json.dumps(audio))
    assert audio["codec"] == "OPUS", result
    assert audio["rate"] == 48000 and audio["seconds"] >= AUDIO_SECONDS, result
    assert audio["packets"] >= AUDIO_SECONDS * 50, result  # 20 ms Opus packets
    # GStreamer's own Opus decoder hears the tone (0.1 of full scale, RMS 0.07) and, in
    # two seconds, a click (0.8 of full scale for 5 ms: by its peak, since a buffer's RMS
    # depends on where the click falls: 0.29 once, split between two 20 ms buffers).
    assert abs(audio["rms_median"] - TONE_AMPLITUDE / math.sqrt(2)) < 0.02, result
    assert audio["peak"] > 0.5, result
    assert sender.health()["viewers"] == 0


@pytest.mark.usefixtures("gstreamer")
def test_gstreamer_webrtcbin_offering_audio_to_a_sender_without_it(
    sender_process: Callable[..., SenderProcess],
) -> None:
    sender = sender_process("--source", "testsrc")  # --audio none: answered inactive
    result = run_audio_viewer(sender.url, AUDIO_SECONDS)
    assert result["frames"] >= FRAMES, result
    assert result["audio"]["packets"] == 0 and result["audio"]["seconds"] == 0, result
