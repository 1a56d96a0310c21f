"""Pure ranking statistics for two score samples (set A = positive class, set B = negative).

Every function validates its inputs and raises ``ValueError`` naming the argument, so that a
bad score array fails here instead of producing a silently wrong ranking. Options are
keyword-only and results are named (frozen dataclasses), scikit-learn style. The ``*_many``
and histogram functions work on every hypothesis at once (numpy over a hypothesis axis), so
ranking H hypotheses costs a few array passes, not H Python calls.
"""

from __future__ import annotations

import dataclasses
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from numbers import Real

import numpy as np

__all__ = [
    "AurocTest",
    "RankSums",
    "TTest",
    "auroc",
    "auroc_ci",
    "auroc_from_histograms",
    "auroc_many",
    "auroc_test",
    "auroc_test_from_histograms",
    "correct_delta",
    "histogram_rank_sums",
    "welch_t_from_moments",
]

# Scores sorted per hypothesis block: ~2^20 keys (4 MiB of uint32) keep a thread's temporaries
# (~5 per key, reused from block to block) in cache while the rows stay long enough for numpy's
# vectorised sort to run at full speed.
_BLOCK_KEYS = 1 << 20
_MAX_THREADS = 4  # sort blocks concurrently: numpy releases the GIL while sorting


def _special():  # noqa: ANN202 - the scipy.special module
    """scipy.special, imported on first use: ~0.25 s that the score stage's workers, which only
    build partials, never need."""
    from scipy import special

    return special


@dataclass(frozen=True)
class TTest:
    """Result of Welch's two-sided t-test (scipy's ``statistic`` and ``pvalue``)."""

    t_stat: float
    p_value: float

    def __post_init__(self) -> None:
        for name in ("t_stat", "p_value"):
            object.__setattr__(self, name, _as_float(getattr(self, name), name))


def _as_float(value: object, name: str) -> float:
    """Coerce a real number to float; a bool is a bug upstream, never a statistic."""
    if isinstance(value, bool | np.bool_) or not isinstance(value, Real | np.floating):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}: {value!r}")
    return float(value)


def _as_real_array(values: object, name: str) -> np.ndarray:
    """``values`` as a numpy array of finite real numbers (bool and complex are rejected)."""
    arr = np.asarray(values)
    if arr.dtype == np.bool_ or not (
        np.issubdtype(arr.dtype, np.number) and not np.issubdtype(arr.dtype, np.complexfloating)
    ):
        raise ValueError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    finite = np.isfinite(arr)
    if not finite.all():
        raise ValueError(f"{name} must be finite, got {int((~finite).sum())} NaN/inf")
    return arr


def _as_sample(values: object, name: str, *, min_size: int) -> np.ndarray:
    """Return ``values`` as a finite 1-D float64 array with at least ``min_size`` elements."""
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size < min_size:
        raise ValueError(f"{name} needs at least {min_size} element(s), got {arr.size}")
    return _as_real_array(arr, name).astype(np.float64, copy=False)


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


