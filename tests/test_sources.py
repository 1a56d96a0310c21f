"""Listing image sets from manifests (CSV / Parquet / JSONL) and folders, on real files."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from visdiff.config import DataConfig
from visdiff.errors import InputError
from visdiff.io import storage
from visdiff.sources.manifest import load_manifest
from visdiff.sources.plan import plan_inputs
from visdiff.sources.records import ImageRecord, ImageSets

YOGA = "People practicing yoga in a mountainous setting"
MEDITATION = "People meditating in a mountainous setting"


def make_image(path: Path, colour: tuple[int, int, int] = (90, 140, 200)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = {".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG"}.get(path.suffix.lower(), "PNG")
    Image.new("RGB", (8, 8), colour).save(path, format=fmt)
    return path


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    """A folder with images/ and rows for groups "cats" and "dogs" (paths look numeric)."""
    for name in ("000001.jpg", "000002.jpg", "000003.jpg"):
        make_image(tmp_path / "images" / "cats" / name)
    for name in ("000010.png", "000011.png"):
        make_image(tmp_path / "images" / "dogs" / name)
    return tmp_path


ROWS = [
    {"path": "images/cats/000001.jpg", "group_name": "cats", "caption": "a cat"},
    {"path": "images/cats/000002.jpg", "group_name": "cats", "caption": None},
    {"path": "images/cats/000003.jpg", "group_name": "cats", "caption": "NA"},
    {"path": "images/dogs/000010.png", "group_name": "dogs", "caption": "a dog"},
    {"path": "images/dogs/000011.png", "group_name": "dogs", "caption": ""},
]


def write_manifest(folder: Path, fmt: str, rows: list[dict], name: str = "manifest") -> Path:
    frame = pd.DataFrame(rows)
    path = folder / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "parquet":
        frame.to_parquet(path, index=False)
    else:
        with open(path, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return path


def by_manifest(path: Path | str, a: str = "cats", b: str = "dogs") -> DataConfig:
    return DataConfig(manifest=str(path), group_a=a, group_b=b)


def by_folders(set_a: str, set_b: str) -> ImageSets:
    """Both folder sets as the pipeline plans them, in the manifest reader's result type."""
    plan = plan_inputs(DataConfig(set_a=set_a, set_b=set_b))
    a, b = plan.a.records or [], plan.b.records or []
    return ImageSets(a, b, plan.a.display_name, plan.b.display_name, plan.skipped)


def input_error(data: DataConfig) -> str:
    with pytest.raises(InputError) as info:
        plan_inputs(data)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- manifests ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_manifest_formats(dataset: Path, fmt: str):
    manifest = write_manifest(dataset, fmt, ROWS)
    sets = load_manifest(by_manifest(manifest))
    assert isinstance(sets, ImageSets)
    assert (sets.name_a, sets.name_b) == ("cats", "dogs")
    assert [r.id for r in sets.a] == [
        "a/images/cats/000001.jpg",
        "a/images/cats/000002.jpg",
        "a/images/cats/000003.jpg",
    ]
    assert [r.id for r in sets.b] == ["b/images/dogs/000010.png", "b/images/dogs/000011.png"]
    assert all(isinstance(r, ImageRecord) for r in sets.records())
    assert {r.set for r in sets.a} == {"a"} and {r.set for r in sets.b} == {"b"}
    # Relative paths resolve against the manifest's folder, to absolute existing files.
    for record in sets.records():
        assert os.path.isabs(record.uri) and os.path.isfile(record.uri)
    assert sets.a[0].uri == str(dataset / "images" / "cats" / "000001.jpg")
    assert [r.caption for r in sets.a] == ["a cat", "", "NA"]  # null -> "", text "NA" is text
    assert [r.caption for r in sets.b] == ["a dog", ""]
    assert sets.skipped == []
    assert sets.a[0].to_dict() == {
        "id": "a/images/cats/000001.jpg",
        "set": "a",
        "uri": str(dataset / "images" / "cats" / "000001.jpg"),
        "caption": "a cat",
        "pair": "",
    }


def test_json_extension_is_json_lines(dataset: Path):
    manifest = write_manifest(dataset, "json", ROWS)
    assert len(load_manifest(by_manifest(manifest)).a) == 3


