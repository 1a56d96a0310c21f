"""CLIP stages for Ray Data `map_batches`: decode + preprocess on CPU actors, embed on model actors.

Splitting decode from embedding lets the pipeline scale the cheap CPU part independently of the
(possibly GPU) model actors. Heavy imports happen in `__init__`, inside the actor, so importing
this module to hand the classes to Ray stays cheap.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig

Batch = dict[str, np.ndarray]


def _strings(values: list[str]) -> np.ndarray:
    return np.array(values, dtype=object)


def decode_error_text(exc: Exception) -> str:
    """ERROR column text "<reason>: <detail>" for an ImageDecodeError."""
    reason = str(getattr(exc, "reason", "read_error"))
    detail = str(getattr(exc, "detail", "") or "")
    text = str(exc)
    if detail:
        return f"{reason}: {detail}"
    if text.startswith(reason):
        return text
    return f"{reason}: {text}" if text else reason


def decode_uris(uris: np.ndarray) -> tuple[list[Any], list[str]]:
    """Decode every URI; a failure becomes (None, "<reason>: <detail>") instead of an exception.

    One bad file among thousands must cost one row, never the batch.
    """
    from visdiff.sources.decode import ImageDecodeError, read_and_decode

    images: list[Any] = []
    errors: list[str] = []
    for uri in uris:
        try:
            images.append(read_and_decode(str(uri)))
            errors.append("")
        except ImageDecodeError as exc:
            images.append(None)
            errors.append(decode_error_text(exc))
        except Exception as exc:  # a decoder bug must not sink the batch either
            images.append(None)
            errors.append(f"read_error: {type(exc).__name__}: {exc}")
    return images, errors


def _passthrough(batch: Batch, drop: tuple[str, ...] = ()) -> Batch:
    return {key: value for key, value in batch.items() if key not in drop}


class ClipPreprocessor:
    """Row URIs -> PIXELS (float32 (n, 3, H, W)) + ERROR, using only the eval transform."""

    def __init__(self, clip_cfg: ClipConfig) -> None:
        from visdiff.models.clip import build_eval_transform, eval_preprocess_config

        self.transform = build_eval_transform(clip_cfg)
        height, width = eval_preprocess_config(clip_cfg)["image_size"]
        self.shape = (3, int(height), int(width))

    def __call__(self, batch: Batch) -> Batch:
        uris = batch[schema.URI]
        images, errors = decode_uris(uris)
        pixels = np.zeros((len(uris), *self.shape), dtype=np.float32)
        for i, image in enumerate(images):
            if image is None:
                continue
            try:
                pixels[i] = self.transform(image).numpy()
            except Exception as exc:
                errors[i] = f"preprocess_error: {type(exc).__name__}: {exc}"
        out = _passthrough(batch, drop=(schema.PIXELS, schema.ERROR))
        out[schema.PIXELS] = pixels
        out[schema.ERROR] = _strings(errors)
        return out


class ClipImageEmbedder:
    """PIXELS -> EMBEDDING (unit float32 (n, D)); failed rows keep zeros and their ERROR."""

    def __init__(self, clip_cfg: ClipConfig) -> None:
        from visdiff.models.clip import load_clip

        self.batch_size = clip_cfg.batch_size
        self.bundle = load_clip(clip_cfg)

    def __call__(self, batch: Batch) -> Batch:
        import torch

        from visdiff.models.clip import clip_image_embeddings

        pixels = batch[schema.PIXELS]
        n = len(pixels)
        errors = [str(e) for e in batch.get(schema.ERROR, [""] * n)]
        ok = np.array([i for i, error in enumerate(errors) if not error], dtype=np.int64)
        embeddings = np.zeros((n, self.bundle.embed_dim), dtype=np.float32)
        for start in range(0, len(ok), self.batch_size):
            rows = ok[start : start + self.batch_size]
            chunk = torch.from_numpy(np.asarray(pixels[rows], dtype=np.float32).copy())
            embeddings[rows] = clip_image_embeddings(self.bundle, chunk)
        out = _passthrough(batch, drop=(schema.PIXELS, schema.ERROR))
        out[schema.ERROR] = _strings(errors)
        out[schema.EMBEDDING] = embeddings
        return out


class ClipTextEmbedder:
    """Column "text" -> EMBEDDING, one unit vector per text (hypotheses for ranking)."""

    TEXT = "text"

    def __init__(self, clip_cfg: ClipConfig) -> None:
        from visdiff.models.clip import load_clip

        self.batch_size = clip_cfg.batch_size
        self.bundle = load_clip(clip_cfg)

    def __call__(self, batch: Batch) -> Batch:
        from visdiff.models.clip import clip_text_embeddings

        texts = [str(t) for t in batch[self.TEXT]]
        parts = [
            clip_text_embeddings(self.bundle, texts[start : start + self.batch_size])
            for start in range(0, len(texts), self.batch_size)
        ]
        embeddings = (
            np.concatenate(parts) if parts else np.zeros((0, self.bundle.embed_dim), np.float32)
        )
        return {self.TEXT: _strings(texts), schema.EMBEDDING: embeddings}
