"""`run_bench`: one describe run per suite pair, several at once, on one Ray and one LLM app.

The bench starts (or joins) Ray once; each pair's describe finds it up and leaves it up. With
llm.backend=serve the LLM app is deployed once, before the pairs, and every pair runs with
llm.keep_running=true, so each describe finds and reuses the same app instead of deploying its
own; the judge's own app (evaluate.llm, backend=serve) likewise. Both are removed at the end
unless the config asked to keep them. Pair i writes output_dir/pairs/<id>/; on resume a pair
whose folder is complete (and has metrics.json) is read, not run again.
"""

from __future__ import annotations

import copy
import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visdiff.config import DescribeConfig, LLMConfig, judge_shares_llm, validate
from visdiff.errors import ConfigError, first_line
from visdiff.suite.load import BenchPair
from visdiff.suite.results import is_finished, pair_row, write_results

log = logging.getLogger(__name__)

PAIRS_DIR = "pairs"
INPUT_KEYS = ("manifest", "group_a", "group_b", "filter_a", "filter_b", "set_a", "set_b", "root")


@dataclass
class BenchResult:
    output_dir: str
    rows: list[dict[str, Any]]  # one per pair, in suite order (results.parquet)
    summary: dict[str, Any]  # summary.json


def pair_dir(output_dir: str | Path, pair: BenchPair) -> Path:
    return Path(output_dir) / PAIRS_DIR / pair.id


def pair_config(base: DescribeConfig, pair: BenchPair, run_dir: Path) -> DescribeConfig:
    """The pair's describe config: `base` with the pair's images, ground truth and folder."""
    cfg = copy.deepcopy(base)
    for key in INPUT_KEYS:
        setattr(cfg.data, key, None)
    for key, value in pair.data.items():
        setattr(cfg.data, key, value)
    cfg.evaluate.ground_truth_a = pair.ground_truth_a
    cfg.evaluate.ground_truth_b = pair.ground_truth_b
    cfg.output_dir = str(run_dir)
    cfg.overwrite = True  # only unfinished (or, without resume, earlier) runs of this pair
    validate(cfg)
    return cfg


def _check(base: DescribeConfig, suite: list[BenchPair], concurrency: int) -> None:
    if not suite:
        raise ConfigError("the bench suite has no pairs")
    if base.evaluate.evaluator == "none":
        raise ConfigError(
            "visdiff bench scores each pair: set evaluate.evaluator=llm_judge (the paper's judge, "
            "evaluate.llm.*) or evaluate.evaluator=embedding (offline, no LLM)"
        )
    if concurrency < 1:
        raise ConfigError(f"--concurrency must be at least 1, got {concurrency}")


@contextmanager
def _shared_app(cfg: LLMConfig, say: Callable[[str], None]) -> Iterator[None]:
    """Deploy one Serve app for every pair; remove it after unless cfg.keep_running."""
    from visdiff.serving.launch import start_llm_app, stop_llm_app

    say(f"starting the shared Serve app '{cfg.app_name}' ({cfg.model})")
    say(f"'{cfg.app_name}' serving at {start_llm_app(cfg)}")
    try:
        yield
    finally:
        if not cfg.keep_running:
            stop_llm_app(cfg)


def _warm_up_ray() -> None:
    """Ray's serialisation context and Ray Data imported once here, before the pair threads."""
    import ray
    import ray.data  # noqa: F401

    ray.get(ray.put(0))


def run_bench(
    suite: list[BenchPair],
    base_config: DescribeConfig,
    *,
    output_dir: str | Path,
    concurrency: int = 2,
    resume: bool = True,
    progress: Callable[[str], None] | None = None,
) -> BenchResult:
    """Run every pair (up to `concurrency` at once) and write results.parquet, results.html and
    summary.json into `output_dir`. A failing pair is recorded (state failed, its error) and
    the others go on. Pair configs are checked before Ray starts."""
    from visdiff.pipeline.describe import describe
    from visdiff.pipeline.runtime import ray_runtime

    say = progress or log.info
    _check(base_config, suite, concurrency)
    out = Path(output_dir)
    shared = copy.deepcopy(base_config)
    serve_llm = shared.llm.backend == "serve"
    judge = shared.evaluate.llm
    serve_judge = (
        shared.evaluate.evaluator == "llm_judge"
        and judge.backend == "serve"
        and not judge_shares_llm(shared)
    )
    # Each pair finds the shared apps running and must leave them so.
    pair_base = copy.deepcopy(shared)
    pair_base.llm.keep_running = True
    pair_base.evaluate.llm.keep_running = True
    configs = {p.id: pair_config(pair_base, p, pair_dir(out, p)) for p in suite}
    done = {p.id for p in suite if resume and is_finished(pair_dir(out, p), needs_metrics=True)}
    todo = [p for p in suite if p.id not in done]
    say(f"bench: {len(suite)} pairs, {len(done)} already finished, {len(todo)} to run")
    rows: dict[str, dict[str, Any]] = {
        p.id: pair_row(p, pair_dir(out, p), seconds=None, resumed=True)
        for p in suite
        if p.id in done
    }
    lock = threading.Lock()

    def run_one(pair: BenchPair) -> None:
        run_dir = pair_dir(out, pair)
        started = time.perf_counter()
        error = None
        try:
            describe(configs[pair.id], progress=lambda line: say(f"[{pair.id}] {line}"))
        except Exception as exc:  # one pair's failure is its row's, the bench goes on
            error = first_line(exc, typed=True)
            say(f"[{pair.id}] failed: {error}")
        row = pair_row(
            pair, run_dir, seconds=time.perf_counter() - started, resumed=False, error=error
        )
        with lock:
            rows[pair.id] = row
        say(f"[{pair.id}] done: acc@1 {row['acc@1']}, acc@5 {row['acc@5']}")

    if todo:
        with ray_runtime(shared.ray), ExitStack() as apps:
            _warm_up_ray()
            if serve_llm:
                apps.enter_context(_shared_app(shared.llm, say))
            if serve_judge:
                apps.enter_context(_shared_app(judge, say))
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                list(pool.map(run_one, todo))
    ordered = [rows[p.id] for p in suite]
    summary = write_results(out, ordered)
    return BenchResult(str(out), ordered, summary)
