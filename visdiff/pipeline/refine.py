"""Iterative refinement (`propose.refine_rounds` > 0, needs an LLM): after ranking, the LLM sees
the `propose.refine_top_k` best hypotheses more true of A with their AUROCs and captions of the
A images each matches worst, and proposes sharper ones. They are embedded, merged into the pool
and the whole pool is ranked again by the run's own rank path (`RankFn`), so that q-values count
every hypothesis tried. The loop stops after N rounds, when a round adds no new hypothesis, or
when the best AUROC of a round's ranking is no better than the one before."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import DescribeConfig
from visdiff.llm.client import ChatClient
from visdiff.propose.pool import EmbedFn, HypothesisPool
from visdiff.propose.prompts import RefineItem
from visdiff.propose.proposer import propose_refinement
from visdiff.propose.rounds import CaptionFn
from visdiff.report.evidence import EvidenceImage, EvidencePartial

log = logging.getLogger(__name__)


@dataclass
class Ranking:
    """One pass of the rank path over a pool's hypotheses (same order)."""

    ranked: list[dict[str, Any]]  # ranked_rows: both directions, best first within each
    evidence: EvidencePartial  # folded best/worst picks and score counts
    scored: Any  # the score aggregation's result (visdiff.rank.aggregate), for stats.json


RankFn = Callable[[HypothesisPool], Ranking]


def best_auroc(ranked: list[dict[str, Any]]) -> float:
    """The top AUROC among the hypotheses more true of A (-inf when there is none)."""
    return max((r["auroc"] for r in ranked if r["direction"] == "a"), default=-np.inf)


class MissCaptions:
    """Captions of the images a hypothesis misses: known ones (the proposer's samples, the
    input's own) first, the rest captioned by the run's captioner, each image once per run."""

    def __init__(self, known: dict[str, str], caption: CaptionFn) -> None:
        self._known = dict(known)
        self._caption = caption

    def __call__(self, images: list[EvidenceImage]) -> dict[str, str]:
        wanted = {i.id: i.uri for i in images if i.id not in self._known}
        if wanted:
            rows = [{schema.ID: i, schema.URI: uri} for i, uri in wanted.items()]
            for image_id, (text, error) in self._caption(rows).items():
                if text and not error:
                    self._known[image_id] = text
        return {i.id: self._known[i.id] for i in images if i.id in self._known}


def _items(
    ranking: Ranking, hypotheses: list[str], top_k: int, captions: MissCaptions
) -> tuple[list[RefineItem], list[str], list[str]]:
    """The refine prompt's items, and the ids and captions of the A images shown (each once)."""
    top = [r for r in ranking.ranked if r["direction"] == "a"][:top_k]
    picks = ranking.evidence.finalize(list(hypotheses)).by_hypothesis()
    misses = {r["hypothesis"]: picks[r["hypothesis"]].picks.get("bottom_a", []) for r in top}
    known = captions([i for images in misses.values() for i in images])
    items = [
        RefineItem(
            r["hypothesis"],
            float(r["auroc"]),
            [known[i.id] for i in misses[r["hypothesis"]] if i.id in known],
        )
        for r in top
    ]
    shown = list(dict.fromkeys(i.id for images in misses.values() for i in images if i.id in known))
    return items, shown, [known[i] for i in shown]


def refine(
    client: ChatClient,
    pool: HypothesisPool,
    ranking: Ranking,
    *,
    config: DescribeConfig,
    embed: EmbedFn,
    rank: RankFn,
    captions: MissCaptions,
    say: Callable[[str], None] = log.info,
) -> tuple[HypothesisPool, Ranking]:
    """Up to `propose.refine_rounds` rounds, numbered after the pool's last round; returns the
    grown pool and its latest ranking (every hypothesis proposed, refined ones included)."""
    cfg = config.propose
    first = 1 + max(p.round_index for p in pool.proposals)
    for round_index in range(first, first + cfg.refine_rounds):
        before = best_auroc(ranking.ranked)
        items, ids, shown = _items(ranking, pool.hypotheses, cfg.refine_top_k, captions)
        say(f"refinement round {round_index}: sharpening the top {len(items)} hypotheses")
        proposal = propose_refinement(
            client,
            items,
            round_index,
            cfg,
            config.llm,
            config.seed,
            missed=(ids, shown),
            caption_prompt=config.captioner.prompt or None,
        )
        grown = pool.extend([proposal], embed)
        added = len(grown.merged) - len(pool.merged)
        pool = grown
        if not added:
            say(f"refinement round {round_index} proposed nothing new; stopping")
            break
        ranking = rank(pool)
        after = best_auroc(ranking.ranked)
        say(f"refinement round {round_index}: {added} new; best AUROC {before:.3f} -> {after:.3f}")
        if after <= before:
            say("the best AUROC stopped improving; refinement stops")
            break
    return pool, ranking
