"""Captioning stage for Ray Data `map_batches`: decode each row's image, caption the good ones.

The model loads once per actor in `__init__`; each batch costs one `generate` call. Rows whose
image cannot be decoded get an empty caption and an ERROR instead of failing the batch.
"""

from __future__ import annotations

import numpy as np

from visdiff import schema
from visdiff.config import CaptionerConfig
from visdiff.stages.embed import Batch, decode_uris


class Captioner:
    """Rows with URI -> GENERATED_CAPTION (str, "" on failure) and ERROR."""

    def __init__(self, captioner_cfg: CaptionerConfig) -> None:
        from visdiff.models.captioner import load_captioner

        self.cfg = captioner_cfg
        self.bundle = load_captioner(captioner_cfg)

    def __call__(self, batch: Batch) -> Batch:
        from visdiff.models.captioner import generate_captions

        images, errors = decode_uris(batch[schema.URI])
        good = [i for i, image in enumerate(images) if image is not None]
        captions = [""] * len(images)
        texts = generate_captions(
            self.bundle,
            [images[i] for i in good],
            prompt=self.cfg.prompt,
            max_new_tokens=self.cfg.max_new_tokens,
        )
        for i, text in zip(good, texts, strict=True):
            captions[i] = text
        out = {k: v for k, v in batch.items() if k not in (schema.ERROR, schema.GENERATED_CAPTION)}
        out[schema.GENERATED_CAPTION] = np.array(captions, dtype=object)
        out[schema.ERROR] = np.array(errors, dtype=object)
        return out
