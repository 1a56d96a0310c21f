"""LLM-judge evaluation of the ranked list against the ground-truth difference (Acc@k)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from visdiff.config import EvaluateConfig, LLMConfig
from visdiff.evaluate.judge import JudgeResult, build_judge_messages, parse_judge_score, summarize
from visdiff.llm.client import ChatClient


def evaluate_ranked(
    client: ChatClient,
    ranked_hypotheses: list[str],
    *,
    ground_truth_a: str,
    ground_truth_b: str,
    eval_cfg: EvaluateConfig,
    llm_cfg: LLMConfig,
    seed: int,
) -> dict[str, Any]:
    top = ranked_hypotheses[: eval_cfg.top_k]

    def judge(item: tuple[int, str]) -> JudgeResult:
        rank, hypothesis = item
        messages = build_judge_messages(
            hypothesis, ground_truth_a=ground_truth_a, ground_truth_b=ground_truth_b
        )
        raw = client.complete(messages, temperature=0.0, max_tokens=16, seed=seed)
        return JudgeResult(hypothesis=hypothesis, rank=rank, score=parse_judge_score(raw), raw=raw)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(top)))) as pool:
        results = list(pool.map(judge, enumerate(top, start=1)))
    summary = summarize(results, ks=(1, 5))
    return {
        "ground_truth_a": ground_truth_a,
        "ground_truth_b": ground_truth_b,
        "evaluator": eval_cfg.evaluator,
        **summary,
        "judgements": [
            {"rank": r.rank, "hypothesis": r.hypothesis, "score": r.score, "raw": r.raw}
            for r in results
        ],
    }
