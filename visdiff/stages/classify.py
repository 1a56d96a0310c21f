"""Classifier stages for the predictions helper (`visdiff.pipeline.predict`): an open_clip model
as a zero-shot classifier ("a photo of a {class}." prompts) and a torchvision classifier, each a
Ray-free callable mapping a batch of image rows to a `<name>_pred` column, as Ray Data's
`map_batches` hands them. A predictions table with `<name>_correct` columns is what the
classifier-failure study filters on (e.g. `clip_correct and not resnet_correct`).

Predictions are class names, never indices, so that two models with different heads compare on
the same labels. Heavy imports happen inside the callables, so importing this module is cheap."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import ClipConfig
from visdiff.errors import ConfigError, InputError, ModelUnavailableError, first_line
from visdiff.stages.images import Batch, decode_all, load_bytes, passthrough, strings

KINDS = ("open_clip", "torchvision")
LABEL = "label"  # the true class name of a row
PRED_SUFFIX = "_pred"
CORRECT_SUFFIX = "_correct"
DEFAULT_TEMPLATE = "a photo of a {}."
RANDOM_INIT = "none"  # the pretrained/weights value that asks for random weights (tests)
INIT_SEED = 0  # random-init weights must match across actors
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class ClassifierSpec:
    """One model of a predictions run. `name` prefixes its columns (`<name>_pred`,
    `<name>_correct`), so it must be an identifier a filter expression can name."""

    name: str
    kind: str  # open_clip | torchvision
    arch: str  # open_clip model name (or visdiff-tiny-clip) / torchvision model name
    pretrained: str | None  # open_clip tag or torchvision weights name; None = random init

    def __post_init__(self) -> None:
        if not _NAME.match(self.name) or self.name == LABEL:
            raise ConfigError(
                f"classifier name '{self.name}' must be an identifier (letters, digits, _) other "
                f"than '{LABEL}': it names the columns {self.name}{PRED_SUFFIX} and "
                f"{self.name}{CORRECT_SUFFIX}"
            )
        if self.kind not in KINDS:
            raise ConfigError(f"classifier kind '{self.kind}' is not one of: {', '.join(KINDS)}")

    @property
    def pred_column(self) -> str:
        return self.name + PRED_SUFFIX

    @property
    def correct_column(self) -> str:
        return self.name + CORRECT_SUFFIX


def parse_pretrained(value: str | None) -> str | None:
    """The command line's `none` (any case) or empty means random init."""
    if value is None or not value.strip() or value.strip().lower() == RANDOM_INIT:
        return None
    return value.strip()


# ------------------------------------------------------------------------------ class names


def read_class_names(text: str, source: str) -> list[str] | dict[str, str]:
    """A class-names file: a JSON list (index order), a JSON object {label: class name}, or plain
    text with one name per line (line i is class index i)."""
    stripped = text.strip()
    if stripped[:1] in ("[", "{"):
        try:
            loaded = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise InputError(f"class names '{source}' is not valid JSON: {exc}") from None
        if isinstance(loaded, dict):
            return {str(k): str(v) for k, v in loaded.items()}
        names = [str(v) for v in loaded]
    else:
        names = [line.strip() for line in stripped.splitlines() if line.strip()]
    if not names:
        raise InputError(f"class names '{source}' holds no names; write one class name per line")
    return names


def candidate_classes(
    given: list[str] | dict[str, str] | None, labels: Iterable[str], model_categories: Any = None
) -> list[str]:
    """The classes the models choose among: the given names (a mapping's values, in order), else
    the categories of pretrained torchvision weights, else the sorted labels of the data."""
    if isinstance(given, dict):
        return list(dict.fromkeys(given.values()))
    if given:
        return list(given)
    if model_categories:
        return [str(c) for c in model_categories]
    return sorted({str(label) for label in labels})


