"""GPU check: images/s of the CLIP stage callables (decode -> preprocess -> forward) against the
bare forward pass, per architecture, precision and batch size, with the GPU's memory.

No Ray: `ClipPreprocessor(cfg)(batch)` and `ClipImageEmbedder(cfg)(batch)` are called on numpy
batch dicts, as Ray Data's `map_batches` calls them. Weights are random (`pretrained=None`), the
inputs are synthetic photo-like JPEGs made in memory. Figures per (arch, precision, batch size):

  bare_img_s      `model.encode_image` on tensors already on the device (the ceiling)
  embedder_img_s  ClipImageEmbedder on preprocessed batches in host memory (copy in, forward,
                  normalise, copy out): what a model actor does once its inputs are there
  stage_img_s     ClipPreprocessor then ClipImageEmbedder, one after the other in this process

and once, before any model: ClipPreprocessor's images/s in 1..16 worker processes (and threads),
which says how many decode workers keep one GPU busy (`decode_workers_needed`). Sized for a lent
GPU machine (16 cores): the default run should take 2-4 minutes there; `--budget-s` skips the
configurations that no longer fit and lists them. `--device cpu` runs the same code on the CPU.

    python bench/gpu_check.py [--device cuda|cpu] [--archs A,B] [--precisions fp16,bf16]
                              [--batch-sizes 64,256] [--min-seconds 2] [--budget-s 300]
"""

from __future__ import annotations

import argparse
import gc
import math
import multiprocessing as mp
import os
import statistics
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import nullcontext
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common  # noqa: E402

_common.setup_paths()

import numpy as np  # noqa: E402

DEFAULT_ARCHS = ("ViT-B-32", "ViT-bigG-14")
CPU_ARCH = "visdiff-tiny-clip"  # ViT-bigG-14 in fp32 on a CPU would take many minutes
DEFAULT_BATCH_SIZES = {"ViT-B-32": (64, 256), "ViT-bigG-14": (32, 128)}
FALLBACK_BATCH_SIZES = (32,)
DECODE_TASK_ROWS = 32


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default=None, help="default: cuda if seen"
    )
    parser.add_argument(
        "--archs",
        default=None,
        help=f"open_clip archs, comma-separated (cuda: {','.join(DEFAULT_ARCHS)}; cpu: {CPU_ARCH})",
    )
    parser.add_argument(
        "--precisions", default=None, help="comma-separated; default fp16,bf16 on cuda, fp32 on cpu"
    )
    parser.add_argument(
        "--batch-sizes",
        default=None,
        help="comma-separated, for every arch (default: B-32 64,256; bigG-14 32,128; else 32)",
    )
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed span per figure")
    parser.add_argument(
        "--decode-workers", default="1,4,8,16", help="process counts (capped at the cores; 0: off)"
    )
    parser.add_argument(
        "--decode-threads", type=int, default=None, help="threads (default cores; 0: off)"
    )
    parser.add_argument("--image-size", type=int, default=256, help="side of the synthetic JPEGs")
    parser.add_argument(
        "--pool-images", type=int, default=64, help="distinct JPEGs, reused cyclically"
    )
    parser.add_argument(
        "--build-on",
        choices=("device", "cpu"),
        default="device",
        help="create the random weights on the device (fast) or on the CPU as load_clip alone does",
    )
    parser.add_argument(
        "--budget-s", type=float, default=300.0, help="skip what starts later than this"
    )
    parser.add_argument(
        "--out", default=None, help="JSON file (default $OUT/gpu_check.json if OUT set)"
    )
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------ inputs


def make_jpegs(count: int, size: int, seed: int) -> list[bytes]:
    rng = np.random.default_rng(seed)
    return [_common.jpeg_bytes(_common.photo_like(rng, size)) for _ in range(count)]


def make_batch(jpegs: list[bytes], start: int, rows: int) -> dict[str, np.ndarray]:
    """Rows as a source hands them to the preprocess stage: bytes in the row, no error yet."""
    from visdiff import schema

    keys = [f"{start + i:09d}" for i in range(rows)]
    return {
        schema.ID: np.array([f"a/{key}.jpg" for key in keys], dtype=object),
        schema.SET: np.array([schema.SET_A] * rows, dtype=object),
        schema.URI: np.array([f"mem://gpu_check/{key}.jpg" for key in keys], dtype=object),
        schema.CAPTION: np.array([""] * rows, dtype=object),
        schema.IMAGE_BYTES: np.array(
            [jpegs[(start + i) % len(jpegs)] for i in range(rows)], dtype=object
        ),
        schema.ERROR: np.array([""] * rows, dtype=object),
    }


