"""Ranking statistics against scikit-learn / scipy references, toy cases and properties."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from visdiff.rank import stats as rank_stats
from visdiff.rank.stats import (
    TTest,
    auroc,
    auroc_from_histograms,
    auroc_many,
    correct_delta,
    welch_t_from_moments,
)


def welch_t(a: np.ndarray, b: np.ndarray) -> TTest:
    """Welch's test of two samples through their moments, as the partials hold them."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return welch_t_from_moments(
        a.size, float(a.mean()), float(a.var(ddof=1)), b.size, float(b.mean()), float(b.var(ddof=1))
    )


def _sklearn_auroc(a: np.ndarray, b: np.ndarray) -> float:
    labels = np.concatenate([np.ones(len(a)), np.zeros(len(b))])
    return float(roc_auc_score(labels, np.concatenate([a, b])))


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Different sizes and distributions: continuous, heavy ties, small discrete sets."""
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(2, 300, size=2)
    kind = seed % 4
    if kind == 0:
        a, b = rng.normal(0.3, 1.0, n_a), rng.normal(0.0, 2.0, n_b)
    elif kind == 1:
        a, b = rng.integers(0, 5, n_a).astype(float), rng.integers(0, 4, n_b).astype(float)
    elif kind == 2:
        a = np.round(rng.uniform(-1, 1, n_a), 2)
        b = np.round(rng.uniform(-1, 0.8, n_b), 2)
    else:
        a, b = rng.standard_t(3, n_a), rng.standard_t(3, n_b) + 0.2
    return a, b


SEEDS = list(range(60))


@pytest.mark.parametrize("seed", SEEDS)
def test_auroc_matches_sklearn(seed: int) -> None:
    a, b = _random_case(seed)
    assert auroc(a, b) == pytest.approx(_sklearn_auroc(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", SEEDS)
def test_welch_t_matches_scipy(seed: int) -> None:
    a, b = _random_case(seed)
    ref = sps.ttest_ind(a, b, equal_var=False)
    got = welch_t(a, b)
    assert got.t_stat == pytest.approx(float(ref.statistic), rel=1e-10, abs=1e-12)
    assert got.p_value == pytest.approx(float(ref.pvalue), rel=1e-9, abs=1e-15)


def test_auroc_toy_cases() -> None:
    assert auroc([3.0, 4.0], [1.0, 2.0]) == 1.0
    assert auroc([1.0, 2.0], [3.0, 4.0]) == 0.0
    assert auroc([0.5, 0.5, 0.5], [0.5, 0.5]) == 0.5
    # One A above one B, one tie: (1 + 0.5) / 2.
    assert auroc([2.0], [1.0, 2.0]) == 0.75
    assert auroc([1], [0]) == 1.0  # integers accepted; single elements allowed for AUROC


def test_auroc_and_t_properties() -> None:
    rng = np.random.default_rng(7)
    a, b = rng.normal(0.2, 1, 50), np.round(rng.normal(0, 1, 80), 1)
    assert auroc(b, a) == pytest.approx(1.0 - auroc(a, b), abs=1e-15)
    assert welch_t(b, a).t_stat == pytest.approx(-welch_t(a, b).t_stat, rel=1e-14)
    assert welch_t(b, a).p_value == pytest.approx(welch_t(a, b).p_value, rel=1e-14)
    perm_a, perm_b = rng.permutation(a), rng.permutation(b)
    assert auroc(perm_a, perm_b) == auroc(a, b)
    assert welch_t(perm_a, perm_b).t_stat == pytest.approx(welch_t(a, b).t_stat, rel=1e-12)


def test_auroc_is_exact_for_large_tied_samples() -> None:
    # Integer accumulation of U: no rank round-off even with many ties.
    a = np.repeat([0.0, 1.0], 100_000)
    b = np.repeat([0.0, 1.0], [150_000, 50_000])
    # pairs: A=1 beats B=0: 1e5*1.5e5; ties (0,0): 1e5*1.5e5/2; ties (1,1): 1e5*5e4/2.
    expected = (1.5e10 + 0.75e10 + 0.25e10) / (2e5 * 2e5)
    assert auroc(a, b) == expected


def test_welch_t_degenerate_zero_variance_follows_scipy() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_diff = sps.ttest_ind([1.0, 1.0, 1.0], [2.0, 2.0], equal_var=False)
        ref_same = sps.ttest_ind([1.0, 1.0, 1.0], [1.0, 1.0], equal_var=False)
    diff = welch_t([1.0, 1.0, 1.0], [2.0, 2.0])
    assert diff.t_stat == -np.inf and diff.p_value == 0.0
    assert (diff.t_stat, diff.p_value) == (ref_diff.statistic, ref_diff.pvalue)
    same = welch_t([1.0, 1.0, 1.0], [1.0, 1.0])
    assert np.isnan(same.t_stat) and np.isnan(same.p_value)
    assert np.isnan(ref_same.statistic) and np.isnan(ref_same.pvalue)
    # One-sided zero variance is not degenerate.
    one = welch_t([1.0, 1.0, 1.0], [1.0, 2.0, 4.0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scipy warns about the constant sample
        ref_one = sps.ttest_ind([1.0, 1.0, 1.0], [1.0, 2.0, 4.0], equal_var=False)
    assert one.t_stat == pytest.approx(ref_one.statistic)
    assert one.p_value == pytest.approx(ref_one.pvalue)


def test_ttest_rejects_bool_fields() -> None:
    with pytest.raises(TypeError, match="t_stat"):
        TTest(t_stat=True, p_value=0.5)


def test_correct_delta() -> None:
    a = np.array([0.1, 0.3, 0.5, 0.7])
    b = np.array([0.2, 0.25, 0.6])
    # threshold 0.3 is strict: A has 0.5, 0.7 above (2/4); B has 0.6 (1/3).
    assert correct_delta(a, b, threshold=0.3) == pytest.approx(0.5 - 1 / 3)
    assert correct_delta(b, a, threshold=0.3) == pytest.approx(1 / 3 - 0.5)
    assert correct_delta(a, b, threshold=1.0) == 0.0
    with pytest.raises(TypeError):
        correct_delta(a, b, 0.3)  # type: ignore[misc]  # threshold is keyword-only


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: auroc([[1.0, 2.0]], [1.0]), "scores_a"),
        (lambda: auroc([1.0], []), "scores_b"),
        (lambda: auroc([1.0, np.nan], [1.0]), "scores_a"),
        (lambda: auroc([1.0], [np.inf]), "scores_b"),
        (lambda: auroc(["x"], [1.0]), "scores_a"),
        (lambda: auroc([True, False], [1.0]), "scores_a"),
        (lambda: welch_t_from_moments(1, 0.0, 1.0, 5, 0.0, 1.0), "n_a"),
        (lambda: welch_t_from_moments(5, 0.0, -1.0, 5, 0.0, 1.0), "var_a"),
        (lambda: welch_t_from_moments(5, 0.0, 1.0, 5, np.nan, 1.0), "mean_b"),
        (lambda: welch_t_from_moments(5, 0.0, 1.0, True, 0.0, 1.0), "n_b"),
        (lambda: correct_delta([1.0], [1.0], threshold=np.nan), "threshold"),
        (lambda: auroc_from_histograms([1, 2], [1, 2, 3]), "hist_a and hist_b"),
        (lambda: auroc_from_histograms([1, -2], [1, 2]), "hist_a"),
        (lambda: auroc_from_histograms([1, 2], [0, 0]), "hist_b"),
        (lambda: auroc_from_histograms([[1, 2], [0, 0]], [[1, 2], [1, 1]]), "hist_a"),
        (lambda: auroc_many(np.ones((3, 2)), np.ones((3, 3))), "same hypotheses"),
        (lambda: auroc_many(np.ones(3), np.ones((3, 1))), "scores_a"),
        (lambda: auroc_many(np.ones((3, 1)), np.zeros((0, 1))), "scores_b"),
        (lambda: auroc_many(np.full((2, 1), 0.1), np.ones((2, 1))), "float32"),
        (lambda: auroc_many(np.ones((2, 1)), np.full((2, 1), np.nan)), "scores_b"),
        (lambda: auroc_many(np.ones((2, 1)), np.ones((2, 1)), axis=2), "axis"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(call, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        call()


def test_auroc_from_histograms_toy_and_bound() -> None:
    # Disjoint bins: exact, no uncertainty.
    assert auroc_from_histograms([0, 0, 3], [2, 1, 0]) == (1.0, 0.0)
    # Everything in one bin: estimate 0.5, bound 0.5 (truth can be anywhere in [0, 1]).
    assert auroc_from_histograms([4], [7]) == (0.5, 0.5)
    est, bound = auroc_from_histograms([1, 1], [1, 1])
    assert est == 0.5 and bound == pytest.approx(0.5 * (0.25 + 0.25))


@pytest.mark.parametrize("seed", range(10))
def test_histogram_auroc_within_bound_and_bound_is_attainable(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = rng.normal(0.1, 0.3, 200), rng.normal(0.0, 0.3, 150)
    edges = np.linspace(-2, 2, 17)
    hist_a, hist_b = np.histogram(a, edges)[0], np.histogram(b, edges)[0]
    est, bound = auroc_from_histograms(hist_a, hist_b)
    assert abs(est - _sklearn_auroc(a, b)) <= bound
    # Worst case: put every A above every B inside each shared bin -> error equals the bound.
    centers = (edges[:-1] + edges[1:]) / 2
    worst_a = np.repeat(centers + 0.01, hist_a)
    worst_b = np.repeat(centers - 0.01, hist_b)
    assert _sklearn_auroc(worst_a, worst_b) - est == pytest.approx(bound, abs=1e-12)
    # Float counts (e.g. weights) give the same answer as integer counts.
    assert auroc_from_histograms(hist_a.astype(float), hist_b.astype(float)) == pytest.approx(
        (est, bound), abs=1e-14
    )


def _float32_case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, H) float32 score pairs: continuous, heavy ties, +/-0 and extreme values (64-bit
    keys), constant, and the edges of [-1, 1] (32-bit keys)."""
    rng = np.random.default_rng(seed)
    n_a, n_b, h = rng.integers(1, 80, size=3)
    kind = seed % 6
    if kind == 0:
        a, b = rng.normal(0, 1, (n_a, h)), rng.normal(0.2, 1, (n_b, h))
    elif kind == 1:
        a, b = rng.integers(-3, 3, (n_a, h)), rng.integers(-3, 4, (n_b, h))
    elif kind == 2:
        a, b = np.round(rng.uniform(-1, 1, (n_a, h)), 1), np.round(rng.uniform(-1, 1, (n_b, h)), 1)
    elif kind == 3:
        edge = [0.0, -0.0, 1.0, -1.0, 3e38, -3e38, 1e-45, -1e-45]
        a, b = rng.choice(edge, (n_a, h)), rng.choice(edge, (n_b, h))
    elif kind == 4:
        a, b = np.full((n_a, h), 0.5), np.full((n_b, h), 0.5)
    else:  # cosine range edges: the 32-bit key path
        edge = [-1.0, 1.0, 0.0, -0.0, 1e-45, -1e-45, 0.5, np.nextafter(-1.0, 0.0)]
        a, b = rng.choice(edge, (n_a, h)), rng.choice(edge, (n_b, h))
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("seed", range(48))
def test_auroc_many_matches_sklearn_per_column(seed: int) -> None:
    a, b = _float32_case(seed)
    got = auroc_many(a, b)
    assert got.shape == (a.shape[1],)
    for j in range(a.shape[1]):
        reference = _sklearn_auroc(a[:, j].astype(np.float64), b[:, j].astype(np.float64))
        assert got[j] == pytest.approx(reference, abs=1e-12)
        assert got[j] == auroc(a[:, j], b[:, j])  # both exact in integers: bit-identical
    np.testing.assert_array_equal(auroc_many(a.T, b.T, axis=1), got)


