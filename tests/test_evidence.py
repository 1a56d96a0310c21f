"""Evidence per hypothesis: the per-block picks and score counts merge to exactly what one pass
over every image gives (checked against a plain numpy sort), histograms keep every image, and
the Ray pass picks the same images as the reference, reading thumbnails of only those."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from visdiff import schema
from visdiff.report.evidence import (
    FINE_BINS,
    PLOT_BINS,
    ROLES,
    EvidencePartial,
    EvidenceTable,
    plot_histograms,
)


def _data(n: int, h: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    scores = rng.uniform(0.1, 0.4, size=(n, h))
    is_a = rng.random(n) < 0.45
    ids = np.array([f"{'a' if x else 'b'}/{i}" for i, x in enumerate(is_a)], dtype=object)
    uris = np.array([f"/data/{i}.jpg" for i in range(n)], dtype=object)
    return scores, is_a, ids, uris


def _reference(scores, is_a, ids, k):
    """role -> per hypothesis the ids a full sort picks."""
    out = {}
    for name, mask in (("a", is_a), ("b", ~is_a)):
        for h in range(scores.shape[1]):
            order = np.argsort(scores[mask, h])
            out.setdefault(f"top_{name}", []).append(list(ids[mask][order[::-1][:k]]))
            out.setdefault(f"bottom_{name}", []).append(list(ids[mask][order[:k]]))
    return out


@pytest.mark.parametrize("num_blocks", [1, 3, 17])
def test_merged_blocks_pick_what_a_full_sort_picks(num_blocks):
    n, h, k = 400, 5, 4
    scores, is_a, ids, uris = _data(n, h)
    cuts = np.array_split(np.random.default_rng(1).permutation(n), num_blocks)
    partials = [EvidencePartial.from_scores(scores[c], is_a[c], ids[c], uris[c], k=k) for c in cuts]
    merged = partials[0]
    for p in partials[1:]:
        merged = merged.merge(p)
    table = merged.finalize([f"h{j}" for j in range(h)])
    expected = _reference(scores, is_a, ids, k)
    for j, row in enumerate(table.rows):
        for role in ROLES:
            picked = row.picks[role]
            assert [i.id for i in picked] == expected[role][j], (role, j)
            index = {v: i for i, v in enumerate(ids)}
            for image in picked:  # score and uri travel with the id
                assert image.score == pytest.approx(scores[index[image.id], j])
                assert image.uri == uris[index[image.id]]
        assert sum(row.hist_a) == is_a.sum() and sum(row.hist_b) == (~is_a).sum()


def test_a_set_smaller_than_k_and_an_empty_block():
    scores, is_a, ids, uris = _data(30, 2, seed=3)
    is_a[:] = False
    is_a[[4, 9]] = True  # two images in A
    empty = EvidencePartial.empty(2, 5)
    merged = empty.merge(EvidencePartial.from_scores(scores, is_a, ids, uris, k=5)).merge(empty)
    row = merged.finalize(["x", "y"]).rows[0]
    assert sorted(i.id for i in row.picks["top_a"]) == sorted(ids[[4, 9]])
    assert len(row.picks["top_b"]) == 5 and len(row.picks["bottom_a"]) == 2


def test_plot_histograms_keep_every_count_within_few_bins():
    rng = np.random.default_rng(2)
    a, b = rng.normal(0.25, 0.02, size=(1000, 1)), rng.normal(0.22, 0.03, size=(700, 1))
    p = EvidencePartial.from_scores(
        np.vstack([a, b]),
        np.arange(1700) < 1000,
        np.arange(1700).astype(str).astype(object),
        np.full(1700, "", dtype=object),
        k=1,
    )
    edges, hist_a, hist_b = plot_histograms(p.counts[0, 0], p.counts[1, 0])
    assert (sum(hist_a), sum(hist_b)) == (1000, 700)
    assert len(edges) == len(hist_a) + 1 <= PLOT_BINS + 1
    assert all(x < y for x, y in zip(edges, edges[1:], strict=False))
    width = 2.0 / FINE_BINS  # bins are whole fine bins: every score lies inside the edges
    assert edges[0] - width <= min(a.min(), b.min()) and max(a.max(), b.max()) <= edges[-1]
    share = np.searchsorted(edges, 0.25) - 1  # A's mode is A's most populated bin or next to it
    assert abs(int(np.argmax(hist_a)) - share) <= 1
    assert plot_histograms(np.zeros(FINE_BINS), np.zeros(FINE_BINS)) == ([], [], [])


def test_evidence_parquet_round_trip():
    from visdiff.pipeline.evidence import evidence_parquet
    from visdiff.report.render import read_evidence

    scores, is_a, ids, uris = _data(50, 3)
    table = EvidencePartial.from_scores(scores, is_a, ids, uris, k=3).finalize(["p", "q", "r"])
    table = table.with_thumbnails({uris[0]: b"\xff\xd8jpeg", uris[1]: None})
    back = read_evidence(evidence_parquet(table))
    assert back.rows == table.rows
    assert read_evidence(evidence_parquet(EvidenceTable())).rows == []


def _jpeg_files(root, n: int) -> list[str]:
    paths = []
    for i in range(n):
        path = root / f"img{i}.jpg"
        Image.new("RGB", (40, 30), (i * 20 % 255, 80, 160)).save(path, format="JPEG")
        paths.append(str(path))
    return paths


def test_ray_pass_matches_the_reference_and_reads_thumbnails(ray_session, tmp_path):
    import ray.data

    from visdiff.pipeline.evidence import compute_evidence, write_evidence
    from visdiff.pipeline.graph import EmbeddedImages
    from visdiff.report.render import read_evidence
    from visdiff.report.writers import RunFolder

    n, dim, h, k = 12, 8, 3, 2
    rng = np.random.default_rng(5)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    text = rng.normal(size=(h, dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    paths = _jpeg_files(tmp_path, n)
    paths[3] = str(tmp_path / "gone.jpg")  # listed, then deleted: no thumbnail, still evidence
    sets = np.array(["a"] * 6 + ["b"] * 6, dtype=object)
    errors = [""] * n
    errors[7] = "decode_error: broken"  # a failed row is never picked
    rows = [
        {
            schema.ID: f"{sets[i]}/{i}",
            schema.SET: sets[i],
            schema.URI: paths[i],
            schema.ERROR: errors[i],
            schema.FROM_CACHE: False,
            schema.EMBEDDING: emb[i],
        }
        for i in range(n)
    ]
    ds = ray.data.from_items(rows).repartition(3).materialize()
    embedded = EmbeddedImages(ds, n, {"a": 6, "b": 6})
    table = compute_evidence(embedded, text, ["h0", "h1", "h2"], k)

    ok = np.array([e == "" for e in errors])
    ids = np.array([r[schema.ID] for r in rows], dtype=object)
    expected = _reference((emb @ text.T)[ok], (sets == "a")[ok], ids[ok], k)
    for j, row in enumerate(table.rows):
        for role in ROLES:
            assert [i.id for i in row.picks[role]] == expected[role][j]
        for image in (i for images in row.picks.values() for i in images):
            if image.uri.endswith("gone.jpg"):
                assert image.thumbnail is None
            else:
                assert Image.open(io.BytesIO(image.thumbnail)).format == "JPEG"
        assert (sum(row.hist_a), sum(row.hist_b)) == (6, 5)

    folder = RunFolder(str(tmp_path / "run"))
    write_evidence(folder, table)
    assert folder.written == ["evidence.parquet"]
    stored = (tmp_path / "run" / "evidence.parquet").read_bytes()
    assert read_evidence(stored).rows == table.rows