def clip_config(arch: str, precision: str, batch_size: int, device: str):
    from visdiff.config import ClipConfig

    return ClipConfig(
        arch=arch,
        pretrained=None,
        precision=precision,
        batch_size=batch_size,
        num_gpus=1.0 if device == "cuda" else 0.0,
    )


# ------------------------------------------------------------------------------ decode scaling

_worker: dict[str, Any] = {}


def _decode_worker_init(arch: str, jpegs: list[bytes], ready) -> None:
    """One decode process as a Ray decode actor would be: one torch thread, warmed up."""
    import torch

    from visdiff.stages.embed import ClipPreprocessor

    torch.set_num_threads(1)
    try:
        preprocess = ClipPreprocessor(clip_config(arch, "fp32", DECODE_TASK_ROWS, "cpu"))
        preprocess(make_batch(jpegs, 0, DECODE_TASK_ROWS))
    except Exception as exc:  # tell the parent instead of dying (the pool would respawn us)
        ready.put(f"decode worker failed: {type(exc).__name__}: {exc}")
        raise
    _worker["preprocess"] = preprocess
    _worker["jpegs"] = jpegs
    ready.put(os.getpid())


def _decode_task(start: int) -> int:
    """Preprocess one batch; the pixels stay here (decode capacity, not transfer, is measured)."""
    from visdiff import schema

    out = _worker["preprocess"](make_batch(_worker["jpegs"], start, DECODE_TASK_ROWS))
    return int(sum(1 for error in out[schema.ERROR] if not error))


def run_lanes(lanes: int, min_seconds: float, one_task: Callable[[int], int]) -> dict[str, Any]:
    """`lanes` threads, each running tasks back to back until the deadline: at most `lanes`
    batches in flight. Returns images/s over the span from start to the last completion."""
    counter = iter(range(10**9))
    lock = threading.Lock()
    totals = [0] * lanes
    finished = [0.0] * lanes
    started = time.perf_counter()
    deadline = started + min_seconds

    def lane(index: int) -> None:
        while time.perf_counter() < deadline:
            with lock:
                start = next(counter) * DECODE_TASK_ROWS
            totals[index] += one_task(start)
            finished[index] = time.perf_counter()

    with ThreadPoolExecutor(lanes) as pool:
        list(pool.map(lane, range(lanes)))
    span = max(finished) - started
    return {"images": sum(totals), "seconds": round(span, 3), "img_s": round(sum(totals) / span, 1)}


def decode_scaling(
    arch: str, jpegs: list[bytes], workers: list[int], threads: int, min_seconds: float
) -> dict[str, Any]:
    """ClipPreprocessor throughput in 1..N spawned processes (one pool, N lanes) and N threads."""
    result: dict[str, Any] = {"rows_per_task": DECODE_TASK_ROWS, "processes": [], "threads": []}
    if workers:
        ctx = mp.get_context("spawn")  # no fork of a process that holds torch (or CUDA) state
        ready = ctx.Queue()
        started = time.perf_counter()
        with ctx.Pool(max(workers), _decode_worker_init, (arch, jpegs, ready)) as pool:
            for _ in range(max(workers)):  # every worker imported, built and warmed up
                message = ready.get(timeout=120)
                if isinstance(message, str):
                    raise RuntimeError(message)
            result["pool_start_s"] = round(time.perf_counter() - started, 2)

            def in_pool(start: int) -> int:
                return pool.apply(_decode_task, (start,))

            for count in workers:
                row = {"workers": count, **run_lanes(count, min_seconds, in_pool)}
                row["img_s_per_worker"] = round(row["img_s"] / count, 1)
                result["processes"].append(row)
                _common.say(f"  decode+preprocess, {count:2d} processes: {row['img_s']:8.1f} img/s")
    if threads:
        import torch

        from visdiff import schema
        from visdiff.stages.embed import ClipPreprocessor

        preprocess = ClipPreprocessor(clip_config(arch, "fp32", DECODE_TASK_ROWS, "cpu"))
        preprocess(make_batch(jpegs, 0, DECODE_TASK_ROWS))

        def in_thread(start: int) -> int:
            out = preprocess(make_batch(jpegs, start, DECODE_TASK_ROWS))
            return int(sum(1 for error in out[schema.ERROR] if not error))

        saved = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            row = {"threads": threads, **run_lanes(threads, min_seconds, in_thread)}
        finally:
            torch.set_num_threads(saved)
        result["threads"].append(row)
        _common.say(f"  decode+preprocess, {threads:2d} threads  : {row['img_s']:8.1f} img/s")
    single = [r["img_s"] for r in result["processes"] if r["workers"] == 1]
    result["img_s_one_process"] = single[0] if single else None
    return result


