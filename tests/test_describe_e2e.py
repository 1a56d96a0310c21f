"""End-to-end `visdiff describe` runs with the tiny preset on the shared example photos, on the
session's local Ray: our Serve-hosted LLM, the manifest's caption column, and an external
OpenAI-compatible endpoint (a real HTTP stand-in on loopback)."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from sklearn.metrics import roc_auc_score

from tests.openai_standin import manifest_run_argv, serve_standin
from tests.replica_killer import KillDuring
from visdiff import schema
from visdiff.cli import main
from visdiff.propose.parse import dedupe_hypotheses, parse_hypotheses

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[1]
GROUP_A = "People practicing yoga in a mountainous setting"
GROUP_B = "People meditating in a mountainous setting"


@pytest.fixture(scope="module")
def example_folders(tmp_path_factory, examples_dir) -> tuple[Path, Path]:
    """The 200 photos plus one corrupt JPEG in A and one text file posing as a PNG in B."""
    root = tmp_path_factory.mktemp("examples")
    set_a = shutil.copytree(examples_dir / "set_a", root / "set_a")
    set_b = shutil.copytree(examples_dir / "set_b", root / "set_b")
    whole = (examples_dir / "set_a" / "000001.jpg").read_bytes()
    (set_a / "zz_corrupt.jpg").write_bytes(whole[: len(whole) // 2])
    (set_b / "zz_not_an_image.png").write_text("hello, I am text")
    return Path(set_a), Path(set_b)


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def check_run_folder(run_dir: Path, *, n_a: int, n_b: int, num_rounds: int) -> dict:
    """Invariants every run folder must satisfy; returns the parsed files."""
    for name in schema.RUN_FILES:
        assert (run_dir / name).is_file(), name
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["models"] == "tiny"

    proposals = _read_jsonl(run_dir / "hypotheses.jsonl")
    assert {p["round"] for p in proposals} == set(range(num_rounds))
    assert all(isinstance(p["raw_text"], str) for p in proposals)
    proposed = {p["hypothesis"] for p in proposals if p["hypothesis"] is not None}

    stats = json.loads((run_dir / "stats.json").read_text())
    holdout = stats["holdout"]  # rank.holdout: the sampled images are left out of the tests
    shown = {i for p in proposals for i in (*p["ids_a"], *p["ids_b"])}
    assert holdout["enabled"] and holdout["fallback"] is None
    assert holdout["scored"] == {"a": n_a, "b": n_b}
    for name in ("a", "b"):
        assert (
            0 < holdout["left_out_of_tests"][name] <= sum(i.startswith(f"{name}/") for i in shown)
        )
    n_a_test, n_b_test = (n - holdout["left_out_of_tests"][s] for s, n in (("a", n_a), ("b", n_b)))
    assert holdout["tested"] == {"a": n_a_test, "b": n_b_test}

    rows = json.loads((run_dir / "ranked.json").read_text())
    assert rows, "no ranked hypotheses"
    assert [tuple(r) for r in rows] == [schema.RANKED_COLUMNS] * len(rows)
    by_direction = {d: [r for r in rows if r["direction"] == d] for d in ("a", "b")}
    assert len(rows) == 2 * len(by_direction["a"])  # every hypothesis once per direction
    assert rows == by_direction["a"] + by_direction["b"]
    ranked = by_direction["a"]
    hypotheses = [r["hypothesis"] for r in ranked]
    assert len(set(hypotheses)) == len(hypotheses)
    assert set(hypotheses) <= proposed
    assert sorted(r["hypothesis"] for r in by_direction["b"]) == sorted(hypotheses)
    of_a = {r["hypothesis"]: r for r in ranked}
    for direction, mine in by_direction.items():
        assert [r["rank"] for r in mine] == list(range(1, len(mine) + 1))
        aurocs = [r["auroc"] for r in mine]
        assert aurocs == sorted(aurocs, reverse=True)  # best first within each direction
        sign = 1.0 if direction == "a" else -1.0
        for r in mine:
            # The interval is the held-out AUROC's; the ranking's AUROC is of every image.
            assert 0.0 <= r["auroc_ci_low"] <= r["auroc_test"] <= r["auroc_ci_high"] <= 1.0
            assert r["n_a"] == n_a and r["n_b"] == n_b
            assert (r["n_a_test"], r["n_b_test"]) == (n_a_test, n_b_test)
            diff = sign * (r["mean_a"] - r["mean_b"])
            assert math.isclose(r["diff"], diff, abs_tol=1e-9)
            assert -1.0 <= r["correct_delta"] <= 1.0
            assert 0.0 <= r["p_value"] <= r["q_value"] <= 1.0
            assert r["significant"] is (r["q_value"] < 0.05 and r["auroc_ci_low"] > 0.5)
            twin = of_a[r["hypothesis"]]  # B's AUROC is 1 - A's: the same test, turned round
            assert math.isclose(r["auroc"], twin["auroc"] if sign > 0 else 1 - twin["auroc"])

    table = pd.read_parquet(run_dir / "ranked.parquet")
    assert tuple(table.columns) == schema.RANKED_COLUMNS
    assert list(table["hypothesis"]) == [r["hypothesis"] for r in rows]
    np.testing.assert_allclose(table["auroc"], [r["auroc"] for r in rows])
    assert table["significant"].dtype == bool

    assert stats["images"]["a"]["ranked"] == n_a and stats["images"]["b"]["ranked"] == n_b
    assert set(stats["seconds"]) >= {"load_inputs", "caption", "propose", "embed_images", "rank"}
    startup = stats["startup_seconds"]  # per stage: start to first output (actors, model loads)
    assert startup["ray"] >= 0 and startup["clip_actors"]["model_load"] > 0
    assert 0 < startup["first_output"]["embed_images"] <= stats["seconds"]["embed_images"]
    html = (run_dir / "report.html").read_text()
    assert html.count("data:image/jpeg;base64,") >= 2
    # "ranked": the rows more true of A (the paper's list); "ranked_b": the reverse direction.
    return {
        "proposals": proposals,
        "ranked": ranked,
        "ranked_b": by_direction["b"],
        "stats": stats,
        "html": html,
    }


def _recompute_aurocs(set_a: Path, set_b: Path, hypotheses: list[str]) -> list[float]:
    """Single-process reference: the same tiny CLIP, every image, sklearn's AUROC."""
    import torch
    from PIL import Image

    from visdiff.config import ClipConfig
    from visdiff.models.clip import clip_image_embeddings, clip_text_embeddings, load_clip

    bundle = load_clip(ClipConfig())
    paths_a = sorted(p for p in set_a.glob("*.jpg") if not p.name.startswith("zz_"))
    paths_b = sorted(set_b.glob("*.jpg"))
    pixels = torch.stack(
        [bundle.preprocess(Image.open(p).convert("RGB")) for p in paths_a + paths_b]
    )
    images = clip_image_embeddings(bundle, pixels)
    texts = clip_text_embeddings(bundle, hypotheses)
    scores = images @ texts.T
    labels = np.r_[np.ones(len(paths_a)), np.zeros(len(paths_b))]
    return [roc_auc_score(labels, scores[:, j]) for j in range(len(hypotheses))]


