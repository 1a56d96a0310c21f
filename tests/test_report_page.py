"""report.html from a synthetic run folder: one self-contained page that escapes everything a
model or user wrote, re-rendered by `visdiff report RUN_DIR`, and opened in a real headless
Chromium: no console errors, no network, tables sortable, thumbnails decoded, plots drawn."""

from __future__ import annotations

import html
import io
import json
import os
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visdiff.report.evidence import EvidencePartial
from visdiff.report.render import render_run_folder

HOSTILE = {
    "script": "<script>alert(1)</script>",
    "attribute": '"onmouseover=alert(2) x="',
    "tag": "</textarea><img src=x onerror=alert(3)>",
}
NAME_A = '<b>cats</b> & "kittens"'
NAME_B = "dogs'</title><script>alert(7)</script>"
EVIL_URL = "http://evil.example/x.png"


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (64, 48), colour).save(out, format="JPEG")
    return out.getvalue()


def _ranked(hypotheses: list[str], direction: str | None) -> list[dict]:
    rows = []
    for i, h in enumerate(hypotheses, start=1):
        auroc = 0.9 - 0.05 * i
        row = {
            "rank": i,
            "hypothesis": h,
            "auroc": auroc,
            "mean_a": 0.25,
            "mean_b": 0.21,
            "diff": 0.04,
            "t_stat": 5.0 / i,
            "p_value": 10.0**-i,
            "correct_delta": 0.1,
            "n_a": 10,
            "n_b": 12,
        }
        if direction:
            row |= {
                "direction": direction,
                "q_value": 10.0 ** (1 - i),
                "auroc_test": auroc,
                "auroc_ci_low": auroc - 0.1,
                "auroc_ci_high": min(1.0, auroc + 0.1),
                "significant": i <= 2,
            }
        rows.append(row)
    return rows


def make_run_folder(root: Path, *, directions: bool = True) -> Path:
    """A finished run's files, written as describe writes them, with hostile strings."""
    from visdiff.pipeline.evidence import write_evidence
    from visdiff.report.writers import RunFolder

    hyps_a = [HOSTILE["script"], "dogs on grass", HOSTILE["attribute"]]
    hyps_b = ["cats indoors", HOSTILE["tag"]]
    ranked = _ranked(hyps_a, "a" if directions else None)
    if directions:
        ranked += _ranked(hyps_b, "b")
    hypotheses = list(dict.fromkeys(r["hypothesis"] for r in ranked))

    n = 16
    rng = np.random.default_rng(0)
    is_a = np.arange(n) < 8
    ids = np.array([f"{'a' if x else 'b'}/{i}.jpg" for i, x in enumerate(is_a)], dtype=object)
    uris = np.array([f"/data/{i}.jpg" for i in range(n)], dtype=object)
    uris[2] = f'{EVIL_URL}" onerror="alert(5)'
    scores = rng.uniform(0.1, 0.4, size=(n, len(hypotheses)))
    table = EvidencePartial.from_scores(scores, is_a, ids, uris, k=3).finalize(hypotheses)
    thumbs = {u: _jpeg((i * 15, 100, 200 - i * 10)) for i, u in enumerate(uris)}
    thumbs[uris[5]] = None  # an image that could not be read again: "no preview"

    folder = RunFolder(str(root / "run"))
    folder.write_text("config.yaml", "models: tiny\nnote: </pre><script>alert(6)</script>\n")
    folder.write_json("ranked.json", ranked)
    folder.write_json(
        "stats.json",
        {
            "images": {"a": {"name": NAME_A, "ranked": 8}, "b": {"name": NAME_B, "ranked": 8}},
            "skipped_by_reason": {"decode_error": 1},
        },
    )
    folder.write_jsonl(
        "hypotheses.jsonl",
        [
            {
                "round": 0,
                "index": j,
                "hypothesis": h,
                "raw_text": f'- {h}\n<img src="{EVIL_URL}">',
                "truncated": j == 0,
                "ids_a": ["a/0.jpg", "a/1.jpg"],
                "ids_b": ["b/8.jpg"],
                "captions_a": ["a cat <on> a mat", HOSTILE["script"]],
                "captions_b": ["a dog"],
                "prompt_source": "clip_friendly",
                "prompt": "Captions of A: ... </pre><script>alert(4)</script>",
            }
            for j, h in enumerate(hyps_a)
        ],
    )
    folder.write_json("metrics.json", {"acc@1": 1.0, "acc@5": 0.5, "acc@N": 0.4})
    write_evidence(folder, table.with_thumbnails(thumbs))
    return root / "run"


class _Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser would split them."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.text: list[str] = []
        self.titles: list[str] = []  # the page's, then each SVG's
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_title = tag == "title"
        if self._in_title:
            self.titles.append("")

    def handle_endtag(self, tag):
        self._in_title = False

    def handle_data(self, data):
        self.text.append(data)
        if self._in_title:
            self.titles[-1] += data


def _parse(text: str) -> _Page:
    page = _Page()
    page.feed(text)
    return page


def test_page_escapes_every_model_and_user_string(tmp_path):
    page = _parse(render_run_folder(str(make_run_folder(tmp_path))))
    scripts = [t for t, _ in page.tags if t == "script"]
    assert len(scripts) == 1  # ours only
    handlers = [(t, a) for t, attrs in page.tags for a in attrs if a.lower().startswith("on")]
    assert handlers == []
    text = "".join(page.text)
    for hostile in (*HOSTILE.values(), NAME_A, NAME_B, f'<img src="{EVIL_URL}">'):
        assert hostile in text  # shown as text, not markup
    assert page.titles[0] == f"visdiff: {NAME_A} vs {NAME_B}"
    # Nothing is fetched: every src is an inline image, every href a same-page anchor.
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "xlink:href"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith(("data:image/jpeg;base64,", "#")), (tag, name, value)
    meta = [a for t, a in page.tags if t == "meta" and a.get("http-equiv")]
    assert meta and "default-src 'none'" in (meta[0].get("content") or "")


