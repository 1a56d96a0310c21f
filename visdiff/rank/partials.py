"""Mergeable per-block sufficient statistics for ranking hypotheses.

Each Ray Data block scores its images against H hypotheses and returns one ``ScorePartials``
(as a one-row batch via ``to_row``); the driver folds them with ``merge_all`` (associative
and commutative) and calls ``finalize``. Driver memory is bounded: moments, threshold counts
and fixed-bin histograms are O(H * num_bins), and the exact score matrices are kept only
while the total number of images is <= ``exact_cap`` (then AUROC is exact), after which they
are dropped for good and AUROC comes from the histograms with a worst-case error bound.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff.rank.stats import (
    _as_count,
    _as_finite,
    _as_float,
    auroc,
    auroc_from_histograms,
    welch_t_from_moments,
)

__all__ = ["HypothesisStats", "ScorePartials", "merge_all", "rank_order"]

DEFAULT_NUM_BINS = 2048
DEFAULT_EXACT_CAP = 20000
_SETS = ("A", "B")


@dataclass(frozen=True)
class HypothesisStats:
    """Final ranking statistics of one hypothesis (set A is the positive class)."""

    hypothesis: str
    auroc: float
    auroc_error_bound: float
    auroc_exact: bool
    mean_a: float
    mean_b: float
    diff: float
    t_stat: float
    p_value: float
    correct_delta: float
    n_a: int
    n_b: int

    def __post_init__(self) -> None:
        if not isinstance(self.hypothesis, str):
            raise TypeError(f"hypothesis must be str, got {type(self.hypothesis).__name__}")
        if not isinstance(self.auroc_exact, bool | np.bool_):
            raise TypeError(f"auroc_exact must be bool, got {self.auroc_exact!r}")
        object.__setattr__(self, "auroc_exact", bool(self.auroc_exact))
        for name in (
            "auroc",
            "auroc_error_bound",
            "mean_a",
            "mean_b",
            "diff",
            "t_stat",
            "p_value",
            "correct_delta",
        ):
            object.__setattr__(self, name, _as_float(getattr(self, name), name))
        for name in ("n_a", "n_b"):
            value = getattr(self, name)
            if isinstance(value, bool | np.bool_) or not isinstance(value, int | np.integer):
                raise TypeError(f"{name} must be an integer, got {value!r}")
            object.__setattr__(self, name, int(value))

    def to_dict(self) -> dict[str, Any]:
        """Plain Python values (str, float, bool, int), ready for JSON or a DataFrame row."""
        return dataclasses.asdict(self)


def rank_order(stats: Iterable[HypothesisStats]) -> list[HypothesisStats]:
    """Best first: AUROC descending, then t_stat descending (NaN last), then hypothesis text."""

    def key(s: HypothesisStats) -> tuple[float, float, str]:
        auc = -math.inf if math.isnan(s.auroc) else s.auroc
        t = -math.inf if math.isnan(s.t_stat) else s.t_stat
        return (-auc, -t, s.hypothesis)

    return sorted(stats, key=key)


def _bin_index(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin of each value in ``num_bins`` equal bins over [-1, 1], clipping outside values.

    Every step is monotone in floating point, so a higher bin always means a strictly larger
    score; the histogram AUROC bound relies on that.
    """
    clipped = np.clip(values, -1.0, 1.0)
    index = np.floor((clipped + 1.0) * (num_bins / 2.0)).astype(np.int64)
    return np.minimum(index, num_bins - 1)


