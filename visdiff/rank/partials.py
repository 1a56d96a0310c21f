"""Mergeable per-block sufficient statistics for ranking hypotheses.

Each Ray Data block scores its images against H hypotheses into one ``ScorePartials`` (the
accumulator of ``visdiff.rank.aggregate.ScoreAggregate``); partials are folded with ``merge``
/ ``merge_all`` (associative and commutative) and ``finalize`` gives the statistics. Driver memory is bounded: moments, threshold counts
and fixed-bin histograms are O(H * num_bins), and the exact scores are kept only while the
total number of images is <= ``exact_cap`` (then AUROC is exact), after which they are
turned into histograms for good and AUROC comes from those with a worst-case error bound.

A partial holds either the exact scores or the histograms, never both: histograms are only
needed once the exact scores go, and they can always be rebuilt from them, so blocks under
the cap neither compute nor ship them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff.config import RankConfig
from visdiff.rank.stats import (
    RankSums,
    _as_count,
    _as_finite,
    _as_float,
    _correct_delta_from_counts,
    _exact_rank_sums,
    _welch,
    auroc_from_histograms,
    histogram_rank_sums,
)

__all__ = [
    "HypothesisStats",
    "RankedPartials",
    "ScorePartials",
    "merge_all",
    "rank_order",
    "ranking_key",
]

# One home for the defaults: the run configuration's.
DEFAULT_NUM_BINS = RankConfig.histogram_bins
DEFAULT_EXACT_CAP = RankConfig.exact_cap
_SETS = ("A", "B")


@dataclass(frozen=True)
class HypothesisStats:
    """Final ranking statistics of one hypothesis (set A is the positive class).

    ``t_stat``/``p_value``: Welch's two-sided t-test of the means. ``p_greater``/``p_less``:
    one-sided Mann-Whitney tests of AUROC > 0.5 / < 0.5 (the ranked rows' p-values);
    ``auroc_se``: DeLong's standard error. Past the exact cap all three come from histograms.
    """

    hypothesis: str
    auroc: float
    auroc_error_bound: float
    auroc_exact: bool
    auroc_se: float
    mean_a: float
    mean_b: float
    diff: float
    t_stat: float
    p_value: float
    p_greater: float
    p_less: float
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
            "auroc_se",
            "mean_a",
            "mean_b",
            "diff",
            "t_stat",
            "p_value",
            "p_greater",
            "p_less",
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
    """Best first: AUROC descending, then t_stat descending (NaN last), then hypothesis text.

    Examples
    --------
    >>> scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
    >>> part = ScorePartials.from_scores(scores, np.array([True, True, False, False]),
    ...                                  threshold=0.5)
    >>> [s.hypothesis for s in rank_order(part.finalize(["dogs", "cats"]))]
    ['dogs', 'cats']
    """

    return sorted(stats, key=lambda s: ranking_key(s.auroc, s.t_stat, s.hypothesis))


def ranking_key(auroc: float, t_stat: float, hypothesis: str) -> tuple[float, float, str]:
    """Sort key, best first: AUROC descending, then t_stat descending (NaN last), then text."""
    auc = -math.inf if math.isnan(auroc) else auroc
    t = -math.inf if math.isnan(t_stat) else t_stat
    return (-auc, -t, hypothesis)


def _bin_index(values: np.ndarray, num_bins: int) -> np.ndarray:
    """Bin of each value in ``num_bins`` equal bins over [-1, 1], clipping outside values.

    Every step is monotone in floating point, so a higher bin always means a strictly larger
    score; the histogram AUROC bound relies on that.
    """
    clipped = np.clip(values.astype(np.float64), -1.0, 1.0)
    index = np.floor((clipped + 1.0) * (num_bins / 2.0)).astype(np.int64)
    return np.minimum(index, num_bins - 1)


def _histograms(exact: list[np.ndarray], num_bins: int) -> np.ndarray:
    """(2, H, num_bins) counts of the hypothesis-major float32 scores of sets A and B."""
    h = exact[0].shape[0]
    hist = np.zeros((2, h, num_bins), np.int64)
    offsets = np.arange(h, dtype=np.int64)[:, None] * num_bins
    for i, scores in enumerate(exact):
        if scores.shape[1]:
            flat = (_bin_index(scores, num_bins) + offsets).ravel()
            hist[i] = np.bincount(flat, minlength=h * num_bins).reshape(h, num_bins)
    return hist


# Elements of a block converted to float64 (the moments' precision) at a time: 1 MiB stays
# in cache, where a float64 copy of the whole block (H x n, often 20+ MiB) would not.
_MOMENT_ELEMENTS = 1 << 17


def _moments(
    picked: np.ndarray, threshold: float, mean: np.ndarray, m2: np.ndarray, above: np.ndarray
) -> None:
    """Per-row mean, sum of squared deviations and count above ``threshold`` of ``picked``
    (H, n), written into the (H,) outputs; rows go through float64 a few at a time."""
    h, n = picked.shape
    step = max(1, _MOMENT_ELEMENTS // n)
    for lo in range(0, h, step):
        hi = min(h, lo + step)
        centered = picked[lo:hi].astype(np.float64)  # moments from the input's own precision
        mean[lo:hi] = centered.mean(axis=1)
        above[lo:hi] = np.count_nonzero(centered > threshold, axis=1)
        centered -= mean[lo:hi, None]
        m2[lo:hi] = np.einsum("ij,ij->i", centered, centered)


@dataclass
class ScorePartials:
    """Sufficient statistics of the scores of both sets; index 0 is set A, 1 is set B.

    ``mean``/``m2`` are merged with Chan et al.'s parallel update (stable, unlike raw sums of
    squares). ``exact`` holds the float32 scores hypothesis-major, (H, n_set) per set, so that
    ``finalize`` sorts contiguous rows, while the total image count is <= ``exact_cap``; then
    ``hist`` is None. Past the cap ``exact`` is None and ``hist`` holds the bin counts.
    """

    threshold: float
    num_bins: int
    exact_cap: int
    count: np.ndarray  # (2,) int64
    mean: np.ndarray  # (2, H) float64
    m2: np.ndarray  # (2, H) float64
    above: np.ndarray  # (2, H) int64, scores > threshold
    hist: np.ndarray | None  # (2, H, num_bins) int64, only once exact is gone
    exact: list[np.ndarray] | None  # 2 x (H, n_set) float32

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
        if (self.hist is None) == (self.exact is None):
            raise ValueError("a ScorePartials holds exactly one of exact scores and hist")
        for name, (shape, dtype) in expected.items():
            if getattr(self, name) is None:
                continue
            arr = np.asarray(getattr(self, name))
            if arr.shape != shape or h < 1:
                raise ValueError(f"{name} must have shape {shape} with H >= 1, got {arr.shape}")
            setattr(self, name, arr.astype(dtype, copy=False))
        if self.exact is not None:
            if len(self.exact) != 2:
                raise ValueError(f"exact must hold 2 matrices (A, B), got {len(self.exact)}")
            for i, matrix in enumerate(self.exact):
                if np.shape(matrix) != (h, int(self.count[i])):
                    raise ValueError(
                        f"exact[{i}] must have shape {(h, int(self.count[i]))} "
                        f"(hypotheses x images), got {np.shape(matrix)}"
                    )
            self.exact = [np.asarray(m, dtype=np.float32) for m in self.exact]

    @property
    def num_hypotheses(self) -> int:
        return int(self.mean.shape[1])

    def histograms(self) -> np.ndarray:
        """(2, H, num_bins) bin counts: kept ones past the cap, else built from the scores."""
        if self.hist is not None:
            return self.hist
        return _histograms(self.exact, self.num_bins)

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
            hist=None,
            exact=[np.zeros((h, 0), np.float32), np.zeros((h, 0), np.float32)],
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
        expected_total: int | None = None,
    ) -> ScorePartials:
        """Statistics of one block: ``scores`` (n, H) similarities, ``is_a`` (n,) set flags.

        Any memory layout works; a transposed (H, n) C-contiguous array (``scores.T`` of the
        product ``text @ images.T``) is the fastest, as every statistic is per hypothesis.

        Scores are kept and binned as float32 (the score stage's dtype); moments use float64.
        ``expected_total``, the image count of the whole ranking when the caller knows it,
        lets a block past the cap keep histograms right away instead of exact scores that
        the merge would drop.

        Examples
        --------
        >>> scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8]])
        >>> is_a = np.array([True, True, False, False])
        >>> part = ScorePartials.from_scores(scores, is_a, threshold=0.5)
        >>> part.count.tolist(), part.above.tolist()
        ([2, 2], [[2, 0], [0, 2]])
        >>> ScorePartials.from_scores(scores, is_a, threshold=0.5, exact_cap=3).exact is None
        True
        """
        scores = np.asarray(scores)
        is_a = np.asarray(is_a)
        if scores.ndim != 2 or scores.shape[1] < 1:
            raise ValueError(f"scores must have shape (n, H) with H >= 1, got {scores.shape}")
        if not np.issubdtype(scores.dtype, np.floating) and not np.issubdtype(
            scores.dtype, np.integer
        ):
            raise ValueError(f"scores must hold real numbers, got dtype {scores.dtype}")
        if is_a.dtype != np.bool_ or is_a.shape != (scores.shape[0],):
            raise ValueError(
                f"is_a must be a bool array of shape ({scores.shape[0]},), "
                f"got {is_a.dtype} {is_a.shape}"
            )
        by_hypothesis = scores.T  # (H, n); C-contiguous when scores came as (text @ images.T).T
        # (H, n_set) C-contiguous copies of each set's columns; `from_set_scores` checks the
        # options and that every score is finite (from the moments, without another pass).
        picked = [np.compress(in_set, by_hypothesis, axis=1) for in_set in (is_a, ~is_a)]
        return cls.from_set_scores(
            *picked,
            threshold=threshold,
            num_bins=num_bins,
            exact_cap=exact_cap,
            expected_total=expected_total,
        )

    @classmethod
    def from_set_scores(
        cls,
        scores_a: np.ndarray,
        scores_b: np.ndarray,
        *,
        threshold: float,
        num_bins: int = DEFAULT_NUM_BINS,
        exact_cap: int = DEFAULT_EXACT_CAP,
        expected_total: int | None = None,
    ) -> ScorePartials:
        """``from_scores`` of scores already split by set, hypothesis-major: ``scores_a``
        (H, n_a) and ``scores_b`` (H, n_b), any row stride. Float32 inputs are kept as they
        are (views, no copy: the partial then shares their memory), so a caller that writes
        both sets into one (H, n_a + n_b) matrix pays for no copy before the sort.

        Examples
        --------
        >>> scores = np.array([[0.9, 0.8, 0.1, 0.2], [0.1, 0.2, 0.9, 0.8]], dtype=np.float32)
        >>> part = ScorePartials.from_set_scores(scores[:, :2], scores[:, 2:], threshold=0.5)
        >>> part.count.tolist(), part.above.tolist(), np.shares_memory(part.exact[0], scores)
        ([2, 2], [[2, 0], [0, 2]], True)
        """
        sets = [np.asarray(scores_a), np.asarray(scores_b)]
        for name, arr in zip(("scores_a", "scores_b"), sets, strict=True):
            if arr.ndim != 2 or arr.shape[0] < 1:
                raise ValueError(f"{name} must have shape (H, n) with H >= 1, got {arr.shape}")
            if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
        if sets[0].shape[0] != sets[1].shape[0]:
            raise ValueError(
                f"scores_a and scores_b must score the same hypotheses, got "
                f"{sets[0].shape[0]} and {sets[1].shape[0]} rows"
            )
        num_bins = _as_count(num_bins, "num_bins", minimum=1)
        exact_cap = _as_count(exact_cap, "exact_cap", minimum=0)
        threshold = _as_finite(threshold, "threshold")
        h = sets[0].shape[0]
        count = np.array([sets[0].shape[1], sets[1].shape[1]], np.int64)
        keep_exact = int(count.sum()) <= exact_cap
        if expected_total is not None:
            keep_exact &= _as_count(expected_total, "expected_total", minimum=0) <= exact_cap
        mean = np.zeros((2, h))
        m2 = np.zeros((2, h))
        above = np.zeros((2, h), np.int64)
        for i, picked in enumerate(sets):
            if picked.shape[1]:
                _moments(picked, threshold, mean[i], m2[i], above[i])
        # A float64 sum of float32 scores cannot overflow (3.4e38 each): their means are finite
        # exactly when every score is, so no separate pass over the scores checks them.
        if not np.all(np.isfinite(mean)):
            raise ValueError("scores must be finite, got NaN/inf similarities")
        exact = [np.asarray(picked, dtype=np.float32) for picked in sets]
        if keep_exact:
            return cls(threshold, num_bins, exact_cap, count, mean, m2, above, None, exact)
        hist = _histograms(exact, num_bins)
        return cls(threshold, num_bins, exact_cap, count, mean, m2, above, hist, None)

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
        """Per-hypothesis statistics, in the order of ``hypotheses`` (use ``rank_order``).

        Every statistic is computed for all hypotheses at once: exact AUROCs with one sort
        per block of hypotheses, histogram AUROCs, Welch tests and correct_delta as arrays.

        Examples
        --------
        >>> scores = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.9], [0.2, 0.8], [0.1, 0.3]])
        >>> is_a = np.array([True, True, False, False, True])
        >>> part = ScorePartials.from_scores(scores, is_a, threshold=0.5)
        >>> dogs, cats = part.finalize(["dogs", "cats"])
        >>> round(dogs.auroc, 4), dogs.auroc_exact, round(dogs.correct_delta, 4)
        (0.6667, True, 0.6667)
        """
        _check_names(hypotheses, self.num_hypotheses)
        _check_counts(self.count)
        return self.ranked().finalize(hypotheses)

    def ranked(self) -> RankedPartials:
        """The heavy half of ``finalize``: the exact scores sorted (one sort per hypothesis) or
        the histograms summed, leaving per-hypothesis arrays only; numpy alone, no scipy.
        With fewer than 2 images in a set nothing is sorted (NaN): ``finalize`` refuses it."""
        h = self.num_hypotheses
        if int(self.count.min()) < 2:
            nan = np.full(h, np.nan)
            aucs, bounds, sums = nan, nan, RankSums(nan, nan, nan)
        elif self.exact is not None:
            aucs, sums = _exact_rank_sums(self.exact[0], self.exact[1])
            bounds = np.zeros(h)
        else:
            aucs, bounds = auroc_from_histograms(self.hist[0], self.hist[1])
            sums = histogram_rank_sums(self.hist[0], self.hist[1])[1]
        return RankedPartials(
            self.threshold,
            self.count.copy(),
            self.mean.copy(),
            self.m2.copy(),
            self.above.copy(),
            aucs,
            bounds,
            self.exact is not None,
            sums,
        )


def _check_names(hypotheses: list[str], h: int) -> None:
    if len(hypotheses) != h:
        raise ValueError(
            f"hypotheses must have {h} entries (one per column), got {len(hypotheses)}"
        )


def _check_counts(count: np.ndarray) -> None:
    for name, n in zip(_SETS, count, strict=True):
        if n < 2:
            raise ValueError(f"set {name} has {n} image(s); ranking needs at least 2 per set")


@dataclass(frozen=True)
class RankedPartials:
    """A ``ScorePartials`` past its sort (``ScorePartials.ranked``): per-hypothesis arrays
    only, a few KiB, that ``finalize`` turns into statistics with scipy's p-values.

    Ranking by slices of hypotheses ranks each slice where its scores are (numpy only; a
    fresh worker would spend ~1 s importing scipy.stats) and finalizes the slices joined
    (``concat``) where scipy is loaded. Not mergeable: the scores are gone.
    """

    threshold: float
    count: np.ndarray  # (2,) int64
    mean: np.ndarray  # (2, H) float64
    m2: np.ndarray  # (2, H) float64
    above: np.ndarray  # (2, H) int64
    auroc: np.ndarray  # (H,)
    auroc_error_bound: np.ndarray  # (H,)
    exact: bool
    sums: RankSums

    @property
    def num_hypotheses(self) -> int:
        return int(self.mean.shape[1])

    @staticmethod
    def concat(parts: list[RankedPartials]) -> RankedPartials:
        """The ranked partials of consecutive hypothesis slices of the same images, in order."""
        if not parts:
            raise ValueError("parts must contain at least one RankedPartials, got none")
        first = parts[0]
        for part in parts[1:]:
            same = (part.threshold, part.exact) == (first.threshold, first.exact)
            if not same or not np.array_equal(part.count, first.count):
                raise ValueError(
                    "can only join slices of one ranking (same images, threshold and path), got "
                    f"counts {first.count.tolist()} and {part.count.tolist()}"
                )

        def joined(name: str) -> np.ndarray:
            return np.concatenate([getattr(p, name) for p in parts], axis=-1)

        return RankedPartials(
            first.threshold,
            first.count,
            joined("mean"),
            joined("m2"),
            joined("above"),
            joined("auroc"),
            joined("auroc_error_bound"),
            first.exact,
            RankSums.concat([p.sums for p in parts]),
        )

    def finalize(self, hypotheses: list[str]) -> list[HypothesisStats]:
        """Per-hypothesis statistics, in the order of ``hypotheses``: ``ScorePartials.finalize``
        of the partial this was ranked from."""
        _check_names(hypotheses, self.num_hypotheses)
        _check_counts(self.count)
        n_a, n_b = int(self.count[0]), int(self.count[1])
        test = self.sums.test(self.auroc, float(n_a), float(n_b))
        var = self.m2 / (self.count[:, None] - 1)
        t_stat, p_value = _welch(n_a, self.mean[0], var[0], n_b, self.mean[1], var[1])
        delta = _correct_delta_from_counts(self.above[0], n_a, self.above[1], n_b)
        diff = self.mean[0] - self.mean[1]
        return [
            HypothesisStats(
                hypothesis=text,
                auroc=self.auroc[j],
                auroc_error_bound=self.auroc_error_bound[j],
                auroc_exact=self.exact,
                auroc_se=test.se[j],
                mean_a=self.mean[0, j],
                mean_b=self.mean[1, j],
                diff=diff[j],
                t_stat=t_stat[j],
                p_value=p_value[j],
                p_greater=test.p_greater[j],
                p_less=test.p_less[j],
                correct_delta=delta[j],
                n_a=n_a,
                n_b=n_b,
            )
            for j, text in enumerate(hypotheses)
        ]


def merge_all(partials: Iterable[ScorePartials]) -> ScorePartials:
    """Merge any number of partials in one pass; the result does not depend on their order.

    Moments are folded pairwise (Chan et al.), counts are summed in place, and exact chunks
    are concatenated once at the end, so many tiny blocks cost O(total), not O(total^2). As
    soon as the running total passes the cap the exact chunks seen so far are turned into
    histograms and dropped; from then on every partial adds its histograms.

    Examples
    --------
    >>> scores = np.array([[0.9], [0.8], [0.1], [0.2]])
    >>> is_a = np.array([True, False, True, False])
    >>> halves = [ScorePartials.from_scores(scores[i:i + 2], is_a[i:i + 2], threshold=0.5)
    ...           for i in (0, 2)]
    >>> merged = merge_all(halves)
    >>> whole = ScorePartials.from_scores(scores, is_a, threshold=0.5)
    >>> merged.count.tolist(), merged.finalize(["h"])[0].auroc == whole.finalize(["h"])[0].auroc
    ([2, 2], True)
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
    chunks: list[list[np.ndarray]] | None = [[], []]
    hist: np.ndarray | None = None
    for part in itertools.chain([first], iterator):
        if part is not first:
            first._check_compatible(part)
            n_self, n_other = count[:, None], part.count[:, None]
            total = n_self + n_other
            safe_total = np.maximum(total, 1)
            delta = part.mean - mean
            mean = mean + delta * (n_other / safe_total)
            m2 = m2 + part.m2 + np.square(delta) * (n_self * n_other / safe_total)
            count += part.count
            above += part.above
        if chunks is not None and (part.exact is None or int(count.sum()) > first.exact_cap):
            hist = np.zeros((2, first.num_hypotheses, first.num_bins), np.int64)
            for chunk_a, chunk_b in zip(*chunks, strict=True):
                hist += _histograms([chunk_a, chunk_b], first.num_bins)
            chunks = None
        if chunks is None:
            hist += part.histograms()
        else:
            chunks[0].append(part.exact[0])
            chunks[1].append(part.exact[1])
    exact = None if chunks is None else [np.concatenate(c, axis=1) for c in chunks]
    return ScorePartials(
        first.threshold, first.num_bins, first.exact_cap, count, mean, m2, above, hist, exact
    )
