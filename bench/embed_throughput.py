"""Images/s of the Ray Data embedding stage vs the bare CLIP forward pass on the same machine.

Pipeline: `visdiff.pipeline.graph.embed_images` over `records_dataset` of generated JPEG files
(read, decode, preprocess, cache-less embed, materialise) through CLIP model actors started once,
as a describe run starts them (their start-up is reported: `pipeline_actor_startup_s`). Two bare
baselines in this process, same batch size and torch thread count: `forward` = `load_clip` +
`clip_image_embeddings` on tensors preprocessed beforehand (the model's pace), and `serial` =
read + decode + preprocess + forward, batch after batch (the best plain serial program). Weights
are random (offline) but the architecture is real-size, so compute costs what it costs.

A first, untimed `embed_images` call absorbs one-off costs (Ray Data's first execution, worker
imports, the first forward pass). The ratio uses the pipeline's steady-state rate
(N - W) / (t(N) - t(W)), t(W) being a call over one batch (W images): both calls pay the same
per-call start-up (Ray Data's stage actors), which the difference cancels; `ratio_end_to_end`
includes it. The 1-minute load is recorded; above the core count the run is marked `noisy` and
claims no target.

On CPU-only nodes the pipeline runs one single-threaded model actor per core (`--num-actors`,
default: the core count; `clip.num_actors` in a run): one process whose torch threads span every
core loses far more to Ray's own processes than their CPU time, because any of them preempting
one thread stalls the others at the next barrier (measured here: 1 actor x 2 threads reached
0.83 of the bare forward pass, 2 actors x 1 thread 0.94 end to end). The bare baselines keep
`--threads` (default: every core) in one process: the best a plain program does.

    python bench/embed_throughput.py [--quick] [--threads T] [--num-actors K] [--batch-size B]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

TARGET = 0.9  # pipeline steady-state images/s over bare forward-pass images/s
IMAGE_SIZE = 256


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run (< 1 min on 2 cores)")
    parser.add_argument("--n", type=int, default=None, help="images (default 512, quick 128)")
    parser.add_argument("--arch", default=None, help="open_clip arch (ViT-B-32; quick ViT-S-32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads, bare and actor (cores)"
    )
    parser.add_argument("--num-decoders", type=int, default=1, help="clip.num_decoders")
    parser.add_argument(
        "--num-actors", type=int, default=None, help="clip.num_actors (default: cores)"
    )
    parser.add_argument(
        "--actor-threads", type=int, default=None, help="torch threads per actor (threads/K)"
    )
    parser.add_argument("--clip-num-cpus", type=float, default=1.0, help="clip.num_cpus")
    parser.add_argument(
        "--ray-default-threads",
        action="store_true",
        help="do not pass OMP_NUM_THREADS to the workers: Ray's default (= the actor's num_cpus)",
    )
    parser.add_argument("--ray-cpus", type=int, default=None, help="local Ray CPU slots")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def preprocessed_tensors(records: list, transform):
    """The forward baseline's input: every image decoded and preprocessed up front (untimed)."""
    import torch

    from visdiff.sources.decode import read_and_decode

    return torch.stack([transform(read_and_decode(r.uri)) for r in records])


def bare_forward_seconds(bundle, pixels, batch_size: int) -> float:
    from visdiff.models.clip import clip_image_embeddings

    started = time.perf_counter()
    for start in range(0, pixels.shape[0], batch_size):
        clip_image_embeddings(bundle, pixels[start : start + batch_size])
    return time.perf_counter() - started


def bare_serial_seconds(bundle, transform, records: list, batch_size: int) -> float:
    """Read, decode, preprocess and embed one batch after the other: the plain serial program."""
    import torch

    from visdiff.models.clip import clip_image_embeddings
    from visdiff.sources.decode import read_and_decode

    started = time.perf_counter()
    for start in range(0, len(records), batch_size):
        batch = records[start : start + batch_size]
        pixels = torch.stack([transform(read_and_decode(r.uri)) for r in batch])
        clip_image_embeddings(bundle, pixels)
    return time.perf_counter() - started


