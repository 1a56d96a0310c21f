"""Web-scale inputs end to end on the session's Ray: WebDataset and Parquet shards on a real S3
API server (moto, loopback), results written to S3, the embedding cache reused by a second run,
and the distributed ranker against single-process references for several block splits."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy import stats as scipy_stats
from sklearn.metrics import roc_auc_score

from tests.openai_standin import serve_standin
from visdiff.cli import main
from visdiff.config import RankConfig, load_config
from visdiff.pipeline.describe import describe

pytestmark = pytest.mark.e2e
ANSWER = "* people doing yoga poses\n* people meditating\n* mountains at sunset\n* snow"


def _photos(examples_dir: Path, folder: str, n: int) -> list[Path]:
    return sorted((examples_dir / folder).glob("*.jpg"))[:n]


def _webdataset_shard(photos: list[Path], captions: list[str]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for i, (photo, caption) in enumerate(zip(photos, captions, strict=True)):
            for name, data in (
                (f"{i:06d}.jpg", photo.read_bytes()),
                (f"{i:06d}.txt", caption.encode()),
                (f"{i:06d}.json", json.dumps({"key": f"{i:06d}"}).encode()),
            ):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _parquet_shard(photos: list[Path], captions: list[str]) -> bytes:
    table = pa.table(
        {
            "key": [p.stem for p in photos],
            "jpg": [p.read_bytes() for p in photos],
            "caption": captions,
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def test_shards_on_s3_with_alt_text_and_results_on_s3(
    ray_session, examples_dir, s3_bucket, tmp_path
):
    s3 = boto3.client("s3")
    yoga = _photos(examples_dir, "set_a", 30)
    calm = _photos(examples_dir, "set_b", 24)
    for shard in range(3):  # A: 3 WebDataset shards of 10, one of them truncated
        part = yoga[shard * 10 : (shard + 1) * 10]
        body = _webdataset_shard(part, [f"yoga photo {p.stem}" for p in part])
        if shard == 2:
            body = body[: len(body) * 2 // 3]
        s3.put_object(Bucket=s3_bucket, Key=f"laion/{shard:05d}.tar", Body=body)
    for shard in range(2):  # B: 2 Parquet shards with image bytes
        part = calm[shard * 12 : (shard + 1) * 12]
        body = _parquet_shard(part, [f"calm photo {p.stem}" for p in part])
        s3.put_object(Bucket=s3_bucket, Key=f"calm/part-{shard}.parquet", Body=body)

    output = f"s3://{s3_bucket}/runs/first"
    with serve_standin([ANSWER]) as standin:
        config = load_config(
            None,
            [
                f"data.set_a=s3://{s3_bucket}/laion/{{00000..00002}}.tar",
                f"data.set_b=s3://{s3_bucket}/calm/*.parquet",
                "data.max_num_samples=0",
                "caption.source=manifest",
                "llm.backend=external",
                f"llm.base_url={standin.base_url}",
                "propose.num_rounds=2",
                "propose.num_samples=5",
                f"output_dir={output}",
            ],
        )
        result = describe(config)
        prompts = [r["messages"][-1]["content"] for r in standin.requests]

    # The alt-text from the shards fed the proposer; no captioner ran.
    assert all("yoga photo" in p and "calm photo" in p for p in prompts)
    assert result.stats["captioning"]["images_captioned"] == 0
    # A: the truncated shard loses its cut samples and records one error row; B: all 24.
    images = result.stats["images"]
    assert images["b"]["ranked"] == 24 and images["b"]["shards"] == 2
    assert 20 <= images["a"]["ranked"] < 30 and images["a"]["shards"] == 3
    assert result.stats["skipped_by_reason"] == {"truncated_tar": 1}
    assert all(r["n_a"] == images["a"]["ranked"] and r["n_b"] == 24 for r in result.ranked)
    # Every result file landed in S3.
    listed = s3.list_objects_v2(Bucket=s3_bucket, Prefix="runs/first/")
    names = {obj["Key"].rsplit("/", 1)[-1] for obj in listed["Contents"]}
    assert {"config.yaml", "hypotheses.jsonl", "ranked.json", "ranked.parquet"} <= names
    assert {"stats.json", "report.html"} <= names
    ranked = json.loads(
        s3.get_object(Bucket=s3_bucket, Key="runs/first/ranked.json")["Body"].read()
    )
    assert [r["hypothesis"] for r in ranked] == [r["hypothesis"] for r in result.ranked]


def test_second_run_reuses_the_embedding_cache(ray_session, examples_dir, tmp_path, capsys):
    cache_root = tmp_path / "cache"
    runs = []
    with serve_standin([ANSWER]) as standin:
        for name in ("first", "second"):
            config = load_config(
                None,
                [
                    f"data.set_a={examples_dir / 'set_a'}",
                    f"data.set_b={examples_dir / 'set_b'}",
                    "data.max_num_samples=40",
                    "llm.backend=external",
                    f"llm.base_url={standin.base_url}",
                    "propose.num_rounds=1",
                    "propose.num_samples=4",
                    f"cache.root={cache_root}",
                    f"output_dir={tmp_path / name}",
                ],
            )
            runs.append(describe(config))
    first, second = runs
    assert first.stats["cache"] == {"hits": 0, "misses": 80}
    assert second.stats["cache"] == {"hits": 80, "misses": 0}
    assert [r["hypothesis"] for r in first.ranked] == [r["hypothesis"] for r in second.ranked]
    np.testing.assert_allclose(
        [r["auroc"] for r in first.ranked], [r["auroc"] for r in second.ranked], atol=1e-7
    )
    # The captioner's outputs are cached too.
    assert any(p.name.startswith("caption-") for p in cache_root.iterdir())
    # `visdiff embed` over the same images finds every embedding in the cache (jobs/embed.py runs
    # this command on a cluster).
    code = main(
        ["embed", f"data.set_a={examples_dir / 'set_a'}", f"data.set_b={examples_dir / 'set_b'}",
         "data.max_num_samples=40", f"cache.root={cache_root}", f"output_dir={tmp_path / 'embed'}"]
    )  # fmt: skip
    assert code == 0
    embed_stats = json.loads((tmp_path / "embed" / "embed_stats.json").read_text())
    assert embed_stats["cache"] == {"root": str(cache_root), "hits": 80, "misses": 0}
    assert "80 already cached" in capsys.readouterr().out


def _synthetic_embedded(n_a: int, n_b: int, dim: int, num_blocks: int, seed: int = 0):
    import ray.data

    from visdiff import schema
    from visdiff.pipeline.graph import EmbeddedImages

    rng = np.random.default_rng(seed)
    emb = rng.normal(size=(n_a + n_b, dim)).astype(np.float32)
    emb[:n_a, 0] += 0.5  # set A leans along the first axis
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sets = np.array([schema.SET_A] * n_a + [schema.SET_B] * n_b, dtype=object)
    rows = [
        {
            schema.ID: f"{s}/{i}",
            schema.SET: s,
            schema.URI: "",
            schema.ERROR: "",
            schema.FROM_CACHE: False,
            schema.EMBEDDING: emb[i],
        }
        for i, s in enumerate(sets)
    ]
    ds = ray.data.from_items(rows)
    ds = ds.repartition(num_blocks).materialize()
    return EmbeddedImages(ds, n_a + n_b, {"a": n_a, "b": n_b}), emb, sets


@pytest.mark.parametrize("num_blocks", [1, 7, 40])
def test_distributed_ranking_equals_single_process_reference(ray_session, num_blocks):
    from visdiff.pipeline.graph import score_hypotheses

    n_a, n_b, dim, h = 300, 250, 16, 6
    embedded, emb, sets = _synthetic_embedded(n_a, n_b, dim, num_blocks)
    rng = np.random.default_rng(1)
    texts = rng.normal(size=(h, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    hypotheses = [f"h{j}" for j in range(h)]
    ranked = score_hypotheses(embedded, hypotheses, texts, RankConfig())
    scores = emb @ texts.T
    is_a = sets == "a"
    by_name = {s.hypothesis: s for s in ranked}
    for j, name in enumerate(hypotheses):
        got = by_name[name]
        assert got.auroc == pytest.approx(roc_auc_score(is_a, scores[:, j]), abs=1e-9)
        t = scipy_stats.ttest_ind(scores[is_a, j], scores[~is_a, j], equal_var=False)
        assert got.t_stat == pytest.approx(t.statistic, rel=1e-6)
        assert got.p_value == pytest.approx(t.pvalue, rel=1e-6, abs=1e-12)
        assert (got.n_a, got.n_b) == (n_a, n_b)


def test_histogram_ranking_is_within_bound_and_split_independent(ray_session):
    from visdiff.pipeline.graph import score_hypotheses

    n_a, n_b, dim, h = 400, 400, 16, 5
    rng = np.random.default_rng(2)
    texts = rng.normal(size=(h, dim)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    hypotheses = [f"h{j}" for j in range(h)]
    rank_cfg = RankConfig(exact_cap=100, histogram_bins=512)  # force the histogram path
    results = []
    for num_blocks in (3, 17):
        embedded, emb, sets = _synthetic_embedded(n_a, n_b, dim, num_blocks)
        results.append(
            {s.hypothesis: s for s in score_hypotheses(embedded, hypotheses, texts, rank_cfg)}
        )
    scores = emb @ texts.T
    for j, name in enumerate(hypotheses):
        exact = roc_auc_score(sets == "a", scores[:, j])
        first, second = results[0][name], results[1][name]
        assert not first.auroc_exact
        assert abs(first.auroc - exact) <= first.auroc_error_bound
        assert first.auroc == second.auroc and first.auroc_error_bound == second.auroc_error_bound
