"""Mergeable partial statistics: any block split gives the single-process reference result."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from visdiff.rank.aggregate import ScoreAggregate
from visdiff.rank.partials import HypothesisStats, ScorePartials, merge_all, rank_order

THRESHOLD = 0.2
N_A, N_B, H = 140, 160, 6
HYPOTHESES = [f"hypothesis {j}" for j in range(H)]


def _make_scores(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cosine-like float32 scores (n, H): continuous, tied, constant-ish and clipped columns."""
    rng = np.random.default_rng(seed)
    is_a = np.zeros(N_A + N_B, dtype=bool)
    is_a[rng.choice(N_A + N_B, N_A, replace=False)] = True
    scores = rng.normal(0.1, 0.2, (N_A + N_B, H))
    scores[is_a, 0] += 0.15  # a clearly separating hypothesis
    scores[:, 1] = np.round(scores[:, 1], 1)  # heavy ties
    scores[:, 2] = rng.choice([THRESHOLD, 0.3, -0.1], N_A + N_B)  # values exactly at threshold
    scores[is_a, 3] -= 0.1  # reversed direction
    scores[:5, 4] = [1.0, -1.0, 1.0, -1.0, 0.999]  # range edges
    return np.clip(scores, -1, 1).astype(np.float32), is_a


def _blocks(scores: np.ndarray, is_a: np.ndarray, cuts: list[int], **kw) -> list[ScorePartials]:
    bounds = [0, *sorted(cuts), len(scores)]
    return [
        ScorePartials.from_scores(scores[lo:hi], is_a[lo:hi], threshold=THRESHOLD, **kw)
        for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
    ]


