"""Bearer token, browser origins and HTTPS, as a user (or an attacker) meets them."""

import json
import os

import aiohttp
import pytest

from receiver import Receiver, ReceiverError
from sender.app import CONFIG

from .helpers import assert_one_line_error, run_receiver
from .test_signalling import CHROMIUM_OFFER
from .tls import make_certificates

SDP = {"Content-Type": "application/sdp"}
TOKEN = "correct horse battery staple"


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong", "Basic Zm9vOmJhcg==", "Bearer", f"bearer {TOKEN}x", TOKEN],
)
async def test_requests_without_the_token_get_401(sender_factory, authorization) -> None:
    sender = await sender_factory(token=TOKEN)
    headers = {"Authorization": authorization} if authorization else {}
    async with aiohttp.ClientSession(headers=headers) as http:
        requests = [
            ("POST", "/whep", CHROMIUM_OFFER, SDP),
            ("POST", "/offer", json.dumps({"sdp": CHROMIUM_OFFER, "type": "offer"}), {}),
            ("DELETE", "/whep/sessions/abc", None, {}),
            ("PATCH", "/whep/sessions/abc", "a=end-of-candidates", {}),
        ]
        for method, path, body, extra in requests:
            async with http.request(method, sender.url + path, data=body, headers=extra) as resp:
                assert resp.status == 401, (method, path)
                assert resp.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(sender.url + "/healthz") as resp:  # health stays open
            assert resp.status == 200
    assert len(sender.sessions) == 0 and sender.source.opens == 0


async def test_the_token_lets_a_viewer_in_and_never_reaches_the_log(sender_factory, caplog) -> None:
    caplog.set_level("DEBUG")
    sender = await sender_factory(token=TOKEN)
    async with Receiver(sender.url, token=TOKEN, connect_timeout=20) as rx:
        async for _ in rx.frames():
            break
    with pytest.raises(ReceiverError, match="401"):
        await Receiver(sender.url, token="nope", connect_timeout=20).connect()
    assert TOKEN not in caplog.text
    assert TOKEN not in repr(sender.app[CONFIG])


def test_receiver_cli_token_from_the_environment(sender_process) -> None:
    sender = sender_process("--source", "testsrc", "--token", TOKEN)
    refused = run_receiver(sender.url, "--frames", "3")
    assert refused.returncode != 0
    assert_one_line_error(refused.stderr)
    assert "401" in refused.stderr
    os.environ["WEBCAM_RECEIVER_TOKEN"] = TOKEN
    try:
        accepted = run_receiver(sender.url, "--frames", "3", "--quiet")
    finally:
        del os.environ["WEBCAM_RECEIVER_TOKEN"]
    assert accepted.returncode == 0, accepted.stderr
    assert TOKEN not in sender.stderr()


async def test_cors_only_for_the_own_page_and_listed_origins(sender_factory) -> None:
    sender = await sender_factory(allowed_origins=("https://viewer.example",))
    own = sender.url
    async with aiohttp.ClientSession() as http:
        preflight = {
            "Origin": "https://viewer.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type,authorization",
        }
        async with http.options(sender.url + "/whep", headers=preflight) as resp:
            assert resp.status == 204
            assert resp.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
            assert "Authorization" in resp.headers["Access-Control-Allow-Headers"]
            assert "PATCH" in resp.headers["Access-Control-Allow-Methods"]
        headers = {**SDP, "Origin": "https://viewer.example"}
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=headers) as resp:
            assert resp.status == 201
            assert resp.headers["Access-Control-Allow-Origin"] == "https://viewer.example"
            assert "Location" in resp.headers["Access-Control-Expose-Headers"]
        headers = {**SDP, "Origin": own}
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=headers) as resp:
            assert resp.status == 201
        evil = {**SDP, "Origin": "https://evil.example"}
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=evil) as resp:
            assert resp.status == 403
            assert "Access-Control-Allow-Origin" not in resp.headers
        async with http.options(sender.url + "/whep", headers={**preflight, **evil}) as resp:
            assert resp.status == 403
    assert len(sender.sessions) == 2


def test_https_with_a_private_ca(sender_process, tmp_path) -> None:
    ca, cert, key = make_certificates(tmp_path)
    sender = sender_process("--source", "testsrc", "--cert", str(cert), "--key", str(key))
    assert sender.url.startswith("https://127.0.0.1:")
    unverified = run_receiver(sender.url, "--frames", "3")
    assert unverified.returncode != 0
    assert_one_line_error(unverified.stderr)
    assert "certificate" in unverified.stderr.lower()
    trusted = run_receiver(sender.url, "--frames", "3", "--cafile", str(ca), "--quiet")
    assert trusted.returncode == 0, trusted.stderr
    insecure = run_receiver(sender.url, "--frames", "3", "--insecure")
    assert insecure.returncode == 0, insecure.stderr
    assert "NOT verified" in insecure.stderr


def test_bad_certificate_files_are_a_one_line_error(tmp_path) -> None:
    import subprocess
    import sys

    from .helpers import ROOT, child_env

    result = subprocess.run(
        [sys.executable, "-m", "sender", "--source", "testsrc", "--port", "0",
         "--cert", str(tmp_path / "missing.pem"), "--key", str(tmp_path / "missing.key")],
        capture_output=True, text=True, timeout=60, env=child_env(), cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and "cannot load --cert/--key" in result.stderr
