"""Issue #11: a capped shard set, and the proposer's pool drawn from it, are chosen by the seed
alone: the images with the smallest `stable_key(id, seed)`, whatever the block size, the order
the shards are read in or how the readers' pruning interleaves."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from tests.test_shards import BLUE, GREEN, RED, write_webdataset
from visdiff.config import DataConfig
from visdiff.pipeline import graph
from visdiff.sampling import stable_key
from visdiff.schema import ERROR, ID
from visdiff.sources.plan import SetPlan
from visdiff.sources.records import ImageRecord
from visdiff.sources.shards.read import shard_row_chunks
from visdiff.sources.subset import KeyBound, cap_records, keep_ids, prune_chunk, smallest_ids

IDS = [f"a/{shard:05d}.tar/{key:04d}" for shard in range(20) for key in range(50)]


def brute_force(ids: list[str], n: int, seed: int) -> list[str]:
    return sorted(ids, key=lambda i: stable_key(i, seed))[:n]


def streamed_choice(ids: list[str], n: int, seed: int, chunk: int, order_seed: int) -> list[str]:
    """What the shard path does, without Ray: chunks in some order, pruned against one bound."""
    shuffled = list(ids)
    random.Random(order_seed).shuffle(shuffled)
    bound = KeyBound(n)
    survivors: list[str] = []
    for start in range(0, len(shuffled), chunk):
        rows = shuffled[start : start + chunk]
        kept = prune_chunk({ID: rows, ERROR: [""] * len(rows)}, seed=seed, offer=bound.offer)
        survivors += kept[ID]
    assert len(survivors) < len(ids) // 2, "the bound should prune most rows of a large set"
    return smallest_ids(survivors, n, seed)


@pytest.mark.parametrize(("chunk", "order_seed"), [(1, 0), (7, 1), (64, 2), (1000, 3)])
def test_pruned_stream_keeps_the_n_smallest_keys(chunk: int, order_seed: int) -> None:
    assert streamed_choice(IDS, 25, 5, chunk, order_seed) == brute_force(IDS, 25, 5)


def test_listed_and_streamed_sets_choose_the_same_ids() -> None:
    records = [ImageRecord(i, "a", f"/x/{i}.jpg") for i in reversed(IDS)]
    listed = {r.id for r in cap_records(records, 30, seed=9)}
    assert listed == set(streamed_choice(IDS, 30, 9, 13, 4))
    assert listed != {r.id for r in cap_records(records, 30, seed=10)}


def test_prune_chunk_readable_only_neither_offers_nor_keeps_failed_rows() -> None:
    offered: list[list[int]] = []

    def offer(keys: list[int]) -> int | None:
        offered.append(keys)
        return None

    chunk = {ID: ["a/s/1", "a/s/2", "a/s/3"], ERROR: ["", "no_image: 2", ""], "x": [1, 2, 3]}
    kept = prune_chunk(chunk, seed=0, offer=offer, readable_only=True)
    assert kept == {ID: ["a/s/1", "a/s/3"], ERROR: ["", ""], "x": [1, 3]}
    assert offered == [[stable_key("a/s/1", 0), stable_key("a/s/3", 0)]]
    assert prune_chunk(chunk, seed=0, offer=offer)[ID] == chunk[ID]  # failed rows compete too


def test_key_bound_and_keep_ids() -> None:
    bound = KeyBound(2)
    assert bound.offer([30]) is None
    assert bound.offer([10, 20, 40]) == 20
    assert bound.offer([50]) == 20  # never moves up
    assert bound.count() == 5
    with pytest.raises(ValueError, match="n must be > 0"):
        KeyBound(0)
    table = pa.table({ID: ["a", "b", "c"], "v": [1, 2, 3]})
    assert keep_ids(table, frozenset({"a", "c"}))["v"].to_pylist() == [1, 3]


# ---------------------------------------------------------------- e2e: Ray Data over tar shards

SHARDS, PER_SHARD, CAP, POOL = 6, 8, 10, 7


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    folder: Path = tmp_path_factory.mktemp("determinism")
    colours = (RED, GREEN, BLUE)
    shards = []
    for s in range(SHARDS):
        samples = [
            (f"{s:02d}{k:03d}", colours[(s + k) % 3], "JPEG", "jpg", f"image {s}-{k}")
            for k in range(PER_SHARD)
        ]
        shards.append(str(write_webdataset(folder / f"{s:05d}.tar", samples)))
    broken = folder / "00099.tar"  # one failed shard: its error row takes part in the choice
    broken.write_bytes(b"not a tar archive")
    return sorted([*shards, str(broken)])


def _all_rows(shards: list[str]) -> list[dict]:
    batch = {"shard": np.array(shards, dtype=object)}
    chunks = list(shard_row_chunks(batch, set_name="a"))
    return [{ID: i, ERROR: e} for c in chunks for i, e in zip(c[ID], c[ERROR], strict=True)]


def _choose(shards: list[str], seed: int) -> tuple[list[str], int | None, list[str]]:
    data = DataConfig(max_num_samples=CAP)
    plan = SetPlan("a", "determinism", shards=shards)
    ranked, count = graph.ranking_dataset(plan, data, seed=seed)
    ranked_ids = sorted(row[ID] for row in ranked.select_columns([ID]).take_all())
    pool = graph.sample_pool(plan, data, seed=seed, size=POOL)
    return ranked_ids, count, [row[ID] for row in pool]


def test_shard_choice_is_independent_of_blocks_and_shard_order(
    shard_set: list[str], ray_session, monkeypatch: pytest.MonkeyPatch
) -> None:
    rows = _all_rows(shard_set)
    readable = [r[ID] for r in rows if not r[ERROR]]
    assert len(rows) == SHARDS * PER_SHARD + 1 and len(readable) == SHARDS * PER_SHARD

    monkeypatch.setattr(graph, "ROWS_PER_CHUNK", 2)  # many small blocks, shards in order
    first = _choose(shard_set, seed=3)
    monkeypatch.setattr(graph, "ROWS_PER_CHUNK", 64)  # one block per shard, shards reversed
    second = _choose(list(reversed(shard_set)), seed=3)

    assert first == second
    ranked, count, pool = first
    assert count == CAP and ranked == sorted(brute_force([r[ID] for r in rows], CAP, 3))
    assert pool == brute_force(readable, POOL, 3)  # in key order
