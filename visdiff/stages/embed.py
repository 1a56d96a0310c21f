"""CLIP stages: decode + preprocess, the image forward pass and text embeddings, with an
optional content-addressed cache so that an image is never embedded twice.

Stage callables (no Ray needed; `Cls(clip_cfg)(batch)` on a numpy batch dict, as Ray Data's
`map_batches` hands them):
- `ClipPreprocessor`: rows -> uint8 PIXELS (resized and cropped, not yet normalised: a quarter
  of float32's bytes to move), ERROR, CONTENT_HASH, CACHED_EMBEDDING. The cache lookup sits here:
  a hit skips decoding too.
- `ClipImageEmbedder`: PIXELS -> EMBEDDING. It normalises the uint8 batch beside the model (on
  its device), which computes exactly open_clip's eval transform; float32 PIXELS that are already
  normalised are also accepted.
- `ClipTextEmbedder.embed`: texts -> unit vectors (hypotheses for ranking).

A run serves all three from its CLIP model actors (`visdiff.pipeline.actors`). Heavy imports
happen inside the callables, so importing this module is cheap. The cache buffers its writes
(`visdiff.cache.store`): whoever holds a `ClipImageEmbedder` calls `flush_cache()` before it goes
away; otherwise the store's timer writes them within seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig
from visdiff.stages.images import Batch, decode_all, load_bytes, passthrough, strings

if TYPE_CHECKING:
    from visdiff.cache.store import EmbeddingCache


def _open_cache(clip_cfg: ClipConfig, cache_root: str | None) -> EmbeddingCache | None:
    if not cache_root:
        return None
    from visdiff.cache.keys import clip_model_key
    from visdiff.cache.store import FLUSH_AFTER_S, EmbeddingCache

    # A bucket listed in the last few seconds is not listed again for a miss: a new image's
    # miss costs no LIST (10^4 new images: 256 LISTs instead of 6,338); a row another actor
    # wrote meanwhile is recomputed, never wrong.
    return EmbeddingCache(cache_root, clip_model_key(clip_cfg), relist_after_s=FLUSH_AFTER_S)


class ClipPreprocessor:
    """Rows -> PIXELS (uint8 (n, 3, H, W), resized and cropped), ERROR, CONTENT_HASH and, for
    cache hits, CACHED_EMBEDDING (float32 bytes; b"" for misses). IMAGE_BYTES is dropped here."""

    def __init__(
        self,
        clip_cfg: ClipConfig,
        cache_root: str | None = None,
        cache: EmbeddingCache | None = None,
    ) -> None:
        """`cache`: an open cache to look up in (the embedder's, in one process: it also sees
        the embeddings still buffered there); else one is opened on `cache_root`."""
        from visdiff.models.clip import build_pixel_transform, eval_preprocess_config

        self.transform = build_pixel_transform(clip_cfg)
        height, width = eval_preprocess_config(clip_cfg)["image_size"]
        self.shape = (3, int(height), int(width))
        self.cache = cache if cache is not None else _open_cache(clip_cfg, cache_root)

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

    def flush_cache(self) -> int:
        """Write the embeddings the cache still buffers (before this object goes away);
        returns the rows written. Failures raise (one line, from the store)."""
        if self.cache is None:
            return 0
        written = self.cache.flush()
        self.cache.close()
        return written

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
    """Texts -> one unit vector each (hypotheses for ranking)."""

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
