"""report.html: one self-contained page (inline CSS and JS, images as data: URIs, a Content
Security Policy that forbids any fetch) with the ranked table per direction, evidence per
hypothesis and the proposer's rounds. Every model- or user-provided string goes through
`_esc`; nothing of theirs is ever placed inside the script."""

from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass, field
from typing import Any

from visdiff.report.evidence import EvidenceImage, HypothesisEvidence

DIRECTIONS = {"a": ("A", "B"), "b": ("B", "A")}  # direction -> (set it is true of, other set)
OPEN_EVIDENCE = 5  # evidence blocks shown open per direction; the rest one click away
ROLE_TITLES = {
    "top_a": "best matches in A",
    "top_b": "best matches in B",
    "bottom_a": "worst matches in A",
    "bottom_b": "worst matches in B",
}


@dataclass
class RunPage:
    """What the page shows, as read from a run folder (see `visdiff.report.render`)."""

    name_a: str
    name_b: str
    ranked: list[dict[str, Any]]  # ranked.json rows
    proposals: list[dict[str, Any]] = field(default_factory=list)  # hypotheses.jsonl rows
    stats: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    evidence: dict[str, HypothesisEvidence] = field(default_factory=dict)
    config_text: str = ""


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


def _fmt(value: Any, digits: int | None = 3) -> str:
    """Fixed `digits` decimals (tiny values in short exponent form); None: 2 significant
    digits, for p- and q-values that span many orders of magnitude."""
    number = _number(value)
    if number is None:
        return "–" if value is None else _esc(value)
    if isinstance(value, int):
        return str(value)
    if digits is None or (number != 0 and abs(number) < 1e-3):
        return f"{number:.2g}"
    text = f"{number:.{digits}f}"
    return text[1:] if text.startswith("-") and float(text) == 0 else text  # no "-0.000"


# --------------------------------------------------------------------------- ranked tables
# (key in ranked.json, header, digits); a column is shown when some row has its key.
COLUMNS = (
    ("rank", "#", 0),
    ("hypothesis", "hypothesis", 0),
    ("auroc", "AUROC", 3),
    ("auroc_test", "test AUROC", 3),
    ("auroc_ci_low", "test CI", 3),
    ("mean_a", "mean A", 3),
    ("mean_b", "mean B", 3),
    ("t_stat", "t", 2),
    ("p_value", "p", None),
    ("q_value", "q", None),
    ("significant", "significant", 0),
    ("correct_delta", "correct Δ", 3),
)


def _cell(row: dict[str, Any], key: str, digits: int | None, anchor: str) -> str:
    value = row.get(key)
    if key == "hypothesis":
        return f'<td data-v="{_esc(value)}"><a href="#{anchor}">{_esc(value)}</a></td>'
    if key == "auroc_ci_low":
        high = row.get("auroc_ci_high")
        text = f"[{_fmt(value, digits)}, {_fmt(high, digits)}]"
        return f'<td class="num" data-v="{_sort_value(value)}">{text}</td>'
    if key == "significant":
        text = {True: "yes", False: "no"}.get(value, "–")
        return f'<td data-v="{_esc(text)}">{text}</td>'
    return f'<td class="num" data-v="{_sort_value(value)}">{_fmt(value, digits)}</td>'


def _sort_value(value: Any) -> str:
    number = _number(value)
    return "" if number is None else repr(number)


def _table(rows: list[dict[str, Any]], direction: str | None) -> str:
    columns = [c for c in COLUMNS if any(c[0] in r for r in rows)]
    head = "".join(
        f'<th data-type="{"text" if key in ("hypothesis", "significant") else "num"}" '
        f'title="sort by {_esc(label)}">{_esc(label)}</th>'
        for key, label, _ in columns
    )
    body = []
    for index, row in enumerate(rows):
        anchor = _anchor(direction, index)
        muted = ' class="ns"' if row.get("significant") is False else ""
        cells = "".join(_cell(row, key, digits, anchor) for key, _, digits in columns)
        body.append(f"<tr{muted}>{cells}</tr>")
    return (
        f'<table class="ranked"><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(body)}</tbody></table>"
    )


