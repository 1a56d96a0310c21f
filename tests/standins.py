"""Small generated stand-ins for the four application studies (configs/applications/): the same
layout and columns as the real data, with a few tiny PIL images each, so that every study's
config runs end to end in the tests without downloading ImageNet, LaMem or diffusion outputs.

Each generator writes under `root` and returns a `StandIn`: the manifest (or image folder) and
the `key=value` overrides that point the study's config at it. Images differ by colour and shape
between the two sets, and every manifest carries a caption column, so a run can propose from
the captions (caption.source=manifest) without loading a captioner."""

from __future__ import annotations

import csv
import random
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, ImageDraw

REPO = Path(__file__).resolve().parents[1]
APPLICATIONS = REPO / "configs" / "applications"
SIZE = 40  # pixels per side: enough for the tiny CLIP (32) and a resnet18 (any size)

# The ImageNet class each study's config names; the stand-ins use these names too.
IMAGENET_CLASS = "dining table"
OTHER_CLASS = "tabby cat"
SD_PROMPTS = (
    "a red fox in the snow",
    "a lighthouse at dusk",
    "a bowl of ramen",
    "an astronaut riding a horse",
    "a city street in the rain",
    "a watercolor of a sailboat",
    "a robot reading a book",
    "a cup of coffee on a table",
)
# Memorability scores: LaMem's lie in about [0.4, 1.0]; the config keeps the top and bottom
# quartiles (see configs/applications/memorability/README.md).
MEMORABILITY_SCORES = (0.45, 0.52, 0.58, 0.62, 0.66, 0.72, 0.76, 0.80, 0.86, 0.90, 0.93, 0.97)


@dataclass
class StandIn:
    study: str  # the folder under configs/applications/
    root: Path
    manifest: Path | None  # None for a folder input (the predictions helper's)
    overrides: list[str] = field(default_factory=list)  # key=value pointing the config here
    count: int = 0  # images written

    @property
    def config(self) -> Path:
        return APPLICATIONS / self.study / "config.yaml"


def _seed(*parts: object) -> int:
    """A seed from names and numbers, equal in every process (unlike `hash` of a string)."""
    return zlib.crc32("/".join(map(str, parts)).encode())


