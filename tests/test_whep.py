"""WHEP (draft-ietf-wish-whep) against a real sender, with a real aiortc viewer."""

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription

from common.ice import rtc_configuration
from receiver import Receiver, ReceiverError

from .helpers import wait_until
from .test_signalling import CHROMIUM_OFFER

SDP = {"Content-Type": "application/sdp"}


async def aiortc_offer() -> tuple[RTCPeerConnection, str]:
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("video", direction="recvonly")
    await pc.setLocalDescription(await pc.createOffer())
    return pc, pc.localDescription.sdp


async def test_post_creates_a_session_and_delete_ends_it(sender) -> None:
    pc, offer = await aiortc_offer()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.post(sender.url + "/whep", data=offer, headers=SDP) as resp:
                assert resp.status == 201
                assert resp.content_type == "application/sdp"
                location = resp.headers["Location"]
                answer = await resp.text()
            assert location.startswith("/whep/sessions/")
            assert len(location.rsplit("/", 1)[1]) >= 22  # 128 random bits, base64url
            await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
            await wait_until(lambda: pc.connectionState == "connected", what="ICE+DTLS")
            assert len(sender.sessions) == 1
            async with http.delete(sender.url + location) as resp:
                assert resp.status == 200
            assert len(sender.sessions) == 0  # at once, not after a timeout
            async with http.delete(sender.url + location) as resp:
                assert resp.status == 404
            async with http.get(sender.url + "/healthz") as resp:
                assert (await resp.json())["viewers"] == 0
    finally:
        await pc.close()


async def test_options_and_ice_server_links(sender_factory) -> None:
    sender = await sender_factory(
        ice_servers=("stun:stun.example.org:3478", "turn:alice:s%40cret@turn.example.org:3478")
    )
    async with aiohttp.ClientSession() as http:
        async with http.options(sender.url + "/whep") as resp:
            assert resp.status == 204
            assert resp.headers["Accept-Post"] == "application/sdp"
            links = resp.headers.getall("Link")
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=SDP) as resp:
            assert resp.status == 201
            assert resp.headers.getall("Link") == links
    assert links == [
        '<stun:stun.example.org:3478>; rel="ice-server"',
        '<turn:turn.example.org:3478>; rel="ice-server"; username="alice"; '
        'credential="s@cret"; credential-type="password"',
    ]


async def test_trickled_candidates_are_accepted(sender) -> None:
    async with aiohttp.ClientSession() as http:
        offer = CHROMIUM_OFFER.replace(
            "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0 network-id 1\r\n",
            "",
        )
        async with http.post(sender.url + "/whep", data=offer, headers=SDP) as resp:
            location = resp.headers["Location"]
        frag = (
            "a=ice-ufrag:EsAw\r\na=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
            "a=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host\r\n"
            "a=end-of-candidates\r\n"
        )
        headers = {"Content-Type": "application/trickle-ice-sdpfrag"}
        async with http.patch(sender.url + location, data=frag, headers=headers) as resp:
            assert resp.status == 204, await resp.text()
        restart = frag.replace("EsAw", "NeW1")
        headers["If-Match"] = "*"
        async with http.patch(sender.url + location, data=restart, headers=headers) as resp:
            assert resp.status == 422  # ICE restart: not supported
        async with http.patch(sender.url + location, data=frag, headers=SDP) as resp:
            assert resp.status == 415
        bad = "a=ice-ufrag:EsAw\r\na=mid:0\r\na=candidate:garbage\r\n"
        headers.pop("If-Match")
        async with http.patch(sender.url + location, data=bad, headers=headers) as resp:
            assert resp.status == 400
        async with http.patch(sender.url + "/whep/sessions/nope", data=frag, headers=headers) as r:
            assert r.status == 404


