"""Caption inputs for the proposer: pick each round's seeded samples from each set's candidate
pool, caption them once (with the captioning function the pipeline hands in) or take the input's
own captions (manifest column, shard alt-text), and assemble the per-round caption lists."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from visdiff import schema
from visdiff.config import DescribeConfig
from visdiff.errors import InputError
from visdiff.propose.proposer import RoundInput
from visdiff.sampling import sample_for_round

log = logging.getLogger(__name__)

# Image rows -> id -> (caption, error): the captioner stage, run by the pipeline.
CaptionFn = Callable[[list[dict[str, Any]]], dict[str, tuple[str, str]]]


@dataclass
class CaptionedRounds:
    rounds: list[RoundInput]
    captions: dict[str, str]  # image id -> caption used in prompts
    caption_source: dict[str, str]  # image id -> "input" | "model"
    failed: list[dict[str, str]] = field(default_factory=list)  # images the captioner skipped
    rows: dict[str, dict[str, Any]] = field(default_factory=dict)  # sampled image id -> row


def _eligible(rows: list[dict[str, Any]], source: str) -> list[dict[str, Any]]:
    if source == "manifest":
        return [r for r in rows if r.get(schema.CAPTION)]
    return rows


def build_rounds(
    display_names: dict[str, str],
    pools: dict[str, list[dict[str, Any]]],
    config: DescribeConfig,
    caption: CaptionFn,
) -> CaptionedRounds:
    """`display_names`: set name -> the name shown for it. `pools`: per set, the image rows the
    samples are drawn from (see pipeline.graph.sample_pool). `caption` captions the sampled
    images that need a model caption."""
    source = config.caption.source
    pcfg = config.propose
    by_id = {r[schema.ID]: r for rows in pools.values() for r in rows}
    eligible = {name: _eligible(pools[name], source) for name in schema.SETS}
    for set_name, display_name in display_names.items():
        if not eligible[set_name]:
            raise InputError(
                f"set {set_name} ('{display_name}') has no image with a caption "
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
        captioned = caption(to_caption)
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
