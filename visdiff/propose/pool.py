"""The run's hypotheses: every proposal so far, one text embedding per proposed candidate, and
the candidates merged into distinct hypotheses (`merge_near_duplicates`, first spelling kept).

Each candidate is embedded once, by the run's text embedder (the same vectors rank it), so a
refinement round only embeds its own answer and the merge is redone over all candidates: older
groups keep their first spelling, and a new paraphrase joins the group it repeats."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff.propose.parse import Candidate, MergedHypothesis, merge_near_duplicates
from visdiff.propose.proposer import Proposal, proposal_rows

EmbedFn = Callable[[list[str]], np.ndarray]  # texts -> (len(texts), D) text embeddings


def _candidates(proposals: list[Proposal]) -> list[Candidate]:
    return [c for p in proposals for c in p.candidates()]


def _embed(embed: EmbedFn, candidates: list[Candidate]) -> np.ndarray | None:
    """None for no candidate: an embedder is never called with an empty list."""
    return np.asarray(embed([c.text for c in candidates])) if candidates else None


@dataclass(frozen=True)
class HypothesisPool:
    proposals: list[Proposal]
    candidate_embeddings: np.ndarray | None  # one row per candidate, in proposal order
    merged: list[MergedHypothesis]
    threshold: float  # propose.merge_similarity

    @classmethod
    def build(
        cls, proposals: list[Proposal], embed: EmbedFn, *, threshold: float
    ) -> HypothesisPool:
        return cls._merged(proposals, _embed(embed, _candidates(proposals)), threshold)

    def extend(self, proposals: list[Proposal], embed: EmbedFn) -> HypothesisPool:
        """This pool plus `proposals`; only their candidates are embedded."""
        fresh = _embed(embed, _candidates(proposals))
        parts = [e for e in (self.candidate_embeddings, fresh) if e is not None]
        vectors = np.concatenate(parts) if parts else None
        return self._merged(self.proposals + proposals, vectors, self.threshold)

    @classmethod
    def _merged(
        cls, proposals: list[Proposal], vectors: np.ndarray | None, threshold: float
    ) -> HypothesisPool:
        candidates = _candidates(proposals)
        merged = (
            merge_near_duplicates(candidates, vectors, threshold=threshold)
            if vectors is not None
            else []
        )
        return cls(proposals, vectors, merged, threshold)

    @property
    def hypotheses(self) -> list[str]:
        """The distinct hypotheses, each once, in the order first proposed."""
        return [m.text for m in self.merged]

    @property
    def embeddings(self) -> np.ndarray:
        """(len(hypotheses), D): each hypothesis's embedding, that of its kept spelling."""
        assert self.candidate_embeddings is not None, "no hypothesis in the pool"
        row = {(c.round_index, c.position): i for i, c in enumerate(_candidates(self.proposals))}
        kept = [row[(m.sources[0].round_index, m.sources[0].position)] for m in self.merged]
        return self.candidate_embeddings[kept]

    def shown_ids(self) -> set[str]:
        """Ids of every image whose caption a proposal's prompt showed (rank.holdout)."""
        return {i for p in self.proposals for i in (*p.ids_a, *p.ids_b)}

    def merged_into(self) -> dict[tuple[int, int], str]:
        """(round, index) -> kept spelling, for every candidate merged into another one."""
        return {(c.round_index, c.position): m.text for m in self.merged for c in m.sources[1:]}

    def rows(self) -> Iterator[dict[str, Any]]:
        """hypotheses.jsonl: every proposal's rows, merged candidates marked `merged_into`."""
        return proposal_rows(self.proposals, self.merged_into())
