"""The run's CLIP model actors: one CLIP model per process serving every CLIP job of a run
(image rows, preprocessed pixels, texts), started once by `clip_model_actors`, plus the light
Ray Data stage that hands batches to them. The model work itself is `visdiff.stages.embed`.

On CPU-only actors (`clip.num_gpus == 0`) an actor decodes, preprocesses and embeds each batch
itself: no second process competes with the forward pass for the cores and no pixels travel
between processes. With GPUs, decoding stays in its own CPU actor pool (`clip.num_decoders`)
and only uint8 pixels reach the GPU actors. `clip.decode` (auto | actor | pool) overrides the
choice. Heavy imports happen inside the actors, so importing this module is cheap.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig
from visdiff.stages.embed import ClipImageEmbedder, ClipPreprocessor, ClipTextEmbedder
from visdiff.stages.images import Batch

CALLER_NUM_CPUS = 0.25  # the Ray Data stage that only hands batches to the model actors
FLUSH_TIMEOUT_S = 30.0  # how long `ClipActors.stop` waits for the actors' cache writes

logger = logging.getLogger(__name__)


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
        if self._preprocessor is None:  # one cache: lookups see the embeddings still buffered
            self._preprocessor = ClipPreprocessor(
                self.clip_cfg, self.cache_root, cache=self.embedder.cache
            )
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

    def flush_cache(self) -> int:
        """Write the embeddings this actor's cache still buffers; returns the rows written.
        Called before the actor is killed (`ClipActors.stop`)."""
        return self.embedder.flush_cache()

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
    cache_root: str | None = None  # set: the actors' buffered cache writes are flushed on stop
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

    def stop(self, *, flush: bool = True) -> None:
        """Flush the actors' cache buffers (bounded wait) unless told not to, then kill them."""
        import ray

        if flush and self.cache_root and self.handles:
            self._flush_caches()
        for handle in self.handles:
            ray.kill(handle, no_restart=True)
        self.handles = []

    def _flush_caches(self, timeout_s: float = FLUSH_TIMEOUT_S) -> int:
        """Each actor writes its buffered embeddings; waits at most `timeout_s`. A failure or a
        late actor is logged, never raised: those rows are recomputed by the next run."""
        import ray

        try:
            refs = [handle.flush_cache.remote() for handle in self.handles]
            ready, late = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        except Exception as exc:  # Ray going down: nothing more to save here
            logger.warning("embedding cache flush not started (%s: %s)", type(exc).__name__, exc)
            return 0
        written = 0
        for ref in ready:
            try:
                written += int(ray.get(ref))
            except Exception as exc:
                logger.warning(
                    "a CLIP model actor could not write its buffered cache rows; they will be "
                    "recomputed (%s: %s)",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[-1] if str(exc).strip() else "",
                )
        if late:
            logger.warning(
                "%d CLIP model actor(s) did not write their buffered cache rows within %.0f s; "
                "those rows will be recomputed",
                len(late),
                timeout_s,
            )
        return written


@contextmanager
def clip_model_actors(
    clip_cfg: ClipConfig, cache_root: str | None = None, *, load_model: bool = True
) -> Iterator[ClipActors]:
    """`clip.num_actors` CLIP model actors for the `with` block, spread over the nodes and
    restarted (calls retried) if a node is lost; the weights start loading at once unless
    `load_model` is false (a fully cached `visdiff embed` never needs them)."""
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
    actors = ClipActors(clip_cfg, handles, created_at, cache_root=cache_root)
    actors._ready = [h.start_report.remote() for h in handles]
    try:
        yield actors
    except BaseException:
        # Failing: kill at once (an actor's queued batches would delay a flush); its cache's
        # timer has written all but the last few seconds of rows.
        actors.stop(flush=False)
        raise
    actors.stop()
