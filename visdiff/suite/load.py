"""Read a bench suite: pairs of image sets, each with what each set shows and the difference.

A suite is a ground-truth table, one row per pair, as JSONL (VisDiffBench's
`pairedimagesets_{easy,medium,hard}.jsonl` as they are) or CSV, or a folder of them:

  set1, set2   what set A / set B shows (the paper's group names: its judge's ground truth)
  difference   the difference in words (reported beside the results)
  id, difficulty, ground_truth_a, ground_truth_b, set_a, set_b, manifest   optional

Difficulty comes from the row, else from the file name (`..._easy.jsonl` -> easy). A pair's
images are found, in this order: the row's `set_a`/`set_b` folders; the PairedImageSets layout
`<images>/<id>/set1/` and `<id>/set2/` (also `set_a`/`set_b`), where <images> is `root`, else
the suite's folder; a manifest (the row's `manifest`, else the one given): the paper's original
CSV (`path,group_name[,...]`) as is, its rows with group_name = set1 / set2. Relative paths
resolve against `root` when given (the original repo's paths are relative to its root, not to
the CSV's folder), else against the file that names them. A folder holding no table is read as
the layout alone: `<id>/pair.json` ({"set1", "set2", "difference", ...}) beside `<id>/set1/`.
"""

from __future__ import annotations

import csv
import functools
import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visdiff.errors import InputError

DIFFICULTIES = ("easy", "medium", "hard")
SIDES = (("set1", "set_a"), ("set2", "set_b"))  # (layout folder name, alternative name)
_SAFE_ID = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class BenchPair:
    id: str  # unique in the suite; the pair's run folder is pairs/<id>/
    suite: str  # e.g. "pairedimagesets" (from the table's file name)
    difficulty: str  # easy | medium | hard, or what the row says ("-" when unknown)
    set1: str  # what set A shows
    set2: str  # what set B shows
    difference: str
    ground_truth_a: str  # evaluate.ground_truth_a of the pair's run (default: set1)
    ground_truth_b: str | None  # evaluate.ground_truth_b (default: set2)
    data: dict[str, Any] = field(default_factory=dict)  # data.* keys selecting its images


def load_suite(
    csv_or_dir: str | Path,
    *,
    root: str | None = None,
    manifest: str | None = None,
    require_images: bool = True,
) -> list[BenchPair]:
    """The suite's pairs in table order; a one-line InputError names a bad row and the fix."""
    path = Path(csv_or_dir)
    if not path.exists():
        raise InputError(
            f"bench suite '{path}' does not exist: give a .jsonl/.csv table or a folder"
        )
    if path.is_dir():
        tables = sorted(
            (p for p in path.iterdir() if p.suffix in (".jsonl", ".csv") and _is_table(p)),
            key=_table_order,
        )
        if tables:
            rows = [row for table in tables for row in _table_rows(table)]
        else:
            rows = _layout_rows(path)
    else:
        if not _is_table(path):
            raise InputError(
                f"bench suite '{path}' has no set1/set2/difference columns; an image manifest "
                "(path, group_name) is given with --manifest beside a ground-truth table"
            )
        rows = _table_rows(path)
    if not rows:
        raise InputError(f"bench suite '{path}' holds no pairs")
    pairs = [_pair(row, root=root, manifest=manifest, require=require_images) for row in rows]
    repeated = [i for i, n in Counter(p.id for p in pairs).items() if n > 1]
    if repeated:
        raise InputError(
            f"bench suite '{path}': pair id '{repeated[0]}' is used more than once; give each "
            "row its own id"
        )
    return pairs


def _is_table(path: Path) -> bool:
    """A ground-truth table (set1/set2/difference), not an image manifest."""
    try:
        if path.suffix == ".csv":
            with path.open(newline="", encoding="utf-8") as handle:
                header = next(csv.reader(handle), [])
            return {"set1", "set2"} <= set(header)
        with path.open(encoding="utf-8") as handle:
            first = next((line for line in handle if line.strip()), "{}")
        row = json.loads(first)
        return isinstance(row, dict) and {"set1", "set2"} <= set(row)
    except (OSError, ValueError, UnicodeDecodeError):
        return False


def _table_order(path: Path) -> tuple[str, int, str]:
    """easy, medium, hard (the paper's order), then by name."""
    suite, difficulty = _suite_and_difficulty(path.stem)
    rank = DIFFICULTIES.index(difficulty) if difficulty else len(DIFFICULTIES)
    return suite, rank, path.name


def _suite_and_difficulty(stem: str) -> tuple[str, str | None]:
    name, _, last = stem.rpartition("_")
    if name and last.lower() in DIFFICULTIES:
        return name, last.lower()
    return stem, None


def _table_rows(path: Path) -> list[dict[str, Any]]:
    """Rows with their origin: `_file`, `_line` (1-based), `_suite`, `_difficulty` defaults."""
    suite, difficulty = _suite_and_difficulty(path.stem)
    if path.suffix == ".csv":
        with path.open(newline="", encoding="utf-8") as handle:
            raw = [dict(r) for r in csv.DictReader(handle)]
        numbered = list(enumerate(raw, start=2))  # line 1 is the header
    else:
        numbered = []
        with path.open(encoding="utf-8") as handle:
            for number, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as exc:
                    raise InputError(f"{path}:{number}: not a JSON object ({exc})") from None
                if not isinstance(row, dict):
                    raise InputError(f"{path}:{number}: not a JSON object")
                numbered.append((number, row))
    out = []
    for index, (number, row) in enumerate(numbered):
        out.append(
            {
                **row,
                "_file": path,
                "_line": number,
                "_index": index,
                "_suite": suite,
                "_difficulty": difficulty,
            }
        )
    return out


