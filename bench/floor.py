"""The encode + decode floor: what one frame costs to encode with the project's encoder
settings and to decode with the decoder our receiver uses, with nothing in between.

    python -m bench.floor --size 1920x1080 --codec h264 [--source testsrc] [--frames 60]
                          [--bitrate BPS]

No sender can deliver a decoded frame sooner than encode + decode after capture (on one
machine, with nothing else running); ``bench.run`` sets the measured capture-to-decoded
latency p50 against this floor (the issue's target: at most 1.3 x). The pictures are the
source's own (``sender.sources``: the fake camera, or ``scene``), read first at the
source's pace, then encoded and decoded one by one, each at its frame's time (``--fps``
apart), as a live stream's frames come; the figure is the median over the frames of
(encode + decode), in milliseconds. The same frames encoded and decoded back to back, with
no pause, are reported too (``back_to_back``): a frame that follows another at once finds
the CPU's caches warm and costs less, up to 0.6 x what a frame of a live stream does on
this machine (the fake camera at 640x480, VP8: 2.0 against 3.5 ms, where the sender's own
``webcam_encoding_seconds`` measured 3.8 ms), so that figure is no floor for a live
stream. The bitrate matters (VP8 at 640x480: about 2.5 ms at 300 kbit/s, 4.5 ms at
1.5 Mbit/s): ``bench.run`` passes the one our sender's full-size encoder ran at in the
latency measurement. Prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import av

from common.cli import size as parse_size
from sender import sources
from sender.encoders import Encoder

# The receiver decodes with aiortc's decoders (aiortc.codecs: Vp8Decoder, H264Decoder),
# which are these PyAV decoders.
DECODERS = {"vp8": "libvpx", "h264": "h264"}


def project_encoder(
    codec: str, width: int, height: int, fps: float, bitrate: int | None = None
) -> tuple[Encoder, int]:
    """The sender's encoder for one full-size tier (its default ``--encoder-speed``),
    and its bitrate (by default the codec's default bitrate, aiortc's start).

    The one place that knows how the sender builds its encoders."""
    from sender.encoding import PROFILES

    profile = PROFILES[codec]
    rate = bitrate or profile.default_bitrate
    return profile.create(width, height, rate, fps), rate


async def source_frames(
    source: str, width: int, height: int, fps: float, count: int
) -> list[av.VideoFrame]:
    """``count`` consecutive pictures of ``source`` (``--source`` syntax)."""
    opened = await sources.open_source(sources.resolve(source), width, height, fps)
    try:
        return [await opened.read() for _ in range(count)]
    finally:
        await opened.close()


def encode_decode(
    codec: str,
    frames: list[av.VideoFrame],
    fps: float,
    bitrate: int | None = None,
    paced: bool = True,
) -> dict[str, Any]:
    """Encode each frame and decode its packets at once, each at its time (``paced``)
    or back to back; per-frame times in ms."""
    width, height = frames[0].width, frames[0].height
    encoder, rate = project_encoder(codec, width, height, fps, bitrate)
    decoder = av.CodecContext.create(DECODERS[codec], "r")
    assert isinstance(decoder, av.VideoCodecContext)
    encode_ms: list[float] = []
    decode_ms: list[float] = []
    total_ms: list[float] = []
    keyframes = 0
    size_bytes = 0
    due = time.perf_counter()
    for frame in frames:
        if paced:
            due += 1 / fps
            time.sleep(max(0.0, due - time.perf_counter()))
        started = time.perf_counter()
        packets = encoder.encode(frame)
        encoded = time.perf_counter()
        decoded = [picture for packet in packets for picture in decoder.decode(packet)]
        finished = time.perf_counter()
        if not decoded:  # an encoder holding frames back would not be a floor; none does
            continue
        keyframes += sum(packet.is_keyframe for packet in packets)
        size_bytes += sum(packet.size for packet in packets)
        encode_ms.append((encoded - started) * 1000)
        decode_ms.append((finished - encoded) * 1000)
        total_ms.append((finished - started) * 1000)
    if not total_ms:
        raise RuntimeError(f"{codec}: no frame came out of encode + decode")
    return {
        "size": f"{width}x{height}",
        "codec": codec,
        "bitrate": rate,
        "frames": len(total_ms),
        "keyframes": keyframes,
        "mean_frame_bytes": round(size_bytes / len(total_ms)),
        "encode_ms": round(statistics.median(encode_ms), 3),
        "decode_ms": round(statistics.median(decode_ms), 3),
        "floor_ms": round(statistics.median(total_ms), 3),
    }


def measure(
    source: str,
    width: int,
    height: int,
    codec: str,
    fps: float = 30.0,
    frames: int = 60,
    bitrate: int | None = None,
) -> dict[str, Any]:
    pictures = asyncio.run(source_frames(source, width, height, fps, frames))
    result = encode_decode(codec, pictures, fps, bitrate)
    warm = encode_decode(codec, pictures, fps, bitrate, paced=False)
    result["back_to_back"] = {k: warm[k] for k in ("encode_ms", "decode_ms", "floor_ms")}
    result["source"] = source
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", type=parse_size, default=(640, 480))
    parser.add_argument("--codec", choices=sorted(DECODERS), default="vp8")
    parser.add_argument("--source", default="testsrc")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument(
        "--bitrate", type=int, help="bits/s (bench.run: what our sender ran at; else the default)"
    )
    args = parser.parse_args()
    width, height = args.size
    result = measure(args.source, width, height, args.codec, args.fps, args.frames, args.bitrate)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
