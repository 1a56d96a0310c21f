"""Keeps the benchmarks from rotting: one runs end to end (smallest size) and must end with its
JSON summary. Figures are not asserted: timings on a shared CI machine mean nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

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


@pytest.mark.subprocess_job
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
    # The larger size is past SCORE_BATCH_ROWS: the pipeline's Ray path ran, not only the driver.
    assert [r["n_per_set"] for r in summary["runs"]] == [1000, 20000]
    assert all(r["path"] == "exact" for r in summary["runs"])
    assert all(r["seconds"] > 0 and r["rss_peak_mb"] > 0 for r in summary["runs"])
    assert all(r["floor_seconds"] > 0 and r["pure_floor_ratio"] > 0 for r in summary["runs"])
    assert summary["floor_ratio"] == summary["runs"][-1]["floor_ratio"] > 0
    assert isinstance(summary["meets_floor_target"], bool)
    assert summary["machine"]["cpu_count"] >= 1
    assert len(summary["config_hash"]) == 12


@pytest.mark.subprocess_job
def test_gpu_check_runs_on_cpu_and_writes_its_json(tmp_path) -> None:
    """bench/gpu_check.py is run for real only on a lent GPU machine: keep its CPU path working."""
    out = tmp_path / "gpu_check.json"
    done = subprocess.run(
        [
            sys.executable,
            str(REPO / "bench" / "gpu_check.py"),
            "--device=cpu",
            "--archs=visdiff-tiny-clip",
            "--batch-sizes=4",
            "--min-seconds=0.05",
            "--decode-workers=1",
            "--decode-threads=1",
            "--pool-images=8",
            "--image-size=64",
            f"--out={out}",
        ],
        cwd=REPO,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.splitlines()[-1])
    written = json.loads(out.read_text())
    assert {key: summary[key] for key in written} == written
    assert summary["benchmark"] == "gpu_check" and summary["complete"] is True
    assert summary["skipped"] == [] and summary["gpu"] is None
    (run,) = summary["runs"]
    assert run["arch"] == "visdiff-tiny-clip" and run["dtype"] == "float32"
    (row,) = run["batches"]
    assert row["batch_size"] == 4 and row["embedding_check"] == "ok"
    assert min(row["bare_img_s"], row["embedder_img_s"], row["stage_img_s"]) > 0
    assert row["decode_workers_needed"] >= 1
    (decode,) = summary["decode"]["processes"]
    assert decode["workers"] == 1 and decode["images"] > 0


def _bench_common():
    sys.path.insert(0, str(REPO / "bench"))
    try:
        import _common
    finally:
        sys.path.remove(str(REPO / "bench"))
    return _common


def test_results_on_a_busy_machine_claim_no_target(monkeypatch, capsys) -> None:
    """Every bench's summary carries the load; above the core count a met target is not claimed."""
    common = _bench_common()
    cores = os.cpu_count() or 1
    monkeypatch.setattr(common.os, "getloadavg", lambda: (3.0 * cores, 0.0, 0.0))
    common.print_result({"benchmark": "x", "ratio": 1.0, "meets_target": True})
    busy = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert busy["noisy"] is True and busy["meets_target"] is False
    assert "busy machine" in busy["meets_target_reason"]
    assert busy["load"]["load_avg_1m_end"] == 3.0 * cores

    monkeypatch.setattr(common, "START_LOAD_1M", 0.0)
    monkeypatch.setattr(common.os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    common.print_result({"benchmark": "x", "ratio": 1.0, "meets_target": True})
    quiet = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert quiet["noisy"] is False and quiet["meets_target"] is True
    assert "meets_target_reason" not in quiet


def test_cpu_profile_counts_a_busy_child_by_its_title_and_not_what_came_before() -> None:
    """bench/_common.CpuSampler (the profile of embed_throughput and fixed_cost): CPU seconds per
    process group of this process's descendants, from the start of the block only."""
    sys.path.insert(0, str(REPO / "bench"))
    import _common

    spin = "import time\nt = time.process_time()\nwhile time.process_time() - t < {s}: pass\n"
    subprocess.run([sys.executable, "-c", spin.format(s=0.3)], check=True)  # before: not counted
    with _common.CpuSampler(interval=0.1) as sampler:
        child = subprocess.Popen([sys.executable, "-c", spin.format(s=1.0) + "time.sleep(0.5)"])
        child.wait(timeout=60)
    groups = sampler.by_group()
    child_group = _common.process_group([sys.executable, "-c", "..."], "python")
    assert 0.8 <= groups[child_group] <= 1.6, groups
    assert groups.get("driver", 0.0) < 1.0, groups
    assert _common.process_group(["ray::ClipModelActor.embed_rows"], "x") == "ray::ClipModelActor"
    title = "ray::MapWorker(MapBatches(Captioner)).submit"
    assert _common.process_group([title], "x") == "ray::MapWorker(MapBatches(Captioner))"