def pipeline_run(records: list, clip_cfg, actors) -> tuple[float, object]:
    from visdiff.pipeline.graph import embed_images, records_dataset

    started = time.perf_counter()
    embedded = embed_images(records_dataset(records), clip_cfg, actors=actors)
    seconds = time.perf_counter() - started
    if embedded.num_rows != len(records) or embedded.skipped:
        raise RuntimeError(f"pipeline embedded {embedded.num_rows}/{len(records)} images")
    return seconds, embedded


def main() -> None:
    args = parse_args()
    _common.setup_paths()
    import numpy as np
    import torch

    from visdiff.config import ClipConfig
    from visdiff.models.clip import build_eval_transform, clip_image_embeddings, load_clip
    from visdiff.pipeline.actors import clip_model_actors
    from visdiff.sources.folders import list_folder

    n = args.n or (128 if args.quick else 512)
    arch = args.arch or ("ViT-S-32" if args.quick else "ViT-B-32")
    threads = args.threads or os.cpu_count() or 1
    num_actors = args.num_actors or os.cpu_count() or 1
    actor_threads = args.actor_threads or max(1, threads // num_actors)
    config = {
        "benchmark": "embed_throughput",
        "n": n,
        "arch": arch,
        "pretrained": None,
        "batch_size": args.batch_size,
        "torch_threads": threads,
        "num_actors": num_actors,
        "actor_torch_threads": "ray default (clip.num_cpus)"
        if args.ray_default_threads
        else actor_threads,
        "num_decoders": args.num_decoders,
        "clip_num_cpus": args.clip_num_cpus,
        "ray_cpus": args.ray_cpus,
        "ray_default_threads": args.ray_default_threads,
        "image_size": IMAGE_SIZE,
        "seed": args.seed,
    }
    _common.say(f"embed_throughput: {config}")
    torch.manual_seed(args.seed)
    torch.set_num_threads(threads)
    clip_cfg = ClipConfig(
        arch=arch,
        pretrained=None,
        batch_size=args.batch_size,
        num_decoders=args.num_decoders,
        num_actors=num_actors,
        num_cpus=args.clip_num_cpus,
    )
    root = _common.BENCH_CACHE / f"embed_n{n}_s{IMAGE_SIZE}_seed{args.seed}"
    folder_a, folder_b = _common.jpeg_folders(root, n // 2, IMAGE_SIZE, args.seed)
    records = list_folder(str(folder_a), "a", "set_a") + list_folder(str(folder_b), "b", "set_b")
    _common.say(f"{len(records)} JPEGs ({IMAGE_SIZE}x{IMAGE_SIZE}) in {root}")

    # Bare paths: model load and one warm-up batch untimed; each timed pass is split in two
    # halves, before and after the pipeline, so that drifting machine load hits every side.
    transform = build_eval_transform(clip_cfg)
    pixels = preprocessed_tensors(records, transform)
    started = time.perf_counter()
    bundle = load_clip(clip_cfg)
    load_s = time.perf_counter() - started
    clip_image_embeddings(bundle, pixels[: args.batch_size])
    half = (len(records) // 2 // args.batch_size) * args.batch_size or len(records)
    forward_first = bare_forward_seconds(bundle, pixels[:half], args.batch_size)
    serial_first = bare_serial_seconds(bundle, transform, records[:half], args.batch_size)
    _common.say(
        f"bare, first half: forward {half / forward_first:.2f} images/s, "
        f"serial decode+preprocess+forward {half / serial_first:.2f} images/s"
    )

    warm = args.batch_size * num_actors  # one batch per model actor: t(W) is one batch's time
    worker_env = {} if args.ray_default_threads else {"OMP_NUM_THREADS": str(actor_threads)}
    with _common.local_ray(args.ray_cpus, object_store_mb=1024, env_vars=worker_env) as ray_info:
        started = time.perf_counter()
        with clip_model_actors(clip_cfg) as actors:
            startup = actors.startup_seconds()
            actors_s = time.perf_counter() - started
            _common.say(f"CLIP model actors ready in {actors_s:.1f} s ({startup})")
            first_s, _ = pipeline_run(records[:warm], clip_cfg, actors)
            _common.say(f"pipeline warm-up call on {warm} images (untimed): {first_s:.1f} s")
            small_s, _ = pipeline_run(records[:warm], clip_cfg, actors)
            _common.say(
                f"pipeline on {warm} images (per-call start-up + one batch per actor): "
                f"{small_s:.1f} s"
            )
            with _common.CpuSampler() as sampler:
                full_s, embedded = pipeline_run(records, clip_cfg, actors)
            cpu = sampler.by_group()
            _common.say(f"pipeline on {len(records)} images: {full_s:.1f} s; CPU s: {cpu}")
            rows = embedded.dataset.select_columns(["id", "embedding"]).take_all()

    forward_second = bare_forward_seconds(bundle, pixels[half:], args.batch_size)
    serial_second = bare_serial_seconds(bundle, transform, records[half:], args.batch_size)
    rest = len(records) - half
    forward_rate = len(records) / (forward_first + forward_second)
    serial_rate = len(records) / (serial_first + serial_second)
    _common.say(
        f"bare, second half: forward {rest / max(forward_second, 1e-9):.2f} images/s, "
        f"serial {rest / max(serial_second, 1e-9):.2f} images/s"
    )

    # Same weights and preprocessing on both sides: the embeddings must agree.
    index = {r.id: i for i, r in enumerate(records)}
    reference = clip_image_embeddings(bundle, pixels[: args.batch_size])
    got = {row["id"]: np.asarray(row["embedding"]) for row in rows}
    max_diff = max(
        float(np.abs(got[r.id] - reference[index[r.id]]).max()) for r in records[: args.batch_size]
    )

    steady_rate = (len(records) - warm) / max(full_s - small_s, 1e-9)
    per_call_s = max(small_s - warm / steady_rate, 0.0)
    value = steady_rate / forward_rate
    result = {
        **config,
        "quick": args.quick,
        "n": len(records),
        "ray": ray_info,
        "bare_images_per_s": round(forward_rate, 3),
        "bare_serial_images_per_s": round(serial_rate, 3),
        "bare_model_load_s": round(load_s, 2),
        "pipeline_actor_startup_s": round(actors_s, 2),
        "pipeline_actor_startup": startup,
        "pipeline_images_per_s": round(steady_rate, 3),
        "pipeline_end_to_end_images_per_s": round(len(records) / full_s, 3),
        "pipeline_seconds": round(full_s, 2),
        "pipeline_first_call_seconds": round(first_s, 2),
        "pipeline_one_batch_seconds": round(small_s, 2),
        "pipeline_startup_s": round(per_call_s, 2),
        # The profile of the timed call: CPU seconds per process (the model actor's share of
        # the cores over the call, and what every other process took from those cores).
        "pipeline_cpu_seconds_by_process": cpu,
        "model_actor_core_share": round(
            cpu.get("ray::ClipModelActor", 0.0) / max(full_s * (os.cpu_count() or 1), 1e-9), 3
        ),
        "other_processes_cpu_s": round(sum(cpu.values()) - cpu.get("ray::ClipModelActor", 0.0), 2),
        "ratio": round(value, 4),
        "ratio_vs_serial": round(steady_rate / serial_rate, 4),
        "ratio_end_to_end": round((len(records) / full_s) / forward_rate, 4),
        "ratio_definition": "pipeline steady-state images/s / bare forward images/s",
        "embedding_max_abs_diff": max_diff,
        "target": f"ratio >= {TARGET}",
        "meets_target": bool(value >= TARGET),
        "config_hash": _common.config_hash(config),
        "machine": _common.machine(),
    }
    _common.say(
        f"bare forward {forward_rate:.2f} img/s, bare serial {serial_rate:.2f} img/s, pipeline "
        f"{steady_rate:.2f} img/s steady ({len(records) / full_s:.2f} end to end): ratio "
        f"{value:.3f} (target >= {TARGET}), vs serial {steady_rate / serial_rate:.3f}"
    )
    _common.print_result(result)


if __name__ == "__main__":
    main()
