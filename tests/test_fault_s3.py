"""Issue #11, fault and load: a run over shards on S3 gives the same results when the S3 server
throttles (HTTP 503 SlowDown on a fixed share of requests) and whatever the block sizes and the
number of CLIP actors: the same capped images ranked, the same proposer samples, the same
ranked.json.

The session's S3 endpoint is a pass-through proxy in front of moto (tests/conftest.py), set
before Ray started, so the driver and the session's warm Ray workers all use it; the throttled
run switches its throttling on for its duration and runs in this process like the baseline.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
import uuid
from pathlib import Path
from typing import Any

import boto3
import pyarrow.parquet as pq
import pytest

from tests.slowdown_proxy import SlowdownProxy
from tests.test_webscale_e2e import _webdataset_shard
from visdiff.config import load_config
from visdiff.io import storage
from visdiff.pipeline import graph

PER_SHARD_A, SHARDS_A = 8, 3  # set A: 24 images in WebDataset shards
PER_SHARD_B, SHARDS_B = 10, 2  # set B: 20 images
CAP = 14  # data.max_num_samples: fewer than either set, so the seeded choice matters


def test_storage_retries_slowdown_on_reads_writes_and_listings(
    s3_bucket: str, s3_proxy: SlowdownProxy
) -> None:
    """Ray-free: every other request throttled, and each object is still written, listed and
    read back whole."""
    objects = {f"s3://{s3_bucket}/k/{i}.bin": bytes([i]) * (1000 + i) for i in range(3)}
    with s3_proxy.throttle(every=2) as proxy:
        for uri, data in objects.items():
            storage.write_bytes(uri, data)
        assert storage.list_files(f"s3://{s3_bucket}/k") == sorted(objects)
        assert {uri: storage.read_bytes(uri) for uri in objects} == objects
    assert proxy.throttled >= len(objects) and {"GET", "PUT"} <= {m for m, _ in proxy.seen}


def _captions(examples_dir: Path) -> dict[str, str]:
    """Manifest caption by path relative to the example's folder (set_a/000001.jpg)."""
    with open(examples_dir / "manifest.csv", encoding="utf-8", newline="") as handle:
        return {row["path"]: row["caption"] for row in csv.DictReader(handle)}


@pytest.fixture(scope="module")
def shard_sets(examples_dir: Path, s3_server: str) -> tuple[str, str, str]:
    """(bucket, set_a, set_b): WebDataset shards with alt-text, on moto."""
    bucket = f"visdiff-fault-{uuid.uuid4().hex[:12]}"
    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket=bucket)
    captions = _captions(examples_dir)
    sizes = {"set_a": (SHARDS_A, PER_SHARD_A), "set_b": (SHARDS_B, PER_SHARD_B)}
    for folder, (shards, per_shard) in sizes.items():
        photos = sorted((examples_dir / folder).glob("*.jpg"))[: shards * per_shard]
        for shard in range(shards):
            part = photos[shard * per_shard : (shard + 1) * per_shard]
            s3.put_object(
                Bucket=bucket,
                Key=f"{folder}/{shard:05d}.tar",
                Body=_webdataset_shard(part, [captions[f"{folder}/{p.name}"] for p in part]),
            )
    set_a = f"s3://{bucket}/set_a/{{00000..{SHARDS_A - 1:05d}}}.tar"
    return bucket, set_a, f"s3://{bucket}/set_b/*.tar"


def _overrides(shard_sets: tuple[str, str, str], run: str, *extra: str) -> list[str]:
    bucket, set_a, set_b = shard_sets
    return [
        f"data.set_a={set_a}",
        f"data.set_b={set_b}",
        f"data.max_num_samples={CAP}",
        "caption.source=manifest",
        "propose.proposer=keyphrase",
        "llm.backend=none",
        "propose.num_rounds=1",
        "propose.num_samples=4",
        "rank.holdout=false",
        f"output_dir=s3://{bucket}/runs/{run}",
        *extra,
    ]


def _describe(overrides: list[str]) -> float:
    """Seconds a describe run took (in this process, the session's Ray job)."""
    from visdiff.pipeline.describe import describe

    started = time.monotonic()
    describe(load_config(None, overrides))
    return time.monotonic() - started


