"""VisDiff-style manifests: one row per image with `path`, `group_name` and optional `caption`.

Relative paths resolve against the manifest's folder, so a dataset folder can be moved as a
whole; absolute paths and URIs are kept. Rows whose local file is missing are skipped and
recorded rather than fatal: real manifests often outlive a few of their files.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import posixpath
import stat
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from visdiff.errors import InputError, first_line
from visdiff.io import storage
from visdiff.schema import SET_A, SET_B
from visdiff.sources.records import ImageRecord, ImageSets

if TYPE_CHECKING:
    import pandas as pd

    from visdiff.config import DataConfig

PATH = "path"
GROUP = "group_name"
CAPTION = "caption"
REQUIRED_COLUMNS = (PATH, GROUP)
MAX_LISTED_GROUPS = 10


def _read_csv(data: bytes) -> pd.DataFrame:
    import pandas as pd

    # Everything as text: "000001.jpg" or "0042" must never become numbers, "NA" is a caption.
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)


def _read_parquet(data: bytes) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(io.BytesIO(data)).to_pandas()


def _read_jsonl(data: bytes) -> pd.DataFrame:
    import pandas as pd

    # dtype=False keeps "000001" a string; a .json file holding one array is accepted too.
    if data.lstrip()[:1] == b"[":
        return pd.read_json(io.BytesIO(data), orient="records", dtype=False)
    return pd.read_json(io.BytesIO(data), lines=True, dtype=False)


# extension -> (format name, table reader); add an entry to support a new manifest format.
FORMATS: dict[str, tuple[str, Callable[[bytes], pd.DataFrame]]] = {
    ".csv": ("CSV", _read_csv),
    ".parquet": ("Parquet", _read_parquet),
    ".jsonl": ("JSON lines", _read_jsonl),
    ".json": ("JSON lines", _read_jsonl),
}


def _text(value: Any) -> str:
    """A cell as text; null and NaN become ""."""
    if value is None:
        return ""
    if isinstance(value, float) and math.isnan(value):
        return ""
    try:
        import pandas as pd

        if value is pd.NA or value is pd.NaT:
            return ""
    except ImportError:  # pragma: no cover - pandas is a dependency
        pass
    return str(value)


def read_manifest_table(manifest: str) -> pd.DataFrame:
    """The manifest as a DataFrame, with the path/group columns checked; InputError otherwise."""
    ext = os.path.splitext(manifest)[1].lower()
    if ext not in FORMATS:
        supported = ", ".join(FORMATS)
        raise InputError(
            f"data.manifest '{manifest}': unsupported extension '{ext or '(none)'}'; "
            f"use one of {supported} (.json/.jsonl: one JSON object per line)"
        )
    if not storage.exists(manifest):
        raise InputError(
            f"data.manifest '{manifest}' not found; pass the path of an existing manifest file"
        )
    if storage.is_dir(manifest):
        raise InputError(
            f"data.manifest '{manifest}' is a folder; pass the manifest file, or use "
            "data.set_a/data.set_b for two image folders"
        )
    format_name, reader = FORMATS[ext]
    try:
        table = reader(storage.read_bytes(manifest))
    except Exception as exc:  # parsers raise many types (ParserError, ArrowInvalid, ...)
        raise InputError(
            f"data.manifest '{manifest}' could not be read as {format_name}: {first_line(exc)}; "
            "fix the file or save it in another supported format"
        ) from None
    columns = [str(c) for c in table.columns]
    table.columns = columns
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise InputError(
            f"data.manifest '{manifest}' lacks column(s) {', '.join(missing)} "
            f"(present: {', '.join(columns) or 'none'}); it needs columns path, group_name "
            "and optionally caption"
        )
    return table


def _group_error(manifest: str, key: str, group: str, available: list[str]) -> InputError:
    close = difflib.get_close_matches(group, available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    shown = ", ".join(f"'{g}'" for g in available[:MAX_LISTED_GROUPS])
    more = (
        f" (+{len(available) - MAX_LISTED_GROUPS} more)"
        if len(available) > MAX_LISTED_GROUPS
        else ""
    )
    return InputError(
        f"{key} '{group}' is not a group_name in data.manifest '{manifest}'; "
        f"available: {shown or 'none'}{more}.{hint}"
    )


def _base_folder(manifest: str) -> str:
    if storage.is_remote(manifest):
        return posixpath.dirname(manifest)
    return os.path.dirname(os.path.abspath(storage.local_path(manifest)))


def _resolve(path: str, base: str, remote_base: bool) -> tuple[str, str]:
    """(uri, path relative to the manifest folder or the URI without scheme) for a row."""
    if storage.is_remote(path):
        prefix = base.rstrip("/") + "/"
        if remote_base and path.startswith(prefix):
            return path, posixpath.normpath(path[len(prefix) :])
        return path, path.split("://", 1)[1]
    if remote_base:  # relative row in a remote manifest: same bucket, same folder
        rel = posixpath.normpath(path)
        return f"{base.rstrip('/')}/{rel}", rel
    local = storage.local_path(path)
    if os.path.isabs(local):
        uri = os.path.normpath(local)
        rel = os.path.relpath(uri, base)
        if rel.startswith(os.pardir):
            rel = uri.lstrip(os.sep)
    else:
        uri = os.path.normpath(os.path.join(base, local))
        rel = os.path.normpath(local)
    return uri, rel.replace(os.sep, "/")


def _file_problem(uri: str) -> str | None:
    """Why a local row cannot be used (one stat), or None. Remote rows are checked at read."""
    if storage.is_remote(uri):
        return None
    try:
        st = os.stat(uri)
    except FileNotFoundError:
        return "missing"
    except NotADirectoryError:
        return "missing"
    except OSError:
        return "unreadable"
    return None if stat.S_ISREG(st.st_mode) else "not_a_file"


def _records_for_group(
    table: pd.DataFrame,
    manifest: str,
    key: str,
    group: str,
    set_name: str,
    skipped: list[dict[str, Any]],
) -> list[ImageRecord]:
    base = _base_folder(manifest)
    remote_base = storage.is_remote(manifest)
    rows = table[table[GROUP].map(_text) == group]
    captions = rows[CAPTION] if CAPTION in rows.columns else [""] * len(rows)
    records: list[ImageRecord] = []
    seen: set[str] = set()
    problems: dict[str, int] = {}
    for raw_path, raw_caption in zip(rows[PATH], captions, strict=True):
        path = _text(raw_path).strip()
        if not path:
            problem, uri, rel = "empty_path", "", ""
        else:
            uri, rel = _resolve(path, base, remote_base)
            problem = _file_problem(uri)
            if problem is None and rel in seen:
                problem = "duplicate"
        if problem is not None:
            skipped.append({"uri": uri or path, "set": set_name, "reason": problem})
            problems[problem] = problems.get(problem, 0) + 1
            continue
        seen.add(rel)
        records.append(ImageRecord(f"{set_name}/{rel}", set_name, uri, _text(raw_caption)))
    if not records:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(problems.items()))
        first = next((s["uri"] for s in skipped if s["set"] == set_name), "")
        raise InputError(
            f"{key} '{group}' in data.manifest '{manifest}' has no usable image: all "
            f"{len(rows)} rows were skipped ({counts}; first: '{first}'); fix the paths "
            "(relative paths resolve against the manifest's folder)"
        )
    return records


def load_manifest(data: DataConfig) -> ImageSets:
    """Sets A and B from the manifest rows of data.group_a and data.group_b."""
    manifest = str(data.manifest)
    for key, group in (("data.group_a", data.group_a), ("data.group_b", data.group_b)):
        if not group:
            raise InputError(f"{key} is not set; data.manifest needs group_name values for A and B")
    table = read_manifest_table(manifest)
    available = list(dict.fromkeys(_text(g) for g in table[GROUP]))
    for key, group in (("data.group_a", data.group_a), ("data.group_b", data.group_b)):
        if group not in available:
            raise _group_error(manifest, key, str(group), available)
    skipped: list[dict[str, Any]] = []
    a = _records_for_group(table, manifest, "data.group_a", str(data.group_a), SET_A, skipped)
    b = _records_for_group(table, manifest, "data.group_b", str(data.group_b), SET_B, skipped)
    return ImageSets(a=a, b=b, name_a=str(data.group_a), name_b=str(data.group_b), skipped=skipped)