def draw(path: Path, color: tuple[int, int, int], shape: str, seed: int) -> None:
    """A small image: a coloured background, a shape, and seeded noise (so no two are equal)."""
    rng = random.Random(seed)
    image = Image.new("RGB", (SIZE, SIZE), color)
    pen = ImageDraw.Draw(image)
    box = [rng.randint(2, 10), rng.randint(2, 10), rng.randint(26, 36), rng.randint(26, 36)]
    ink = tuple(255 - c for c in color)
    if shape == "circle":
        pen.ellipse(box, fill=ink)
    elif shape == "square":
        pen.rectangle(box, fill=ink)
    else:
        pen.line(box, fill=ink, width=3)
    for _ in range(20):
        x, y = rng.randrange(SIZE), rng.randrange(SIZE)
        image.putpixel((x, y), tuple(rng.randrange(256) for _ in range(3)))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def _write_csv(path: Path, rows: list[dict[str, object]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def imagenet_v2(root: Path, per_class: int = 12) -> StandIn:
    """manifest.csv: path, group_name (imagenet | imagenetv2), class, caption; two classes, the
    config's class and one more, `per_class` images per dataset and class."""
    rows: list[dict[str, object]] = []
    looks = {"imagenet": ((200, 60, 40), "circle"), "imagenetv2": ((40, 80, 200), "square")}
    for dataset, (color, shape) in looks.items():
        for c, name in enumerate((IMAGENET_CLASS, OTHER_CLASS)):
            for i in range(per_class):
                rel = f"{dataset}/{name.replace(' ', '_')}/{i:03d}.png"
                draw(root / rel, color, shape, seed=_seed(dataset, c, i))
                caption = f"a {shape} photo of a {name}, {'indoors' if c else 'on a desk'}"
                rows.append({"path": rel, "group_name": dataset, "class": name, "caption": caption})
    manifest = _write_csv(root / "manifest.csv", rows)
    return StandIn("imagenet_v2", root, manifest, [f"data.manifest={manifest}"], len(rows))


def labelled_folder(root: Path, per_class: int = 8) -> StandIn:
    """An ImageFolder-style set for the predictions helper: <root>/<class>/<image>.png."""
    looks = {IMAGENET_CLASS: ((220, 200, 40), "circle"), OTHER_CLASS: ((30, 160, 90), "line")}
    for c, (name, (color, shape)) in enumerate(looks.items()):
        for i in range(per_class):
            draw(root / name / f"{i:03d}.png", color, shape, seed=100 * c + i)
    return StandIn("classifier_failures", root, None, [], per_class * len(looks))


def classifier_failures(root: Path, per_group: int = 8) -> StandIn:
    """predictions.parquet as jobs/predict.py writes it (path, group_name, label, clip_pred,
    clip_correct, resnet_pred, resnet_correct) beside its images: `per_group` images where CLIP
    is right and ResNet wrong, as many where both are right, and a few where CLIP is wrong."""
    import pandas as pd

    classes = (IMAGENET_CLASS, OTHER_CLASS)
    kinds = [("clip_only", per_group), ("both", per_group), ("resnet_only", 3)]
    rows = []
    for kind, n in kinds:
        for i in range(n):
            label = classes[i % 2]
            wrong = classes[(i + 1) % 2]
            rel = f"{label.replace(' ', '_')}/{kind}_{i:03d}.png"
            look = ((240, 240, 240), "line") if kind == "clip_only" else ((60, 60, 60), "circle")
            draw(root / rel, *look, seed=_seed(kind, i))
            clip_pred = wrong if kind == "resnet_only" else label
            resnet_pred = wrong if kind == "clip_only" else label
            rows.append(
                {
                    "path": rel,
                    "group_name": "imagenetv2",
                    "label": label,
                    "clip_pred": clip_pred,
                    "clip_correct": clip_pred == label,
                    "resnet_pred": resnet_pred,
                    "resnet_correct": resnet_pred == label,
                    "caption": f"a {'sketch' if kind == 'clip_only' else 'photo'} of a {label}",
                }
            )
    manifest = root / "predictions.parquet"
    pd.DataFrame(rows).to_parquet(manifest, index=False)
    return StandIn("classifier_failures", root, manifest, [f"data.manifest={manifest}"], len(rows))


def sd_v1_v2(root: Path) -> StandIn:
    """manifest.csv: path, group_name (sd_v1 | sd_v2), prompt, caption: one image per model and
    prompt, the pair sharing its prompt."""
    rows: list[dict[str, object]] = []
    looks = {"sd_v2": ((250, 180, 30), "square"), "sd_v1": ((90, 90, 160), "circle")}
    for model, (color, shape) in looks.items():
        for i, prompt in enumerate(SD_PROMPTS):
            rel = f"{model}/{i:03d}.png"
            draw(root / rel, color, shape, seed=_seed(model, i))
            style = "vivid, high contrast" if model == "sd_v2" else "soft, muted colours"
            rows.append(
                {
                    "path": rel,
                    "group_name": model,
                    "prompt": prompt,
                    "caption": f"{prompt}, {style}",
                }
            )
    manifest = _write_csv(root / "manifest.csv", rows)
    return StandIn("sd_v1_v2", root, manifest, [f"data.manifest={manifest}"], len(rows))


def memorability(root: Path) -> StandIn:
    """manifest.csv: path, group_name (lamem), score, caption, as LaMem's splits give them
    (image name and memorability score) turned into a manifest."""
    rows: list[dict[str, object]] = []
    for i, score in enumerate(MEMORABILITY_SCORES):
        memorable = score >= 0.84
        rel = f"images/{i:08d}.jpg"
        look = ((230, 30, 30), "circle") if memorable else ((120, 140, 120), "line")
        draw(root / rel, *look, seed=i)
        caption = "a close-up of a person's face" if memorable else "a wide view of a landscape"
        rows.append({"path": rel, "group_name": "lamem", "score": score, "caption": caption})
    manifest = _write_csv(root / "manifest.csv", rows)
    return StandIn("memorability", root, manifest, [f"data.manifest={manifest}"], len(rows))


GENERATORS = {
    "imagenet_v2": imagenet_v2,
    "classifier_failures": classifier_failures,
    "sd_v1_v2": sd_v1_v2,
    "memorability": memorability,
}