def test_manifest_relative_paths_resolve_from_its_folder_not_cwd(dataset: Path, monkeypatch):
    sub = dataset / "meta"
    sub.mkdir()
    rows = [dict(r, path="../" + r["path"]) for r in ROWS]
    manifest = write_manifest(sub, "csv", rows)
    monkeypatch.chdir(dataset / "images")  # a cwd where the relative paths would not exist
    # The paths leave the manifest's folder: refused unless allowed (or data.root is set).
    data = DataConfig(manifest=str(manifest), group_a="cats", group_b="dogs")
    data.allow_outside_root = True
    sets = load_manifest(data)
    assert sets.a[0].uri == str(dataset / "images" / "cats" / "000001.jpg")
    assert sets.a[0].id == "a/../images/cats/000001.jpg"


def test_manifest_absolute_paths_and_uris_are_kept_when_allowed(dataset: Path, tmp_path_factory):
    elsewhere = make_image(tmp_path_factory.mktemp("elsewhere") / "x.jpg")
    rows = [
        {"path": str(dataset / "images/cats/000001.jpg"), "group_name": "cats"},
        {"path": str(elsewhere), "group_name": "cats"},
        {"path": "s3://bucket/dogs/1.jpg", "group_name": "dogs"},
    ]
    data = by_manifest(write_manifest(dataset, "csv", rows))
    data.allow_outside_root = True
    sets = load_manifest(data)
    assert [r.uri for r in sets.a] == [str(dataset / "images/cats/000001.jpg"), str(elsewhere)]
    assert sets.a[0].id == "a/images/cats/000001.jpg"  # under the manifest folder: relative
    assert sets.a[1].id == "a/" + str(elsewhere).lstrip("/")
    assert sets.a[0].caption == ""  # no caption column at all
    assert sets.b == [ImageRecord("b/bucket/dogs/1.jpg", "b", "s3://bucket/dogs/1.jpg", "")]


def test_numeric_looking_paths_and_groups_stay_strings(tmp_path: Path):
    make_image(tmp_path / "000001.jpg")
    make_image(tmp_path / "0042")  # no extension: manifests may name any file
    (tmp_path / "m.csv").write_text("path,group_name,caption\n000001.jpg,01,\n0042,2,x\n")
    sets = load_manifest(by_manifest(tmp_path / "m.csv", a="01", b="2"))
    assert sets.a[0].id == "a/000001.jpg" and sets.a[0].caption == ""
    assert sets.b[0].id == "b/0042" and sets.b[0].uri == str(tmp_path / "0042")
    (tmp_path / "m.jsonl").write_text(
        '{"path": "000001.jpg", "group_name": "01"}\n{"path": "0042", "group_name": "2"}\n'
    )
    sets = load_manifest(by_manifest(tmp_path / "m.jsonl", a="01", b="2"))
    assert sets.a[0].id == "a/000001.jpg" and sets.b[0].id == "b/0042"


def test_parquet_nan_caption_is_empty(dataset: Path):
    frame = pd.DataFrame(ROWS)
    frame.loc[0, "caption"] = float("nan")
    frame.to_parquet(dataset / "m.parquet", index=False)
    sets = load_manifest(by_manifest(dataset / "m.parquet"))
    assert sets.a[0].caption == "" and sets.b[0].caption == "a dog"


def test_missing_rows_are_skipped_and_recorded(dataset: Path):
    rows = [*ROWS, {"path": "images/cats/gone.jpg", "group_name": "cats", "caption": "x"}]
    rows.append({"path": "images/cats", "group_name": "cats"})  # a folder, not a file
    rows.append({"path": "images/cats/000001.jpg", "group_name": "cats"})  # listed twice
    sets = load_manifest(by_manifest(write_manifest(dataset, "csv", rows)))
    assert len(sets.a) == 3 and len(sets.b) == 2
    assert sets.skipped == [
        {"uri": str(dataset / "images/cats/gone.jpg"), "set": "a", "reason": "missing"},
        {"uri": str(dataset / "images/cats"), "set": "a", "reason": "not_a_file"},
        {"uri": str(dataset / "images/cats/000001.jpg"), "set": "a", "reason": "duplicate"},
    ]