def _splits(n: int) -> dict[str, list[int]]:
    rng = np.random.default_rng(123)
    return {
        "one_block": [],
        "uneven_1": sorted(rng.choice(np.arange(1, n), 7, replace=False).tolist()),
        "uneven_2": sorted(rng.choice(np.arange(1, n), 40, replace=False).tolist()),
        "two_halves_with_empty": [0, n // 2, n // 2],
        "one_per_block": list(range(1, n)),
    }


SPLITS = _splits(N_A + N_B)


def _reference(scores: np.ndarray, is_a: np.ndarray) -> list[dict[str, float]]:
    out = []
    for j in range(H):
        a, b = scores[is_a, j].astype(np.float64), scores[~is_a, j].astype(np.float64)
        ttest = sps.ttest_ind(a, b, equal_var=False)
        out.append(
            {
                "auroc": roc_auc_score(is_a, scores[:, j].astype(np.float64)),
                "t_stat": float(ttest.statistic),
                "p_value": float(ttest.pvalue),
                "mean_a": a.mean(),
                "mean_b": b.mean(),
                "correct_delta": np.mean(a > THRESHOLD) - np.mean(b > THRESHOLD),
            }
        )
    return out


def _assert_close(got: HypothesisStats, ref: dict[str, float], tol: float = 1e-9) -> None:
    for key, value in ref.items():
        assert getattr(got, key) == pytest.approx(value, rel=tol, abs=tol), key
    assert got.diff == pytest.approx(ref["mean_a"] - ref["mean_b"], rel=tol, abs=tol)


@pytest.mark.parametrize("split", list(SPLITS))
@pytest.mark.parametrize("shuffle", [False, True])
def test_under_cap_every_split_equals_reference(split: str, shuffle: bool) -> None:
    scores, is_a = _make_scores()
    parts = _blocks(scores, is_a, SPLITS[split])
    if shuffle:
        parts = [parts[i] for i in np.random.default_rng(5).permutation(len(parts))]
    result = merge_all(parts).finalize(HYPOTHESES)
    ref = _reference(scores, is_a)
    for j, stats in enumerate(result):
        assert stats.hypothesis == HYPOTHESES[j]
        assert stats.auroc_exact is True and stats.auroc_error_bound == 0.0
        assert (stats.n_a, stats.n_b) == (N_A, N_B)
        _assert_close(stats, ref[j])


def test_pairwise_merge_tree_equals_merge_all() -> None:
    scores, is_a = _make_scores(1)
    parts = _blocks(scores, is_a, SPLITS["uneven_2"])
    # Balanced tree of pure pairwise merges, in an odd order.
    level = parts[::-1]
    while len(level) > 1:
        level = [
            level[i].merge(level[i + 1]) if i + 1 < len(level) else level[i]
            for i in range(0, len(level), 2)
        ]
    tree = level[0].finalize(HYPOTHESES)
    flat = merge_all(parts).finalize(HYPOTHESES)
    ref = _reference(scores, is_a)
    for t, f, r in zip(tree, flat, ref, strict=True):
        assert t.auroc == f.auroc and t.correct_delta == f.correct_delta
        _assert_close(t, r)


def _fields(part: ScorePartials) -> dict[str, object]:
    return {
        "count": part.count, "mean": part.mean, "m2": part.m2, "above": part.above,
        "hist": part.histograms(), "exact": part.exact,
    }  # fmt: skip


def _assert_same_partials(got: ScorePartials, want: ScorePartials) -> None:
    for key, value in _fields(want).items():
        if key == "exact":
            assert (got.exact is None) == (value is None)
            for g, w in zip(got.exact or [], value or [], strict=True):
                np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_array_equal(_fields(got)[key], value)


def test_merge_is_pure_and_empty_is_identity() -> None:
    scores, is_a = _make_scores()
    left, right = _blocks(scores, is_a, [100])
    before = copy.deepcopy(left)
    merged = left.merge(right)
    _assert_same_partials(left, before)
    _assert_same_partials(ScorePartials.empty(H, threshold=THRESHOLD).merge(merged), merged)


@pytest.mark.parametrize("exact_cap", [50, N_A + N_B - 1])
def test_over_cap_histogram_auroc_is_within_bound_and_split_invariant(exact_cap: int) -> None:
    scores, is_a = _make_scores(2)
    ref = _reference(scores, is_a)
    results = []
    for cuts in SPLITS.values():
        merged = merge_all(_blocks(scores, is_a, cuts, exact_cap=exact_cap))
        assert merged.exact is None
        results.append(merged.finalize(HYPOTHESES))
    for j in range(H):
        first = results[0][j]
        assert first.auroc_exact is False
        assert abs(first.auroc - ref[j]["auroc"]) <= first.auroc_error_bound
        assert first.auroc_error_bound > 0.0
        for other in results[1:]:
            # Integer histograms and counts: bit-identical whatever the split.
            assert other[j].auroc == first.auroc
            assert other[j].auroc_error_bound == first.auroc_error_bound
            assert other[j].correct_delta == first.correct_delta
            assert other[j].t_stat == pytest.approx(first.t_stat, rel=1e-9)
        # The t-test does not depend on the cap.
        assert first.t_stat == pytest.approx(ref[j]["t_stat"], rel=1e-9)
        assert first.correct_delta == pytest.approx(ref[j]["correct_delta"], abs=1e-12)


def test_cap_boundary_total_equal_to_cap_keeps_exact() -> None:
    scores, is_a = _make_scores()
    kept = merge_all(_blocks(scores, is_a, SPLITS["uneven_1"], exact_cap=N_A + N_B))
    assert kept.exact is not None and kept.finalize(HYPOTHESES)[0].auroc_exact
    # One block alone over the cap drops its matrices; merging with empties cannot revive them.
    big = ScorePartials.from_scores(scores, is_a, threshold=THRESHOLD, exact_cap=10)
    assert big.exact is None
    assert big.merge(ScorePartials.empty(H, threshold=THRESHOLD, exact_cap=10)).exact is None


def test_bound_shrinks_with_more_bins() -> None:
    scores, is_a = _make_scores(3)
    ref = _reference(scores, is_a)
    bounds = []
    for num_bins in (8, 64, 512, 4096):
        merged = merge_all(_blocks(scores, is_a, [77, 150], num_bins=num_bins, exact_cap=0))
        stats = merged.finalize(HYPOTHESES)
        for j, s in enumerate(stats):
            assert abs(s.auroc - ref[j]["auroc"]) <= s.auroc_error_bound
        bounds.append([s.auroc_error_bound for s in stats])
    bounds_arr = np.array(bounds)
    assert np.all(np.diff(bounds_arr, axis=0) <= 0)
    continuous = [0, 3, 5]  # columns without heavy ties keep shrinking strictly
    assert np.all(bounds_arr[-1, continuous] < bounds_arr[0, continuous] / 10)


def test_variance_merge_is_numerically_stable() -> None:
    rng = np.random.default_rng(4)
    values = 1e8 + rng.normal(0, 1e-2, (400, 1))  # raw sums of squares would lose all digits
    is_a = np.arange(400) % 2 == 0
    merged = merge_all(_blocks(values, is_a, list(range(10, 400, 10))))
    var = merged.m2 / (merged.count[:, None] - 1)
    expected = [values[is_a, 0].var(ddof=1), values[~is_a, 0].var(ddof=1)]
    np.testing.assert_allclose(var[:, 0], expected, rtol=1e-6)


def _arrow_block(scores_embedded: np.ndarray, is_a: np.ndarray, errors: list[str]) -> pa.Table:
    return pa.table(
        {
            "set": np.where(is_a, "a", "b"),
            "error": errors,
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(scores_embedded.ravel()), scores_embedded.shape[1]
            ),
        }
    )


