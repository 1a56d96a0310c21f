"""The row every shard reader yields per image, and the row standing for a whole failed shard."""

from __future__ import annotations

import os
import posixpath
from typing import Any

from visdiff.io import storage
from visdiff.schema import CAPTION, ERROR, ID, IMAGE_BYTES, PAIR, SET, URI

# PAIR is always empty here; listed rows (ImageRecord.to_dict) carry it, and a run may union
# listed and shard sets, so both have the same columns.
ROW_COLUMNS = (ID, SET, URI, CAPTION, PAIR, IMAGE_BYTES, ERROR)
SHARD_ERROR_KEY = "__shard_error__"  # key of the row that stands for a whole-shard failure


def shard_name(uri: str) -> str:
    """The shard's file name ("00042.tar"): the middle part of every row id."""
    if storage.is_remote(uri):
        return posixpath.basename(uri.rstrip("/"))
    return os.path.basename(storage.local_path(uri))


def image_row(
    set_name: str, shard: str, key: str, uri: str, caption: str, image: bytes, error: str
) -> dict[str, Any]:
    """One image's row; its id "<set>/<shard file name>/<key>" is stable across runs."""
    return {
        ID: f"{set_name}/{shard}/{key}",
        SET: set_name,
        URI: uri,
        CAPTION: caption,
        PAIR: "",
        IMAGE_BYTES: image,
        ERROR: error,
    }


def shard_error_row(uri: str, set_name: str, error: str) -> dict[str, Any]:
    """A row counting a shard that could not be read (or held nothing) as one loss."""
    return image_row(set_name, shard_name(uri), SHARD_ERROR_KEY, uri, "", b"", error)