def test_all_rows_missing_is_an_error(dataset: Path):
    rows = [
        {"path": "images/cats/000001.jpg", "group_name": "cats"},
        {"path": "nothere/1.jpg", "group_name": "dogs"},
        {"path": "nothere/2.jpg", "group_name": "dogs"},
    ]
    message = input_error(by_manifest(write_manifest(dataset, "csv", rows)))
    assert "data.group_b 'dogs'" in message and "2 missing" in message
    assert "nothere/1.jpg" in message


def test_manifest_not_found(tmp_path: Path):
    message = input_error(by_manifest(tmp_path / "absent.csv"))
    assert "absent.csv" in message and "not found" in message


def test_manifest_is_a_folder(tmp_path: Path):
    (tmp_path / "m.csv").mkdir()
    message = input_error(by_manifest(tmp_path / "m.csv"))
    assert "m.csv" in message and "is a folder" in message


def test_manifest_unsupported_extension(tmp_path: Path):
    (tmp_path / "m.xlsx").write_text("x")
    message = input_error(by_manifest(tmp_path / "m.xlsx"))
    assert "m.xlsx" in message and "'.xlsx'" in message
    for ext in (".csv", ".parquet", ".jsonl"):
        assert ext in message


def test_manifest_missing_columns(tmp_path: Path):
    (tmp_path / "m.csv").write_text("file,label,caption\na.jpg,cats,x\n")
    message = input_error(by_manifest(tmp_path / "m.csv"))
    assert "m.csv" in message
    assert "lacks column(s) path, group_name" in message
    assert "present: file, label, caption" in message


def test_manifest_unreadable(tmp_path: Path):
    (tmp_path / "m.parquet").write_bytes(b"definitely not parquet")
    message = input_error(by_manifest(tmp_path / "m.parquet"))
    assert "m.parquet" in message and "could not be read as Parquet" in message
    (tmp_path / "m.csv").write_bytes(b"")
    assert "could not be read as CSV" in input_error(by_manifest(tmp_path / "m.csv"))


def test_unknown_group_lists_available(tmp_path: Path):
    groups = [f"group {i:02d}" for i in range(12)]
    rows = [{"path": f"{g}.jpg", "group_name": g} for g in groups]
    for g in groups:
        make_image(tmp_path / f"{g}.jpg")
    manifest = write_manifest(tmp_path, "csv", rows)
    message = input_error(by_manifest(manifest, a="group 00", b="grup 03"))
    assert "data.group_b 'grup 03'" in message and "m" in message and "manifest.csv" in message
    assert "'group 00'" in message and "'group 09'" in message
    assert "'group 11'" not in message and "+2 more" in message
    assert "Did you mean 'group 03'" in message
    message = input_error(by_manifest(manifest, a="nope", b="group 01"))
    assert "data.group_a 'nope'" in message


def test_real_examples_manifest(examples_dir: Path):
    sets = load_manifest(by_manifest(examples_dir / "manifest.csv", YOGA, MEDITATION))
    assert len(sets.a) == 100 and len(sets.b) == 100
    assert sum(1 for r in sets.records() if r.caption) == 98
    assert (sets.name_a, sets.name_b) == (YOGA, MEDITATION)
    assert sets.skipped == []
    assert len({r.id for r in sets.records()}) == 200
    assert sets.a[0].id == "a/set_a/000001.jpg"
    assert all(os.path.isfile(r.uri) for r in sets.records())


# --- folders ------------------------------------------------------------------------------


def test_folders_recursive_filtered_sorted(tmp_path: Path):
    root = tmp_path / "set_a"
    for rel in ("b.jpg", "A.PNG", "sub/z.webp", "sub/deeper/c.JPEG", "a.tiff", "m.bmp", "g.gif"):
        make_image(root / rel)
    (root / "notes.txt").write_text("not an image")
    (root / "data.json").write_text("{}")
    make_image(root / ".hidden.jpg")
    make_image(root / ".cache" / "x.jpg")
    make_image(tmp_path / "set_b" / "only.png")
    sets = by_folders(str(root), str(tmp_path / "set_b"))
    assert [r.id for r in sets.a] == [
        "a/A.PNG",
        "a/a.tiff",
        "a/b.jpg",
        "a/g.gif",
        "a/m.bmp",
        "a/sub/deeper/c.JPEG",
        "a/sub/z.webp",
    ]
    assert sets.a[0].uri == str(root / "A.PNG")
    assert [r.id for r in sets.b] == ["b/only.png"]
    assert (sets.name_a, sets.name_b) == ("set_a", "set_b")
    reasons = {(s["uri"][len(str(root)) + 1 :], s["set"], s["reason"]) for s in sets.skipped}
    assert reasons == {
        (".cache/x.jpg", "a", "hidden"),
        (".hidden.jpg", "a", "hidden"),
        ("data.json", "a", "not_an_image"),
        ("notes.txt", "a", "not_an_image"),
    }
    assert all(r.caption == "" for r in sets.records())