def _anchor(direction: str | None, index: int) -> str:
    return f"ev-{direction or 'a'}-{index + 1}"


def _by_direction(ranked: list[dict[str, Any]]) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """Rows split by their `direction` ("a" first), or one group when rows have none."""
    if not any("direction" in r for r in ranked):
        return [(None, ranked)]
    found = dict.fromkeys(str(r.get("direction")) for r in ranked)
    order = [d for d in DIRECTIONS if d in found] + [d for d in found if d not in DIRECTIONS]
    return [(d, [r for r in ranked if str(r.get("direction")) == d]) for d in order]


def _heading(direction: str | None, page: RunPage) -> str:
    names = {"A": page.name_a, "B": page.name_b}
    more, less = DIRECTIONS.get(direction or "a", ("?", "?"))
    if more == "?":
        return f"Direction {_esc(direction)}"
    return f"More true of {more} ({_esc(names[more])}) than of {less} ({_esc(names[less])})"


# --------------------------------------------------------------------------- evidence
def _figure(image: EvidenceImage) -> str:
    if image.thumbnail:
        data = base64.b64encode(image.thumbnail).decode("ascii")
        picture = f'<img src="data:image/jpeg;base64,{data}" alt="{_esc(image.id)}">'
    else:
        picture = '<div class="missing">no preview</div>'
    return (
        f'<figure title="{_esc(image.uri)}">{picture}'
        f"<figcaption>{_esc(image.id)}<br>{_fmt(image.score)}</figcaption></figure>"
    )


def histogram_svg(ev: HypothesisEvidence, width: int = 280, height: int = 90) -> str:
    """Both score distributions as overlaid bars (share of each set per bin)."""
    if not ev.hist_edges or len(ev.hist_edges) != len(ev.hist_a) + 1:
        return '<p class="note">no score distribution</p>'
    total_a, total_b = max(1, sum(ev.hist_a)), max(1, sum(ev.hist_b))
    shares = [(a / total_a, b / total_b) for a, b in zip(ev.hist_a, ev.hist_b, strict=True)]
    top = max(max(pair) for pair in shares) or 1.0
    plot_h, bar_w = height - 18, width / len(shares)
    bars = []
    for i, pair in enumerate(shares):
        for share, css in zip(pair, ("a", "b"), strict=True):
            h = plot_h * share / top
            bars.append(
                f'<rect class="{css}" x="{i * bar_w:.1f}" y="{plot_h - h:.1f}" '
                f'width="{bar_w:.1f}" height="{h:.1f}"/>'
            )
    lo, hi = ev.hist_edges[0], ev.hist_edges[-1]
    return (
        f'<svg class="hist" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'role="img" aria-label="score distributions of A and B">'
        f"<title>CLIP score: A (blue) vs B (orange), share of each set per bin</title>"
        f"{''.join(bars)}"
        f'<line x1="0" y1="{plot_h}" x2="{width}" y2="{plot_h}" class="axis"/>'
        f'<text x="0" y="{height - 3}">{lo:.3f}</text>'
        f'<text x="{width}" y="{height - 3}" text-anchor="end">{hi:.3f}</text>'
        f'<text x="{width / 2}" y="{height - 3}" text-anchor="middle">'
        f'<tspan class="a">■ A</tspan> <tspan class="b">■ B</tspan></text></svg>'
    )


def _evidence_block(
    row: dict[str, Any], direction: str | None, index: int, ev: HypothesisEvidence | None
) -> str:
    numbers = ", ".join(
        f"{label} {_fmt(row.get(key), digits)}"
        for key, label, digits in COLUMNS[2:]
        if key in row and key not in ("auroc_ci_low", "significant")
    )
    summary = f"#{_esc(row.get('rank', index + 1))} {_esc(row.get('hypothesis'))}"
    if ev is None:
        inner = '<p class="note">no evidence stored for this hypothesis</p>'
    else:
        strips = "".join(
            f'<div class="strip"><h4>{_esc(ROLE_TITLES[role])}</h4>'
            f"{''.join(_figure(i) for i in images) or '<p class=note>none</p>'}</div>"
            for role, images in ev.shown(direction)
        )
        inner = f'<div class="plot">{histogram_svg(ev)}</div>{strips}'
    muted = " ns" if row.get("significant") is False else ""
    is_open = " open" if index < OPEN_EVIDENCE else ""
    return (
        f'<details class="evidence{muted}" id="{_anchor(direction, index)}"{is_open}>'
        f"<summary>{summary}</summary><p class=note>{numbers}</p>{inner}</details>"
    )


