"""Every Ray Data graph of a run, built here and only here: image rows from a set plan, the
caption actor pool (or the VLM processor), CLIP embedding through the run's model actors, and
per-block scoring whose partial statistics are merged on the driver. The stages themselves are
Ray-free callables in `visdiff.stages`."""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import CaptionerConfig, ClipConfig, DataConfig, DescribeConfig, RankConfig
from visdiff.errors import ModelUnavailableError
from visdiff.pipeline.actors import CALLER_NUM_CPUS, ClipActorCaller, ClipActors, clip_model_actors
from visdiff.rank.partials import HypothesisStats, rank_order
from visdiff.sources.plan import SetPlan
from visdiff.sources.records import ImageRecord
from visdiff.sources.subset import (
    KeyBound,
    cap_records,
    keep_ids,
    prune_chunk,
    selection_key,
    smallest_ids,
)
from visdiff.stages.caption import Captioner
from visdiff.stages.embed import ClipPreprocessor
from visdiff.stages.images import load_bytes
from visdiff.stages.vlm_caption import (
    DEFAULT_PROMPT,
    caption_request,
    caption_result,
    processor_config_kwargs,
)

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
ROWS_PER_CHUNK = 256  # rows per block when expanding a shard


# ------------------------------------------------------------------------------ image rows
# One row per image: {id, set, uri, caption, image_bytes, error}. Records become rows on the
# driver (they are already listed there); shards are expanded on the workers, streaming, so the
# driver only ever holds shard URIs.


def _record_row(record: ImageRecord) -> dict[str, Any]:
    return {**record.to_dict(), schema.IMAGE_BYTES: b"", schema.ERROR: ""}


def _num_blocks(n: int, requested: int) -> int:
    if requested > 0:
        return requested
    return max(2, min(256, n // 128))


def records_dataset(records: list[ImageRecord], *, num_blocks: int = 0) -> Any:
    import ray.data

    return ray.data.from_items(
        [_record_row(r) for r in records], override_num_blocks=_num_blocks(len(records), num_blocks)
    )


def _read_kwargs(set_name: str, data: DataConfig, rows_per_chunk: int | None) -> dict[str, Any]:
    return {
        "set_name": set_name,
        "rows_per_chunk": rows_per_chunk or ROWS_PER_CHUNK,
        "image_column": data.image_column,
        "caption_column": data.caption_column,
    }


def _shard_uris(shards: list[str]) -> Any:
    import ray.data

    return ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))


def shards_dataset(
    shards: list[str], set_name: str, data: DataConfig, *, rows_per_chunk: int | None = None
) -> Any:
    """Every row of the shards, streamed (one task per shard, a block per `rows_per_chunk`)."""
    from visdiff.sources.shards.read import shard_row_chunks

    return _shard_uris(shards).map_batches(
        shard_row_chunks,
        fn_kwargs=_read_kwargs(set_name, data, rows_per_chunk),
        batch_size=1,
        num_cpus=0.5,
    )


def _pruned_shard_rows(
    batch: dict[str, Any], *, bound: Any, seed: int, readable_only: bool, **read_kwargs: Any
) -> Iterator[dict[str, list]]:
    """A shard's row chunks less the rows that can no longer be chosen (`prune_chunk`)."""
    import ray

    from visdiff.sources.shards.read import shard_row_chunks

    def offer(keys: list[int]) -> int | None:
        return ray.get(bound.offer.remote(keys))

    for chunk in shard_row_chunks(batch, **read_kwargs):
        kept = prune_chunk(chunk, seed=seed, offer=offer, readable_only=readable_only)
        if kept[schema.ID]:
            yield kept


def select_shard_rows(
    shards: list[str],
    set_name: str,
    data: DataConfig,
    *,
    seed: int,
    n: int,
    readable_only: bool = False,
    rows_per_chunk: int | None = None,
) -> tuple[Any, int]:
    """The `n` rows of the shards with the smallest `stable_key(id, seed)` (as `cap_records`
    keeps for listed sets) and their count. Which rows does not depend on block sizes, task
    timing, actors or nodes; the price is that every shard is read once, where a `limit()`
    stopped early but kept whichever rows came first.

    One pass: readers prune against a `KeyBound` actor shared by all of them, so only about
    n * (1 + ln(total / n)) candidate rows (with their bytes) are kept in the object store, not
    the set; the driver then takes the exact n smallest from the candidates' ids."""
    import ray

    from visdiff.pipeline.progress import Expected, materialize_with_progress

    bound = ray.remote(num_cpus=0)(KeyBound).remote(n)
    try:
        rows = _shard_uris(shards).map_batches(
            _pruned_shard_rows,
            fn_kwargs={
                "bound": bound,
                "seed": seed,
                "readable_only": readable_only,
                **_read_kwargs(set_name, data, rows_per_chunk),
            },
            batch_size=1,
            num_cpus=0.5,
        )
        candidates = materialize_with_progress(
            rows, f"read+select {set_name}", Expected(shards=len(shards))
        )
        offered = ray.get(bound.count.remote())
    finally:
        ray.kill(bound)
    if candidates.count() == 0:
        return candidates, 0
    ids = [row[schema.ID] for row in candidates.select_columns([schema.ID]).iter_rows()]
    chosen = frozenset(smallest_ids(ids, n, seed))
    kept = sum(1 for i in ids if i in chosen)  # a tar may repeat a key: both rows stay
    log.info(
        "set %s: kept %d of %d shard rows (%d candidates after pruning)",
        set_name,
        kept,
        offered,
        len(ids),
    )
    if kept == len(ids):
        return candidates, kept
    return candidates.map_batches(
        keep_ids, fn_kwargs={"ids": chosen}, batch_format="pyarrow", batch_size=None
    ), kept