@dataclass
class ScorePartials:
    """Sufficient statistics of the scores of both sets; index 0 is set A, 1 is set B.

    ``mean``/``m2`` are merged with Chan et al.'s parallel update (stable, unlike raw sums of
    squares). ``exact`` holds float32 score matrices (n_set, H) while the total image count
    is <= ``exact_cap`` and is None once it has exceeded it.
    """

    threshold: float
    num_bins: int
    exact_cap: int
    count: np.ndarray  # (2,) int64
    mean: np.ndarray  # (2, H) float64
    m2: np.ndarray  # (2, H) float64
    above: np.ndarray  # (2, H) int64, scores > threshold
    hist: np.ndarray  # (2, H, num_bins) int64
    exact: list[np.ndarray] | None

    def __post_init__(self) -> None:
        self.threshold = _as_finite(self.threshold, "threshold")
        self.num_bins = _as_count(self.num_bins, "num_bins", minimum=1)
        self.exact_cap = _as_count(self.exact_cap, "exact_cap", minimum=0)
        h = np.shape(self.mean)[-1] if np.ndim(self.mean) == 2 else -1
        expected = {
            "count": ((2,), np.int64),
            "mean": ((2, h), np.float64),
            "m2": ((2, h), np.float64),
            "above": ((2, h), np.int64),
            "hist": ((2, h, self.num_bins), np.int64),
        }
        for name, (shape, dtype) in expected.items():
            arr = np.asarray(getattr(self, name))
            if arr.shape != shape or h < 1:
                raise ValueError(f"{name} must have shape {shape} with H >= 1, got {arr.shape}")
            setattr(self, name, arr.astype(dtype, copy=False))
        if self.exact is not None:
            if len(self.exact) != 2:
                raise ValueError(f"exact must hold 2 matrices (A, B), got {len(self.exact)}")
            for i, matrix in enumerate(self.exact):
                if np.shape(matrix) != (int(self.count[i]), h):
                    raise ValueError(
                        f"exact[{i}] must have shape {(int(self.count[i]), h)}, "
                        f"got {np.shape(matrix)}"
                    )
            self.exact = [np.asarray(m, dtype=np.float32) for m in self.exact]

    @property
    def num_hypotheses(self) -> int:
        return int(self.mean.shape[1])

    @classmethod
    def empty(
        cls,
        num_hypotheses: int,
        *,
        threshold: float,
        num_bins: int = DEFAULT_NUM_BINS,
        exact_cap: int = DEFAULT_EXACT_CAP,
    ) -> ScorePartials:
        """The identity of ``merge``: no images seen yet."""
        h = _as_count(num_hypotheses, "num_hypotheses", minimum=1)
        num_bins = _as_count(num_bins, "num_bins", minimum=1)
        return cls(
            threshold=threshold,
            num_bins=num_bins,
            exact_cap=exact_cap,
            count=np.zeros(2, np.int64),
            mean=np.zeros((2, h)),
            m2=np.zeros((2, h)),
            above=np.zeros((2, h), np.int64),
            hist=np.zeros((2, h, num_bins), np.int64),
            exact=[np.zeros((0, h), np.float32), np.zeros((0, h), np.float32)],
        )

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        is_a: np.ndarray,
        *,
        threshold: float,
        num_bins: int = DEFAULT_NUM_BINS,
        exact_cap: int = DEFAULT_EXACT_CAP,
    ) -> ScorePartials:
        """Statistics of one block: ``scores`` (n, H) similarities, ``is_a`` (n,) set flags."""
        scores = np.asarray(scores)
        is_a = np.asarray(is_a)
        if scores.ndim != 2 or scores.shape[1] < 1:
            raise ValueError(f"scores must have shape (n, H) with H >= 1, got {scores.shape}")
        if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(
            scores.dtype, np.integer
        ):
            raise ValueError(f"scores must hold real numbers, got dtype {scores.dtype}")
        if not np.all(np.isfinite(scores)):
            raise ValueError("scores must be finite, got NaN/inf similarities")
        if is_a.dtype != np.bool_ or is_a.shape != (scores.shape[0],):
            raise ValueError(
                f"is_a must be a bool array of shape ({scores.shape[0]},), "
                f"got {is_a.dtype} {is_a.shape}"
            )
        num_bins = _as_count(num_bins, "num_bins", minimum=1)
        exact_cap = _as_count(exact_cap, "exact_cap", minimum=0)
        threshold = _as_finite(threshold, "threshold")
        h = scores.shape[1]
        count = np.zeros(2, np.int64)
        mean = np.zeros((2, h))
        m2 = np.zeros((2, h))
        above = np.zeros((2, h), np.int64)
        hist = np.zeros((2, h, num_bins), np.int64)
        per_set = [scores[is_a], scores[~is_a]]
        for i, subset in enumerate(per_set):
            n = subset.shape[0]
            count[i] = n
            if n == 0:
                continue
            values = subset.astype(np.float64)
            mean[i] = values.mean(axis=0)
            m2[i] = np.square(values - mean[i]).sum(axis=0)
            above[i] = (values > threshold).sum(axis=0)
            flat = _bin_index(values, num_bins) + np.arange(h, dtype=np.int64) * num_bins
            hist[i] = np.bincount(flat.ravel(), minlength=h * num_bins).reshape(h, num_bins)
        exact = None
        if scores.shape[0] <= exact_cap:
            exact = [np.ascontiguousarray(s, dtype=np.float32) for s in per_set]
        return cls(threshold, num_bins, exact_cap, count, mean, m2, above, hist, exact)

    def _check_compatible(self, other: ScorePartials) -> None:
        if not isinstance(other, ScorePartials):
            raise TypeError(f"can only merge ScorePartials, got {type(other).__name__}")
        for name in ("threshold", "num_bins", "exact_cap", "num_hypotheses"):
            mine, theirs = getattr(self, name), getattr(other, name)
            if mine != theirs:
                raise ValueError(f"cannot merge partials with different {name}: {mine} vs {theirs}")

    def merge(self, other: ScorePartials) -> ScorePartials:
        """A new partial for the union of both blocks (associative, commutative, pure)."""
        return merge_all([self, other])

    def finalize(self, hypotheses: list[str]) -> list[HypothesisStats]:
        """Per-hypothesis statistics, in the order of ``hypotheses`` (use ``rank_order``)."""
        h = self.num_hypotheses
        if len(hypotheses) != h:
            raise ValueError(
                f"hypotheses must have {h} entries (one per column), got {len(hypotheses)}"
            )
        n_a, n_b = int(self.count[0]), int(self.count[1])
        for name, n in zip(_SETS, (n_a, n_b), strict=True):
            if n < 2:
                raise ValueError(f"set {name} has {n} image(s); ranking needs at least 2 per set")
        var = self.m2 / (self.count[:, None] - 1)
        results = []
        for j, text in enumerate(hypotheses):
            if self.exact is not None:
                auc, bound = auroc(self.exact[0][:, j], self.exact[1][:, j]), 0.0
            else:
                auc, bound = auroc_from_histograms(self.hist[0, j], self.hist[1, j])
            test = welch_t_from_moments(
                n_a, self.mean[0, j], var[0, j], n_b, self.mean[1, j], var[1, j]
            )
            results.append(
                HypothesisStats(
                    hypothesis=text,
                    auroc=auc,
                    auroc_error_bound=bound,
                    auroc_exact=self.exact is not None,
                    mean_a=self.mean[0, j],
                    mean_b=self.mean[1, j],
                    diff=self.mean[0, j] - self.mean[1, j],
                    t_stat=test.t_stat,
                    p_value=test.p_value,
                    correct_delta=self.above[0, j] / n_a - self.above[1, j] / n_b,
                    n_a=n_a,
                    n_b=n_b,
                )
            )
        return results

    def to_row(self) -> dict[str, np.ndarray]:
        """One-row batch for Ray Data: every value is a numpy array with first dimension 1.

        Exact matrices travel as raw C-order float32 bytes in object arrays (their shapes
        follow from ``count`` and H); ``has_exact`` tells an empty set from a dropped one.
        """
        has_exact = self.exact is not None
        exact = self.exact if has_exact else [np.zeros((0, 0), np.float32)] * 2
        row = {
            "threshold": np.array([self.threshold], np.float64),
            "num_bins": np.array([self.num_bins], np.int64),
            "exact_cap": np.array([self.exact_cap], np.int64),
            "count": self.count[None].copy(),
            "mean": self.mean[None].copy(),
            "m2": self.m2[None].copy(),
            "above": self.above[None].copy(),
            "hist": self.hist[None].copy(),
            "has_exact": np.array([has_exact]),
        }
        for key, matrix in zip(("exact_a", "exact_b"), exact, strict=True):
            holder = np.empty(1, dtype=object)
            holder[0] = np.ascontiguousarray(matrix, dtype=np.float32).tobytes()
            row[key] = holder
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> ScorePartials:
        """Inverse of ``to_row``; also accepts rows whose leading batch dimension was removed."""
        scalars = {key: _row_field(row, key, 0).item() for key in ("threshold", "num_bins")}
        exact_cap = _row_field(row, "exact_cap", 0).item()
        count = _row_field(row, "count", 1)
        mean = _row_field(row, "mean", 2)
        exact = None
        if bool(_row_field(row, "has_exact", 0).item()):
            h = mean.shape[-1]
            exact = []
            for i, key in enumerate(("exact_a", "exact_b")):
                raw = _row_bytes(row, key)
                exact.append(np.frombuffer(raw, dtype=np.float32).reshape(int(count[i]), h).copy())
        return cls(
            threshold=scalars["threshold"],
            num_bins=scalars["num_bins"],
            exact_cap=exact_cap,
            count=count,
            mean=mean,
            m2=_row_field(row, "m2", 2),
            above=_row_field(row, "above", 2),
            hist=_row_field(row, "hist", 3),
            exact=exact,
        )


