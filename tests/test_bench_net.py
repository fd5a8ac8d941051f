"""The network benchmark runs (5 s per run, two links) so it cannot rot; its numbers are
not asserted, only that every column is measured for both implementations. Needs root,
``ip``, ``nft`` and ``tc``: skipped without them, failed in CI. Without them the
benchmark itself says why in one line and exits 0 (what ``make bench-net`` relies on)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

from bench.net import BEGIN, COLUMNS, END, IMPLS, missing_requirements

from .ci import require_or_skip
from .helpers import ROOT, child_env

TIMEOUT = 600.0  # four runs of 5 s, each with two namespaces and a sender to start


def bench_net(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench.net", *args],
        cwd=ROOT, env=env or child_env(), capture_output=True, text=True, timeout=TIMEOUT,
    )  # fmt: skip


def test_network_benchmark_smoke(tmp_path: Path) -> None:
    require_or_skip(missing_requirements(), "the network benchmark")
    out, page = tmp_path / "bench-net.json", tmp_path / "networks.md"
    # A page written before: the run replaces its results section and keeps the rest.
    page.write_text(f"# Networks\n\nintro kept\n\n{BEGIN}\nold table\n{END}\n\n## Notes kept\n")
    result = bench_net(
        "--quick", "--scenarios", "loss-5,drop", "--json", str(out), "--markdown", str(page)
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "| 5% random loss |" in result.stdout, result.stdout  # the table
    results = json.loads(out.read_text())
    assert results["machine"]["nproc"] >= 1 and results["machine"]["kernel"]
    loss, drop = results["scenarios"]
    assert (loss["scenario"], drop["scenario"]) == ("loss-5", "drop")
    for row in (loss, drop):
        for impl in IMPLS:
            figures = row[impl]
            detail = f"{row['scenario']} {impl}: {json.dumps(figures)}"
            assert figures["receiver_exit"] == 0 and "error" not in figures, detail
            for column in COLUMNS:
                value = figures[column]
                assert isinstance(value, int | float) and math.isfinite(value), detail
            assert figures["fps"] > 0 and figures["bitrate_kbps"] > 0, detail
            assert figures["p50_ms"] <= figures["p95_ms"], detail
        assert set(row["ratios"]) == set(COLUMNS)
    for impl in IMPLS:  # the links were shaped as the rows say
        assert loss[impl]["dropped_by_link"] > 0, json.dumps(loss[impl])
        assert drop[impl]["link_changed_at_s"] is not None, json.dumps(drop[impl])
    text = page.read_text()
    assert "intro kept" in text and "## Notes kept" in text and "old table" not in text
    assert "| 5% random loss |" in text and "| 4 Mbit/s, 400 kbit/s from mid-run |" in text
    assert f"{results['machine']['nproc']} cores" in text


def test_network_benchmark_says_why_it_skips(tmp_path: Path) -> None:
    """No ``ip``, ``nft`` or ``tc`` on the PATH: one line naming them, exit 0, nothing
    written."""
    out = tmp_path / "bench-net.json"
    result = bench_net("--quick", "--json", str(out), env=child_env() | {"PATH": str(tmp_path)})
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and lines[0].startswith("bench-net: skipped: "), result.stdout
    assert "tc" in lines[0] and "nft" in lines[0], lines[0]
    assert not out.exists()
