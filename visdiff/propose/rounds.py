"""Caption inputs for the proposer: pick each round's seeded samples from each set's candidate
pool, caption them once (with the captioning function the pipeline hands in) or take the input's
own captions (manifest column, shard alt-text), and assemble the per-round caption lists.

Paired sets (propose.proposer=paired) sample pair keys instead of images: a round holds the two
images of each sampled pair at the same position of `ids_a` and `ids_b`. Proposers that read
images rather than captions (feature, vlm) sample the same way without captioning."""

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


def pair_key(row: dict[str, Any]) -> str:
    """The key a row shares with its partner in the other set: its PAIR value (a manifest's
    data.pair_column), else its path inside the set folder (the id "<set>/<relative path>")."""
    key = row.get(schema.PAIR)
    if key is not None and str(key) != "":
        return str(key)
    return str(row[schema.ID]).split("/", 1)[-1]


def _pairs_by_key(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Pair key -> image id; a key with several images of one set keeps the smallest id."""
    out: dict[str, str] = {}
    for row in sorted(rows, key=lambda r: r[schema.ID]):
        out.setdefault(pair_key(row), row[schema.ID])
    return out


Sample = tuple[list[str], list[str]]  # one round's ids of A and of B


def _sample_sets(eligible: dict[str, list[dict[str, Any]]], config: DescribeConfig) -> list[Sample]:
    pcfg = config.propose
    return [
        tuple(  # type: ignore[misc]
            sample_for_round(
                [r[schema.ID] for r in eligible[s]],
                k=pcfg.num_samples,
                seed=config.seed,
                round_index=round_index,
            )
            for s in schema.SETS
        )
        for round_index in range(pcfg.num_rounds)
    ]


def _sample_pairs(
    eligible: dict[str, list[dict[str, Any]]], config: DescribeConfig
) -> list[Sample]:
    """Per round, `num_samples` pair keys found in both sets (seeded); ids aligned by pair."""
    by_key = {s: _pairs_by_key(eligible[s]) for s in schema.SETS}
    common = sorted(by_key[schema.SET_A].keys() & by_key[schema.SET_B].keys())
    if not common:
        raise InputError(
            "propose.proposer=paired: no pair key is shared by set A and set B; set "
            "data.pair_column to the manifest column that pairs an A image with a B image "
            "(e.g. prompt), or give the paired images the same file names in both folders"
        )
    pcfg = config.propose
    rounds = []
    for round_index in range(pcfg.num_rounds):
        keys = sample_for_round(
            common, k=pcfg.num_samples, seed=config.seed, round_index=round_index
        )
        rounds.append(
            ([by_key[schema.SET_A][k] for k in keys], [by_key[schema.SET_B][k] for k in keys])
        )
    return rounds


def build_rounds(
    display_names: dict[str, str],
    pools: dict[str, list[dict[str, Any]]],
    config: DescribeConfig,
    caption: CaptionFn,
    *,
    need_captions: bool = True,
    paired: bool = False,
) -> CaptionedRounds:
    """`display_names`: set name -> the name shown for it. `pools`: per set, the image rows the
    samples are drawn from (see pipeline.graph.sample_pool). `caption` captions the sampled
    images that need a model caption.

    `need_captions=False`: sample only (the rounds' captions are empty strings; `rows` holds the
    sampled rows for their bytes). `paired=True`: sample pairs (see `pair_key`); a pair either of
    whose images fails captioning leaves its round (the failed image is listed in `failed`)."""
    source = config.caption.source if need_captions else "model"
    by_id = {r[schema.ID]: r for rows in pools.values() for r in rows}
    eligible = {name: _eligible(pools[name], source) for name in schema.SETS}
    for set_name, display_name in display_names.items():
        if not eligible[set_name]:
            what = "image with a caption of its own" if source == "manifest" else "image"
            raise InputError(
                f"set {set_name} ('{display_name}') has no {what} to sample"
                + ("; use caption.source=model or auto" if source == "manifest" else "")
            )
    sampled = _sample_pairs(eligible, config) if paired else _sample_sets(eligible, config)
    all_ids = sorted({i for ids_a, ids_b in sampled for i in (*ids_a, *ids_b)})
    rows = {i: by_id[i] for i in all_ids}
    if not need_captions:
        rounds = [
            RoundInput(r, list(a), list(b), [""] * len(a), [""] * len(b))
            for r, (a, b) in enumerate(sampled)
        ]
        return CaptionedRounds(rounds, {}, {}, [], rows)

    captions, origin, failed = _caption_all(rows, source, caption, config)
    rounds = []
    for round_index, (ids_a, ids_b) in enumerate(sampled):
        if paired:
            kept = [
                (a, b) for a, b in zip(ids_a, ids_b, strict=True) if a in captions and b in captions
            ]
            kept_a, kept_b = [a for a, _ in kept], [b for _, b in kept]
        else:
            kept_a = [i for i in ids_a if i in captions]
            kept_b = [i for i in ids_b if i in captions]
        for set_name, ids in ((schema.SET_A, kept_a), (schema.SET_B, kept_b)):
            if not ids:
                raise InputError(
                    f"round {round_index}: no "
                    + ("pair" if paired else f"image of set {set_name}")
                    + " could be captioned (see the captioner errors); check the images of "
                    + ("both sets" if paired else "that set")
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
    return CaptionedRounds(rounds, captions, origin, failed, rows)


def _caption_all(
    rows: dict[str, dict[str, Any]], source: str, caption: CaptionFn, config: DescribeConfig
) -> tuple[dict[str, str], dict[str, str], list[dict[str, str]]]:
    """(captions, their origin, failures) of the sampled rows: the input's own caption where the
    source allows it, else one call of `caption` for all the others."""
    captions: dict[str, str] = {}
    origin: dict[str, str] = {}
    to_caption = []
    for image_id, row in rows.items():
        if source != "model" and row.get(schema.CAPTION):
            captions[image_id], origin[image_id] = row[schema.CAPTION], "input"
        else:
            to_caption.append(row)
    failed = []
    if to_caption:
        log.info("captioning %d sampled images with %s", len(to_caption), config.captioner.model)
        for image_id, (text, error) in caption(to_caption).items():
            if error or not text:
                reason = error or "empty caption"
                failed.append({"id": image_id, "uri": rows[image_id][schema.URI], "reason": reason})
            else:
                captions[image_id], origin[image_id] = text, "model"
    return captions, origin, failed
