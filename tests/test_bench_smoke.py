"""Keeps the benchmarks from rotting: one runs end to end (smallest size) and must end with its
JSON summary. Figures are not asserted: timings on a shared CI machine mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXPECTED_KEYS = {
    "benchmark",
    "runs",
    "ratio",
    "target",
    "meets_target",
    "config_hash",
    "machine",
    "peak_rss_growth_mb",
}


def test_rank_scale_smoke_prints_json_summary_last(tmp_path) -> None:
    env = {**os.environ, "RAY_DEDUP_LOGS": "0", "VISDIFF_BENCH_CACHE": str(tmp_path)}
    env.pop("RAY_ADDRESS", None)  # the benchmark starts its own local Ray
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "rank_scale.py"), "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.strip()]
    summary = json.loads(lines[-1])
    assert EXPECTED_KEYS <= summary.keys()
    assert summary["benchmark"] == "rank_scale"
    assert isinstance(summary["meets_target"], bool)
    assert [r["n_per_set"] for r in summary["runs"]] == [1000, 10000]
    assert all(r["path"] == "exact" for r in summary["runs"])
    assert all(r["seconds"] > 0 and r["rss_peak_mb"] > 0 for r in summary["runs"])
    assert summary["machine"]["cpu_count"] >= 1
    assert len(summary["config_hash"]) == 12