def label_to_class(
    label: str, classes: Sequence[str], given: list[str] | dict[str, str] | None
) -> str:
    """A row's label as a class name: through the given mapping, as a name among `classes`, or
    as an index into `classes` (ImageNetV2's folders are named 0..999). InputError otherwise."""
    label = str(label).strip()
    if isinstance(given, dict) and label in given:
        return given[label]
    if label in classes:
        return label
    if label.isdigit() and int(label) < len(classes):
        return classes[int(label)]
    raise InputError(
        f"label '{label}' is neither a class name nor a class index (0..{len(classes) - 1}); "
        "pass --classes with the class names (one per line, index order) or a JSON mapping"
    )


def add_correct_columns(table: Any, specs: Sequence[ClassifierSpec]) -> Any:
    """`<name>_correct` (bool) beside each `<name>_pred` of a pandas table with a label column."""
    for spec in specs:
        table[spec.correct_column] = (table[spec.pred_column] == table[LABEL]).astype(bool)
    return table


# ------------------------------------------------------------------------------ stages


def _decoded(batch: Batch) -> tuple[list[Any], list[str]]:
    """The batch's images (None for failed rows) and the per-row error texts."""
    datas, errors = load_bytes(batch)
    return decode_all(datas, errors), errors


def _with_predictions(
    batch: Batch, spec: ClassifierSpec, predictions: list[str], errors: list[str]
) -> Batch:
    out = passthrough(batch, drop=(schema.ERROR, schema.IMAGE_BYTES))
    out[spec.pred_column] = strings(predictions)
    out[schema.ERROR] = strings(errors)
    return out


class _BatchClassifier:
    """What both classifiers share: decoding, batching and the `<name>_pred` column; a subclass
    gives `_best_indices`, the class index of each image in one batch."""

    def __init__(self, spec: ClassifierSpec, class_names: Sequence[str], batch_size: int) -> None:
        self.spec = spec
        self.classes = list(class_names)
        self.batch_size = batch_size

    def _best_indices(self, images: list[Any]) -> Iterable[Any]:
        raise NotImplementedError

    def __call__(self, batch: Batch) -> Batch:
        images, errors = _decoded(batch)
        predictions = [""] * len(images)
        good = [i for i, image in enumerate(images) if image is not None]
        for start in range(0, len(good), self.batch_size):
            rows = good[start : start + self.batch_size]
            best = self._best_indices([images[i] for i in rows])
            for i, index in zip(rows, best, strict=True):
                predictions[i] = self.classes[int(index)]
        return _with_predictions(batch, self.spec, predictions, errors)


class ZeroShotClassifier(_BatchClassifier):
    """An open_clip model choosing among `class_names` by the cosine of the image to each
    prompt `template.format(name)`; adds `<name>_pred` (the class name, "" for failed rows)."""

    def __init__(
        self,
        spec: ClassifierSpec,
        class_names: Sequence[str],
        *,
        template: str = DEFAULT_TEMPLATE,
        num_gpus: float = 0.0,
        batch_size: int = 32,
    ) -> None:
        from visdiff.models.clip import clip_text_embeddings, load_clip

        super().__init__(spec, class_names, batch_size)
        cfg = ClipConfig(arch=spec.arch, pretrained=spec.pretrained, num_gpus=num_gpus)
        try:
            self.bundle = load_clip(cfg)
        except Exception as exc:
            raise ModelUnavailableError(
                f"open_clip model '{spec.arch}' (pretrained={spec.pretrained}) for classifier "
                f"'{spec.name}' could not be loaded: {first_line(exc, typed=True)}; check the "
                "name and tag (open_clip.list_pretrained()) and that the weights are reachable"
            ) from None
        prompts = [template.format(name) for name in self.classes]
        self.text = clip_text_embeddings(self.bundle, prompts)  # (C, D), unit norm

    def _best_indices(self, images: list[Any]) -> Iterable[Any]:
        import torch

        from visdiff.models.clip import clip_image_embeddings

        pixels = torch.stack([self.bundle.preprocess(image) for image in images])
        scores = clip_image_embeddings(self.bundle, pixels) @ self.text.T
        return np.argmax(scores, axis=1)


