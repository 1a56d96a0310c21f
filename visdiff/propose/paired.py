"""The `paired` proposer: for sets whose images come in pairs (one prompt given to two image
generators, as in the paper's Stable Diffusion study), each round shows the LLM the two captions
of every sampled pair side by side. Rounds come from `rounds.build_rounds(..., paired=True)`,
whose RoundInputs align pair i at position i of ids_a/captions_a and ids_b/captions_b.

Cost: one LLM call per round; two captions per sampled pair."""

from __future__ import annotations

from typing import Unpack

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatClient
from visdiff.propose.prompts import PAIRED, build_paired_messages
from visdiff.propose.proposer import Proposal, RoundInput, RoundOptions, propose


def propose_paired(
    client: ChatClient,
    rounds: list[RoundInput],
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    **options: Unpack[RoundOptions],
) -> list[Proposal]:
    """Every round's proposal, in round order, with the usual provenance (prompt_source names
    the built-in paired prompt; propose.prompt and propose.prompt_file do not apply).
    `options`: `propose`'s seed and caption_prompt."""
    proposals, _ = propose(
        client,
        rounds,
        propose_cfg,
        llm_cfg,
        prompt=(build_paired_messages, PAIRED.source),
        **options,
    )
    return proposals
