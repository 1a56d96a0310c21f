"""`describe(config) -> RunResult`: the whole VisDiff method, readable top to bottom.

Inputs are validated and model weights checked before Ray or any model starts. Image embedding
does not need hypotheses, so it runs in a background thread while the sampled images are
captioned and the LLM proposes; ranking then scores every embedded image per block.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visdiff import schema
from visdiff.config import DescribeConfig, LLMConfig, to_yaml
from visdiff.errors import LLMError
from visdiff.llm.client import ChatClient, HTTPChatClient
from visdiff.models.availability import check_models_available
from visdiff.propose.captions import CaptionedRounds, build_rounds
from visdiff.propose.proposer import Proposal, propose
from visdiff.propose.sampling import stable_fraction
from visdiff.report.html import render_report
from visdiff.report.writers import write_json, write_jsonl, write_ranked, write_text
from visdiff.runtime import ray_runtime
from visdiff.sources.records import ImageRecord, ImageSets, load_image_sets
from visdiff.timing import StageTimer

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    run_dir: Path
    ranked: list[dict[str, Any]]
    stats: dict[str, Any]
    metrics: dict[str, Any] | None


def cap_records(records: list[ImageRecord], max_n: int, seed: int) -> list[ImageRecord]:
    """Seeded subset of at most `max_n` records, independent of listing order."""
    if len(records) <= max_n:
        return records
    ordered = sorted(records, key=lambda r: stable_fraction(r.id, seed))
    return sorted(ordered[:max_n], key=lambda r: r.id)


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


def describe(config: DescribeConfig, *, progress: Callable[[str], None] | None = None) -> RunResult:
    say = progress or log.info
    timer = StageTimer()
    started = time.perf_counter()

    with timer("load_inputs"):
        sets = load_image_sets(config.data)
    say(f"inputs: A = '{sets.name_a}' ({len(sets.a)} images), B = '{sets.name_b}' ({len(sets.b)})")
    with timer("check_models"):
        check_models_available(config)

    run_dir = Path(config.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(run_dir / "config.yaml", to_yaml(config))

    capped_a = cap_records(sets.a, config.data.max_num_samples, config.seed)
    capped_b = cap_records(sets.b, config.data.max_num_samples, config.seed)

    from visdiff.rank.ranker import embed_images, embed_texts, score_hypotheses

    metrics = None
    with ray_runtime(config.ray), ThreadPoolExecutor(max_workers=2) as background:
        _warm_up_ray()

        def run_embedding():
            with timer("embed_images"):
                return embed_images(
                    [*capped_a, *capped_b], config.clip, num_blocks=config.data.num_blocks
                )

        say(f"embedding {len(capped_a) + len(capped_b)} images in the background")
        embedding = background.submit(run_embedding)
        with open_llm(config.llm) as client:
            with timer("caption"):
                say(f"captioning samples ({config.caption.source})")
                captioned = build_rounds(sets, config)
            with timer("propose"):
                say(f"proposing: {config.propose.num_rounds} rounds")
                proposals, hypotheses = propose(
                    client, captioned.rounds, config.propose, config.llm, seed=config.seed
                )
            write_jsonl(run_dir / "hypotheses.jsonl", _proposal_rows(proposals))
            if not hypotheses:
                raise LLMError(
                    f"the LLM proposed no parseable hypothesis in {len(proposals)} rounds; "
                    f"its raw answers are in {run_dir / 'hypotheses.jsonl'}"
                )
            say(f"{len(hypotheses)} unique hypotheses; waiting for image embeddings")
            embedded = embedding.result()
            with timer("embed_texts"):
                template = config.rank.text_template
                text_embeddings = embed_texts([template.format(h) for h in hypotheses], config.clip)
            with timer("rank"):
                say(f"ranking {len(hypotheses)} hypotheses on {embedded.num_rows} images")
                ranked_stats = score_hypotheses(embedded, hypotheses, text_embeddings, config.rank)
            ranked = [{"rank": i, **s.to_dict()} for i, s in enumerate(ranked_stats, start=1)]
            if config.evaluate.enabled:
                with timer("evaluate"):
                    say("evaluating the top hypotheses with the LLM judge")
                    metrics = _evaluate(client, ranked, sets, config)

    stats = _run_stats(sets, capped_a, capped_b, embedded.skipped, captioned, proposals, hypotheses)
    stats["seconds"] = timer.as_dict()
    stats["total_seconds"] = round(time.perf_counter() - started, 3)
    write_ranked(run_dir, ranked)
    write_json(run_dir / "stats.json", stats)
    if metrics is not None:
        write_json(run_dir / "metrics.json", metrics)
    write_text(
        run_dir / "report.html",
        render_report(
            name_a=sets.name_a,
            name_b=sets.name_b,
            ranked=ranked,
            thumbnails_a=_thumbnails(sets.a, captioned, config.report.thumbnails_per_set),
            thumbnails_b=_thumbnails(sets.b, captioned, config.report.thumbnails_per_set),
            stats=stats,
            metrics=metrics,
        ),
    )
    return RunResult(run_dir, ranked, stats, metrics)


def _warm_up_ray() -> None:
    """Create Ray's serialisation context and import Ray Data on this thread first: doing it for
    the first time in two threads at once races inside Ray's pydantic compatibility imports."""
    import ray
    import ray.data  # noqa: F401

    ray.get(ray.put(0))


