"""Score stage: similarities of one block's images to every hypothesis, reduced on the spot to
mergeable partial statistics, so per-image scores never travel to the driver."""

from __future__ import annotations

import numpy as np

from visdiff import schema
from visdiff.rank.partials import ScorePartials


def score_block(
    batch: dict[str, np.ndarray],
    *,
    text_embeddings: np.ndarray,
    threshold: float,
    num_bins: int,
    exact_cap: int,
    expected_total: int | None = None,
) -> dict[str, np.ndarray]:
    """A batch of embedded images -> a one-row batch holding its ScorePartials.

    ``expected_total`` (images of the whole ranking) lets the block skip exact scores that
    the merge would drop anyway; see ``ScorePartials.from_scores``."""
    ok = np.asarray(batch[schema.ERROR], dtype=object) == ""
    options = {"threshold": threshold, "num_bins": num_bins, "exact_cap": exact_cap}
    if not ok.any():
        return ScorePartials.empty(text_embeddings.shape[0], **options).to_row()
    text = np.asarray(text_embeddings, dtype=np.float32)
    # (n, H) view of a hypothesis-major product: from_scores reads one row per hypothesis.
    scores = (text @ _embeddings(batch[schema.EMBEDDING], ok).T).T
    is_a = np.asarray(batch[schema.SET])[ok] == schema.SET_A
    return ScorePartials.from_scores(
        scores, is_a, expected_total=expected_total, **options
    ).to_row()


def _embeddings(column: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(n_ok, D) float32: one copy when Ray hands a 2-D tensor column, else row by row (a
    ragged object column, e.g. when some failed rows carry no vector)."""
    if isinstance(column, np.ndarray) and column.ndim == 2:
        return np.asarray(column[ok], dtype=np.float32)
    return np.stack([np.asarray(e, dtype=np.float32) for e in column[ok]])


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