# --------------------------------------------------------------------------- proposer rounds
def _id_list(ids: list[Any], captions: list[Any] | None) -> str:
    if not ids:
        return "<p class=note>none recorded</p>"
    captions = captions if captions and len(captions) == len(ids) else [None] * len(ids)
    items = "".join(
        f"<li><code>{_esc(i)}</code>" + (f" — {_esc(c)}" if c else "") + "</li>"
        for i, c in zip(ids, captions, strict=True)
    )
    return f"<ul class=ids>{items}</ul>"


def _round_block(title: str, rows: list[dict[str, Any]]) -> str:
    """One proposer round (its rows share the round's provenance): the sampled images with
    their captions where recorded, the prompt, the raw answer and what was parsed from it."""
    first = rows[0]
    parsed = [r["hypothesis"] for r in rows if r.get("hypothesis") is not None]
    flags = " (answer cut off at the token limit)" if first.get("truncated") else ""
    source = first.get("prompt_source")
    parts = [
        f"<details class=round><summary>{title}: {len(parsed)} hypotheses{flags}</summary>",
        f"<p class=note>prompt: {_esc(source)}</p>" if source else "",
    ]
    for name in ("a", "b"):
        ids = first.get(f"ids_{name}") or []
        parts.append(f"<h4>Sampled images of {name.upper()}</h4>")
        parts.append(_id_list(ids, first.get(f"captions_{name}")))
    parts.append(f"<h4>Prompt</h4><pre>{_esc(first.get('prompt') or '(not recorded)')}</pre>")
    parts.append(f"<h4>Raw answer</h4><pre>{_esc(first.get('raw_text') or '')}</pre>")
    parts.append("<h4>Parsed hypotheses</h4><ol>")
    parts += [f"<li>{_esc(h)}</li>" for h in parsed]
    parts.append("</ol></details>")
    return "".join(parts)


def _rounds(proposals: list[dict[str, Any]]) -> str:
    """hypotheses.jsonl rows grouped by (direction, round), in file order."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in proposals:
        key = (str(row.get("direction") or ""), str(row.get("round")))
        groups.setdefault(key, []).append(row)
    blocks = [
        _round_block(
            f"Round {_esc(index)}" + (f", direction {_esc(direction)}" if direction else ""), rows
        )
        for (direction, index), rows in groups.items()
    ]
    return "".join(blocks) or "<p class=note>no proposer rounds recorded</p>"


# --------------------------------------------------------------------------- the page
def _summary(page: RunPage) -> str:
    counts = page.stats.get("images", {})
    lines = []
    for key, name in (("a", page.name_a), ("b", page.name_b)):
        ranked = _esc(counts.get(key, {}).get("ranked", "?"))
        lines.append(f"<b>{key.upper()}</b>: {_esc(name)} ({ranked} images ranked)")
    skipped = page.stats.get("skipped_by_reason") or {}
    if skipped:
        reasons = ", ".join(f"{_esc(k)}: {_esc(v)}" for k, v in skipped.items())
        lines.append(f"skipped images: {sum(int(v) for v in skipped.values())} ({reasons})")
    lines.append(f"hypotheses ranked: {len(page.ranked)}")
    return "<p>" + "<br>".join(lines) + "</p>"


def _metrics(metrics: dict[str, Any] | None) -> str:
    if not metrics:
        return ""
    shown = [f"{_esc(k)} = {_fmt(metrics[k])}" for k in ("acc@1", "acc@5", "acc@N") if k in metrics]
    return f"<h2>Evaluation</h2><p>{', '.join(shown)}</p>" if shown else ""


def render_report(page: RunPage) -> str:
    groups = _by_direction(page.ranked)
    tables = "".join(
        f"<h2>{_heading(direction, page)}</h2>{_table(rows, direction)}"
        for direction, rows in groups
    )
    evidence = "".join(
        f"<h3>{_heading(direction, page)}</h3>"
        + "".join(
            _evidence_block(row, direction, i, page.evidence.get(str(row.get("hypothesis"))))
            for i, row in enumerate(rows)
        )
        for direction, rows in groups
    )
    config = (
        f"<details><summary>Run settings (config.yaml)</summary><pre>{_esc(page.config_text)}</pre>"
        "</details>"
        if page.config_text
        else ""
    )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{CSP}">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>visdiff: {_esc(page.name_a)} vs {_esc(page.name_b)}</title>
<style>{STYLE}</style></head><body>
<h1>visdiff: {_esc(page.name_a)} <small>vs</small> {_esc(page.name_b)}</h1>
{_summary(page)}
<p class="note">AUROC ranks on every image; the test columns (test AUROC, its interval, p, q,
significant) use only the images the proposer never saw (rank.holdout). Click a column header
to sort; greyed rows are not significant. Click a
hypothesis for its evidence: the images it matches best and worst, and how its scores are
distributed in A and in B.</p>
{_metrics(page.metrics)}
{tables}
<h2>Evidence</h2>
{evidence}
<h2>Proposer rounds</h2>
{_rounds(page.proposals)}
{config}
<script>{SCRIPT}</script>
</body></html>
"""


