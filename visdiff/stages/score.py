"""Score stage: similarities of one block's images to every hypothesis, reduced on the spot to
mergeable partial statistics, so per-image scores never travel to the driver."""

from __future__ import annotations

import numpy as np

from visdiff import schema
from visdiff.rank.partials import ScorePartials


class BlockScorer:
    """`__call__` turns a batch of embedded images into a one-row batch holding a partial."""

    def __init__(
        self, text_embeddings: np.ndarray, *, threshold: float, num_bins: int, exact_cap: int
    ) -> None:
        self.text_embeddings = np.asarray(text_embeddings, dtype=np.float32)
        self.threshold = threshold
        self.num_bins = num_bins
        self.exact_cap = exact_cap

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        ok = np.asarray([err == "" for err in batch[schema.ERROR]], dtype=bool)
        if ok.any():
            embeddings = np.stack(
                [np.asarray(e, dtype=np.float32) for e in batch[schema.EMBEDDING][ok]]
            )
            scores = embeddings @ self.text_embeddings.T
            is_a = np.asarray(batch[schema.SET])[ok] == schema.SET_A
            partial = ScorePartials.from_scores(
                scores,
                is_a,
                threshold=self.threshold,
                num_bins=self.num_bins,
                exact_cap=self.exact_cap,
            )
        else:
            partial = ScorePartials.empty(
                self.text_embeddings.shape[0],
                threshold=self.threshold,
                num_bins=self.num_bins,
                exact_cap=self.exact_cap,
            )
        return partial.to_row()


def error_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps only the rows that failed upstream (for the skipped-images list in stats.json)."""
    errors = np.asarray(batch[schema.ERROR], dtype=object)
    bad = np.asarray([err != "" for err in errors], dtype=bool)
    return {
        schema.ID: np.asarray(batch[schema.ID], dtype=object)[bad],
        schema.SET: np.asarray(batch[schema.SET], dtype=object)[bad],
        schema.URI: np.asarray(batch[schema.URI], dtype=object)[bad],
        schema.ERROR: errors[bad],
    }


def block_counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per block: rows per set, cache hits and failures (merged on the driver)."""
    sets = np.asarray(batch[schema.SET], dtype=object)
    failed = np.asarray([err != "" for err in batch[schema.ERROR]], dtype=bool)
    from_cache = np.asarray(batch.get(schema.FROM_CACHE, np.zeros(len(sets), dtype=bool)))
    counts = {f"rows_{name}": np.array([int(np.sum(sets == name))]) for name in schema.SETS}
    counts["from_cache"] = np.array([int(np.sum(from_cache))])
    counts["failed"] = np.array([int(np.sum(failed))])
    return counts
