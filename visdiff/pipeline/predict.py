"""Predictions table for the classifier-failure study: every image of a labelled set through
open_clip zero-shot and torchvision classifiers (Ray Data actor pools, one per model), written
as a manifest with `path, group_name, label, <name>_pred, <name>_correct` columns that
`data.filter_a`/`data.filter_b` select from (e.g. `clip_correct and not resnet_correct`).

Inputs: an ImageFolder-style folder (`<root>/<class>/<image>`: the class folder is the label) or
a manifest with `path` and a label column. Paths are written as the input gives them (relative
to the folder, or as the manifest wrote them), so the table works as a manifest when it lies in
that folder (the default output) or with `data.root` set to it."""

from __future__ import annotations

import logging
import math
import os
import posixpath
from dataclasses import dataclass, field
from typing import Any

from visdiff import schema
from visdiff.config import RayConfig
from visdiff.errors import InputError
from visdiff.io import storage
from visdiff.stages.classify import (
    DEFAULT_TEMPLATE,
    LABEL,
    ClassifierSpec,
    add_correct_columns,
    candidate_classes,
    classifier_stage,
    label_to_class,
    weights_categories,
)

log = logging.getLogger(__name__)

PATH = "path"
GROUP = "group_name"
ORDER = "_order"  # input order, to put the rows back in it after Ray Data
DEFAULT_NAME = "predictions.parquet"
TABLE_FORMATS = (".parquet", ".csv")


@dataclass
class PredictInputs:
    """Labelled images to classify: rows {path, uri, label, group_name, ...manifest columns}."""

    rows: list[dict[str, Any]]
    root: str  # the folder relative paths resolve against
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}


@dataclass
class Predictions:
    table: Any  # pandas DataFrame, one row per classified image, in input order
    classes: list[str]
    specs: list[ClassifierSpec]
    skipped: list[dict[str, str]] = field(default_factory=list)  # {"path", "reason"}

    def accuracy(self) -> dict[str, float]:
        """Top-1 accuracy of each model over the classified images."""
        n = len(self.table)
        return {
            s.name: float(self.table[s.correct_column].mean()) if n else 0.0 for s in self.specs
        }


def default_output(source: str) -> str:
    """predictions.parquet in the input folder (or beside the input manifest)."""
    if storage.is_dir(source):
        return source.rstrip("/") + "/" + DEFAULT_NAME
    parent = posixpath.dirname(source) if storage.is_remote(source) else os.path.dirname(source)
    return os.path.join(parent, DEFAULT_NAME) if parent else DEFAULT_NAME


def list_inputs(source: str, *, label_column: str = LABEL) -> PredictInputs:
    """The labelled images of a folder (class subfolders) or a manifest; InputError when
    unusable. Rows without a file or a label are skipped and counted."""
    if not storage.exists(source):
        raise InputError(f"--input '{source}' does not exist; pass an image folder or a manifest")
    if storage.is_dir(source):
        return _folder_inputs(source)
    return _manifest_inputs(source, label_column)


def _folder_inputs(folder: str) -> PredictInputs:
    from visdiff.sources.folders import folder_name, scan_folder

    listing = scan_folder(folder, "all", "--input")
    group = folder_name(folder)
    rows, skipped = [], [{"path": s["uri"], "reason": s["reason"]} for s in listing.skipped]
    for record in listing.records:
        rel = record.id.split("/", 1)[1]
        if "/" not in rel:
            skipped.append({"path": rel, "reason": "no_class_folder"})
            continue
        rows.append({PATH: rel, schema.URI: record.uri, LABEL: rel.split("/", 1)[0], GROUP: group})
    root = folder if storage.is_remote(folder) else os.path.abspath(storage.local_path(folder))
    if not rows:
        raise InputError(
            f"--input folder '{folder}' has no image inside a class folder; lay it out as "
            "<folder>/<class name or index>/<image>, or pass a manifest with path and label"
        )
    return PredictInputs(rows, root, skipped)


def _resolve(path: str, root: str) -> str:
    if storage.is_remote(path) or os.path.isabs(storage.local_path(path)):
        return path
    if storage.is_remote(root):
        return f"{root.rstrip('/')}/{posixpath.normpath(path)}"
    return os.path.normpath(os.path.join(root, path))


