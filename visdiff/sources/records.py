"""What the sources hand to the pipeline: one record per image, grouped into sets A and B.

The readers (sources/manifest.py, sources/folders.py) run on the driver before any model loads,
so every input problem surfaces as an `InputError` within a second instead of after minutes of
model start-up. This module imports neither reader: they import it for the record types.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class ImageRecord:
    """One image to process. `id` is stable across runs: "<set>/<relative path>"."""

    id: str
    set: str  # "a" or "b"
    uri: str  # local path or s3:// URI
    caption: str = ""  # manifest caption, "" when absent
    pair: str = ""  # key shared with the image it pairs with in the other set (schema.PAIR)

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass
class ImageSets:
    """Both sets plus what was rejected while listing (rows pointing at missing files, ...)."""

    a: list[ImageRecord]
    b: list[ImageRecord]
    name_a: str  # group name or folder name
    name_b: str
    skipped: list[dict[str, Any]] = field(default_factory=list)  # {"uri", "set", "reason"}
    # How the rows were chosen (manifests): row counts of the subset, per-set matches and rows
    # matching both sets (`ambiguous`, skipped); reported in stats.json.
    selection: dict[str, Any] = field(default_factory=dict)

    def records(self) -> list[ImageRecord]:
        return [*self.a, *self.b]
