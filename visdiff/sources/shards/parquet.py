"""Parquet shards: which columns hold the image, caption and key, and streaming their rows.

Columns are auto-detected by name (what img2dataset, Hugging Face datasets and LAION exports
write) unless named; only the needed columns are read, in small record batches.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visdiff.errors import InputError, first_line
from visdiff.io import storage
from visdiff.sources.shards.rows import image_row, shard_error_row, shard_name

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.parquet as pq

AUTO = "auto"
# Column names tried in order when a column is "auto".
IMAGE_COLUMNS = ("image", "jpg", "png", "image_bytes", "bytes")
CAPTION_COLUMNS = ("caption", "txt", "text", "TEXT")
KEY_COLUMNS = ("key", "id", "__key__")
PARQUET_BATCH_ROWS = 256  # rows per record batch: images are large, keep batches small


@dataclass(frozen=True)
class ParquetOptions:
    """The user's column choices for Parquet shards: a name, "auto", or None (not read)."""

    image_column: str = AUTO
    caption_column: str | None = AUTO
    key_column: str | None = AUTO


@dataclass(frozen=True)
class ParquetColumns:
    """Which Parquet columns hold the image bytes, caption and key (None: absent)."""

    image: str
    image_is_struct: bool  # HF datasets' Image feature: struct<bytes: binary, path: string>
    caption: str | None
    key: str | None


def _is_binary(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _struct_bytes(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(data_type):
        return False
    index = data_type.get_field_index("bytes")
    return index >= 0 and _is_binary(data_type.field(index).type)


def _pick(
    schema: pa.Schema, wanted: str | None, candidates: tuple[str, ...], role: str, uri: str
) -> str | None:
    if wanted is None:
        return None
    if wanted != AUTO:
        if wanted not in schema.names:
            raise InputError(
                f"Parquet shard '{uri}' has no {role} column '{wanted}' "
                f"(columns: {', '.join(schema.names)})"
            )
        return wanted
    return next((name for name in candidates if name in schema.names), None)


def _image_column(schema: pa.Schema, uri: str, wanted: str) -> str:
    binary = {n for n in schema.names if _is_binary(schema.field(n).type)}
    structs = [n for n in schema.names if _struct_bytes(schema.field(n).type)]
    if wanted != AUTO:
        _pick(schema, wanted, (), "image", uri)
        if wanted not in binary and wanted not in structs:
            raise InputError(
                f"Parquet shard '{uri}': column '{wanted}' has type "
                f"{schema.field(wanted).type}, not image bytes (binary, or a struct with "
                "a binary 'bytes' field as Hugging Face datasets write images)"
            )
        return wanted
    named = [n for n in IMAGE_COLUMNS if n in binary or n in structs]
    image = (named or structs or [""])[0]
    if not image:
        raise InputError(
            f"Parquet shard '{uri}' has no image bytes column (tried "
            f"{', '.join(IMAGE_COLUMNS)} and struct columns with a 'bytes' field; columns: "
            f"{', '.join(schema.names)}); pass image_column. img2dataset's per-shard "
            ".parquet files hold metadata only: read the .tar shards instead"
        )
    return image


def parquet_columns(
    schema: pa.Schema, uri: str, options: ParquetOptions = ParquetOptions()
) -> ParquetColumns:
    """Resolve the columns to read; InputError naming the shard when no image column fits."""
    image = _image_column(schema, uri, options.image_column)
    return ParquetColumns(
        image=image,
        image_is_struct=_struct_bytes(schema.field(image).type),
        caption=_pick(schema, options.caption_column, CAPTION_COLUMNS, "caption", uri),
        key=_pick(schema, options.key_column, KEY_COLUMNS, "key", uri),
    )


def _open(uri: str) -> pq.ParquetFile:
    import pyarrow.parquet as pq

    return pq.ParquetFile(storage.open_file(uri))


def check_parquet_shard(uri: str, options: ParquetOptions = ParquetOptions()) -> ParquetColumns:
    """Driver-side check of one shard's schema (reads the footer only): fail before the run."""
    try:
        parquet = _open(uri)
    except (OSError, ValueError) as exc:
        raise InputError(f"Parquet shard '{uri}' cannot be read: {first_line(exc)}") from None
    return parquet_columns(parquet.schema_arrow, uri, options)


def _image_values(column: pa.Array, is_struct: bool) -> list[bytes | None]:
    if is_struct:
        # flatten() merges the struct's own nulls into the child, unlike field().
        column = column.flatten()[column.type.get_field_index("bytes")]
    return column.to_pylist()


def iter_parquet_shard(
    uri: str, *, set_name: str, options: ParquetOptions = ParquetOptions()
) -> Iterator[dict[str, Any]]:
    """Stream one Parquet shard: one row per table row (the row index is the key when no key
    column exists). Bad data never raises: null images give "no_image" rows, an unreadable file
    or schema a "read_error" / "bad_schema" row."""
    shard = shard_name(uri)
    try:
        parquet = _open(uri)
        columns = parquet_columns(parquet.schema_arrow, uri, options)
    except InputError as exc:
        yield shard_error_row(uri, set_name, f"bad_schema: {first_line(exc)}")
        return
    except (OSError, ValueError) as exc:
        yield shard_error_row(uri, set_name, f"read_error: {uri}: {first_line(exc)}")
        return
    wanted = list(dict.fromkeys(c for c in (columns.image, columns.caption, columns.key) if c))
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            size = batch.num_rows
            images = _image_values(batch.column(columns.image), columns.image_is_struct)
            captions = batch.column(columns.caption).to_pylist() if columns.caption else None
            keys = batch.column(columns.key).to_pylist() if columns.key else None
            for offset in range(size):
                raw_key = keys[offset] if keys is not None else None
                key = str(index + offset) if raw_key is None or raw_key == "" else str(raw_key)
                caption = captions[offset] if captions is not None else None
                caption = "" if caption is None else str(caption).strip()
                image = images[offset]
                error = "" if image else f"no_image: {key}"
                yield image_row(set_name, shard, key, f"{uri}#{key}", caption, image or b"", error)
            index += size
    except (OSError, ValueError) as exc:
        error = f"read_error: {uri}: {first_line(exc)} after {index} rows"
        yield shard_error_row(uri, set_name, error)
        return
    if index == 0:
        yield shard_error_row(uri, set_name, "empty_shard: the file holds no rows")
