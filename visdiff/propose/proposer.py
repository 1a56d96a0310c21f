"""LLM proposer: per round, the captions of a seeded sample of each set go into one prompt; the
rounds run concurrently against the chat endpoint; answers are parsed and de-duplicated."""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatClient
from visdiff.propose.parse import dedupe_hypotheses, parse_hypotheses
from visdiff.propose.prompts import build_proposer_messages

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoundInput:
    round_index: int
    ids_a: list[str]
    ids_b: list[str]
    captions_a: list[str]
    captions_b: list[str]


@dataclass
class Proposal:
    round_index: int
    raw_text: str
    hypotheses: list[str]
    ids_a: list[str] = field(default_factory=list)
    ids_b: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def propose_round(
    client: ChatClient,
    round_input: RoundInput,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    seed: int,
) -> Proposal:
    messages = build_proposer_messages(
        propose_cfg.prompt,
        round_input.captions_a,
        round_input.captions_b,
        max_hypotheses=propose_cfg.max_hypotheses_per_round,
    )
    text = client.complete(
        messages,
        temperature=llm_cfg.temperature,
        max_tokens=llm_cfg.max_tokens,
        seed=seed + round_input.round_index,
    )
    hypotheses = parse_hypotheses(text, max_items=propose_cfg.max_hypotheses_per_round)
    log.info("round %d: %d hypotheses", round_input.round_index, len(hypotheses))
    return Proposal(round_input.round_index, text, hypotheses, round_input.ids_a, round_input.ids_b)


def propose(
    client: ChatClient,
    rounds: list[RoundInput],
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    *,
    seed: int,
) -> tuple[list[Proposal], list[str]]:
    """Returns every round's proposal (in round order) and the merged, de-duplicated list."""
    with ThreadPoolExecutor(max_workers=max(1, len(rounds))) as pool:
        proposals = list(
            pool.map(lambda r: propose_round(client, r, propose_cfg, llm_cfg, seed), rounds)
        )
    merged = dedupe_hypotheses(h for p in proposals for h in p.hypotheses)
    return proposals, merged
