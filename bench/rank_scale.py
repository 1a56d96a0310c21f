"""Ranking at scale: `score_hypotheses` over N synthetic embeddings per set, for growing N.

The embeddings are generated on the Ray workers (never on the driver) and materialised before
timing, like the output of the embedding stage; H hypotheses get random unit text embeddings.
The score stage reduces every block to mergeable partial statistics and the driver merges them
one at a time, so driver memory should stay flat in N (above `RankConfig.exact_cap` images the
exact per-image scores are dropped for histograms) and time should grow linearly.

Targets: peak driver RSS during scoring at the largest N at most +200 MB over the smallest N
(a fixed allowance rather than a ratio: the driver's baseline, ~300 MB of Ray and imports,
would make a ratio meaningless), seconds per image at the largest N at most 1.5x those at
the smallest N (time at most linear; fixed start-up costs make small N slower per image), and
at N = 10^5 per set (else the largest N) `score_hypotheses` within 2x the floor measured in
the same process: the bare float32 matmul of the same shapes plus one sort per hypothesis of
its concatenated scores (best of 3 each). Each size also times the pure path (no Ray:
`ScorePartials.from_scores` per block of `SCORE_BATCH_ROWS`, `merge_all`, `finalize`) while
the exact path holds, to separate Ray's share.
The 1-minute load of each size and of the whole run is recorded (`_common.load_verdict`); a
busy machine claims no target (`noisy` true, `meets_target` false, `meets_target_reason`).

Each N runs in a fresh process with its own local Ray (the script re-invokes itself with
`--single N`), so that memory kept or freed by one size cannot be charged to another.
`--smoke` (the test suite's) runs its two small sizes in this one process with one Ray and
one timed call each: it keeps the script working, its figures prove nothing. Its larger size
is past `SCORE_BATCH_ROWS`, so the pipeline's Ray path runs, not only the driver's fold.

    python bench/rank_scale.py [--quick | --smoke] [--sizes 10000,100000] [--dim 64]
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

MEMORY_ALLOWANCE_MB = 200.0
TIME_RATIO_LIMIT = 1.5
FLOOR_RATIO_LIMIT = 2.0
FLOOR_TARGET_N = 10**5
SIZES = {"full": (10**4, 10**5, 10**6), "quick": (10**3, 10**4, 10**5), "smoke": (10**3, 2 * 10**4)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true", help="N = 10^3, 10^4, 10^5 per set")
    mode.add_argument(
        "--smoke", action="store_true", help="N = 10^3, 2x10^4 in one process (the test suite)"
    )
    parser.add_argument("--sizes", default=None, help="comma-separated N per set (overrides)")
    parser.add_argument("--hypotheses", type=int, default=100)
    parser.add_argument("--dim", type=int, default=64, help="embedding dimension")
    parser.add_argument("--rows-per-block", type=int, default=4096)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="pipeline timings, best kept (3, as the floor; smoke: 1)",
    )
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def synthetic_embeddings(
    batch: dict[str, Any], *, n_per_set: int, dim: int, seed: int
) -> dict[str, Any]:
    """Rows of the embedding stage's output for ids 0..2N-1: the first N are set A, whose
    vectors lean a little along the first axis so that the AUROCs are not all 0.5."""
    import numpy as np

    ids = np.asarray(batch["id"], dtype=np.int64)
    rng = np.random.default_rng([seed, int(ids[0]) if len(ids) else 0])
    is_a = ids < n_per_set
    vectors = rng.standard_normal((len(ids), dim), dtype=np.float32)
    vectors[is_a, 0] += 0.5
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    sets = np.where(is_a, "a", "b").astype(object)
    names = np.array([f"{s}/{i}" for s, i in zip(sets, ids, strict=True)], dtype=object)
    return {
        "id": names,
        "set": sets,
        "uri": np.array([f"synthetic://{name}" for name in names], dtype=object),
        "error": np.full(len(ids), "", dtype=object),
        "embedding": vectors,
        "from_cache": np.zeros(len(ids), dtype=bool),
    }


def embedded_images(n_per_set: int, dim: int, rows_per_block: int, seed: int):
    import ray.data

    from visdiff.pipeline.graph import EmbeddedImages

    total = 2 * n_per_set
    ds = ray.data.range(total, override_num_blocks=max(2, math.ceil(total / rows_per_block)))
    ds = ds.map_batches(
        synthetic_embeddings,
        fn_kwargs={"n_per_set": n_per_set, "dim": dim, "seed": seed},
        batch_size=None,
        batch_format="numpy",
    ).materialize()
    return EmbeddedImages(ds, total, {"a": n_per_set, "b": n_per_set})


def best_of(repeats: int, work: Any) -> float:
    """Fastest of `repeats` timed calls: the least disturbed by other processes."""
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        best = min(best, time.perf_counter() - started)
    return best


def floor_and_pure(n: int, args: argparse.Namespace, text: Any, rank_cfg: Any) -> dict[str, Any]:
    """The floor (bare float32 matmul + one sort per hypothesis of its 2N scores) and, on the
    exact path, the pure path (same statistics without Ray) for 2N synthetic embeddings."""
    import numpy as np

    from visdiff.pipeline.graph import SCORE_BATCH_ROWS
    from visdiff.rank.partials import ScorePartials, merge_all

    rows = synthetic_embeddings(
        {"id": np.arange(2 * n)}, n_per_set=n, dim=args.dim, seed=args.seed + 1
    )
    embeddings = np.ascontiguousarray(rows["embedding"], dtype=np.float32)
    is_a = rows["set"] == "a"
    del rows
    # Either product layout may be the faster one for BLAS: the floor takes the faster.
    matmul_s = min(best_of(3, lambda: text @ embeddings.T), best_of(3, lambda: embeddings @ text.T))
    scores = text @ embeddings.T  # (H, 2N): one contiguous row per hypothesis
    sort_s = best_of(3, lambda: np.sort(scores, axis=1))
    figures = {
        "floor_matmul_seconds": round(matmul_s, 4),
        "floor_sort_seconds": round(sort_s, 4),
        "floor_seconds": round(matmul_s + sort_s, 4),
        "pure_seconds": None,
        "pure_finalize_seconds": None,
    }
    if 2 * n <= rank_cfg.exact_cap:
        options = {
            "threshold": rank_cfg.classify_threshold,
            "num_bins": rank_cfg.histogram_bins,
            "exact_cap": rank_cfg.exact_cap,
        }
        hypotheses = [f"hypothesis {j:03d}" for j in range(args.hypotheses)]
        step = SCORE_BATCH_ROWS  # blocks as the score stage makes them, in its layout: an
        started = time.perf_counter()  # (n, H) view of the (H, n) product (see from_scores)
        partials = merge_all(
            ScorePartials.from_scores(
                (text @ embeddings[i : i + step].T).T, is_a[i : i + step], **options
            )
            for i in range(0, 2 * n, step)
        )
        finalize_s = best_of(1, lambda: partials.finalize(hypotheses))
        figures["pure_seconds"] = round(time.perf_counter() - started, 4)
        figures["pure_finalize_seconds"] = round(finalize_s, 4)
    return figures


def _score_size(
    n: int, args: argparse.Namespace, hypotheses: list[str], text: Any, rank_cfg: Any
) -> tuple[int, int, float, float, list[Any], dict[str, Any]]:
    """Times `score_hypotheses` on N synthetic embeddings per set (Ray running)."""
    from visdiff.pipeline.graph import score_hypotheses

    started = time.perf_counter()
    embedded = embedded_images(n, args.dim, args.rows_per_block, args.seed)
    generate_s = time.perf_counter() - started
    blocks = embedded.dataset.num_blocks()
    gc.collect()
    ranked: list[Any] = []
    timings: list[float] = []  # every call: the first pays the workers' cold buffers
    with _common.RssSampler() as memory:
        for _ in range(args.repeats):
            started = time.perf_counter()
            ranked[:] = score_hypotheses(embedded, hypotheses, text, rank_cfg)
            timings.append(time.perf_counter() - started)
    seconds = min(timings)
    if {(s.n_a, s.n_b) for s in ranked} != {(n, n)} or len(ranked) != args.hypotheses:
        raise RuntimeError(f"N={n}: ranked counts do not match the input")
    return n, blocks, generate_s, seconds, ranked, {**memory.as_dict(), "timings": timings}


def run_sizes(sizes: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Scores each N of `sizes` in this process, under one local Ray: the figures per size."""
    import numpy as np

    from visdiff.config import RankConfig
    from visdiff.pipeline.graph import SCORE_BATCH_ROWS, score_hypotheses

    rank_cfg = RankConfig()
    rng = np.random.default_rng(args.seed)
    text = rng.standard_normal((args.hypotheses, args.dim)).astype(np.float32)
    text /= np.linalg.norm(text, axis=1, keepdims=True)
    hypotheses = [f"hypothesis {j:03d}" for j in range(args.hypotheses)]
    largest = max(sizes)
    store_mb = int(min(4096, max(512, 4 * largest * (args.dim * 4 + 64) / _common.MB)))
    start_load = os.getloadavg()[0]
    measured = []
    with _common.local_ray(object_store_mb=store_mb) as ray_info:
        if not args.smoke:  # smoke timings prove nothing: no time spent on warming up
            # Untimed warm-up: Ray Data's first execution and worker imports are one-off costs.
            # Past SCORE_BATCH_ROWS images, so that it runs the Ray path (tasks scoring slices
            # of the hypotheses; the driver, finalizing them, imports scipy.stats) and not only
            # the driver's fold; twice, as the tasks may land on other workers.
            warm = embedded_images(SCORE_BATCH_ROWS, args.dim, args.rows_per_block, args.seed)
            for _ in range(2):
                score_hypotheses(warm, hypotheses, text, rank_cfg)
        for n in sizes:
            measured.append(_score_size(n, args, hypotheses, text, rank_cfg))
    runs = []
    for n, blocks, generate_s, seconds, ranked, memory in measured:
        floor = floor_and_pure(n, args, text, rank_cfg)  # after the memory window, Ray stopped
        timings = memory.pop("timings")
        exact = all(s.auroc_exact for s in ranked)
        run = {
            "n_per_set": n,
            "images": 2 * n,
            "blocks": blocks,
            "path": "exact" if exact else "histogram",
            "max_auroc_error_bound": max(s.auroc_error_bound for s in ranked),
            "top_auroc": ranked[0].auroc,
            "generate_seconds": round(generate_s, 2),
            "seconds": round(seconds, 3),
            "repeats": args.repeats,
            "seconds_each_call": [round(t, 3) for t in timings],
            "first_call_floor_ratio": round(timings[0] / floor["floor_seconds"], 3),
            "microseconds_per_image": round(seconds / (2 * n) * 1e6, 3),
            **floor,
            "floor_ratio": round(seconds / floor["floor_seconds"], 3),
            "pure_floor_ratio": (
                round(floor["pure_seconds"] / floor["floor_seconds"], 3)
                if floor["pure_seconds"]
                else None
            ),
            **_common.load_verdict(start_load),
            "ray": ray_info,
            **memory,
        }
        pure = f", pure path {floor['pure_seconds']:.2f} s" if floor["pure_seconds"] else ""
        _common.say(
            f"N={n:>8} per set: {run['path']:9} {seconds:7.2f} s "
            f"({run['microseconds_per_image']:.2f} us/image), driver RSS peak "
            f"{run['rss_peak_mb']} MB (+{run['rss_peak_growth_mb']} MB during scoring; private "
            f"{run['anon_rss_start_mb']} -> {run['anon_rss_peak_mb']} MB), "
            f"max AUROC error bound {run['max_auroc_error_bound']:.2e}; floor "
            f"{floor['floor_seconds']:.3f} s (matmul {floor['floor_matmul_seconds']:.3f} + sort "
            f"{floor['floor_sort_seconds']:.3f}), ratio {run['floor_ratio']:.2f} (best of "
            f"{args.repeats}; first call {timings[0]:.2f} s: {run['first_call_floor_ratio']:.2f})"
            f"{pure}"
        )
        runs.append(run)
    return runs


