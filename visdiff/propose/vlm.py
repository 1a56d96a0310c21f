"""VLM proposer (propose.proposer=vlm): a vision-language model looks at one image grid per set
and names differences, with no captions in between (the paper's GPT-4V / LLaVA-1.5 design).

One request per round: the two grids (set A first) and one text part asking for short
concepts more true of set A, one per line, in the bulleted form the LLM proposer's parser reads,
so that parsing, cut-off handling and provenance are the LLM proposer's own.
"""

from __future__ import annotations

import logging

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatClient
from visdiff.llm.protocol import image_part, text_part
from visdiff.propose.proposer import Proposal, _ask, _parse_answer

log = logging.getLogger(__name__)

PROMPT_SOURCE = "vlm"

VLM_PROMPT = """\
The first image is a grid of {count_a} photos from set A; the second image is a grid of \
{count_b} photos from set B. Each cell of a grid is a separate photo.

I want to learn what sets the photos of set A apart from the photos of set B. Name up to \
{num_hypotheses} distinct concepts that are true more often of the photos in set A than of \
the photos in set B.

Each concept will be checked against single photos, one at a time, so write it the way you \
would caption a photo: a short noun phrase naming something you can see, such as "a dog on a \
beach", "a street at night", "food seen from above" or "a blurry photo".

Rules:
- Describe what the photos show, not the grids: "many small images" or "the left column" are \
wrong.
- One concept per line; never join several concepts into one.
- Do not open with "presence of", "more", "images of" or "photos showing": name the content \
itself.
- Do not list examples or alternatives in parentheses or after "like" or "such as".

Answer with a bulleted list: start every line with "* ", put one concept per line and add no \
numbering, explanations or other text."""


def vlm_prompt(count_a: int, count_b: int, num_hypotheses: int) -> str:
    """The text part of a VLM proposer request."""
    return VLM_PROMPT.format(count_a=count_a, count_b=count_b, num_hypotheses=num_hypotheses)


def vlm_messages(grid_a: bytes, grid_b: bytes, prompt: str) -> list[dict]:
    """One user message: grid A, grid B, then the question (OpenAI content parts)."""
    return [
        {
            "role": "user",
            "content": [image_part(grid_a), image_part(grid_b), text_part(prompt)],
        }
    ]


def propose_vlm_round(
    client: ChatClient,
    round_index: int,
    grid_a: bytes,
    grid_b: bytes,
    *,
    ids_a: list[str],
    ids_b: list[str],
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    seed: int,
) -> Proposal:
    """One round: the grids of the round's samples (ids_a / ids_b: the images they show, in
    order) to the VLM, its answer parsed into hypotheses. Seeded like the LLM proposer's rounds
    (seed + round_index), so a rerun asks the same question with the same seed."""
    prompt = vlm_prompt(len(ids_a), len(ids_b), propose_cfg.max_hypotheses_per_round)
    messages = vlm_messages(grid_a, grid_b, prompt)
    text, finish_reason = _ask(client, messages, llm_cfg, seed + round_index)  # type: ignore[arg-type]
    hypotheses, truncated = _parse_answer(text, finish_reason, round_index, propose_cfg, llm_cfg)
    log.info("vlm round %d: %d hypotheses", round_index, len(hypotheses))
    return Proposal(
        round_index,
        text,
        hypotheses,
        list(ids_a),
        list(ids_b),
        truncated=truncated,
        prompt_source=PROMPT_SOURCE,
        prompt=prompt,
    )
