"""Honest significance: one-sided Mann-Whitney p-values (against scipy), DeLong standard errors
(against a bootstrap), Benjamini-Hochberg q-values over both directions (against scipy), and
simulations: under a null of identical sets a run rarely flags anything; a planted signal is
flagged."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats as sps

from visdiff.rank.partials import ScorePartials, merge_all
from visdiff.rank.significance import ranked_rows
from visdiff.rank.stats import auroc, auroc_ci, auroc_test, auroc_test_from_histograms

ALPHA, CI_LEVEL = 0.05, 0.95


def _case(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Continuous, heavily tied and shifted samples of different sizes."""
    rng = np.random.default_rng(seed)
    n_a, n_b = rng.integers(3, 200, size=2)
    if seed % 3 == 0:
        return rng.normal(0.3, 1, n_a), rng.normal(0, 1.5, n_b)
    if seed % 3 == 1:
        return rng.integers(0, 4, n_a).astype(float), rng.integers(0, 5, n_b).astype(float)
    return np.round(rng.uniform(-1, 1, n_a), 1), np.round(rng.uniform(-1, 0.7, n_b), 1)


@pytest.mark.parametrize("seed", range(24))
def test_one_sided_p_values_match_scipy_mann_whitney(seed: int) -> None:
    a, b = _case(seed)
    test = auroc_test(a, b)
    for alternative, got in (("greater", test.p_greater), ("less", test.p_less)):
        ref = sps.mannwhitneyu(a, b, alternative=alternative, method="asymptotic")
        assert got == pytest.approx(ref.pvalue, rel=1e-9, abs=1e-15), alternative
    assert test.auroc == pytest.approx(auroc(a, b), abs=1e-12)
    # The p-value agrees with the ranking statistic: AUROC above 1/2 <=> p_greater below 1/2.
    if test.auroc != 0.5:
        assert (test.auroc > 0.5) == (test.p_greater < 0.5)


def test_all_tied_scores_give_no_evidence() -> None:
    test = auroc_test([0.2, 0.2, 0.2], [0.2, 0.2])
    assert (test.auroc, test.p_greater, test.p_less, test.se) == (0.5, 1.0, 1.0, 0.0)


def test_delong_standard_error_matches_a_bootstrap() -> None:
    """DeLong's SE (a closed form from placement values) against 4000 stratified bootstrap
    resamples, for a continuous and a tied case; they agree within the bootstrap's own error."""
    rng = np.random.default_rng(0)
    cases = [
        (rng.normal(0.6, 1, 150), rng.normal(0, 1.3, 120)),
        (np.round(rng.normal(0.4, 1, 90), 0), np.round(rng.normal(0, 1, 110), 0)),
    ]
    for a, b in cases:
        reps = 4000
        boot_a = a[rng.integers(0, a.size, (reps, a.size))].astype(np.float32)
        boot_b = b[rng.integers(0, b.size, (reps, b.size))].astype(np.float32)
        part = ScorePartials.from_scores(
            np.concatenate([boot_a, boot_b], axis=1).T,
            np.arange(a.size + b.size) < a.size,
            threshold=0.0,
        )
        boot_aucs = np.array([s.auroc for s in part.finalize([str(i) for i in range(reps)])])
        se = auroc_test(a, b).se
        # The SD of the bootstrap SD is ~ SD / sqrt(2 reps): 1.1% here; allow 8%.
        assert se == pytest.approx(boot_aucs.std(ddof=1), rel=0.08)


def test_finalize_tests_equal_the_sample_functions_exact_and_binned() -> None:
    rng = np.random.default_rng(3)
    h, n_a, n_b = 7, 80, 95
    scores = np.clip(rng.normal(0.2, 0.1, (n_a + n_b, h)), -1, 1).astype(np.float32)
    scores[:, 2] = np.round(scores[:, 2], 2)  # ties
    is_a = rng.permutation(np.arange(n_a + n_b) < n_a)
    scores[is_a, 0] += 0.05
    blocks = [
        ScorePartials.from_scores(scores[lo:hi], is_a[lo:hi], threshold=0.2, exact_cap=cap)
        for cap in (10_000, 0)
        for lo, hi in ((0, 60), (60, n_a + n_b))
    ]
    exact, binned = merge_all(blocks[:2]), merge_all(blocks[2:])
    stats_exact = exact.finalize([str(j) for j in range(h)])
    stats_binned = binned.finalize([str(j) for j in range(h)])
    hist_test = auroc_test_from_histograms(binned.hist[0], binned.hist[1])
    for j in range(h):
        ref = auroc_test(scores[is_a, j], scores[~is_a, j])
        got = stats_exact[j]
        assert got.auroc == pytest.approx(ref.auroc, abs=1e-12)
        assert (got.p_greater, got.p_less) == pytest.approx((ref.p_greater, ref.p_less), rel=1e-9)
        assert got.auroc_se == pytest.approx(ref.se, rel=1e-9)
        coarse = stats_binned[j]
        assert (coarse.p_greater, coarse.auroc_se) == (hist_test.p_greater[j], hist_test.se[j])
        # 2048 bins over [-1, 1]: binning moves the inference far less than its own error.
        assert coarse.p_greater == pytest.approx(ref.p_greater, abs=0.01)
        assert coarse.auroc_se == pytest.approx(ref.se, rel=0.02)


