"""Driver-side plan of a run's inputs: per set, either the image records (manifest, folder) or
only the shard URIs (WebDataset / Parquet), so that web-scale sets are never listed image by
image on the driver. Every problem is an InputError raised before any model or Ray starts."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from visdiff import schema
from visdiff.config import DataConfig
from visdiff.errors import ConfigError, InputError
from visdiff.sources.folders import folder_name, scan_folder
from visdiff.sources.manifest import load_manifest, set_rules
from visdiff.sources.purity import apply_purity
from visdiff.sources.records import ImageRecord
from visdiff.sources.shards.parquet import ParquetOptions, check_parquet_shard
from visdiff.sources.shards.resolve import (
    FORMAT_SUFFIXES,
    GLOB_CHARS,
    PARQUET,
    has_braces,
    resolve_shards,
    shard_format,
)

MIN_IMAGES_PER_SET = 2  # the ranking's tests (AUROC variance, Welch) need two per set


@dataclass
class SetPlan:
    set_name: str  # "a" | "b"
    display_name: str  # group name, folder name or shard folder name
    records: list[ImageRecord] | None = None  # small inputs: every image known on the driver
    shards: list[str] | None = None  # web-scale inputs: shard URIs only

    @property
    def has_input_captions(self) -> bool:
        """Shards carry alt-text; records carry a caption when the manifest had one."""
        if self.shards is not None:
            return True
        return any(r.caption for r in self.records or [])


@dataclass
class InputPlan:
    a: SetPlan
    b: SetPlan
    skipped: list[dict[str, Any]] = field(default_factory=list)  # rejected while listing
    # How the sets were drawn, for stats.json: manifest row selection (subset, per-set matches,
    # `ambiguous` rows) and `purity` swap counts; empty for plain inputs.
    selection: dict[str, Any] = field(default_factory=dict)

    @property
    def sets(self) -> tuple[SetPlan, SetPlan]:
        return (self.a, self.b)


def looks_like_shards(spec: Any) -> bool:
    if isinstance(spec, list | tuple):
        return True
    text = str(spec)
    if has_braces(text) or any(c in text for c in GLOB_CHARS):
        return True
    return any(text.lower().endswith(suffix) for suffix in FORMAT_SUFFIXES)


def _shard_display_name(spec: Any, shards: list[str]) -> str:
    first = str(spec[0] if isinstance(spec, list | tuple) else spec)
    parent = posixpath.dirname(first.split("{", 1)[0].rstrip("/")) or posixpath.dirname(shards[0])
    return posixpath.basename(parent.rstrip("/")) or parent


def _plan_set(
    spec: Any, set_name: str, key: str, data: DataConfig, skipped: list[dict[str, Any]]
) -> SetPlan:
    """One set's plan; entries of a folder that are not used are added to `skipped`."""
    if looks_like_shards(spec):
        shards = resolve_shards(list(spec) if isinstance(spec, list | tuple) else str(spec))
        parquet = [s for s in shards if shard_format(s) == PARQUET]
        if parquet:  # footer only: a metadata-only Parquet fails here, not per shard later
            options = ParquetOptions(data.image_column, data.caption_column)
            check_parquet_shard(parquet[0], options)
        return SetPlan(set_name, _shard_display_name(spec, shards), shards=shards)
    folder = str(spec)
    listing = scan_folder(folder, set_name, key)
    skipped.extend(listing.skipped)
    return SetPlan(set_name, folder_name(folder), records=listing.records)


def plan_inputs(data: DataConfig, *, caption_source: str = "model", seed: int = 0) -> InputPlan:
    """Both sets' plans; `seed` (the run's seed) draws the images data.purity swaps."""
    if data.manifest:
        sets = load_manifest(data)
        plan = InputPlan(
            SetPlan(schema.SET_A, sets.name_a, records=sets.a),
            SetPlan(schema.SET_B, sets.name_b, records=sets.b),
            skipped=list(sets.skipped),
            selection=dict(sets.selection),
        )
    else:
        skipped: list[dict[str, Any]] = []
        plan = InputPlan(
            _plan_set(data.set_a, schema.SET_A, "data.set_a", data, skipped),
            _plan_set(data.set_b, schema.SET_B, "data.set_b", data, skipped),
            skipped=skipped,
        )
    if data.purity < 1:
        _swap_for_purity(plan, data, seed)
    if caption_source == "manifest":
        for set_plan in plan.sets:
            if not set_plan.has_input_captions:
                raise InputError(
                    f"caption.source=manifest but set {set_plan.set_name} "
                    f"('{set_plan.display_name}') has no captions of its own; "
                    "use caption.source=model or auto"
                )
    return plan


def _swap_for_purity(plan: InputPlan, data: DataConfig, seed: int) -> None:
    """Exchange a share 1 - data.purity of each listed set with the other (sources/purity.py)."""
    for set_plan in plan.sets:
        if set_plan.records is None:
            raise ConfigError(
                f"data.purity={data.purity} swaps listed images between the sets, but set "
                f"{set_plan.set_name} ('{set_plan.display_name}') is read from shards; use a "
                "manifest or folders for both sets, or data.purity=1"
            )
    a, b, stats = apply_purity(plan.a.records or [], plan.b.records or [], data.purity, seed)
    plan.a.records, plan.b.records = a, b
    plan.selection["purity"] = {**stats, "seed": seed}


def require_enough_images(set_plan: SetPlan, usable: int, *, where: str, fix: str) -> None:
    """InputError naming the set when fewer than ``MIN_IMAGES_PER_SET`` of its images are
    usable: one or none leaves nothing to compare."""
    if usable < MIN_IMAGES_PER_SET:
        raise InputError(
            f"set {set_plan.set_name} ('{set_plan.display_name}') has {usable} usable image(s) "
            f"{where}; ranking needs at least {MIN_IMAGES_PER_SET} per set: {fix}"
        )


def check_set_sizes(plan: InputPlan, data: DataConfig) -> None:
    """A run's listed sets (folders, manifests) are counted before any model loads; shard sets
    only when read (the pipeline checks them after decoding). Listing alone (`visdiff embed`)
    does not need two images."""
    for set_plan in plan.sets:
        if set_plan.records is not None:
            _check_listed_size(set_plan, len(set_plan.records), plan.skipped, data)


def _check_listed_size(
    set_plan: SetPlan, listed: int, skipped: list[dict[str, Any]], data: DataConfig
) -> None:
    is_a = set_plan.set_name == schema.SET_A
    if data.manifest:
        rule = set_rules(data)[0 if is_a else 1]
        source = f"{rule.key} '{rule.text}' of data.manifest '{data.manifest}'"
        fix = (
            "widen the filter or list more matching rows"
            if rule.filter
            else "list more images of that group in the manifest"
        )
    else:
        key = f"data.set_{set_plan.set_name}"
        source = f"{key} folder '{data.set_a if is_a else data.set_b}'"
        fix = f"add images to that folder or point {key} at a larger one"
    dropped = sum(1 for s in skipped if s.get("set") == set_plan.set_name)
    where = f"in {source}" + (f" ({dropped} skipped while listing)" if dropped else "")
    require_enough_images(set_plan, listed, where=where, fix=fix)
    cap = data.max_num_samples
    if 0 < cap < MIN_IMAGES_PER_SET:
        raise InputError(
            f"data.max_num_samples={cap} ranks fewer than {MIN_IMAGES_PER_SET} images of set "
            f"{set_plan.set_name} ('{set_plan.display_name}'); raise it (0 = every image)"
        )