def run_single(args: argparse.Namespace) -> None:
    """Scores N = `args.single` per set in this process, with its own local Ray; prints the
    figures of that one size as the last line."""
    _common.print_result(run_sizes([int(args.single)], args)[0])


def sizes_in_subprocesses(sizes: list[int], args: argparse.Namespace) -> list[dict[str, Any]]:
    """One fresh process (and Ray) per N: memory kept by one size is not charged to the next."""
    runs = []
    for n in sizes:
        command = [sys.executable, __file__, "--single", str(n), "--seed", str(args.seed)]
        command += ["--hypotheses", str(args.hypotheses), "--dim", str(args.dim)]
        command += ["--rows-per-block", str(args.rows_per_block), "--repeats", str(args.repeats)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        if done.returncode != 0 or not lines:
            sys.stderr.write(done.stderr[-5000:])
            raise SystemExit(f"N={n} failed (exit {done.returncode})")
        for line in lines[:-1]:
            _common.say(line)
        runs.append(json.loads(lines[-1]))
    return runs


def main() -> None:
    args = parse_args()
    if args.repeats is None:
        args.repeats = 1 if args.smoke else 3
    args.repeats = max(1, args.repeats)
    _common.setup_paths()
    if args.single is not None:
        run_single(args)
        return
    import numpy as np

    from visdiff.config import RankConfig

    mode = "quick" if args.quick else "smoke" if args.smoke else "full"
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else list(SIZES[mode])
    rank_cfg = RankConfig()
    config = {
        "benchmark": "rank_scale",
        "sizes": sizes,
        "hypotheses": args.hypotheses,
        "dim": args.dim,
        "rows_per_block": args.rows_per_block,
        "exact_cap": rank_cfg.exact_cap,
        "histogram_bins": rank_cfg.histogram_bins,
        "seed": args.seed,
        "repeats": args.repeats,
    }
    _common.say(f"rank_scale ({mode}): {config}")
    runs = run_sizes(sizes, args) if args.smoke else sizes_in_subprocesses(sizes, args)

    small, large = runs[0], runs[-1]
    memory_growth = large["rss_peak_mb"] - small["rss_peak_mb"]
    max_growth = max(r["rss_peak_mb"] for r in runs) - small["rss_peak_mb"]
    time_ratio = large["microseconds_per_image"] / small["microseconds_per_image"]
    # Linear fit t = a + b * images: separates the fixed start-up from the per-image cost.
    images = np.array([r["images"] for r in runs], dtype=float)
    secs = np.array([r["seconds"] for r in runs], dtype=float)
    slope, intercept = np.polyfit(images, secs, 1) if len(runs) > 1 else (math.nan, math.nan)
    by_n = {r["n_per_set"]: r for r in runs}
    floor_run = by_n.get(FLOOR_TARGET_N, large)
    floor_ratio = floor_run["floor_ratio"]
    meets = bool(
        memory_growth <= MEMORY_ALLOWANCE_MB
        and time_ratio <= TIME_RATIO_LIMIT
        and floor_ratio <= FLOOR_RATIO_LIMIT
    )
    result = {
        "benchmark": "rank_scale",
        "mode": mode,
        "quick": args.quick,
        "hypotheses": args.hypotheses,
        "dim": args.dim,
        "rows_per_block": args.rows_per_block,
        "exact_cap": rank_cfg.exact_cap,
        "runs": runs,
        "peak_rss_growth_mb": round(memory_growth, 1),
        "peak_rss_ratio": _common.ratio(large["rss_peak_mb"], small["rss_peak_mb"]),
        "peak_rss_max_growth_mb": round(max_growth, 1),
        "anon_rss_peak_growth_mb": round(large["anon_rss_peak_mb"] - small["anon_rss_peak_mb"], 1),
        "ratio": round(time_ratio, 4),
        "ratio_definition": "seconds per image at the largest N / at the smallest N",
        "floor_ratio": floor_ratio,
        "floor_ratio_n_per_set": floor_run["n_per_set"],
        "floor_ratio_definition": (
            "score_hypotheses seconds (best of the repeats, as the floor's parts are best of 3) "
            "/ (bare float32 matmul + np.sort per hypothesis), same process, same shapes; "
            "first_call_floor_ratio: the first call, with the workers' buffers still cold"
        ),
        "fit_fixed_seconds": round(float(intercept), 3),
        "fit_microseconds_per_image": round(float(slope) * 1e6, 3),
        "target": (
            f"peak driver RSS(largest N) - peak(smallest N) <= {MEMORY_ALLOWANCE_MB:.0f} MB and "
            f"ratio <= {TIME_RATIO_LIMIT} and floor_ratio <= {FLOOR_RATIO_LIMIT} at "
            f"N = {FLOOR_TARGET_N} per set; none claimed when noisy"
        ),
        "meets_memory_target": bool(memory_growth <= MEMORY_ALLOWANCE_MB),
        "meets_time_target": bool(time_ratio <= TIME_RATIO_LIMIT),
        "meets_floor_target": bool(floor_ratio <= FLOOR_RATIO_LIMIT and not floor_run["noisy"]),
        "pure_floor_ratio": floor_run["pure_floor_ratio"],
        "first_call_floor_ratio": floor_run["first_call_floor_ratio"],
        "meets_target": meets,
        "noisy_runs": [r["n_per_set"] for r in runs if r["noisy"]],
        "config_hash": _common.config_hash(config),
        "machine": _common.machine(),
    }
    floor_verdict = "met" if floor_ratio <= FLOOR_RATIO_LIMIT else "missed"
    if floor_run["noisy"]:
        floor_verdict += ", not claimed: busy machine"
    _common.say(
        f"driver peak RSS growth {memory_growth:+.1f} MB (allowance {MEMORY_ALLOWANCE_MB:.0f}); "
        f"per-image time ratio largest/smallest {time_ratio:.3f} (limit {TIME_RATIO_LIMIT}); "
        f"fit: {intercept:.2f} s + {slope * 1e6:.2f} us/image; at N={floor_run['n_per_set']} "
        f"pipeline / floor {floor_ratio:.2f} (limit {FLOOR_RATIO_LIMIT}: {floor_verdict}; "
        f"pure path / floor {floor_run['pure_floor_ratio']})"
    )
    _common.print_result(result)


if __name__ == "__main__":
    main()