def _stats(scores: np.ndarray, is_a: np.ndarray) -> list:
    part = ScorePartials.from_scores(scores, is_a, threshold=0.3)
    return part.finalize([f"h{j}" for j in range(scores.shape[1])])


def test_rows_hold_both_directions_and_bh_over_all_rows() -> None:
    rng = np.random.default_rng(5)
    h = 12
    scores = rng.normal(0.2, 0.05, (60, h)).astype(np.float32)
    is_a = np.arange(60) < 30
    scores[is_a, 0] += 0.06  # more true of A
    scores[~is_a, 1] += 0.06  # more true of B
    stats = _stats(scores, is_a)
    rows = ranked_rows(stats, alpha=ALPHA, ci_level=CI_LEVEL)
    assert [r["direction"] for r in rows] == ["a"] * h + ["b"] * h
    q_ref = sps.false_discovery_control([r["p_value"] for r in rows], method="bh")
    np.testing.assert_allclose([r["q_value"] for r in rows], q_ref, rtol=1e-12)
    by = {(r["direction"], r["hypothesis"]): r for r in rows}
    for s in stats:
        a_row, b_row = by["a", s.hypothesis], by["b", s.hypothesis]
        assert (a_row["p_value"], b_row["p_value"]) == (s.p_greater, s.p_less)
        assert b_row["auroc"] == pytest.approx(1 - a_row["auroc"])
        assert b_row["auroc_ci_low"] == pytest.approx(1 - a_row["auroc_ci_high"])
        low, high = auroc_ci(s.auroc, s.auroc_se, level=CI_LEVEL)
        assert (a_row["auroc_ci_low"], a_row["auroc_ci_high"]) == (low, high)
        for r in (a_row, b_row):
            assert r["significant"] is (r["q_value"] < ALPHA and r["auroc_ci_low"] > 0.5)
    assert rows[0]["hypothesis"] == "h0" and rows[0]["significant"]
    assert rows[h]["hypothesis"] == "h1" and rows[h]["significant"]
    # Strongly true of B: at the bottom of A's list, and not significant there.
    assert rows[h - 1]["hypothesis"] == "h1" and not rows[h - 1]["significant"]
    assert sum(r["significant"] for r in rows) == 2  # the rest stay, marked not significant
    assert ranked_rows([], alpha=ALPHA, ci_level=CI_LEVEL) == []


def _simulate(runs: int, h: int, n: int, shift: float, seed: int) -> np.ndarray:
    """(runs, 2H) significant flags of simulated runs: H independent hypotheses, n + n images,
    CLIP-like scores; hypothesis 0 of set A shifted by ``shift`` standard deviations."""
    rng = np.random.default_rng(seed)
    scores = rng.normal(0.2, 0.03, (runs, 2 * n, h)).astype(np.float32)
    is_a = np.arange(2 * n) < n
    scores[:, is_a, 0] += np.float32(shift * 0.03)
    flags = np.empty((runs, 2 * h), dtype=bool)
    for run in range(runs):
        rows = ranked_rows(_stats(scores[run], is_a), alpha=ALPHA, ci_level=CI_LEVEL)
        flags[run] = [r["significant"] for r in sorted(rows, key=_row_id)]
    return flags


def _row_id(row: dict) -> tuple[str, int]:
    return row["direction"], int(row["hypothesis"][1:])


def test_null_simulation_rarely_flags_any_hypothesis() -> None:
    """H = 100 hypotheses, 100 + 100 images, 400 runs of identical sets: the share of runs that
    flag any row is at most 5% (BH controls the family-wise rate under the global null), within
    two Monte Carlo standard errors (sqrt(0.05 * 0.95 / 400) = 1.1%)."""
    runs = 400
    flags = _simulate(runs, h=100, n=100, shift=0.0, seed=11)
    share = flags.any(axis=1).mean()
    assert share <= 0.05 + 2 * np.sqrt(0.05 * 0.95 / runs), share


def test_planted_signal_is_flagged() -> None:
    """One hypothesis 0.8 SD more true of A, 99 null ones: it is flagged (direction "a") in
    nearly every run, and its "b" row never is."""
    runs, h = 40, 100
    flags = _simulate(runs, h=h, n=100, shift=0.8, seed=12)
    assert flags[:, 0].mean() >= 0.95  # ("a", h0)
    assert not flags[:, h].any()  # ("b", h0)
