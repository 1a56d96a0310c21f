"""CLIP stages: decode + preprocess, the image forward pass, text embeddings, and the run's CLIP
model actors that serve all three, with an optional content-addressed cache so that an image is
never embedded twice.

Stage callables (no Ray needed; `Cls(clip_cfg)(batch)` on a numpy batch dict, as Ray Data's
`map_batches` hands them):
- `ClipPreprocessor`: rows -> uint8 PIXELS (resized and cropped, not yet normalised: a quarter
  of float32's bytes to move), ERROR, CONTENT_HASH, CACHED_EMBEDDING. The cache lookup sits here:
  a hit skips decoding too.
- `ClipImageEmbedder`: PIXELS -> EMBEDDING. It normalises the uint8 batch beside the model (on
  its device), which computes exactly open_clip's eval transform; float32 PIXELS that are already
  normalised are also accepted.
- `ClipTextEmbedder`: column "text" -> EMBEDDING.

A run loads CLIP once per model actor (`ClipModelActor`, started by `clip_model_actors`) and
uses the same actors for the images and later for the hypotheses. On CPU-only actors
(`clip.num_gpus == 0`) an actor decodes, preprocesses and embeds each batch itself: no second
process competes with the forward pass for the cores and no pixels travel between processes.
With GPUs, decoding stays in its own CPU actor pool (`clip.num_decoders`) and only uint8 pixels
reach the GPU actors. `clip.decode` (auto | actor | pool) overrides the choice. Heavy imports happen inside the actors, so importing this module is cheap.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig
from visdiff.stages.images import Batch, decode_all, load_bytes, passthrough, strings

CALLER_NUM_CPUS = 0.25  # the Ray Data stage that only hands batches to the model actors


def _open_cache(clip_cfg: ClipConfig, cache_root: str | None):
    if not cache_root:
        return None
    from visdiff.cache.keys import clip_model_key
    from visdiff.cache.store import EmbeddingCache

    return EmbeddingCache(cache_root, clip_model_key(clip_cfg))


class ClipPreprocessor:
    """Rows -> PIXELS (uint8 (n, 3, H, W), resized and cropped), ERROR, CONTENT_HASH and, for
    cache hits, CACHED_EMBEDDING (float32 bytes; b"" for misses). IMAGE_BYTES is dropped here."""

    def __init__(self, clip_cfg: ClipConfig, cache_root: str | None = None) -> None:
        from visdiff.models.clip import build_pixel_transform, eval_preprocess_config

        self.transform = build_pixel_transform(clip_cfg)
        height, width = eval_preprocess_config(clip_cfg)["image_size"]
        self.shape = (3, int(height), int(width))
        self.cache = _open_cache(clip_cfg, cache_root)

    def __call__(self, batch: Batch) -> Batch:
        from visdiff.cache.keys import content_hash

        datas, errors = load_bytes(batch)
        n = len(datas)
        hashes = [content_hash(d) if d is not None else "" for d in datas]
        cached = [b""] * n
        if self.cache is not None:
            hits = self.cache.lookup([h for h in hashes if h])
            for i, h in enumerate(hashes):
                if h in hits:
                    cached[i] = np.asarray(hits[h], dtype=np.float32).tobytes()
        images = decode_all(datas, errors, skip={i for i in range(n) if cached[i]})
        pixels = np.zeros((n, *self.shape), dtype=np.uint8)
        for i, image in enumerate(images):
            if image is None:
                continue
            try:
                pixels[i] = self.transform.to_uint8(image)
            except Exception as exc:
                errors[i] = f"preprocess_error: {type(exc).__name__}: {exc}"
        out = passthrough(
            batch, drop=(schema.PIXELS, schema.ERROR, schema.IMAGE_BYTES, schema.CACHED_EMBEDDING)
        )
        out[schema.PIXELS] = pixels
        out[schema.ERROR] = strings(errors)
        out[schema.CONTENT_HASH] = strings(hashes)
        out[schema.CACHED_EMBEDDING] = np.array(cached, dtype=object)
        return out


class ClipImageEmbedder:
    """PIXELS -> EMBEDDING (unit float32 (n, D)); cache hits are reused, new embeddings stored.
    Failed rows keep zeros and their ERROR."""

    def __init__(self, clip_cfg: ClipConfig, cache_root: str | None = None) -> None:
        from visdiff.models.clip import build_pixel_transform

        self.clip_cfg = clip_cfg
        self.batch_size = clip_cfg.batch_size
        self.transform = build_pixel_transform(clip_cfg)
        self._bundle = None  # loaded on the first cache miss: a fully cached run never loads it
        self.model_loads = 0
        self.cache = _open_cache(clip_cfg, cache_root)

    @property
    def bundle(self):
        if self._bundle is None:
            from visdiff.models.clip import load_clip

            self._bundle = load_clip(self.clip_cfg)
            self.model_loads += 1
        return self._bundle

    def _model_input(self, pixels: np.ndarray):
        import torch

        bundle = self.bundle
        if pixels.dtype == np.uint8:
            return self.transform.to_model_input(pixels, bundle.device, bundle.dtype)
        return torch.from_numpy(np.asarray(pixels, dtype=np.float32).copy())

    def __call__(self, batch: Batch) -> Batch:
        from visdiff.models.clip import clip_image_embeddings

        pixels = np.asarray(batch[schema.PIXELS])
        n = len(pixels)
        errors = [str(e) for e in batch.get(schema.ERROR, [""] * n)]
        cached = list(batch.get(schema.CACHED_EMBEDDING, [b""] * n))
        hits = {
            i: np.frombuffer(blob, dtype=np.float32)
            for i, blob in enumerate(cached)
            if not errors[i] and blob is not None and len(blob) > 0
        }
        todo = np.array([i for i in range(n) if not errors[i] and i not in hits], dtype=np.int64)
        dim = len(next(iter(hits.values()))) if hits and not len(todo) else self.bundle.embed_dim
        embeddings = np.zeros((n, dim), dtype=np.float32)
        from_cache = np.zeros(n, dtype=bool)
        for i, vector in hits.items():
            embeddings[i] = vector
            from_cache[i] = True
        for start in range(0, len(todo), self.batch_size):
            rows = todo[start : start + self.batch_size]
            embeddings[rows] = clip_image_embeddings(self.bundle, self._model_input(pixels[rows]))
        if self.cache is not None and len(todo):
            hashes = batch[schema.CONTENT_HASH]
            self.cache.put([str(hashes[i]) for i in todo], embeddings[todo])
        out = passthrough(batch, drop=(schema.PIXELS, schema.ERROR, schema.CACHED_EMBEDDING))
        out[schema.ERROR] = strings(errors)
        out[schema.EMBEDDING] = embeddings
        out[schema.FROM_CACHE] = from_cache
        return out


class ClipTextEmbedder:
    """Column "text" -> EMBEDDING, one unit vector per text (hypotheses for ranking)."""

    TEXT = "text"

    def __init__(self, clip_cfg: ClipConfig, bundle: Any = None) -> None:
        from visdiff.models.clip import load_clip

        self.batch_size = clip_cfg.batch_size
        self.bundle = bundle if bundle is not None else load_clip(clip_cfg)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        from visdiff.models.clip import clip_text_embeddings

        texts = [str(t) for t in texts]
        parts = [
            clip_text_embeddings(self.bundle, texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        return np.concatenate(parts) if parts else np.zeros((0, self.bundle.embed_dim), np.float32)

    def __call__(self, batch: Batch) -> Batch:
        texts = [str(t) for t in batch[self.TEXT]]
        return {self.TEXT: strings(texts), schema.EMBEDDING: self.embed(texts)}


# ------------------------------------------------------------------------------ model actors


class ClipModelActor:
    """One CLIP model per process, for every CLIP job of a run: image rows (decode + preprocess +
    forward in this process), preprocessed uint8 pixels, and texts. Run as a Ray actor by
    `clip_model_actors`; plain Python otherwise."""

    def __init__(
        self, clip_cfg: ClipConfig, cache_root: str | None = None, load_model: bool = False
    ) -> None:
        """`load_model`: load the weights now, not on the first batch, when the run will need
        them anyway (a fully cached `visdiff embed` never does)."""
        started = time.perf_counter()
        self.clip_cfg = clip_cfg
        self.embedder = ClipImageEmbedder(clip_cfg, cache_root)  # imports torch + open_clip
        self.cache_root = cache_root
        self._preprocessor: ClipPreprocessor | None = None
        self._text: ClipTextEmbedder | None = None
        self.counts = {"rows": 0, "texts": 0}
        self.import_seconds = time.perf_counter() - started
        if load_model:
            _ = self.embedder.bundle
        self.load_seconds = time.perf_counter() - started - self.import_seconds
        self.ready_at = time.time()

    def start_report(self) -> dict[str, float]:
        """What start-up cost in this actor, and when it was ready (epoch seconds)."""
        return {
            "import_seconds": self.import_seconds,
            "load_seconds": self.load_seconds,
            "ready_at": self.ready_at,
        }

    def embed_rows(self, batch: Batch) -> Batch:
        if self._preprocessor is None:
            self._preprocessor = ClipPreprocessor(self.clip_cfg, self.cache_root)
        out = self.embedder(self._preprocessor(batch))
        self.counts["rows"] += len(out[schema.EMBEDDING])
        return out

    def embed_pixels(self, batch: Batch) -> Batch:
        out = self.embedder(batch)
        self.counts["rows"] += len(out[schema.EMBEDDING])
        return out

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        if self._text is None:
            self._text = ClipTextEmbedder(self.clip_cfg, bundle=self.embedder.bundle)
        self.counts["texts"] += len(texts)
        return self._text.embed(texts)

    def served(self) -> dict[str, int]:
        """Image rows and texts this actor embedded, and how often it loaded the weights."""
        return {**self.counts, "model_loads": self.embedder.model_loads}


class ClipActorCaller:
    """Ray Data stage that hands each batch to the least busy of the run's CLIP model actors and
    returns its answer; concurrent calls (threads) keep every model actor fed."""

    def __init__(self, actors: Sequence[Any], method: str) -> None:
        self.actors = list(actors)
        self.method = method
        self.busy = [0] * len(self.actors)
        self.lock = threading.Lock()

    def __call__(self, batch: Batch) -> Batch:
        import ray

        with self.lock:
            index = min(range(len(self.actors)), key=self.busy.__getitem__)
            self.busy[index] += 1
        try:
            return ray.get(getattr(self.actors[index], self.method).remote(batch))
        finally:
            with self.lock:
                self.busy[index] -= 1


@dataclass
class ClipActors:
    """The run's CLIP model actors (handles) and their start-up, created once per run."""

    clip_cfg: ClipConfig
    handles: list[Any]
    created_at: float
    _ready: list[Any] = field(default_factory=list)
    _startup: dict[str, float] | None = None

    @property
    def fused(self) -> bool:
        """Whether the model actors decode their own batches (`clip.decode`; auto: when they
        have no GPU, see the module docstring)."""
        if self.clip_cfg.decode == "auto":
            return not self.clip_cfg.num_gpus
        return self.clip_cfg.decode == "actor"

    def startup_seconds(self) -> dict[str, float]:
        """Waits for the actors to be ready: seconds from creation to ready (wall, the slowest
        actor), and inside the actors the imports and the model load (the slowest)."""
        if self._startup is None:
            import ray

            reports = ray.get(self._ready)
            self._startup = {
                "wall": round(max(max(r["ready_at"] for r in reports) - self.created_at, 0.0), 3),
                "imports": round(max(r["import_seconds"] for r in reports), 3),
                "model_load": round(max(r["load_seconds"] for r in reports), 3),
            }
        return self._startup

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        import ray

        self.startup_seconds()
        return np.asarray(ray.get(self.handles[0].embed_texts.remote(list(texts))), np.float32)

    def stop(self) -> None:
        import ray

        for handle in self.handles:
            ray.kill(handle, no_restart=True)
        self.handles = []


def start_clip_actors(
    clip_cfg: ClipConfig, cache_root: str | None = None, *, load_model: bool = True
) -> ClipActors:
    """`clip.num_actors` CLIP model actors, spread over the nodes and restarted (calls retried)
    if a node is lost; the weights start loading at once unless `load_model` is false (a fully
    cached `visdiff embed` never needs them)."""
    import ray

    remote = ray.remote(ClipModelActor).options(
        num_cpus=clip_cfg.num_cpus,
        num_gpus=clip_cfg.num_gpus,
        max_restarts=-1,
        max_task_retries=-1,
        scheduling_strategy="SPREAD",
    )
    created_at = time.time()
    handles = [
        remote.remote(clip_cfg, cache_root, load_model) for _ in range(max(1, clip_cfg.num_actors))
    ]
    actors = ClipActors(clip_cfg, handles, created_at)
    actors._ready = [h.start_report.remote() for h in handles]
    return actors


@contextmanager
def clip_model_actors(
    clip_cfg: ClipConfig, cache_root: str | None = None, *, load_model: bool = True
) -> Iterator[ClipActors]:
    actors = start_clip_actors(clip_cfg, cache_root, load_model=load_model)
    try:
        yield actors
    finally:
        actors.stop()
