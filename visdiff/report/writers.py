"""Run-folder writers, for a local folder or an s3:// prefix. Each file is written whole in one
step (local: temp file + rename; S3: one PUT), so a killed run never leaves a half-written
result that looks complete."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.schema import RANKED_COLUMNS
from visdiff.sources import filesystem


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


class RunFolder:
    """Where one run's files go: `output_dir`, local or remote."""

    def __init__(self, uri: str) -> None:
        self.uri = str(uri).rstrip("/") or "/"
        if not filesystem.is_remote(self.uri):
            import os

            os.makedirs(filesystem.local_path(self.uri), exist_ok=True)

    def path(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def display(self) -> str:
        if filesystem.is_remote(self.uri):
            return self.uri
        import os

        return os.path.abspath(filesystem.local_path(self.uri))

    def write_bytes(self, name: str, data: bytes) -> None:
        filesystem.write_bytes(self.path(name), data)

    def write_text(self, name: str, text: str) -> None:
        self.write_bytes(name, text.encode("utf-8"))

    def write_json(self, name: str, payload: Any) -> None:
        text = json.dumps(_clean(payload), indent=2, default=_json_default, allow_nan=False)
        self.write_text(name, text + "\n")

    def write_jsonl(self, name: str, rows: Iterable[dict[str, Any]]) -> None:
        lines = [json.dumps(_clean(r), default=_json_default, allow_nan=False) for r in rows]
        self.write_text(name, "".join(line + "\n" for line in lines))

    def write_ranked(self, rows: list[dict[str, Any]]) -> None:
        """ranked.json and ranked.parquet hold the same rows, best first."""
        self.write_json("ranked.json", rows)
        columns = list(RANKED_COLUMNS) + [
            k for k in (rows[0] if rows else {}) if k not in RANKED_COLUMNS
        ]
        if rows:
            table = pa.table({c: [r.get(c) for r in rows] for c in columns})
        else:
            table = pa.table(
                {
                    c: pa.array([], pa.string() if c == "hypothesis" else pa.float64())
                    for c in columns
                }
            )
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        self.write_bytes("ranked.parquet", buffer.getvalue())
