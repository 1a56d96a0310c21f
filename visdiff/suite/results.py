"""Bench results from the pairs' run folders: one row per pair, Acc@1 / Acc@5 means per suite and
difficulty, and the cost (LLM calls and tokens, images embedded, seconds). Written as
results.parquet, results.html and summary.json; nothing here starts Ray or a model."""

from __future__ import annotations

import html
import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.suite.load import BenchPair

TOP_SHOWN = 5  # hypotheses per pair in the table
COLUMNS = (
    "id",
    "suite",
    "difficulty",
    "set1",
    "set2",
    "difference",
    "state",
    "evaluator",
    "acc@1",
    "acc@5",
    "top_hypotheses",
    "scores",
    "llm_calls",
    "llm_tokens",
    "images_embedded",
    "images_ranked",
    "seconds",
    "resumed",
    "error",
    "run_dir",
)
_TYPES = {
    "acc@1": pa.float64(),
    "acc@5": pa.float64(),
    "llm_calls": pa.int64(),
    "llm_tokens": pa.int64(),
    "images_embedded": pa.int64(),
    "images_ranked": pa.int64(),
    "seconds": pa.float64(),
    "resumed": pa.bool_(),
    "top_hypotheses": pa.list_(pa.string()),
    "scores": pa.list_(pa.int64()),
}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def is_finished(run_dir: Path, *, needs_metrics: bool) -> bool:
    """A pair is done when its status.json says complete (and metrics.json exists when the
    bench evaluates): such a pair is not run again on resume."""
    status = _read_json(run_dir / "status.json")
    if not isinstance(status, dict) or status.get("state") != "complete":
        return False
    return not needs_metrics or (run_dir / "metrics.json").is_file()


def llm_usage(stats: dict[str, Any]) -> tuple[int | None, int | None]:
    """(calls, tokens) from stats.json's `llm_usage` ({"calls", "prompt_tokens",
    "completion_tokens"} or "total_tokens"), or (None, None) when the run did not record it."""
    usage = stats.get("llm_usage")
    if not isinstance(usage, dict):
        return None, None
    calls = usage.get("calls", usage.get("requests"))
    tokens = usage.get("total_tokens")
    if tokens is None and ("prompt_tokens" in usage or "completion_tokens" in usage):
        tokens = int(usage.get("prompt_tokens") or 0) + int(usage.get("completion_tokens") or 0)
    return (None if calls is None else int(calls)), (None if tokens is None else int(tokens))


def pair_row(
    pair: BenchPair,
    run_dir: Path,
    *,
    seconds: float | None,
    resumed: bool,
    error: str | None = None,
) -> dict[str, Any]:
    """One results row from the pair's run folder (whatever of it exists)."""
    status = _read_json(run_dir / "status.json") or {}
    metrics = _read_json(run_dir / "metrics.json") or {}
    stats = _read_json(run_dir / "stats.json") or {}
    ranked = _read_json(run_dir / "ranked.json") or []
    top = [r["hypothesis"] for r in ranked if r.get("direction") == "a"][:TOP_SHOWN]
    calls, tokens = llm_usage(stats)
    judge_calls, judge_tokens = llm_usage({"llm_usage": metrics.get("judge_usage")})
    if judge_calls is not None:  # the judge's own client (evaluate.llm), counted apart
        calls, tokens = (calls or 0) + judge_calls, (tokens or 0) + (judge_tokens or 0)
    images = stats.get("images") or {}
    cache = stats.get("cache") or {}
    if seconds is None:
        seconds = stats.get("total_seconds")
    return {
        "id": pair.id,
        "suite": pair.suite,
        "difficulty": pair.difficulty,
        "set1": pair.set1,
        "set2": pair.set2,
        "difference": pair.difference,
        "state": status.get("state", "failed" if error else "missing"),
        "evaluator": metrics.get("evaluator"),
        "acc@1": metrics.get("acc@1"),
        "acc@5": metrics.get("acc@5"),
        "top_hypotheses": top,
        "scores": [j.get("score") or 0 for j in metrics.get("judgements", [])][:TOP_SHOWN],
        "llm_calls": calls,
        "llm_tokens": tokens,
        "images_embedded": cache.get("misses"),
        "images_ranked": sum(int(s.get("used") or 0) for s in images.values()) if images else None,
        "seconds": None if seconds is None else round(float(seconds), 3),
        "resumed": resumed,
        "error": error or status.get("error"),
        "run_dir": str(run_dir),
    }


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 6) if values else None


