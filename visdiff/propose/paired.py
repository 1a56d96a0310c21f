"""The `paired` proposer: for sets whose images come in pairs (one prompt given to two image
generators, as in the paper's Stable Diffusion study), each round shows the LLM the two captions
of every sampled pair side by side. Rounds come from `rounds.build_rounds(..., paired=True)`,
whose RoundInputs align pair i at position i of ids_a/captions_a and ids_b/captions_b.

Cost: one LLM call per round; two captions per sampled pair."""

from __future__ import annotations

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatClient
from visdiff.propose.prompts import PAIRED, build_paired_messages
from visdiff.propose.proposer import Proposal, RoundInput, answer_rounds


def propose_paired(
    client: ChatClient,
    rounds: list[RoundInput],
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    *,
    seed: int,
    caption_prompt: str | None = None,
) -> list[Proposal]:
    """Every round's proposal, in round order, with the usual provenance (prompt_source names
    the built-in paired prompt; propose.prompt and propose.prompt_file do not apply)."""

    def build(round_input: RoundInput) -> list[dict[str, str]]:
        return build_paired_messages(
            round_input.captions_a,
            round_input.captions_b,
            max_hypotheses=propose_cfg.max_hypotheses_per_round,
            caption_prompt=caption_prompt,
            max_caption_chars=propose_cfg.max_caption_chars,
        )

    return answer_rounds(
        client,
        rounds,
        build,
        PAIRED.source,
        propose_cfg,
        llm_cfg,
        seed=seed,
        caption_prompt=caption_prompt,
    )
