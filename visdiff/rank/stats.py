"""Pure ranking statistics for two score samples (set A = positive class, set B = negative).

Every function validates its inputs and raises ``ValueError`` naming the argument, so that a
bad score array fails here instead of producing a silently wrong ranking. Options are
keyword-only and results are named (frozen dataclasses), scikit-learn style.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Real

import numpy as np
from scipy import special

__all__ = [
    "TTest",
    "auroc",
    "auroc_from_histograms",
    "correct_delta",
    "welch_t",
    "welch_t_from_moments",
]


@dataclass(frozen=True)
class TTest:
    """Result of Welch's two-sided t-test (same fields as scipy's ``TtestResult``)."""

    t_stat: float
    p_value: float
    df: float

    def __post_init__(self) -> None:
        for name in ("t_stat", "p_value", "df"):
            object.__setattr__(self, name, _as_float(getattr(self, name), name))


def _as_float(value: object, name: str) -> float:
    """Coerce a real number to float; a bool is a bug upstream, never a statistic."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


def _as_sample(values: object, name: str, *, min_size: int) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array with at least ``min_size`` elements."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} element(s), got {arr.size}")
    arr = arr.astype(np.float64, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {int((~np.isfinite(arr)).sum())} NaN/inf")
    return arr


def _as_finite(value: object, name: str) -> float:
    try:
        out = _as_float(value, name)
    except TypeError as exc:
        raise ValueError(str(exc)) from None
    if not math.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


def _as_count(value: object, name: str, *, minimum: int) -> int:
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
        raise ValueError(f"{name} must be an integer, got {type(value).__name__}: {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _auroc_from_grouped_counts(count_a: np.ndarray, count_b: np.ndarray) -> float:
    """AUROC from per-group counts, groups sorted ascending; same-group pairs count 1/2.

    Uses 2*U = sum_k a_k * (2 * B_below_k + b_k), which stays exact in integers.
    """
    below_b = np.cumsum(count_b) - count_b
    twice_u = np.sum(count_a * (2 * below_b + count_b))
    n_a, n_b = count_a.sum(), count_b.sum()
    return float(twice_u) / (2.0 * float(n_a) * float(n_b))


def auroc(scores_a: object, scores_b: object) -> float:
    """P(random A score > random B score) + 0.5 * P(tie): the Mann-Whitney U / (n_a n_b).

    Equals ``sklearn.metrics.roc_auc_score`` with A labelled 1. Ties are grouped by sorting
    the unique values (O(n log n)), and U is accumulated in integers so there is no rank
    round-off.
    """
    a = _as_sample(scores_a, "scores_a", min_size=1)
    b = _as_sample(scores_b, "scores_b", min_size=1)
    _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    groups = int(inverse.max()) + 1
    count_a = np.bincount(inverse[: a.size], minlength=groups)
    count_b = np.bincount(inverse[a.size :], minlength=groups)
    return _auroc_from_grouped_counts(count_a, count_b)


def welch_t_from_moments(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float
) -> TTest:
    """Welch's unequal-variance two-sided t-test from counts, means and unbiased variances.

    Matches ``scipy.stats.ttest_ind(a, b, equal_var=False)``, including its degenerate case:
    when both variances are 0 the degrees of freedom are undefined and set to 1.0, so
    different means give t = +/-inf with p = 0.0 and equal means give t = nan, p = nan.
    """
    n_a = _as_count(n_a, "n_a", minimum=2)
    n_b = _as_count(n_b, "n_b", minimum=2)
    mean_a = _as_finite(mean_a, "mean_a")
    mean_b = _as_finite(mean_b, "mean_b")
    var_a = _as_finite(var_a, "var_a")
    var_b = _as_finite(var_b, "var_b")
    for name, var in (("var_a", var_a), ("var_b", var_b)):
        if var < 0:
            raise ValueError(f"{name} must be >= 0, got {var}")
    vn_a, vn_b = var_a / n_a, var_b / n_b
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.float64(vn_a + vn_b) ** 2 / (vn_a**2 / (n_a - 1) + vn_b**2 / (n_b - 1))
        if np.isnan(df):
            df = np.float64(1.0)
        t_stat = np.float64(mean_a - mean_b) / np.sqrt(np.float64(vn_a + vn_b))
    p_value = 2.0 * special.stdtr(df, -np.abs(t_stat))
    return TTest(t_stat=float(t_stat), p_value=float(p_value), df=float(df))


def welch_t(scores_a: object, scores_b: object) -> TTest:
    """Welch's two-sided t-test of mean(A) vs mean(B); equals scipy's ``equal_var=False``."""
    a = _as_sample(scores_a, "scores_a", min_size=2)
    b = _as_sample(scores_b, "scores_b", min_size=2)
    return welch_t_from_moments(
        a.size, float(a.mean()), float(a.var(ddof=1)), b.size, float(b.mean()), float(b.var(ddof=1))
    )


def correct_delta(scores_a: object, scores_b: object, *, threshold: float) -> float:
    """Fraction of A scores > ``threshold`` minus fraction of B scores > ``threshold``.

    VisDiff's thresholded "correct" difference: how much more often the hypothesis fires on A.
    """
    a = _as_sample(scores_a, "scores_a", min_size=1)
    b = _as_sample(scores_b, "scores_b", min_size=1)
    threshold = _as_finite(threshold, "threshold")
    return float(np.mean(a > threshold)) - float(np.mean(b > threshold))


def _as_histogram(values: object, name: str) -> np.ndarray:
    arr = _as_sample(values, name, min_size=1)
    if np.any(arr < 0):
        raise ValueError(f"{name} must hold counts >= 0, got min {arr.min()}")
    if arr.sum() <= 0:
        raise ValueError(f"{name} must hold at least one count, got total {arr.sum()}")
    return arr


def auroc_from_histograms(hist_a: object, hist_b: object) -> tuple[float, float]:
    """AUROC estimate from two histograms over the same ascending bins, and its error bound.

    A pair (a, b) in different bins is ordered exactly (the bins do not overlap), so only
    same-bin pairs are uncertain: the estimate counts each as 1/2 while the truth lies in
    [0, 1]. With p = counts / total, the error is at most 0.5 * sum_k p_a[k] * p_b[k], and the
    bound is attained (all A above all B, or all below, inside every shared bin), so it is
    the exact worst case. Integer counts give an exact estimate (no float accumulation).
    """
    a = np.asarray(hist_a)
    b = np.asarray(hist_b)
    a_checked = _as_histogram(a, "hist_a")
    b_checked = _as_histogram(b, "hist_b")
    if a_checked.size != b_checked.size:
        raise ValueError(
            f"hist_a and hist_b must share bins, got {a_checked.size} and {b_checked.size} bins"
        )
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        a_counts, b_counts = a.astype(np.int64), b.astype(np.int64)
    else:
        a_counts, b_counts = a_checked, b_checked
    estimate = _auroc_from_grouped_counts(a_counts, b_counts)
    same_bin_pairs = np.sum(a_counts * b_counts)  # = sum_k p_a[k] p_b[k] * n_a * n_b
    bound = 0.5 * float(same_bin_pairs) / (float(a_counts.sum()) * float(b_counts.sum()))
    return estimate, bound
