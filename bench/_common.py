"""Helpers shared by the benchmarks: result printing, driver memory sampling, a description of
the machine, a local Ray, and seeded synthetic images (JPEG files and WebDataset shards).

Every benchmark prints human-readable progress and, as its last line, one JSON object, so a
script (or the smoke test) can read the figures with `json.loads(lines[-1])`. That object always
says how busy the machine was (`load`) and, when it was too busy to trust a timing (`noisy`),
claims no target (`meets_target` false, with `meets_target_reason`).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import io
import json
import os
import platform
import resource
import sys
import tarfile
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
BENCH_CACHE = Path(os.environ.get("VISDIFF_BENCH_CACHE", "/tmp/visdiff-bench"))
MB = 1024 * 1024
# The 1-minute load when this module is imported, i.e. when a benchmark starts: before its own
# work, so it is other programs' work.
START_LOAD_1M = os.getloadavg()[0]


def setup_paths() -> None:
    """Make `visdiff` importable from a checkout without an install (driver and Ray workers),
    and keep model hubs off: the benchmarks use randomly initialised models only."""
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def say(message: str) -> None:
    """Progress for humans; flushed so that it interleaves correctly with Ray's output."""
    print(message, flush=True)


def load_verdict(start_load: float | None = None) -> dict[str, Any]:
    """Whether the timings can be trusted. Noisy: at the start, other programs already kept more
    than every core busy (1-minute load > cores), or at the end the load exceeded twice the
    cores (this benchmark alone keeps at most about one runnable thread per core)."""
    start_load = START_LOAD_1M if start_load is None else start_load
    cores = os.cpu_count() or 1
    end_load = os.getloadavg()[0]
    reasons = []
    if start_load > cores:
        reasons.append(f"1-minute load {start_load:.2f} > {cores} cores at the start")
    if end_load > 2 * cores:
        reasons.append(f"1-minute load {end_load:.2f} > 2 x {cores} cores at the end")
    return {
        "load": {
            "cores": cores,
            "load_avg_1m_start": round(start_load, 2),
            "load_avg_1m_end": round(end_load, 2),
        },
        "noisy": bool(reasons),
        "noisy_reason": "; ".join(reasons) or None,
    }


