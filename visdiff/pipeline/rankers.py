"""Rankers (`rank.ranker`), registered by name. Each gives the rank path two things: the rows
to score (an `EmbeddedImages`) and one vector per hypothesis, such that a row's score for a
hypothesis is the dot product of the two. The same aggregation then computes AUROC, p/q-values,
evidence and stats.json for every ranker, so their outputs compare one to one.

- clip: CLIP image embeddings · CLIP text embeddings (cosine similarity).
- caption: sentence embeddings of the input's captions · of the hypotheses (offline mode).
- llm / vlm: the answer (1 yes, 0 no) of the LLM on an image's caption, or of a VLM on the
  image itself, per hypothesis; the hypothesis vectors are the identity. Near-duplicates merge
  on sentence embeddings there (the answers are not an embedding of the text).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import DescribeConfig
from visdiff.llm.client import empty_usage, merge_usage
from visdiff.pipeline.actors import ClipActors
from visdiff.pipeline.context import RunContext
from visdiff.pipeline.graph import EmbeddedImages
from visdiff.pipeline.judging import JudgedImages
from visdiff.pipeline.offline import NO_CAPTION, CaptionRanker
from visdiff.propose.pool import HypothesisPool
from visdiff.registry import Registry
from visdiff.sources.plan import InputPlan
from visdiff.timing import StageTimer


class Ranker(ABC):
    uses_clip = False  # the run starts CLIP model actors for it (ctx.clip)

    def __init__(self, ctx: RunContext) -> None:
        self.ctx = ctx
        self._rows: Future[EmbeddedImages] | None = None
        self.usage = empty_usage()  # LLM calls the ranker made itself (llm / vlm rankers)

    def start(self, background: ThreadPoolExecutor) -> str:
        """Starts the work that needs no hypothesis (in `background`); returns what it does."""
        return ""

    @abstractmethod
    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Hypotheses -> vectors that near-duplicates are merged on (rank.text_template applied
        where the ranker reads the text through an embedding model)."""

    @abstractmethod
    def scoring(self, pool: HypothesisPool) -> tuple[EmbeddedImages, np.ndarray]:
        """Rows to score and one vector per hypothesis of `pool` (score = row · vector)."""

    def rows(self) -> EmbeddedImages:
        """The scored rows of the last `scoring` (or of `start`): stats.json counts them."""
        assert self._rows is not None, "the ranker has not started"
        return self._rows.result()


RANKERS: Registry[type[Ranker]] = Registry("rank.ranker")


def embed_all(
    plan: InputPlan, config: DescribeConfig, timer: StageTimer, clip: ClipActors | None = None
) -> EmbeddedImages:
    """Every image of both sets (capped), decoded and embedded by CLIP (or from the cache)."""
    from visdiff.pipeline.graph import embed_images, ranking_dataset
    from visdiff.pipeline.progress import expected_images, expecting

    with timer("embed_images"):
        ds_a, n_a = ranking_dataset(plan.a, config.data, seed=config.seed)
        ds_b, n_b = ranking_dataset(plan.b, config.data, seed=config.seed)
        sizes = [(n_a, len(plan.a.shards or [])), (n_b, len(plan.b.shards or []))]
        with expecting("decode+embed", expected_images(sizes, config.data.max_num_samples)):
            return embed_images(
                ds_a.union(ds_b), config.clip, cache_root=config.cache.root, actors=clip
            )


def _templated(config: DescribeConfig, texts: list[str]) -> list[str]:
    return [config.rank.text_template.format(t) for t in texts]


@RANKERS.register("clip")
class ClipRanker(Ranker):
    uses_clip = True

    def start(self, background: ThreadPoolExecutor) -> str:
        ctx = self.ctx
        self._rows = background.submit(embed_all, ctx.plan, ctx.config, ctx.timer, ctx.clip)
        return "decoding and embedding every image in the background (decode+embed lines)"

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        from visdiff.pipeline.graph import embed_texts

        with self.ctx.timer("embed_texts"):
            return embed_texts(
                _templated(self.ctx.config, texts), self.ctx.config.clip, actors=self.ctx.clip
            )

    def scoring(self, pool: HypothesisPool) -> tuple[EmbeddedImages, np.ndarray]:
        return self.rows(), pool.embeddings


@RANKERS.register("caption")
class CaptionEmbeddingRanker(Ranker):
    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._sentences = CaptionRanker(ctx.config.sentence)

    def start(self, background: ThreadPoolExecutor) -> str:
        self._rows = background.submit(self._embed_captions)
        return "embedding the caption of every image in the background (rank.ranker=caption)"

    def _embed_captions(self) -> EmbeddedImages:
        ctx = self.ctx
        with ctx.timer("embed_images"):
            return self._sentences.embed_images(ctx.plan, ctx.config.data, seed=ctx.config.seed)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self.ctx.timer("embed_texts"):
            return self._sentences.embed_texts(_templated(self.ctx.config, texts))

    def scoring(self, pool: HypothesisPool) -> tuple[EmbeddedImages, np.ndarray]:
        return self.rows(), pool.embeddings