def test_folder_relative_path_gives_absolute_uris(tmp_path: Path, monkeypatch):
    make_image(tmp_path / "x" / "1.jpg")
    make_image(tmp_path / "y" / "2.jpg")
    monkeypatch.chdir(tmp_path)
    sets = by_folders("x/", "./y")
    assert sets.a[0].uri == str(tmp_path / "x" / "1.jpg")
    assert (sets.name_a, sets.name_b) == ("x", "y")


def test_empty_folder_is_an_error(tmp_path: Path):
    make_image(tmp_path / "a" / "1.jpg")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "readme.txt").write_text("no images here")
    message = input_error(DataConfig(set_a=str(tmp_path / "a"), set_b=str(tmp_path / "b")))
    assert "data.set_b" in message and str(tmp_path / "b") in message
    assert "no image files" in message


def test_folder_that_is_a_file(tmp_path: Path):
    image = make_image(tmp_path / "one.jpg")
    make_image(tmp_path / "b" / "1.jpg")
    message = input_error(DataConfig(set_a=str(image), set_b=str(tmp_path / "b")))
    assert "data.set_a" in message and "one.jpg" in message and "is a file" in message


def test_missing_folder(tmp_path: Path):
    make_image(tmp_path / "a" / "1.jpg")
    message = input_error(DataConfig(set_a=str(tmp_path / "a"), set_b=str(tmp_path / "zz")))
    assert "data.set_b" in message and "zz" in message and "does not exist" in message


def test_shared_folders(examples_dir: Path):
    sets = by_folders(str(examples_dir / "set_a"), str(examples_dir / "set_b"))
    assert len(sets.a) == 100 and len(sets.b) == 100
    assert [r.id for r in sets.a] == sorted(r.id for r in sets.a)
    assert sets.a[0].id == "a/000001.jpg" and sets.b[0].id.startswith("b/")


# --- filesystem ---------------------------------------------------------------------------


def test_filesystem_local(tmp_path: Path):
    make_image(tmp_path / "d" / "e" / "1.png")
    (tmp_path / "d" / "2.bin").write_bytes(b"\x00\x01\x02")
    assert storage.read_bytes(str(tmp_path / "d" / "2.bin")) == b"\x00\x01\x02"
    assert storage.read_bytes("file://" + str(tmp_path / "d" / "2.bin")) == b"\x00\x01\x02"
    assert storage.exists(str(tmp_path / "d")) and storage.is_dir(str(tmp_path / "d"))
    assert not storage.is_dir(str(tmp_path / "d" / "2.bin"))
    assert not storage.exists(str(tmp_path / "nothing"))
    assert storage.list_files(str(tmp_path / "d")) == [
        str(tmp_path / "d" / "2.bin"),
        str(tmp_path / "d" / "e" / "1.png"),
    ]
    assert storage.list_files(str(tmp_path / "d"), recursive=False) == [
        str(tmp_path / "d" / "2.bin")
    ]
    with pytest.raises(FileNotFoundError):
        storage.read_bytes(str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError):
        storage.list_files(str(tmp_path / "nothing"), recursive=False)
    assert storage.list_files(str(tmp_path / "nothing"), recursive=False, missing_ok=True) == []
    storage.write_bytes(str(tmp_path / "w" / "x.bin"), b"abc")  # creates the folder
    storage.write_bytes(str(tmp_path / "w" / "x.bin"), b"abcd")  # replaces the whole file
    assert os.listdir(tmp_path / "w") == ["x.bin"]  # no temp file left behind
    assert storage.read_bytes(str(tmp_path / "w" / "x.bin")) == b"abcd"
    assert storage.is_remote("s3://bucket/key") and not storage.is_remote("/a/b")
    assert not storage.is_remote("file:///a/b") and not storage.is_remote("rel/x.jpg")