def _row_field(row: Mapping[str, Any], key: str, ndim: int) -> np.ndarray:
    if key not in row:
        raise ValueError(f"row is missing {key!r}; was it made by ScorePartials.to_row?")
    arr = np.asarray(row[key])
    if arr.ndim == ndim + 1 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != ndim:
        raise ValueError(f"row[{key!r}] must have {ndim} dimension(s), got shape {arr.shape}")
    return arr


def _row_bytes(row: Mapping[str, Any], key: str) -> bytes:
    if key not in row:
        raise ValueError(f"row is missing {key!r}; was it made by ScorePartials.to_row?")
    value = row[key]
    if isinstance(value, np.ndarray):
        if value.size != 1:
            raise ValueError(f"row[{key!r}] must hold one bytes value, got shape {value.shape}")
        value = value.reshape(-1)[0]
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ValueError(f"row[{key!r}] must be bytes, got {type(value).__name__}")
    return bytes(value)


def merge_all(partials: Iterable[ScorePartials]) -> ScorePartials:
    """Merge any number of partials in one pass; the result does not depend on their order.

    Moments are folded pairwise (Chan et al.), counts and histograms are summed in place, and
    exact chunks are concatenated once at the end, so many tiny blocks cost O(total), not
    O(total^2). Exact chunks are discarded as soon as the running total passes the cap.
    """
    iterator = iter(partials)
    first = next(iterator, None)
    if first is None:
        raise ValueError("partials must contain at least one ScorePartials, got none")
    if not isinstance(first, ScorePartials):
        raise TypeError(f"can only merge ScorePartials, got {type(first).__name__}")
    count = first.count.copy()
    mean = first.mean.copy()
    m2 = first.m2.copy()
    above = first.above.copy()
    hist = first.hist.copy()
    chunks: list[list[np.ndarray]] | None = (
        None if first.exact is None else [[first.exact[0]], [first.exact[1]]]
    )
    for other in iterator:
        first._check_compatible(other)
        n_self, n_other = count[:, None], other.count[:, None]
        total = n_self + n_other
        safe_total = np.maximum(total, 1)
        delta = other.mean - mean
        mean = mean + delta * (n_other / safe_total)
        m2 = m2 + other.m2 + np.square(delta) * (n_self * n_other / safe_total)
        count += other.count
        above += other.above
        hist += other.hist
        if chunks is not None:
            if other.exact is None or int(count.sum()) > first.exact_cap:
                chunks = None
            else:
                chunks[0].append(other.exact[0])
                chunks[1].append(other.exact[1])
    exact = None
    if chunks is not None and int(count.sum()) <= first.exact_cap:
        exact = [np.concatenate(c, axis=0) for c in chunks]
    return ScorePartials(
        first.threshold, first.num_bins, first.exact_cap, count, mean, m2, above, hist, exact
    )
