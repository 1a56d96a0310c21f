"""Near-duplicate merging in a run and iterative refinement (propose.refine_rounds): the loop on
its own with a scripted chat endpoint, and a whole `visdiff describe` run against the OpenAI
stand-in on the shared example."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from tests.openai_standin import manifest_run_argv, serve_standin
from visdiff.cli import main
from visdiff.config import DescribeConfig
from visdiff.llm.client import ChatReply
from visdiff.pipeline.refine import MissCaptions, Ranking, best_auroc, refine
from visdiff.propose.parse import Candidate, merge_near_duplicates
from visdiff.propose.pool import HypothesisPool
from visdiff.propose.proposer import Proposal
from visdiff.report.evidence import EvidencePartial

REPO = Path(__file__).resolve().parents[1]
IDS_A = [f"a{i}" for i in range(4)]
IDS_B = ["b0", "b1"]
QUALITY = {"red": 0.7, "blue": 0.6, "crimson": 0.8, "scarlet": 0.75, "maroon": 0.9}


class _Scripted:
    """A chat endpoint that answers the n-th request with the n-th given answer."""

    def __init__(self, answers: list[str]) -> None:
        self.answers = answers
        self.requests: list[list[dict[str, str]]] = []

    def reply(self, messages, *, temperature, max_tokens, seed=None):
        self.requests.append(messages)
        return ChatReply(self.answers[len(self.requests) - 1], "stop")


def _embed(texts: list[str]) -> np.ndarray:
    """A fixed random 64-d vector per text: distinct texts are far apart (cos ~ 0 +- 0.13)."""
    return np.stack([np.random.default_rng(zlib.crc32(t.encode())).normal(size=64) for t in texts])


def _ranker(calls: list[list[str]]):
    """AUROC from QUALITY; A image i scores (i + j) % 4 on hypothesis j (B images score 0), so
    the worst-matching A images differ between hypotheses."""

    def rank(pool: HypothesisPool) -> Ranking:
        hypotheses = pool.hypotheses
        calls.append(hypotheses)
        rows = [{"hypothesis": h, "direction": "a", "auroc": QUALITY[h]} for h in hypotheses]
        rows.sort(key=lambda r: -r["auroc"])
        rows += [{**r, "direction": "b", "auroc": 1 - r["auroc"]} for r in reversed(rows)]
        scores = [[(i + j) % 4 for j in range(len(hypotheses))] for i in range(4)]
        scores += [[0.0] * len(hypotheses)] * 2
        is_a = np.array([True] * 4 + [False] * 2)
        ids = np.array(IDS_A + IDS_B, dtype=object)
        evidence = EvidencePartial.from_scores(np.array(scores), is_a, ids, ids, k=2)
        return Ranking(rows, evidence, scored=None)

    return rank


def _run(answers: list[str], refine_rounds: int, captioned: list[list[str]]):
    config = DescribeConfig()
    config.propose.refine_rounds = refine_rounds
    config.propose.refine_top_k = 2
    initial = [
        Proposal(0, "r0", ["red"], ["a0"], ["b0"], captions_a=["cap a0"], captions_b=["cap b0"]),
        Proposal(1, "r1", ["blue"], ["a1"], ["b1"], captions_a=["cap a1"], captions_b=["cap b1"]),
    ]
    pool = HypothesisPool.build(initial, _embed, threshold=0.95)
    ranks: list[list[str]] = []
    rank = _ranker(ranks)

    def caption(rows):
        captioned.append([r["id"] for r in rows])
        return {r["id"]: (f"model caption {r['id']}", "") for r in rows}

    client = _Scripted(answers)
    captions = MissCaptions({"a0": "cap a0", "a1": "cap a1"}, caption)
    grown, ranking = refine(
        client, pool, rank(pool), config=config, embed=_embed, rank=rank, captions=captions
    )
    return client, grown, ranking, ranks[1:]  # ranks: the loop's own passes


def test_refinement_rounds_follow_the_initial_ones_and_stop_when_the_best_stalls():
    captioned: list[list[str]] = []
    answers = ["* crimson\n* Red.", "* scarlet", "* maroon"]
    client, pool, ranking, ranks = _run(answers, 3, captioned)

    # round 2 found a better hypothesis (0.8 > 0.7); round 3's best was no better: stop there
    assert len(client.requests) == 2
    assert [p.round_index for p in pool.proposals] == [0, 1, 2, 3]
    assert pool.hypotheses == ["red", "blue", "crimson", "scarlet"]
    assert ranks == [["red", "blue", "crimson"], ["red", "blue", "crimson", "scarlet"]]
    assert [r["hypothesis"] for r in ranking.ranked if r["direction"] == "a"][0] == "crimson"
    assert best_auroc(ranking.ranked) == 0.8

    round_2, round_3 = pool.proposals[2:]
    assert round_2.refined_from == ["red", "blue"]  # the top 2 before the round, best first
    assert round_3.refined_from == ["crimson", "red"]
    assert pool.merged_into() == {(2, 1): "red"}
    # the A images each top hypothesis matches worst, with their captions, in the prompt
    prompt = client.requests[0][-1]["content"].splitlines()
    red = prompt.index('1. "red" (AUROC 0.70)')
    assert prompt[red + 1 : red + 3] == ["   - cap a0", "   - cap a1"]
    blue = prompt.index('2. "blue" (AUROC 0.60)')
    assert prompt[blue + 1 : blue + 3] == ["   - model caption a3", "   - cap a0"]
    assert round_2.ids_a == ["a0", "a1", "a3"] and round_2.ids_b == []
    assert round_2.captions_a == ["cap a0", "cap a1", "model caption a3"]
    assert round_2.prompt == client.requests[0][-1]["content"]
    # each image is captioned once per run; known captions are never asked for
    assert captioned == [["a3"], ["a2"]]
    # images whose captions the refinement showed are held in from now on
    assert {"a2", "a3"} <= pool.shown_ids()


def test_refinement_runs_every_round_while_it_improves():
    client, pool, _, ranks = _run(["* crimson", "* maroon", "* never asked"], 2, [])
    assert len(client.requests) == 2 and len(ranks) == 2
    assert [p.round_index for p in pool.proposals] == [0, 1, 2, 3]
    assert pool.hypotheses[-1] == "maroon"


def test_refinement_stops_when_a_round_adds_nothing_new():
    client, pool, ranking, ranks = _run(["* RED\n* blue!", "* crimson"], 3, [])
    assert len(client.requests) == 1 and ranks == []  # nothing new: no second ranking
    assert [p.round_index for p in pool.proposals] == [0, 1, 2]
    assert pool.merged_into() == {(2, 0): "red", (2, 1): "blue"}
    assert pool.hypotheses == ["red", "blue"] and best_auroc(ranking.ranked) == 0.7


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


REFINED = [
    "* people balancing on one leg\n* a raised arm against the sky",
    "* a person in a backbend\n* stretching on a rock",
]


@pytest.mark.e2e
def test_describe_merges_near_duplicates_and_refines(
    ray_session, examples_dir, recorded_outputs, tmp_path
):
    run_dir = tmp_path / "run"
    with serve_standin(recorded_outputs[:2] + REFINED) as standin:
        code = main(
            manifest_run_argv(
                examples_dir,
                run_dir,
                standin.base_url,
                "propose.num_rounds=2",
                "propose.num_samples=6",
                "propose.merge_similarity=0.9",
                "propose.refine_rounds=2",
                "propose.refine_top_k=3",
                "evaluate.evaluator=none",
            )
        )
        requests = list(standin.requests)
    assert code == 0
    rows = _read_jsonl(run_dir / "hypotheses.jsonl")
    ranked = json.loads((run_dir / "ranked.json").read_text())
    of_a = {r["hypothesis"]: r["auroc"] for r in ranked if r["direction"] == "a"}

    # Merging: the same tiny CLIP text embeddings, merged here, give the run's groups.
    from visdiff.config import ClipConfig
    from visdiff.models.clip import clip_text_embeddings, load_clip

    parsed = [r for r in rows if r["hypothesis"] is not None]
    texts = [r["hypothesis"] for r in parsed]
    vectors = clip_text_embeddings(load_clip(ClipConfig()), texts)
    candidates = [Candidate(r["hypothesis"], r["round"], r["index"]) for r in parsed]
    merged = merge_near_duplicates(candidates, np.asarray(vectors), threshold=0.9)
    expected = {(c.round_index, c.position): m.text for m in merged for c in m.sources[1:]}
    assert {(r["round"], r["index"]): r["merged_into"] for r in parsed if r["merged_into"]} == (
        expected
    )
    assert any(r["merged_into"] not in (None, r["hypothesis"]) for r in parsed)
    # one ranked row per kept hypothesis and direction
    assert sorted(of_a) == sorted(m.text for m in merged)
    assert len(ranked) == 2 * len(merged)

    # Refinement: rounds 2 (and 3) after the initial 0 and 1, each after one LLM request.
    rounds = sorted({r["round"] for r in rows})
    assert rounds[:3] == [0, 1, 2] and len(rounds) in (3, 4)
    assert len(requests) == len(rounds)
    refined = [r for r in rows if r["round"] >= 2]
    assert all(len(r["refined_from"]) == 3 for r in refined)
    assert all(r["prompt_source"] == "built-in 'refine'" for r in refined)
    for r in refined:
        assert r["ids_b"] == [] and len(r["ids_a"]) == len(r["captions_a"]) > 0
    assert all(r["refined_from"] == [] for r in rows if r["round"] < 2)
    initial = [r for r in parsed if r["round"] < 2]
    assert all(len(r["captions_a"]) == len(r["ids_a"]) > 0 for r in initial)
    # the stopping rule: a third round only when round 2 raised the best AUROC (a hypothesis's
    # AUROC does not depend on the others ranked with it)
    best = {k: max(of_a[t] for t in of_a if _first_round(t, parsed) <= k) for k in (1, 2)}
    assert (len(rounds) == 4) == (best[2] > best[1])


def _first_round(text: str, parsed: list[dict]) -> int:
    return min(r["round"] for r in parsed if r["hypothesis"] == text)