def _cell(value: Any) -> str:
    """A manifest cell as text; null and NaN become ""."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).strip()


def _manifest_inputs(manifest: str, label_column: str) -> PredictInputs:
    from visdiff.sources.manifest import FORMATS

    ext = os.path.splitext(manifest)[1].lower()
    if ext not in FORMATS:
        raise InputError(
            f"--input '{manifest}': unsupported extension '{ext or '(none)'}'; pass an image "
            f"folder or a manifest ({', '.join(FORMATS)})"
        )
    table = FORMATS[ext][1](storage.read_bytes(manifest))
    table.columns = [str(c) for c in table.columns]
    missing = [c for c in (PATH, label_column) if c not in table.columns]
    if missing:
        raise InputError(
            f"--input manifest '{manifest}' lacks column(s) {', '.join(missing)} (present: "
            f"{', '.join(table.columns)}); it needs path and the label column (--label-column)"
        )
    remote = storage.is_remote(manifest)
    root = (
        posixpath.dirname(manifest)
        if remote
        else os.path.dirname(os.path.abspath(storage.local_path(manifest)))
    )
    fallback_group = os.path.splitext(os.path.basename(manifest))[0]
    rows, skipped = [], []
    for record in table.to_dict(orient="records"):
        path, label = _cell(record[PATH]), _cell(record[label_column])
        if not path or not label:
            skipped.append({"path": path, "reason": "empty_path" if not path else "no_label"})
            continue
        uri = _resolve(path, root)
        if not storage.is_remote(uri) and not os.path.isfile(uri):
            skipped.append({"path": path, "reason": "missing"})
            continue
        extra = {k: v for k, v in record.items() if k not in (PATH, label_column, LABEL)}
        rows.append({**extra, PATH: path, schema.URI: uri, LABEL: label})
        rows[-1].setdefault(GROUP, fallback_group)
    if not rows:
        raise InputError(
            f"--input manifest '{manifest}' has no usable row ({len(skipped)} skipped)"
        )
    return PredictInputs(rows, root, skipped)


def predict(
    inputs: PredictInputs,
    specs: list[ClassifierSpec],
    *,
    classes: list[str] | dict[str, str] | None = None,
    template: str = DEFAULT_TEMPLATE,
    batch_size: int = 32,
    num_actors: int = 1,
    num_cpus: float = 1.0,
    num_gpus: float = 0.0,
) -> Predictions:
    """Every input image through each model (an actor pool per model, chained in one Ray Data
    graph); rows whose image cannot be read or decoded are left out and counted."""
    import pandas as pd
    import ray.data
    from ray.data import ActorPoolStrategy

    if not specs:
        raise InputError("no classifier given; name at least one (--clip or --torchvision)")
    names = [s.name for s in specs]
    if len(set(names)) != len(names):
        raise InputError(f"classifier names must differ (got {', '.join(names)})")
    categories = next((c for c in map(weights_categories, specs) if c), None)
    class_names = candidate_classes(classes, (r[LABEL] for r in inputs.rows), categories)
    table = pd.DataFrame([{k: v for k, v in r.items() if k != schema.URI} for r in inputs.rows])
    table[LABEL] = [label_to_class(r[LABEL], class_names, classes) for r in inputs.rows]

    items = [
        {ORDER: i, schema.URI: r[schema.URI], schema.ERROR: ""} for i, r in enumerate(inputs.rows)
    ]
    ds = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 64)))
    for spec in specs:
        kwargs: dict[str, Any] = {"num_gpus": num_gpus, "batch_size": batch_size}
        if spec.kind == "open_clip":
            kwargs["template"] = template
        ds = ds.map_batches(
            classifier_stage(spec),
            fn_constructor_args=(spec, class_names),
            fn_constructor_kwargs=kwargs,
            compute=ActorPoolStrategy(size=num_actors),
            batch_size=batch_size,
            num_cpus=num_cpus,
            num_gpus=num_gpus or None,
        )
    columns = [ORDER, schema.ERROR, *(s.pred_column for s in specs)]
    out = ds.select_columns(columns).to_pandas().sort_values(ORDER)
    failed = out[out[schema.ERROR] != ""]
    paths = table[PATH].tolist()
    skipped = [
        *inputs.skipped,
        *(
            {"path": paths[i], "reason": e}
            for i, e in zip(failed[ORDER], failed[schema.ERROR], strict=True)
        ),
    ]
    done = out[out[schema.ERROR] == ""].set_index(ORDER)
    table = table.iloc[done.index.to_numpy()].reset_index(drop=True)
    for spec in specs:
        table[spec.pred_column] = done[spec.pred_column].astype(str).to_numpy()
    add_correct_columns(table, specs)
    return Predictions(table, class_names, list(specs), skipped)


def write_predictions(predictions: Predictions, output: str) -> str:
    """The table as Parquet (typed: the `_correct` columns stay booleans) or CSV, atomically."""
    import io

    ext = os.path.splitext(output)[1].lower()
    if ext not in TABLE_FORMATS:
        raise InputError(f"--output '{output}' must end in {' or '.join(TABLE_FORMATS)}")
    buffer = io.BytesIO()
    if ext == ".csv":
        predictions.table.to_csv(buffer, index=False)
    else:
        predictions.table.to_parquet(buffer, index=False)
    storage.write_bytes(output, buffer.getvalue())
    return output


def run_predictions(
    source: str,
    output: str | None,
    specs: list[ClassifierSpec],
    *,
    ray_cfg: RayConfig | None = None,
    label_column: str = LABEL,
    **predict_kwargs: Any,
) -> tuple[Predictions, str]:
    """List, classify and write in one call (the job's body): (predictions, output path)."""
    from visdiff.pipeline.runtime import ray_runtime

    inputs = list_inputs(source, label_column=label_column)
    output = output or default_output(source)
    ext = os.path.splitext(output)[1].lower()
    if ext not in TABLE_FORMATS:  # before any model starts
        raise InputError(f"--output '{output}' must end in {' or '.join(TABLE_FORMATS)}")
    with ray_runtime(ray_cfg or RayConfig()):
        predictions = predict(inputs, specs, **predict_kwargs)
    return predictions, write_predictions(predictions, output)