def _layout_rows(folder: Path) -> list[dict[str, Any]]:
    """<id>/pair.json beside <id>/set1 and <id>/set2 (no ground-truth table in the folder)."""
    rows = []
    for index, pair_dir in enumerate(sorted(p for p in folder.iterdir() if p.is_dir())):
        meta = pair_dir / "pair.json"
        if not meta.is_file():
            continue
        try:
            row = json.loads(meta.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise InputError(f"{meta}: not a JSON object ({exc})") from None
        rows.append(
            {
                "id": pair_dir.name,
                **row,
                "_file": meta,
                "_line": 1,
                "_index": index,
                "_suite": folder.name,
                "_difficulty": None,
                "_images": folder,
            }
        )
    return rows


def _text(row: dict[str, Any], key: str) -> str | None:
    value = row.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    return str(value).strip()


def _pair(
    row: dict[str, Any], *, root: str | None, manifest: str | None, require: bool
) -> BenchPair:
    where = f"{row['_file']}:{row['_line']}"
    values = {}
    for key in ("set1", "set2", "difference"):
        value = _text(row, key)
        if value is None:
            raise InputError(
                f"{where}: '{key}' is missing or empty; each pair needs set1, set2, difference"
            )
        values[key] = value
    suite = _text(row, "suite") or row["_suite"]
    difficulty = (_text(row, "difficulty") or row["_difficulty"] or "-").lower()
    pair_id = _text(row, "id") or f"{suite}_{difficulty}_{row['_index']}".replace("_-_", "_")
    pair_id = _SAFE_ID.sub("-", pair_id)
    base = Path(root) if root else Path(row.get("_images") or row["_file"].parent)
    data = _images(row, pair_id, base=base, root=root, manifest=manifest, sets=values, where=where)
    if require and not data:
        raise InputError(
            f"{where}: no images for pair '{pair_id}': put them in {base / pair_id}/set1 and "
            "set2, give set_a/set_b in the row, or an image manifest (--manifest, the paper's "
            "CSV with path and group_name; --root for its relative paths)"
        )
    return BenchPair(
        id=pair_id,
        suite=suite,
        difficulty=difficulty,
        set1=values["set1"],
        set2=values["set2"],
        difference=values["difference"],
        ground_truth_a=_text(row, "ground_truth_a") or values["set1"],
        ground_truth_b=_text(row, "ground_truth_b") or values["set2"],
        data=data,
    )


def _images(
    row: dict[str, Any],
    pair_id: str,
    *,
    base: Path,
    root: str | None,
    manifest: str | None,
    sets: dict[str, str],
    where: str,
) -> dict[str, Any]:
    """The data.* keys that select the pair's images (empty when none are found)."""
    given_a, given_b = _text(row, "set_a"), _text(row, "set_b")
    if given_a or given_b:
        if not (given_a and given_b):
            raise InputError(f"{where}: set_a and set_b go together: give both folders or neither")
        folders = [base / f if not os.path.isabs(f) else Path(f) for f in (given_a, given_b)]
        for folder in folders:
            if not folder.is_dir():
                raise InputError(f"{where}: image folder '{folder}' does not exist (set_a/set_b)")
        return {"set_a": str(folders[0]), "set_b": str(folders[1])}
    found = []
    for names in SIDES:
        folder = next((base / pair_id / n for n in names if (base / pair_id / n).is_dir()), None)
        found.append(folder)
    if all(found):
        return {"set_a": str(found[0]), "set_b": str(found[1])}
    table = _text(row, "manifest")
    table_path = (row["_file"].parent / table) if table and not os.path.isabs(table) else table
    table_path = table_path or manifest
    if not table_path:
        return {}
    groups = _manifest_groups(str(table_path), root)
    for key in ("set1", "set2"):
        if sets[key] not in groups:
            raise InputError(
                f"{where}: group '{sets[key]}' ({key}) has no rows in manifest '{table_path}' "
                "(its group_name column); check the manifest or the pair's set names"
            )
    data = {"manifest": str(table_path), "group_a": sets["set1"], "group_b": sets["set2"]}
    return {**data, "root": root} if root else data


@functools.lru_cache(maxsize=16)
def _manifest_groups(path: str, root: str | None) -> dict[str, int]:
    """group_name -> rows, after checking each group's first image exists where `root` (else the
    manifest's folder) puts it: a wrong --root is the usual mistake with the paper's CSVs."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as exc:
        raise InputError(f"image manifest '{path}' cannot be read: {exc.strerror}") from None
    if rows and not {"path", "group_name"} <= set(rows[0]):
        raise InputError(
            f"image manifest '{path}' needs the columns path and group_name (the paper's CSV)"
        )
    base = Path(root) if root else Path(path).parent
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for row in rows:
        counts[row["group_name"]] += 1
        first.setdefault(row["group_name"], row["path"])
    for group, rel in first.items():
        image = Path(rel) if os.path.isabs(rel) else base / rel
        if not image.is_file():
            fix = (
                "set --root to the folder its paths are relative to" if not root else "check --root"
            )
            raise InputError(
                f"image manifest '{path}': the first image of group '{group}' is not at "
                f"'{image}'; {fix}"
            )
    return dict(counts)
