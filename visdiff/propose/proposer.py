"""LLM proposer: per round, the captions of a seeded sample of each set go into one prompt; the
rounds run concurrently against the chat endpoint; answers are parsed and de-duplicated.
A refinement round (`propose_refinement`) shows the best ranked hypotheses instead; other
proposers that ask per round (propose.paired) reuse `propose` with their own `prompt`.

Every proposal keeps its provenance (round, sampled image ids and their captions, the prompt
sent, the hypotheses it refines) and says whether the answer was cut at the token limit
(`truncated`; its unfinished last line is dropped) and how many captions were cut to
propose.max_caption_chars before they were sent (`captions_cut`)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, NotRequired, TypedDict

from visdiff.config import LLMConfig, ProposeConfig
from visdiff.llm.client import ChatClient
from visdiff.propose.parse import (
    Candidate,
    dedupe_hypotheses,
    drop_cut_off_line,
    parse_hypotheses,
)
from visdiff.propose.prompts import (
    REFINE,
    PromptTemplate,
    RefineItem,
    build_proposer_messages,
    build_refine_messages,
    llm_captions,
    load_prompt,
)

log = logging.getLogger(__name__)

CUT_AT_LIMIT = "length"  # OpenAI's finish_reason for an answer stopped by max_tokens
# Chat messages from one round's captions: (captions_a, captions_b, *, max_hypotheses,
# caption_prompt, max_caption_chars), as `build_proposer_messages` with its template bound.
CaptionsPrompt = Callable[..., list[dict[str, str]]]


class RoundOptions(TypedDict):
    """The keywords of `propose` that every per-round proposer takes."""

    seed: int
    caption_prompt: NotRequired[str | None]


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
    truncated: bool = False  # the answer hit llm.max_tokens; its last line was dropped
    prompt_source: str = ""  # built-in template name or prompt file
    prompt: str = ""  # the user message sent
    captions_a: list[str] = field(default_factory=list)  # as the LLM saw them, aligned with ids_a
    captions_b: list[str] = field(default_factory=list)
    refined_from: list[str] = field(default_factory=list)  # refinement: the hypotheses shown
    captions_cut: int = 0  # captions cut to propose.max_caption_chars in the prompt sent

    def to_dict(self) -> dict:
        return asdict(self)

    def candidates(self) -> list[Candidate]:
        """This round's hypotheses with their provenance, for `merge_near_duplicates`."""
        return [Candidate(h, self.round_index, i) for i, h in enumerate(self.hypotheses)]


def hypotheses_from_answer(
    text: str, finish_reason: str | None, *, max_items: int
) -> tuple[list[str], bool]:
    """(hypotheses, truncated): an answer stopped by the token limit loses its last line."""
    truncated = finish_reason == CUT_AT_LIMIT
    if truncated:
        text = drop_cut_off_line(text)
    return parse_hypotheses(text, max_items=max_items), truncated


def _parse_answer(
    text: str,
    finish_reason: str | None,
    round_index: int,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
) -> tuple[list[str], bool]:
    hypotheses, truncated = hypotheses_from_answer(
        text, finish_reason, max_items=propose_cfg.max_hypotheses_per_round
    )
    if truncated:
        log.warning(
            "round %d: the answer reached llm.max_tokens=%d and was cut; its last line was "
            "dropped (raise llm.max_tokens to keep it)",
            round_index,
            llm_cfg.max_tokens,
        )
    return hypotheses, truncated


def _ask(
    client: ChatClient, messages: list[dict[str, str]], llm_cfg: LLMConfig, seed: int
) -> tuple[str, str | None]:
    """The answer text and why generation stopped ("length": cut at llm.max_tokens)."""
    answer = client.reply(
        messages, temperature=llm_cfg.temperature, max_tokens=llm_cfg.max_tokens, seed=seed
    )
    return answer.text, answer.finish_reason


def answer_round(
    client: ChatClient,
    round_input: RoundInput,
    messages: list[dict[str, str]],
    prompt_source: str,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    seed: int,
    *,
    caption_prompt: str | None = None,
) -> Proposal:
    """Send one round's `messages` (built from `round_input`'s captions) and keep the parsed
    answer with its provenance: the captions as the LLM saw them, the prompt, `prompt_source`."""
    shown_a, cut_a = llm_captions(
        round_input.captions_a, caption_prompt, propose_cfg.max_caption_chars
    )
    shown_b, cut_b = llm_captions(
        round_input.captions_b, caption_prompt, propose_cfg.max_caption_chars
    )
    text, finish_reason = _ask(client, messages, llm_cfg, seed + round_input.round_index)
    hypotheses, truncated = _parse_answer(
        text, finish_reason, round_input.round_index, propose_cfg, llm_cfg
    )
    log.info("round %d: %d hypotheses", round_input.round_index, len(hypotheses))
    return Proposal(
        round_input.round_index,
        text,
        hypotheses,
        round_input.ids_a,
        round_input.ids_b,
        truncated=truncated,
        prompt_source=prompt_source,
        prompt=messages[-1]["content"],
        captions_a=shown_a,
        captions_b=shown_b,
        captions_cut=cut_a + cut_b,
    )


