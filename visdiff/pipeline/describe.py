"""`describe(config) -> RunResult`: the whole VisDiff method, readable top to bottom.

Inputs are planned (listed, or for shards only resolved) and model weights checked before Ray or
any model starts. Image embedding does not need hypotheses, so it runs in a background thread
while the sampled images are captioned and the LLM proposes; ranking then scores every embedded
image per block and merges partial statistics on the driver.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from visdiff import schema
from visdiff.config import DescribeConfig, LLMConfig, to_yaml
from visdiff.errors import LLMError
from visdiff.llm.client import ChatClient, HTTPChatClient
from visdiff.models.availability import check_models_available
from visdiff.pipeline.graph import EmbeddedImages
from visdiff.pipeline.runtime import ray_runtime
from visdiff.propose.proposer import Proposal, propose
from visdiff.propose.rounds import CaptionedRounds, build_rounds
from visdiff.report.html import render_report
from visdiff.report.writers import RunFolder
from visdiff.sources.plan import InputPlan, plan_inputs
from visdiff.stages.embed import ClipActors, clip_model_actors
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
def open_llm(cfg: LLMConfig) -> Iterator[ChatClient]:
    """The one seam to the LLM: our own Serve app, or any external OpenAI-compatible URL."""
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
    from visdiff.pipeline.graph import embed_images
    from visdiff.pipeline.progress import expected_images, expecting
    from visdiff.sources.datasets import ranking_dataset

    with timer("embed_images"):
        ds_a, n_a = ranking_dataset(plan.a, config.data, seed=config.seed)
        ds_b, n_b = ranking_dataset(plan.b, config.data, seed=config.seed)
        sizes = [(n_a, len(plan.a.shards or [])), (n_b, len(plan.b.shards or []))]
        with expecting("decode+embed", expected_images(sizes, config.data.max_num_samples)):
            return embed_images(
                ds_a.union(ds_b), config.clip, cache_root=config.cache.root, actors=clip
            )


def _caption_samples(plan: InputPlan, config: DescribeConfig, timer: StageTimer) -> CaptionedRounds:
    with timer("caption"):
        return build_rounds(plan, _sample_pools(plan, config), config)


def _sample_pools(plan: InputPlan, config: DescribeConfig) -> dict[str, list[dict[str, Any]]]:
    from visdiff.sources.datasets import sample_pool

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

    from visdiff.pipeline.graph import embed_texts, score_hypotheses

    metrics = None
    with (
        ray_runtime(config.ray) as ray_start,
        clip_model_actors(config.clip, config.cache.root) as clip,  # images, then hypotheses
        ThreadPoolExecutor(max_workers=2) as background,
    ):
        _warm_up_ray()
        say("decoding and embedding every image in the background (decode+embed lines)")
        embedding = background.submit(_embed_all, plan, config, timer, clip)
        # Captions do not need the LLM: caption while the LLM app starts.
        say(f"captioning samples (caption.source={config.caption.source})")
        captioning = background.submit(_caption_samples, plan, config, timer)
        with open_llm(config.llm) as client:
            captioned = captioning.result()
            with timer("propose"):
                say(f"proposing: {config.propose.num_rounds} rounds")
                proposals, hypotheses = propose(
                    client, captioned.rounds, config.propose, config.llm, seed=config.seed
                )
            folder.write_jsonl("hypotheses.jsonl", _proposal_rows(proposals))
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
                text_embeddings = embed_texts(texts, config.clip, actors=clip)
            startup = {"ray": ray_start.seconds, "clip_actors": clip.startup_seconds()}
            with timer("rank"):
                say(f"ranking {len(hypotheses)} hypotheses on {embedded.num_rows} images")
                ranked_stats = score_hypotheses(embedded, hypotheses, text_embeddings, config.rank)
            ranked = [{"rank": i, **s.to_dict()} for i, s in enumerate(ranked_stats, start=1)]
            if config.evaluate.enabled:
                with timer("evaluate"):
                    say("evaluating the top hypotheses with the LLM judge")
                    metrics = _evaluate(client, ranked, plan, config)

    stats = run_stats(plan, embedded, captioned, proposals, hypotheses)
    stats["seconds"] = timer.as_dict()
    stats["startup_seconds"] = startup  # Ray start; CLIP actors: creation to model loaded
    stats["total_seconds"] = round(time.perf_counter() - started, 3)
    folder.write_ranked(ranked)
    folder.write_json("stats.json", stats)
    if metrics is not None:
        folder.write_json("metrics.json", metrics)
    folder.write_text(
        "report.html",
        render_report(
            name_a=plan.a.display_name,
            name_b=plan.b.display_name,
            ranked=ranked,
            thumbnails_a=_thumbnails(schema.SET_A, captioned, config.report.thumbnails_per_set),
            thumbnails_b=_thumbnails(schema.SET_B, captioned, config.report.thumbnails_per_set),
            stats=stats,
            metrics=metrics,
        ),
    )
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
    client: ChatClient, ranked: list[dict[str, Any]], plan: InputPlan, config: DescribeConfig
) -> dict[str, Any]:
    from visdiff.evaluate.evaluator import evaluate_ranked

    return evaluate_ranked(
        client,
        [r["hypothesis"] for r in ranked],
        ground_truth_a=config.evaluate.ground_truth_a or plan.a.display_name,
        ground_truth_b=config.evaluate.ground_truth_b or plan.b.display_name,
        eval_cfg=config.evaluate,
        llm_cfg=config.llm,
        seed=config.seed,
    )


def _proposal_rows(proposals: list[Proposal]) -> Iterator[dict[str, Any]]:
    """One row per parsed hypothesis; a round whose answer parsed to nothing still gets a row
    (hypothesis null) so that its raw text is kept."""
    for p in proposals:
        if not p.hypotheses:
            yield {
                "round": p.round_index,
                "index": None,
                "hypothesis": None,
                "raw_text": p.raw_text,
            }
        for index, hypothesis in enumerate(p.hypotheses):
            yield {
                "round": p.round_index,
                "index": index,
                "hypothesis": hypothesis,
                "raw_text": p.raw_text,
            }


def run_stats(
    plan: InputPlan,
    embedded: EmbeddedImages,
    captioned: CaptionedRounds,
    proposals: list[Proposal],
    hypotheses: list[str],
) -> dict[str, Any]:
    skipped = [{**s, "stage": "listing"} for s in plan.skipped]
    skipped += [{**s, "stage": "embed"} for s in embedded.skipped]
    for s in skipped:
        s["reason_code"] = str(s.get("reason", "")).split(":", 1)[0]
    images = {}
    for p in plan.sets:
        name = p.set_name
        listed_skipped = sum(1 for s in plan.skipped if s.get("set") == name)
        failed = sum(1 for s in embedded.skipped if s["set"] == name)
        read = embedded.rows_per_set.get(name, 0)
        images[name] = {
            "name": p.display_name,
            "listed": (len(p.records) + listed_skipped) if p.records is not None else None,
            "shards": len(p.shards) if p.shards is not None else None,
            "read": read,
            "over_cap": (len(p.records) - read) if p.records is not None else None,
            "skipped": listed_skipped + failed,
            "ranked": read - failed,
        }
    return {
        "images": images,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason_code"] for s in skipped)),
        "cache": {
            "hits": embedded.from_cache,
            "misses": embedded.num_rows - embedded.from_cache - len(embedded.skipped),
        },
        "captioning": {
            "images_captioned": sum(1 for v in captioned.caption_source.values() if v == "model"),
            "captions_from_input": sum(
                1 for v in captioned.caption_source.values() if v == "input"
            ),
            "failed": captioned.failed,
        },
        "hypotheses": {
            "rounds": len(proposals),
            "proposed": sum(len(p.hypotheses) for p in proposals),
            "unique": len(hypotheses),
        },
    }


def _thumbnails(set_name: str, captioned: CaptionedRounds, n: int) -> list[tuple[str, bytes]]:
    """Small JPEGs of the first sampled images of a set (decoded on the driver: only a few)."""
    from visdiff.sources.decode import (
        ImageDecodeError,
        decode_image,
        read_and_decode,
        thumbnail_jpeg,
    )

    sampled = [
        i for r in captioned.rounds for i in (r.ids_a if set_name == schema.SET_A else r.ids_b)
    ]
    out = []
    for image_id in list(dict.fromkeys(sampled))[:n]:
        row = captioned.rows.get(image_id)
        if row is None:
            continue
        try:
            data = row.get(schema.IMAGE_BYTES)
            image = decode_image(data) if data else read_and_decode(row[schema.URI])
        except ImageDecodeError:
            continue
        out.append((captioned.captions.get(image_id, image_id), thumbnail_jpeg(image)))
    return out
