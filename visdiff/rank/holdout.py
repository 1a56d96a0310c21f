"""Held-out testing: the images shown to the proposer are left out of the significance figures.

A proposer that reads captions of some images and proposes what tells them apart will find
differences in those very images even when the sets do not differ (selection bias), so testing
its hypotheses on them gives p-values that are too small. The run therefore keeps two partials:
one of every scored image (the ranking statistics: AUROC, means, ...) and one of the images the
proposer never saw (p/q-values, the AUROC interval and ``significant``). Both are plain
``ScorePartials``, built, merged and finalized by the same code.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff.rank.partials import HypothesisStats, RankedPartials, ScorePartials, merge_all

__all__ = ["MIN_TESTED", "ScoredHypotheses", "SplitPartials"]

MIN_TESTED = 2  # images per set the tests need; fewer held out: test on every image instead
_SETS = ("a", "b")


@dataclass(frozen=True)
class ScoredHypotheses:
    """What a run's scoring yields, in the order of its hypotheses (unranked)."""

    stats: list[HypothesisStats]  # every scored image: the ranking statistics
    tested: list[HypothesisStats]  # the images of the significance figures
    holdout: dict[str, Any]  # for stats.json: counts per set, and any fallback to every image


@dataclass
class SplitPartials:
    """The scoring accumulator: partials of every scored image and, with hold-out on, of the
    images not shown to the proposer (``held_out``; None when hold-out is off).

    Examples
    --------
    >>> scores = np.array([[0.9], [0.8], [0.7], [0.6], [0.3], [0.2], [0.1], [0.4]])
    >>> is_a = np.array([True] * 4 + [False] * 4)
    >>> tested = np.array([False, True, True, True, False, True, True, True])  # 2 were shown
    >>> scored = SplitPartials.from_scores(scores, is_a, tested, threshold=0.5).finalize(["h"])
    >>> scored.stats[0].n_a, scored.tested[0].n_a, scored.holdout["left_out_of_tests"]
    (4, 3, {'a': 1, 'b': 1})
    """

    # Merged per-block partials, or (hypothesis slices: rank.aggregate) already ranked ones;
    # `count` and `finalize` are all that is used of either.
    every: ScorePartials | RankedPartials
    held_out: ScorePartials | RankedPartials | None

    @classmethod
    def empty(cls, num_hypotheses: int, *, holdout: bool, **options: Any) -> SplitPartials:
        """The identity of ``merge``; ``options`` are ``ScorePartials.empty``'s."""
        every = ScorePartials.empty(num_hypotheses, **options)
        return cls(every, ScorePartials.empty(num_hypotheses, **options) if holdout else None)

    @classmethod
    def from_scores(
        cls,
        scores: np.ndarray,
        is_a: np.ndarray,
        tested: np.ndarray | None,
        *,
        expected_total: int | None = None,
        expected_tested: int | None = None,
        **options: Any,
    ) -> SplitPartials:
        """One block: ``scores`` (n, H), ``is_a`` (n,), ``tested`` (n,) True for the rows not
        shown to the proposer (None: hold-out off). ``expected_tested`` must not exceed the
        held-out total (a lower bound is right: past the cap the merge drops exact scores
        anyway); ``options`` are ``ScorePartials.from_scores``'."""
        every = ScorePartials.from_scores(scores, is_a, expected_total=expected_total, **options)
        if tested is None:
            return cls(every, None)
        tested = np.asarray(tested, dtype=bool)
        # Rows picked from the hypothesis-major layout keep it: (n_t, H) view of (H, n_t).
        picked = np.compress(tested, np.asarray(scores).T, axis=1).T
        held_out = ScorePartials.from_scores(
            picked, np.asarray(is_a)[tested], expected_total=expected_tested, **options
        )
        return cls(every, held_out)

    def merge(self, other: SplitPartials) -> SplitPartials:
        if (self.held_out is None) != (other.held_out is None):
            raise ValueError("cannot merge partials with hold-out on and off")
        held_out = None
        if self.held_out is not None and other.held_out is not None:
            held_out = self.held_out.merge(other.held_out)
        return SplitPartials(self.every.merge(other.every), held_out)

    @staticmethod
    def merge_all(parts: Iterable[SplitPartials]) -> SplitPartials:
        """``merge`` of any number at once (``partials.merge_all`` on each side): exact
        scores are concatenated once instead of once per pair."""
        parts = list(parts)
        if not parts:
            raise ValueError("parts must contain at least one SplitPartials, got none")
        if len({p.held_out is None for p in parts}) > 1:
            raise ValueError("cannot merge partials with hold-out on and off")
        every = merge_all(p.every for p in parts)
        if parts[0].held_out is None:
            return SplitPartials(every, None)
        return SplitPartials(every, merge_all(p.held_out for p in parts))

    def finalize(self, hypotheses: list[str]) -> ScoredHypotheses:
        """Statistics of every image, and of the held-out ones for the tests; when either set
        has fewer than ``MIN_TESTED`` held-out images the tests use every image (said in
        ``holdout["fallback"]``)."""
        stats = self.every.finalize(hypotheses)
        scored = _per_set(self.every.count)
        if self.held_out is None:
            return ScoredHypotheses(stats, stats, _summary(False, scored, scored, None))
        tested = _per_set(self.held_out.count)
        small = [s for s in _SETS if tested[s] < MIN_TESTED]
        if not small:
            held_out = self.held_out.finalize(hypotheses)
            return ScoredHypotheses(stats, held_out, _summary(True, scored, tested, None))
        fallback = "; ".join(
            f"set {s.upper()} has {tested[s]} image(s) not shown to the proposer" for s in small
        ) + (
            f" (the tests need {MIN_TESTED} per set): p/q-values, the AUROC interval and "
            "`significant` use every image, including those the proposer saw"
        )
        return ScoredHypotheses(stats, stats, _summary(True, scored, scored, fallback))


def _summary(
    enabled: bool, scored: dict[str, int], tested: dict[str, int], fallback: str | None
) -> dict[str, Any]:
    """stats.json's "holdout": images per set scored, left out of the tests (shown to the
    proposer) and tested, and why the tests fell back to every image, if they did."""
    return {
        "enabled": enabled,
        "scored": scored,
        "left_out_of_tests": {s: scored[s] - tested[s] for s in _SETS},
        "tested": tested,
        "fallback": fallback,
    }


def _per_set(count: np.ndarray) -> dict[str, int]:
    return {s: int(n) for s, n in zip(_SETS, count, strict=True)}
