"""VisDiff-style manifests: one row per image with `path` and columns that choose its set.

A set is the rows of one `group_name` (data.group_a) or the rows a filter over the columns
selects (data.filter_a: `score >= 0.8`, see sources/filters.py); data.subset first limits the
rows to named groups. A row that both sets select is ambiguous: skipped and recorded for each.

Relative paths resolve against data.root (default: the manifest's folder), so a dataset folder
can be moved as a whole. Absolute paths and paths that leave the root are refused (skipped,
recorded) unless data.allow_outside_root: a manifest from elsewhere cannot make a run read
arbitrary files. The check is on the written path (no symlinks are resolved): links inside the
root are the dataset owner's choice. Rows whose local file is missing are skipped and recorded
rather than fatal: real manifests often outlive a few of their files.
"""

from __future__ import annotations

import difflib
import io
import math
import os
import posixpath
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from visdiff.errors import InputError, first_line
from visdiff.io import storage
from visdiff.schema import SET_A, SET_B
from visdiff.sources.filters import compile_filter
from visdiff.sources.records import ImageRecord, ImageSets

if TYPE_CHECKING:
    import pandas as pd

    from visdiff.config import DataConfig

PATH = "path"
GROUP = "group_name"
CAPTION = "caption"
REQUIRED_COLUMNS = (PATH, GROUP)
MAX_LISTED_GROUPS = 10
# Reason codes of manifest rows that are not used (beside missing, not_a_file, duplicate, ...).
ABSOLUTE_PATH = "absolute_path"
OUTSIDE_ROOT = "outside_root"
AMBIGUOUS = "ambiguous"
CONFINED = (ABSOLUTE_PATH, OUTSIDE_ROOT)


def _read_csv(data: bytes) -> pd.DataFrame:
    import pandas as pd

    # Everything as text: "000001.jpg" or "0042" must never become numbers, "NA" is a caption.
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False, na_filter=False)


def _read_parquet(data: bytes) -> pd.DataFrame:
    """From an Arrow buffer, not a Python file object (see report.render.read_evidence)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    return pq.read_table(pa.BufferReader(data)).to_pandas()


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


def read_manifest_table(manifest: str, required: Sequence[str] = REQUIRED_COLUMNS) -> pd.DataFrame:
    """The manifest as a DataFrame, with the `required` columns checked; InputError otherwise."""
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
    missing = [c for c in required if c not in columns]
    if missing:
        needs = ", ".join(required)
        raise InputError(
            f"data.manifest '{manifest}' lacks column(s) {', '.join(missing)} "
            f"(present: {', '.join(columns) or 'none'}); it needs columns {needs} "
            "and optionally caption"
        )
    return table


def _listing(values: list[str]) -> str:
    shown = ", ".join(f"'{v}'" for v in values[:MAX_LISTED_GROUPS])
    more = len(values) - MAX_LISTED_GROUPS
    return (shown or "none") + (f" (+{more} more)" if more > 0 else "")


def _group_error(manifest: str, key: str, group: str, available: list[str]) -> InputError:
    close = difflib.get_close_matches(group, available, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    return InputError(
        f"{key} '{group}' is not a group_name in data.manifest '{manifest}'; "
        f"available: {_listing(available)}.{hint}"
    )


@dataclass(frozen=True)
class SetRule:
    """How one set's rows are chosen: a group_name value or a filter expression."""

    set_name: str  # "a" | "b"
    group: str | None
    filter: str | None

    @property
    def key(self) -> str:
        kind = "filter" if self.filter else "group"
        return f"data.{kind}_{self.set_name}"

    @property
    def text(self) -> str:
        """The group name or the expression: also the set's display name."""
        return str(self.filter or self.group)


def set_rules(data: DataConfig) -> tuple[SetRule, SetRule]:
    """Sets A and B of a manifest run; InputError unless each has exactly one of group/filter."""
    rules = []
    for side in (SET_A, SET_B):
        group, rule = getattr(data, f"group_{side}"), getattr(data, f"filter_{side}")
        if bool(group) == bool(rule):
            raise InputError(
                f"data.manifest needs exactly one of data.group_{side} (a group_name value) and "
                f"data.filter_{side} (a filter over manifest columns, e.g. 'score >= 0.8')"
            )
        rules.append(SetRule(side, str(group) if group else None, str(rule) if rule else None))
    return rules[0], rules[1]


def _required_columns(data: DataConfig, rules: Sequence[SetRule]) -> list[str]:
    needed = [PATH]
    if any(r.group for r in rules) or (data.subset and data.subset_column == GROUP):
        needed.append(GROUP)
    return needed


def _column(table: pd.DataFrame, manifest: str, key: str, column: str) -> list[str]:
    """A column's cells as text; InputError naming `key` when the manifest lacks it."""
    if column not in table.columns:
        present = ", ".join(str(c) for c in table.columns)
        raise InputError(
            f"{key} '{column}' is not a column of data.manifest '{manifest}' "
            f"(present: {present}); name one of those columns"
        )
    return [_text(v) for v in table[column]]


