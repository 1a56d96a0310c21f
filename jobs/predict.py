"""`ray job submit --working-dir . -- python jobs/predict.py --input DIR --clip clip ARCH TAG
--torchvision resnet MODEL WEIGHTS [--output predictions.parquet]`

The predictions table of the classifier-failure study (configs/applications/
classifier_failures/README.md): each image of a labelled set through open_clip zero-shot and
torchvision classifiers, with `<name>_pred` and `<name>_correct` columns. Joins the cluster of a
Ray job (RAY_ADDRESS), else starts a local Ray; `python jobs/predict.py ...` works too."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# Under `ray job submit --working-dir .` the repo root is the cwd but not on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from visdiff.errors import VisdiffError  # noqa: E402


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="jobs/predict.py",
        description="Classify a labelled image set with open_clip zero-shot and torchvision "
        "models; write path, group_name, label, <name>_pred, <name>_correct.",
    )
    p.add_argument(
        "--input",
        required=True,
        help="folder laid out <folder>/<class>/<image>, or a manifest with path + label",
    )
    p.add_argument(
        "--output",
        default=None,
        help="table to write (.parquet or .csv); default: predictions.parquet in the input folder",
    )
    # One flag per classifier kind, each repeatable: NAME prefixes the model's columns.
    for flag, metavar, example in (
        (
            "--clip",
            ("NAME", "ARCH", "PRETRAINED"),
            "an open_clip zero-shot classifier, e.g. clip ViT-H-14 laion2b_s32b_b79k",
        ),
        (
            "--torchvision",
            ("NAME", "MODEL", "WEIGHTS"),
            "a torchvision classifier, e.g. resnet resnet50 IMAGENET1K_V1",
        ),
    ):
        p.add_argument(
            flag,
            nargs=3,
            action="append",
            default=[],
            metavar=metavar,
            help=f"{example} ({metavar[2]} none: random init)",
        )
    p.add_argument(
        "--classes",
        default=None,
        help="class names: one per line in index order, a JSON list, or a JSON object "
        "{label: name}; default: the torchvision weights' categories, else the labels",
    )
    p.add_argument("--label-column", default="label", help="manifest input: the label column")
    p.add_argument(
        "--template", default="a photo of a {}.", help="zero-shot prompt, {} = class name"
    )
    p.add_argument("--batch-size", type=int, default=32, help="images per forward pass")
    p.add_argument("--num-actors", type=int, default=1, help="actors per model")
    p.add_argument("--num-cpus", type=float, default=1.0, help="CPUs per actor")
    p.add_argument("--num-gpus", type=float, default=0.0, help="GPUs per actor (fractions share)")
    p.add_argument(
        "--ray-address",
        default=os.environ.get("RAY_ADDRESS"),
        help="Ray cluster to join; default: $RAY_ADDRESS (set inside a Ray job), else a local Ray",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return _run(args)
    except VisdiffError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


def _run(args: argparse.Namespace) -> int:
    from visdiff.config import RayConfig
    from visdiff.errors import ConfigError
    from visdiff.io import storage
    from visdiff.pipeline.predict import run_predictions
    from visdiff.stages.classify import ClassifierSpec, parse_pretrained, read_class_names

    if args.batch_size < 1 or args.num_actors < 1 or args.num_cpus < 0 or args.num_gpus < 0:
        raise ConfigError("--batch-size and --num-actors must be >= 1, --num-cpus/--num-gpus >= 0")
    if args.template.count("{}") != 1:
        raise ConfigError(f"--template {args.template!r} must hold exactly one {{}}")
    specs = [
        ClassifierSpec(name, kind, arch, parse_pretrained(tag))
        for kind, given in (("open_clip", args.clip), ("torchvision", args.torchvision))
        for name, arch, tag in given
    ]
    if not specs:
        raise ConfigError("no classifier given: name at least one with --clip or --torchvision")
    classes = None
    if args.classes:
        if not storage.is_file(args.classes):
            raise ConfigError(f"--classes '{args.classes}' not found; pass a class-names file")
        text = storage.read_bytes(args.classes).decode("utf-8")
        classes = read_class_names(text, args.classes)
    predictions, output = run_predictions(
        args.input,
        args.output,
        specs,
        ray_cfg=RayConfig(address=args.ray_address or None),
        label_column=args.label_column,
        classes=classes,
        template=args.template,
        batch_size=args.batch_size,
        num_actors=args.num_actors,
        num_cpus=args.num_cpus,
        num_gpus=args.num_gpus,
    )
    table = predictions.table
    print(f"wrote {output}: {len(table)} images, {len(predictions.classes)} classes")
    for name, accuracy in predictions.accuracy().items():
        print(f"  {name}: top-1 accuracy {accuracy:.3f}")
    if len(predictions.specs) >= 2:
        first, second = predictions.specs[:2]
        right, wrong = table[first.correct_column], table[second.correct_column]
        print(
            f"  {first.name} right, {second.name} wrong: {int((right & ~wrong).sum())}; "
            f"both right: {int((right & wrong).sum())}"
        )
    if predictions.skipped:
        reasons: dict[str, int] = {}
        for row in predictions.skipped:
            reason = row["reason"].split(":", 1)[0]
            reasons[reason] = reasons.get(reason, 0) + 1
        counts = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items()))
        print(f"  skipped {len(predictions.skipped)} inputs ({counts})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