def answer_rounds(
    client: ChatClient,
    rounds: list[RoundInput],
    build_messages: Callable[[RoundInput], list[dict[str, str]]],
    prompt_source: str,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    *,
    seed: int,
    caption_prompt: str | None = None,
) -> list[Proposal]:
    """`answer_round` for every round, concurrently; proposals in round order. Messages are
    built first, so a bad round fails before any request is sent."""
    messages = [build_messages(r) for r in rounds]
    with ThreadPoolExecutor(max_workers=max(1, len(rounds))) as pool:
        return list(
            pool.map(
                lambda r, m: answer_round(
                    client,
                    r,
                    m,
                    prompt_source,
                    propose_cfg,
                    llm_cfg,
                    seed,
                    caption_prompt=caption_prompt,
                ),
                rounds,
                messages,
            )
        )


def _round_messages(
    build: CaptionsPrompt, propose_cfg: ProposeConfig, caption_prompt: str | None
) -> Callable[[RoundInput], list[dict[str, str]]]:
    def messages(round_input: RoundInput) -> list[dict[str, str]]:
        return build(
            round_input.captions_a,
            round_input.captions_b,
            max_hypotheses=propose_cfg.max_hypotheses_per_round,
            caption_prompt=caption_prompt,
            max_caption_chars=propose_cfg.max_caption_chars,
        )

    return messages


def _template_messages(
    template: PromptTemplate, propose_cfg: ProposeConfig, caption_prompt: str | None
) -> Callable[[RoundInput], list[dict[str, str]]]:
    return _round_messages(partial(build_proposer_messages, template), propose_cfg, caption_prompt)


def propose_round(
    client: ChatClient,
    round_input: RoundInput,
    template: PromptTemplate,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    seed: int,
    *,
    caption_prompt: str | None = None,
) -> Proposal:
    messages = _template_messages(template, propose_cfg, caption_prompt)(round_input)
    return answer_round(
        client,
        round_input,
        messages,
        template.source,
        propose_cfg,
        llm_cfg,
        seed,
        caption_prompt=caption_prompt,
    )


def propose(
    client: ChatClient,
    rounds: list[RoundInput],
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    *,
    seed: int,
    caption_prompt: str | None = None,
    prompt: tuple[CaptionsPrompt, str] | None = None,
) -> tuple[list[Proposal], list[str]]:
    """Returns every round's proposal (in round order) and the merged, de-duplicated list.

    `caption_prompt`: the captioner's prompt, removed where a caption starts with it.
    `prompt`: (messages builder, its prompt_source) for a proposer with its own built-in prompt;
    None: propose.prompt / propose.prompt_file's template."""
    if prompt is None:
        template = load_prompt(propose_cfg)
        prompt = (partial(build_proposer_messages, template), template.source)
    build, source = prompt
    proposals = answer_rounds(
        client,
        rounds,
        _round_messages(build, propose_cfg, caption_prompt),
        source,
        propose_cfg,
        llm_cfg,
        seed=seed,
        caption_prompt=caption_prompt,
    )
    merged = dedupe_hypotheses(h for p in proposals for h in p.hypotheses)
    return proposals, merged


def propose_refinement(
    client: ChatClient,
    items: list[RefineItem],
    round_index: int,
    propose_cfg: ProposeConfig,
    llm_cfg: LLMConfig,
    seed: int,
    *,
    missed: tuple[list[str], list[str]] = ([], []),
    caption_prompt: str | None = None,
) -> Proposal:
    """One refinement round: the LLM sees `items` (best hypotheses, their AUROCs, captions of A
    images they miss) and proposes sharper ones. `missed`: (ids, captions) of those images."""
    max_chars = propose_cfg.max_caption_chars
    messages = build_refine_messages(
        items,
        max_hypotheses=propose_cfg.max_hypotheses_per_round,
        caption_prompt=caption_prompt,
        max_caption_chars=max_chars,
    )
    _, cut = llm_captions([c for i in items for c in i.misses], caption_prompt, max_chars)
    text, finish_reason = _ask(client, messages, llm_cfg, seed + round_index)
    hypotheses, truncated = _parse_answer(text, finish_reason, round_index, propose_cfg, llm_cfg)
    log.info("refinement round %d: %d hypotheses", round_index, len(hypotheses))
    ids, captions = missed
    shown, _ = llm_captions(captions, caption_prompt, max_chars)
    return Proposal(
        round_index,
        text,
        hypotheses,
        list(ids),
        truncated=truncated,
        prompt_source=REFINE.source,
        prompt=messages[-1]["content"],
        captions_a=shown,
        refined_from=[i.hypothesis for i in items],
        captions_cut=cut,
    )


def proposal_rows(
    proposals: list[Proposal], merged_into: dict[tuple[int, int], str] | None = None
) -> Iterator[dict[str, Any]]:
    """hypotheses.jsonl: one row per parsed hypothesis with its provenance; a round whose answer
    parsed to nothing still gets a row (hypothesis null) so that its raw text is kept.
    `merged_into`: (round, index) -> the kept spelling a near-duplicate was merged into (null
    for a hypothesis that was kept, i.e. ranked under its own spelling)."""
    merged_into = merged_into or {}
    for p in proposals:
        provenance = {
            "truncated": p.truncated,
            "ids_a": p.ids_a,
            "ids_b": p.ids_b,
            "captions_a": p.captions_a,
            "captions_b": p.captions_b,
            "prompt_source": p.prompt_source,
            "prompt": p.prompt,
            "refined_from": p.refined_from,
            "captions_cut": p.captions_cut,
        }
        items: list[tuple[int | None, str | None]] = list(enumerate(p.hypotheses))
        for index, hypothesis in items or [(None, None)]:
            yield {
                "round": p.round_index,
                "index": index,
                "hypothesis": hypothesis,
                "merged_into": merged_into.get((p.round_index, index))
                if index is not None
                else None,
                "raw_text": p.raw_text,
                **provenance,
            }
