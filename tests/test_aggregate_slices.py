"""Scoring by slices of hypotheses (``ScoreAggregate.score_slice``, what ``fold_blocks`` runs
per core on one node) against the block-by-block aggregation, without Ray running."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
from ray.data._internal.tensor_extensions.arrow import ArrowTensorArray

from visdiff.rank.aggregate import ScoreAggregate
from visdiff.rank.partials import RankedPartials, ScorePartials

H, DIM = 7, 4


def _blocks(rng: np.random.Generator, sizes: list[int]) -> tuple[list[pa.Table], pa.Table]:
    """Arrow blocks as the embedding stage writes them (tensor or list embeddings) and all of
    them in one table; every 13th row failed. Vectors are multiples of 1/8, so every product
    is exact in float32 whatever BLAS kernel runs it."""
    blocks, whole, first = [], [], 0
    for size in sizes:
        ids = np.arange(first, first + size)
        first += size
        vectors = rng.integers(-4, 5, (size, DIM)).astype(np.float32) / 8
        sets = ["a" if rng.random() < 0.4 else "b" for _ in ids]
        columns = {
            "id": pa.array([f"{s}/{i}" for s, i in zip(sets, ids, strict=True)], pa.string()),
            "set": pa.array(sets, pa.string()),
            "error": pa.array(["bad" if i % 13 == 0 else "" for i in ids], pa.string()),
        }
        listed = pa.array(vectors.tolist(), pa.list_(pa.float32()))
        whole.append(pa.table({**columns, "embedding": listed}))
        tensor = ArrowTensorArray.from_numpy(vectors) if size % 2 else listed
        blocks.append(pa.table({**columns, "embedding": tensor}))
    return blocks, pa.concat_tables(whole)


@pytest.mark.parametrize("holdout", [False, True])
@pytest.mark.parametrize("cap", [10_000, 50])  # exact scores; histograms past the cap
def test_slices_joined_equal_one_block(holdout: bool, cap: int) -> None:
    rng = np.random.default_rng(11)
    blocks, all_rows = _blocks(rng, [40, 0, 33, 57])  # an empty block, tensor and list embeddings
    text = rng.integers(-4, 5, (H, DIM)).astype(np.float32) / 8
    held_in = [f"{s}/{i}" for i in range(0, 130, 3) for s in "ab"] if holdout else None
    names = [f"h{j}" for j in range(H)]
    agg = ScoreAggregate(names, text, threshold=0.1, num_bins=32, exact_cap=cap, held_in=held_in)
    whole = agg.finalize(agg.aggregate_block(all_rows))
    sliced = agg.join_slices(
        [agg.score_slice(blocks, lo, hi) for lo, hi in ((0, 3), (3, 4), (4, H))]
    )
    assert sliced.holdout == whole.holdout
    assert sliced.holdout["left_out_of_tests"] != {"a": 0, "b": 0} or not holdout
    assert sliced.stats[0].auroc_exact is (cap == 10_000)
    for got, want in ((sliced.stats, whole.stats), (sliced.tested, whole.tested)):
        assert [g.to_dict() for g in got] == [w.to_dict() for w in want]


def test_by_hypothesis_only_under_the_exact_cap() -> None:
    agg = ScoreAggregate(
        ["h"], np.ones((1, DIM), np.float32), threshold=0.1, num_bins=8, exact_cap=100
    )
    assert agg.by_hypothesis(100) and not agg.by_hypothesis(101)
    assert agg.num_hypotheses == 1


def test_set_scores_are_kept_without_a_copy_and_checked_finite() -> None:
    rng = np.random.default_rng(12)
    scores = rng.normal(0.2, 0.1, (3, 30)).astype(np.float32)  # (H, n): A first, then B
    by_set = ScorePartials.from_set_scores(scores[:, :12], scores[:, 12:], threshold=0.2)
    is_a = np.arange(30) < 12
    by_row = ScorePartials.from_scores(scores.T, is_a, threshold=0.2)
    assert np.shares_memory(by_set.exact[1], scores)
    for name in ("count", "mean", "m2", "above"):
        np.testing.assert_array_equal(getattr(by_set, name), getattr(by_row, name))
    scores[1, 20] = np.inf
    with pytest.raises(ValueError, match="finite"):
        ScorePartials.from_set_scores(scores[:, :12], scores[:, 12:], threshold=0.2)
    with pytest.raises(ValueError, match="same hypotheses"):
        ScorePartials.from_set_scores(scores[:2, :12], scores[:, 12:], threshold=0.2)


def test_ranked_slices_join_only_within_one_ranking() -> None:
    rng = np.random.default_rng(13)
    scores = rng.normal(0.2, 0.1, (4, 20)).astype(np.float32)
    whole = ScorePartials.from_set_scores(scores[:, :9], scores[:, 9:], threshold=0.2)
    halves = [
        ScorePartials.from_set_scores(scores[rows, :9], scores[rows, 9:], threshold=0.2).ranked()
        for rows in (slice(0, 1), slice(1, 4))
    ]
    names = ["w", "x", "y", "z"]
    joined = RankedPartials.concat(halves).finalize(names)
    assert [s.to_dict() for s in joined] == [s.to_dict() for s in whole.finalize(names)]
    other = ScorePartials.from_set_scores(scores[:1, :8], scores[:1, 8:], threshold=0.2)
    with pytest.raises(ValueError, match="same images"):
        RankedPartials.concat([halves[0], other.ranked()])
    few = ScorePartials.from_set_scores(scores[:1, :1], scores[:1, 1:], threshold=0.2).ranked()
    with pytest.raises(ValueError, match="set A has 1 image"):
        few.finalize(["w"])