def judged_cap(config: DescribeConfig) -> int:
    """Images per set the llm/vlm rankers ask about: the smaller of rank.max_judged_images and
    data.max_num_samples (0 = no cap from that key)."""
    caps = [c for c in (config.rank.max_judged_images, config.data.max_num_samples) if c > 0]
    return min(caps, default=0)


class _YesNoRanker(Ranker):
    """Asks the run's LLM endpoint about every (image, hypothesis) of the capped sets."""

    mode = "caption"

    def __init__(self, ctx: RunContext) -> None:
        super().__init__(ctx)
        self._sentences = CaptionRanker(ctx.config.sentence)  # merging only
        self._candidates: Future[Any] | None = None
        self._judged: JudgedImages | None = None

    def start(self, background: ThreadPoolExecutor) -> str:
        # Read (and for the llm ranker caption) once, in the background, for every rank pass.
        self._candidates = background.submit(lambda: self._prepared(self._image_rows()))
        cap = judged_cap(self.ctx.config)
        return f"reading {f'up to {cap:,}' if cap else 'every'} image per set to ask the LLM about"

    def _image_rows(self) -> Any:
        """The capped image rows (a Ray Dataset); the llm ranker's rows carry a caption."""
        from visdiff.pipeline.graph import ranking_dataset

        cfg = self.ctx.config
        data = dataclasses.replace(cfg.data, max_num_samples=judged_cap(cfg))
        a, _ = ranking_dataset(self.ctx.plan.a, data, seed=cfg.seed)
        b, _ = ranking_dataset(self.ctx.plan.b, data, seed=cfg.seed)
        return a.union(b)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        with self.ctx.timer("embed_texts"):
            return self._sentences.embed_texts(texts)

    def scoring(self, pool: HypothesisPool) -> tuple[EmbeddedImages, np.ndarray]:
        from visdiff.pipeline.judging import judge_images

        assert self._candidates is not None and self.ctx.client is not None
        cfg = self.ctx.config
        rows = self._candidates.result()
        with self.ctx.timer("rank_judge"):
            judged = judge_images(
                rows,
                pool.hypotheses,
                self.ctx.client.settings,
                mode=self.mode,
                concurrency=cfg.rank.judge_concurrency,
                cache_root=cfg.cache.root if cfg.cache.llm_answers else None,
                seed=cfg.seed,
                previous=self._judged,  # a refinement round asks only its new hypotheses
            )
        self._judged = judged
        self.usage = merge_usage(self.usage, judged.usage)
        return judged, np.eye(len(pool.hypotheses), dtype=np.float32)

    def rows(self) -> EmbeddedImages:
        assert self._judged is not None, "no hypothesis has been ranked yet"
        return self._judged

    def _prepared(self, rows: Any) -> Any:
        """The rows to ask about, as read (the vlm ranker reads each image itself)."""
        return rows


@RANKERS.register("llm")
class LLMRanker(_YesNoRanker):
    """Yes/no of the LLM on each image's caption: the input's own (caption.source manifest /
    auto) or the run's captioner's."""

    mode = "caption"

    def _prepared(self, rows: Any) -> Any:
        import ray.data

        from visdiff.pipeline.graph import captioner_for

        items = rows.take_all()
        source = self.ctx.config.caption.source
        if source == "manifest":  # the input's captions only, as the caption ranker reads them
            for row in items:
                if not row.get(schema.CAPTION) and not row.get(schema.ERROR):
                    row[schema.ERROR] = NO_CAPTION
        use_input = source != "model"
        missing = [
            r
            for r in items
            if not r.get(schema.ERROR) and not (use_input and r.get(schema.CAPTION))
        ]
        with self.ctx.timer("caption_ranked"):
            captioned = captioner_for(self.ctx.config)(missing) if missing else {}
        for row in items:
            if row[schema.ID] in captioned:
                text, error = captioned[row[schema.ID]]
                row[schema.CAPTION] = text
                row[schema.ERROR] = (
                    row.get(schema.ERROR) or error or ("" if text else "empty caption")
                )
        return ray.data.from_items(items, override_num_blocks=max(1, min(64, len(items) // 64)))


@RANKERS.register("vlm")
class VLMRanker(_YesNoRanker):
    """Yes/no of a VLM on each image (the image itself, no caption)."""

    mode = "image"