def print_result(result: dict[str, Any]) -> None:
    """The machine-readable summary: one JSON object, always the last line of stdout. A noisy
    machine (see `load_verdict`) claims no target: `meets_target` becomes false, with a reason."""
    result = {**load_verdict(), **result}
    if result["noisy"] and "meets_target" in result:
        verdict = "not claimed" if result["meets_target"] else "missed"
        result["meets_target"] = False
        result["meets_target_reason"] = (
            f"{verdict} on a busy machine ({result['noisy_reason']}); rerun on a quiet one"
        )
    sys.stdout.flush()
    sys.stderr.flush()
    print(json.dumps(result, sort_keys=True, default=_json_default), flush=True)


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def config_hash(config: dict[str, Any]) -> str:
    """Short stable hash of a benchmark's settings: runs with equal hashes are comparable."""
    text = json.dumps(config, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


# ------------------------------------------------------------------------------ memory


def current_rss_bytes() -> int:
    """Resident set size of this process now (Linux /proc; falls back to the lifetime peak)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return lifetime_peak_rss_bytes()


def current_anon_rss_bytes() -> int:
    """The private (anonymous) part of RSS: the driver's own heap. RSS also counts pages of
    Ray's shared-memory object store that the driver has mapped while reading results, which
    belong to the object store's budget, not to the driver; 0 where /proc is unavailable."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def lifetime_peak_rss_bytes() -> int:
    """`ru_maxrss` of this process (kilobytes on Linux): the peak since start, never reset."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) * (1 if sys.platform == "darwin" else 1024)


class RssSampler:
    """Samples this process's RSS in a background thread; `peak` is the highest value seen.

    `ru_maxrss` cannot be reset, so it cannot tell the peak of one phase from an earlier one;
    sampling (every `interval_s`) can, at the price of missing spikes shorter than the interval.
    """

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.start = 0
        self.peak = 0
        self.end = 0
        self.anon_start = 0
        self.anon_peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, current_rss_bytes())
            self.anon_peak = max(self.anon_peak, current_anon_rss_bytes())
            self.samples += 1
            self._stop.wait(self.interval_s)

    def __enter__(self) -> RssSampler:
        self.start = self.peak = current_rss_bytes()
        self.anon_start = self.anon_peak = current_anon_rss_bytes()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.end = current_rss_bytes()
        self.peak = max(self.peak, self.end)

    def as_dict(self) -> dict[str, float]:
        return {
            "rss_start_mb": round(self.start / MB, 1),
            "rss_peak_mb": round(self.peak / MB, 1),
            "rss_end_mb": round(self.end / MB, 1),
            "rss_peak_growth_mb": round((self.peak - self.start) / MB, 1),
            "anon_rss_start_mb": round(self.anon_start / MB, 1),
            "anon_rss_peak_mb": round(self.anon_peak / MB, 1),
        }


# ------------------------------------------------------------------------------ machine


# ------------------------------------------------------------------------------ CPU profile


def process_group(cmdline: list[str], name: str) -> str:
    """A readable group for a process: Ray's title without the method (`ray::ClipModelActor`),
    else the executable's name (`raylet`, `gcs_server`, the driver's `python`)."""
    first = cmdline[0] if cmdline else name
    if first.startswith("ray::MapWorker(") and ")." in first:  # ...(MapBatches(X)).method
        return first[: first.rindex(").") + 1]
    if first.startswith("ray::"):
        return first.split(".", 1)[0].split(" ", 1)[0]
    return Path(first).name or name


class CpuSampler:
    """CPU seconds (user + system) per process group spent inside the `with` block by the driver
    and its descendants (the local Ray it started: GCS, raylet, every worker and actor), sampled
    every `interval` s; an exited process keeps its last sample. Processes that existed before
    count from their CPU time at the start; other programs on the machine are not counted."""

    def __init__(self, interval: float = 1.0) -> None:
        import ray  # noqa: F401  (puts its bundled psutil on sys.path)

        self._psutil = importlib.import_module("psutil")
        self.interval = interval
        self.me = self._psutil.Process()
        self.latest: dict[int, tuple[str, float]] = {}
        self.baseline: dict[int, float] = {}
        self._sample()  # what every existing process had used before the block
        self.baseline = {pid: cpu for pid, (_, cpu) in self.latest.items()}
        self.latest = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _cpu(process: Any) -> float:
        times = process.cpu_times()
        return float(times.user + times.system)

    def _sample(self) -> None:
        psutil = self._psutil
        for process in [self.me, *self.me.children(recursive=True)]:
            try:
                cpu = self._cpu(process)
                group = "driver" if process.pid == self.me.pid else None
                group = group or process_group(process.cmdline(), process.name())
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            self.latest[process.pid] = (group, cpu - self.baseline.get(process.pid, 0.0))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def by_group(self) -> dict[str, float]:
        totals: dict[str, float] = defaultdict(float)
        for group, cpu in self.latest.values():
            totals[group] += cpu
        ranked = sorted(totals.items(), key=lambda item: -item[1])
        return {group: round(cpu, 2) for group, cpu in ranked if cpu >= 0.05}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """Where the figures come from: CPU, cores, load, library versions and GPU if any."""
    info: dict[str, Any] = {
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
    }
    for package in ("torch", "ray"):  # versions without importing them (torch costs ~2 s)
        try:
            info[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            info[package] = None
    torch = sys.modules.get("torch")  # threads and GPU only where the bench uses torch
    if torch is not None:
        info["torch_threads"] = torch.get_num_threads()
        info["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return info


# ------------------------------------------------------------------------------ Ray


@contextmanager
def local_ray(
    num_cpus: int | None = None,
    object_store_mb: int = 512,
    env_vars: dict[str, str] | None = None,
) -> Iterator[dict[str, Any]]:
    """A local Ray owned by the benchmark (shut down at the end), never an existing cluster.

    `num_cpus` defaults to the library's `local_cpu_slots()` (logical slots, >= 4). Workers get
    the checkout on PYTHONPATH plus `env_vars` (e.g. OMP_NUM_THREADS to pin torch threads).
    """
    import ray

    from visdiff.pipeline.runtime import local_cpu_slots

    slots = num_cpus or local_cpu_slots()
    env = {
        "PYTHONPATH": os.pathsep.join(
            p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p
        ),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
        **(env_vars or {}),
    }
    # The workers inherit these from this process (as they do from `visdiff describe`), not from
    # a job runtime_env: with one, the workers Ray prestarts for the job's first driver do not
    # match it and sit idle while every actor starts a fresh worker process (a tiny describe
    # measured 48 s after Ray up that way, 36 s without).
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    started = time.perf_counter()
    ray.init(
        address="local",
        num_cpus=slots,
        object_store_memory=object_store_mb * MB,
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=False,
    )
    _quiet_ray_data()
    info = {
        "num_cpus": slots,
        "object_store_mb": object_store_mb,
        "env_vars": dict(env_vars or {}),
        "start_seconds": round(time.perf_counter() - started, 2),
    }
    try:
        yield info
    finally:
        ray.shutdown()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_ray_data() -> None:
    """No progress bars or per-execution log lines: they would bury the benchmark's own lines."""
    import logging

    import ray.data

    for name in ("ray", "ray.data", "ray.serve"):
        logging.getLogger(name).setLevel(logging.WARNING)

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False
    context.print_on_execution_start = False


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# ------------------------------------------------------------------------------ synthetic images


