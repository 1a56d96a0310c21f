"""Set definitions and experiment knobs in the sources: filters over manifest columns, data.subset,
path confinement to data.root, data.pair_column and data.purity. All Ray-free, on real files."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from visdiff.config import DataConfig
from visdiff.errors import ConfigError, InputError
from visdiff.report.run_stats import _set_counts
from visdiff.sources.filters import compile_filter
from visdiff.sources.manifest import load_manifest
from visdiff.sources.plan import check_set_sizes, plan_inputs
from visdiff.sources.purity import apply_purity, swap_count
from visdiff.sources.records import ImageRecord

YOGA = "People practicing yoga in a mountainous setting"
MEDITATION = "People meditating in a mountainous setting"
COLUMNS = ["path", "group_name", "score", "label", "clip_correct", "resnet_correct"]


def keep(text: str, row: dict, columns: list[str] = COLUMNS) -> bool:
    return compile_filter(text, columns)(row)


def refused(text: str, columns: list[str] = COLUMNS) -> str:
    with pytest.raises(ConfigError) as info:
        compile_filter(text, columns, key="data.filter_a")
    message = str(info.value)
    assert "\n" not in message and message.startswith("data.filter_a")
    return message


# --- the filter language ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "row", "expected"),
    [
        ("score >= 0.8", {"score": "0.85"}, True),
        ("score >= 0.8", {"score": "0.75"}, False),
        ("score >= 0.8", {"score": 0.9}, True),  # Parquet floats and CSV text alike
        ("score <= 0.2", {"score": "1e-3"}, True),
        ("0.2 < score <= 0.8", {"score": "0.5"}, True),  # chained
        ("0.2 < score <= 0.8", {"score": "0.2"}, False),
        ("score == 1", {"score": "1.0"}, True),  # numeric, not textual, equality
        ("score == '1'", {"score": "1.0"}, False),  # quoted: text equality
        ("label == 'cat'", {"label": "cat"}, True),
        ('label != "cat"', {"label": "dog"}, True),
        ("label < 'b'", {"label": "apple"}, True),  # strings order as text
        ("label in ['cat', 'dog']", {"label": "dog"}, True),
        ("label not in ['cat', 'dog']", {"label": "dog"}, False),
        ("score in [1, 2]", {"score": "2"}, True),
        ("score > -1", {"score": "-0.5"}, True),
        (
            "clip_correct and not resnet_correct",
            {"clip_correct": "True", "resnet_correct": "False"},
            True,
        ),
        (
            "clip_correct and not resnet_correct",
            {"clip_correct": True, "resnet_correct": True},
            False,
        ),
        ("clip_correct == true", {"clip_correct": "yes"}, True),
        ("clip_correct == false", {"clip_correct": 0}, True),
        ("not (score > 0.5 or label == 'cat')", {"score": "0.1", "label": "dog"}, True),
        ("score > 0.5 or label == 'cat'", {"score": "0.1", "label": "dog"}, False),
        ("true", {}, True),
        ("score > label", {"score": "10", "label": "9"}, True),  # two columns: numbers if both are
        ("score > label", {"score": "b", "label": "a"}, True),  # else text
        # An empty or non-numeric cell never matches a numeric comparison, nor its negation.
        ("score != 0.5", {"score": ""}, False),
        ("score > 0.5", {"score": "n/a"}, False),
        ("score > 0.5", {"score": None}, False),
        ("score > 0.5", {"score": float("nan")}, False),
        ("score not in [1]", {"score": ""}, False),
        (
            "score >= 0.8\n  and label == 'cat'",
            {"score": "0.9", "label": "cat"},
            True,
        ),  # YAML block
    ],
)
def test_filter_grammar(text: str, row: dict, expected: bool):
    assert keep(text, row) is expected


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("__import__('os')", "function calls are not allowed"),
        ("__import__('os').system('true')", "function calls are not allowed"),
        ("score.__class__", "attribute access"),
        ("label[0] == 'c'", "subscripts"),
        ("(lambda: 1)()", "function calls are not allowed"),
        ("lambda row: True", "lambda is not allowed"),
        ("score + 1 > 2", "arithmetic is not allowed"),
        ("[x for x in label]", "comprehensions are not allowed"),
        ("score if label else 1", "'x if c else y' is not allowed"),
        ("(x := 1)", "':=' is not allowed"),
        ("f'{score}' == '1'", "f-strings are not allowed"),
        ("score = 0.8", "use == to compare"),
        ("score >", "not a valid expression"),
        ("score > None", "the literal None is not allowed"),
        ("score > true", "true/false can only be compared with == or !="),
        ("1 < 2", "at least one side must be a column"),
        ("0.5", "alone is not a condition"),
        ("label in 'cat'", "'in' needs a list of values"),
        ("label in [score]", "may hold only numbers, quoted strings"),
        ("(score > 1) == true", "a condition cannot be compared"),
        ("-score > 1", "a sign (-, +) may only precede a number"),
        ("os > 1", "unknown column 'os'"),
        ("score > 1 and " * 200 + "true", "longer than 2000 characters"),
        ("score > " + "-" * 1900 + "1", "too deeply nested"),
    ],
)
def test_filter_refusals_are_one_line(text: str, why: str):
    message = refused(text)
    assert why in message
    if "longer than" not in message and "nested" not in message:
        assert f"'{text.replace(chr(10), ' ').strip()}'" in message  # the expression itself
        assert "available: path, group_name, score" in message  # the columns to use


def test_unknown_column_suggests_and_lists():
    message = refused("scor >= 0.8")
    assert "unknown column 'scor'" in message and "did you mean 'score'?" in message
    many = [f"c{i}" for i in range(20)]
    assert "(+8 more)" in refused("x > 1", many)


def test_filter_reads_only_its_columns():
    rule = compile_filter("score > 1 or clip_correct", COLUMNS)
    assert rule.columns == ("score", "clip_correct") and rule.text == "score > 1 or clip_correct"


def test_text_in_a_truth_column_is_an_input_error():
    with pytest.raises(
        InputError, match=r"column 'label' holds 'cat', not a truth value.*label =="
    ):
        keep("label", {"label": "cat"})


# --- manifests: filters, subset, ambiguity, pairs -------------------------------------------


def make_image(path: Path, colour: tuple[int, int, int] = (90, 140, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), colour).save(path)


@pytest.fixture
def scored(tmp_path: Path) -> Path:
    """20 images in two studies, with scores, correctness columns and a prompt pairing."""
    rows = []
    for i in range(20):
        make_image(tmp_path / "img" / f"{i:02d}.png", (i * 10, 0, 0))
        rows.append(
            {
                "path": f"img/{i:02d}.png",
                "group_name": "study1" if i < 12 else "study2",
                "score": f"{i / 19:.3f}",
                "clip_correct": "True" if i % 2 == 0 else "False",
                "resnet_correct": "True" if i % 4 == 0 else "False",
                "prompt": f"prompt {i % 6}",
                "caption": f"image {i}",
            }
        )
    pd.DataFrame(rows).to_csv(tmp_path / "manifest.csv", index=False)
    return tmp_path / "manifest.csv"


def manifest_data(manifest: Path, **keys) -> DataConfig:
    return DataConfig(manifest=str(manifest), **keys)


def test_sets_by_filters(scored: Path):
    data = manifest_data(scored, filter_a="score >= 0.8", filter_b="score <= 0.2")
    sets = load_manifest(data)
    assert [r.id for r in sets.a] == [f"a/img/{i}.png" for i in range(16, 20)]
    assert [r.id for r in sets.b] == [f"b/img/{i:02d}.png" for i in range(4)]
    assert (sets.name_a, sets.name_b) == ("score >= 0.8", "score <= 0.2")  # display names
    assert sets.a[0].caption == "image 16" and sets.skipped == []
    assert sets.selection == {"manifest_rows": 20, "rows_a": 4, "rows_b": 4, "ambiguous": 0}


def test_boolean_columns_and_a_group_on_the_other_side(scored: Path):
    data = manifest_data(scored, filter_a="clip_correct and not resnet_correct", group_b="study2")
    sets = load_manifest(data)
    wanted = [i for i in range(20) if i % 2 == 0 and i % 4 != 0 and i < 12]  # 14, 18 are in B
    assert [r.id for r in sets.a] == sorted(f"a/img/{i:02d}.png" for i in wanted)
    # Rows 14 and 18 match the filter and are study2: ambiguous, skipped from both sets.
    assert len(sets.b) == 8 - 2
    ambiguous = [s for s in sets.skipped if s["reason"] == "ambiguous"]
    assert Counter(s["set"] for s in ambiguous) == {"a": 2, "b": 2}
    assert {Path(s["uri"]).name for s in ambiguous} == {"14.png", "18.png"}
    assert sets.selection["ambiguous"] == 2


def test_subset_limits_rows_first(scored: Path):
    data = manifest_data(scored, filter_a="score >= 0.5", filter_b="score < 0.5", subset=["study1"])
    sets = load_manifest(data)
    assert len(sets.a) + len(sets.b) == 12  # study2's rows never enter either set
    assert sets.selection["subset_rows"] == 12
    data.subset_column = "prompt"
    data.subset = ["prompt 0", "prompt 1"]
    sets = load_manifest(data)
    assert {r.id.rsplit("/", 1)[1] for r in sets.records()} == {
        f"{i:02d}.png" for i in range(20) if i % 6 in (0, 1)
    }


def test_subset_errors_name_the_fix(scored: Path):
    data = manifest_data(scored, group_a="study1", group_b="study2", subset=["studdy2"])
    with pytest.raises(InputError) as info:
        load_manifest(data)
    message = str(info.value)
    assert "data.subset name 'studdy2'" in message and "'study1', 'study2'" in message
    assert "Did you mean 'study2'?" in message
    data.subset = ["study1"]
    with pytest.raises(
        InputError, match=r"data.group_b 'study2' has no rows left after data.subset"
    ):
        load_manifest(data)
    data.subset, data.subset_column = ["x"], "nope"
    with pytest.raises(
        InputError, match=r"data.subset_column 'nope' is not a column.*present: path"
    ):
        load_manifest(data)


def test_filter_errors(scored: Path):
    data = manifest_data(scored, filter_a="score >= 2", filter_b="score <= 0.2")
    with pytest.raises(InputError, match=r"data.filter_a 'score >= 2' matches none of the 20 rows"):
        load_manifest(data)
    data.filter_a = "scroe >= 0.5"
    with pytest.raises(ConfigError, match=r"data.filter_a 'scroe >= 0.5': unknown column"):
        load_manifest(data)
    data.filter_a = "score >= 0"  # every row: those B selects are ambiguous, B keeps none
    with pytest.raises(
        InputError,
        match=r"data.filter_b .*\(4 ambiguous; .*; make the rules of sets A and B exclude",
    ):
        load_manifest(data)


def test_group_name_is_optional_with_two_filters(tmp_path: Path):
    for i in range(4):
        make_image(tmp_path / f"{i}.png")
    frame = pd.DataFrame({"path": [f"{i}.png" for i in range(4)], "score": [0.1, 0.2, 0.8, 0.9]})
    frame.to_parquet(tmp_path / "m.parquet", index=False)  # real floats, no group_name column
    sets = load_manifest(
        manifest_data(tmp_path / "m.parquet", filter_a="score > 0.5", filter_b="score < 0.5")
    )
    assert [r.id for r in sets.a] == ["a/2.png", "a/3.png"]


def test_pair_column(scored: Path):
    data = manifest_data(scored, group_a="study1", group_b="study2", pair_column="prompt")
    sets = load_manifest(data)
    assert sets.a[0].pair == "prompt 0" and sets.b[0].pair == "prompt 0"  # rows 0 and 12
    assert sets.b[0].to_dict()["pair"] == "prompt 0"  # pipeline rows carry it
    data.pair_column = "promt"
    with pytest.raises(InputError, match=r"data.pair_column 'promt' is not a column"):
        load_manifest(data)


def test_folder_records_pair_by_relative_path(tmp_path: Path):
    make_image(tmp_path / "a" / "x" / "1.png")
    make_image(tmp_path / "b" / "x" / "1.png")
    plan = plan_inputs(DataConfig(set_a=str(tmp_path / "a"), set_b=str(tmp_path / "b")))
    assert plan.a.records[0].pair == plan.b.records[0].pair == "x/1.png"


def test_listed_size_error_names_the_filter(scored: Path):
    data = manifest_data(scored, filter_a="score >= 0.99", filter_b="score < 0.5")
    plan = plan_inputs(data)
    with pytest.raises(InputError, match=r"data.filter_a 'score >= 0.99' of data.manifest.*widen"):
        check_set_sizes(plan, data)


def test_shared_examples_subset(examples_dir: Path):
    data = manifest_data(
        examples_dir / "manifest.csv",
        filter_a=f"group_name == '{YOGA}'",
        group_b=MEDITATION,
        subset=[YOGA, MEDITATION],
    )
    sets = load_manifest(data)
    assert len(sets.a) == len(sets.b) == 100 and sets.name_a == f"group_name == '{YOGA}'"


# --- path confinement ------------------------------------------------------------------------


@dataclass
class Ranked:
    """What run_stats reads of the embedding stage: every listed record read, none failed."""

    rows_per_set: dict[str, int]
    skipped: list[dict[str, str]] = field(default_factory=list)
    num_rows: int = 0
    from_cache: int = 0


def test_paths_outside_the_root_are_refused_and_counted(tmp_path: Path):
    root = tmp_path / "ds"
    for name in ("a1.png", "a2.png", "b1.png", "b2.png"):
        make_image(root / name)
    make_image(tmp_path / "secret.png")
    rows = [
        ("a1.png", "A"),
        ("a2.png", "A"),
        ("../secret.png", "A"),
        (str(tmp_path / "secret.png"), "A"),
        (str(root / "a1.png"), "A"),  # absolute even though inside: refused as written
        ("sub/../../secret.png", "A"),
        ("file://" + str(tmp_path / "secret.png"), "B"),
        ("s3://bucket/x.png", "B"),
        ("b1.png", "B"),
        ("b2.png", "B"),
    ]
    frame = pd.DataFrame(rows, columns=["path", "group_name"])
    frame.to_csv(root / "manifest.csv", index=False)
    data = manifest_data(root / "manifest.csv", group_a="A", group_b="B")
    plan = plan_inputs(data)
    assert [r.id for r in plan.a.records] == ["a/a1.png", "a/a2.png"]
    assert [r.id for r in plan.b.records] == ["b/b1.png", "b/b2.png"]
    reasons = Counter((s["set"], s["reason"]) for s in plan.skipped)
    assert reasons == {
        ("a", "outside_root"): 2,
        ("a", "absolute_path"): 2,
        ("b", "absolute_path"): 2,
    }
    ranked = Ranked({"a": 2, "b": 2})
    for set_plan, rows_listed in ((plan.a, 6), (plan.b, 4)):
        counts = _set_counts(set_plan, plan.skipped, ranked)
        assert counts["listed"] == rows_listed == counts["used"] + counts["skipped"]
    # Allowed: every local file is used (the s3 row is kept for reading later).
    data.allow_outside_root = True
    plan = plan_inputs(data)
    assert len(plan.a.records) == 4 and len(plan.b.records) == 4
    # a1.png written twice; ../secret.png and sub/../../secret.png are the same path
    assert [s["reason"] for s in plan.skipped] == ["duplicate", "duplicate"]


def test_data_root_moves_the_base(tmp_path: Path):
    make_image(tmp_path / "images" / "1.png")
    make_image(tmp_path / "images" / "2.png")
    meta = tmp_path / "meta"
    meta.mkdir()
    pd.DataFrame({"path": ["images/1.png", "images/2.png"], "group_name": ["x", "y"]}).to_csv(
        meta / "m.csv", index=False
    )
    data = manifest_data(meta / "m.csv", group_a="x", group_b="y", root=str(tmp_path))
    sets = load_manifest(data)
    assert sets.a[0].uri == str(tmp_path / "images" / "1.png") and sets.a[0].id == "a/images/1.png"
    data.root = None  # the manifest's folder: images/ is not there
    with pytest.raises(InputError, match=r"1 missing.*resolve against the manifest's folder"):
        load_manifest(data)
    data.root = str(tmp_path / "nowhere")
    with pytest.raises(InputError, match=r"data.root '.*nowhere' is not a folder"):
        load_manifest(data)


# --- purity ----------------------------------------------------------------------------------


def records(set_name: str, n: int) -> list[ImageRecord]:
    return [
        ImageRecord(f"{set_name}/{i:04d}.jpg", set_name, f"/d/{set_name}/{i}.jpg") for i in range(n)
    ]


@pytest.mark.parametrize(("n_a", "n_b", "purity"), [(100, 100, 0.9), (300, 80, 0.75), (7, 9, 0.5)])
def test_purity_swaps_disjoint_equal_seeded(n_a: int, n_b: int, purity: float):
    a, b = records("a", n_a), records("b", n_b)
    new_a, new_b, stats = apply_purity(a, b, purity, seed=3)
    n = round((1 - purity) * min(n_a, n_b))
    assert stats["swapped_a_to_b"] == stats["swapped_b_to_a"] == n == swap_count(n_a, n_b, purity)
    assert (len(new_a), len(new_b)) == (n_a, n_b)  # sizes kept
    ids_a, ids_b = [r.id for r in new_a], [r.id for r in new_b]
    assert len(set(ids_a)) == n_a and len(set(ids_b)) == n_b and not set(ids_a) & set(ids_b)
    assert not {r.uri for r in new_a} & {r.uri for r in new_b}  # no image in both sets
    assert set(ids_a) | set(ids_b) == {r.id for r in a + b}  # nothing lost or duplicated
    assert sum(i.startswith("b/") for i in ids_a) == n == sum(i.startswith("a/") for i in ids_b)
    assert {r.set for r in new_a} == {"a"} and {r.set for r in new_b} == {"b"}
    again = apply_purity(list(reversed(a)), b, purity, seed=3)  # listing order does not matter
    assert [r.id for r in again[0]] == ids_a
    other = apply_purity(a, b, purity, seed=4)
    assert n < 2 or [r.id for r in other[0]] != ids_a


def test_purity_one_is_the_identity_and_fraction_is_right_on_average():
    a, b = records("a", 50), records("b", 50)
    assert apply_purity(a, b, 1.0, seed=0)[:2] == (a, b)
    # Every image is equally likely to be swapped: over seeds, each is swapped ~ 1 - purity.
    hits = Counter()
    for seed in range(200):
        new_a, _, _ = apply_purity(a, b, 0.8, seed=seed)
        hits.update(r.id for r in new_a if r.id.startswith("b/"))
    assert len(hits) == 50 and max(hits.values()) < 80  # 40 expected per image


def test_purity_in_the_plan(scored: Path, tmp_path: Path):
    data = manifest_data(scored, group_a="study1", group_b="study2", purity=0.5)
    plan = plan_inputs(data, seed=7)
    assert len(plan.a.records) == 12 and len(plan.b.records) == 8
    assert plan.selection["purity"] == {
        "purity": 0.5,
        "swapped_a_to_b": 4,
        "swapped_b_to_a": 4,
        "size_a": 12,
        "size_b": 8,
        "seed": 7,
    }
    assert sum(r.id.startswith("b/") for r in plan.a.records) == 4
    shards = DataConfig(set_a=str(tmp_path / "x" / "{0..1}.tar"), set_b=str(tmp_path), purity=0.9)
    (tmp_path / "x").mkdir()
    for i in range(2):
        (tmp_path / "x" / f"{i}.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match=r"data.purity=0.9 .* shards; use a manifest or folders"):
        plan_inputs(shards)
