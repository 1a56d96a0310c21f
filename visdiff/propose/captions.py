"""Caption inputs for the proposer: pick each round's seeded samples, caption them once (Ray Data
actor pool) or take the manifest's captions, and assemble the per-round caption lists."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from visdiff import schema
from visdiff.config import CaptionerConfig, DescribeConfig
from visdiff.errors import InputError
from visdiff.propose.proposer import RoundInput
from visdiff.propose.sampling import sample_for_round
from visdiff.sources.records import ImageRecord, ImageSets

log = logging.getLogger(__name__)


@dataclass
class CaptionedRounds:
    rounds: list[RoundInput]
    captions: dict[str, str]  # image id -> caption used in prompts
    caption_source: dict[str, str]  # image id -> "manifest" | "model"
    failed: list[dict[str, str]] = field(default_factory=list)  # images the captioner skipped


def caption_images(records: list[ImageRecord], cfg: CaptionerConfig) -> dict[str, tuple[str, str]]:
    """id -> (caption, error) for each record, captioned in an actor pool."""
    if not records:
        return {}
    import ray.data
    from ray.data import ActorPoolStrategy

    from visdiff.stages.caption import Captioner

    ds = ray.data.from_items(
        [r.to_dict() for r in records], override_num_blocks=max(1, min(len(records) // 8, 64))
    )
    ds = ds.map_batches(
        Captioner,
        fn_constructor_kwargs={"captioner_cfg": cfg},
        compute=ActorPoolStrategy(size=cfg.num_actors),
        batch_size=cfg.batch_size,
        num_cpus=cfg.num_cpus,
        num_gpus=cfg.num_gpus or None,
    )
    return {
        row[schema.ID]: (row[schema.GENERATED_CAPTION], row[schema.ERROR]) for row in ds.take_all()
    }


def _eligible(records: list[ImageRecord], source: str) -> list[ImageRecord]:
    if source == "manifest":
        return [r for r in records if r.caption]
    return records


def build_rounds(sets: ImageSets, config: DescribeConfig) -> CaptionedRounds:
    source = config.caption.source
    pcfg = config.propose
    by_id = {r.id: r for r in [*sets.a, *sets.b]}
    eligible = {schema.SET_A: _eligible(sets.a, source), schema.SET_B: _eligible(sets.b, source)}
    for set_name, records in eligible.items():
        if not records:
            name = sets.name_a if set_name == schema.SET_A else sets.name_b
            raise InputError(
                f"set {set_name} ('{name}') has no manifest captions; use caption.source=model or auto"
            )
    sampled: list[tuple[list[str], list[str]]] = []
    for round_index in range(pcfg.num_rounds):
        ids = tuple(
            sample_for_round(
                [r.id for r in eligible[s]],
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
        record = by_id[image_id]
        if source != "model" and record.caption:
            captions[image_id], origin[image_id] = record.caption, "manifest"
        else:
            to_caption.append(record)
    failed = []
    if to_caption:
        log.info("captioning %d sampled images with %s", len(to_caption), config.captioner.model)
        for image_id, (caption, error) in caption_images(to_caption, config.captioner).items():
            if error or not caption:
                failed.append(
                    {"id": image_id, "uri": by_id[image_id].uri, "reason": error or "empty caption"}
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
    return CaptionedRounds(rounds, captions, origin, failed)
