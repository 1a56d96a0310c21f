"""The four application studies (configs/applications/): their stand-in data, their configs, the
classifier stages and the predictions helper, and a describe run of each study on its stand-in.

Fast tier: stand-ins, configs, class-name handling and the classifier stages called directly.
e2e tier (the session's Ray): the predictions job on 16 generated images, and one tiny describe
run per study against the OpenAI stand-in (1 round, 4 samples, the manifest's captions)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests import standins
from tests.openai_standin import serve_standin
from visdiff import schema
from visdiff.config import TINY_CLIP_ARCH, load_config
from visdiff.errors import ConfigError, InputError
from visdiff.pipeline.predict import default_output, list_inputs
from visdiff.stages.classify import (
    ClassifierSpec,
    TorchvisionClassifier,
    ZeroShotClassifier,
    add_correct_columns,
    candidate_classes,
    label_to_class,
    read_class_names,
)

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("jobs_predict", REPO / "jobs" / "predict.py")
predict_job = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(predict_job)  # jobs/ is not a package: load the job by its path

STUDIES = tuple(standins.GENERATORS)
TINY_CLIP = ClassifierSpec("clip", "open_clip", TINY_CLIP_ARCH, None)
RANDOM_RESNET = ClassifierSpec("resnet", "torchvision", "resnet18", None)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> dict[str, standins.StandIn]:
    root = tmp_path_factory.mktemp("standins")
    return {name: make(root / name) for name, make in standins.GENERATORS.items()}


# ------------------------------------------------------------------------------ stand-ins


def _table(stand_in: standins.StandIn) -> pd.DataFrame:
    path = stand_in.manifest
    assert path is not None
    return pd.read_parquet(path) if path.suffix == ".parquet" else pd.read_csv(path)


@pytest.mark.parametrize("study", STUDIES)
def test_stand_in_rows_point_at_distinct_images(stand_ins, study):
    stand_in = stand_ins[study]
    table = _table(stand_in)
    assert {"path", "group_name", "caption"} <= set(table.columns)
    assert len(table) == stand_in.count and table["path"].is_unique
    files = [stand_in.root / p for p in table["path"]]
    assert all(f.is_file() for f in files)
    assert len({f.read_bytes() for f in files}) == len(files)  # seeded noise: no duplicates


def test_stand_ins_hold_both_sets_of_each_study(stand_ins):
    """Each stand-in gives its config two non-empty sets (the selections the configs name)."""
    inet = _table(stand_ins["imagenet_v2"])
    of_class = inet[inet["class"] == standins.IMAGENET_CLASS]
    assert set(of_class["group_name"]) == {"imagenet", "imagenetv2"}
    assert of_class["group_name"].value_counts().min() >= 10  # the paper's 10 samples fit

    failures = _table(stand_ins["classifier_failures"])
    assert failures["clip_correct"].dtype == bool
    assert (failures["clip_correct"] & ~failures["resnet_correct"]).sum() >= 4
    assert (failures["clip_correct"] & failures["resnet_correct"]).sum() >= 4
    np.testing.assert_array_equal(
        failures["clip_correct"], failures["clip_pred"] == failures["label"]
    )

    sd = _table(stand_ins["sd_v1_v2"])
    by_prompt = sd.groupby("prompt")["group_name"].apply(sorted)
    assert all(groups == ["sd_v1", "sd_v2"] for groups in by_prompt)

    lamem = _table(stand_ins["memorability"])
    assert (lamem["score"] >= 0.84).sum() >= 3 and (lamem["score"] <= 0.68).sum() >= 3


@pytest.mark.parametrize("study", STUDIES)
def test_application_config_loads_with_tiny_models_on_its_stand_in(stand_ins, study, tmp_path):
    stand_in = stand_ins[study]
    cfg = load_config(
        stand_in.config, ["models=tiny", f"output_dir={tmp_path}", *stand_in.overrides]
    )
    assert cfg.models == "tiny" and cfg.data.manifest == str(stand_in.manifest)
    assert cfg.evaluate.evaluator == "none"  # no ground truth for these studies
    paper = load_config(stand_in.config)  # as shipped: paper-scale models
    assert paper.models == "gpu" and paper.clip.num_gpus > 0
    expected = {
        "imagenet_v2": lambda d, p: (
            d.subset == [standins.IMAGENET_CLASS]
            and d.subset_column == "class"
            and (d.group_a, d.group_b) == ("imagenetv2", "imagenet")
            and (p.num_rounds, p.num_samples) == (1, 10)
        ),
        "classifier_failures": lambda d, p: (
            d.filter_a == "clip_correct and not resnet_correct"
            and d.filter_b == "clip_correct and resnet_correct"
        ),
        "sd_v1_v2": lambda d, p: d.pair_column == "prompt" and p.proposer == "paired",
        "memorability": lambda d, p: (d.filter_a, d.filter_b) == ("score >= 0.84", "score <= 0.68"),
    }
    assert expected[study](cfg.data, cfg.propose)


def test_every_study_has_a_readme_with_its_cost():
    for study in STUDIES:
        text = (standins.APPLICATIONS / study / "README.md").read_text()
        assert "## Layout" in text or "predictions table" in text
        assert "Per run:" in text and "LLM call" in text


# ------------------------------------------------------------------------------ class names


def test_class_names_files_in_each_form():
    assert read_class_names("tench\ngoldfish\n\n", "f") == ["tench", "goldfish"]
    assert read_class_names('["a", "b"]', "f") == ["a", "b"]
    assert read_class_names('{"n01": "tench"}', "f") == {"n01": "tench"}
    with pytest.raises(InputError, match="not valid JSON"):
        read_class_names("[tench", "names.json")
    with pytest.raises(InputError, match="holds no names"):
        read_class_names("\n \n", "empty.txt")


def test_labels_become_class_names_by_name_index_or_mapping():
    classes = ["tench", "goldfish", "great white shark"]
    assert label_to_class("goldfish", classes, None) == "goldfish"
    assert label_to_class("2", classes, None) == "great white shark"  # ImageNetV2 folders
    mapping = {"n01440764": "tench"}
    assert label_to_class("n01440764", ["tench"], mapping) == "tench"
    with pytest.raises(InputError, match="label '7' is neither"):
        label_to_class("7", classes, None)
    assert candidate_classes(None, ["b", "a", "b"]) == ["a", "b"]
    assert candidate_classes(None, ["x"], ["tench", "goldfish"]) == ["tench", "goldfish"]
    assert candidate_classes(mapping, ["x"], ["ignored"]) == ["tench"]


def test_classifier_names_must_be_usable_in_filters():
    for bad in ("clip-vit", "1clip", "label", ""):
        with pytest.raises(ConfigError, match="must be an identifier"):
            ClassifierSpec(bad, "open_clip", TINY_CLIP_ARCH, None)
    with pytest.raises(ConfigError, match="kind 'timm'"):
        ClassifierSpec("m", "timm", "x", None)
    table = pd.DataFrame({"label": ["a", "b"], "clip_pred": ["a", "a"]})
    assert add_correct_columns(table, [TINY_CLIP])["clip_correct"].tolist() == [True, False]


# ------------------------------------------------------------------------------ stages


def _batch(paths: list[Path]) -> dict[str, np.ndarray]:
    return {
        schema.URI: np.array([str(p) for p in paths], dtype=object),
        schema.ERROR: np.array([""] * len(paths), dtype=object),
    }


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> standins.StandIn:
    return standins.labelled_folder(tmp_path_factory.mktemp("labelled") / "images")


def test_stages_predict_class_names_and_keep_bad_rows_as_errors(folder, tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    paths = sorted(folder.root.rglob("*.png"))[:3] + [bad]
    classes = [standins.IMAGENET_CLASS, standins.OTHER_CLASS]
    for stage in (
        ZeroShotClassifier(TINY_CLIP, classes),
        TorchvisionClassifier(RANDOM_RESNET, classes, image_size=64),
    ):
        out = stage(_batch(paths))
        preds = list(out[stage.spec.pred_column])
        assert all(p in classes for p in preds[:3]) and preds[3] == ""
        assert list(out[schema.ERROR][:3]) == ["", "", ""] and out[schema.ERROR][3]
        assert list(out[schema.URI]) == [str(p) for p in paths]  # rows pass through
    again = TorchvisionClassifier(RANDOM_RESNET, classes, image_size=64)(_batch(paths[:3]))
    assert list(again["resnet_pred"]) == preds[:3]  # seeded random init: same in every actor


def test_pretrained_weights_are_checked_before_any_download():
    with pytest.raises(InputError, match="predict 1000 classes but 2 class names"):
        TorchvisionClassifier(
            ClassifierSpec("resnet", "torchvision", "resnet18", "IMAGENET1K_V1"), ["a", "b"]
        )
    with pytest.raises(ConfigError, match="weights 'V9' of 'resnet18' unknown"):
        TorchvisionClassifier(ClassifierSpec("resnet", "torchvision", "resnet18", "V9"), ["a"])
    with pytest.raises(ConfigError, match="'resnet9000' is not a torchvision"):
        TorchvisionClassifier(ClassifierSpec("r", "torchvision", "resnet9000", None), ["a"])


def test_inputs_from_a_folder_and_from_a_manifest(folder, tmp_path):
    listed = list_inputs(str(folder.root))
    assert len(listed.rows) == folder.count
    assert {r["label"] for r in listed.rows} == {standins.IMAGENET_CLASS, standins.OTHER_CLASS}
    assert all(r["group_name"] == "images" and "/" in r["path"] for r in listed.rows)
    assert default_output(str(folder.root)).endswith("images/predictions.parquet")

    rows = [{"path": r["path"], "label": r["label"], "caption": "x"} for r in listed.rows[:3]]
    rows.append({"path": "gone.png", "label": "a", "caption": ""})
    manifest = folder.root / "labels.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    from_manifest = list_inputs(str(manifest))
    assert [r["path"] for r in from_manifest.rows] == [r["path"] for r in rows[:3]]
    assert from_manifest.rows[0]["caption"] == "x"
    assert from_manifest.skipped == [{"path": "gone.png", "reason": "missing"}]
    with pytest.raises(InputError, match="lacks column"):
        list_inputs(str(manifest), label_column="class")


def test_job_refuses_bad_arguments_in_one_line(folder, capsys):
    code = predict_job.main(["--input", str(folder.root), "--template", "no placeholder"])
    assert code == 2 and "--template" in capsys.readouterr().err
    code = predict_job.main(["--input", str(folder.root)])
    assert code == 2 and "no classifier given" in capsys.readouterr().err
    clip = ["--clip", "clip", TINY_CLIP_ARCH, "none"]
    code = predict_job.main(["--input", str(folder.root / "nope"), *clip])
    assert code == 3 and "does not exist" in capsys.readouterr().err


# ------------------------------------------------------------------------------ e2e


def test_predictions_job_writes_a_manifest_the_study_can_filter(ray_session, tmp_path, capsys):
    images = standins.labelled_folder(tmp_path / "images", per_class=8)  # 16 images
    (images.root / standins.OTHER_CLASS / "zz_corrupt.png").write_bytes(b"\x89PNG broken")
    code = predict_job.main(
        ["--input", str(images.root), "--clip", "clip", TINY_CLIP_ARCH, "none",
         "--torchvision", "resnet", "resnet18", "none", "--batch-size", "8"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "16 images, 2 classes" in printed and "skipped 1 inputs (1 not_an_image)" in printed
    table = pd.read_parquet(images.root / "predictions.parquet")
    assert list(table.columns) == [
        "path", "label", "group_name",
        "clip_pred", "resnet_pred", "clip_correct", "resnet_correct",
    ]  # fmt: skip
    assert len(table) == 16 and "zz_corrupt.png" not in " ".join(table["path"])
    assert table["path"].tolist() == sorted(table["path"])  # input order kept
    for name in ("clip", "resnet"):
        assert table[f"{name}_correct"].dtype == bool
        np.testing.assert_array_equal(
            table[f"{name}_correct"], table[f"{name}_pred"] == table.label
        )
    # The same predictions as the stage in this process: the graph adds nothing of its own.
    classes = sorted({standins.IMAGENET_CLASS, standins.OTHER_CLASS})
    direct = ZeroShotClassifier(TINY_CLIP, classes)(
        _batch([images.root / p for p in table["path"]])
    )
    assert list(direct["clip_pred"]) == table["clip_pred"].tolist()


ANSWER = "- bright colours\n- a close-up of an object\n- a dark background\n- a round shape"


@pytest.mark.parametrize("study", STUDIES)
def test_study_runs_end_to_end_on_its_stand_in(ray_session, stand_ins, study, tmp_path):
    stand_in = stand_ins[study]
    run_dir = tmp_path / "run"
    from visdiff.cli import main

    with serve_standin([ANSWER]) as llm:
        code = main(
            ["describe", "--config", str(stand_in.config), "models=tiny",
             *stand_in.overrides, f"output_dir={run_dir}", "caption.source=manifest",
             "llm.backend=external", f"llm.base_url={llm.base_url}",
             "propose.num_rounds=1", "propose.num_samples=4"]
        )  # fmt: skip
        asked = len(llm.requests)
    assert code == 0, (run_dir / "status.json").read_text()
    assert asked == 1  # one proposer round, no evaluator
    assert json.loads((run_dir / "status.json").read_text())["state"] == "complete"
    ranked = json.loads((run_dir / "ranked.json").read_text())
    assert {r["hypothesis"] for r in ranked} == {
        "bright colours", "a close-up of an object", "a dark background", "a round shape"
    }  # fmt: skip
    in_a = {
        "imagenet_v2": lambda t: (
            (t["group_name"] == "imagenetv2") & (t["class"] == standins.IMAGENET_CLASS)
        ),
        "classifier_failures": lambda t: t["clip_correct"] & ~t["resnet_correct"],
        "sd_v1_v2": lambda t: t["group_name"] == "sd_v2",
        "memorability": lambda t: t["score"] >= 0.84,
    }
    expected_a = in_a[study](_table(stand_in))
    assert ranked[0]["n_a"] == int(np.sum(expected_a))
    if study == "sd_v1_v2":  # the paired proposer: pair i of A beside pair i of B
        (proposal,) = [json.loads(x) for x in (run_dir / "hypotheses.jsonl").open()][:1]
        assert "paired" in proposal["prompt_source"] and "Pair 1:" in proposal["prompt"]
        assert len(proposal["ids_a"]) == len(proposal["ids_b"]) == 4
        pair_of = dict(zip(_table(stand_in)["path"], _table(stand_in)["prompt"], strict=True))
        for id_a, id_b in zip(proposal["ids_a"], proposal["ids_b"], strict=True):
            assert pair_of[id_a.split("/", 1)[1]] == pair_of[id_b.split("/", 1)[1]]
