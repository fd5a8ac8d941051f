"""The camera-like fake camera (``--source scene``): deterministic, stamped, camera-like,
and end to end its decoded frames match the frames regenerated from their stamps."""

import fractions
import itertools

import av
import numpy as np
import pytest

from bench import quality
from common import stamp
from receiver.stats import read_stamp
from sender import scene
from sender.sources import SceneCamera, SourceSpec, TestPattern, resolve

from .helpers import SenderProcess

WIDTH, HEIGHT = 640, 480
BITRATE = 600_000
PSNR_FLOOR = 30.0  # dB; VP8 at 600 kbit/s gave about 37
WRONG_BY = 30  # frames: one second of pan and car later
WRONG_MARGIN = 6.0  # dB a wrong match scores below the right one, at least


def luma(image: np.ndarray, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    return scene.planes(image, width, height)[0]


def test_frames_are_a_function_of_their_number() -> None:
    first, second = scene.Scene(WIDTH, HEIGHT), scene.Scene(WIDTH, HEIGHT)  # not shared
    for n in (0, 7, 123, 10_000):
        assert np.array_equal(first.render(n), second.render(n)), f"frame {n}"
    frames = [first.render(n).astype(np.int16) for n in range(4)]
    for a, b in itertools.pairwise(frames):
        assert np.mean(np.abs(a - b)) > 1.0, "the sensor noise changes every frame"
    # A second later the camera has panned: most of the picture moved.
    later = first.render(30).astype(np.int16)
    assert np.mean(np.abs(luma(later) - luma(frames[0])) > 8) > 0.3


def test_the_pan_moves_by_fractions_of_a_pixel() -> None:
    """As a camera's does: a picture moved by whole pixels only is predicted exactly by an
    encoder's whole-pixel motion search, which flatters the fastest presets."""
    picture = scene.Scene(WIDTH, HEIGHT)
    steps = [picture.pan(n + 1)[0] - picture.pan(n)[0] for n in range(60)]
    assert any(step % 1 for step in steps), steps
    # Half a pixel along, the landscape lies between its whole-pixel neighbours.
    whole = [luma.astype(np.float32) for luma, _, _ in picture._phases[::2]]  # 0, 1 px
    half = picture._phases[1][0].astype(np.float32)
    between = (whole[0] + whole[1]) / 2
    for neighbour in whole:
        assert np.mean(np.abs(half - between)) < np.mean(np.abs(half - neighbour)) / 2


def test_odd_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="even width and height"):
        scene.Scene(641, 480)


async def test_the_stamp_reads_back_and_the_rest_is_the_rendered_frame() -> None:
    camera = SceneCamera(WIDTH, HEIGHT, 1000.0)  # a fast rate: read() hardly waits
    await camera.open()
    top = 2 * stamp.cell_size(WIDTH)
    for n in range(3):
        frame = await camera.read()
        found = read_stamp(frame)
        assert found is not None and found.sequence == n
        assert stamp.age_us(found) < 1_000_000
        rendered = camera.render(n)
        image = frame.to_ndarray()  # yuv420p: Y rows, then U and V
        assert np.array_equal(image[top:HEIGHT], luma(rendered)[top:])
        chroma = image[HEIGHT:].reshape(2, HEIGHT // 2, WIDTH // 2)
        assert (chroma[:, : top // 2] == 128).all(), "chroma neutral under the stamp"
    await camera.close()


def encoded_bytes(render, frames: int = 10, quantizer: int = 10) -> int:
    """VP8 at one fixed quantizer: the bytes a picture costs at constant quality."""
    codec = av.CodecContext.create("libvpx", "w")
    codec.width, codec.height, codec.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    codec.time_base = fractions.Fraction(1, 30)
    codec.bit_rate = 50_000_000  # a ceiling never reached: the quantizer decides
    codec.qmin = codec.qmax = quantizer
    codec.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
    total = 0
    for n in range(frames):
        frame = av.VideoFrame.from_ndarray(render(n).reshape(-1, WIDTH), format="yuv420p")
        frame.pts = n
        total += sum(p.size for p in codec.encode(frame))
    return total + sum(p.size for p in codec.encode(None))


def test_it_costs_bits_as_a_camera_does() -> None:
    """At one good quality (VP8 quantizer 10 of 63) the scene costs many times the test
    pattern's bits: detail at every scale and noise that no motion predicts, where the
    pattern's bands only scroll (measured: about 15 times)."""
    flat = encoded_bytes(TestPattern(WIDTH, HEIGHT, 30).render)
    camera_like = encoded_bytes(scene.Scene(WIDTH, HEIGHT).render)
    print(f"VP8 at q 10, 10 frames: test pattern {flat} bytes, scene {camera_like} bytes")
    assert camera_like > 5 * flat


def test_source_names() -> None:
    assert resolve("scene") == SourceSpec("scene")
    assert SourceSpec("scene").describe() == "fake camera (scene)"


async def test_decoded_frames_match_their_regenerated_source(tmp_path) -> None:
    """Our sender (``--source scene``) and our Receiver over 127.0.0.1: each decoded
    frame, found by its stamp, matches its regenerated source; a wrong match does not."""
    sender = SenderProcess(
        ["--source", "scene", "--size", f"{WIDTH}x{HEIGHT}", "--bitrate", str(BITRATE)],
        tmp_path / "sender.log",
    )
    try:
        assert sender.health()["source"] == "fake camera (scene)"
        kept, watched = await quality.capture(sender.url, "project", WIDTH, HEIGHT, 2.0)
    finally:
        sender.stop()
    assert kept.unstamped == 0 and len(kept.luma) >= 10, kept
    picture = scene.shared(WIDTH, HEIGHT)
    right = quality.summarize(quality.score(picture, kept))
    wrong = quality.summarize(quality.score(picture, kept, offset=WRONG_BY))
    print(f"PSNR {right['psnr_db']} dB, {WRONG_BY} frames off {wrong['psnr_db']} dB", watched)
    assert 0.3 * BITRATE < watched.bitrate < 2 * BITRATE, "--bitrate holds the encoder"
    assert right["psnr_db"] > PSNR_FLOOR
    assert right["psnr_p5_db"] > PSNR_FLOOR - 3
    assert wrong["psnr_db"] < right["psnr_db"] - WRONG_MARGIN
    assert 0.7 < right["ssim"] <= 1.0 and wrong["ssim"] < right["ssim"]
