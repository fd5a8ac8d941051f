"""The benchmark runs (for a second) so it cannot rot; its numbers are not asserted."""

import json
import math
import subprocess
import sys

from .helpers import ROOT, child_env


def test_benchmark_smoke(tmp_path) -> None:
    out = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.run", "--quick", "--json", str(out)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "| 640x480 | vp8 |" in result.stdout  # the table
    results = json.loads(out.read_text())
    (case,) = results["cases"]
    for impl in ("stock", "project"):
        latency = case[impl]["latency"]
        assert math.isfinite(latency["latency_p50_ms"]) and latency["frames"] > 0
        assert case[impl]["load"][0]["fps_mean"] > 0
        assert results["cycles"][impl]["failures"] == 0
