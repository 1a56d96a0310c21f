"""Every proposer, ranker and evaluator selectable by name, run end to end through `visdiff
describe` on the session's Ray with tiny models. Two runs cover the variants the other
end-to-end tests do not (llm + clip + llm_judge: test_describe_e2e; keyphrase + caption:
test_offline; paired: test_applications):

- vlm proposer + vlm ranker + llm_judge sharing the tiny VLM's Serve app;
- feature proposer + llm ranker (against an OpenAI stand-in that answers from the caption) +
  embedding evaluator; its AUROCs must equal scikit-learn's on the answers it was given.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from tests.openai_standin import serve_standin
from visdiff.cli import main

pytestmark = pytest.mark.e2e

GROUP_A = "People practicing yoga in a mountainous setting"
GROUP_B = "People meditating in a mountainous setting"


def _argv(examples_dir: Path, run_dir: Path, *overrides: str) -> list[str]:
    return [
        "describe",
        f"data.manifest={examples_dir / 'manifest.csv'}",
        f"data.group_a={GROUP_A}",
        f"data.group_b={GROUP_B}",
        f"output_dir={run_dir}",
        "propose.num_rounds=1",
        "propose.num_samples=4",
        *overrides,
    ]


def _read(run_dir: Path) -> dict[str, Any]:
    status = json.loads((run_dir / "status.json").read_text())
    assert status["state"] == "complete", status
    return {
        "stats": json.loads((run_dir / "stats.json").read_text()),
        "ranked": json.loads((run_dir / "ranked.json").read_text()),
        "proposals": [
            json.loads(x) for x in (run_dir / "hypotheses.jsonl").read_text().split("\n") if x
        ],
        "metrics": json.loads((run_dir / "metrics.json").read_text()),
    }


def test_vlm_proposer_vlm_ranker_and_a_judge_sharing_the_vlm(
    ray_session, examples_dir, tmp_path, serve_http_port
):
    run_dir = tmp_path / "vlm"
    code = main(
        _argv(
            examples_dir,
            run_dir,
            "data.max_num_samples=5",
            "propose.proposer=vlm",
            "propose.grid_images=4",
            "rank.ranker=vlm",
            "llm.model=tiny-vlm",
            f"llm.http_port={serve_http_port}",
            "evaluate.evaluator=llm_judge",
            "evaluate.llm.model=tiny-vlm",  # the same model as llm: the two share one app
            f"evaluate.llm.http_port={serve_http_port}",
            "evaluate.ground_truth_a=yoga",
            "evaluate.top_k=2",
        )
    )
    assert code == 0
    out = _read(run_dir)
    stats, ranked = out["stats"], out["ranked"]
    assert stats["variants"] == {"proposer": "vlm", "ranker": "vlm", "evaluator": "llm_judge"}
    (proposal,) = out["proposals"][:1]
    assert proposal["prompt_source"] == "vlm"
    assert 1 <= len(proposal["ids_a"]) <= 4 and all(i.startswith("a/") for i in proposal["ids_a"])
    hypotheses = {r["hypothesis"] for r in ranked}
    assert len(ranked) == 2 * len(hypotheses) and hypotheses
    # One VLM call to propose, one per (image, hypothesis) to rank, one per judged hypothesis.
    judged = out["metrics"]["n_judged"]
    assert judged == min(2, len(hypotheses))
    assert "shared" in out["metrics"]["judge_client"]
    images = stats["images"]["a"]["used"] + stats["images"]["b"]["used"]
    assert images == 10
    assert stats["llm_usage"]["calls"] == 1 + images * len(hypotheses) + judged


_CAPTION = re.compile(r'caption of an image: "(.*)"\nJudging', re.S)


def _yes_when_the_caption_says_yoga(body: dict[str, Any]) -> str:
    (caption,) = _CAPTION.findall(body["messages"][-1]["content"])
    return "Yes" if "yoga" in caption.lower() else "No"


def test_feature_proposer_llm_ranker_and_embedding_evaluator(ray_session, examples_dir, tmp_path):
    run_dir = tmp_path / "feature"
    with serve_standin(["unused"]) as standin:
        standin.answer_with = _yes_when_the_caption_says_yoga
        code = main(
            _argv(
                examples_dir,
                run_dir,
                "data.max_num_samples=0",  # every image: the AUROC check below uses them all
                "rank.max_judged_images=0",
                "propose.proposer=feature",
                "propose.max_hypotheses_per_round=2",
                "rank.ranker=llm",
                "caption.source=manifest",
                "llm.backend=external",
                f"llm.base_url={standin.base_url}",
                "llm.api_key_env=VISDIFF_NO_KEY",
                "evaluate.evaluator=embedding",
                "evaluate.ground_truth_a=people doing yoga poses",
                "evaluate.ground_truth_b=people meditating",
            )
        )
        asked = len(standin.requests)
    assert code == 0
    out = _read(run_dir)
    stats, ranked = out["stats"], out["ranked"]
    assert stats["variants"] == {"proposer": "feature", "ranker": "llm", "evaluator": "embedding"}
    assert out["proposals"][0]["prompt_source"] == "feature"
    hypotheses = sorted({r["hypothesis"] for r in ranked})
    assert 1 <= len(hypotheses) <= 2
    # caption.source=manifest: the images without a caption in the manifest are skipped and
    # counted, not captioned.
    manifest = pd.read_csv(examples_dir / "manifest.csv", keep_default_na=False)
    manifest = manifest[manifest["caption"] != ""]
    assert stats["skipped_by_reason"].get("no_caption") == 200 - len(manifest)
    # The feature proposer asks no LLM; the ranker asks once per image and hypothesis.
    assert asked == stats["llm_usage"]["calls"] == len(manifest) * len(hypotheses)

    # Each answer depends on the caption only, so every hypothesis has the AUROC of "the
    # caption says yoga" between the sets.
    is_a = (manifest["group_name"] == GROUP_A).to_numpy()
    says_yoga = manifest["caption"].str.lower().str.contains("yoga").to_numpy()
    expected = roc_auc_score(is_a, says_yoga)
    for row in ranked:
        oriented = expected if row["direction"] == "a" else 1 - expected
        assert row["auroc"] == pytest.approx(oriented, abs=1e-9)
    metrics = out["metrics"]
    assert metrics["evaluator"] == "embedding" and metrics["n_judged"] == len(hypotheses)
    assert all(j["score"] in (0, 1, 2) for j in metrics["judgements"])
