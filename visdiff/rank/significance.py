"""Ranked rows of a run: both directions, one-sided p-values, Benjamini-Hochberg q-values over
every row, DeLong confidence intervals and the ``significant`` flag.

Direction ``"a"`` asks "more true of A than of B" (AUROC of A over B), direction ``"b"`` the
reverse (AUROC of B over A = 1 - AUROC of A over B). Each hypothesis gets one row per
direction, so a hypothesis strongly true of B sits at the bottom of A's list with p close to 1
and at the top of B's list, instead of looking "significant" at the bottom. The q-values
control the false discovery rate over all 2H rows of the run. Every row stays in the output;
``significant`` marks the ones that pass, rows that do not are kept, marked false.

The significance figures (p, q, the AUROC interval, ``significant``) come from the ``tested``
statistics: with ``rank.holdout`` those of the images not shown to the proposer (see
``visdiff.rank.holdout``); the ranking statistics (AUROC, means, ...) from every image.
"""

from __future__ import annotations

from typing import Any

from scipy.stats import false_discovery_control

from visdiff.rank.partials import HypothesisStats, ranking_key
from visdiff.rank.stats import auroc_ci

__all__ = ["DIRECTIONS", "ranked_rows"]

DIRECTIONS = ("a", "b")


def ranked_rows(
    stats: list[HypothesisStats],
    *,
    alpha: float,
    ci_level: float,
    tested: list[HypothesisStats] | None = None,
) -> list[dict[str, Any]]:
    """Rows of ranked.json: direction "a" best first, then direction "b" best first.

    Statistics are oriented to the row's direction: for "b", ``auroc``, its CI, ``diff``,
    ``t_stat`` and ``correct_delta`` are those of B over A (``mean_a``/``mean_b`` stay the set
    means). ``significant`` = q_value < ``alpha`` and auroc_ci_low > 0.5. ``tested`` (same
    hypotheses, any order; None: ``stats``) gives p_value, the AUROC interval and
    ``n_a_test``/``n_b_test``: the images the test ran on.

    Examples
    --------
    >>> import numpy as np
    >>> from visdiff.rank.partials import ScorePartials
    >>> rng = np.random.default_rng(0)
    >>> scores = rng.normal(0.2, 0.05, (200, 2))
    >>> is_a = np.arange(200) < 100
    >>> scores[is_a, 0] += 0.05  # "dogs" is more true of A
    >>> stats = ScorePartials.from_scores(scores, is_a, threshold=0.3).finalize(["dogs", "cats"])
    >>> rows = ranked_rows(stats, alpha=0.05, ci_level=0.95)
    >>> [(r["direction"], r["rank"], r["hypothesis"], r["significant"]) for r in rows]
    [('a', 1, 'dogs', True), ('a', 2, 'cats', False), ('b', 1, 'cats', False), ('b', 2, 'dogs', False)]
    """
    if not stats:
        return []
    by_text = {t.hypothesis: t for t in (stats if tested is None else tested)}
    if set(by_text) != {s.hypothesis for s in stats}:
        raise ValueError("tested must hold the same hypotheses as stats")
    rows = [
        _row(s, by_text[s.hypothesis], direction, ci_level)
        for direction in DIRECTIONS
        for s in stats
    ]
    q_values = false_discovery_control([r["p_value"] for r in rows], method="bh")
    for row, q in zip(rows, q_values, strict=True):
        row["q_value"] = float(q)
        row["significant"] = bool(q < alpha and row["auroc_ci_low"] > 0.5)
    out = []
    for direction in DIRECTIONS:
        mine = [r for r in rows if r["direction"] == direction]
        mine.sort(key=lambda r: ranking_key(r["auroc"], r["t_stat"], r["hypothesis"]))
        out += [{"rank": i, **r} for i, r in enumerate(mine, start=1)]
    return out


def _row(
    s: HypothesisStats, test: HypothesisStats, direction: str, ci_level: float
) -> dict[str, Any]:
    """One row: ranking statistics from ``s`` (every image), the test's from ``test``."""
    low, high = (float(v) for v in auroc_ci(test.auroc, test.auroc_se, level=ci_level))
    sign = 1.0 if direction == "a" else -1.0
    if direction == "b":
        low, high = 1.0 - high, 1.0 - low
    return {
        "direction": direction,
        "hypothesis": s.hypothesis,
        "auroc": s.auroc if direction == "a" else 1.0 - s.auroc,
        "auroc_test": test.auroc if direction == "a" else 1.0 - test.auroc,  # the CI's AUROC
        "auroc_ci_low": low,
        "auroc_ci_high": high,
        "auroc_error_bound": s.auroc_error_bound,
        "auroc_exact": s.auroc_exact,
        "p_value": test.p_greater if direction == "a" else test.p_less,
        "q_value": None,  # over every row of the run: set by ranked_rows
        "significant": None,
        "mean_a": s.mean_a,
        "mean_b": s.mean_b,
        "diff": sign * s.diff,
        "t_stat": sign * s.t_stat,
        "correct_delta": sign * s.correct_delta,
        "n_a": s.n_a,
        "n_b": s.n_b,
        "n_a_test": test.n_a,
        "n_b_test": test.n_b,
    }
