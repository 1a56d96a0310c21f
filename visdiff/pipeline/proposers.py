"""Proposers (`propose.proposer`), registered by name. Every proposer gets the same seeded
per-round samples (`propose.rounds.build_rounds`) and returns one `Proposal` per round, with the
ids it saw (rank.holdout leaves those images out of the significance figures).

- llm: the captions of each round's samples to the LLM (the paper's default).
- paired: pairs of images (same prompt, two generators): the LLM sees each pair's captions
  side by side.
- vlm: a grid of each set's sampled images to a vision-language model (no captions).
- feature: the difference of the sets' mean image features, decoded to text by the captioner's
  language model (no LLM, no captions).
- keyphrase: phrases that separate the sets' captions (no model at all; the offline mode).
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from visdiff import schema
from visdiff.errors import InputError
from visdiff.pipeline.context import RunContext
from visdiff.propose.proposer import Proposal, RoundInput
from visdiff.propose.rounds import CaptionedRounds
from visdiff.registry import Registry


class Proposer(ABC):
    needs_captions = True  # the rounds carry captions of their samples
    paired = False  # each round samples pairs (ids_a[i] pairs with ids_b[i])
    needs_llm = True  # refinement rounds need an LLM too

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx

    @abstractmethod
    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        """One proposal per round, in round order."""


log = logging.getLogger(__name__)

PROPOSERS: Registry[type[Proposer]] = Registry("propose.proposer")


class _CaptionsToLLM(Proposer):
    """Rounds of captions to the run's LLM, through one of propose/'s round functions."""

    def _ask(self, rounds: CaptionedRounds, propose_rounds: Any) -> list[Proposal]:
        ctx = self.ctx
        assert ctx.client is not None
        return propose_rounds(
            ctx.client,
            rounds.rounds,
            ctx.config.propose,
            ctx.config.llm,
            seed=ctx.config.seed,
            caption_prompt=ctx.config.captioner.prompt or None,
        )


@PROPOSERS.register("llm")
class LLMProposer(_CaptionsToLLM):
    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        from visdiff.propose.proposer import propose

        return self._ask(rounds, lambda *args, **kwargs: propose(*args, **kwargs)[0])


@PROPOSERS.register("paired")
class PairedProposer(_CaptionsToLLM):
    paired = True

    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        from visdiff.propose.paired import propose_paired

        return self._ask(rounds, propose_paired)


@PROPOSERS.register("keyphrase")
class KeyphraseProposer(Proposer):
    needs_llm = False

    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        from visdiff.propose.keyphrase import propose_keyphrases

        proposals, _ = propose_keyphrases(rounds.rounds, self.ctx.config.propose)
        return proposals


def sampled_bytes(rounds: CaptionedRounds, ids: list[str]) -> tuple[list[str], list[bytes]]:
    """The ids and encoded bytes of the sampled images that can be read (shard rows carry their
    bytes; listed ones are read). One that cannot is logged and left out."""
    from visdiff.stages.images import load_bytes

    rows = [rounds.rows[i] for i in ids]
    batch = {
        schema.URI: [r[schema.URI] for r in rows],
        schema.IMAGE_BYTES: [r.get(schema.IMAGE_BYTES, b"") for r in rows],
        schema.ERROR: ["" for _ in rows],
    }
    datas, errors = load_bytes(batch)
    for error in filter(None, errors):
        log.warning("proposer sample skipped: %s", error)
    kept = [(i, d) for i, d in zip(ids, datas, strict=True) if d]
    return [i for i, _ in kept], [d for _, d in kept]


def _per_round(rounds: list[RoundInput], ask: Any) -> list[Proposal]:
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(rounds)))) as pool:
        return list(pool.map(ask, rounds))


@PROPOSERS.register("vlm")
class VLMProposer(Proposer):
    needs_captions = False

    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        from visdiff.propose.vlm import propose_vlm_round
        from visdiff.stages.grid import image_grid_members

        ctx, cfg = self.ctx, self.ctx.config
        assert ctx.client is not None
        client = ctx.client

        def grid(ids: list[str]) -> tuple[bytes, list[str]]:
            """A set's grid and the ids of exactly the images in it (rank.holdout uses them)."""
            readable, datas = sampled_bytes(rounds, ids)
            jpeg, used = image_grid_members(
                datas, cell_px=cfg.propose.grid_cell_px, max_images=cfg.propose.grid_images
            )
            return jpeg, [readable[i] for i in used]

        def ask(r: RoundInput) -> Proposal:
            (grid_a, shown_a), (grid_b, shown_b) = grid(r.ids_a), grid(r.ids_b)
            return propose_vlm_round(
                client,
                r.round_index,
                grid_a,
                grid_b,
                ids_a=shown_a,
                ids_b=shown_b,
                propose_cfg=cfg.propose,
                llm_cfg=cfg.llm,
                seed=cfg.seed,
            )

        return _per_round(rounds.rounds, ask)


@PROPOSERS.register("feature")
class FeatureProposer(Proposer):
    needs_captions = False
    needs_llm = False

    def propose(self, rounds: CaptionedRounds) -> list[Proposal]:
        import ray

        from visdiff.stages.feature_diff import feature_difference_texts

        cfg = self.ctx.config
        decode = ray.remote(feature_difference_texts).options(
            num_cpus=cfg.captioner.num_cpus, num_gpus=cfg.captioner.num_gpus or None
        )
        pending = []
        for r in rounds.rounds:
            (_, images_a), (_, images_b) = (
                sampled_bytes(rounds, r.ids_a),
                sampled_bytes(rounds, r.ids_b),
            )
            if not images_a or not images_b:
                raise InputError(
                    f"round {r.round_index}: no sampled image of set "
                    f"{'A' if not images_a else 'B'} could be read; check that set's files"
                )
            pending.append(
                decode.remote(
                    cfg.captioner,
                    images_a,
                    images_b,
                    num_texts=cfg.propose.max_hypotheses_per_round,
                    seed=cfg.seed + r.round_index,
                )
            )
        proposals = []
        for r, result in zip(rounds.rounds, ray.get(pending), strict=True):
            for skipped in result.skipped:  # undecodable samples: counted, not silently gone
                log.warning("feature proposer, round %d: skipped %s", r.round_index, skipped)
            proposals.append(
                Proposal(
                    r.round_index,
                    "\n".join(result.texts),
                    list(result.texts),
                    list(r.ids_a),
                    list(r.ids_b),
                    prompt_source="feature",
                    prompt=f"mean image features of A minus B ({result.used_a} vs "
                    f"{result.used_b} images; {len(result.skipped)} skipped)",
                )
            )
        return proposals
