"""`describe(config) -> RunResult`: the whole VisDiff method, readable top to bottom.

Inputs are planned (listed, or for shards only resolved) and model weights checked before Ray or
any model starts. The proposer, ranker and evaluator are the variants the config names
(pipeline/proposers.py, rankers.py, evaluators.py). The LLM app, the longest start-up, is
deployed first in a background thread. The ranker's work that needs no hypothesis
(CLIP: embedding every image) runs in a background thread while the sampled images are captioned
and the proposer proposes; near-duplicate hypotheses are merged on the ranker's text vectors
(propose.merge_similarity); ranking then scores every row per block and merges partial
statistics on the driver. With propose.refine_rounds, the LLM sharpens the best hypotheses and
the pool is ranked again (pipeline/refine.py).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, nullcontext
from dataclasses import dataclass
from typing import Any

from visdiff.config import NEEDS_LLM, DescribeConfig, judge_shares_llm, to_yaml
from visdiff.errors import LLMError
from visdiff.llm.client import ChatClient, merge_usage, usage_of
from visdiff.models.availability import check_models_available
from visdiff.pipeline.actors import clip_model_actors
from visdiff.pipeline.context import RunContext
from visdiff.pipeline.graph import EmbeddedImages, captioner_for
from visdiff.pipeline.llm_session import open_llm
from visdiff.pipeline.proposers import PROPOSERS, Proposer
from visdiff.pipeline.rankers import RANKERS, Ranker, embed_all
from visdiff.pipeline.refine import MissCaptions, Ranking, refine
from visdiff.pipeline.runtime import ray_runtime
from visdiff.propose.pool import HypothesisPool
from visdiff.propose.proposer import proposal_rows
from visdiff.propose.rounds import CaptionedRounds, build_rounds
from visdiff.rank.partials import rank_order
from visdiff.rank.significance import ranked_rows
from visdiff.report.render import write_report
from visdiff.report.run_stats import run_stats
from visdiff.report.writers import RunFolder
from visdiff.sources.plan import (
    InputPlan,
    check_set_sizes,
    plan_inputs,
    require_enough_images,
)
from visdiff.timing import StageTimer

log = logging.getLogger(__name__)

POOL_PER_SAMPLE = 4  # shard inputs: candidates read per sampled image (per round)


@dataclass
class RunResult:
    run_dir: str  # the run folder, local path or s3:// URI
    ranked: list[dict[str, Any]]
    stats: dict[str, Any]
    metrics: dict[str, Any] | None


def _prepare(config: DescribeConfig, timer: StageTimer, say: Callable[[str], None]) -> InputPlan:
    """Everything that can fail on bad input, before Ray or a model starts."""
    with timer("load_inputs"):
        plan = plan_inputs(config.data, caption_source=config.caption.source, seed=config.seed)
    cap = config.data.max_num_samples
    for p in plan.sets:
        if p.records is None:
            size = f"{len(p.shards or []):,} shards" + (
                f", up to {cap:,} images ranked" if cap else ""
            )
        elif 0 < cap < len(p.records):
            size = f"{len(p.records):,} images, {cap:,} ranked: data.max_num_samples"
        else:
            size = f"{len(p.records):,} images"
        say(f"set {p.set_name.upper()} = '{p.display_name}' ({size})")
    with timer("check_models"):
        check_models_available(config)
    return plan


def _caption_samples(
    plan: InputPlan, config: DescribeConfig, timer: StageTimer, proposer: Proposer
) -> CaptionedRounds:
    """Each round's seeded samples (pairs for a paired proposer), captioned when the proposer
    reads captions."""
    with timer("caption"):
        display_names = {p.set_name: p.display_name for p in plan.sets}
        return build_rounds(
            display_names,
            _sample_pools(plan, config),
            config,
            captioner_for(config),
            need_captions=proposer.needs_captions,
            paired=proposer.paired,
        )


def _sample_pools(plan: InputPlan, config: DescribeConfig) -> dict[str, list[dict[str, Any]]]:
    from visdiff.pipeline.graph import sample_pool

    size = config.propose.num_samples * config.propose.num_rounds * POOL_PER_SAMPLE
    return {p.set_name: sample_pool(p, config.data, seed=config.seed, size=size) for p in plan.sets}


def describe(config: DescribeConfig, *, progress: Callable[[str], None] | None = None) -> RunResult:
    """A used output_dir is refused (unless config.overwrite) before any input is read; nothing is
    written until the inputs and models check out; status.json comes last (complete / failed)."""
    say = progress or log.info
    timer = StageTimer()
    started = time.perf_counter()
    folder = RunFolder(config.output_dir)
    folder.check_unused(overwrite=config.overwrite)
    plan = _prepare(config, timer, say)
    check_set_sizes(plan, config.data)  # two images per set, before Ray or a model starts
    folder.begin()
    with folder.recording_status():
        return _describe(config, plan, folder, timer, started, say)


def _describe(
    config: DescribeConfig,
    plan: InputPlan,
    folder: RunFolder,
    timer: StageTimer,
    started: float,
    say: Callable[[str], None],
) -> RunResult:
    folder.write_text("config.yaml", to_yaml(config))

    from visdiff.pipeline.evaluators import EVALUATORS
    from visdiff.pipeline.evidence import finish_evidence, write_evidence

    ctx = RunContext(config, plan, timer, say)
    ranker_class = RANKERS.get(config.rank.ranker)
    proposer = PROPOSERS.get(config.propose.proposer)(ctx)
    evaluator = EVALUATORS.get(config.evaluate.evaluator)()
    metrics = None
    # On a failure, the CLIP actors (inner) stop before the background pool (outer) is waited
    # for: an embedding still running fails at once instead of finishing every image first.
    # The LLM app (its own chain of processes: Serve controller, proxy, replica) is the longest
    # start-up, so it is deployed first, in the background; the pool is waited for (outer)
    # before the app is stopped (outermost), so a deploy still running is never orphaned.
    with (
        ray_runtime(config.ray) as ray_start,
        ExitStack() as llm_session,
        ThreadPoolExecutor(max_workers=3) as background,
    ):
        _warm_up_ray()
        llm_started = time.perf_counter()
        llm = background.submit(
            llm_session.enter_context,
            open_llm(config.llm) if _needs_llm(config) else nullcontext(),
        )
        with (
            clip_model_actors(config.clip, config.cache.root)  # images, then texts
            if ranker_class.uses_clip
            else nullcontext() as clip
        ):
            ctx.clip = clip
            ranker = ranker_class(ctx)
            say(ranker.start(background))
            # Samples are captioned while the LLM app starts: captions do not need it.
            if proposer.needs_captions:
                say(f"captioning samples (caption.source={config.caption.source})")
            captioning = background.submit(_caption_samples, plan, config, timer, proposer)
            client = llm.result()
            llm_app_seconds = round(time.perf_counter() - llm_started, 3) if client else None
            ctx.client = _with_answer_cache(client, config)
            captioned = captioning.result()
            with timer("propose"):
                say(f"proposing: {config.propose.num_rounds} rounds ({config.propose.proposer})")
                proposals = proposer.propose(captioned)
            folder.write_jsonl("hypotheses.jsonl", proposal_rows(proposals))  # before merging
            if not any(p.hypotheses for p in proposals):
                raise LLMError(
                    f"propose.proposer={config.propose.proposer} proposed no parseable "
                    f"hypothesis in {len(proposals)} rounds; its raw answers are in "
                    f"{folder.path('hypotheses.jsonl')}"
                )
            proposed = sum(len(p.hypotheses) for p in proposals)
            say(f"{proposed} hypotheses proposed; waiting for the ranker's rows")
            # Near-duplicates merge on the ranker's text vectors: each text is embedded once.
            threshold = config.propose.merge_similarity
            pool = HypothesisPool.build(proposals, ranker.embed_texts, threshold=threshold)
            folder.write_jsonl("hypotheses.jsonl", pool.rows())  # `merged_into` marked
            say(
                f"{len(pool.hypotheses)} distinct hypotheses (propose.merge_similarity={threshold})"
            )
            rank = functools.partial(_rank, ranker=ranker, config=config, timer=timer, say=say)
            ranking = rank(pool)
            startup = {
                "ray": ray_start.seconds,
                "clip_actors": clip.startup_seconds() if clip else None,
                "llm_app": llm_app_seconds,  # the client ready: Serve app deployed, or external
            }
            if config.propose.refine_rounds:
                if ctx.client is None:
                    say("propose.refine_rounds is not used without an LLM (llm.backend=none)")
                else:
                    with timer("refine"):
                        known = _known_captions(plan, captioned, config)
                        pool, ranking = refine(
                            ctx.client,
                            pool,
                            ranking,
                            config=config,
                            embed=ranker.embed_texts,
                            rank=rank,
                            captions=MissCaptions(known, captioner_for(config)),
                            say=say,
                        )
                    folder.write_jsonl("hypotheses.jsonl", pool.rows())
            ranked, scored, hypotheses = ranking.ranked, ranking.scored, pool.hypotheses
            with timer("evidence"):  # the chosen images' thumbnails
                evidence = finish_evidence(ranking.evidence, hypotheses)
            if config.evaluate.evaluator != "none":
                with timer("evaluate"):
                    say(f"evaluating the top hypotheses ({config.evaluate.evaluator})")
                    metrics = evaluator.evaluate(ctx, [r for r in ranked if r["direction"] == "a"])
            usage = merge_usage(usage_of(ctx.client), ranker.usage) if ctx.client else None

    stats = run_stats(plan, ranker.rows(), captioned, pool.proposals, hypotheses)
    stats["selection"] = plan.selection  # manifest rows per set, ambiguous rows, purity swaps
    stats["holdout"] = scored.holdout  # images per set left out of the significance figures
    stats["variants"] = {
        "proposer": config.propose.proposer,
        "ranker": config.rank.ranker,
        "evaluator": config.evaluate.evaluator,
    }
    stats["llm_usage"] = usage  # calls, tokens, answers from the cache; null without an LLM
    stats["seconds"] = timer.as_dict()
    # Ray start; CLIP actors: creation to model loaded; LLM app; per Ray Data stage, seconds
    # from its start to its first output (its actors' processes, imports and model loads).
    stats["startup_seconds"] = {**startup, "first_output": timer.first_output()}
    stats["total_seconds"] = round(time.perf_counter() - started, 3)
    folder.write_ranked(ranked)
    folder.write_json("stats.json", stats)
    if metrics is not None:
        folder.write_json("metrics.json", metrics)
    write_evidence(folder, evidence)
    write_report(folder)  # report.html from the files above, as `visdiff report` does
    return RunResult(folder.display(), ranked, stats, metrics)


def _needs_llm(config: DescribeConfig) -> bool:
    """Whether the run talks to `llm` at all: its proposer or ranker asks it, refinement rounds
    do, or the judge shares it. Otherwise no Serve app is started."""
    if config.llm.backend == "none":
        return False
    chosen = {"propose.proposer": config.propose.proposer, "rank.ranker": config.rank.ranker}
    if any(chosen[key] in names for key, names in NEEDS_LLM.items()):
        return True
    if config.propose.refine_rounds:
        return True
    return config.evaluate.evaluator == "llm_judge" and judge_shares_llm(config)


def _with_answer_cache(client: ChatClient | None, config: DescribeConfig) -> ChatClient | None:
    """cache.llm_answers: the same (model, messages, sampling) is answered from cache.root."""
    if client is None or not (config.cache.root and config.cache.llm_answers):
        return client
    from visdiff.cache.answers import AnswerCache
    from visdiff.llm.caching import CachingChatClient

    return CachingChatClient(client, AnswerCache(config.cache.root))


def _rank(
    pool: HypothesisPool,
    *,
    ranker: Ranker,
    config: DescribeConfig,
    timer: StageTimer,
    say: Callable[[str], None],
) -> Ranking:
    """The rank path for every hypothesis of `pool`: run once, and again per refinement round.
    Images whose captions an LLM saw are held in (rank.holdout)."""
    from visdiff.pipeline.evidence import EvidenceAggregate
    from visdiff.pipeline.graph import aggregate_embeddings, score_aggregation

    hypotheses = pool.hypotheses
    embedded, text_embeddings = ranker.scoring(pool)
    _check_decoded_sizes(ranker.ctx.plan, embedded)  # decoding may leave a set too small
    with timer("rank"):  # statistics and evidence in one pass over the embeddings
        say(f"ranking {len(hypotheses)} hypotheses on {embedded.num_rows} images")
        shown = pool.shown_ids()
        scoring = score_aggregation(
            embedded, hypotheses, text_embeddings, config.rank, held_in=shown
        )
        gathering = EvidenceAggregate(text_embeddings, config.report.evidence_k)
        folded = aggregate_embeddings(embedded, [scoring, gathering])
        scored = folded[scoring.get_agg_name()]
    if scored.holdout["fallback"]:
        log.warning("rank.holdout: %s", scored.holdout["fallback"])
    ranked = ranked_rows(
        rank_order(scored.stats),
        tested=scored.tested,  # rank.holdout: images the proposer did not see
        alpha=config.rank.alpha,
        ci_level=config.rank.ci_level,
    )  # both directions, best first within each
    return Ranking(ranked, folded[gathering.get_agg_name()], scored)


def _known_captions(
    plan: InputPlan, captioned: CaptionedRounds, config: DescribeConfig
) -> dict[str, str]:
    """Captions at hand: the proposer's samples', and the input's own where the run uses them
    (caption.source manifest / auto, or the sentence ranker, which ranks by them)."""
    known = dict(captioned.captions)
    if config.caption.source != "model" or config.rank.ranker == "caption":
        for p in plan.sets:
            known.update({r.id: r.caption for r in p.records or [] if r.caption})
    return known


def embed(
    config: DescribeConfig, *, progress: Callable[[str], None] | None = None
) -> dict[str, Any]:
    """`visdiff embed`: fill the embedding cache for both sets ahead of time; returns stats."""
    say = progress or log.info
    timer = StageTimer()
    folder = RunFolder(config.output_dir)
    folder.check_unused(overwrite=config.overwrite, only=("embed_stats.json",))
    plan = _prepare(config, timer, say)
    with ray_runtime(config.ray):
        _warm_up_ray()
        say(f"embedding into the cache at {config.cache.root}")
        embedded = embed_all(plan, config, timer)
    stats = {
        "images": embedded.rows_per_set,
        "cache": {
            "root": config.cache.root,
            "hits": embedded.from_cache,
            "misses": embedded.num_rows - embedded.from_cache - len(embedded.skipped),
        },
        "skipped": embedded.skipped + [{**s, "stage": "listing"} for s in plan.skipped],
        "seconds": timer.as_dict(),
    }
    folder.write_json("embed_stats.json", stats)
    return stats


def _check_decoded_sizes(plan: InputPlan, embedded: EmbeddedImages) -> None:
    """Shard sets are counted only here, and decoding may leave a listed set too small."""
    for p in plan.sets:
        read = embedded.rows_per_set.get(p.set_name, 0)
        failed = [s for s in embedded.skipped if s["set"] == p.set_name]
        where = f"of {read} read"
        if failed:
            reasons = ", ".join(sorted({str(s["reason"]).split(":", 1)[0] for s in failed}))
            where += f" ({len(failed)} skipped: {reasons}; first: '{failed[0]['uri']}')"
        fix = "add images to it or replace the files that cannot be used"
        require_enough_images(p, read - len(failed), where=where, fix=fix)


def _warm_up_ray() -> None:
    """Create Ray's serialisation context and import Ray Data on this thread first: doing it for
    the first time in two threads at once races inside Ray's pydantic compatibility imports."""
    import ray
    import ray.data  # noqa: F401

    ray.get(ray.put(0))
