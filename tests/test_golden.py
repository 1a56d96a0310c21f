"""Golden outputs of the tiny models: a refactor that changes what they compute fails here.

A fixed set of generated images and hypotheses goes through the tiny CLIP (random weights from
a fixed seed) and the ranking statistics; the result must match tests/golden/tiny_ranked.json
within float32 rounding. Regenerate deliberately with `VISDIFF_UPDATE_GOLDEN=1` and say why in
the commit."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

GOLDEN = Path(__file__).parent / "golden" / "tiny_ranked.json"
HYPOTHESES = ["red circles", "blue squares", "a white background", "a photo of a cat"]


def _images() -> list:
    from PIL import Image, ImageDraw

    images = []
    for i in range(12):
        image = Image.new("RGB", (64, 64), "white")
        draw = ImageDraw.Draw(image)
        if i < 6:  # set A: red circles of growing size
            draw.ellipse((8, 8, 24 + 4 * i, 24 + 4 * i), fill=(220, 30, 30))
        else:  # set B: blue squares
            draw.rectangle((8, 8, 14 + 5 * (i - 6), 14 + 5 * (i - 6)), fill=(30, 30, 220))
        images.append(image)
    return images


def _compute() -> dict:
    import torch

    from visdiff.config import ClipConfig
    from visdiff.models.clip import clip_image_embeddings, clip_text_embeddings, load_clip
    from visdiff.rank.stats import auroc_many

    bundle = load_clip(ClipConfig())  # the tiny preset's default: random weights, fixed seed
    pixels = torch.stack([bundle.preprocess(image) for image in _images()])
    images = clip_image_embeddings(bundle, pixels)
    texts = clip_text_embeddings(bundle, HYPOTHESES)
    scores = images @ texts.T
    aurocs = auroc_many(scores[:6], scores[6:])
    return {
        "hypotheses": HYPOTHESES,
        "auroc": [float(x) for x in aurocs],
        "mean_a": [float(x) for x in scores[:6].mean(axis=0)],
        "mean_b": [float(x) for x in scores[6:].mean(axis=0)],
        "first_image_embedding_head": [float(x) for x in images[0, :8]],
        "first_text_embedding_head": [float(x) for x in texts[0, :8]],
    }


def test_tiny_models_and_ranking_match_the_golden_table():
    result = _compute()
    if os.environ.get("VISDIFF_UPDATE_GOLDEN") == "1":
        GOLDEN.write_text(json.dumps(result, indent=1) + "\n")
    expected = json.loads(GOLDEN.read_text())
    assert result["hypotheses"] == expected["hypotheses"]
    for key in expected:
        if key != "hypotheses":
            np.testing.assert_allclose(result[key], expected[key], atol=1e-5, err_msg=key)


def test_the_golden_table_can_fail():
    # The comparison has teeth: a swapped pair of hypotheses is not within tolerance.
    expected = json.loads(GOLDEN.read_text())
    swapped = expected["mean_a"][::-1]
    with pytest.raises(AssertionError):
        np.testing.assert_allclose(swapped, expected["mean_a"], atol=1e-5)