def _evaluate(
    client: ChatClient, ranked: list[dict[str, Any]], sets: ImageSets, config: DescribeConfig
) -> dict[str, Any]:
    from visdiff.evaluate.evaluator import evaluate_ranked

    return evaluate_ranked(
        client,
        [r["hypothesis"] for r in ranked],
        ground_truth_a=config.evaluate.ground_truth_a or sets.name_a,
        ground_truth_b=config.evaluate.ground_truth_b or sets.name_b,
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


def _run_stats(
    sets: ImageSets,
    capped_a: list[ImageRecord],
    capped_b: list[ImageRecord],
    embed_skipped: list[dict[str, str]],
    captioned: CaptionedRounds,
    proposals: list[Proposal],
    hypotheses: list[str],
) -> dict[str, Any]:
    skipped = [{**s, "stage": "listing"} for s in sets.skipped]
    skipped += [{**s, "stage": "embed"} for s in embed_skipped]
    for s in skipped:
        s["reason_code"] = str(s.get("reason", "")).split(":", 1)[0]
    images = {}
    for name, listed, capped in (
        (schema.SET_A, sets.a, capped_a),
        (schema.SET_B, sets.b, capped_b),
    ):
        failed = sum(1 for s in embed_skipped if s["set"] == name)
        images[name] = {
            "listed": len(listed) + sum(1 for s in sets.skipped if s.get("set") == name),
            "over_cap": len(listed) - len(capped),
            "read": len(capped) - failed,
            "skipped": sum(1 for s in skipped if s.get("set") == name),
            "ranked": len(capped) - failed,
        }
    return {
        "images": images,
        "skipped": skipped,
        "skipped_by_reason": dict(Counter(s["reason_code"] for s in skipped)),
        "captioning": {
            "images_captioned": sum(1 for v in captioned.caption_source.values() if v == "model"),
            "captions_from_manifest": sum(
                1 for v in captioned.caption_source.values() if v == "manifest"
            ),
            "failed": captioned.failed,
        },
        "hypotheses": {
            "rounds": len(proposals),
            "proposed": sum(len(p.hypotheses) for p in proposals),
            "unique": len(hypotheses),
        },
    }


def _thumbnails(
    records: list[ImageRecord], captioned: CaptionedRounds, n: int
) -> list[tuple[str, bytes]]:
    """Small JPEGs of the first sampled images (decoded on the driver: only a handful)."""
    from visdiff.sources.decode import ImageDecodeError, read_and_decode, thumbnail_jpeg

    sampled = [i for r in captioned.rounds for i in (*r.ids_a, *r.ids_b)]
    by_id = {r.id: r for r in records}
    chosen = [by_id[i] for i in dict.fromkeys(sampled) if i in by_id][:n]
    out = []
    for record in chosen:
        try:
            image = read_and_decode(record.uri)
        except ImageDecodeError:
            continue
        label = captioned.captions.get(record.id, record.id)
        out.append((label, thumbnail_jpeg(image)))
    return out