@pytest.mark.parametrize("exact_cap", [10_000, 50])
def test_score_aggregate_blocks_combine_and_finalize_like_reference(exact_cap: int) -> None:
    """The Ray Data aggregation's three steps, called as Ray calls them: one accumulator per
    block (failed rows skipped, an all-failed block gives the identity), pairwise combine in
    any order, finalize. With unit "text embeddings" the scores are the embedding columns."""
    scores, is_a = _make_scores()
    agg = ScoreAggregate(
        HYPOTHESES, np.eye(H, dtype=np.float32), threshold=THRESHOLD, num_bins=2048,
        exact_cap=exact_cap,
    )  # fmt: skip
    cuts = [0, 37, 150, 151, N_A + N_B]
    parts = [
        agg.aggregate_block(_arrow_block(scores[lo:hi], is_a[lo:hi], [""] * (hi - lo)))
        for lo, hi in zip(cuts[:-1], cuts[1:], strict=True)
    ]
    failed = agg.aggregate_block(_arrow_block(scores[:4], is_a[:4], ["decode: bad"] * 4))
    acc = agg.init(None)  # Ray's per-group start: the zero accumulator
    for part in [failed, *parts[::-1]]:
        acc = agg.combine(acc, part)
    scored = agg.finalize(acc)
    result = scored.stats
    assert scored.tested == result and not scored.holdout["enabled"]  # no held_in: all tested
    assert [s.hypothesis for s in result] == HYPOTHESES
    ref = _reference(scores, is_a)
    for stats, r in zip(result, ref, strict=True):
        assert (stats.n_a, stats.n_b) == (N_A, N_B)
        assert stats.auroc_exact is (exact_cap >= N_A + N_B)
        assert abs(stats.auroc - r["auroc"]) <= stats.auroc_error_bound + 1e-12
        assert stats.t_stat == pytest.approx(r["t_stat"], rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"threshold": 0.3}, "threshold"),
        ({"num_bins": 16}, "num_bins"),
        ({"exact_cap": 5}, "exact_cap"),
    ],
)
def test_merge_mismatch_raises(kwargs: dict, name: str) -> None:
    scores, is_a = _make_scores()
    base = {"threshold": THRESHOLD, "num_bins": 32, "exact_cap": 1000}
    left = ScorePartials.from_scores(scores[:10], is_a[:10], **base)
    right = ScorePartials.from_scores(scores[10:], is_a[10:], **{**base, **kwargs})
    with pytest.raises(ValueError, match=name):
        left.merge(right)
    with pytest.raises(ValueError, match=name):
        merge_all([left, right])


def test_merge_mismatched_hypothesis_count_raises() -> None:
    left = ScorePartials.empty(3, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="num_hypotheses"):
        left.merge(ScorePartials.empty(4, threshold=THRESHOLD))
    with pytest.raises(ValueError, match="partials"):
        merge_all([])


