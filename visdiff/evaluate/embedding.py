"""Offline evaluation: cosine similarity of each hypothesis to the ground truth, mapped onto the
judge's 0/1/2 scale so that Acc@k means the same thing as with the LLM judge.

With c_a the cosine to ground_truth_a: score 2 when c_a >= threshold, 1 when c_a >= threshold/2,
else 0; and 0 whenever ground_truth_b is given and the hypothesis is at least as close to it (the
rubric's "as true of B as of A"). That B rule matters: MiniLM puts "dogs playing in a park" and
"cats playing in a park" at cosine ~0.7, so a cosine to A alone cannot tell the directions apart.

The default threshold 0.6 was calibrated with all-MiniLM-L6-v2 on the 150 VisDiffBench pairs
(set1 as ground_truth_a, set2 as ground_truth_b): "photos showing <set1>" scores 2 for all 150
(cosine 0.81-0.91); the bare A-side word of the difference ("Dogs") scores 2 for 61 %, 1 for
37 %; the B-side word and "photos showing <set2>" score 0 for all; another pair's description
scores 0 for 95 % (cosine p90 0.22 < 0.3). The embedding function is passed in: this room loads
no model, and makes no LLM call.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from visdiff.evaluate.evaluator import GroundTruth
from visdiff.evaluate.judge import JudgeResult, summarize

EMBEDDING = "embedding"

EmbedTexts = Callable[[list[str]], np.ndarray]


def similarity_score(cosine: float, threshold: float, cosine_b: float | None = None) -> int:
    """The 0/1/2 score of one hypothesis from its cosine to A (and to B, when given).

    >>> [similarity_score(c, 0.6) for c in (0.75, 0.6, 0.45, 0.3, 0.1)]
    [2, 2, 1, 1, 0]
    >>> similarity_score(0.75, 0.6, cosine_b=0.8), similarity_score(0.75, 0.6, cosine_b=0.7)
    (0, 2)
    """
    if cosine_b is not None and cosine_b >= cosine:
        return 0
    if cosine >= threshold:
        return 2
    if cosine >= threshold / 2:
        return 1
    return 0


def _unit_rows(vectors: np.ndarray, rows: int) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    if vectors.ndim != 2 or vectors.shape[0] != rows:
        raise ValueError(f"the embed function gave shape {vectors.shape}; wanted {rows} rows")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.where(norms > 0, norms, 1.0)


def embedding_metrics(
    hypotheses: list[str],
    truth: GroundTruth,
    embed: EmbedTexts,
    *,
    threshold: float,
    top_k: int,
) -> dict[str, Any]:
    """metrics.json's content for the top `top_k` hypotheses (best first), same shape as the
    LLM judge's: acc@1, acc@5, acc@N, and each hypothesis' cosine and score."""
    top = hypotheses[:top_k]
    scored: list[dict[str, Any]] = []
    if top:
        anchors = [truth.a] if truth.b is None else [truth.a, truth.b]
        vectors = _unit_rows(embed([*anchors, *top]), len(anchors) + len(top))
        cosines = vectors[len(anchors) :] @ vectors[: len(anchors)].T  # (hypotheses, anchors)
        for rank, (hypothesis, row) in enumerate(zip(top, cosines, strict=True), start=1):
            cosine, cosine_b = float(row[0]), (float(row[1]) if truth.b is not None else None)
            score = similarity_score(cosine, threshold, cosine_b)
            scored.append(
                {
                    "rank": rank,
                    "hypothesis": hypothesis,
                    "score": score,
                    "cosine": round(cosine, 4),
                    "cosine_b": None if cosine_b is None else round(cosine_b, 4),
                }
            )
    results = [JudgeResult(s["hypothesis"], s["rank"], s["score"], raw="") for s in scored]
    return {
        "evaluator": EMBEDDING,
        "embedding_threshold": threshold,
        "ground_truth_a": truth.a,
        "ground_truth_b": truth.b,
        "ground_truth_source": truth.source,
        "top_k": top_k,
        **summarize(results, ks=(1, 5)),
        "judgements": scored,
    }
