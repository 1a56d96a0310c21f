"""Rows of shards of either format, in column chunks: what the pipeline's Ray Data adapter maps
over a dataset of shard URIs (`map_batches` accepts generator functions)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from visdiff.errors import InputError
from visdiff.sources.shards.parquet import AUTO, ParquetOptions, iter_parquet_shard
from visdiff.sources.shards.resolve import WEBDATASET, shard_format
from visdiff.sources.shards.rows import ROW_COLUMNS
from visdiff.sources.shards.webdataset import iter_webdataset_shard

if TYPE_CHECKING:
    import numpy as np


def iter_shard_rows(
    uri: str, *, set_name: str, options: ParquetOptions
) -> Iterator[dict[str, Any]]:
    """Rows of one shard of either format (`options` apply to Parquet only)."""
    if shard_format(uri) == WEBDATASET:
        return iter_webdataset_shard(uri, set_name=set_name)
    return iter_parquet_shard(uri, set_name=set_name, options=options)


def _columns(rows: list[dict[str, Any]]) -> dict[str, list]:
    return {name: [row[name] for row in rows] for name in ROW_COLUMNS}


def shard_row_chunks(
    batch: dict[str, np.ndarray],
    *,
    set_name: str,
    rows_per_chunk: int = 512,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> Iterator[dict[str, list]]:
    """A batch of shard URIs (column "shard") in, their rows out as column chunks of at most
    `rows_per_chunk` rows: each chunk becomes its own block, so a 10,000-image shard never sits
    in one worker's memory at once."""
    if "shard" not in batch:
        raise InputError(f"shard batch needs a 'shard' column; got {', '.join(batch)}")
    options = ParquetOptions(image_column, caption_column, key_column)
    chunk: list[dict[str, Any]] = []
    for uri in batch["shard"]:
        for row in iter_shard_rows(str(uri), set_name=set_name, options=options):
            chunk.append(row)
            if len(chunk) >= rows_per_chunk:
                yield _columns(chunk)
                chunk = []
    if chunk:
        yield _columns(chunk)
