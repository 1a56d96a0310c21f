"""Caption inputs for the proposer: pick each round's seeded samples from each set's candidate
pool, caption them once (Ray Data actor pool) or take the input's own captions (manifest column,
shard alt-text), and assemble the per-round caption lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from visdiff import schema
from visdiff.config import CaptionerConfig, DescribeConfig
from visdiff.errors import InputError
from visdiff.propose.proposer import RoundInput
from visdiff.sampling import sample_for_round
from visdiff.sources.plan import InputPlan

log = logging.getLogger(__name__)


@dataclass
class CaptionedRounds:
    rounds: list[RoundInput]
    captions: dict[str, str]  # image id -> caption used in prompts
    caption_source: dict[str, str]  # image id -> "input" | "model"
    failed: list[dict[str, str]] = field(default_factory=list)  # images the captioner skipped
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # sampled image id -> row


def caption_images(
    rows: list[dict[str, Any]], cfg: CaptionerConfig, *, cache_root: str | None = None
) -> dict[str, tuple[str, str]]:
    """id -> (caption, error) for each image row (uri, or image_bytes), in an actor pool."""
    if not rows:
        return {}
    import ray.data
    from ray.data import ActorPoolStrategy

    from visdiff.stages.caption import Captioner

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
    from visdiff.stages.images import load_bytes
    from visdiff.stages.vlm_caption import build_vlm_captioner

    def with_bytes(batch: dict[str, Any]) -> dict[str, Any]:
        datas, errors = load_bytes(batch)
        return {**batch, schema.IMAGE_BYTES: [d or b"" for d in datas], schema.ERROR: errors}

    rows = ds.map_batches(with_bytes, batch_format="numpy").materialize()
    bad = {
        r[schema.ID]: ("", r[schema.ERROR])
        for r in rows.filter(lambda r: r[schema.ERROR] != "").take_all()
    }
    good = build_vlm_captioner(cfg)(rows.filter(lambda r: r[schema.ERROR] == ""))
    out = {r[schema.ID]: (r[schema.GENERATED_CAPTION], r[schema.ERROR]) for r in good.take_all()}
    return {**bad, **out}


def _eligible(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    if source == "manifest":
        return [r for r in rows if r.get(schema.CAPTION)]
    return rows


def build_rounds(
    plan: InputPlan, pools: dict[str, list[dict[str, Any]]], config: DescribeConfig
) -> CaptionedRounds:
    """`pools`: per set, the image rows the samples are drawn from (see sources.datasets)."""
    source = config.caption.source
    pcfg = config.propose
    by_id = {r[schema.ID]: r for rows in pools.values() for r in rows}
    eligible = {name: _eligible(pools[name], source) for name in schema.SETS}
    for set_plan in plan.sets:
        if not eligible[set_plan.set_name]:
            raise InputError(
                f"set {set_plan.set_name} ('{set_plan.display_name}') has no image with a caption "
                "of its own to sample; use caption.source=model or auto"
            )
    sampled: list[tuple[list[str], list[str]]] = []
    for round_index in range(pcfg.num_rounds):
        ids = tuple(
            sample_for_round(
                [r[schema.ID] for r in eligible[s]],
                k=pcfg.num_samples,
                seed=config.seed,
                round_index=round_index,
            )
            for s in schema.SETS
        )
        sampled.append(ids)  # type: ignore[arg-type]

    all_ids = sorted({i for ids_a, ids_b in sampled for i in (*ids_a, *ids_b)})
    captions: dict[str, str] = {}
    origin: dict[str, str] = {}
    to_caption = []
    for image_id in all_ids:
        row = by_id[image_id]
        if source != "model" and row.get(schema.CAPTION):
            captions[image_id], origin[image_id] = row[schema.CAPTION], "input"
        else:
            to_caption.append(row)
    failed = []
    if to_caption:
        log.info("captioning %d sampled images with %s", len(to_caption), config.captioner.model)
        captioned = caption_images(to_caption, config.captioner, cache_root=config.cache.root)
        for image_id, (caption, error) in captioned.items():
            if error or not caption:
                reason = error or "empty caption"
                failed.append(
                    {"id": image_id, "uri": by_id[image_id][schema.URI], "reason": reason}
                )
            else:
                captions[image_id], origin[image_id] = caption, "model"

    rounds = []
    for round_index, (ids_a, ids_b) in enumerate(sampled):
        kept_a = [i for i in ids_a if i in captions]
        kept_b = [i for i in ids_b if i in captions]
        for set_name, kept in ((schema.SET_A, kept_a), (schema.SET_B, kept_b)):
            if not kept:
                raise InputError(
                    f"round {round_index}: no image of set {set_name} could be captioned "
                    f"(see the captioner errors); check the images of that set"
                )
        rounds.append(
            RoundInput(
                round_index,
                kept_a,
                kept_b,
                [captions[i] for i in kept_a],
                [captions[i] for i in kept_b],
            )
        )
    return CaptionedRounds(rounds, captions, origin, failed, {i: by_id[i] for i in all_ids})
