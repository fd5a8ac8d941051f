"""The JSON /offer endpoint, as the seed's browser page and the tutorial use it."""

import json

import aiohttp
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import SessionDescription

from common.ice import rtc_configuration
from receiver.stats import read_stamp

from .helpers import wait_until

# An offer as Chromium makes it for addTransceiver('video', {direction: 'recvonly'})
# after ICE gathering completed (the seed's vanilla ICE).
CHROMIUM_OFFER = "\r\n".join(
    [
        "v=0",
        "o=- 4611731400430051336 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        "a=group:BUNDLE 0",
        "a=extmap-allow-mixed",
        "a=msid-semantic: WMS",
        "m=video 9 UDP/TLS/RTP/SAVPF 96 97 102 103 104 105 106 107 108 109 127 125 39 40 45 46 98 99 100 101 112 113 116 117 118",
        "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0",
        "a=candidate:1 1 udp 2122260223 127.0.0.1 50000 typ host generation 0 network-id 1",
        "a=ice-ufrag:EsAw",
        "a=ice-pwd:bP+XJMM09aR8AiX1jdukzR6Y",
        "a=ice-options:trickle",
        "a=fingerprint:sha-256 DA:7B:57:DC:28:CE:04:4F:31:79:85:C4:31:67:EB:27:58:29:ED:77:2A:0D:24:AE:ED:AD:30:BC:BD:F1:9C:02",
        "a=setup:actpass",
        "a=mid:0",
        "a=extmap:1 urn:ietf:params:rtp-hdrext:toffset",
        "a=extmap:2 http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
        "a=extmap:3 urn:3gpp:video-orientation",
        "a=extmap:4 http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
        "a=extmap:9 urn:ietf:params:rtp-hdrext:sdes:mid",
        "a=recvonly",
        "a=rtcp-mux",
        "a=rtcp-rsize",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 goog-remb",
        "a=rtcp-fb:96 transport-cc",
        "a=rtcp-fb:96 ccm fir",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:102 H264/90000",
        "a=rtcp-fb:102 nack",
        "a=rtcp-fb:102 nack pli",
        "a=fmtp:102 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
        "a=rtpmap:103 rtx/90000",
        "a=fmtp:103 apt=102",
        "a=rtpmap:104 H264/90000",
        "a=rtcp-fb:104 nack",
        "a=rtcp-fb:104 nack pli",
        "a=fmtp:104 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42001f",
        "a=rtpmap:105 rtx/90000",
        "a=fmtp:105 apt=104",
        "a=rtpmap:106 H264/90000",
        "a=rtcp-fb:106 nack",
        "a=rtcp-fb:106 nack pli",
        "a=fmtp:106 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:107 rtx/90000",
        "a=fmtp:107 apt=106",
        "a=rtpmap:108 H264/90000",
        "a=fmtp:108 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=42e01f",
        "a=rtpmap:109 rtx/90000",
        "a=fmtp:109 apt=108",
        "a=rtpmap:127 H264/90000",
        "a=fmtp:127 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=4d001f",
        "a=rtpmap:125 rtx/90000",
        "a=fmtp:125 apt=127",
        "a=rtpmap:39 H264/90000",
        "a=fmtp:39 level-asymmetry-allowed=1;packetization-mode=0;profile-level-id=4d001f",
        "a=rtpmap:40 rtx/90000",
        "a=fmtp:40 apt=39",
        "a=rtpmap:45 AV1/90000",
        "a=fmtp:45 level-idx=5;profile=0;tier=0",
        "a=rtpmap:46 rtx/90000",
        "a=fmtp:46 apt=45",
        "a=rtpmap:98 VP9/90000",
        "a=fmtp:98 profile-id=0",
        "a=rtpmap:99 rtx/90000",
        "a=fmtp:99 apt=98",
        "a=rtpmap:100 VP9/90000",
        "a=fmtp:100 profile-id=2",
        "a=rtpmap:101 rtx/90000",
        "a=fmtp:101 apt=100",
        "a=rtpmap:112 H264/90000",
        "a=fmtp:112 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=64001f",
        "a=rtpmap:113 rtx/90000",
        "a=fmtp:113 apt=112",
        "a=rtpmap:116 red/90000",
        "a=rtpmap:117 rtx/90000",
        "a=fmtp:117 apt=116",
        "a=rtpmap:118 ulpfec/90000",
        "",
    ]
)


def answer_codec(sdp: str) -> str:
    media = SessionDescription.parse(sdp).media[0]
    return f"{media.rtp.codecs[0].mimeType} {media.rtp.codecs[0].parameters}"


