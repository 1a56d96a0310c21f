"""Run-folder writers. Files are written atomically (temp file + rename) so that a killed run
never leaves a half-written result that looks complete."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.schema import RANKED_COLUMNS


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _clean(value: Any) -> Any:
    """JSON has no NaN/inf: write them as null rather than as invalid JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def write_text(path: Path, text: str) -> None:
    _atomic_write(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    text = json.dumps(_clean(payload), indent=2, default=_json_default, allow_nan=False)
    write_text(path, text + "\n")


def write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> None:
    lines = [json.dumps(_clean(r), default=_json_default, allow_nan=False) for r in rows]
    write_text(path, "".join(line + "\n" for line in lines))


def write_ranked(run_dir: Path, rows: list[dict[str, Any]]) -> None:
    """ranked.json and ranked.parquet hold the same rows, best first."""
    write_json(run_dir / "ranked.json", rows)
    columns = list(RANKED_COLUMNS) + [
        k for k in (rows[0] if rows else {}) if k not in RANKED_COLUMNS
    ]
    table = (
        pa.table({c: [r.get(c) for r in rows] for c in columns})
        if rows
        else pa.table(
            {
                c: pa.array([], type=pa.string() if c == "hypothesis" else pa.float64())
                for c in columns
            }
        )
    )
    tmp = run_dir / ".ranked.parquet.tmp"
    pq.write_table(table, tmp)
    os.replace(tmp, run_dir / "ranked.parquet")