# No fetch of any kind: images are data: URIs, style and script are inline.
CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src 'unsafe-inline'"

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem; max-width: 80rem; color: #222; }
table { border-collapse: collapse; width: 100%; margin-bottom: 1.5rem; }
th, td { border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }
th { cursor: pointer; user-select: none; background: #f6f6f6; }
th[aria-sort=ascending]::after { content: " ▲"; }
th[aria-sort=descending]::after { content: " ▼"; }
td.num { font-variant-numeric: tabular-nums; }
tr.ns, details.ns > summary { color: #999; }
.note { color: #666; font-size: .85rem; }
details { margin: .4rem 0; } summary { cursor: pointer; font-weight: 600; }
details.evidence { border: 1px solid #eee; padding: .4rem .6rem; }
.plot { display: inline-block; vertical-align: top; margin-right: 1rem; }
.strip { display: inline-block; vertical-align: top; margin-right: 1rem; }
.strip h4 { margin: .2rem 0; font-size: .8rem; }
figure { display: inline-block; margin: .15rem; width: 100px; font-size: .65rem;
  overflow-wrap: anywhere; vertical-align: top; }
figure img, .missing { width: 96px; height: 96px; object-fit: cover; display: block; }
.missing { background: #eee; color: #888; text-align: center; line-height: 96px; }
svg.hist rect.a, tspan.a { fill: #1f77b4; fill-opacity: .55; }
svg.hist rect.b, tspan.b { fill: #ff7f0e; fill-opacity: .55; }
svg.hist text { font-size: 10px; fill: #555; } svg.hist .axis { stroke: #999; }
pre { white-space: pre-wrap; background: #f8f8f8; padding: .5rem; font-size: .8rem; }
ul.ids { columns: 2; font-size: .8rem; }
"""

# Sorting by header click (numbers by data-v, blanks last), and opening a linked evidence block.
SCRIPT = """
document.querySelectorAll("table.ranked").forEach(function (table) {
  var heads = table.tHead.rows[0].cells;
  Array.prototype.forEach.call(heads, function (th, col) {
    th.addEventListener("click", function () {
      var ascending = th.getAttribute("aria-sort") !== "ascending";
      Array.prototype.forEach.call(heads, function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
      var numeric = th.dataset.type === "num", body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (x, y) {
        var a = x.cells[col].dataset.v, b = y.cells[col].dataset.v;
        if (a === "" || b === "") { return (a === "") - (b === ""); }
        var order = numeric ? parseFloat(a) - parseFloat(b) : a.localeCompare(b);
        return ascending ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
});
function openTarget() {
  var target = location.hash && document.getElementById(location.hash.slice(1));
  if (target && target.tagName === "DETAILS") { target.open = true; }
}
window.addEventListener("hashchange", openTarget);
openTarget();
"""