@pytest.mark.parametrize(
    ("codec", "expected"), [("vp8", "video/VP8"), ("h264", "profile-level-id': '42e01f")]
)
async def test_chromium_offer_is_answered(sender_factory, codec, expected) -> None:
    sender = await sender_factory(codec=codec)
    async with (
        aiohttp.ClientSession() as http,
        http.post(sender.url + "/offer", json={"sdp": CHROMIUM_OFFER, "type": "offer"}) as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert body["type"] == "answer"
    media = SessionDescription.parse(body["sdp"]).media[0]
    assert media.direction == "sendonly"
    assert expected in answer_codec(body["sdp"])
    assert len(sender.sessions) == 1  # Chromium's candidate is never reached; the session waits


async def test_browser_json_flow_connects_a_second_aiortc_peer(sender) -> None:
    """Exactly what the seed's client.js posts: JSON {sdp, type} with vanilla ICE."""
    pc = RTCPeerConnection(rtc_configuration())
    pc.addTransceiver("video", direction="recvonly")
    tracks = []
    pc.on("track", tracks.append)
    try:
        await pc.setLocalDescription(await pc.createOffer())
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                sender.url + "/offer",
                data=json.dumps(
                    {"sdp": pc.localDescription.sdp, "type": "offer"}, separators=(",", ":")
                ),
                headers={"Content-Type": "application/json"},
            ) as resp,
        ):
            assert resp.status == 200, await resp.text()
            answer = await resp.json()
        await pc.setRemoteDescription(RTCSessionDescription(**answer))
        await wait_until(lambda: tracks, what="the remote track")
        frame = await tracks[0].recv()
        assert (frame.width, frame.height) == (640, 480)
        assert read_stamp(frame) is not None
        assert pc.connectionState == "connected"
        assert len(sender.sessions) == 1
    finally:
        await pc.close()
    await wait_until(lambda: len(sender.sessions) == 0, what="the session to close")


CHROMIUM_NO_VIDEO = CHROMIUM_OFFER.replace("m=video", "m=audio")
CHROMIUM_SENDONLY = CHROMIUM_OFFER.replace("a=recvonly", "a=sendonly")


@pytest.mark.parametrize(
    ("body", "content_type", "reason"),
    [
        ("not json", "application/json", "not valid JSON"),
        ("", "application/json", "not valid JSON"),
        ("[1, 2]", "application/json", "JSON object"),
        ('{"type": "offer"}', "application/json", '"sdp"'),
        ('{"sdp": 5, "type": "offer"}', "application/json", '"sdp"'),
        ('{"sdp": "v=0"}', "application/json", '"type"'),
        ('{"sdp": "v=0", "type": "answer"}', "application/json", '"type"'),
        ('{"sdp": "", "type": "offer"}', "application/json", "empty SDP"),
        ('{"sdp": "garbage\\r\\nmore garbage", "type": "offer"}', "application/json", "SDP"),
        ('{"sdp": "v=0\\r\\nm=video notaport", "type": "offer"}', "application/json", "SDP"),
        (json.dumps({"sdp": CHROMIUM_NO_VIDEO, "type": "offer"}), "application/json", "no video"),
        (json.dumps({"sdp": CHROMIUM_SENDONLY, "type": "offer"}), "application/json", "receive"),
        ('{"sdp": "v=0", "type": "offer"}', "text/plain", "no video"),
    ],
)
async def test_bad_offers_get_400_and_leak_nothing(sender, body, content_type, reason) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.post(
            sender.url + "/offer", data=body, headers={"Content-Type": content_type}
        ) as resp:
            assert resp.status == 400
            error = (await resp.json())["error"]
            assert reason in error, error
        async with http.get(sender.url + "/healthz") as resp:
            health = await resp.json()
    assert health["status"] == "ok"
    assert health["viewers"] == 0
    assert health["source_opens"] == 0, "a refused offer must not open the camera"
    assert len(sender.sessions) == 0


async def test_page_uses_relative_urls(sender) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(sender.url + "/") as resp:
            assert resp.status == 200
            page = await resp.text()
        async with http.get(sender.url + "/client.js") as resp:
            assert resp.status == 200
            assert resp.content_type == "application/javascript"
            script = await resp.text()
    assert 'id="start"' in page and 'id="stop"' in page and "client.js" in page
    assert "0.0.0.0" not in script and "http://" not in script
    # Relative to the page: WHEP at "whep" (or "whep/NAME" with several cameras).
    assert 'return "whep";' in script and "fetch(whepEndpoint()" in script
    assert 'fetch("cameras")' in script
