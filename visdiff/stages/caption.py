"""Captioning stage for Ray Data `map_batches`: decode each row's image, caption the good ones,
reusing (and filling) the caption cache when one is configured.

The model loads once per actor in `__init__`; each batch costs one `generate` call. Rows whose
image cannot be decoded get an empty caption and an ERROR instead of failing the batch.

The caption cache buffers its writes (`visdiff.cache.store`). Ray Data's only end-of-actor hook for
a callable class is its `__del__`, which it triggers on a graceful actor exit (the pool released
after the dataset is consumed; not on a kill): `Captioner.__del__` flushes there, and the store's
timer writes buffered captions within seconds otherwise (a killed actor loses at most those).
"""

from __future__ import annotations

import logging

import numpy as np

from visdiff import schema
from visdiff.config import CaptionerConfig
from visdiff.stages.images import Batch, decode_all, load_bytes, passthrough, strings

logger = logging.getLogger(__name__)


class Captioner:
    """Rows (URI or IMAGE_BYTES) -> GENERATED_CAPTION (str, "" on failure) and ERROR."""

    def __init__(self, captioner_cfg: CaptionerConfig, cache_root: str | None = None) -> None:
        from visdiff.models.captioner import load_captioner

        self.cfg = captioner_cfg
        self.bundle = load_captioner(captioner_cfg)
        self.cache = None
        if cache_root:
            from visdiff.cache.keys import captioner_model_key
            from visdiff.cache.store import FLUSH_AFTER_S, CaptionCache

            key = captioner_model_key(captioner_cfg)  # a listed bucket is not re-listed per miss
            self.cache = CaptionCache(cache_root, key, relist_after_s=FLUSH_AFTER_S)

    def __call__(self, batch: Batch) -> Batch:
        from visdiff.cache.keys import content_hash
        from visdiff.models.captioner import generate_captions

        datas, errors = load_bytes(batch)
        n = len(datas)
        captions = [""] * n
        hashes = [content_hash(d) if d is not None else "" for d in datas]
        if self.cache is not None:
            hits = self.cache.lookup([h for h in hashes if h])
            for i, h in enumerate(hashes):
                if h in hits:
                    captions[i] = str(hits[h])
        done = {i for i in range(n) if captions[i]}
        images = decode_all(datas, errors, skip=done)
        todo = [i for i, image in enumerate(images) if image is not None]
        texts = generate_captions(
            self.bundle,
            [images[i] for i in todo],
            prompt=self.cfg.prompt,
            max_new_tokens=self.cfg.max_new_tokens,
        )
        for i, text in zip(todo, texts, strict=True):
            captions[i] = text
        if self.cache is not None and todo:
            self.cache.put([hashes[i] for i in todo], [captions[i] for i in todo])
        out = passthrough(batch, drop=(schema.ERROR, schema.GENERATED_CAPTION, schema.IMAGE_BYTES))
        out[schema.GENERATED_CAPTION] = np.array(captions, dtype=object)
        out[schema.ERROR] = strings(errors)
        return out

    def close(self) -> None:
        """Write the captions the cache still buffers (idempotent; failures raise)."""
        cache = getattr(self, "cache", None)  # absent when __init__ failed
        if cache is not None:
            cache.close()

    def __del__(self) -> None:
        # Ray Data's teardown hook for map_batches classes (see the module docstring); never
        # raises, as nothing could handle it here.
        try:
            self.close()
        except Exception as exc:
            logger.warning(
                "caption cache: buffered captions not written (%s: %s); they will be recomputed",
                type(exc).__name__,
                exc,
            )
