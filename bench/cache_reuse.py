"""Embedding cache reuse: two `describe` runs over the same images with the same `cache.root`.

Run 1 starts from an empty cache (fresh temp folder) and embeds every image; run 2 must find
every embedding in the cache (misses == 0) and so spend far less time in the embedding stage.
CLIP is a real-size architecture with random weights (ViT-B-32; quick: ViT-S-32 so that it
fits in a minute on 2 cores) so that embedding is the dominant cost, as in production; the
captioner and LLM are the tiny preset's.

Target: run 2 has no cache misses and `stats["seconds"]["embed_images"]` of run 1 / run 2 >= 2.
Also reported: the cache's data files after each run (`cache_files`; writes are buffered, one file
per touched hash bucket per flush, so this stays near 256 per flush, not per batch).

    python bench/cache_reuse.py [--quick] [--n 2000] [--arch ViT-B-32]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

SPEEDUP_TARGET = 2.0
IMAGE_SIZE = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="300 images, ViT-S-32")
    parser.add_argument("--n", type=int, default=None, help="images, both sets (1000; quick 300)")
    parser.add_argument("--arch", default=None, help="open_clip arch (ViT-B-32; quick ViT-S-32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-samples", type=int, default=4, help="propose.num_samples")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def _data_files(root: Path) -> int:
    """Data files in the cache (embeddings and captions), temp files of writers left out."""
    return sum(1 for p in root.rglob("*.parquet") if not p.name.startswith((".", "_")))


def main() -> None:
    args = parse_args()
    _common.setup_paths()
    from visdiff.config import load_config
    from visdiff.pipeline.describe import describe

    n = args.n or (300 if args.quick else 1000)
    arch = args.arch or ("ViT-S-32" if args.quick else "ViT-B-32")
    config = {
        "benchmark": "cache_reuse",
        "n": n,
        "arch": arch,
        "batch_size": args.batch_size,
        "image_size": IMAGE_SIZE,
        "num_samples": args.num_samples,
        "seed": args.seed,
    }
    _common.say(f"cache_reuse: {config}")
    root = _common.BENCH_CACHE / f"cache_n{n}_s{IMAGE_SIZE}_seed{args.seed}"
    folder_a, folder_b = _common.jpeg_folders(root, n // 2, IMAGE_SIZE, args.seed)
    cache_root = Path(tempfile.mkdtemp(prefix="visdiff-bench-cache-"))
    out = Path(tempfile.mkdtemp(prefix="visdiff-bench-runs-"))
    port = _common.free_port()
    runs = []
    try:
        with _common.local_ray() as ray_info:
            for index in (1, 2):
                cfg = load_config(
                    None,
                    [
                        "models=tiny",
                        f"clip.arch={arch}",
                        "clip.pretrained=null",
                        f"clip.batch_size={args.batch_size}",
                        f"data.set_a={folder_a}",
                        f"data.set_b={folder_b}",
                        "data.max_num_samples=0",
                        f"cache.root={cache_root}",
                        f"llm.http_port={port}",
                        "propose.num_rounds=1",
                        f"propose.num_samples={args.num_samples}",
                        f"seed={args.seed}",
                        f"output_dir={out / f'run_{index}'}",
                    ],
                )
                _common.say(f"run {index}: describe over {n} images, cache at {cache_root}")
                started = time.perf_counter()
                result = describe(cfg, progress=lambda m: _common.say(f"  {m}"))
                wall = time.perf_counter() - started
                run = {
                    "run": index,
                    "embed_seconds": result.stats["seconds"]["embed_images"],
                    "total_seconds": result.stats["total_seconds"],
                    "wall_seconds": round(wall, 2),
                    "cache": result.stats["cache"],
                    "cache_files": _data_files(cache_root),
                    "stage_seconds": result.stats["seconds"],
                }
                runs.append(run)
                _common.say(
                    f"run {index}: embed {run['embed_seconds']:.1f} s, total "
                    f"{run['total_seconds']:.1f} s, cache {run['cache']}, "
                    f"{run['cache_files']} cache files"
                )
    finally:
        shutil.rmtree(cache_root, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)

    first, second = runs
    speedup = first["embed_seconds"] / max(second["embed_seconds"], 1e-9)
    misses = int(second["cache"]["misses"])
    meets = bool(misses == 0 and speedup >= SPEEDUP_TARGET)
    result = {
        "benchmark": "cache_reuse",
        "quick": args.quick,
        "n": n,
        "arch": arch,
        "runs": runs,
        "run2_misses": misses,
        "run2_hits": int(second["cache"]["hits"]),
        "cache_files_after_run1": first["cache_files"],
        "ratio": round(speedup, 3),
        "ratio_definition": "embed_images seconds, run 1 / run 2",
        "total_speedup": round(first["total_seconds"] / max(second["total_seconds"], 1e-9), 3),
        "target": f"run 2 misses == 0 and ratio >= {SPEEDUP_TARGET}",
        "meets_target": meets,
        "ray": ray_info,
        "config_hash": _common.config_hash(config),
        "machine": _common.machine(),
    }
    _common.say(
        f"embedding stage {first['embed_seconds']:.1f} s -> {second['embed_seconds']:.1f} s "
        f"(x{speedup:.2f}); run 2 hits {result['run2_hits']}, misses {misses}"
    )
    _common.print_result(result)


if __name__ == "__main__":
    main()
