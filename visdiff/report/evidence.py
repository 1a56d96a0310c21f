"""Evidence for each hypothesis: the images that match it best (and worst) in each set, and the
two score distributions. Pure numpy, built to be computed per block and merged: a block keeps
only its k best and k worst rows per hypothesis and set, plus score counts in fixed fine bins
over [-1, 1], so merging blocks gives exactly what one pass over every image would give and
the driver never holds per-image scores. `finalize` sorts the picks and coarsens the counts to
a few plot bins over the range the scores actually occupy."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

# Fine bins of cosine similarity over [-1, 1]: counts in them merge exactly across blocks. CLIP
# scores of one hypothesis span ~0.1, i.e. ~100 of these, enough to coarsen into PLOT_BINS.
FINE_BINS = 2048
PLOT_BINS = 24

# Picks kept per hypothesis: best- and worst-matching images of each set. A hypothesis more
# true of A is shown with top_a, top_b and bottom_b; one more true of B with the mirror.
ROLES = ("top_a", "top_b", "bottom_a", "bottom_b")
_SET_OF_ROLE = {"top_a": "a", "top_b": "b", "bottom_a": "a", "bottom_b": "b"}


@dataclass(frozen=True)
class EvidenceImage:
    id: str
    uri: str
    score: float
    thumbnail: bytes | None = None  # small JPEG, None where the image could not be read


@dataclass(frozen=True)
class HypothesisEvidence:
    hypothesis: str
    picks: dict[str, list[EvidenceImage]]  # role -> images, best first (worst first: bottom_*)
    hist_edges: list[float]  # len(hist_a) + 1 edges, shared by both sets
    hist_a: list[int]
    hist_b: list[int]

    def shown(self, direction: str | None) -> list[tuple[str, list[EvidenceImage]]]:
        """(role, images) in the order the report shows them: the images of the set the
        hypothesis is more true of first, then the other set's best and worst matches."""
        if direction == "b":
            return [(r, self.picks.get(r, [])) for r in ("top_b", "top_a", "bottom_a")]
        return [(r, self.picks.get(r, [])) for r in ("top_a", "top_b", "bottom_b")]


@dataclass
class EvidenceTable:
    rows: list[HypothesisEvidence] = field(default_factory=list)

    def by_hypothesis(self) -> dict[str, HypothesisEvidence]:
        return {r.hypothesis: r for r in self.rows}

    def uris(self) -> list[str]:
        """Every picked image's URI, once each, in a stable order."""
        seen = (img.uri for r in self.rows for imgs in r.picks.values() for img in imgs)
        return list(dict.fromkeys(u for u in seen if u))

    def with_thumbnails(self, thumbnails: dict[str, bytes | None]) -> EvidenceTable:
        def fill(images: list[EvidenceImage]) -> list[EvidenceImage]:
            return [replace(i, thumbnail=thumbnails.get(i.uri)) for i in images]

        return EvidenceTable(
            [replace(r, picks={k: fill(v) for k, v in r.picks.items()}) for r in self.rows]
        )

    def to_columns(self) -> dict[str, list[Any]]:
        """Column lists for evidence.parquet: one row per hypothesis, per role the lists
        `<role>_id`, `<role>_uri`, `<role>_score`, `<role>_thumbnail`, then the histogram."""
        columns: dict[str, list[Any]] = {"hypothesis": [r.hypothesis for r in self.rows]}
        for role in ROLES:
            for attr in ("id", "uri", "score", "thumbnail"):
                columns[f"{role}_{attr}"] = [
                    [getattr(i, attr) for i in r.picks.get(role, [])] for r in self.rows
                ]
        columns["hist_edges"] = [r.hist_edges for r in self.rows]
        columns["hist_a"] = [r.hist_a for r in self.rows]
        columns["hist_b"] = [r.hist_b for r in self.rows]
        return columns

    @classmethod
    def from_records(cls, records: list[dict[str, Any]]) -> EvidenceTable:
        """The inverse of `to_columns`, from rows (e.g. a Parquet table's `to_pylist`)."""
        rows = []
        for rec in records:
            picks = {}
            for role in ROLES:
                ids = rec.get(f"{role}_id") or []
                uris = rec.get(f"{role}_uri") or [""] * len(ids)
                scores = rec.get(f"{role}_score") or [math.nan] * len(ids)
                thumbs = rec.get(f"{role}_thumbnail") or [None] * len(ids)
                picks[role] = [
                    EvidenceImage(str(i), str(u), float(s), t)
                    for i, u, s, t in zip(ids, uris, scores, thumbs, strict=True)
                ]
            rows.append(
                HypothesisEvidence(
                    hypothesis=str(rec["hypothesis"]),
                    picks=picks,
                    hist_edges=[float(e) for e in rec.get("hist_edges") or []],
                    hist_a=[int(c) for c in rec.get("hist_a") or []],
                    hist_b=[int(c) for c in rec.get("hist_b") or []],
                )
            )
        return cls(rows)