# ------------------------------------------------------------------------------ timing


def timed_rate(
    call: Callable[[], int], min_seconds: float, sync: Callable[[], None], warmup: int = 2
) -> float:
    """Median images/s of three timed spans, each about min_seconds / 3, after `warmup` calls
    and at least min_seconds / 4 of warm-up (clocks, allocator, kernel selection)."""
    warm_until = time.perf_counter() + min_seconds / 4
    done = 0
    while done < warmup or time.perf_counter() < warm_until:
        call()
        sync()
        done += 1
    started = time.perf_counter()
    call()
    sync()
    one = max(time.perf_counter() - started, 1e-6)
    reps = max(1, math.ceil(min_seconds / 3 / one))
    rates = []
    for _ in range(3):
        images = 0
        started = time.perf_counter()
        for _ in range(reps):
            images += call()
        sync()
        rates.append(images / (time.perf_counter() - started))
    return statistics.median(rates)


def vision_flops_per_image(arch: str) -> float | None:
    """Multiply-adds x 2 of a ViT image tower: patch embedding, qkv/out/MLP, attention."""
    import open_clip

    cfg = (open_clip.get_model_config(arch) or {}).get("vision_cfg", {})
    try:
        width, layers, patch = int(cfg["width"]), int(cfg["layers"]), int(cfg["patch_size"])
    except (KeyError, TypeError):
        return None
    size = cfg.get("image_size", 224)
    side = size[0] if isinstance(size, (list, tuple)) else size
    tokens = (int(side) // patch) ** 2 + 1
    mlp_ratio = float(cfg.get("mlp_ratio", 4.0))
    per_token_layer = (4 + 2 * mlp_ratio) * width**2 + 2 * tokens * width
    macs = layers * tokens * per_token_layer + (tokens - 1) * 3 * patch**2 * width
    return 2.0 * macs


def matmul_ceiling_tflops() -> float:
    """bf16 8192^3 matrix products on random data: the card's practical arithmetic ceiling,
    to read `bare_tflops` against (also brings the clocks up before the first model)."""
    import torch

    a, b = (torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    for _ in range(5):
        a @ b
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(3):
        start.record()
        for _ in range(20):
            a @ b
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000 / 20)
    del a, b
    torch.cuda.empty_cache()
    return round(2 * 8192**3 / statistics.median(times) / 1e12, 1)


def gpu_info() -> dict[str, Any] | None:
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(0)
    free, total = torch.cuda.mem_get_info()
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multiprocessors": props.multi_processor_count,
        "total_memory_gb": round(total / 1024**3, 2),
        "free_memory_gb_at_start": round(free / 1024**3, 2),
        "cuda": torch.version.cuda,
    }


# ------------------------------------------------------------------------------ one model


class Budget:
    def __init__(self, seconds: float) -> None:
        self.started = time.perf_counter()
        self.seconds = seconds
        self.skipped: list[str] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def allows(self, what: str) -> bool:
        if self.elapsed() < self.seconds:
            return True
        self.skipped.append(what)
        _common.say(f"  budget {self.seconds:.0f} s spent: skipping {what}")
        return False


def build_embedder(cfg, device: str, build_on: str):
    """ClipImageEmbedder with its model loaded now (it loads lazily), timed. With build_on=device
    the random weights are drawn on the GPU instead of in fp32 on the CPU first (ViT-bigG-14:
    2.5 B parameters, 10 GB of random numbers); if that fails, the CPU way is used."""
    import torch

    from visdiff.stages.embed import ClipImageEmbedder

    on_device = build_on == "device" and device == "cuda"
    started = time.perf_counter()
    embedder = ClipImageEmbedder(cfg)
    try:
        with torch.device(device) if on_device else nullcontext():
            bundle = embedder.bundle
    except Exception as exc:
        if not on_device:
            raise
        _common.say(f"  building on {device} failed ({type(exc).__name__}: {exc}); CPU build")
        on_device = False
        started = time.perf_counter()
        embedder = ClipImageEmbedder(cfg)
        bundle = embedder.bundle
    if device == "cuda":
        torch.cuda.synchronize()
    return embedder, bundle, time.perf_counter() - started, "device" if on_device else "cpu"


