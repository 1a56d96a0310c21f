"""CLIP ranker on Ray Data: embed every (capped) image of both sets in an actor pool, embed the
hypotheses, score each block where its embeddings are and merge the partial statistics."""

from __future__ import annotations

import dataclasses
import itertools
import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig, RankConfig
from visdiff.rank.partials import HypothesisStats, ScorePartials, rank_order
from visdiff.stages.embed import CALLER_NUM_CPUS, ClipActors

log = logging.getLogger(__name__)


@dataclass
class EmbeddedImages:
    """A materialised Ray Dataset of embedded images plus what the embedding stage skipped."""

    dataset: Any  # ray.data.MaterializedDataset with id, set, uri, error, embedding, from_cache
    num_rows: int
    rows_per_set: dict[str, int] = field(default_factory=dict)
    from_cache: int = 0
    skipped: list[dict[str, str]] = field(default_factory=list)


# Rows scored per task: fewer, fuller partials than one per small block. At 8192 the scheduling
# of ~25 short tasks per 2*10^5 images cost more than their work; 32768 keeps a task at ~0.1 s
# and its partial at ~13 MB (exact scores, H=100) or 3.3 MB (histograms, 2048 bins).
SCORE_BATCH_ROWS = 32768


def _actor_pool(size: int, concurrent_calls: int = 1) -> Any:
    from ray.data import ActorPoolStrategy

    if concurrent_calls <= 1:
        return ActorPoolStrategy(size=size)
    return ActorPoolStrategy(
        size=size, max_concurrent_calls_per_actor=concurrent_calls, enable_true_multi_threading=True
    )


def embed_images(
    images: Any,
    clip_cfg: ClipConfig,
    *,
    cache_root: str | None = None,
    actors: ClipActors | None = None,
) -> EmbeddedImages:
    """Every image row through the run's CLIP model actors (`actors`; without them, actors are
    started for this call and stopped after it). CPU-only actors decode + preprocess (and look up
    the cache) themselves; with GPUs a CPU actor pool decodes and sends uint8 pixels. Failed rows
    are kept and carry their error so that nothing is silently dropped. `images` is a Ray
    Dataset of image rows (see visdiff.sources.datasets)."""
    from visdiff.stages.embed import ClipActorCaller, ClipPreprocessor, clip_model_actors

    if actors is None:
        with clip_model_actors(clip_cfg, cache_root, load_model=False) as own:
            return embed_images(images, clip_cfg, cache_root=cache_root, actors=own)
    ds = images
    if not actors.fused:
        ds = ds.map_batches(
            ClipPreprocessor,
            fn_constructor_kwargs={"clip_cfg": clip_cfg, "cache_root": cache_root},
            compute=_actor_pool(clip_cfg.num_decoders),
            batch_size=clip_cfg.batch_size,
            num_cpus=0.5,
        )
    # A light stage that hands each batch to a model actor: two calls in flight per model actor,
    # so the next batch is queued there while one is computed.
    ds = ds.map_batches(
        ClipActorCaller,
        fn_constructor_kwargs={
            "actors": actors.handles,
            "method": "embed_rows" if actors.fused else "embed_pixels",
        },
        compute=_actor_pool(1, concurrent_calls=2 * len(actors.handles)),
        batch_size=clip_cfg.batch_size,
        num_cpus=CALLER_NUM_CPUS,
    )
    from visdiff.pipeline.progress import (
        materialize_with_progress,
    )  # counts rows as blocks stream in

    materialized = materialize_with_progress(
        ds.select_columns(
            [schema.ID, schema.SET, schema.URI, schema.ERROR, schema.EMBEDDING, schema.FROM_CACHE]
        ),
        "decode+embed",
    )
    return _summarise(materialized)


def _summarise(ds: Any) -> EmbeddedImages:
    """Counts per block, merged on the driver; only failed rows travel as rows."""
    from visdiff.rank.aggregate import block_counts, error_rows

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


def embed_texts(
    texts: list[str], clip_cfg: ClipConfig, *, actors: ClipActors | None = None
) -> np.ndarray:
    """Text embeddings by a CLIP model actor too (the driver may be a small CPU head node): the
    run's `actors`, whose model is already loaded, else one started for this call."""
    from visdiff.stages.embed import clip_model_actors

    if actors is not None:
        return actors.embed_texts(texts)
    with clip_model_actors(dataclasses.replace(clip_cfg, num_actors=1)) as own:
        return own.embed_texts(texts)


def score_hypotheses(
    embedded: EmbeddedImages,
    hypotheses: list[str],
    text_embeddings: np.ndarray,
    rank_cfg: RankConfig,
) -> list[HypothesisStats]:
    """Scores where the embeddings are (Ray Data tasks over batches of `SCORE_BATCH_ROWS`) and
    merges the per-batch partials in one streaming pass: driver memory does not grow with N."""
    from visdiff.rank.aggregate import score_block
    from visdiff.rank.partials import merge_all

    options = {
        "threshold": rank_cfg.classify_threshold,
        "num_bins": rank_cfg.histogram_bins,
        "exact_cap": rank_cfg.exact_cap,
    }
    # Images that will be scored (failed rows are skipped): past the cap, blocks keep
    # histograms from the start instead of shipping exact scores the merge would drop.
    expected_total = max(0, embedded.num_rows - len(embedded.skipped))
    partial_rows = embedded.dataset.map_batches(
        score_block,
        fn_kwargs={
            "text_embeddings": np.asarray(text_embeddings, np.float32),
            "expected_total": expected_total,
            **options,
        },
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