def test_auroc_many_blocks_and_threads_give_the_same_answer(monkeypatch) -> None:
    """Many small hypothesis blocks (sorted in threads) equal one block and the 1-D auroc."""
    rng = np.random.default_rng(11)
    a = np.round(rng.normal(0.1, 0.3, (300, 37)), 2).astype(np.float32)
    b = np.round(rng.normal(0.0, 0.3, (250, 37)), 2).astype(np.float32)
    one_block = auroc_many(a, b)
    monkeypatch.setattr(rank_stats, "_BLOCK_KEYS", 2 * (300 + 250))  # 2 hypotheses per block
    blocked = auroc_many(a, b)
    np.testing.assert_array_equal(blocked, one_block)
    np.testing.assert_array_equal(one_block, [auroc(a[:, j], b[:, j]) for j in range(37)])


def test_auroc_many_accepts_exactly_representable_dtypes() -> None:
    a, b = np.array([[3], [1]], dtype=np.int64), np.array([[2.0], [0.5]])
    assert auroc_many(a, b).tolist() == [auroc([3, 1], [2.0, 0.5])]


def test_histogram_auroc_vectorised_equals_per_row() -> None:
    rng = np.random.default_rng(2)
    hist_a, hist_b = rng.integers(0, 5, (9, 16)), rng.integers(0, 5, (9, 16))
    hist_a[:, 0] += 1
    hist_b[:, -1] += 1
    est, bound = auroc_from_histograms(hist_a, hist_b)
    assert est.shape == bound.shape == (9,)
    for j in range(9):
        assert (est[j], bound[j]) == auroc_from_histograms(hist_a[j], hist_b[j])


