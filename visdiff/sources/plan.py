"""Driver-side plan of a run's inputs: per set, either the image records (manifest, folder) or
only the shard URIs (WebDataset / Parquet), so that web-scale sets are never listed image by
image on the driver. Every problem is an InputError raised before any model or Ray starts."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

from visdiff import schema
from visdiff.config import DataConfig
from visdiff.errors import InputError
from visdiff.sources.folders import folder_name, list_folder
from visdiff.sources.manifest import load_manifest
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


def _plan_set(spec: Any, set_name: str, key: str, data: DataConfig) -> SetPlan:
    if looks_like_shards(spec):
        shards = resolve_shards(list(spec) if isinstance(spec, list | tuple) else str(spec))
        parquet = [s for s in shards if shard_format(s) == PARQUET]
        if parquet:  # footer only: a metadata-only Parquet fails here, not per shard later
            options = ParquetOptions(data.image_column, data.caption_column)
            check_parquet_shard(parquet[0], options)
        return SetPlan(set_name, _shard_display_name(spec, shards), shards=shards)
    folder = str(spec)
    return SetPlan(set_name, folder_name(folder), records=list_folder(folder, set_name, key))


def plan_inputs(data: DataConfig, *, caption_source: str = "model") -> InputPlan:
    if data.manifest:
        sets = load_manifest(data)
        plan = InputPlan(
            SetPlan(schema.SET_A, sets.name_a, records=sets.a),
            SetPlan(schema.SET_B, sets.name_b, records=sets.b),
            skipped=list(sets.skipped),
        )
    else:
        plan = InputPlan(
            _plan_set(data.set_a, schema.SET_A, "data.set_a", data),
            _plan_set(data.set_b, schema.SET_B, "data.set_b", data),
        )
    if caption_source == "manifest":
        for set_plan in plan.sets:
            if not set_plan.has_input_captions:
                raise InputError(
                    f"caption.source=manifest but set {set_plan.set_name} "
                    f"('{set_plan.display_name}') has no captions of its own; "
                    "use caption.source=model or auto"
                )
    return plan
