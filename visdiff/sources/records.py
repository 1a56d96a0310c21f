"""What the sources hand to the pipeline: one record per image, grouped into sets A and B.

`load_image_sets` runs on the driver before any model loads, so every input problem surfaces
as an `InputError` within a second instead of after minutes of model start-up.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from visdiff.errors import InputError

if TYPE_CHECKING:
    from visdiff.config import DataConfig


@dataclass(frozen=True)
class ImageRecord:
    """One image to process. `id` is stable across runs: "<set>/<relative path>"."""

    id: str
    set: str  # "a" or "b"
    uri: str  # local path or s3:// URI
    caption: str = ""  # manifest caption, "" when absent

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

    def records(self) -> list[ImageRecord]:
        return [*self.a, *self.b]


Reader = Callable[["DataConfig"], ImageSets]

# kind -> reader. Built-in readers register on first use (see `_load_builtin_readers`), so a
# new source (S3 prefixes, WebDataset or Parquet shards) plugs in with `register_reader`.
_READERS: dict[str, Reader] = {}


def register_reader(kind: str) -> Callable[[Reader], Reader]:
    """Decorator adding a reader for a source kind."""

    def decorate(reader: Reader) -> Reader:
        _READERS[kind] = reader
        return reader

    return decorate


def _load_builtin_readers() -> None:
    # Imported here: the reader modules import this one for the record types.
    from visdiff.sources import folders, manifest  # noqa: F401


def source_kind(data: DataConfig) -> str:
    """Which reader a data config selects."""
    if data.manifest:
        return "manifest"
    if data.set_a or data.set_b:
        return "folders"
    raise InputError(
        "no input given: set data.manifest (+ data.group_a, data.group_b) "
        "or data.set_a and data.set_b"
    )


def load_image_sets(data: DataConfig) -> ImageSets:
    """List sets A and B from a manifest or two folders; raises InputError on bad input."""
    kind = source_kind(data)
    if kind not in _READERS:
        _load_builtin_readers()
    reader = _READERS.get(kind)
    if reader is None:
        raise InputError(f"no reader for input kind '{kind}'; known: {', '.join(sorted(_READERS))}")
    return reader(data)


def one_line(text: object, limit: int = 200) -> str:
    """First line of an error text, shortened: InputError messages must stay on one line."""
    line = str(text).strip().splitlines()[0] if str(text).strip() else type(text).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