def test_vectorised_welch_matches_scipy_from_stats() -> None:
    rng = np.random.default_rng(8)
    mean_a, mean_b = rng.normal(0, 1, 20), rng.normal(0, 1, 20)
    var_a, var_b = rng.uniform(0.1, 2, 20), rng.uniform(0.1, 2, 20)
    t_stat, p_value = rank_stats._welch(30, mean_a, var_a, 45, mean_b, var_b)
    ref = sps.ttest_ind_from_stats(
        mean_a, np.sqrt(var_a), 30, mean_b, np.sqrt(var_b), 45, equal_var=False
    )
    np.testing.assert_allclose(t_stat, ref.statistic, rtol=1e-12)
    np.testing.assert_allclose(p_value, ref.pvalue, rtol=1e-9)
    for j in range(20):
        single = welch_t_from_moments(30, mean_a[j], var_a[j], 45, mean_b[j], var_b[j])
        assert (single.t_stat, single.p_value) == (t_stat[j], p_value[j])


def _tie_heavy_rows(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, n_a), (H, n_b) float32 rows with ties within and across sets, signed zeros, rows
    that tie throughout, and (odd seeds) values outside [-1, 1], which take 64-bit keys."""
    rng = np.random.default_rng(seed)
    h, n_a, n_b = 9, int(rng.integers(2, 200)), int(rng.integers(2, 200))
    a = np.round(rng.normal(0.1, 0.3, (h, n_a)), int(rng.integers(1, 3)))
    b = np.round(rng.normal(0.0, 0.3, (h, n_b)), int(rng.integers(1, 3)))
    a[1], b[1] = 0.25, 0.25  # one group holding both whole sets ...
    a[2], b[2] = 0.5, -0.5  # ... next to rows whose groups end and start at the row edges
    a[3, ::2], b[3, ::3] = 0.0, -0.0
    a[4], b[4] = rng.normal(0, 1, n_a), rng.normal(0, 1, n_b)  # (almost) no ties
    if seed % 2:
        a[5] *= 40.0
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("seed", range(12))
def test_vectorised_exact_tests_equal_the_per_sample_test(seed: int, monkeypatch) -> None:
    """The (H, n) path (A positions in one sorted key array, tie groups fixed up afterwards)
    against `auroc_test`, which groups the distinct values of one hypothesis with np.unique
    (itself checked against scipy); blocks of 2 rows, sorted in threads, change nothing."""
    a, b = _tie_heavy_rows(seed)
    aucs, test = rank_stats._auroc_rows_with_test(a, b)
    monkeypatch.setattr(rank_stats, "_BLOCK_KEYS", 2 * (a.shape[1] + b.shape[1]))
    blocked_aucs, blocked = rank_stats._auroc_rows_with_test(a, b)
    np.testing.assert_array_equal(blocked_aucs, aucs)
    for field in ("p_greater", "p_less", "se"):
        np.testing.assert_array_equal(getattr(blocked, field), getattr(test, field))
    for j in range(a.shape[0]):
        ref = rank_stats.auroc_test(a[j], b[j])
        assert aucs[j] == ref.auroc == auroc(a[j], b[j])  # exact in integers both ways
        assert (test.p_greater[j], test.p_less[j]) == pytest.approx(
            (ref.p_greater, ref.p_less), rel=1e-12, abs=1e-15
        )
        assert test.se[j] == pytest.approx(ref.se, rel=1e-10, abs=1e-15)
    assert (test.se[1], test.p_greater[1], test.p_less[1]) == (0.0, 1.0, 1.0)  # all tied
    assert aucs[2] == 1.0
