"""bench/multi_record.py runs (two small cameras, a few seconds) so it cannot rot; its
numbers are not asserted beyond being measured."""

import json
import math
import subprocess
import sys

from .helpers import ROOT, child_env


def test_multi_record_smoke(tmp_path) -> None:
    out = tmp_path / "multi.json"
    result = subprocess.run(
        [sys.executable, "-m", "bench.multi_record", "--cameras", "2", "--size", "640x480",
         "--fps", "15", "--seconds", "2", "--warmup", "1", "--json", str(out),
         "--keep", str(tmp_path / "rec")],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    assert "receiver CPU:" in result.stdout and "cam2:" in result.stdout
    measured = json.loads(out.read_text())
    assert math.isfinite(measured["receiver_cpu_cores"]) and measured["receiver_cpu_cores"] >= 0
    assert measured["sender_cpu_cores"] > 0
    assert set(measured["cameras"]) == {"cam1", "cam2"}
    for camera in measured["cameras"].values():
        assert camera["fps"] > 0 and camera["frames"] > 0
    assert (tmp_path / "rec" / "cam1.mkv").stat().st_size > 0
