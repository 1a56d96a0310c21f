"""LLM-judge evaluation of the ranked list against the ground-truth difference (Acc@k).

Evaluation needs a ground truth the user gave: `evaluate.ground_truth_a/b`, or a manifest's group
names (`data.group_a/b`, VisDiffBench style). Folder and shard names are paths, not descriptions:
without a ground truth the judge does not run and the log says why. The judge may be another
LLM than the proposer (`evaluate.llm_*`); unset, it reuses the proposer's client.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from visdiff.config import DataConfig, EvaluateConfig, LLMConfig
from visdiff.errors import ConfigError
from visdiff.evaluate.judge import JudgeResult, build_judge_messages, parse_judge_score, summarize
from visdiff.llm.client import ChatClient, HTTPChatClient

log = logging.getLogger(__name__)

EVALUATOR = "llm_judge"
JUDGE_MAX_TOKENS = 16  # the judge answers one digit; a little room for "Score: 2"


@dataclass(frozen=True)
class GroundTruth:
    a: str  # what set A shows
    b: str  # what set B shows
    source: str  # the config keys it came from


def ground_truth_for(eval_cfg: EvaluateConfig, data_cfg: DataConfig) -> GroundTruth | None:
    """The ground truth the user gave, or None (folders / shards without evaluate.ground_truth_*)."""
    given_a, given_b = eval_cfg.ground_truth_a, eval_cfg.ground_truth_b
    if bool(given_a) != bool(given_b):
        raise ConfigError(
            "config keys 'evaluate.ground_truth_a' and 'evaluate.ground_truth_b' go together: "
            "give both (what set A shows, what set B shows) or neither"
        )
    if given_a and given_b:
        return GroundTruth(given_a, given_b, "evaluate.ground_truth_a/b")
    if data_cfg.manifest and data_cfg.group_a and data_cfg.group_b:
        return GroundTruth(data_cfg.group_a, data_cfg.group_b, "data.group_a/b (manifest groups)")
    return None


@dataclass(frozen=True)
class JudgeEndpoint:
    base_url: str
    model: str
    api_key_env: str


def judge_endpoint(eval_cfg: EvaluateConfig, llm_cfg: LLMConfig) -> JudgeEndpoint | None:
    """Where the judge runs when it is not the proposer's client (None: reuse that client)."""
    if not (eval_cfg.llm_base_url or eval_cfg.llm_model or eval_cfg.llm_api_key_env):
        return None
    external = llm_cfg.base_url if llm_cfg.backend == "external" else None
    base_url = eval_cfg.llm_base_url or external
    if not base_url:
        raise ConfigError(
            "config keys 'evaluate.llm_model' / 'evaluate.llm_api_key_env' need "
            "'evaluate.llm_base_url' with llm.backend=serve (the Serve app answers to one "
            "model); set evaluate.llm_base_url to the judge's OpenAI-compatible /v1 URL"
        )
    model = eval_cfg.llm_model or llm_cfg.external_model or llm_cfg.served_model_name
    return JudgeEndpoint(base_url, model, eval_cfg.llm_api_key_env or llm_cfg.api_key_env)


def _proposer_model(llm_cfg: LLMConfig) -> str:
    if llm_cfg.backend == "external":
        return llm_cfg.external_model or llm_cfg.served_model_name
    return llm_cfg.model


@contextmanager
def open_judge(
    eval_cfg: EvaluateConfig, llm_cfg: LLMConfig, proposer: ChatClient
) -> Iterator[tuple[ChatClient, str]]:
    """(judge client, judge model name): its own endpoint when configured, else `proposer`."""
    endpoint = judge_endpoint(eval_cfg, llm_cfg)
    if endpoint is None:
        yield proposer, _proposer_model(llm_cfg)
        return
    client = HTTPChatClient.from_env(
        endpoint.base_url,
        endpoint.model,
        endpoint.api_key_env,
        timeout_s=llm_cfg.timeout_s,
        max_answer_bytes=llm_cfg.max_answer_bytes,
    )
    try:
        yield client, endpoint.model
    finally:
        client.close()


def evaluate_ranked(
    client: ChatClient,
    ranked_hypotheses: list[str],
    *,
    ground_truth: GroundTruth,
    top_k: int,
    seed: int,
) -> dict[str, Any]:
    """Judge the top `top_k` hypotheses with `client`; Acc@1, Acc@5 and Acc@N over them."""
    top = ranked_hypotheses[:top_k]

    def judge(item: tuple[int, str]) -> JudgeResult:
        rank, hypothesis = item
        messages = build_judge_messages(
            hypothesis, ground_truth_a=ground_truth.a, ground_truth_b=ground_truth.b
        )
        raw = client.reply(messages, temperature=0.0, max_tokens=JUDGE_MAX_TOKENS, seed=seed).text
        return JudgeResult(hypothesis=hypothesis, rank=rank, score=parse_judge_score(raw), raw=raw)

    with ThreadPoolExecutor(max_workers=max(1, min(8, len(top)))) as pool:
        results = list(pool.map(judge, enumerate(top, start=1)))
    summary = summarize(results, ks=(1, 5))
    return {
        "ground_truth_a": ground_truth.a,
        "ground_truth_b": ground_truth.b,
        "ground_truth_source": ground_truth.source,
        "evaluator": EVALUATOR,
        **summary,
        "judgements": [
            {"rank": r.rank, "hypothesis": r.hypothesis, "score": r.score, "raw": r.raw}
            for r in results
        ],
    }


def evaluate_run(
    proposer: ChatClient,
    ranked_hypotheses: list[str],
    *,
    eval_cfg: EvaluateConfig,
    data_cfg: DataConfig,
    llm_cfg: LLMConfig,
    seed: int,
) -> dict[str, Any] | None:
    """metrics.json's content, or None (logged) when the user gave no ground truth."""
    truth = ground_truth_for(eval_cfg, data_cfg)
    if truth is None:
        log.warning(
            "evaluate.enabled is set but no ground truth was given, so the judge does not run "
            "and there is no metrics.json (folder and shard names are not descriptions); set "
            "evaluate.ground_truth_a and evaluate.ground_truth_b to evaluate"
        )
        return None
    with open_judge(eval_cfg, llm_cfg, proposer) as (judge, model):
        log.info(
            "judging the top %d hypotheses with %s against the ground truth from %s",
            eval_cfg.top_k,
            model,
            truth.source,
        )
        metrics = evaluate_ranked(
            judge, ranked_hypotheses, ground_truth=truth, top_k=eval_cfg.top_k, seed=seed
        )
    return {**metrics, "judge_model": model}