def _facts(bucket: str, run: str) -> dict[str, Any]:
    """What must not depend on throttling, blocks or actors: the ranked rows, the proposer's
    samples, the ranked images per set and status.json's state."""
    s3 = boto3.client("s3")

    def read(name: str) -> bytes:
        return s3.get_object(Bucket=bucket, Key=f"runs/{run}/{name}")["Body"].read()

    hypotheses = [json.loads(line) for line in read("hypotheses.jsonl").splitlines() if line]
    stats = json.loads(read("stats.json"))
    evidence = pq.read_table(io.BytesIO(read("evidence.parquet"))).to_pylist()
    picked = {
        row["hypothesis"]: {
            k: v for k, v in row.items() if k.endswith("_id") or k.startswith("hist")
        }
        for row in evidence
    }
    return {
        "state": json.loads(read("status.json"))["state"],
        "ranked": json.loads(read("ranked.json")),
        "samples": sorted(
            (tuple(h.get("ids_a", ())), tuple(h.get("ids_b", ()))) for h in hypotheses
        ),
        "images": stats["images"],
        "evidence": picked,
        "raw": {"hypotheses": hypotheses, "stats": stats},
    }


@pytest.fixture(scope="module")
def baseline(ray_session, shard_sets) -> dict[str, Any]:
    seconds = _describe(_overrides(shard_sets, "baseline", "clip.num_actors=1"))
    facts = _facts(shard_sets[0], "baseline")
    assert facts["state"] == "complete"
    print(f"baseline: {seconds:.1f} s", facts["raw"]["stats"]["seconds"])
    return facts


# ranked.json fields computed from the raw CLIP scores: float32 sums that may differ in their
# last bits when the images reach CLIP in other batches. Everything else (AUROCs and their
# intervals, p/q-values, counts, ids, histogram counts) depends on the scores' ranks only.
SCORE_FIELDS = frozenset({"mean_a", "mean_b", "diff", "t_stat"})


def _differences(got: Any, want: Any, path: str = "") -> list[str]:
    """Where two results differ ("raw" left out): exactly, but for SCORE_FIELDS."""
    if isinstance(want, dict) and isinstance(got, dict):
        keys = sorted((set(got) | set(want)) - {"raw"})
        return [d for k in keys for d in _differences(got.get(k), want.get(k), f"{path}/{k}")]
    if isinstance(want, list | tuple) and isinstance(got, list | tuple) and len(got) == len(want):
        pairs = enumerate(zip(got, want, strict=True))
        return [d for i, (g, w) in pairs for d in _differences(g, w, f"{path}/{i}")]
    if (
        path.rsplit("/", 1)[-1] in SCORE_FIELDS
        and isinstance(got, float)
        and isinstance(want, float)
    ):
        if math.isclose(got, want, rel_tol=1e-4, abs_tol=1e-6):
            return []
    return [] if got == want else [f"{path}: {got!r} != {want!r}"]


def test_throttled_s3_other_blocks_and_actors_give_the_same_results(
    baseline, shard_sets, s3_proxy: SlowdownProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One run against the baseline with every change the results must not depend on: a sixth
    of S3 requests answered 503 SlowDown, shard rows in blocks of 3 (not 256), two CLIP model
    actors (not one) and CLIP batches of 4. (One run, not three: each costs seconds of suite.)"""
    overrides = _overrides(shard_sets, "throttled", "clip.num_actors=2", "clip.batch_size=4")
    monkeypatch.setattr(graph, "ROWS_PER_CHUNK", 3)
    with s3_proxy.throttle(every=6) as proxy:
        seconds = _describe(overrides)
    print(
        f"throttled: {seconds:.1f} s, {proxy.requests} requests, {proxy.throttled} throttled "
        f"{proxy.methods}"
    )
    facts = _facts(shard_sets[0], "throttled")
    print(facts["raw"]["stats"]["seconds"])
    assert proxy.throttled > 0
    # Both the shard reads (workers) and the run folder's writes (driver) came while throttling.
    bucket = shard_sets[0]
    assert ("GET", f"/{bucket}/set_a/00000.tar") in {(m, p.split("?")[0]) for m, p in proxy.seen}
    assert any(m == "PUT" and f"/{bucket}/runs/throttled/" in p for m, p in proxy.seen)
    assert facts["state"] == "complete"
    differences = _differences(facts, baseline)
    assert not differences, "\n".join(differences)
