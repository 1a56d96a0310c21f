"""Driver memory of `visdiff describe` over WebDataset shards: does it grow with the input size?

Two `describe` runs (the library function, tiny models, the run's own Serve LLM, one proposer
round, shard alt-text as captions so the captioner is not the bottleneck, no cap on the images
ranked) over N_small and N_large generated images in img2dataset-style tar shards. The driver
only ever holds shard URIs, per-block counts and merged partial statistics, so its peak RSS,
sampled in a background thread during each run, should not depend on N.

Target: peak driver RSS of the large run at most 1.2x that of the small run, or at most
+150 MB over it (either passes: the driver's baseline of Ray, Serve and imports is a few hundred
MB, so a pure ratio is lenient and a pure difference is strict for a tiny baseline).

Each run is a fresh process with its own local Ray (this script re-invokes itself with
`--single N`): within one process the first run would carry every one-off cost (imports of
torch, open_clip, Serve) and its freed memory could hide growth in the second.

Shards are generated once under /tmp/visdiff-bench (N_large images) and reused; the small run
reads the first shards of the same folders.

    python bench/stream_memory.py [--quick] [--sizes 10000,100000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

RATIO_LIMIT = 1.2
GROWTH_LIMIT_MB = 150.0
SIZES = {"full": (10**4, 10**5), "quick": (10**3, 10**4)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^3 vs 10^4 images")
    parser.add_argument("--sizes", default=None, help="two totals (both sets), e.g. 10000,100000")
    parser.add_argument("--per-shard", type=int, default=1000, help="images per tar shard")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--num-samples", type=int, default=4, help="propose.num_samples")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--single", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--shards-root", default=None, help=argparse.SUPPRESS)
    return parser.parse_args()


def shard_pattern(folder: Path, count: int) -> str:
    if count == 1:
        return str(folder / "00000.tar")
    return f"{folder}/{{00000..{count - 1:05d}}}.tar"


def run_single(args: argparse.Namespace) -> None:
    """One describe run over `args.single` images; prints its figures as the last line."""
    from visdiff.config import load_config
    from visdiff.pipeline.describe import describe

    n = int(args.single)
    root = Path(args.shards_root)
    shards = (n // 2) // args.per_shard
    port = _common.free_port()
    out = Path(tempfile.mkdtemp(prefix="visdiff-bench-stream-"))
    with _common.local_ray() as ray_info:
        cfg = load_config(
            None,
            [
                "models=tiny",
                f"data.set_a={shard_pattern(root / 'a', shards)}",
                f"data.set_b={shard_pattern(root / 'b', shards)}",
                "data.max_num_samples=0",
                "caption.source=manifest",
                "llm.backend=serve",
                f"llm.http_port={port}",
                "propose.num_rounds=1",
                f"propose.num_samples={args.num_samples}",
                f"seed={args.seed}",
                f"output_dir={out / f'run_{n}'}",
            ],
        )
        _common.say(f"describe over {n} images ({shards} shards per set)")
        with _common.RssSampler(interval_s=0.05) as memory:
            started = time.perf_counter()
            result = describe(cfg, progress=lambda m: _common.say(f"  {m}"))
            seconds = time.perf_counter() - started
    shutil.rmtree(out, ignore_errors=True)
    ranked = sum(s["ranked"] for s in result.stats["images"].values())
    if ranked != n:
        raise RuntimeError(f"describe ranked {ranked} of {n} images")
    run = {
        "images": n,
        "shards_per_set": shards,
        "seconds": round(seconds, 2),
        "images_per_s": round(n / seconds, 1),
        "stage_seconds": result.stats["seconds"],
        "hypotheses": len(result.ranked),
        "auroc_exact": bool(result.ranked and result.ranked[0].get("auroc_exact")),
        "ray": ray_info,
        "lifetime_peak_rss_mb": round(_common.lifetime_peak_rss_bytes() / _common.MB, 1),
        **memory.as_dict(),
    }
    _common.say(
        f"N={n}: {seconds:.1f} s ({run['images_per_s']} images/s), driver RSS peak "
        f"{run['rss_peak_mb']} MB (private {run['anon_rss_peak_mb']} MB)"
    )
    _common.print_result(run)


def main() -> None:
    args = parse_args()
    _common.setup_paths()
    if args.single is not None:
        run_single(args)
        return

    sizes = (
        [int(s) for s in args.sizes.split(",")]
        if args.sizes
        else list(SIZES["quick" if args.quick else "full"])
    )
    small_per_set = min(sizes) // 2
    per_shard = min(args.per_shard, small_per_set)
    if any((n // 2) % per_shard for n in sizes):
        raise SystemExit(f"sizes {sizes} must be even multiples of 2 x {per_shard} images")
    config = {
        "benchmark": "stream_memory",
        "sizes": sizes,
        "per_shard": per_shard,
        "image_size": args.image_size,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    _common.say(f"stream_memory: {config}")
    started = time.perf_counter()
    root = (
        _common.BENCH_CACHE
        / f"shards_n{max(sizes)}_p{per_shard}_s{args.image_size}_seed{args.seed}"
    )
    folder_a, folder_b = _common.webdataset_shards(
        root, max(sizes) // 2, per_shard, args.image_size, args.seed
    )
    _common.say(f"shards ready in {root} ({time.perf_counter() - started:.1f} s)")

    runs = []
    for n in sizes:
        command = [sys.executable, __file__, "--single", str(n), "--shards-root", str(root)]
        command += ["--per-shard", str(per_shard), "--num-samples", str(args.num_samples)]
        command += ["--seed", str(args.seed)]
        _common.say(f"describe over {n} images in a fresh process")
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [line for line in done.stdout.splitlines() if line.strip()]
        for line in lines[:-1]:
            _common.say(f"  | {line}")
        if done.returncode != 0:
            sys.stderr.write(done.stderr[-5000:])
            raise SystemExit(f"the run over {n} images failed (exit {done.returncode})")
        runs.append(json.loads(lines[-1]))

    small, large = runs[0], runs[-1]
    value = large["rss_peak_mb"] / small["rss_peak_mb"]
    growth = large["rss_peak_mb"] - small["rss_peak_mb"]
    meets = bool(value <= RATIO_LIMIT or growth <= GROWTH_LIMIT_MB)
    result = {
        "benchmark": "stream_memory",
        "quick": args.quick,
        "runs": runs,
        "ratio": round(value, 4),
        "ratio_definition": "peak driver RSS, large run / small run",
        "peak_rss_growth_mb": round(growth, 1),
        "anon_rss_peak_growth_mb": round(large["anon_rss_peak_mb"] - small["anon_rss_peak_mb"], 1),
        "target": f"ratio <= {RATIO_LIMIT} or growth <= {GROWTH_LIMIT_MB:.0f} MB",
        "meets_target": meets,
        "config_hash": _common.config_hash(config),
        "machine": _common.machine(),
    }
    _common.say(
        f"peak driver RSS {small['rss_peak_mb']} -> {large['rss_peak_mb']} MB: ratio {value:.3f}, "
        f"{growth:+.1f} MB (target ratio <= {RATIO_LIMIT} or <= +{GROWTH_LIMIT_MB:.0f} MB)"
    )
    _common.print_result(result)


if __name__ == "__main__":
    main()