def _group(rows: list[dict[str, Any]]) -> dict[str, Any]:
    scored = [r for r in rows if r["acc@1"] is not None]
    return {
        "pairs": len(rows),
        "evaluated": len(scored),
        "acc@1": _mean([r["acc@1"] for r in scored]),
        "acc@5": _mean([r["acc@5"] for r in scored]),
    }


def _total(rows: Iterable[dict[str, Any]], key: str) -> int | float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return sum(values) if values else None


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """summary.json: Acc@1 / Acc@5 as the mean over evaluated pairs (a pair that failed or has
    no metrics is counted in `pairs`, not in the means), overall, per suite, per difficulty and
    per suite and difficulty; the cost totals."""

    def by(*keys: str) -> dict[str, Any]:
        groups: dict[str, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault("/".join(str(row[k]) for k in keys), []).append(row)
        return {name: _group(members) for name, members in sorted(groups.items())}

    return {
        "overall": _group(rows),
        "by_suite": by("suite"),
        "by_difficulty": by("difficulty"),
        "by_suite_difficulty": by("suite", "difficulty"),
        "pairs": {
            "total": len(rows),
            "complete": sum(r["state"] == "complete" for r in rows),
            "failed": [r["id"] for r in rows if r["state"] != "complete"],
            "resumed": sum(bool(r["resumed"]) for r in rows),
        },
        "cost": {
            "llm_calls": _total(rows, "llm_calls"),
            "llm_tokens": _total(rows, "llm_tokens"),
            "images_embedded": _total(rows, "images_embedded"),
            "images_ranked": _total(rows, "images_ranked"),
            "seconds": _total(rows, "seconds"),
        },
    }


def results_table(rows: list[dict[str, Any]]) -> pa.Table:
    return pa.table(
        {c: pa.array([r.get(c) for r in rows], _TYPES.get(c, pa.string())) for c in COLUMNS}
    )


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, list):
        return "<br>".join(html.escape(str(v)) for v in value)
    if isinstance(value, float):
        return f"{value:.3g}"
    return html.escape(str(value))


def results_html(rows: list[dict[str, Any]], summary: dict[str, Any]) -> str:
    """A self-contained page: the summary tables, then one row per pair (all text escaped)."""
    shown = [c for c in COLUMNS if c not in ("run_dir", "set1", "set2")]

    def table(title: str, groups: dict[str, Any]) -> str:
        body = "".join(
            f"<tr><td>{html.escape(name)}</td><td>{g['pairs']}</td><td>{g['evaluated']}</td>"
            f"<td>{_cell(g['acc@1'])}</td><td>{_cell(g['acc@5'])}</td></tr>"
            for name, g in groups.items()
        )
        return (
            f"<h2>{html.escape(title)}</h2><table><tr><th></th><th>pairs</th><th>evaluated</th>"
            f"<th>Acc@1</th><th>Acc@5</th></tr>{body}</table>"
        )

    head = "".join(f"<th>{html.escape(c)}</th>" for c in shown)
    body = "".join(
        "<tr>" + "".join(f"<td>{_cell(r.get(c))}</td>" for c in shown) + "</tr>" for r in rows
    )
    cost = html.escape(json.dumps(summary["cost"]))
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>visdiff bench</title>"
        "<style>body{font-family:sans-serif}table{border-collapse:collapse;margin-bottom:1em}"
        "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;font-size:13px}</style>"
        "</head><body><h1>visdiff bench</h1>"
        + table("Overall", {"all": summary["overall"]})
        + table("By suite", summary["by_suite"])
        + table("By difficulty", summary["by_difficulty"])
        + table("By suite and difficulty", summary["by_suite_difficulty"])
        + f"<p>Cost: {cost}</p><h2>Pairs</h2><table><tr>{head}</tr>{body}</table>"
        + "</body></html>\n"
    )


def write_results(output_dir: Path, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """results.parquet, results.html and summary.json in `output_dir`; returns the summary."""
    summary = summarize(rows)
    output_dir.mkdir(parents=True, exist_ok=True)
    pq.write_table(results_table(rows), output_dir / "results.parquet")
    (output_dir / "results.html").write_text(results_html(rows, summary), encoding="utf-8")
    (output_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n", "utf-8")
    return summary