@dataclass
class EvidencePartial:
    """What one block (or a merge of blocks) keeps: per role (H, m) scores, ids and uris of
    its m <= k picks, and (2, H, FINE_BINS) score counts for sets A and B."""

    k: int
    scores: dict[str, np.ndarray]
    ids: dict[str, np.ndarray]
    uris: dict[str, np.ndarray]
    counts: np.ndarray

    @classmethod
    def empty(cls, num_hypotheses: int, k: int) -> EvidencePartial:
        def none(dtype: Any) -> dict[str, np.ndarray]:
            return {r: np.empty((num_hypotheses, 0), dtype=dtype) for r in ROLES}

        counts = np.zeros((2, num_hypotheses, FINE_BINS), dtype=np.int64)
        return cls(k, none(np.float64), none(object), none(object), counts)

    @classmethod
    def from_scores(
        cls, scores: np.ndarray, is_a: np.ndarray, ids: np.ndarray, uris: np.ndarray, *, k: int
    ) -> EvidencePartial:
        """`scores` (n, H): one row per image; `is_a`, `ids`, `uris` (n,) describe the rows."""
        scores = np.asarray(scores, dtype=np.float64)
        is_a = np.asarray(is_a, dtype=bool)
        out = cls.empty(scores.shape[1], k)
        for set_index, in_set in enumerate((is_a, ~is_a)):
            name = "ab"[set_index]
            sub = scores[in_set]
            set_ids = np.asarray(ids, dtype=object)[in_set]
            set_uris = np.asarray(uris, dtype=object)[in_set]
            for role, sign in ((f"top_{name}", -1.0), (f"bottom_{name}", 1.0)):
                rows = _extremes(sign * sub, k)  # (H, m) row indices into sub
                out.scores[role] = np.take_along_axis(sub.T, rows, axis=1)
                out.ids[role] = set_ids[rows]
                out.uris[role] = set_uris[rows]
            out.counts[set_index] = fine_counts(sub)
        return out

    def merge(self, other: EvidencePartial) -> EvidencePartial:
        merged = EvidencePartial.empty(self.counts.shape[1], self.k)
        for role in ROLES:
            scores = np.concatenate([self.scores[role], other.scores[role]], axis=1)
            sign = -1.0 if role.startswith("top") else 1.0
            keep = _extremes((sign * scores).T, self.k)
            merged.scores[role] = np.take_along_axis(scores, keep, axis=1)
            for attr in ("ids", "uris"):
                both = np.concatenate([getattr(self, attr)[role], getattr(other, attr)[role]], 1)
                getattr(merged, attr)[role] = np.take_along_axis(both, keep, axis=1)
        merged.counts = self.counts + other.counts
        return merged

    def finalize(self, hypotheses: list[str]) -> EvidenceTable:
        """Picks sorted (best first; worst first for bottom_*, ties by id) and plot histograms."""
        rows = []
        for h, hypothesis in enumerate(hypotheses):
            picks = {}
            for role in ROLES:
                scores, ids = self.scores[role][h], self.ids[role][h]
                sign = -1.0 if role.startswith("top") else 1.0
                order = sorted(range(len(scores)), key=lambda j: (sign * scores[j], str(ids[j])))
                picks[role] = [
                    EvidenceImage(str(ids[j]), str(self.uris[role][h][j]), float(scores[j]))
                    for j in order
                ]
            edges, hist_a, hist_b = plot_histograms(self.counts[0, h], self.counts[1, h])
            rows.append(HypothesisEvidence(hypothesis, picks, edges, hist_a, hist_b))
        return EvidenceTable(rows)


def _extremes(keyed: np.ndarray, k: int) -> np.ndarray:
    """(H, m) indices of the m = min(k, n) smallest entries of each column of `keyed` (n, H)."""
    n = keyed.shape[0]
    m = min(k, n)
    if m == 0:
        return np.empty((keyed.shape[1], 0), dtype=np.intp)
    if m == n:
        return np.tile(np.arange(n), (keyed.shape[1], 1))
    return np.argpartition(keyed, m - 1, axis=0)[:m].T


def fine_counts(scores: np.ndarray) -> np.ndarray:
    """(H, FINE_BINS) counts of (n, H) scores in equal bins over [-1, 1] (outside: the ends)."""
    num_hypotheses = scores.shape[1]
    bins = np.clip(((scores + 1.0) * (FINE_BINS / 2.0)).astype(np.int64), 0, FINE_BINS - 1)
    flat = bins + np.arange(num_hypotheses) * FINE_BINS  # (n, H): one bin range per hypothesis
    counts = np.bincount(flat.ravel(), minlength=num_hypotheses * FINE_BINS)
    return counts.reshape(num_hypotheses, FINE_BINS)


def plot_histograms(
    fine_a: np.ndarray, fine_b: np.ndarray, *, num_bins: int = PLOT_BINS
) -> tuple[list[float], list[int], list[int]]:
    """Fine counts of both sets -> (edges, counts A, counts B) over the fine bins either set
    occupies, grouped into at most `num_bins` equal bins (whole fine bins, so counts stay exact)."""
    occupied = np.flatnonzero(np.asarray(fine_a) + np.asarray(fine_b))
    if occupied.size == 0:
        return [], [], []
    lo, hi = int(occupied[0]), int(occupied[-1]) + 1
    group = max(1, math.ceil((hi - lo) / num_bins))
    n = math.ceil((hi - lo) / group)
    starts = lo + group * np.arange(n)
    edges = [-1.0 + 2.0 * int(min(s, FINE_BINS)) / FINE_BINS for s in [*starts, lo + group * n]]
    return (
        edges,
        [int(c) for c in np.add.reduceat(np.asarray(fine_a)[:hi], starts)],
        [int(c) for c in np.add.reduceat(np.asarray(fine_b)[:hi], starts)],
    )
