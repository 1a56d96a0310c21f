"""CLIP ranker on Ray Data: embed every (capped) image of both sets in an actor pool, embed the
hypotheses, score each block where its embeddings are and merge the partial statistics."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig, RankConfig
from visdiff.rank.partials import HypothesisStats, ScorePartials, rank_order

log = logging.getLogger(__name__)


@dataclass
class EmbeddedImages:
    """A materialised Ray Dataset of embedded images plus what the embedding stage skipped."""

    dataset: Any  # ray.data.MaterializedDataset with id, set, uri, error, embedding, from_cache
    num_rows: int
    rows_per_set: dict[str, int] = field(default_factory=dict)
    from_cache: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


SCORE_BATCH_ROWS = 8192  # rows scored per task: fewer, fuller partials than one per small block


def _actor_pool(size: int) -> Any:
    from ray.data import ActorPoolStrategy

    return ActorPoolStrategy(size=size)


def embed_images(
    images: Any, clip_cfg: ClipConfig, *, cache_root: str | None = None
) -> EmbeddedImages:
    """Decode + preprocess (and cache lookup) in one actor pool, the CLIP forward pass in
    another; failed rows are kept and carry their error so that nothing is silently dropped.
    `images` is a Ray Dataset of image rows (see visdiff.sources.datasets)."""
    from visdiff.stages.embed import ClipImageEmbedder, ClipPreprocessor

    ds = images.map_batches(
        ClipPreprocessor,
        fn_constructor_kwargs={"clip_cfg": clip_cfg, "cache_root": cache_root},
        compute=_actor_pool(clip_cfg.num_decoders),
        batch_size=clip_cfg.batch_size,
        num_cpus=0.5,
    )
    ds = ds.map_batches(
        ClipImageEmbedder,
        fn_constructor_kwargs={"clip_cfg": clip_cfg, "cache_root": cache_root},
        compute=_actor_pool(clip_cfg.num_actors),
        batch_size=clip_cfg.batch_size,
        num_cpus=clip_cfg.num_cpus,
        num_gpus=clip_cfg.num_gpus or None,
    )
    materialized = ds.select_columns(
        [schema.ID, schema.SET, schema.URI, schema.ERROR, schema.EMBEDDING, schema.FROM_CACHE]
    ).materialize()
    return _summarise(materialized)


def _summarise(ds: Any) -> EmbeddedImages:
    """Counts per block, merged on the driver; only failed rows travel as rows."""
    from visdiff.stages.score import block_counts, error_rows

    totals: dict[str, int] = {}
    for row in ds.map_batches(block_counts, batch_format="numpy").iter_rows():
        for key, value in row.items():
            totals[key] = totals.get(key, 0) + int(value)
    skipped = [
        {"id": r[schema.ID], "set": r[schema.SET], "uri": r[schema.URI], "reason": r[schema.ERROR]}
        for r in ds.map_batches(error_rows, batch_format="numpy").take_all()
    ]
    rows_per_set = {name: totals.get(f"rows_{name}", 0) for name in schema.SETS}
    return EmbeddedImages(
        ds, sum(rows_per_set.values()), rows_per_set, totals.get("from_cache", 0), skipped
    )


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
    """Scores where the embeddings are (Ray Data tasks over batches of `SCORE_BATCH_ROWS`) and
    merges the per-batch partials in one streaming pass: driver memory does not grow with N."""
    from visdiff.rank.partials import merge_all
    from visdiff.stages.score import score_block

    options = {
        "threshold": rank_cfg.classify_threshold,
        "num_bins": rank_cfg.histogram_bins,
        "exact_cap": rank_cfg.exact_cap,
    }
    partial_rows = embedded.dataset.map_batches(
        score_block,
        fn_kwargs={"text_embeddings": np.asarray(text_embeddings, np.float32), **options},
        batch_size=SCORE_BATCH_ROWS,
        num_cpus=0.5,
    )
    batches = partial_rows.iter_batches(batch_size=1, batch_format="numpy")
    merged = merge_all(
        itertools.chain(
            [ScorePartials.empty(len(hypotheses), **options)],
            (ScorePartials.from_row(batch) for batch in batches),
        )
    )
    return rank_order(merged.finalize(hypotheses))
