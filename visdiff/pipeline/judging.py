"""The llm and vlm rankers' Ray Data graph: every (image, hypothesis) asked as a yes/no question
by an actor pool of `YesNoScorer`s against the run's endpoint (our Serve app or an external one).

Mode "image" first reads each image and shrinks it to a JPEG of at most `image_side` pixels a
side (a VLM sees a few hundred pixels anyway; a 5 MB photo sent H times would cost bandwidth and
the server's memory for nothing); an image that cannot be read or decoded is skipped as on the
CLIP path. The answers become the rows' `embedding` (1.0 yes, 0.0 no per hypothesis) and the
result is summarised as `graph.embed_images` does, so scoring against the identity matrix gives
the same statistics, evidence and stats.json as every other ranker.

Refinement rounds pass the previous `JudgedImages` as `previous`: only hypotheses not asked
before are asked, the known answers are carried over (with the answer cache on, a rerun asks
nothing at all).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.cache.answers import AnswerCache
from visdiff.errors import LLMError
from visdiff.llm.client import USAGE_KEYS, ClientSettings, empty_usage
from visdiff.llm.yesno import JUDGE_ERROR, MODES, UNPARSED, USAGE_COLUMNS, YesNoScorer
from visdiff.pipeline.graph import EmbeddedImages, summarise
from visdiff.stages.images import decode_all, load_bytes, strings

JUDGE_ACTOR_CPUS = 0.25  # an actor mostly waits on the endpoint: its threads need little CPU
DEFAULT_IMAGE_SIDE = 512
MAX_BATCH_ROWS = 64
_READ_COLUMNS = (schema.ID, schema.SET, schema.URI, schema.ERROR, schema.CAPTION)


@dataclass
class JudgedImages(EmbeddedImages):
    """`EmbeddedImages` whose embedding columns answer `hypotheses`, with what asking cost in
    this call (`usage`: calls, failed, prompt_tokens, completion_tokens, cached)."""

    hypotheses: list[str] = field(default_factory=list)
    mode: str = "caption"
    unparsed: int = 0
    usage: dict[str, int] = field(default_factory=empty_usage)


def shrunk_images(batch: dict[str, Any], *, side: int = DEFAULT_IMAGE_SIDE) -> dict[str, Any]:
    """Rows with `image_bytes` as a JPEG of at most `side` pixels a side; a row whose image
    cannot be read or decoded keeps empty bytes and gets its error."""
    from visdiff.sources.decode import thumbnail_jpeg

    datas, errors = load_bytes(batch)
    images = decode_all(datas, errors)
    small = [
        thumbnail_jpeg(image, size=side, quality=90) if image is not None and not error else b""
        for image, error in zip(images, errors, strict=True)
    ]
    kept = {k: v for k, v in batch.items() if k in _READ_COLUMNS}
    return {
        **kept,
        schema.ERROR: strings(errors),
        schema.IMAGE_BYTES: np.array(small, dtype=object),
    }


def _judged_counts(batch: dict[str, Any]) -> dict[str, np.ndarray]:
    """One row per block: unparsed answers, usage and judge failures (summed on the driver)."""
    n = len(batch[schema.ID])
    counts = {UNPARSED: np.array([int(np.sum(batch[UNPARSED]))])}
    for key, column in USAGE_COLUMNS.items():
        counts[key] = np.array([int(np.sum(batch.get(column, np.zeros(n))))])
    judge_failed = sum(str(e).startswith(JUDGE_ERROR) for e in batch[schema.ERROR])
    counts["judge_failed"] = np.array([judge_failed])
    return counts


def _batch_rows(concurrency: int, num_questions: int) -> int:
    """Rows per batch: about four rounds of `concurrency` requests in flight."""
    return max(1, min(MAX_BATCH_ROWS, -(-4 * concurrency // max(1, num_questions))))


def judge_images(
    rows_dataset: Any,
    hypotheses: list[str],
    settings: ClientSettings,
    *,
    mode: str,
    concurrency: int,
    num_actors: int = 1,
    cache_root: str | None = None,
    temperature: float = 0.0,
    max_tokens: int = 4,
    seed: int | None = None,
    image_side: int = DEFAULT_IMAGE_SIDE,
    previous: JudgedImages | None = None,
) -> JudgedImages:
    """Every row of `rows_dataset` ({id, set, uri, error, caption} for mode "caption"; also
    image_bytes, or read from uri, for mode "image") asked about every hypothesis.

    `cache_root`: reuse answers under cache.root (cache.llm_answers). `previous`: the result of
    an earlier call over the same rows; its dataset replaces `rows_dataset` and only the
    hypotheses it did not ask about are asked. Raises LLMError when every row failed at the
    endpoint (a wrong URL or key should stop the run, not rank nothing)."""
    from ray.data import ActorPoolStrategy

    from visdiff.pipeline.progress import materialize_with_progress

    if mode not in MODES:
        raise ValueError(f"judge_images mode must be one of {MODES}, got {mode!r}")
    known = list(previous.hypotheses) if previous is not None else []
    if previous is not None:
        if previous.mode != mode:
            raise ValueError(f"previous answers are of mode {previous.mode!r}, not {mode!r}")
        rows_dataset = previous.dataset
    new = [h for h in dict.fromkeys(hypotheses) if h not in set(known)]
    ds = rows_dataset
    if mode == "image" and new:
        ds = ds.map_batches(
            shrunk_images, fn_kwargs={"side": image_side}, batch_format="numpy", batch_size=16
        )
    ds = ds.map_batches(
        YesNoScorer,
        fn_constructor_args=(settings, list(hypotheses)),
        fn_constructor_kwargs={
            "mode": mode,
            "concurrency": concurrency,
            "temperature": temperature,
            "max_tokens": max_tokens,
            "seed": seed,
            "cache": AnswerCache(cache_root) if cache_root else None,
            "known": known,
        },
        compute=ActorPoolStrategy(size=num_actors),
        batch_size=_batch_rows(concurrency, len(new)),
        batch_format="numpy",
        num_cpus=JUDGE_ACTOR_CPUS,
    )
    materialized = materialize_with_progress(ds, f"judge ({mode})")
    summary = summarise(materialized)
    totals = {key: 0 for key in (UNPARSED, "judge_failed", *USAGE_KEYS)}
    for row in materialized.map_batches(_judged_counts, batch_format="numpy").iter_rows():
        for key in totals:
            totals[key] += int(row[key])
    if summary.num_rows and totals["judge_failed"] and len(summary.skipped) == summary.num_rows:
        first = next(s["reason"] for s in summary.skipped if s["reason"].startswith(JUDGE_ERROR))
        raise LLMError(
            f"every image failed at the LLM endpoint ({totals['judge_failed']} of "
            f"{summary.num_rows}), e.g. {first}"
        )
    return JudgedImages(
        summary.dataset,
        summary.num_rows,
        summary.rows_per_set,
        summary.from_cache,
        summary.skipped,
        hypotheses=list(hypotheses),
        mode=mode,
        unparsed=totals[UNPARSED],
        usage={key: totals[key] for key in USAGE_KEYS},
    )