def _apply_subset(table: pd.DataFrame, data: DataConfig, manifest: str) -> pd.DataFrame:
    """The rows whose data.subset_column is one of data.subset (all rows without a subset)."""
    if not data.subset:
        return table
    names = [str(n) for n in data.subset]
    values = _column(table, manifest, "data.subset_column", data.subset_column)
    present = list(dict.fromkeys(values))
    unknown = [n for n in names if n not in set(present)]
    if unknown:
        close = difflib.get_close_matches(unknown[0], present, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise InputError(
            f"data.subset name '{unknown[0]}' is not a value of column '{data.subset_column}' "
            f"in data.manifest '{manifest}'; present: {_listing(present)}.{hint}"
        )
    wanted = set(names)
    return table[[v in wanted for v in values]]


def _matches(
    table: pd.DataFrame, full: pd.DataFrame, rule: SetRule, manifest: str, subset: bool
) -> list[bool]:
    """Which rows of `table` the rule selects (one bool per row); InputError when none does."""
    after = " after data.subset" if subset else ""
    if rule.group is not None:
        groups = [_text(g) for g in table[GROUP]]
        if rule.group not in set(groups):
            every = list(dict.fromkeys(_text(g) for g in full[GROUP]))
            if subset and rule.group in every:
                raise InputError(
                    f"{rule.key} '{rule.group}' has no rows left{after}; add it to data.subset "
                    "or drop data.subset"
                )
            raise _group_error(manifest, rule.key, rule.group, every)
        return [g == rule.group for g in groups]
    keep = compile_filter(str(rule.filter), list(table.columns), key=rule.key)
    cells = table[list(keep.columns)].to_dict("records") if keep.columns else [{}] * len(table)
    mask = [keep(row) for row in cells]
    if not any(mask):
        raise InputError(
            f"{rule.key} '{rule.filter}' matches none of the {len(table)} rows of data.manifest "
            f"'{manifest}'{after}; check the columns' values (CSV cells are compared as text "
            "with quoted strings and as numbers with numbers)"
        )
    return mask


# -- paths ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class PathRoot:
    """Where relative manifest paths resolve (data.root, else the manifest's folder)."""

    base: str  # absolute local folder, or a URI without trailing slash
    remote: bool
    allow_outside: bool = False
    described: str = "the manifest's folder"  # for messages

    @classmethod
    def for_manifest(cls, data: DataConfig) -> PathRoot:
        manifest = str(data.manifest)
        allow = bool(data.allow_outside_root)
        if data.root:
            root = str(data.root)
            if storage.is_remote(root):
                return cls(root.rstrip("/"), True, allow, f"data.root '{root}'")
            local = os.path.abspath(storage.local_path(root))
            if not os.path.isdir(local):
                raise InputError(
                    f"data.root '{root}' is not a folder; point it at the folder the manifest's "
                    "relative paths start from (or leave it unset: the manifest's folder)"
                )
            return cls(local, False, allow, f"data.root '{root}'")
        if storage.is_remote(manifest):
            return cls(posixpath.dirname(manifest), True, allow)
        return cls(os.path.dirname(os.path.abspath(storage.local_path(manifest))), False, allow)


def _escapes(rel: str) -> bool:
    return rel == ".." or rel.startswith("../")


def _join_remote(base: str, rel: str) -> str:
    scheme, rest = base.split("://", 1)
    return f"{scheme}://{posixpath.normpath(f'{rest}/{rel}')}"


def resolve_path(path: str, root: PathRoot) -> tuple[str, str, str | None]:
    """(uri, id path, problem) of a manifest path. problem is `absolute_path` or
    `outside_root` for paths that leave the root (None when data.allow_outside_root); the id
    path is relative to the root when inside it.

    >>> root = PathRoot("/data/ds", remote=False)
    >>> resolve_path("img/1.jpg", root)
    ('/data/ds/img/1.jpg', 'img/1.jpg', None)
    >>> resolve_path("../secret.txt", root)[2], resolve_path("/etc/passwd", root)[2]
    ('outside_root', 'absolute_path')
    >>> resolve_path("s3://b/x.jpg", root)[2], resolve_path("img/../../ds/1.jpg", root)[1]
    ('absolute_path', '1.jpg')
    >>> resolve_path("/etc/passwd", PathRoot("/data/ds", False, allow_outside=True))
    ('/etc/passwd', 'etc/passwd', None)
    """
    allow = root.allow_outside
    if storage.is_remote(path):
        prefix = root.base + "/"
        if root.remote and path.startswith(prefix):
            rel = posixpath.normpath(path[len(prefix) :])
            if not _escapes(rel):
                return _join_remote(root.base, rel), rel, None if allow else ABSOLUTE_PATH
        return path, path.split("://", 1)[1], None if allow else ABSOLUTE_PATH
    local = storage.local_path(path)
    if posixpath.isabs(local) or os.path.isabs(local):
        uri = os.path.normpath(local)
        rel = "" if root.remote else os.path.relpath(uri, root.base).replace(os.sep, "/")
        if not rel or _escapes(rel):
            rel = uri.lstrip(os.sep).replace(os.sep, "/")
        return uri, rel, None if allow else ABSOLUTE_PATH
    if root.remote:
        rel = posixpath.normpath(local)
        problem = OUTSIDE_ROOT if _escapes(rel) and not allow else None
        return _join_remote(root.base, rel), rel, problem
    uri = os.path.normpath(os.path.join(root.base, local))
    inside = os.path.relpath(uri, root.base).replace(os.sep, "/")
    if _escapes(inside):  # the id keeps the path as written ("../x/1.jpg"): unique, readable
        problem = None if allow else OUTSIDE_ROOT
        return uri, os.path.normpath(local).replace(os.sep, "/"), problem
    return uri, inside, None


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


# -- records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Rows:
    """One set's selected rows as text columns, plus which of them the other set selects too."""

    paths: list[str]
    captions: list[str]
    pairs: list[str]
    ambiguous: list[bool]


def _records_for_set(
    rows: _Rows,
    rule: SetRule,
    manifest: str,
    root: PathRoot,
    skipped: list[dict[str, Any]],
) -> list[ImageRecord]:
    set_name = rule.set_name
    records: list[ImageRecord] = []
    seen: set[str] = set()
    problems: dict[str, int] = {}
    for raw, caption, pair, ambiguous in zip(
        rows.paths, rows.captions, rows.pairs, rows.ambiguous, strict=True
    ):
        path = raw.strip()
        if not path:
            problem, uri, rel = "empty_path", "", ""
        else:
            uri, rel, problem = resolve_path(path, root)
            if problem is None and ambiguous:
                problem = AMBIGUOUS
            if problem is None:
                problem = _file_problem(uri)
            if problem is None and rel in seen:
                problem = "duplicate"
        if problem is not None:
            skipped.append({"uri": uri or path, "set": set_name, "reason": problem})
            problems[problem] = problems.get(problem, 0) + 1
            continue
        seen.add(rel)
        records.append(ImageRecord(f"{set_name}/{rel}", set_name, uri, caption, pair))
    if not records:
        counts = ", ".join(f"{n} {reason}" for reason, n in sorted(problems.items()))
        first = next((s["uri"] for s in skipped if s["set"] == set_name), "")
        fixes = []
        if set(problems) - {AMBIGUOUS}:
            fixes.append(f"fix the paths (relative paths resolve against {root.described})")
        if any(p in problems for p in CONFINED):
            fixes.append("absolute paths and paths leaving it need data.allow_outside_root=true")
        if AMBIGUOUS in problems:
            fixes.append("make the rules of sets A and B exclude each other (rows both select)")
        fix = "; ".join(fixes)
        raise InputError(
            f"{rule.key} '{rule.text}' in data.manifest '{manifest}' has no usable image: all "
            f"{len(rows.paths)} rows were skipped ({counts}; first: '{first}'); {fix}"
        )
    return records


def load_manifest(data: DataConfig) -> ImageSets:
    """Sets A and B from the manifest rows data.group_x / data.filter_x select (within
    data.subset), with rows that both select, and paths outside the root, skipped."""
    manifest = str(data.manifest)
    rules = set_rules(data)
    root = PathRoot.for_manifest(data)
    full = read_manifest_table(manifest, _required_columns(data, rules))
    table = _apply_subset(full, data, manifest)
    masks = [_matches(table, full, rule, manifest, bool(data.subset)) for rule in rules]
    both = [a and b for a, b in zip(masks[0], masks[1], strict=True)]
    paths = [_text(v) for v in table[PATH]]
    captions = [_text(v) for v in table[CAPTION]] if CAPTION in table.columns else None
    pairs = (
        _column(table, manifest, "data.pair_column", data.pair_column) if data.pair_column else None
    )
    skipped: list[dict[str, Any]] = []
    sets: list[list[ImageRecord]] = []
    for rule, mask in zip(rules, masks, strict=True):
        chosen = [i for i, keep in enumerate(mask) if keep]
        rows = _Rows(
            paths=[paths[i] for i in chosen],
            captions=[captions[i] for i in chosen] if captions else [""] * len(chosen),
            pairs=[pairs[i] for i in chosen] if pairs else [""] * len(chosen),
            ambiguous=[both[i] for i in chosen],
        )
        sets.append(_records_for_set(rows, rule, manifest, root, skipped))
    selection: dict[str, Any] = {
        "manifest_rows": len(full),
        "rows_a": sum(masks[0]),
        "rows_b": sum(masks[1]),
        "ambiguous": sum(both),
    }
    if data.subset:
        selection["subset_rows"] = len(table)
    return ImageSets(
        a=sets[0],
        b=sets[1],
        name_a=rules[0].text,
        name_b=rules[1].text,
        skipped=skipped,
        selection=selection,
    )
