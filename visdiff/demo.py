"""A small demo dataset the project makes itself (no downloads): set A shows red circles, set B
blue squares, on backgrounds and in counts that both sets share. A manifest gives each
image a caption that says what it shows, so `visdiff demo` runs the offline mode (models=offline)
and prints differences a person can check by eye. Set A also holds one corrupt file, listed in
the manifest with a caption, to show that a broken image is skipped and counted."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SIZE = 96
# Neutral backgrounds only: the sentence model finds "beige" or "pale yellow" a little closer to
# captions about red shapes than to those about blue ones, which would rank a shared background
# as a difference.
BACKGROUNDS = {"white": (245, 245, 245), "light grey": (200, 200, 200)}
COUNTS = ("one", "two", "three")
PHRASINGS = (
    "{count} {shapes} on a {background} background",
    "{count} {shapes} against a {background} background",
    "a drawing of {count} {shapes} on {background}",
)
# folder = group name, shape, colour word, RGB
SETS = (("set_a", "circle", "red", (210, 40, 40)), ("set_b", "square", "blue", (40, 60, 210)))
CORRUPT = "corrupt_0000.jpg"


def _draw(
    rng: np.random.Generator,
    *,
    shape: str,
    colour: tuple[int, int, int],
    background: tuple[int, int, int],
    count: int,
) -> Image.Image:
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    for _ in range(count):
        w = int(rng.integers(18, 40))
        x, y = (int(v) for v in rng.integers(2, SIZE - w - 2, size=2))
        jitter = rng.integers(-30, 30, size=3)
        fill = tuple(int(np.clip(c + j, 0, 255)) for c, j in zip(colour, jitter, strict=True))
        box = (x, y, x + w, y + w)
        if shape == "circle":
            draw.ellipse(box, fill=fill)
        else:
            draw.rectangle(box, fill=fill)
    return image


def _caption(count: int, colour: str, shape: str, background: str, form: int) -> str:
    shapes = f"{colour} {shape}{'s' if count > 1 else ''}"
    words = "a" if count == 1 else COUNTS[count - 1]
    return PHRASINGS[form].format(count=words, shapes=shapes, background=background)


def make_demo_sets(root: str | Path, *, n_per_set: int = 24, seed: int = 0) -> Path:
    """Writes `root/set_a`, `root/set_b` and `root/manifest.csv` (path, group_name, caption);
    returns the manifest. Idempotent for a given seed."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    rows = []
    names = list(BACKGROUNDS)
    for group, shape, colour_word, colour in SETS:
        folder = root / group
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_set):
            # Shared attributes in equal shares in both sets: only colour and shape differ.
            background = names[i % len(names)]
            count = 1 + (i // len(names)) % len(COUNTS)
            image = _draw(
                rng,
                shape=shape,
                colour=colour,
                background=BACKGROUNDS[background],
                count=count,
            )
            name = f"{group}_{i:04d}.jpg"
            image.save(folder / name, quality=90)
            form = i % len(PHRASINGS)
            caption = _caption(count, colour_word, shape, background, form)
            rows.append((f"{group}/{name}", group, caption))
    (root / "set_a" / CORRUPT).write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    rows.append((f"set_a/{CORRUPT}", "set_a", "a red circle on a white background"))
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(("path", "group_name", "caption"))
        writer.writerows(rows)
    return manifest


def demo_overrides(root: str | Path) -> list[str]:
    """The config of `visdiff demo`: the offline mode on the demo data under `root`
    (`root/data`, run folder `root/run`, replaced by each rerun)."""
    root = Path(root)
    manifest = make_demo_sets(root / "data")
    return [
        "models=offline",
        f"data.manifest={manifest}",
        "data.group_a=set_a",
        "data.group_b=set_b",
        f"output_dir={root / 'run'}",
        "overwrite=true",  # the demo owns its run folder: a rerun replaces it
        # One round of 10 captions per set: the rest (about 14 per set) stay held out for the tests.
        "propose.num_rounds=1",
        "propose.num_samples=10",
    ]