def _auroc_from_grouped_counts(
    count_a: np.ndarray, count_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """AUROC per row from per-group counts (groups ascending along the last axis), counting
    same-group pairs 1/2, and the share of pairs that fall in the same group.

    Uses 2*U = sum_k a_k * (2 * B_below_k + b_k): exact in integers for integer counts.
    """
    below_b = np.cumsum(count_b, axis=-1) - count_b
    twice_u = np.sum(count_a * (2 * below_b + count_b), axis=-1)
    same_group = np.sum(count_a * count_b, axis=-1)
    pairs = count_a.sum(axis=-1).astype(np.float64) * count_b.sum(axis=-1).astype(np.float64)
    return twice_u.astype(np.float64) / (2.0 * pairs), same_group.astype(np.float64) / pairs


def _grouped_counts(scores_a: object, scores_b: object) -> tuple[np.ndarray, np.ndarray]:
    """How many scores of A and of B take each distinct value (ascending): ties share a group."""
    a = _as_sample(scores_a, "scores_a", min_size=1)
    b = _as_sample(scores_b, "scores_b", min_size=1)
    _, inverse = np.unique(np.concatenate([a, b]), return_inverse=True)
    groups = int(inverse.max()) + 1
    count_a = np.bincount(inverse[: a.size], minlength=groups)
    count_b = np.bincount(inverse[a.size :], minlength=groups)
    return count_a, count_b


def auroc(scores_a: object, scores_b: object) -> float:
    """P(random A score > random B score) + 0.5 * P(tie): the Mann-Whitney U / (n_a n_b).

    Equals ``sklearn.metrics.roc_auc_score`` with A labelled 1. Ties are grouped by sorting
    the unique values (O(n log n)), and U is accumulated in integers so there is no rank
    round-off. For many hypotheses at once use ``auroc_many``.

    Examples
    --------
    >>> auroc([0.9, 0.8, 0.4], [0.1, 0.5])
    0.8333333333333334
    >>> auroc([0.5], [0.5])  # a tie counts one half
    0.5
    """
    count_a, count_b = _grouped_counts(scores_a, scores_b)
    return float(_auroc_from_grouped_counts(count_a, count_b)[0])


def _as_float32_scores(values: object, name: str, axis: int) -> np.ndarray:
    """A finite 2-D float32 array; other dtypes only if float32 holds them exactly."""
    arr = _as_real_array(values, name)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D (samples x hypotheses), got shape {arr.shape}")
    if arr.shape[axis] < 1 or arr.shape[1 - axis] < 1:
        raise ValueError(f"{name} needs at least one sample and one hypothesis, got {arr.shape}")
    if arr.dtype == np.float32:
        return arr
    converted = arr.astype(np.float32)
    if not np.array_equal(converted, arr):
        raise ValueError(
            f"{name} must be float32 or exactly representable in float32 (the dtype scores are "
            f"kept in), got {arr.dtype} values that would round; use auroc() per column instead"
        )
    return converted


def auroc_many(scores_a: object, scores_b: object, *, axis: int = 0) -> np.ndarray:
    """Exact AUROC of every hypothesis at once, each equal to ``auroc`` of its two slices.

    ``scores_a`` (n_a, H) and ``scores_b`` (n_b, H) hold float32 similarities with the samples
    along ``axis`` (0: one column per hypothesis; 1: one row, the faster layout). Every score
    becomes one integer key (order-preserving float32 bits, then the set label), so one sort
    per hypothesis orders the values of both sets with A before B inside ties; U then follows
    from the positions of the B scores and the sizes of the A/B tie groups, all in integers.
    Hypotheses are processed in blocks (bounded temporaries), sorted in a few threads.

    Examples
    --------
    >>> a = np.array([[0.9, 0.1], [0.8, 0.2], [0.4, 0.3]], dtype=np.float32)
    >>> b = np.array([[0.1, 0.9], [0.5, 0.2]], dtype=np.float32)
    >>> auroc_many(a, b).round(4).tolist()
    [0.8333, 0.25]
    >>> auroc_many(a.T, b.T, axis=1).tolist() == auroc_many(a, b).tolist()
    True
    """
    if axis not in (0, 1):
        raise ValueError(f"axis must be 0 or 1, got {axis!r}")
    a = _as_float32_scores(scores_a, "scores_a", axis)
    b = _as_float32_scores(scores_b, "scores_b", axis)
    if a.shape[1 - axis] != b.shape[1 - axis]:
        raise ValueError(
            f"scores_a and scores_b must score the same hypotheses, got {a.shape[1 - axis]} "
            f"and {b.shape[1 - axis]}"
        )
    return _auroc_rows(a if axis == 1 else a.T, b if axis == 1 else b.T)


def _auroc_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``auroc_many`` on validated float32 (H, n_a) and (H, n_b) arrays (any strides)."""
    return _exact_rank_sums(a, b, with_test=False)[0]


def _auroc_rows_with_test(
    a: np.ndarray, b: np.ndarray, *, with_test: bool = True
) -> tuple[np.ndarray, AurocTest | None]:
    """Exact AUROCs and, from the same sorted keys, the ``AurocTest`` of every row."""
    auc, sums = _exact_rank_sums(a, b, with_test=with_test)
    return auc, (None if sums is None else sums.test(auc, a.shape[1], b.shape[1]))


@dataclass(frozen=True)
class RankSums:
    """What the tests of AUROCs need besides them, per row: Mann-Whitney's U, DeLong's
    standard error and the tie term (sum over tie groups of t^3 - t). They take the one sort
    per row; the p-values that follow (``test``) are a few array operations, but need
    scipy.special, which the workers that sort need not import."""

    u: np.ndarray
    se: np.ndarray
    tie_term: np.ndarray

    def test(
        self, auroc: np.ndarray, n_a: np.ndarray | float, n_b: np.ndarray | float
    ) -> AurocTest:
        """The ``AurocTest`` of rows of ``n_a`` A and ``n_b`` B scores."""
        p_greater, p_less = _mann_whitney_p(self.u, n_a, n_b, self.tie_term)
        return AurocTest(auroc, p_greater, p_less, self.se)

    @staticmethod
    def concat(parts: list[RankSums]) -> RankSums:
        """The sums of consecutive row slices, in order."""
        return RankSums(
            np.concatenate([p.u for p in parts]),
            np.concatenate([p.se for p in parts]),
            np.concatenate([p.tie_term for p in parts]),
        )


def _exact_rank_sums(
    a: np.ndarray, b: np.ndarray, *, with_test: bool = True
) -> tuple[np.ndarray, RankSums | None]:
    """Exact AUROCs and, from the same sorted keys, the ``RankSums`` of every row.

    Each thread takes every ``threads``-th block of rows and keeps its own ``_Scratch``, so
    the block-sized temporaries are allocated once per thread, not once per block.
    """
    h, n = a.shape[0], a.shape[1] + b.shape[1]
    per_block = max(1, _BLOCK_KEYS // n)
    starts = range(0, h, per_block)
    out = np.empty(h, dtype=np.float64)
    tests = np.empty((3, h), dtype=np.float64)
    threads = min(len(starts), _MAX_THREADS, _thread_budget())

    def run(first: int) -> None:
        scratch = _Scratch()
        for start in starts[first::threads]:
            stop = min(h, start + per_block)
            keys = _sorted_keys(a[start:stop], b[start:stop], scratch)
            out[start:stop], test = _statistics_of_keys(
                keys, a.shape[1], b.shape[1], with_test, scratch
            )
            if test is not None:
                tests[:, start:stop] = test

    if threads <= 1:
        run(0)
    else:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(run, range(threads)))
    return out, (RankSums(*tests) if with_test else None)


def _thread_budget() -> int:
    """Threads this process should sort in: its CPUs, or OMP_NUM_THREADS where set (Ray sets
    it to a task's CPU count: tasks that already share the cores gain nothing from more)."""
    cpus = os.cpu_count() or 1
    try:
        return max(1, min(cpus, int(os.environ.get("OMP_NUM_THREADS", cpus))))
    except ValueError:  # not a number: ignored, as BLAS libraries ignore it
        return cpus


class _Scratch:
    """Buffers that one thread reuses from block to block: a fresh block-sized array costs a
    page fault per 4 KiB page on first touch, as much as the pass that fills it."""

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised C-contiguous ``shape`` array, the same memory on every call."""
        size = math.prod(shape)
        buffer = self._buffers.get(name)
        if buffer is None or buffer.dtype != dtype or buffer.size < size:
            buffer = self._buffers[name] = np.empty(size, dtype)
        return buffer[:size].reshape(shape)


# Order-preserving bits of a float32: negative values flip every bit, the others the sign bit.
# Cosine similarities lie in [-1, 1], whose keys span < 2**31 values: with the set label they
# fit 32-bit keys, which sort twice as fast as 64-bit ones (used for any other range).
_KEY_OF_MINUS_ONE = np.uint32(0x407FFFFF)
_KEY_OF_ONE = np.uint32(0xBF800000)


def _order_bits(values: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """uint32 keys (in place over ``values``) that sort like the float32 values they replace;
    ``scratch``: an int32 array of the same shape to use as the temporary."""
    bits = values.view(np.int32)
    flip = np.right_shift(bits, 31, out=scratch)
    flip |= np.int32(-(2**31))
    bits ^= flip
    return bits.view(np.uint32)


def _sorted_keys(a: np.ndarray, b: np.ndarray, scratch: _Scratch | None = None) -> np.ndarray:
    """(rows, n_a + n_b) keys sorted per row: float32 order << 1 | is_b, so ties put A first.

    -0.0 becomes +0.0 first so that the two zeros tie, as they compare equal. The keys live
    in ``scratch`` (valid until its next use) when given.
    """
    scratch = scratch or _Scratch()
    n_a = a.shape[1]
    shape = (a.shape[0], n_a + b.shape[1])
    values = scratch.get("keys", shape, np.float32)
    np.add(a, np.float32(0.0), out=values[:, :n_a])
    np.add(b, np.float32(0.0), out=values[:, n_a:])
    keys = _order_bits(values, scratch.get("work4", shape, np.uint32).view(np.int32))
    keys -= _KEY_OF_MINUS_ONE  # keys below -1 wrap around: one max() checks the range
    if keys.max() > _KEY_OF_ONE - _KEY_OF_MINUS_ONE:
        keys += _KEY_OF_MINUS_ONE
        keys = keys.astype(np.uint64)
    keys <<= keys.dtype.type(1)
    keys[:, n_a:] |= keys.dtype.type(1)
    keys.sort(axis=1)
    return keys


def _statistics_of_keys(
    keys: np.ndarray, n_a: int, n_b: int, with_test: bool, scratch: _Scratch | None = None
) -> tuple[np.ndarray, np.ndarray | None]:
    """Exact AUROC of each row of one block of sorted keys (see ``auroc_many``) and, with
    ``with_test``, its (u, se, tie_term) stacked as (3, rows); see ``RankSums``.

    Array passes over the block, no Python per row: A precedes B inside ties, so the k-th A
    of a row, at position p_k, has exactly p_k - k B scores strictly below it. Those counts
    give U and both DeLong sums as if nothing tied; the few tie groups then correct them.
    Block-sized temporaries come from ``scratch`` (see ``_Scratch``).
    """
    scratch = scratch or _Scratch()
    rows, n = keys.shape
    one = keys.dtype.type(1)
    flat = keys.reshape(-1)
    work = scratch.get(f"work{keys.dtype.itemsize}", (rows * n,), keys.dtype)
    mask = scratch.get("mask", (rows * n,), np.bool_)
    np.equal(np.bitwise_and(flat, one, out=work), 0, out=mask)
    flat_a = np.flatnonzero(mask)  # ascending, n_a per row
    ties = _tie_groups(flat, n, flat_a, n_a, work, mask)
    below_b = flat_a.reshape(rows, n_a)  # becomes, in place, the B scores strictly below
    below_b -= np.arange(n_a)  # each A score (ascending per row): its position minus k
    below_b -= (np.arange(rows) * n)[:, None]
    tied = np.zeros(rows, np.int64)  # (A, B) pairs with equal scores
    np.add.at(tied, ties.row, ties.a * ties.b)
    twice_u = 2 * below_b.sum(axis=1) + tied
    auc = twice_u / (2.0 * n_a * n_b)
    if not with_test:
        return auc, None
    # DeLong: sum over A of (B below + half the tied B)^2, and over B of (A above + half the
    # tied A)^2; the B sum follows from the A positions (summation by parts), as
    # sum_k gap_k (n_a - k)^2 = sum_k below_b_k (2 (n_a - k) - 1).
    counts = scratch.get("counts", below_b.shape, np.float64)
    np.copyto(counts, below_b)
    q_a = np.einsum("ij,ij->i", counts, counts)
    # einsum, not BLAS: a gemv here costs ~8x more (threads and all, for a single pass).
    q_b = np.einsum("ij,j->i", counts, 2.0 * (n_a - np.arange(n_a, dtype=np.float64)) - 1.0)
    a, b = ties.a.astype(np.float64), ties.b.astype(np.float64)
    above = n_a - ties.a_before - a  # A above the group, for each of its B scores
    q_a += np.bincount(ties.row, a * (ties.b_before * b + 0.25 * b * b), rows)
    q_b += np.bincount(ties.row, b * (above * a + 0.25 * a * a), rows)
    size = a + b
    tie_term = np.bincount(ties.row, size**3 - size, rows)
    with np.errstate(divide="ignore", invalid="ignore"):
        s10 = (q_a / float(n_b) ** 2 - n_a * auc**2) / (n_a - 1)
        s01 = (q_b / float(n_a) ** 2 - n_b * auc**2) / (n_b - 1)
        se = np.sqrt(np.maximum(s10 / n_a + s01 / n_b, 0.0))
    return auc, np.stack([twice_u / 2.0, se, tie_term])


@dataclass(frozen=True)
class _TieGroups:
    """Runs of equal scores (size >= 2) in sorted keys: row, A/B counts, and the A and B
    scores strictly below the run in its row."""

    row: np.ndarray
    a: np.ndarray
    b: np.ndarray
    a_before: np.ndarray
    b_before: np.ndarray


def _tie_groups(
    flat: np.ndarray,
    n: int,
    flat_a: np.ndarray,
    n_a: int,
    work: np.ndarray | None = None,
    mask: np.ndarray | None = None,
) -> _TieGroups:
    """Tie groups of sorted keys, rows of ``n`` laid end to end in ``flat``; ``flat_a``: flat
    positions of the A keys (ascending). ``work``/``mask``: scratch as large as ``flat``.

    Equal scores differ at most in the set bit (XOR <= 1); float32 scores of 10^5 images
    tie in a few hundred places per row, so the groups are handled as short flat arrays.
    """
    one = flat.dtype.type(1)
    pairs = flat.size - 1
    step = np.bitwise_xor(flat[1:], flat[:-1], out=None if work is None else work[:pairs])
    first = np.flatnonzero(np.less_equal(step, one, out=None if mask is None else mask[:pairs]))
    row, col = np.divmod(first, n)
    inside = col != n - 1  # a pair across two rows is no tie
    first, row, col = first[inside], row[inside], col[inside]  # key first + 1 ties key first
    opens = np.ones(first.size, dtype=bool)
    opens[1:] = first[1:] != first[:-1] + 1  # runs never cross rows: see ``inside``
    group = np.cumsum(opens) - 1
    start = first[opens]
    size = np.bincount(group, minlength=start.size) + 1
    b = (flat[start] & one).astype(np.int64)
    b += np.bincount(group, (flat[first + 1] & one).astype(np.int64), start.size).astype(np.int64)
    g_row = row[opens]
    a_before = np.searchsorted(flat_a, start) - g_row * n_a
    return _TieGroups(g_row, size - b, b, a_before, col[opens] - a_before)


def _mann_whitney_p(
    u: np.ndarray, n_a: np.ndarray | float, n_b: np.ndarray | float, tie_term: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One-sided p-values of U (A over B) and of B over A: normal approximation with tie
    and continuity correction, as ``scipy.stats.mannwhitneyu(method="asymptotic")``.
    ``tie_term``: sum over tie groups of t^3 - t."""
    with np.errstate(divide="ignore", invalid="ignore"):
        n = n_a + n_b
        sigma = np.sqrt(n_a * n_b / 12.0 * ((n + 1.0) - tie_term / (n * (n - 1.0))))
        mu = n_a * n_b / 2.0
        # All scores tied: sigma = 0, z = -inf, p = 1 (no evidence either way), as scipy.
        p_greater = _special().ndtr(-((u - mu - 0.5) / sigma))
        p_less = _special().ndtr(-((mu - u - 0.5) / sigma))
    return np.clip(p_greater, 0, 1), np.clip(p_less, 0, 1)


@dataclass(frozen=True)
class AurocTest:
    """AUROC of A over B with its one-sided tests and standard error (floats or (H,) arrays).

    ``p_greater`` tests "A scores higher" (AUROC > 0.5) and ``p_less`` "B scores higher": the
    Mann-Whitney U test, whose statistic *is* the AUROC (U / (n_a n_b)), so the p-value always
    agrees with the ranking. ``se`` is DeLong's standard error of the AUROC.
    """

    auroc: float | np.ndarray
    p_greater: float | np.ndarray
    p_less: float | np.ndarray
    se: float | np.ndarray


def _test_from_groups(
    count_a: np.ndarray, count_b: np.ndarray, row: np.ndarray, rows: int
) -> AurocTest:
    """``AurocTest`` per row from flat per-group counts (groups ascending within each row)."""
    auc, sums, n_a, n_b = _rank_sums_from_groups(count_a, count_b, row, rows)
    return sums.test(auc, n_a, n_b)


def _rank_sums_from_groups(
    count_a: np.ndarray, count_b: np.ndarray, row: np.ndarray, rows: int
) -> tuple[np.ndarray, RankSums, np.ndarray, np.ndarray]:
    """AUROC, ``RankSums``, n_a and n_b per row from flat per-group counts (groups ascending
    within each row).

    Mann-Whitney: normal approximation with tie correction and continuity correction, as
    ``scipy.stats.mannwhitneyu(method="asymptotic")``. DeLong: the AUROC's variance is
    var(V10) / n_a + var(V01) / n_b, where an A score's placement V10 is the share of B scores
    below it (ties count 1/2) and a B score's V01 the share of A scores above it.
    """
    a = count_a.astype(np.float64)
    b = count_b.astype(np.float64)
    n_a, n_b = np.bincount(row, a, rows), np.bincount(row, b, rows)
    first = np.searchsorted(row, np.arange(rows))
    below_a, below_b = np.cumsum(a) - a, np.cumsum(b) - b
    below_a -= below_a[first][row]
    below_b -= below_b[first][row]
    u = np.bincount(row, a * (below_b + 0.5 * b), rows)  # Mann-Whitney U of A
    auc = u / (n_a * n_b)
    v10 = (below_b + 0.5 * b) / n_b[row]
    v01 = (n_a[row] - below_a - 0.5 * a) / n_a[row]
    with np.errstate(divide="ignore", invalid="ignore"):
        s10 = (np.bincount(row, a * v10**2, rows) - n_a * auc**2) / (n_a - 1)
        s01 = (np.bincount(row, b * v01**2, rows) - n_b * auc**2) / (n_b - 1)
        se = np.sqrt(np.maximum(s10 / n_a + s01 / n_b, 0.0))
    tie_term = np.bincount(row, (a + b) ** 3 - (a + b), rows)
    return auc, RankSums(u, se, tie_term), n_a, n_b


def _scalar_test(test: AurocTest) -> AurocTest:
    return AurocTest(*(float(np.asarray(v).reshape(-1)[0]) for v in dataclasses.astuple(test)))


def auroc_test(scores_a: object, scores_b: object) -> AurocTest:
    """AUROC of A over B, one-sided Mann-Whitney p-values in both directions, DeLong's SE.

    ``p_greater`` equals ``scipy.stats.mannwhitneyu(a, b, alternative="greater",
    method="asymptotic").pvalue`` (``p_less``: ``alternative="less"``).

    Examples
    --------
    >>> test = auroc_test([0.9, 0.8, 0.7, 0.6], [0.5, 0.65, 0.1, 0.2])
    >>> test.auroc, round(test.p_greater, 4), round(test.p_less, 4), round(test.se, 4)
    (0.9375, 0.0303, 0.9848, 0.0884)
    """
    count_a, count_b = _grouped_counts(scores_a, scores_b)
    zeros = np.zeros(count_a.size, np.int64)
    return _scalar_test(_test_from_groups(count_a, count_b, zeros, 1))


def auroc_test_from_histograms(hist_a: object, hist_b: object) -> AurocTest:
    """``auroc_test`` of binned scores: scores sharing a bin count as tied, the convention of
    ``auroc_from_histograms`` (whose estimate is this ``auroc``). Past ``rank.exact_cap`` the
    partials hold only histograms, so p-values and the CI come from here; with fine bins
    (2048 over [-1, 1]) the binning moves them far less than their sampling error at that size.
    Bins lie along the last axis: (H, bins) inputs give (H,) arrays, 1-D inputs floats.

    Examples
    --------
    >>> test = auroc_test_from_histograms([0, 1, 3], [2, 1, 0])
    >>> round(test.auroc, 4), round(test.p_greater, 4)
    (0.9583, 0.0307)
    """
    a = _as_histograms(hist_a, "hist_a")
    auc, sums, n_a, n_b = histogram_rank_sums(hist_a, hist_b)
    test = sums.test(auc, n_a, n_b)
    return _scalar_test(test) if a.ndim == 1 else test


def histogram_rank_sums(
    hist_a: object, hist_b: object
) -> tuple[np.ndarray, RankSums, np.ndarray, np.ndarray]:
    """AUROC, ``RankSums``, n_a and n_b per histogram (bins along the last axis, flattened
    to rows) of ``auroc_test_from_histograms``: all but its p-values (no scipy)."""
    a = _as_histograms(hist_a, "hist_a")
    b = _as_histograms(hist_b, "hist_b")
    if a.shape != b.shape:
        raise ValueError(f"hist_a and hist_b must share bins, got shapes {a.shape} and {b.shape}")
    rows = int(np.prod(a.shape[:-1], dtype=np.int64))
    row = np.repeat(np.arange(rows), a.shape[-1])
    return _rank_sums_from_groups(a.reshape(-1), b.reshape(-1), row, rows)


def auroc_ci(
    auroc: float | np.ndarray, se: float | np.ndarray, *, level: float = 0.95
) -> tuple[np.ndarray, np.ndarray]:
    """Two-sided ``level`` confidence interval of an AUROC from its DeLong standard error
    (normal approximation, clipped to [0, 1]).

    Examples
    --------
    >>> low, high = auroc_ci(0.8, 0.05)
    >>> round(float(low), 4), round(float(high), 4)
    (0.702, 0.898)
    """
    level = _as_finite(level, "level")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1), got {level}")
    half = _special().ndtri(0.5 + level / 2.0) * np.asarray(se, np.float64)
    centre = np.asarray(auroc, np.float64)
    return np.clip(centre - half, 0.0, 1.0), np.clip(centre + half, 0.0, 1.0)


def _welch(
    n_a: object, mean_a: object, var_a: object, n_b: object, mean_b: object, var_b: object
) -> tuple[np.ndarray, np.ndarray]:
    """(t, two-sided p) of Welch's test for arrays of validated moments (broadcast together):
    ``scipy.stats.ttest_ind_from_stats`` with ``equal_var=False``, which takes deviations."""
    # Imported here: scipy.stats takes ~0.6 s to import, and the score stage's workers, which
    # only build partials, never need it.
    from scipy.stats import ttest_ind_from_stats

    with np.errstate(divide="ignore", invalid="ignore"):
        result = ttest_ind_from_stats(
            np.asarray(mean_a, np.float64),
            np.sqrt(np.asarray(var_a, np.float64)),
            np.asarray(n_a, np.float64),
            np.asarray(mean_b, np.float64),
            np.sqrt(np.asarray(var_b, np.float64)),
            np.asarray(n_b, np.float64),
            equal_var=False,
        )
    return np.asarray(result.statistic, np.float64), np.asarray(result.pvalue, np.float64)


def welch_t_from_moments(
    n_a: int, mean_a: float, var_a: float, n_b: int, mean_b: float, var_b: float
) -> TTest:
    """Welch's unequal-variance two-sided t-test from counts, means and unbiased variances.

    The mergeable partials keep moments, not samples, so this is scipy's
    ``ttest_ind_from_stats(..., equal_var=False)`` behind visdiff's input checks. It equals
    ``scipy.stats.ttest_ind(a, b, equal_var=False)`` on the samples, including the degenerate
    case of two zero variances: different means give t = +/-inf with p = 0.0, equal means nan.

    Examples
    --------
    >>> test = welch_t_from_moments(10, 1.0, 1.0, 10, 0.0, 1.0)
    >>> round(test.t_stat, 4), round(test.p_value, 4)
    (2.2361, 0.0382)
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
    t_stat, p_value = _welch(n_a, mean_a, var_a, n_b, mean_b, var_b)
    return TTest(t_stat=float(t_stat), p_value=float(p_value))


def _correct_delta_from_counts(
    above_a: np.ndarray, n_a: int, above_b: np.ndarray, n_b: int
) -> np.ndarray:
    """Share of A above the threshold minus share of B, from counts (works on arrays)."""
    return np.asarray(above_a) / n_a - np.asarray(above_b) / n_b


def correct_delta(scores_a: object, scores_b: object, *, threshold: float) -> float:
    """Fraction of A scores > ``threshold`` minus fraction of B scores > ``threshold``.

    VisDiff's thresholded "correct" difference: how much more often the hypothesis fires on A.

    Examples
    --------
    >>> correct_delta([0.1, 0.4, 0.5, 0.7], [0.2, 0.6], threshold=0.3)
    0.25
    """
    a = _as_sample(scores_a, "scores_a", min_size=1)
    b = _as_sample(scores_b, "scores_b", min_size=1)
    threshold = _as_finite(threshold, "threshold")
    above_a, above_b = int(np.sum(a > threshold)), int(np.sum(b > threshold))
    return float(_correct_delta_from_counts(above_a, a.size, above_b, b.size))


def _as_histograms(values: object, name: str) -> np.ndarray:
    """Counts >= 0 along the last axis (>= 1 bin), every histogram holding a positive total."""
    arr = _as_real_array(values, name)
    if arr.ndim < 1 or arr.shape[-1] < 1:
        raise ValueError(f"{name} must hold at least one bin, got shape {arr.shape}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must hold counts >= 0, got min {arr.min()}")
    totals = arr.sum(axis=-1)
    if np.any(totals <= 0):
        raise ValueError(f"{name} must hold at least one count, got total {np.min(totals)}")
    if np.issubdtype(arr.dtype, np.integer):
        return arr.astype(np.int64, copy=False)
    return arr.astype(np.float64, copy=False)


def auroc_from_histograms(
    hist_a: object, hist_b: object
) -> tuple[float, float] | tuple[np.ndarray, np.ndarray]:
    """AUROC estimate from two histograms over the same ascending bins, and its error bound.

    A pair (a, b) in different bins is ordered exactly (the bins do not overlap), so only
    same-bin pairs are uncertain: the estimate counts each as 1/2 while the truth lies in
    [0, 1]. With p = counts / total, the error is at most 0.5 * sum_k p_a[k] * p_b[k], and the
    bound is attained (all A above all B, or all below, inside every shared bin), so it is
    the exact worst case. Integer counts give an exact estimate (no float accumulation).
    Bins lie along the last axis: (H, bins) inputs give (H,) arrays, 1-D inputs two floats.

    Examples
    --------
    >>> auroc_from_histograms([0, 1, 3], [2, 1, 0])  # one shared bin holds 1 A and 1 B
    (0.9583333333333334, 0.041666666666666664)
    >>> est, bound = auroc_from_histograms([[0, 1, 3], [4, 0, 0]], [[2, 1, 0], [0, 0, 4]])
    >>> est.tolist(), bound.tolist()
    ([0.9583333333333334, 0.0], [0.041666666666666664, 0.0])
    """
    a = _as_histograms(hist_a, "hist_a")
    b = _as_histograms(hist_b, "hist_b")
    if a.shape != b.shape:
        raise ValueError(f"hist_a and hist_b must share bins, got shapes {a.shape} and {b.shape}")
    estimate, same_bin_share = _auroc_from_grouped_counts(a, b)
    if a.ndim == 1:
        return float(estimate), 0.5 * float(same_bin_share)
    return estimate, 0.5 * same_bin_share
