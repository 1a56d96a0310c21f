"""A plain, self-contained HTML report: the ranked table and a few thumbnails per set. Every
user- or model-provided string is escaped."""

from __future__ import annotations

import base64
import html
from typing import Any


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e-3 and value != 0 else f"{value:.{digits}f}"
    return html.escape(str(value))


def _thumbs(images: list[tuple[str, bytes]]) -> str:
    cells = []
    for label, jpeg in images:
        data = base64.b64encode(jpeg).decode("ascii")
        cells.append(
            f'<figure><img src="data:image/jpeg;base64,{data}" alt="{html.escape(label, quote=True)}">'
            f"<figcaption>{html.escape(label)}</figcaption></figure>"
        )
    return "\n".join(cells) or "<p>(no thumbnails)</p>"


def render_report(
    *,
    name_a: str,
    name_b: str,
    ranked: list[dict[str, Any]],
    thumbnails_a: list[tuple[str, bytes]],
    thumbnails_b: list[tuple[str, bytes]],
    stats: dict[str, Any],
    metrics: dict[str, Any] | None,
) -> str:
    esc = html.escape
    rows = "\n".join(
        "<tr>"
        f"<td>{r['rank']}</td><td>{esc(str(r['hypothesis']))}</td>"
        f"<td>{_fmt(r['auroc'])}</td><td>{_fmt(r['mean_a'])}</td><td>{_fmt(r['mean_b'])}</td>"
        f"<td>{_fmt(r['t_stat'], 2)}</td><td>{_fmt(r['p_value'], 2)}</td>"
        f"<td>{_fmt(r['correct_delta'])}</td>"
        "</tr>"
        for r in ranked
    )
    counts = stats.get("images", {})
    metrics_html = ""
    if metrics:
        metrics_html = (
            "<h2>Evaluation</h2><p>"
            + ", ".join(
                f"{esc(k)} = {_fmt(metrics.get(k))}"
                for k in ("acc@1", "acc@5", "acc@N")
                if k in metrics
            )
            + "</p>"
        )
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<title>visdiff: {esc(name_a)} vs {esc(name_b)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem; max-width: 70rem; }}
table {{ border-collapse: collapse; width: 100%; }}
th, td {{ border-bottom: 1px solid #ddd; padding: .3rem .5rem; text-align: left; }}
figure {{ display: inline-block; margin: .2rem; width: 132px; font-size: .7rem; }}
figure img {{ width: 128px; height: 128px; object-fit: cover; }}
</style></head><body>
<h1>What is more true of A than of B</h1>
<p><b>A</b>: {esc(name_a)} ({counts.get("a", {}).get("ranked", "?")} images ranked)<br>
<b>B</b>: {esc(name_b)} ({counts.get("b", {}).get("ranked", "?")} images ranked)</p>
<table><thead><tr><th>#</th><th>hypothesis</th><th>AUROC</th><th>mean A</th><th>mean B</th>
<th>t</th><th>p</th><th>correct Δ</th></tr></thead>
<tbody>
{rows}
</tbody></table>
{metrics_html}
<h2>Set A: {esc(name_a)}</h2>
{_thumbs(thumbnails_a)}
<h2>Set B: {esc(name_b)}</h2>
{_thumbs(thumbnails_b)}
<p>Skipped images: {len(stats.get("skipped", []))}. Details in stats.json.</p>
</body></html>
"""
