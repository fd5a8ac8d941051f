"""The passthrough benchmark runs (640x480, 1 and 2 viewers, 2 s) so it cannot rot; its
numbers are not asserted, only that it measured both modes and printed the table."""

import subprocess
import sys
from pathlib import Path

from .helpers import ROOT, child_env
from .rtsp_camera import require


def test_passthrough_benchmark_smoke(tmp_path: Path) -> None:
    require()
    doc = tmp_path / "performance.md"
    doc.write_text("# Performance\n\nProse.\n")
    result = subprocess.run(
        [sys.executable, "-m", "bench.passthrough", "--quick", "--markdown", str(doc)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    out = result.stdout
    assert "| mode | viewers | sender CPU (cores) |" in out
    assert "| passthrough | 1 |" in out and "| transcode | 2 |" in out
    assert "passthrough/transcode CPU" in out and "Camera read directly" in out
    text = doc.read_text()
    assert text.startswith("# Performance\n\nProse.\n")
    assert "<!-- passthrough:begin" in text and "| passthrough | 2 |" in text
