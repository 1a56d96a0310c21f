"""report.html from a run folder's own files, so that the page a run writes and the one
`visdiff report RUN_DIR` re-renders later are the same function of the same inputs."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.errors import InputError
from visdiff.io import storage
from visdiff.report.evidence import EvidenceTable
from visdiff.report.html import RunPage, render_report
from visdiff.report.writers import RunFolder

REPORT_FILE = "report.html"
EVIDENCE_FILE = "evidence.parquet"


def _read(folder: RunFolder, name: str) -> bytes | None:
    """A file's bytes, or None when the folder has no such file."""
    try:
        return storage.read_bytes(folder.path(name))
    except FileNotFoundError:
        return None
    except OSError as exc:
        if not storage.exists(folder.path(name)):
            return None
        raise InputError(f"cannot read {folder.path(name)}: {exc}") from None


def _json(folder: RunFolder, name: str) -> Any:
    data = _read(folder, name)
    if data is None:
        return None
    try:
        return json.loads(data)
    except ValueError as exc:
        raise InputError(f"{folder.path(name)} is not valid JSON: {exc}") from None


def read_evidence(data: bytes) -> EvidenceTable:
    """An Arrow buffer, not a Python file object: Arrow's reader threads would otherwise hold a
    Python object past the read, and a process exiting then aborts taking the GIL for them."""
    return EvidenceTable.from_records(pq.read_table(pa.BufferReader(data)).to_pylist())


def load_run(run_dir: str) -> RunPage:
    """What report.html shows, from the folder's files: ranked.json (required), stats.json,
    hypotheses.jsonl, evidence.parquet, metrics.json and config.yaml (each when present)."""
    folder = RunFolder(run_dir)
    ranked = _json(folder, "ranked.json")
    if ranked is None:
        raise InputError(
            f"{folder.path('ranked.json')} not found: give the run folder of a finished "
            "describe run"
        )
    stats = _json(folder, "stats.json") or {}
    names = {k: (stats.get("images", {}).get(k, {}).get("name") or k.upper()) for k in "ab"}
    proposals_text = (_read(folder, "hypotheses.jsonl") or b"").decode("utf-8")
    evidence = _read(folder, EVIDENCE_FILE)
    return RunPage(
        name_a=str(names["a"]),
        name_b=str(names["b"]),
        ranked=list(ranked),
        proposals=[json.loads(line) for line in proposals_text.splitlines() if line.strip()],
        stats=stats,
        metrics=_json(folder, "metrics.json"),
        evidence=read_evidence(evidence).by_hypothesis() if evidence else {},
        config_text=(_read(folder, "config.yaml") or b"").decode("utf-8"),
    )


def render_run_folder(run_dir: str) -> str:
    return render_report(load_run(run_dir))


def write_report(folder: RunFolder) -> str:
    """(Re)writes report.html in the run folder from its files; returns where."""
    folder.write_text(REPORT_FILE, render_run_folder(folder.uri))
    return folder.path(REPORT_FILE)