def photo_like(rng: np.random.Generator, size: int) -> np.ndarray:
    """An RGB uint8 image with photo-like statistics: smooth colour regions plus fine noise, so
    its JPEG has a realistic size (pure noise compresses badly, flat colour too well)."""
    coarse = rng.integers(0, 256, size=(8, 8, 3)).astype(np.float32)
    index = np.arange(size) * 8 // size
    smooth = coarse[index][:, index]
    noise = rng.normal(0.0, 12.0, size=(size, size, 3)).astype(np.float32)
    return np.clip(smooth + noise, 0, 255).astype(np.uint8)


def jpeg_bytes(pixels: np.ndarray, quality: int = 85) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def _done_marker(folder: Path, spec: dict[str, Any]) -> bool:
    marker = folder / "_bench_done.json"
    return marker.is_file() and json.loads(marker.read_text()) == spec


def _mark_done(folder: Path, spec: dict[str, Any]) -> None:
    (folder / "_bench_done.json").write_text(json.dumps(spec, sort_keys=True))


def jpeg_folders(root: Path, n_per_set: int, size: int, seed: int) -> tuple[Path, Path]:
    """`root/set_a` and `root/set_b` with `n_per_set` distinct JPEGs each; reused when a previous
    call made the same images (a marker file records the settings)."""
    spec = {"kind": "folders", "n_per_set": n_per_set, "size": size, "seed": seed}
    folders = (root / "set_a", root / "set_b")
    if _done_marker(root, spec):
        return folders
    rng = np.random.default_rng(seed)
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_set):
            (folder / f"{i:06d}.jpg").write_bytes(jpeg_bytes(photo_like(rng, size)))
    _mark_done(root, spec)
    return folders


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def webdataset_shards(
    root: Path, n_per_set: int, per_shard: int, size: int, seed: int
) -> tuple[Path, Path]:
    """img2dataset layout (`<key>.jpg` + `<key>.txt` alt-text) in tar shards of `per_shard`
    samples under `root/a` and `root/b`; generated once and reused."""
    spec = {
        "kind": "webdataset",
        "n_per_set": n_per_set,
        "per_shard": per_shard,
        "size": size,
        "seed": seed,
    }
    folders = (root / "a", root / "b")
    if _done_marker(root, spec):
        return folders
    rng = np.random.default_rng(seed)
    words = ("a photo of", "a picture of", "an image of", "a close-up of", "a view of")
    things = ("a dog", "a cat", "a street", "a beach", "a mountain", "a kitchen", "a car")
    for set_index, folder in enumerate(folders):
        folder.mkdir(parents=True, exist_ok=True)
        for shard, start in enumerate(range(0, n_per_set, per_shard)):
            path = folder / f"{shard:05d}.tar"
            temp = folder / f".{shard:05d}.tar.tmp"
            with tarfile.open(temp, "w") as tar:
                for i in range(start, min(start + per_shard, n_per_set)):
                    key = f"{set_index}{i:09d}"
                    caption = f"{words[i % len(words)]} {things[(i + set_index) % len(things)]}"
                    _add_member(tar, f"{key}.jpg", jpeg_bytes(photo_like(rng, size)))
                    _add_member(tar, f"{key}.txt", caption.encode())
            temp.replace(path)
    _mark_done(root, spec)
    return folders


def ratio(numerator: float, denominator: float) -> float | None:
    return round(numerator / denominator, 4) if denominator else None
