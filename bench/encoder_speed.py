"""Encode time and size per codec, picture size and ``--encoder-speed``, beside stock
aiortc's own encoders, on this machine (one encoder at a time, no network):

    python -m bench.encoder_speed [--frames N] [--scene testsrc|scene|textured]
        [--size WxH] [--codec vp8|h264] [--markdown FILE] [--json FILE]

For each run: milliseconds per frame (wall, and CPU of the whole process, which counts
the encoder's own threads), bytes per frame, the bitrate that makes, and the luma PSNR
of the decoded pictures against the source. The bitrate asked for is what a viewer on a
good link gets: 0.05 bit per pixel at 30 fps, at most the codec's maximum (VP8 1.5 Mbit/s,
H.264 3 Mbit/s). Scenes: ``testsrc``, the fake camera (scrolling bands: cheap to encode);
``scene``, the camera-like fake camera (``--source scene``, ``sender/scene.py``);
``textured``, the stand-in used before that existed (a panning texture, a moving box and
sensor noise).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import cast

import av
import cv2
import numpy as np
from aiortc.codecs.h264 import H264Encoder, h264_depayload
from aiortc.codecs.vpx import Vp8Encoder, vp8_depayload

from common.cli import size as parse_size
from sender import encoders
from sender.encoders import Speed
from sender.encoding import PROFILES
from sender.scene import shared as shared_scene
from sender.sources import TIME_BASE, TestPattern

SIZES = ((640, 480), (1280, 720), (1920, 1080))
STOCK = "stock aiortc"
BITS_PER_PIXEL = 0.05
FPS = 30


@dataclass
class Result:
    codec: str
    size: str
    speed: str
    kbps_asked: int
    wall_ms: float
    cpu_ms: float
    bytes_per_frame: float
    kbps: float
    psnr: float


def scene(name: str, width: int, height: int, count: int) -> list[av.VideoFrame]:
    """``count`` frames of the scene, stamped 90 kHz at 30 fps, as the sender's source."""
    if name == "testsrc":
        camera = TestPattern(width, height, FPS)
        frames = [camera._draw(i) for i in range(count)]  # the pattern, without the pacing
    elif name == "scene":
        picture = shared_scene(width, height)
        frames = [
            av.VideoFrame.from_ndarray(
                picture.render(i).reshape(height * 3 // 2, width), format="yuv420p"
            )
            for i in range(count)
        ]
    else:
        frames = textured(width, height, count)
    for i, frame in enumerate(frames):
        frame.pts, frame.time_base = i * 90000 // FPS, TIME_BASE
    return frames


def textured(width: int, height: int, count: int) -> list[av.VideoFrame]:
    rng = np.random.default_rng(1)
    noise = rng.normal(0, 1, (height, width * 2)).astype(np.float32)
    texture = sum(cv2.GaussianBlur(noise, (0, 0), s) * a for s, a in ((1, 6), (4, 60), (16, 200)))
    texture = np.clip(128 + texture, 16, 235)
    chroma = np.tile(np.linspace(90, 170, width // 2), (height // 2, 1)).astype(np.uint8)
    frames = []
    for i in range(count):
        shift = (i * 2) % width
        luma = texture[:, shift : shift + width].copy()
        box = height // 4
        left = (i * 6) % (width - box)
        luma[height // 2 : height // 2 + box, left : left + box] = 200
        luma += rng.normal(0, 2.5, luma.shape).astype(np.float32)
        planes = [np.clip(luma, 0, 255).astype(np.uint8).ravel(), chroma.ravel(), chroma.ravel()]
        picture = np.concatenate(planes).reshape(height * 3 // 2, width)
        frames.append(av.VideoFrame.from_ndarray(picture, format="yuv420p"))
    return frames


def psnr(source: av.VideoFrame, decoded: av.VideoFrame) -> float:
    """Of the luma plane as coded (a conversion to grey would stretch it to full range and
    scale every error by 255/219: 1.3 dB lower)."""
    a = source.to_ndarray()[: source.height].astype(np.float64)
    b = decoded.to_ndarray()[: decoded.height].astype(np.float64)
    mse = float(np.mean((a - b) ** 2))
    return 99.0 if mse == 0 else float(10 * np.log10(255**2 / mse))


def ours(codec: str, speed: Speed, bitrate: int) -> Callable[[av.VideoFrame], bytes]:
    """Our encoder at ``speed``: a frame in, its bytes out."""
    encoder: encoders.Encoder | None = None

    def encode(frame: av.VideoFrame) -> bytes:
        nonlocal encoder
        if encoder is None:
            params = encoders.EncoderParams(codec, frame.width, frame.height, bitrate, FPS, speed)
            encoder = encoders.open_encoder(encoders.SOFTWARE[codec], params)
        return b"".join(bytes(p) for p in encoder.encode(frame))

    return encode


def stock(codec: str, bitrate: int) -> Callable[[av.VideoFrame], bytes]:
    """aiortc's own encoder, as a stock sender uses it per viewer; its RTP payloads put
    back together (packetizing is counted: it is part of what it does per frame)."""
    encoder = Vp8Encoder() if codec == "vp8" else H264Encoder()
    encoder.target_bitrate = bitrate
    depayload = vp8_depayload if codec == "vp8" else h264_depayload

    def encode(frame: av.VideoFrame) -> bytes:
        payloads, _ = encoder.encode(frame)
        return b"".join(depayload(p) for p in payloads)

    return encode


def measure(codec: str, speed: str, frames: list[av.VideoFrame], bitrate: int) -> Result:
    encode = stock(codec, bitrate) if speed == STOCK else ours(codec, cast(Speed, speed), bitrate)
    decoder = av.CodecContext.create(codec, "r")
    assert isinstance(decoder, av.VideoCodecContext)
    wall = cpu = 0.0
    sizes: list[int] = []
    scores: list[float] = []
    for i, frame in enumerate(frames):
        started, cpu_started = time.perf_counter(), time.process_time()
        data = encode(frame)
        if i:  # the first includes opening the encoder
            wall += time.perf_counter() - started
            cpu += time.process_time() - cpu_started
        sizes.append(len(data))
        if data:
            for picture in decoder.decode(av.Packet(data)):
                scores.append(psnr(frames[len(scores)], picture))
    counted = len(frames) - 1
    per_frame = sum(sizes[1:]) / counted
    return Result(
        codec,
        f"{frames[0].width}x{frames[0].height}",
        speed,
        bitrate // 1000,
        round(wall / counted * 1000, 1),
        round(cpu / counted * 1000, 1),
        round(per_frame),
        round(per_frame * 8 * FPS / 1000),
        round(float(np.mean(scores)), 2),
    )


def markdown(results: list[Result], scene_name: str, count: int) -> str:
    lines = [
        f"Scene `{scene_name}`, {count} frames per run (the first, with the encoder's "
        "start, not timed).",
        "",
        "| codec | size | speed | asked kbit/s | ms/frame | CPU ms/frame | bytes/frame "
        "| kbit/s | PSNR dB |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        lines.append(
            f"| {r.codec} | {r.size} | {r.speed} | {r.kbps_asked} | {r.wall_ms} | "
            f"{r.cpu_ms} | {r.bytes_per_frame} | {r.kbps} | {r.psnr} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--scene", choices=("testsrc", "scene", "textured"), default="testsrc")
    parser.add_argument("--size", action="append", type=parse_size, help="WxH (default: all three)")
    parser.add_argument("--codec", action="append", choices=tuple(PROFILES))
    parser.add_argument("--markdown", type=Path, help="also write the table here")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = []
    for width, height in args.size or SIZES:
        frames = scene(args.scene, width, height, args.frames)
        for codec in args.codec or PROFILES:
            bitrate = min(PROFILES[codec].max_bitrate, int(BITS_PER_PIXEL * width * height * FPS))
            for speed in (*encoders.SPEEDS, STOCK):
                result = measure(codec, speed, frames, bitrate)
                print(json.dumps(asdict(result)), flush=True)
                results.append(result)
    table = markdown(results, args.scene, args.frames)
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=1))


if __name__ == "__main__":
    main()
