"""Run-folder writers, for a local folder or an s3:// prefix. Each file is written whole in one
step (local: temp file + rename; S3: one PUT), so a killed run never leaves a half-written
result that looks complete."""

from __future__ import annotations

import io
import json
import logging
import math
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.errors import ConfigError, InputError, VisdiffError
from visdiff.io import storage
from visdiff.schema import RANKED_COLUMNS, RUN_FILES

log = logging.getLogger(__name__)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


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


STATUS = "status.json"
# Every file a describe run writes (RUN_FILES holds status.json); an overwrite deletes these.
TRACEBACK = "traceback.txt"  # the CLI's full traceback of an unexpected error
DESCRIBE_FILES = (*RUN_FILES, "metrics.json", TRACEBACK)
EMBED = "embed_stats.json"  # `visdiff embed` writes only this


def one_line(exc: BaseException) -> str:
    """An exception as the one line the CLI prints (our errors carry their own text)."""
    text = " ".join(str(exc).split())
    if isinstance(exc, VisdiffError):
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class RunFolder:
    """Where one run's files go: `output_dir`, local or remote.

    A describe run claims the folder (`check_unused`, before any input is read), clears the
    previous run's files when told to overwrite (`begin`, status.json first), and writes
    status.json last: `complete`, or `failed` with the error. A reader trusts the other files
    only when status.json says complete."""

    def __init__(self, uri: str) -> None:
        self.uri = str(uri).rstrip("/") or "/"
        self.written: list[str] = []  # names written by this run, in order

    def path(self, name: str) -> str:
        return f"{self.uri}/{name}"

    def display(self) -> str:
        if storage.is_remote(self.uri):
            return self.uri
        return os.path.abspath(storage.local_path(self.uri))

    def write_bytes(self, name: str, data: bytes) -> None:
        storage.write_bytes(self.path(name), data)
        if name not in self.written:
            self.written.append(name)

    # --- integrity: refuse a used folder, clear it on overwrite, status.json last ------------

    def entries(self) -> list[str]:
        """Names directly inside the folder; [] when it does not exist yet."""
        try:
            return storage.entry_names(self.uri)
        except NotADirectoryError:
            raise self._is_a_file() from None
        except OSError as exc:
            raise InputError(
                f"output_dir '{self.uri}' cannot be listed: {one_line(exc)}; check the path "
                "(and for s3:// the endpoint and credentials)"
            ) from None

    def _is_a_file(self) -> ConfigError:
        return ConfigError(f"output_dir '{self.uri}' is a file; give a folder (new or empty)")

    def check_unused(self, *, overwrite: bool, only: tuple[str, ...] | None = None) -> None:
        """Refuse a folder that already holds files unless `overwrite`: a new run must never mix
        its files with an earlier run's. Counted: every entry except embed_stats.json (which
        `visdiff embed` may leave for a describe run), or with `only`, just those names."""
        entries = self.entries()
        used = [n for n in entries if n in only] if only else [n for n in entries if n != EMBED]
        if used and not overwrite:
            shown = ", ".join(used[:5]) + (f" and {len(used) - 5} more" if len(used) > 5 else "")
            raise ConfigError(
                f"output_dir '{self.uri}' is not empty ({shown}); choose a new output_dir or "
                "pass --overwrite (overwrite=true) to replace the earlier run"
            )

    def begin(self, own_files: tuple[str, ...] = DESCRIBE_FILES) -> None:
        """Delete an earlier run's files, status.json first: if this is interrupted, what is
        left cannot look complete. Other files in the folder are left alone."""
        present = set(self.entries())
        try:
            for name in sorted(present & set(own_files), key=lambda n: n != STATUS):
                storage.delete_file(self.path(name))
            storage.make_folder(self.uri)
        except OSError as exc:
            raise InputError(
                f"output_dir '{self.uri}' cannot be cleared or created: {one_line(exc)}"
            ) from None

    @contextmanager
    def recording_status(self) -> Iterator[None]:
        """Around the run's writes: status.json is written last, `complete` when the block
        ends normally, `failed` with the one-line error when it raises (which is re-raised)."""
        try:
            yield
        except BaseException as exc:
            failed = {
                "state": "failed",
                "error": one_line(exc)[:2000],
                "exit_code": exc.exit_code if isinstance(exc, VisdiffError) else 1,
                "files": list(self.written),
                "finished": _now(),
            }
            try:
                self.write_json(STATUS, failed)
            except Exception as write_error:  # the original error matters more
                log.warning("could not write %s: %s", self.path(STATUS), one_line(write_error))
            raise
        files = [name for name in self.written if name != STATUS]
        self.write_json(STATUS, {"state": "complete", "files": files, "finished": _now()})

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
