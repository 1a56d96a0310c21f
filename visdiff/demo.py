"""A small demo dataset the project makes itself (no downloads): set A shows red round things,
set B blue square things, and set A holds one corrupt file to show skip accounting."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw


def _draw(rng: np.random.Generator, *, shape: str, colour: tuple[int, int, int]) -> Image.Image:
    size = 96
    background = tuple(int(v) for v in rng.integers(150, 256, size=3))
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(1, 4))):
        x, y = rng.integers(5, 55, size=2)
        w = int(rng.integers(20, 40))
        jitter = rng.integers(-30, 30, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter, strict=True))
        box = (int(x), int(y), int(x) + w, int(y) + w)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


def make_demo_sets(root: str | Path, *, n_per_set: int = 24, seed: int = 0) -> tuple[Path, Path]:
    """Writes `root/set_a` and `root/set_b`; returns both folders. Idempotent for a given seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    folders = []
    for name, shape, colour in (
        ("set_a", "circle", (210, 40, 40)),
        ("set_b", "square", (40, 60, 210)),
    ):
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_set):
            _draw(rng, shape=shape, colour=colour).save(folder / f"{name}_{i:04d}.jpg", quality=90)
        folders.append(folder)
    (folders[0] / "corrupt_0000.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    return folders[0], folders[1]
