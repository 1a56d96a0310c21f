"""CLIP ranker on Ray Data: embed every (capped) image of both sets in an actor pool, embed the
hypotheses, score each block where its embeddings are and merge the partial statistics."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig, RankConfig
from visdiff.rank.partials import HypothesisStats, ScorePartials, rank_order
from visdiff.sources.records import ImageRecord

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 2048
EXACT_CAP = 200_000  # images (both sets) kept exactly; beyond it AUROC uses histograms


@dataclass
class EmbeddedImages:
    """A materialised Ray Dataset of embedded images plus what the embedding stage skipped."""

    dataset: Any  # ray.data.MaterializedDataset with id, set, uri, error, embedding
    num_rows: int
    skipped: list[dict[str, str]] = field(default_factory=list)


def _num_blocks(n: int, requested: int) -> int:
    if requested > 0:
        return requested
    return max(2, min(256, n // 128))


def _actor_pool(size: int) -> Any:
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size)


def embed_images(
    records: list[ImageRecord], clip_cfg: ClipConfig, *, num_blocks: int = 0
) -> EmbeddedImages:
    """Decode + preprocess in tasks, CLIP forward in an actor pool; failed rows are kept and
    carry their error so that nothing is silently dropped."""
    import ray.data

    from visdiff.stages.embed import ClipImageEmbedder, ClipPreprocessor

    items = [r.to_dict() for r in records]
    ds = ray.data.from_items(items, override_num_blocks=_num_blocks(len(items), num_blocks))
    ds = ds.map_batches(
        ClipPreprocessor,
        fn_constructor_kwargs={"clip_cfg": clip_cfg},
        compute=_actor_pool(1),
        batch_size=clip_cfg.batch_size,
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        ClipImageEmbedder,
        fn_constructor_kwargs={"clip_cfg": clip_cfg},
        compute=_actor_pool(clip_cfg.num_actors),
        batch_size=clip_cfg.batch_size,
        num_cpus=clip_cfg.num_cpus,
        num_gpus=clip_cfg.num_gpus or None,
    )
    materialized = ds.materialize()
    skipped = _collect_errors(materialized)
    return EmbeddedImages(materialized, materialized.count(), skipped)


def _collect_errors(ds: Any) -> list[dict[str, str]]:
    from visdiff.stages.score import error_rows

    rows = ds.map_batches(error_rows, batch_format="numpy").take_all()
    return [
        {"id": r[schema.ID], "set": r[schema.SET], "uri": r[schema.URI], "reason": r[schema.ERROR]}
        for r in rows
    ]


def embed_texts(texts: list[str], clip_cfg: ClipConfig) -> np.ndarray:
    """Text embeddings run in a Ray actor too: the driver may be a small CPU head node."""
    import ray.data

    from visdiff.stages.embed import ClipTextEmbedder

    ds = ray.data.from_items([{"text": t} for t in texts], override_num_blocks=1)
    ds = ds.map_batches(
        ClipTextEmbedder,
        fn_constructor_kwargs={"clip_cfg": clip_cfg},
        compute=_actor_pool(1),
        batch_size=max(1, clip_cfg.batch_size),
        num_cpus=clip_cfg.num_cpus,
        num_gpus=clip_cfg.num_gpus or None,
    )
    by_text = {
        row["text"]: np.asarray(row[schema.EMBEDDING], dtype=np.float32) for row in ds.take_all()
    }
    return np.stack([by_text[t] for t in texts])


def score_hypotheses(
    embedded: EmbeddedImages,
    hypotheses: list[str],
    text_embeddings: np.ndarray,
    rank_cfg: RankConfig,
) -> list[HypothesisStats]:
    """Scores block by block and merges partials one at a time: driver memory stays flat."""
    from visdiff.stages.score import BlockScorer

    partial_rows = embedded.dataset.map_batches(
        BlockScorer,
        fn_constructor_kwargs={
            "text_embeddings": text_embeddings,
            "threshold": rank_cfg.classify_threshold,
            "num_bins": HISTOGRAM_BINS,
            "exact_cap": EXACT_CAP,
        },
        compute=_actor_pool(1),
        batch_size=None,
        num_cpus=0.5,
    )
    merged = ScorePartials.empty(
        len(hypotheses),
        threshold=rank_cfg.classify_threshold,
        num_bins=HISTOGRAM_BINS,
        exact_cap=EXACT_CAP,
    )
    for batch in partial_rows.iter_batches(batch_size=1, batch_format="numpy"):
        merged = merged.merge(ScorePartials.from_row(batch))
    return rank_order(merged.finalize(hypotheses))
