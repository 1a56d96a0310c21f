"""`describe(config) -> RunResult`: the whole VisDiff method, readable top to bottom.

Inputs are planned (listed, or for shards only resolved) and model weights checked before Ray or
any model starts. Image embedding does not need hypotheses, so it runs in a background thread
while the sampled images are captioned and the LLM proposes; ranking then scores every embedded
image per block and merges partial statistics on the driver.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

from visdiff.config import DescribeConfig, LLMConfig, to_yaml
from visdiff.errors import LLMError
from visdiff.llm.client import ChatClient, HTTPChatClient
from visdiff.models.availability import check_models_available
from visdiff.pipeline.actors import ClipActors, clip_model_actors
from visdiff.pipeline.graph import EmbeddedImages
from visdiff.pipeline.offline import CaptionRanker
from visdiff.pipeline.runtime import ray_runtime
from visdiff.propose.keyphrase import propose_keyphrases
from visdiff.propose.proposer import proposal_rows, propose
from visdiff.propose.rounds import CaptionedRounds, build_rounds
from visdiff.rank.partials import rank_order
from visdiff.rank.significance import ranked_rows
from visdiff.report.render import write_report
from visdiff.report.run_stats import run_stats
from visdiff.report.writers import RunFolder
from visdiff.sources.plan import InputPlan, plan_inputs
from visdiff.timing import StageTimer

log = logging.getLogger(__name__)

POOL_PER_SAMPLE = 4  # shard inputs: candidates read per sampled image (per round)


@dataclass
class RunResult:
    run_dir: str  # the run folder, local path or s3:// URI
    ranked: list[dict[str, Any]]
    stats: dict[str, Any]
    metrics: dict[str, Any] | None


@contextmanager
def open_llm(cfg: LLMConfig) -> Iterator[ChatClient | None]:
    """The one seam to the LLM: our own Serve app, or any external OpenAI-compatible URL; None
    for llm.backend=none (the keyphrase proposer, no judge)."""
    if cfg.backend == "none":
        yield None
        return
    if cfg.backend == "external":
        assert cfg.base_url is not None  # validated in config
        yield HTTPChatClient.from_env(
            cfg.base_url,
            cfg.external_model or cfg.served_model_name,
            cfg.api_key_env,
            timeout_s=cfg.timeout_s,
        )
        return
    from visdiff.serving.launch import chat_client_for, start_llm_app, stop_llm_app

    base_url = start_llm_app(cfg)
    log.info("LLM serving at %s", base_url)
    try:
        yield chat_client_for(cfg, base_url)
    finally:
        if not cfg.keep_running:
            stop_llm_app(cfg)


def _prepare(config: DescribeConfig, timer: StageTimer, say: Callable[[str], None]) -> InputPlan:
    """Everything that can fail on bad input, before Ray or a model starts."""
    with timer("load_inputs"):
        plan = plan_inputs(config.data, caption_source=config.caption.source)
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


def _embed_all(
    plan: InputPlan, config: DescribeConfig, timer: StageTimer, clip: ClipActors | None = None
) -> EmbeddedImages:
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


def _embed_captions(
    captions: CaptionRanker, plan: InputPlan, config: DescribeConfig, timer: StageTimer
) -> EmbeddedImages:
    with timer("embed_images"):
        return captions.embed_images(plan, config.data, seed=config.seed)


def _caption_samples(plan: InputPlan, config: DescribeConfig, timer: StageTimer) -> CaptionedRounds:
    from visdiff.pipeline.graph import caption_images

    def caption(rows: list[dict[str, Any]]) -> dict[str, tuple[str, str]]:
        return caption_images(rows, config.captioner, cache_root=config.cache.root)

    with timer("caption"):
        display_names = {p.set_name: p.display_name for p in plan.sets}
        return build_rounds(display_names, _sample_pools(plan, config), config, caption)


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

    from visdiff.pipeline.evidence import EvidenceAggregate, finish_evidence, write_evidence
    from visdiff.pipeline.graph import aggregate_embeddings, embed_texts, score_aggregation

    # rank.ranker=sentence (models=offline): captions and a sentence model stand in for CLIP.
    captions = CaptionRanker(config.sentence) if config.rank.ranker == "sentence" else None
    metrics = None
    with (
        ray_runtime(config.ray) as ray_start,
        nullcontext()
        if captions
        else clip_model_actors(config.clip, config.cache.root) as clip,  # images, then texts
        ThreadPoolExecutor(max_workers=2) as background,
    ):
        _warm_up_ray()
        if captions:
            say("embedding the caption of every image in the background (rank.ranker=sentence)")
            embedding = background.submit(_embed_captions, captions, plan, config, timer)
        else:
            say("decoding and embedding every image in the background (decode+embed lines)")
            embedding = background.submit(_embed_all, plan, config, timer, clip)
        # Captions do not need the LLM: caption while the LLM app starts.
        say(f"captioning samples (caption.source={config.caption.source})")
        captioning = background.submit(_caption_samples, plan, config, timer)
        with open_llm(config.llm) as client:
            captioned = captioning.result()
            with timer("propose"):
                say(f"proposing: {config.propose.num_rounds} rounds")
                if client is None:  # llm.backend=none
                    proposals, hypotheses = propose_keyphrases(captioned.rounds, config.propose)
                else:
                    proposals, hypotheses = propose(
                        client,
                        captioned.rounds,
                        config.propose,
                        config.llm,
                        seed=config.seed,
                        caption_prompt=config.captioner.prompt or None,
                    )
            folder.write_jsonl("hypotheses.jsonl", proposal_rows(proposals))
            if not hypotheses:
                raise LLMError(
                    f"the LLM proposed no parseable hypothesis in {len(proposals)} rounds; "
                    f"its raw answers are in {folder.path('hypotheses.jsonl')}"
                )
            say(f"{len(hypotheses)} unique hypotheses; waiting for image embeddings")
            embedded = embedding.result()
            with timer("embed_texts"):
                template = config.rank.text_template
                texts = [template.format(h) for h in hypotheses]
                if captions:
                    text_embeddings = captions.embed_texts(texts)
                else:
                    text_embeddings = embed_texts(texts, config.clip, actors=clip)
            startup = {
                "ray": ray_start.seconds,
                "clip_actors": clip.startup_seconds() if clip else None,
            }
            with timer("rank"):  # statistics and evidence in one pass over the embeddings
                say(f"ranking {len(hypotheses)} hypotheses on {embedded.num_rows} images")
                scoring = score_aggregation(embedded, hypotheses, text_embeddings, config.rank)
                gathering = EvidenceAggregate(text_embeddings, config.report.evidence_k)
                folded = aggregate_embeddings(embedded, [scoring, gathering])
                ranked_stats = rank_order(folded[scoring.get_agg_name()])
            ranked = ranked_rows(
                ranked_stats, alpha=config.rank.alpha, ci_level=config.rank.ci_level
            )  # both directions, best first within each
            with timer("evidence"):  # the chosen images' thumbnails
                evidence = finish_evidence(folded[gathering.get_agg_name()], hypotheses)
            if config.evaluate.enabled:
                with timer("evaluate"):
                    say("evaluating the top hypotheses with the LLM judge")
                    more_true_of_a = [r for r in ranked if r["direction"] == "a"]
                    metrics = _evaluate(client, more_true_of_a, config)

    stats = run_stats(plan, embedded, captioned, proposals, hypotheses)
    stats["seconds"] = timer.as_dict()
    stats["startup_seconds"] = startup  # Ray start; CLIP actors: creation to model loaded
    stats["total_seconds"] = round(time.perf_counter() - started, 3)
    folder.write_ranked(ranked)
    folder.write_json("stats.json", stats)
    if metrics is not None:
        folder.write_json("metrics.json", metrics)
    write_evidence(folder, evidence)
    write_report(folder)  # report.html from the files above, as `visdiff report` does
    return RunResult(folder.display(), ranked, stats, metrics)


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
        embedded = _embed_all(plan, config, timer)
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


def _warm_up_ray() -> None:
    """Create Ray's serialisation context and import Ray Data on this thread first: doing it for
    the first time in two threads at once races inside Ray's pydantic compatibility imports."""
    import ray
    import ray.data  # noqa: F401

    ray.get(ray.put(0))


def _evaluate(
    client: ChatClient, ranked: list[dict[str, Any]], config: DescribeConfig
) -> dict[str, Any] | None:
    from visdiff.evaluate.evaluator import evaluate_run

    return evaluate_run(
        client,
        [r["hypothesis"] for r in ranked],
        eval_cfg=config.evaluate,
        data_cfg=config.data,
        llm_cfg=config.llm,
        seed=config.seed,
    )
