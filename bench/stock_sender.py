"""The baseline sender: the pattern of aiortc's webcam example and of the tutorial.

Each viewer gets ``MediaRelay().subscribe(source)`` and so its own encoder; the JSON
``/offer`` endpoint answers with aiortc's defaults (explicit empty ICE servers, so that
neither side waits on STUN). The source is our fake camera (``--source testsrc`` or
``scene``), so both senders capture the same pictures at the same cost.

Stock aiortc has no fixed bitrate: its encoders follow the viewer's REMB. ``--bitrate``
pins each encoder at one (``PinnedEncoder``), so that a picture-quality comparison with
our sender's ``--bitrate`` compares the same number of bits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
from typing import Any

import aiortc.rtcrtpsender
import av
from aiohttp import web
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCRtpSender,
    RTCSessionDescription,
)
from aiortc.contrib.media import MediaRelay

from common.cli import positive, size, stop_on_signals
from sender import sources


class CameraTrack(MediaStreamTrack):
    kind = "video"

    def __init__(self, source: sources.Source) -> None:
        super().__init__()
        self._source = source

    async def recv(self) -> av.VideoFrame:
        return await self._source.read()


class PinnedEncoder:
    """One of aiortc's encoders held at a fixed bitrate: REMB's updates are ignored."""

    def __init__(self, encoder: Any, bitrate: int) -> None:
        encoder.target_bitrate = bitrate  # within aiortc's limits for the codec
        self._encoder = encoder

    def encode(self, frame: av.VideoFrame, force_keyframe: bool = False) -> Any:
        return self._encoder.encode(frame, force_keyframe)

    def pack(self, packet: av.Packet) -> Any:
        return self._encoder.pack(packet)

    @property
    def target_bitrate(self) -> int:
        return int(self._encoder.target_bitrate)

    @target_bitrate.setter
    def target_bitrate(self, bitrate: int) -> None:
        pass  # a REMB: ignored


def pin_bitrate(bitrate: int) -> None:
    """Make every video encoder aiortc's RTCRtpSender creates a ``PinnedEncoder``."""
    make = aiortc.rtcrtpsender.get_encoder

    def pinned(codec: Any) -> Any:
        encoder = make(codec)
        return PinnedEncoder(encoder, bitrate) if codec.mimeType.startswith("video/") else encoder

    aiortc.rtcrtpsender.get_encoder = pinned


def force_codec(pc: RTCPeerConnection, sender: RTCRtpSender, forced: str) -> None:
    """As aiortc's examples/webcam/webcam.py does."""
    kind = forced.split("/")[0]
    codecs = RTCRtpSender.getCapabilities(kind).codecs
    transceiver = next(t for t in pc.getTransceivers() if t.sender == sender)
    transceiver.setCodecPreferences([c for c in codecs if c.mimeType == forced])


def make_app(
    spec: sources.SourceSpec, width: int, height: int, fps: float, codec: str
) -> web.Application:
    relay = MediaRelay()
    camera: CameraTrack | None = None
    peers: set[RTCPeerConnection] = set()

    async def offer(request: web.Request) -> web.Response:
        nonlocal camera
        params = await request.json()
        if camera is None:  # opened with the first viewer, as in aiortc's webcam example
            # No await before it is set: viewers offering at once share one camera. The
            # fake cameras need no opening (``choose()`` made the scene already).
            camera = CameraTrack(sources.create(spec, width, height, fps))
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        peers.add(pc)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState in ("failed", "closed"):
                await pc.close()
                peers.discard(pc)

        video_sender = pc.addTrack(relay.subscribe(camera))
        force_codec(pc, video_sender, "video/VP8" if codec == "vp8" else "video/H264")
        await pc.setRemoteDescription(RTCSessionDescription(**params))
        await pc.setLocalDescription(await pc.createAnswer())
        return web.json_response({"sdp": pc.localDescription.sdp, "type": "answer"})

    async def healthz(request: web.Request) -> web.Response:
        """For the benchmark's record only: each viewer's encoder bitrate, as aiortc's
        REMB handling set it (it keeps the encoder private; reading it changes nothing)."""
        bitrates = []
        for pc in peers:
            for sender in pc.getSenders():
                encoder = getattr(sender, "_RTCRtpSender__encoder", None)
                bitrates.append(getattr(encoder, "target_bitrate", None))
        return web.json_response({"status": "ok", "viewers": len(peers), "bitrates": bitrates})

    async def closing(app: web.Application) -> None:
        await asyncio.gather(*(pc.close() for pc in list(peers)))

    app = web.Application()
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.on_shutdown.append(closing)
    return app


async def serve(args: argparse.Namespace) -> None:
    if args.bitrate:
        pin_bitrate(args.bitrate)
    spec = await sources.choose(args.source, *args.size, args.fps)  # makes the scene now
    runner = web.AppRunner(make_app(spec, *args.size, args.fps, args.codec), shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, args.host, args.port).start()
    print(f"stock-sender: serving on http://{args.host}:{runner.addresses[0][1]}/", flush=True)
    stop = asyncio.Event()
    with stop_on_signals(stop):
        await stop.wait()
    await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", choices=sorted(sources.SYNTHETIC), default="testsrc")
    parser.add_argument("--size", type=size, default=(640, 480))
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--codec", choices=["vp8", "h264"], default="vp8")
    parser.add_argument(
        "--bitrate", type=positive(int), metavar="BPS", help="fixed bitrate (default: REMB)"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))


if __name__ == "__main__":
    main()