def ranking_dataset(plan: SetPlan, data: DataConfig, *, seed: int) -> tuple[Any, int | None]:
    """Every image to rank (capped). Returns the dataset and, when known, its row count. A cap
    keeps the images with the smallest seeded hash keys for every kind of input; on shards that
    reads every shard once (`select_shard_rows`) before the images are ranked."""
    if plan.records is not None:
        capped = cap_records(plan.records, data.max_num_samples, seed)
        return records_dataset(capped, num_blocks=data.num_blocks), len(capped)
    assert plan.shards is not None
    if data.max_num_samples <= 0:
        return shards_dataset(plan.shards, plan.set_name, data), None
    return select_shard_rows(plan.shards, plan.set_name, data, seed=seed, n=data.max_num_samples)


def sample_pool(plan: SetPlan, data: DataConfig, *, seed: int, size: int) -> list[dict[str, Any]]:
    """Candidates for the proposer's per-round samples. Records: all of them (no bytes). Shards:
    the `size` readable images with the smallest seeded hash keys (bytes and alt-text), in key
    order: the same for a seed whatever the blocks or the cluster, at the cost of reading every
    shard once."""
    if plan.records is not None:
        return [r.to_dict() for r in plan.records]
    assert plan.shards is not None
    if size <= 0:
        return []
    ds, count = select_shard_rows(
        plan.shards, plan.set_name, data, seed=seed, n=size, readable_only=True
    )
    rows = ds.take_all() if count else []
    return sorted(rows, key=lambda row: selection_key(row[schema.ID], seed))


# ------------------------------------------------------------------------------ captions


def captioner_for(
    config: DescribeConfig,
) -> Callable[[list[dict[str, Any]]], dict[str, tuple[str, str]]]:
    """The run's captioner stage: image rows -> id -> (caption, error)."""
    return functools.partial(caption_images, cfg=config.captioner, cache_root=config.cache.root)


def caption_images(
    rows: list[dict[str, Any]], cfg: CaptionerConfig, *, cache_root: str | None = None
) -> dict[str, tuple[str, str]]:
    """id -> (caption, error) for each image row (uri, or image_bytes), in an actor pool."""
    if not rows:
        return {}
    import ray.data
    from ray.data import ActorPoolStrategy

    items = [{k: v for k, v in r.items() if k != schema.CAPTION} for r in rows]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // 8, 64)))
    if cfg.kind == "vllm":
        return _caption_with_vlm(ds, cfg)
    ds = ds.map_batches(
        Captioner,
        fn_constructor_kwargs={"captioner_cfg": cfg, "cache_root": cache_root},
        compute=ActorPoolStrategy(size=cfg.num_actors),
        batch_size=cfg.batch_size,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus or None,
    )
    from visdiff.pipeline.progress import Expected, materialize_with_progress

    captioned = materialize_with_progress(ds, "caption", Expected(images=len(items)))
    return {
        row[schema.ID]: (row[schema.GENERATED_CAPTION], row[schema.ERROR])
        for row in captioned.take_all()
    }


def _caption_with_vlm(ds: Any, cfg: CaptionerConfig) -> dict[str, tuple[str, str]]:
    """VLM on vLLM through ray.data.llm; rows whose bytes cannot be read never reach it."""

    def with_bytes(batch: dict[str, Any]) -> dict[str, Any]:
        datas, errors = load_bytes(batch)
        return {**batch, schema.IMAGE_BYTES: [d or b"" for d in datas], schema.ERROR: errors}

    rows = ds.map_batches(with_bytes, batch_format="numpy").materialize()
    bad = {
        r[schema.ID]: ("", r[schema.ERROR])
        for r in rows.filter(lambda r: r[schema.ERROR] != "").take_all()
    }
    good = vlm_caption_processor(cfg)(rows.filter(lambda r: r[schema.ERROR] == ""))
    out = {r[schema.ID]: (r[schema.GENERATED_CAPTION], r[schema.ERROR]) for r in good.take_all()}
    return {**bad, **out}


