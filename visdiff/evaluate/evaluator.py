"""Ground truth and the LLM judge's metrics (Acc@k) for one run's ranked hypotheses.

Evaluation needs a ground truth the user gave, in `evaluate.ground_truth_a` (and optionally
`_b`), or a bench suite's pair: folder, shard or group names are never read as descriptions.
Which client judges (the proposer's, or the judge's own `evaluate.llm`) is decided by the
pipeline (`pipeline/evaluators.py`); this module only scores with the client it is given and
records which model that was.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from visdiff.config import EvaluateConfig, LLMConfig
from visdiff.errors import ConfigError
from visdiff.evaluate.judge import JudgeResult, build_judge_messages, parse_judge_score, summarize
from visdiff.llm.client import ChatClient

LLM_JUDGE = "llm_judge"
JUDGE_MAX_TOKENS = 16  # the judge answers one digit; a little room for "Score: 2"
JUDGE_THREADS = 8  # judgements in flight at once


@dataclass(frozen=True)
class GroundTruth:
    a: str  # what is more true of set A
    b: str | None = None  # what is more true of set B (optional)
    source: str = "evaluate.ground_truth_a/b"  # where it came from


def ground_truth_for(eval_cfg: EvaluateConfig) -> GroundTruth | None:
    """The ground truth the user gave (evaluate.ground_truth_a[/b]), or None."""
    if eval_cfg.ground_truth_b and not eval_cfg.ground_truth_a:
        raise ConfigError(
            "config key 'evaluate.ground_truth_b' is set without 'evaluate.ground_truth_a': "
            "set evaluate.ground_truth_a (what is more true of set A)"
        )
    if not eval_cfg.ground_truth_a:
        return None
    return GroundTruth(eval_cfg.ground_truth_a, eval_cfg.ground_truth_b or None)


def require_ground_truth(eval_cfg: EvaluateConfig) -> GroundTruth:
    """The ground truth, or a ConfigError naming the key (config validation says it first)."""
    truth = ground_truth_for(eval_cfg)
    if truth is None:
        raise ConfigError(
            f"evaluate.evaluator={eval_cfg.evaluator} needs the ground truth: set "
            "evaluate.ground_truth_a (what is more true of set A), or evaluate.evaluator=none"
        )
    return truth


def served_model(cfg: LLMConfig) -> str:
    """The model an LLM config's client talks to, as recorded in metrics.json."""
    if cfg.backend == "external":
        return cfg.external_model or cfg.served_model_name
    return cfg.model


def judge_hypotheses(
    client: ChatClient,
    hypotheses: list[str],
    truth: GroundTruth,
    *,
    top_k: int,
    seed: int,
    judge_model: str,
) -> dict[str, Any]:
    """metrics.json's content: the top `top_k` hypotheses (best first) scored 0/1/2 by `client`
    with the paper's rubric; Acc@1, Acc@5 and Acc@N over them. `top_k` LLM calls."""
    top = hypotheses[:top_k]

    def judge(item: tuple[int, str]) -> JudgeResult:
        rank, hypothesis = item
        messages = build_judge_messages(
            hypothesis, ground_truth_a=truth.a, ground_truth_b=truth.b or ""
        )
        raw = client.reply(messages, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, seed=seed).text
        return JudgeResult(hypothesis=hypothesis, rank=rank, score=parse_judge_score(raw), raw=raw)

    with ThreadPoolExecutor(max_workers=max(1, min(JUDGE_THREADS, len(top)))) as pool:
        results = list(pool.map(judge, enumerate(top, start=1)))
    return {
        "evaluator": LLM_JUDGE,
        "judge_model": judge_model,
        "ground_truth_a": truth.a,
        "ground_truth_b": truth.b,
        "ground_truth_source": truth.source,
        "top_k": top_k,
        **summarize(results, ks=(1, 5)),
        "judgements": [
            {"rank": r.rank, "hypothesis": r.hypothesis, "score": r.score, "raw": r.raw}
            for r in results
        ],
    }