@pytest.mark.parametrize(
    ("body", "headers", "status", "reason"),
    [
        (CHROMIUM_OFFER, {"Content-Type": "application/json"}, 415, "application/sdp"),
        (CHROMIUM_OFFER, {"Content-Type": "text/plain"}, 415, "application/sdp"),
        ("not sdp at all", SDP, 400, "SDP"),
        (CHROMIUM_OFFER.replace("m=video", "m=audio"), SDP, 400, "no video"),
        (CHROMIUM_OFFER.replace("a=recvonly", "a=sendonly"), SDP, 400, "receive video"),
        (b"\xff\xfe\x00garbage", SDP, 400, "UTF-8"),
    ],
)
async def test_bad_whep_requests(sender, body, headers, status, reason) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(sender.url + "/whep", data=body, headers=headers) as resp:
            assert resp.status == status
            assert reason in (await resp.json())["error"]
        async with http.get(sender.url + "/healthz") as resp:
            assert (await resp.json())["viewers"] == 0
    assert sender.source.opens == 0


async def test_wrong_methods_get_405(sender) -> None:
    async with aiohttp.ClientSession() as http:
        for method, path in [("GET", "/whep"), ("PUT", "/whep"), ("GET", "/whep/sessions/x")]:
            async with http.request(method, sender.url + path) as resp:
                assert resp.status == 405, (method, path)
        async with http.get(sender.url + "/offer") as resp:
            assert resp.status == 405


async def test_too_large_body_is_413(sender) -> None:
    async with aiohttp.ClientSession() as http:
        big = CHROMIUM_OFFER + "a=x-padding:" + "x" * 70_000 + "\r\n"
        async with http.post(sender.url + "/whep", data=big, headers=SDP) as resp:
            assert resp.status == 413


async def test_over_max_viewers_is_503_with_retry_after(sender_factory) -> None:
    sender = await sender_factory(max_viewers=1)
    async with aiohttp.ClientSession() as http:
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=SDP) as resp:
            assert resp.status == 201
        async with http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=SDP) as resp:
            assert resp.status == 503
            assert int(resp.headers["Retry-After"]) > 0


async def test_unconnected_session_is_freed(sender_factory) -> None:
    """A viewer that never completes ICE is closed after connect_timeout (30 s by default)."""
    sender = await sender_factory(connect_timeout=1.0)
    async with (
        aiohttp.ClientSession() as http,
        http.post(sender.url + "/whep", data=CHROMIUM_OFFER, headers=SDP) as resp,
    ):
        assert resp.status == 201
    assert len(sender.sessions) == 1
    await wait_until(lambda: len(sender.sessions) == 0, within=20, what="the session to expire")
    await wait_until(lambda: not sender.source.is_open, within=10, what="camera release")


async def test_receiver_uses_whep_and_deletes_its_session(sender, caplog) -> None:
    caplog.set_level("INFO", logger="sender.sessions")
    async with Receiver(sender.url, connect_timeout=20) as rx:
        assert rx.connection.signalling.session_url.startswith(sender.url + "/whep/sessions/")
        async for _ in rx.frames():
            break
        assert len(sender.sessions) == 1
    assert len(sender.sessions) == 0
    assert "ended by viewer (DELETE)" in caplog.text


async def test_receiver_takes_a_full_whep_url_and_json_signalling(sender) -> None:
    async with Receiver(sender.url + "/whep", connect_timeout=20) as rx:
        async for frame in rx.frames():
            assert frame.width == 640
            break
    async with Receiver(sender.url, signalling="json", connect_timeout=20) as rx:
        assert rx.connection.signalling.url == sender.url + "/offer"
        async for frame in rx.frames():
            assert frame.width == 640
            break


async def test_receiver_reports_refusal(sender_factory) -> None:
    sender = await sender_factory(max_viewers=1)
    async with Receiver(sender.url, connect_timeout=20):
        with pytest.raises(ReceiverError, match="503"):
            async with Receiver(sender.url, connect_timeout=20):
                pass
