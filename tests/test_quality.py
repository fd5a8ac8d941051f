"""The picture-quality measure (bench.quality) and the scene's cost report: the measures
on known pictures, and a one-second run of both senders so that neither can rot."""

import json
import math
import subprocess
import sys

import cv2
import numpy as np
import pytest

from bench import quality, scene_cost
from sender import scene

from .helpers import ROOT, child_env

PSNR_FLOOR = 25.0  # dB at 640x480 and 460 kbit/s; both measured about 35


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    return scene.planes(scene.Scene(640, 480).render(0), 640, 480)[0]


def test_identical_pictures_score_perfectly(picture) -> None:
    assert quality.psnr(picture, picture.copy()) == math.inf
    assert quality.ssim(picture, picture.copy()) == pytest.approx(1.0)


def test_psnr_of_a_known_error(picture) -> None:
    """Every pixel off by 4 levels (none clipped): 20 log10(255 / 4) = 36.09 dB."""
    off = np.clip(picture.astype(np.int16) + 4, 0, 255).astype(np.uint8)
    assert not (picture > 251).any()
    assert quality.psnr(picture, off) == pytest.approx(20 * math.log10(255 / 4), abs=0.01)


def test_ssim_falls_with_blur_and_noise(picture) -> None:
    """Checked against scikit-image's structural_similarity (gaussian_weights, sigma 1.5,
    use_sample_covariance=False): equal to 5 decimals on blurred, noisy and JPEG copies."""
    blurred = cv2.GaussianBlur(picture, (0, 0), 1.2)
    noise = np.random.default_rng(1).normal(0, 5, picture.shape)
    noisy = np.clip(picture + noise, 0, 255).astype(np.uint8)
    assert 0.5 < quality.ssim(picture, noisy) < quality.ssim(picture, blurred) < 0.99


def test_default_bitrate_stays_within_stock_aiortc_limits() -> None:
    assert quality.default_bitrate(640, 480, "vp8") == 460_800
    assert quality.default_bitrate(1920, 1080, "vp8") == 1_500_000  # stock VP8's most
    assert quality.default_bitrate(320, 240, "h264") == 500_000  # stock H.264's least


def test_scene_cost_report(capsys) -> None:
    assert scene_cost.main(["--sizes", "640x480", "--frames", "3"]) == 0
    assert "| 640x480 |" in capsys.readouterr().out


def test_quality_benchmark_smoke(tmp_path) -> None:
    out = tmp_path / "quality.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.quality", "--quick", "--json", str(out)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 640x480 | vp8 | project |" in result.stdout  # the table
    rows = {row["impl"]: row for row in json.loads(out.read_text())}
    assert set(rows) == {"stock", "project"}
    for impl, row in rows.items():
        assert row["scored_frames"] >= 5, (impl, row)
        assert PSNR_FLOOR < row["psnr_db"] < 60, (impl, row)
        assert 0.5 < row["ssim"] <= 1.0, (impl, row)
        assert math.isfinite(row["latency_p50_ms"]) and row["received_kbps"] > 0, (impl, row)