def test_finalize_and_from_scores_validate_inputs() -> None:
    scores, is_a = _make_scores()
    only_one_b = np.ones(N_A + N_B, dtype=bool)
    only_one_b[0] = False
    with pytest.raises(ValueError, match="set B has 1 image"):
        ScorePartials.from_scores(scores, only_one_b, threshold=THRESHOLD).finalize(HYPOTHESES)
    part = ScorePartials.from_scores(scores, is_a, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="hypotheses"):
        part.finalize(HYPOTHESES[:-1])
    bad = scores.copy()
    bad[3, 2] = np.nan
    with pytest.raises(ValueError, match="scores"):
        ScorePartials.from_scores(bad, is_a, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="is_a"):
        ScorePartials.from_scores(scores, is_a.astype(int), threshold=THRESHOLD)
    with pytest.raises(ValueError, match="scores"):
        ScorePartials.from_scores(scores[:, 0], is_a, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="threshold"):
        ScorePartials.from_scores(scores, is_a, threshold=float("inf"))


def test_hypothesis_stats_types_and_to_dict() -> None:
    scores, is_a = _make_scores()
    stats = ScorePartials.from_scores(scores, is_a, threshold=THRESHOLD).finalize(HYPOTHESES)[0]
    d = stats.to_dict()
    assert list(d) == [
        "hypothesis", "auroc", "auroc_error_bound", "auroc_exact", "auroc_se", "mean_a",
        "mean_b", "diff", "t_stat", "p_value", "p_greater", "p_less", "correct_delta", "n_a",
        "n_b",
    ]  # fmt: skip
    assert type(d["auroc"]) is float and type(d["n_a"]) is int and type(d["auroc_exact"]) is bool
    with pytest.raises(TypeError, match="t_stat"):
        HypothesisStats(**{**d, "t_stat": True})


def _stat(text: str, auc: float, t: float) -> HypothesisStats:
    return HypothesisStats(text, auc, 0.0, True, 0.1, 0.0, 0.0, 0.0, t, 0.5, 0.5, 0.5, 0.0, 2, 2)


def test_rank_order_is_deterministic() -> None:
    items = [
        _stat("b", 0.7, 1.0),
        _stat("a", 0.7, 1.0),
        _stat("c", 0.9, -1.0),
        _stat("d", 0.7, 2.0),
        _stat("e", 0.7, float("nan")),
        _stat("f", 0.2, 5.0),
    ]
    expected = ["c", "d", "a", "b", "e", "f"]
    assert [s.hypothesis for s in rank_order(items)] == expected
    assert [s.hypothesis for s in rank_order(items[::-1])] == expected


def test_exact_scores_and_histograms_are_never_both_kept() -> None:
    """Under the cap a block ships exact scores only; past it (or when the caller says the
    whole ranking will pass it) histograms only, and both give the same histograms."""
    scores, is_a = _make_scores()
    under = ScorePartials.from_scores(scores, is_a, threshold=THRESHOLD)
    hinted = ScorePartials.from_scores(
        scores, is_a, threshold=THRESHOLD, exact_cap=N_A + N_B, expected_total=N_A + N_B + 1
    )
    assert under.hist is None and under.exact[0].shape == (H, N_A)
    assert hinted.exact is None and hinted.hist is not None
    np.testing.assert_array_equal(under.histograms(), hinted.histograms())
    with pytest.raises(ValueError, match="exactly one"):
        ScorePartials(THRESHOLD, 8, 10, under.count, under.mean, under.m2, under.above, None, None)


def test_hinted_histogram_blocks_merge_like_dropped_exact_blocks() -> None:
    """Blocks told the total up front give bit-identical statistics to blocks that keep exact
    scores until the merge passes the cap: the hint only saves work."""
    scores, is_a = _make_scores(6)
    cap = N_A + N_B - 1
    cuts = SPLITS["uneven_2"]
    late = merge_all(_blocks(scores, is_a, cuts, exact_cap=cap)).finalize(HYPOTHESES)
    early = merge_all(
        _blocks(scores, is_a, cuts, exact_cap=cap, expected_total=N_A + N_B)
    ).finalize(HYPOTHESES)
    assert late == early
    assert not late[0].auroc_exact