def test_describe_tiny_on_folders_with_serve_llm_whose_replica_is_killed(
    ray_session, example_folders, tmp_path, serve_http_port, capsys
):
    """The tiny preset end to end on the example folders with its own Serve LLM app, whose
    replica is killed while the proposer's first requests are inside it (issue #11's fault
    test: tests/replica_killer.py says what happens and why). Serve replaces it, the client's
    retries reach the successor, and the run folder is complete and correct."""
    set_a, set_b = example_folders
    run_dir = tmp_path / "run"
    timeout_s = 60.0
    with KillDuring("visdiff-llm") as kill:
        code = main(
            [
                "describe",
                "--config",
                str(REPO / "configs" / "examples_folders.yaml"),
                f"data.set_a={set_a}",
                f"data.set_b={set_b}",
                f"output_dir={run_dir}",
                f"llm.http_port={serve_http_port}",
                f"llm.timeout_s={timeout_s:g}",
                "propose.num_rounds=2",
                "propose.num_samples=6",
                "evaluate.top_k=3",
                # Folder names are not descriptions: the judge grades only against given truth.
                f"evaluate.ground_truth_a={GROUP_A}",
                f"evaluate.ground_truth_b={GROUP_B}",
            ]
        )
    assert code == 0, capsys.readouterr().err
    print(kill.assert_recovered(timeout_s))
    out = check_run_folder(run_dir, n_a=100, n_b=100, num_rounds=2)
    stats = out["stats"]
    # Retries happen inside a call (the SDK's): no call failed, both rounds were answered.
    assert stats["llm_usage"]["failed"] == 0 and stats["llm_usage"]["calls"] >= 2
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    reasons = {s["uri"].rsplit("/", 1)[-1]: s["reason_code"] for s in stats["skipped"]}
    assert reasons == {"zz_corrupt.jpg": "truncated", "zz_not_an_image.png": "not_an_image"}
    assert stats["images"]["a"]["skipped"] == 1 and stats["images"]["b"]["skipped"] == 1
    assert stats["captioning"]["images_captioned"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["ground_truth_a"] == GROUP_A
    assert {"acc@1", "acc@5", "acc@N"} <= set(metrics)
    printed = capsys.readouterr().out
    assert "Top hypotheses" in printed and str(run_dir.resolve()) in printed

    # The distributed ranking equals a single-process sklearn reference on the same model.
    ranked = out["ranked"]
    reference = _recompute_aurocs(set_a, set_b, [r["hypothesis"] for r in ranked])
    np.testing.assert_allclose([r["auroc"] for r in ranked], reference, atol=1e-6)


def test_describe_with_manifest_captions_and_external_endpoint(
    ray_session, examples_dir, recorded_outputs, tmp_path, monkeypatch
):
    recorded = recorded_outputs
    secret = "sk-test-never-logged-0123456789"
    monkeypatch.setenv("VISDIFF_TEST_KEY", secret)
    run_dir = tmp_path / "run"
    judge_answers = ["2", "0", "1", "0", "0"]
    with serve_standin(recorded + judge_answers, require_key=secret) as standin:
        code = main(
            manifest_run_argv(
                examples_dir,
                run_dir,
                standin.base_url,
                "llm.external_model=gpt-4",
                "llm.api_key_env=VISDIFF_TEST_KEY",
                "propose.num_rounds=3",
                "propose.num_samples=10",
            )
        )
        requests = list(standin.requests)
    assert code == 0
    out = check_run_folder(run_dir, n_a=100, n_b=100, num_rounds=3)

    # The proposer saw only manifest captions; the captioner never ran.
    manifest = pd.read_csv(examples_dir / "manifest.csv", keep_default_na=False)
    captions = set(manifest.loc[manifest["caption"] != "", "caption"])
    proposer_prompts = [r["messages"][-1]["content"] for r in requests[:3]]
    for prompt in proposer_prompts:
        assert sum(caption in prompt for caption in captions) >= 10
    assert all(r["model"] == "gpt-4" for r in requests)
    assert out["stats"]["captioning"]["images_captioned"] == 0

    # Hypotheses are exactly the parsed, de-duplicated recorded answers.
    expected = dedupe_hypotheses(h for text in recorded for h in parse_hypotheses(text))
    assert sorted(r["hypothesis"] for r in out["ranked"]) == sorted(expected)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["acc@N"] == 1.0 and metrics["n_judged"] == 5

    # The key never reaches the run folder.
    for path in run_dir.iterdir():
        assert secret not in path.read_text(errors="ignore"), path.name