def test_both_directions_greyed_rows_evidence_and_rounds(tmp_path):
    text = render_run_folder(str(make_run_folder(tmp_path)))
    page = _parse(text)
    tables = [a for t, a in page.tags if t == "table"]
    assert len(tables) == 2
    muted = [a for t, a in page.tags if t == "tr" and a.get("class") == "ns"]
    assert len(muted) == 1  # rank 3 of direction a; direction b's two rows are significant
    headers = re.findall(r"<th [^>]*>([^<]*)</th>", text)
    assert {"AUROC", "test AUROC", "test CI", "q", "significant"} <= set(headers)
    evidence = [a for t, a in page.tags if t == "details" and "evidence" in (a.get("class") or "")]
    assert [a["id"] for a in evidence] == ["ev-a-1", "ev-a-2", "ev-a-3", "ev-b-1", "ev-b-2"]
    assert sum(t == "svg" for t, _ in page.tags) == 5
    imgs = [a for t, a in page.tags if t == "img"]
    assert len(imgs) > 5 * 3 * 2 and "no preview" in "".join(page.text)
    assert "best matches in B" in text and "worst matches in A" in text  # direction b's mirror
    rounds = [a for t, a in page.tags if t == "details" and a.get("class") == "round"]
    assert len(rounds) == 1 and "cut off at the token limit" in text
    assert "acc@1 = 1.000" in text


def test_rows_without_direction_render_one_table(tmp_path):
    page = _parse(render_run_folder(str(make_run_folder(tmp_path, directions=False))))
    assert sum(t == "table" for t, _ in page.tags) == 1
    assert not any(t == "tr" and a.get("class") == "ns" for t, a in page.tags)


def test_visdiff_report_rerenders_the_page_from_the_folder(tmp_path, capsys):
    from visdiff.cli import main

    run_dir = make_run_folder(tmp_path)
    assert main(["report", str(run_dir)]) == 0
    assert (run_dir / "report.html").read_text() == render_run_folder(str(run_dir))
    assert str(run_dir / "report.html") in capsys.readouterr().out

    (run_dir / "ranked.json").unlink()
    assert main(["report", str(run_dir)]) == 3
    assert "ranked.json" in capsys.readouterr().err


# --------------------------------------------------------------------------- in a browser
CHECKS = """<script>
var seen = [];
window.addEventListener("error", function (e) {
  seen.push("error:" + (e.message || (e.target && e.target.tagName)));
}, true);
window.addEventListener("securitypolicyviolation", function (e) {
  seen.push("csp:" + e.blockedURI);
});
console.error = function () { seen.push("console:" + Array.prototype.join.call(arguments, " ")); };
window.alert = function (m) { seen.push("alert:" + m); };
window.addEventListener("load", function () {
  var out = {};
  try {
    var tables = document.querySelectorAll("table.ranked");
    out.tables = tables.length;
    out.rows = document.querySelectorAll("table.ranked tbody tr").length;
    var imgs = Array.prototype.slice.call(document.images);
    out.imgs = imgs.length;
    out.decoded = imgs.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length;
    out.plots = document.querySelectorAll("svg.hist").length;
    out.bars = document.querySelectorAll("svg.hist rect").length;
    var th = Array.prototype.filter.call(tables[0].tHead.rows[0].cells,
      function (c) { return c.textContent === "AUROC"; })[0];
    var values = function () {
      return Array.prototype.map.call(tables[0].tBodies[0].rows,
        function (r) { return parseFloat(r.cells[th.cellIndex].dataset.v); });
    };
    th.click();
    var up = values();
    th.click();
    var down = values();
    out.ascending = up.every(function (v, i) { return i === 0 || up[i - 1] <= v; });
    out.descending = down.every(function (v, i) { return i === 0 || down[i - 1] >= v; });
    out.sorted_changed = up.join() !== down.join();
  } catch (e) { seen.push("check:" + e); }
  out.errors = seen;
  document.title = "ok:" + JSON.stringify(out);
});
</script>"""


def _chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: CI installs it (.ci/run)")
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    return path


@pytest.mark.subprocess_job
def test_page_loads_in_headless_chromium_without_errors_or_network(tmp_path):
    chromium = _chromium()
    text = render_run_folder(str(make_run_folder(tmp_path)))
    checked = tmp_path / "checked.html"
    checked.write_text(text.replace("<head>", "<head>" + CHECKS, 1))
    result = subprocess.run(
        [
            chromium,
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--disable-extensions",
            "--disable-background-networking",
            "--host-resolver-rules=MAP * ~NOTFOUND",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--virtual-time-budget=10000",
            "--dump-dom",
            checked.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    titles = re.findall(r"<title>(.*?)</title>", result.stdout, flags=re.S)
    assert titles and titles[0].startswith("ok:"), (result.stdout[-2000:], result.stderr[-2000:])
    out = json.loads(html.unescape(titles[0])[3:])
    assert out["errors"] == []
    assert out["tables"] == 2 and out["rows"] == 5
    assert out["imgs"] > 20 and out["decoded"] == out["imgs"]
    assert out["plots"] == 5 and out["bars"] > 0
    assert out["ascending"] and out["descending"] and out["sorted_changed"]
