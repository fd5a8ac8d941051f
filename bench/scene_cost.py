"""What the camera-like fake camera costs: one-off set-up and per-frame time, per size.

    python -m bench.scene_cost [--sizes 640x480,1280x720,1920x1080] [--frames 150]

Per frame is what the sender's capture loop pays: ``render`` (slice, car, noise) plus the
stamp and the copy into an ``av.VideoFrame`` (``SceneCamera``'s ``read`` without its
pacing), on one core. The set-up (landscape, noise bank) is paid once per process.
"""

from __future__ import annotations

import argparse
import sys
import time

from common.cli import positive, sizes
from sender import scene
from sender.sources import SceneCamera


def cost(width: int, height: int, frames: int) -> dict:
    """Seconds to make the scene, milliseconds per rendered frame and per stamped frame."""
    started = time.perf_counter()
    camera = SceneCamera(width, height, 30.0)
    camera.render(0)  # makes the scene
    setup = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(frames):
        camera.render(n)
    rendered = time.perf_counter() - started
    started = time.perf_counter()
    for n in range(frames):
        camera._draw(n)  # render, neutral chroma, stamp, av.VideoFrame: what read() pays
    stamped = time.perf_counter() - started
    scene.shared.cache_clear()  # one size's landscape and noise at a time
    return {
        "size": f"{width}x{height}",
        "setup_s": round(setup, 2),
        "render_ms": round(rendered / frames * 1000, 2),
        "frame_ms": round(stamped / frames * 1000, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--sizes",
        type=sizes,
        default=[(640, 480), (1280, 720), (1920, 1080)],
        help="comma-separated WIDTHxHEIGHT",
    )
    parser.add_argument("--frames", type=positive(int), default=150, help="frames timed (150)")
    args = parser.parse_args(argv)
    print(
        "| size | set-up s | render ms/frame | stamped frame ms/frame | share of a core at 30 fps |"
    )
    print("|---|---|---|---|---|")
    for width, height in args.sizes:
        c = cost(width, height, args.frames)
        share = c["frame_ms"] * 30 / 1000
        print(
            f"| {c['size']} | {c['setup_s']} | {c['render_ms']} | {c['frame_ms']} | {share:.3f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