def check_embeddings(out: dict[str, np.ndarray], rows: int) -> str:
    """ "ok", or what is wrong with a stage output (failed rows, NaN, not unit length)."""
    from visdiff import schema

    errors = [str(e) for e in out[schema.ERROR] if e]
    if errors:
        return f"{len(errors)} of {rows} rows failed: {errors[0]}"
    vectors = np.asarray(out[schema.EMBEDDING], dtype=np.float32)
    if vectors.shape[0] != rows or not np.all(np.isfinite(vectors)):
        return f"embeddings of shape {vectors.shape}, finite: {bool(np.all(np.isfinite(vectors)))}"
    worst = float(np.abs(np.linalg.norm(vectors, axis=1) - 1).max())
    return "ok" if worst < 1e-3 else f"norms off by up to {worst:.2g}"


def measure_batch(
    cfg, bundle, embedder, preprocess, jpegs: list[bytes], rows: int, args, device: str
) -> dict[str, Any]:
    import torch

    from visdiff import schema
    from visdiff.models.clip import eval_preprocess_config

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    height, width = eval_preprocess_config(cfg)["image_size"]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()

    generator = torch.Generator(device=bundle.device).manual_seed(args.seed)
    pixels = torch.randn(
        (rows, 3, int(height), int(width)),
        generator=generator,
        device=bundle.device,
        dtype=bundle.dtype,
    )

    def bare() -> int:
        with torch.inference_mode():
            bundle.model.encode_image(pixels)
        return rows

    bare_img_s = timed_rate(bare, args.min_seconds, sync)

    ready = [preprocess(make_batch(jpegs, k * rows, rows)) for k in range(2)]
    calls = iter(range(10**9))

    def embed_ready() -> int:
        return len(embedder(ready[next(calls) % len(ready)])[schema.EMBEDDING])

    embedder_img_s = timed_rate(embed_ready, args.min_seconds, sync)
    checks = {check_embeddings(embedder(ready[0]), rows)}

    def stage() -> int:
        out = embedder(preprocess(make_batch(jpegs, next(calls) * rows, rows)))
        return len(out[schema.EMBEDDING])

    stage_img_s = timed_rate(stage, args.min_seconds, sync, warmup=1)
    checks.add(check_embeddings(embedder(preprocess(make_batch(jpegs, 0, rows))), rows))

    row: dict[str, Any] = {
        "batch_size": rows,
        "bare_img_s": round(bare_img_s, 1),
        "embedder_img_s": round(embedder_img_s, 1),
        "stage_img_s": round(stage_img_s, 1),
        "embedder_over_bare": _common.ratio(embedder_img_s, bare_img_s),
        "stage_over_bare": _common.ratio(stage_img_s, bare_img_s),
        "embedding_check": "; ".join(sorted(checks)),
    }
    if device == "cuda":
        row["peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
        row["peak_reserved_gb"] = round(torch.cuda.max_memory_reserved() / 1024**3, 3)
    return row


def measure_model(
    arch: str, precision: str, batch_sizes: list[int], jpegs: list[bytes], args, device: str, budget
) -> dict[str, Any]:
    import torch

    from visdiff.stages.embed import ClipPreprocessor

    cfg = clip_config(arch, precision, max(batch_sizes), device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    embedder, bundle, build_s, built_on = build_embedder(cfg, device, args.build_on)
    preprocess = ClipPreprocessor(cfg)
    visual_params = sum(p.numel() for p in bundle.model.visual.parameters())
    result: dict[str, Any] = {
        "arch": arch,
        "precision": precision,
        "dtype": str(bundle.dtype).removeprefix("torch."),
        "device": str(bundle.device),
        "built_on": built_on,
        "build_s": round(build_s, 2),
        "visual_params_m": round(visual_params / 1e6, 1),
        "all_params_m": round(sum(p.numel() for p in bundle.model.parameters()) / 1e6, 1),
        "batches": [],
        "batch_errors": [],
    }
    if device == "cuda":
        result["weights_gb"] = round(torch.cuda.memory_allocated() / 1024**3, 3)
        result["build_peak_allocated_gb"] = round(torch.cuda.max_memory_allocated() / 1024**3, 3)
    on_gpu = f", {result['weights_gb']} GB on the GPU" if device == "cuda" else ""
    _common.say(
        f"{arch} {precision}: built in {build_s:.1f} s "
        f"({result['visual_params_m']} M image-tower params{on_gpu})"
    )
    flops = vision_flops_per_image(arch)
    for rows in batch_sizes:
        if not budget.allows(f"{arch} {precision} batch {rows}"):
            continue
        try:
            row = measure_batch(cfg, bundle, embedder, preprocess, jpegs, rows, args, device)
        except Exception as exc:  # e.g. out of memory at the larger batch: keep the others
            message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            result["batch_errors"].append({"batch_size": rows, "error": message})
            _common.say(f"  batch {rows:4d}: FAILED {message}")
            continue
        if flops:
            row["bare_tflops"] = round(row["bare_img_s"] * flops / 1e12, 2)
        result["batches"].append(row)
        _common.say(
            f"  batch {rows:4d}: bare {row['bare_img_s']:9.1f}  embedder {row['embedder_img_s']:9.1f}"
            f"  stage {row['stage_img_s']:8.1f} img/s  (embedder/bare {row['embedder_over_bare']},"
            f" stage/bare {row['stage_over_bare']}"
            + (f", peak {row['peak_allocated_gb']} GB" if device == "cuda" else "")
            + (f", {row['bare_tflops']} TFLOP/s" if flops else "")
            + f"; embeddings {row['embedding_check']})"
        )
    del embedder, bundle, preprocess
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
    return result


# ------------------------------------------------------------------------------ main


def _ints(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    import open_clip
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no GPU here; use --device cpu")
    archs_text = args.archs or (",".join(DEFAULT_ARCHS) if device == "cuda" else CPU_ARCH)
    archs = [a.strip() for a in archs_text.split(",") if a.strip()]
    from visdiff.models.clip import register_bundled_configs

    register_bundled_configs()
    unknown = [arch for arch in archs if open_clip.get_model_config(arch) is None]
    if unknown:
        raise SystemExit(
            f"--archs: unknown open_clip architecture(s) {', '.join(unknown)}; "
            "pick from open_clip.list_models() (e.g. ViT-B-32, ViT-bigG-14, visdiff-tiny-clip)"
        )
    precisions = (args.precisions or ("fp16,bf16" if device == "cuda" else "fp32")).split(",")
    if device == "cpu" and set(precisions) != {"fp32"}:
        raise SystemExit(
            "--device cpu runs fp32 only (half precision is a GPU path): --precisions fp32"
        )
    cores = os.cpu_count() or 1
    workers = sorted({min(w, cores) for w in _ints(args.decode_workers) if w > 0})
    threads = cores if args.decode_threads is None else args.decode_threads
    budget = Budget(args.budget_s)
    out = args.out or (
        os.path.join(os.environ["OUT"], "gpu_check.json") if os.environ.get("OUT") else None
    )

    config = {
        "device": device,
        "archs": archs,
        "precisions": precisions,
        "batch_sizes": args.batch_sizes,
        "min_seconds": args.min_seconds,
        "decode_workers": workers,
        "decode_threads": threads,
        "image_size": args.image_size,
        "pool_images": args.pool_images,
        "build_on": args.build_on,
        "seed": args.seed,
    }
    result: dict[str, Any] = {
        "benchmark": "gpu_check",
        "complete": False,
        "device": device,
        "gpu": gpu_info(),
        "open_clip": open_clip.__version__,
        "decode": None,
        "runs": [],
        "skipped": budget.skipped,
        "ratio": None,
        "ratio_definition": "lowest embedder_img_s / bare_img_s over all batches measured",
        "config_hash": _common.config_hash(config),
        "config": config,
        "machine": _common.machine(),
    }
    _common.say(f"gpu_check on {device} ({result['gpu'] or result['machine']['cpu_model']})")
    _common.say(f"settings: {config}")
    jpegs = make_jpegs(args.pool_images, args.image_size, args.seed)
    mean_kb = sum(map(len, jpegs)) / len(jpegs) / 1024
    _common.say(f"{len(jpegs)} synthetic {args.image_size}px JPEGs, {mean_kb:.1f} KB each")

    _common.say("decode + preprocess on the CPU (ClipPreprocessor, one torch thread each):")
    try:
        result["decode"] = decode_scaling(archs[0], jpegs, workers, threads, args.min_seconds)
    except Exception as exc:  # the GPU figures are still worth having
        _common.say(f"decode scaling FAILED: {type(exc).__name__}: {exc}")
        result["decode"] = {"error": f"{type(exc).__name__}: {exc}", "processes": []}
        result["decode"]["img_s_one_process"] = None
    write_json(out, result, budget)

    if device == "cuda":
        result["gpu"]["bf16_matmul_tflops"] = matmul_ceiling_tflops()
        _common.say(f"bf16 8192^3 matmul: {result['gpu']['bf16_matmul_tflops']} TFLOP/s")
    one_process = result["decode"]["img_s_one_process"]
    best_decode = max((r["img_s"] for r in result["decode"]["processes"]), default=None)
    for precision in precisions:  # every arch at the first precision before the second one
        for arch in archs:
            if not budget.allows(f"{arch} {precision}"):
                continue
            sizes = (
                _ints(args.batch_sizes)
                if args.batch_sizes
                else list(DEFAULT_BATCH_SIZES.get(arch, FALLBACK_BATCH_SIZES))
            )
            try:
                run = measure_model(arch, precision, sizes, jpegs, args, device, budget)
            except Exception as exc:  # one failed model (OOM, ...) must not cost the others
                message = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                _common.say(f"{arch} {precision}: FAILED {message}")
                run = {"arch": arch, "precision": precision, "error": message, "batches": []}
            gc.collect()  # a failed model's tensors are free only once the exception is gone
            if device == "cuda":
                torch.cuda.empty_cache()
            for row in run["batches"]:
                needed = row["embedder_img_s"] / one_process if one_process else None
                row["decode_workers_needed"] = math.ceil(needed) if needed else None
                row["decode_best_over_embedder"] = (
                    _common.ratio(best_decode, row["embedder_img_s"]) if best_decode else None
                )
            result["runs"].append(run)
            write_json(out, result, budget)

    ratios = [
        b["embedder_over_bare"]
        for r in result["runs"]
        for b in r["batches"]
        if b["embedder_over_bare"] is not None
    ]
    result["ratio"] = min(ratios) if ratios else None
    result["complete"] = True
    write_json(out, result, budget)
    print_table(result)
    if out:
        _common.say(f"wrote {out}")
    _common.print_result(result)
    return result


def write_json(out: str | None, result: dict[str, Any], budget: Budget) -> None:
    """Rewritten after every model, so a run cut short still leaves what it measured."""
    result["elapsed_s"] = round(budget.elapsed(), 1)
    if not out:
        return
    import json

    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=1, sort_keys=True, default=str))


def print_table(result: dict[str, Any]) -> None:
    _common.say("")
    _common.say(
        f"{'arch':<18}{'prec':<6}{'batch':>6}{'bare':>10}{'embedder':>10}{'stage':>9}"
        f"{'emb/bare':>9}{'stg/bare':>9}{'decoders':>9}{'peak GB':>9}"
    )
    for run in result["runs"]:
        if run.get("error"):
            _common.say(f"{run['arch']:<18}{run['precision']:<6} failed: {run['error']}")
        for failed in run.get("batch_errors", []):
            _common.say(
                f"{run['arch']:<18}{run['precision']:<6}{failed['batch_size']:>6} "
                f"failed: {failed['error']}"
            )
        for row in run["batches"]:
            _common.say(
                f"{run['arch']:<18}{run['precision']:<6}{row['batch_size']:>6}"
                f"{row['bare_img_s']:>10.1f}{row['embedder_img_s']:>10.1f}{row['stage_img_s']:>9.1f}"
                f"{row['embedder_over_bare']:>9}{row['stage_over_bare']:>9}"
                f"{row['decode_workers_needed'] or '-':>9}{row.get('peak_allocated_gb', '-'):>9}"
            )
    decode = result["decode"] or {}
    rates = [f"{r['workers']}p {r['img_s']}" for r in decode.get("processes", [])]
    rates += [f"{r['threads']}t {r['img_s']}" for r in decode.get("threads", [])]
    _common.say(f"decode+preprocess img/s: {', '.join(rates) or '-'}")
    if result["skipped"]:
        _common.say(f"skipped (budget): {', '.join(result['skipped'])}")
    _common.say(f"elapsed {result['elapsed_s']} s")


if __name__ == "__main__":
    main()