def vlm_caption_processor(cfg: CaptionerConfig) -> Any:
    """A `ray.data.llm` processor: Dataset of image rows (with bytes) -> id, caption, error."""
    try:
        from ray.data.llm import build_processor, vLLMEngineProcessorConfig
    except ImportError as exc:  # pragma: no cover - ray[llm] missing entirely
        raise ModelUnavailableError(
            f"captioner.kind=vllm needs the gpu extra: pip install 'visdiff[gpu]' ({exc})"
        ) from None
    prompt = cfg.prompt or DEFAULT_PROMPT
    return build_processor(
        vLLMEngineProcessorConfig(**processor_config_kwargs(cfg)),
        preprocess=lambda row: caption_request(
            row, prompt=prompt, max_new_tokens=cfg.max_new_tokens
        ),
        postprocess=caption_result,
    )


# ------------------------------------------------------------------------------ CLIP embedding


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
    Dataset of image rows (see `ranking_dataset`)."""
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
    from visdiff.pipeline.progress import materialize_with_progress  # counts streamed rows

    materialized = materialize_with_progress(
        ds.select_columns(
            [schema.ID, schema.SET, schema.URI, schema.ERROR, schema.EMBEDDING, schema.FROM_CACHE]
        ),
        "decode+embed",
    )
    return summarise(materialized)


def summarise(ds: Any) -> EmbeddedImages:
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
    if actors is not None:
        return actors.embed_texts(texts)
    with clip_model_actors(dataclasses.replace(clip_cfg, num_actors=1)) as own:
        return own.embed_texts(texts)


def aggregate_embeddings(embedded: EmbeddedImages, aggregations: list[Any]) -> dict[str, Any]:
    """One pass over the embedded images for several Ray Data aggregations (`AggregateFnV2`):
    {name: finalized result}, by plain Ray tasks (`rank.aggregate.fold_blocks`): on one node
    under the exact cap, one task per core scores a slice of the hypotheses over every row and
    the driver finalizes the joined slices; otherwise runs of consecutive blocks
    (~`SCORE_BATCH_ROWS` rows each) are aggregated by tasks and folded by one more task. Ray
    Data's hash-shuffle aggregate would start aggregator actors on every call (~8 s of a 10 s
    ranking at 10^5 images per set). An input that fits in one such block is folded on the
    driver with the same `aggregate_block`/`finalize`."""
    batches = []
    if embedded.num_rows <= SCORE_BATCH_ROWS:
        batches = list(embedded.dataset.iter_batches(batch_size=None, batch_format="pyarrow"))
    if not any(batch.num_rows for batch in batches):  # large, or nothing to fold here
        from visdiff.rank.aggregate import fold_blocks

        return fold_blocks(embedded.dataset, aggregations, rows_per_task=SCORE_BATCH_ROWS)
    import pyarrow as pa

    block = pa.concat_tables(batches)
    return {a.get_agg_name(): a.finalize(a.aggregate_block(block)) for a in aggregations}


def score_aggregation(
    embedded: EmbeddedImages,
    hypotheses: list[str],
    text_embeddings: np.ndarray,
    rank_cfg: RankConfig,
    *,
    held_in: Iterable[str] | None = None,
) -> Any:
    """The `ScoreAggregate` for a run: past `rank.exact_cap` images (failed rows are not
    scored), blocks keep histograms from the start instead of exact scores the merge would drop.
    `held_in`: ids of the images shown to the proposer, left out of the significance figures
    when `rank.holdout` is on (None: every image is tested)."""
    from visdiff.rank.aggregate import ScoreAggregate

    return ScoreAggregate(
        hypotheses,
        text_embeddings,
        threshold=rank_cfg.classify_threshold,
        num_bins=rank_cfg.histogram_bins,
        exact_cap=rank_cfg.exact_cap,
        expected_total=max(0, embedded.num_rows - len(embedded.skipped)),
        held_in=held_in if rank_cfg.holdout else None,
    )


def score_hypotheses(
    embedded: EmbeddedImages,
    hypotheses: list[str],
    text_embeddings: np.ndarray,
    rank_cfg: RankConfig,
) -> list[HypothesisStats]:
    """Scores where the embeddings are and merges the partial statistics (`ScoreAggregate`):
    driver memory does not grow with N."""
    aggregation = score_aggregation(embedded, hypotheses, text_embeddings, rank_cfg)
    scored = aggregate_embeddings(embedded, [aggregation])[aggregation.get_agg_name()]
    return rank_order(scored.stats)
