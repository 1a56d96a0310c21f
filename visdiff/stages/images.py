"""Getting a row's image: bytes already in the row (shards), else read from its URI. A failure
becomes the row's ERROR text, never an exception out of the batch."""

from __future__ import annotations

from typing import Any

import numpy as np

from visdiff import schema
from visdiff.errors import first_line

Batch = dict[str, np.ndarray]


def decode_error_text(exc: Exception) -> str:
    """ERROR column text "<reason>: <detail>" for an ImageDecodeError (or anything else)."""
    reason = str(getattr(exc, "reason", "read_error"))
    detail = str(getattr(exc, "detail", "") or "")
    text = str(exc)
    if detail:
        return f"{reason}: {detail}"
    if text.startswith(reason):
        return text
    return f"{reason}: {text}" if text else reason


def _column(batch: Batch, name: str, default: Any, n: int) -> list[Any]:
    return list(batch[name]) if name in batch else [default] * n


def load_bytes(batch: Batch) -> tuple[list[bytes | None], list[str]]:
    """Encoded bytes per row (None where the row already failed or cannot be read)."""
    from visdiff.io.storage import read_bytes

    uris = list(batch[schema.URI])
    n = len(uris)
    given = _column(batch, schema.IMAGE_BYTES, b"", n)
    errors = [str(e) for e in _column(batch, schema.ERROR, "", n)]
    datas: list[bytes | None] = []
    for i, uri in enumerate(uris):
        if errors[i]:
            datas.append(None)
        elif given[i] is not None and len(given[i]) > 0:
            datas.append(bytes(given[i]))
        else:
            try:
                datas.append(read_bytes(str(uri)))
            except Exception as exc:  # any storage error costs this row only
                datas.append(None)
                errors[i] = f"read_error: {uri}: {first_line(exc, typed=True)}"
    return datas, errors


def decode_all(
    datas: list[bytes | None], errors: list[str], *, skip: set[int] | None = None
) -> list[Any]:
    """Decoded RGB images (None for failed or skipped rows); updates `errors` in place."""
    from visdiff.sources.decode import decode_image

    images: list[Any] = []
    for i, data in enumerate(datas):
        if data is None or (skip and i in skip):
            images.append(None)
            continue
        try:
            images.append(decode_image(data))
        except Exception as exc:  # ImageDecodeError, or a decoder bug: one row, not the batch
            images.append(None)
            errors[i] = decode_error_text(exc)
    return images


def row_thumbnail(row: dict[str, Any]) -> bytes | None:
    """A small JPEG of one row's image (its bytes, else read from its URI); None when it cannot
    be decoded. For the report's few sampled images, decoded on the driver."""
    from visdiff.sources.decode import (
        ImageDecodeError,
        decode_image,
        read_and_decode,
        thumbnail_jpeg,
    )

    try:
        data = row.get(schema.IMAGE_BYTES)
        image = decode_image(data) if data else read_and_decode(row[schema.URI])
    except ImageDecodeError:
        return None
    return thumbnail_jpeg(image)


def passthrough(batch: Batch, drop: tuple[str, ...] = ()) -> Batch:
    return {key: value for key, value in batch.items() if key not in drop}


def strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)