def _weights(arch: str, tag: str) -> Any:
    """torchvision's weights enum member for `arch` (`DEFAULT`, `IMAGENET1K_V2`, or the full
    `ResNet50_Weights.IMAGENET1K_V2`)."""
    import torchvision

    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ConfigError(
            f"'{arch}' is not a torchvision classification model; see "
            "torchvision.models.list_models()"
        ) from None
    member = tag.split(".", 1)[1] if tag.startswith(enum.__name__ + ".") else tag
    try:
        return enum[member]
    except KeyError:
        known = ", ".join(enum.__members__)
        raise ConfigError(
            f"torchvision weights '{tag}' of '{arch}' unknown; one of: {known}"
        ) from None


def eval_transform(image_size: int = 224) -> Any:
    """The usual ImageNet eval transform, for randomly initialised torchvision models."""
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(int(round(image_size * 256 / 224))),
            transforms.CenterCrop(image_size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )


def weights_categories(spec: ClassifierSpec) -> list[str] | None:
    """The class names pretrained torchvision weights predict (None for open_clip or random
    init); reads only torchvision's metadata, no download."""
    if spec.kind != "torchvision" or spec.pretrained is None:
        return None
    categories = _weights(spec.arch, spec.pretrained).meta.get("categories")
    return [str(c) for c in categories] if categories else None


class TorchvisionClassifier(_BatchClassifier):
    """A torchvision classifier; adds `<name>_pred` (the class name, "" for failed rows).

    Pretrained weights come from torchvision's cache or its download; their output index i is
    `class_names[i]`, so the names must follow the weights' class order (ImageNet's, for the
    ImageNet weights). With random init (tests) the head has `len(class_names)` outputs."""

    def __init__(
        self,
        spec: ClassifierSpec,
        class_names: Sequence[str],
        *,
        num_gpus: float = 0.0,
        batch_size: int = 32,
        image_size: int = 224,
    ) -> None:
        import torch
        import torchvision

        from visdiff.models.device import pick_device

        super().__init__(spec, class_names, batch_size)
        self.device = pick_device(num_gpus)
        if spec.pretrained is None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(INIT_SEED)
                try:
                    model = torchvision.models.get_model(
                        spec.arch, weights=None, num_classes=len(self.classes)
                    )
                except (ValueError, KeyError):
                    raise ConfigError(
                        f"'{spec.arch}' is not a torchvision classification model; see "
                        "torchvision.models.list_models()"
                    ) from None
            self.transform = eval_transform(image_size)
        else:
            weights = _weights(spec.arch, spec.pretrained)
            outputs = len(weights.meta.get("categories") or [])
            if outputs and outputs != len(self.classes):
                raise InputError(
                    f"classifier '{spec.name}': weights {weights} predict {outputs} classes but "
                    f"{len(self.classes)} class names were given; pass --classes with the "
                    f"{outputs} names in the weights' order"
                )
            try:
                model = torchvision.models.get_model(spec.arch, weights=weights)
            except Exception as exc:  # offline: URLError; a bad cache file: RuntimeError
                raise ModelUnavailableError(
                    f"torchvision weights {weights} for classifier '{spec.name}' could not be "
                    f"loaded: {first_line(exc, typed=True)}; download them once with network "
                    "access (they are cached under $TORCH_HOME/hub/checkpoints)"
                ) from None
            self.transform = weights.transforms()
        self.model = model.eval().to(self.device)

    def _best_indices(self, images: list[Any]) -> Iterable[Any]:
        import torch

        pixels = torch.stack([self.transform(image) for image in images]).to(self.device)
        with torch.inference_mode():
            return self.model(pixels).argmax(dim=1).cpu().numpy()


def classifier_stage(spec: ClassifierSpec) -> type:
    """The stage class of a spec's kind."""
    return ZeroShotClassifier if spec.kind == "open_clip" else TorchvisionClassifier
