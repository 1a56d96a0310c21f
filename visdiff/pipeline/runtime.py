"""Ray lifecycle for a run: join the configured cluster or start a local one, and only shut
down what this run started (so tests and notebooks can share one Ray)."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from visdiff.config import RayConfig

log = logging.getLogger(__name__)


def local_cpu_slots() -> int:
    """At least 4 logical CPUs: the caption, preprocess and embed actors and the LLM replica must
    all be resident at once (they share physical cores; a smaller count would serialise or stall
    the overlapping stages)."""
    return max(4, os.cpu_count() or 1)


@dataclass(frozen=True)
class RayStart:
    """What `ray_runtime` did: whether this run started (or joined) Ray, and how long it took."""

    started: bool
    seconds: float


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[RayStart]:
    import ray

    started = False
    began = time.perf_counter()
    if not ray.is_initialized():
        if cfg.address:
            log.info("joining Ray cluster at %s", cfg.address)
            ray.init(address=cfg.address, log_to_driver=True)
        else:
            store = cfg.object_store_memory_mb * 1024 * 1024 if cfg.object_store_memory_mb else None
            num_cpus = cfg.num_cpus or local_cpu_slots()
            log.info("starting a local Ray with %d CPU slots", num_cpus)
            ray.init(
                num_cpus=num_cpus,
                object_store_memory=store,
                include_dashboard=False,
                log_to_driver=False,
            )
        started = True
    try:
        yield RayStart(started, round(time.perf_counter() - began, 3))
    finally:
        if started:
            ray.shutdown()
