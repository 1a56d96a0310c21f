"""evaluate.evaluator variants: what scores a run's ranked hypotheses against the ground truth.

Each is registered under the name users write; describe calls
`EVALUATORS.get(name)().evaluate(ctx, ranked_a)` and writes what it returns to metrics.json.

  none       nothing (no metrics.json).
  llm_judge  the paper's 0/1/2 rubric, judged by evaluate.llm: the proposer's client when
             evaluate.llm names the same LLM (recorded as shared), else its own client (an
             external URL, or its own Serve app, stopped after unless keep_running). top_k calls.
  embedding  cosine of each hypothesis to the ground truth with sentence.model; no LLM call.
"""

from __future__ import annotations

import functools
import logging
import threading
from contextlib import nullcontext
from typing import Any, Protocol

import numpy as np

from visdiff.config import SentenceConfig, judge_shares_llm
from visdiff.evaluate.embedding import embedding_metrics
from visdiff.evaluate.evaluator import (
    judge_hypotheses,
    require_ground_truth,
    served_model,
)
from visdiff.llm.client import usage_of
from visdiff.pipeline.context import RunContext
from visdiff.pipeline.llm_session import open_llm
from visdiff.registry import Registry

log = logging.getLogger(__name__)


class Evaluator(Protocol):
    def evaluate(self, ctx: RunContext, ranked_a: list[dict[str, Any]]) -> dict[str, Any] | None:
        """metrics.json's content for the ranked rows of direction "a" (best first), or None."""
        ...


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluate.evaluator")


def _hypotheses(ranked_a: list[dict[str, Any]]) -> list[str]:
    return [row["hypothesis"] for row in ranked_a]


@EVALUATORS.register("none")
class NoEvaluator:
    def evaluate(self, ctx: RunContext, ranked_a: list[dict[str, Any]]) -> dict[str, Any] | None:
        return None


@EVALUATORS.register("llm_judge")
class LLMJudge:
    def evaluate(self, ctx: RunContext, ranked_a: list[dict[str, Any]]) -> dict[str, Any] | None:
        ev, config = ctx.config.evaluate, ctx.config
        truth = require_ground_truth(ev)
        hypotheses = _hypotheses(ranked_a)
        model = served_model(ev.llm)
        shared = judge_shares_llm(config) and ctx.client is not None
        where = "the proposer's LLM" if shared else "evaluate.llm.*"
        ctx.say(f"judging the top {ev.top_k} hypotheses with {model} ({where})")
        with nullcontext(ctx.client) if shared else open_llm(ev.llm) as judge:
            metrics = judge_hypotheses(
                judge, hypotheses, truth, top_k=ev.top_k, seed=config.seed, judge_model=model
            )
            if shared:  # its calls are in the run's llm_usage
                return {**metrics, "judge_client": "shared with the proposer (llm.*)"}
            usage = usage_of(judge)  # not in the run's client's count: reported here
        return {
            **metrics,
            "judge_client": f"own ({ev.llm.backend}, evaluate.llm.*)",
            "judge_usage": usage,
        }


_ENCODE_LOCK = threading.Lock()  # bench pairs evaluate from several threads; one model each


@functools.lru_cache(maxsize=2)
def _sentence_model(model: str, batch_size: int) -> Any:
    from visdiff.models.sentence import load_sentence_model

    return load_sentence_model(SentenceConfig(model=model, batch_size=batch_size))


def sentence_embedder(cfg: SentenceConfig) -> Any:
    """texts -> unit vectors with sentence.model (loaded once per process)."""

    def embed(texts: list[str]) -> np.ndarray:
        with _ENCODE_LOCK:
            return _sentence_model(cfg.model, cfg.batch_size).encode(texts)

    return embed


@EVALUATORS.register("embedding")
class EmbeddingEvaluator:
    def evaluate(self, ctx: RunContext, ranked_a: list[dict[str, Any]]) -> dict[str, Any] | None:
        ev, config = ctx.config.evaluate, ctx.config
        truth = require_ground_truth(ev)
        ctx.say(
            f"scoring the top {ev.top_k} hypotheses by similarity to the ground truth "
            f"({config.sentence.model}, evaluate.embedding_threshold={ev.embedding_threshold})"
        )
        metrics = embedding_metrics(
            _hypotheses(ranked_a),
            truth,
            sentence_embedder(config.sentence),
            threshold=ev.embedding_threshold,
            top_k=ev.top_k,
        )
        return {**metrics, "embedding_model": config.sentence.model}
