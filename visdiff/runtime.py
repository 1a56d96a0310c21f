"""Ray lifecycle for a run: join the configured cluster or start a local one, and only shut
down what this run started (so tests and notebooks can share one Ray)."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

from visdiff.config import RayConfig

log = logging.getLogger(__name__)


def local_cpu_slots() -> int:
    """At least 4 logical CPUs: the caption, preprocess and embed actors and the LLM replica must
    all be resident at once (they share physical cores; a smaller count would serialise or stall
    the overlapping stages)."""
    return max(4, os.cpu_count() or 1)


@contextmanager
def ray_runtime(cfg: RayConfig) -> Iterator[None]:
    import ray

    started = False
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
        yield
    finally:
        if started:
            ray.shutdown()
