"""WebDataset / Parquet shard inputs on real local files: braces, resolution, streaming readers."""

from __future__ import annotations

import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visdiff.errors import InputError
from visdiff.schema import CAPTION, ERROR, ID, IMAGE_BYTES, SET, URI
from visdiff.sources.decode import decode_image
from visdiff.sources.shards.parquet import ParquetOptions, check_parquet_shard, iter_parquet_shard
from visdiff.sources.shards.read import shard_row_chunks
from visdiff.sources.shards.resolve import (
    MAX_EXPANSION,
    expand_braces,
    resolve_shards,
    shard_format,
)
from visdiff.sources.shards.rows import ROW_COLUMNS, SHARD_ERROR_KEY
from visdiff.sources.shards.webdataset import iter_webdataset_shard

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 30), (30, 40, 210)


def encoded(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(out, format=fmt)
    return out.getvalue()


def mean_colour(data: bytes) -> np.ndarray:
    return np.asarray(decode_image(data)).reshape(-1, 3).mean(axis=0)


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


# img2dataset layout: key.jpg + key.txt + key.json per sample; the folder name has dots.
SAMPLES = [
    ("laion.v2/part.0/000000000", RED, "JPEG", "jpg", "  a red square \n"),
    ("laion.v2/part.0/000000001", GREEN, "PNG", "png", "a green square"),
    ("laion.v2/part.0/000000002", BLUE, "JPEG", "jpg", None),
]


def write_webdataset(path: Path, samples=SAMPLES, mode: str = "w") -> Path:
    with tarfile.open(path, mode) as tar:
        for key, colour, fmt, ext, caption in samples:
            add_member(tar, f"{key}.{ext}", encoded(colour, fmt))
            if caption is not None:
                add_member(tar, f"{key}.txt", caption.encode())
            add_member(tar, f"{key}.json", json.dumps({"key": key, "width": 16}).encode())
    return path


def write_parquet(path: Path, table: pa.Table) -> Path:
    pq.write_table(table, path, row_group_size=2)
    return path


# ---------------------------------------------------------------- braces


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("s3://b/{00000..00003}.tar", [f"s3://b/0000{i}.tar" for i in range(4)]),
        ("shard-{8..11}.tar", ["shard-8.tar", "shard-9.tar", "shard-10.tar", "shard-11.tar"]),
        ("{098..101}", ["098", "099", "100", "101"]),
        ("{train,val,test}.tar", ["train.tar", "val.tar", "test.tar"]),
        (
            "{a,b}/{0..1}-{x,y}",
            ["a/0-x", "a/0-y", "a/1-x", "a/1-y", "b/0-x", "b/0-y"] + ["b/1-x", "b/1-y"],
        ),
        ("p{a,{b,c}d}", ["pa", "pbd", "pcd"]),
        ("plain/name.tar", ["plain/name.tar"]),
        ("{5..5}", ["5"]),
    ],
)
def test_expand_braces(pattern: str, expected: list[str]) -> None:
    assert expand_braces(pattern) == expected


def test_expand_braces_library_extras() -> None:
    # braceexpand also knows letter ranges and steps; backslashes stay literal in paths.
    assert expand_braces("{a..c}.tar") == ["a.tar", "b.tar", "c.tar"]
    assert expand_braces("{0..6..3}") == ["0", "3", "6"]
    assert expand_braces("x\\{0,1}") == ["x\\0", "x\\1"]


def test_expand_braces_large_zero_padded_range() -> None:
    names = expand_braces("s3://bucket/laion/{00000..00999}.tar")
    assert len(names) == 1000
    assert names[0] == "s3://bucket/laion/00000.tar"
    assert names[-1] == "s3://bucket/laion/00999.tar"
    assert len(set(names)) == 1000


@pytest.mark.parametrize(
    ("pattern", "problem"),
    [
        ("shards/{000..009.tar", "unbalanced"),
        ("shards/000..009}.tar", "unbalanced"),
        ("shards/{{a,b}.tar", "unbalanced"),
        ("shards/{009..000}.tar", "reversed"),
        (f"shards/{{0..{MAX_EXPANSION}}}.tar", "items"),
        ("{0..999}/{0..9999}.tar", "more than"),
        ("shards/{abc}.tar", "neither"),
        ("shards/{}.tar", "neither"),
    ],
)
def test_expand_braces_errors_name_the_pattern(pattern: str, problem: str) -> None:
    with pytest.raises(InputError) as info:
        expand_braces(pattern)
    assert pattern in str(info.value)
    assert problem in str(info.value)


# ---------------------------------------------------------------- resolution


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "laion"
    folder.mkdir()
    for index in range(4):
        write_webdataset(folder / f"{index:05d}.tar", SAMPLES[:1])
    (folder / "00000_stats.json").write_text("{}")
    (folder / "nested").mkdir()
    write_webdataset(folder / "nested" / "00100.tar", SAMPLES[:1])
    write_webdataset(folder / ".hidden.tar", SAMPLES[:1])
    return folder


def test_resolve_glob_stays_in_folder_and_skips_hidden(shard_dir: Path) -> None:
    shards = resolve_shards(f"{shard_dir}/*.tar")
    assert shards == [str(shard_dir / f"{i:05d}.tar") for i in range(4)]
    assert resolve_shards(f"{shard_dir}/0000[13].tar") == [
        str(shard_dir / "00001.tar"),
        str(shard_dir / "00003.tar"),
    ]
    assert resolve_shards(f"{shard_dir}/0000?.tar")[-1] == str(shard_dir / "00003.tar")


def test_resolve_recursive_glob(shard_dir: Path) -> None:
    shards = resolve_shards(f"{shard_dir}/**/*.tar")
    assert shards == sorted(
        [str(shard_dir / f"{i:05d}.tar") for i in range(4)]
        + [str(shard_dir / "nested" / "00100.tar")]
    )


def test_resolve_relative_brace_and_list(shard_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(shard_dir.parent)
    expected = [str(shard_dir / f"{i:05d}.tar") for i in (1, 2)]
    assert resolve_shards("laion/{00001..00002}.tar") == expected  # absolute, for Ray workers
    listed = ["laion/00002.tar", "laion/00001.tar", str(shard_dir / "00002.tar")]
    assert resolve_shards(listed) == expected  # sorted and de-duplicated
    mixed = resolve_shards(["laion/00000.tar", "laion/{00002..00003}.tar"])
    assert [os.path.basename(s) for s in mixed] == ["00000.tar", "00002.tar", "00003.tar"]


def test_resolve_errors_name_the_spec(shard_dir: Path) -> None:
    missing = f"{shard_dir}/{{00002..00005}}.tar"
    with pytest.raises(InputError, match="2 of 4 shard") as info:
        resolve_shards(missing)
    assert missing in str(info.value) and "00004.tar" in str(info.value)
    with pytest.raises(InputError, match="matched no files") as info:
        resolve_shards(f"{shard_dir}/*.tgz")
    assert f"{shard_dir}/*.tgz" in str(info.value)
    with pytest.raises(InputError, match="cannot be listed"):
        resolve_shards(f"{shard_dir}/no_such_folder/*.tar")
    with pytest.raises(InputError, match="not shards"):
        resolve_shards(f"{shard_dir}/0000*")  # also matches 00000_stats.json
    with pytest.raises(InputError, match="empty list"):
        resolve_shards([])
    with pytest.raises(InputError, match="whole folder level") as info:
        resolve_shards(f"{shard_dir}/a**b/*.tar")
    assert f"{shard_dir}/a**b/*.tar" in str(info.value) and "\n" not in str(info.value)
    same = [f"{shard_dir}/00000.tar", f"{shard_dir}/nested/../00000.tar"]
    assert resolve_shards(same) == [str(shard_dir / "00000.tar")]  # normalised, then unique


def test_resolve_rejects_duplicate_shard_names(tmp_path: Path) -> None:
    for part in ("p1", "p2"):
        (tmp_path / part).mkdir()
        write_webdataset(tmp_path / part / "00000.tar", SAMPLES[:1])
    with pytest.raises(InputError, match="share the file name '00000.tar'"):
        resolve_shards(f"{tmp_path}/{{p1,p2}}/00000.tar")


@pytest.mark.parametrize(
    ("uri", "fmt"),
    [
        ("s3://b/x/00001.tar", "webdataset"),
        ("/data/x.TAR.GZ", "webdataset"),
        ("x.tgz", "webdataset"),
        ("s3://b/train-00000-of-00010.parquet", "parquet"),
    ],
)
def test_shard_format(uri: str, fmt: str) -> None:
    assert shard_format(uri) == fmt


def test_shard_format_rejects_other_files() -> None:
    with pytest.raises(InputError, match="'s3://b/00000_stats.json'"):
        shard_format("s3://b/00000_stats.json")


# ---------------------------------------------------------------- WebDataset


def test_webdataset_rows_in_img2dataset_layout(tmp_path: Path) -> None:
    shard = write_webdataset(tmp_path / "00007.tar")
    rows = list(iter_webdataset_shard(str(shard), set_name="a"))
    assert [row[ID] for row in rows] == [f"a/00007.tar/{key}" for key, *_ in SAMPLES]
    assert all(tuple(row) == ROW_COLUMNS for row in rows)
    assert [row[CAPTION] for row in rows] == ["a red square", "a green square", ""]
    assert [row[URI] for row in rows] == [
        f"{shard}#laion.v2/part.0/000000000.jpg",
        f"{shard}#laion.v2/part.0/000000001.png",
        f"{shard}#laion.v2/part.0/000000002.jpg",
    ]
    assert {row[SET] for row in rows} == {"a"} and {row[ERROR] for row in rows} == {""}
    for row, (_, colour, *_rest) in zip(rows, SAMPLES, strict=True):
        np.testing.assert_allclose(mean_colour(row[IMAGE_BYTES]), colour, atol=6)


def test_webdataset_gzip_and_dot_slash_members(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar.gz"
    with tarfile.open(shard, "w:gz") as tar:
        add_member(tar, "./k1.jpg", encoded(RED))
        add_member(tar, "./k1.txt", "réd".encode())
        add_member(tar, "./k2.seg.png", encoded(GREEN, "PNG"))  # not an image member: ext "seg.png"
    rows = list(iter_webdataset_shard(str(shard), set_name="b"))
    assert [(row[ID], row[CAPTION], row[ERROR]) for row in rows] == [
        ("b/s.tar.gz/k1", "réd", ""),
        ("b/s.tar.gz/k2", "", "no_image: k2"),
    ]


def test_webdataset_sample_without_image(tmp_path: Path) -> None:
    shard = tmp_path / "s.tar"
    with tarfile.open(shard, "w") as tar:
        add_member(tar, "000.jpg", encoded(RED))
        add_member(tar, "001.txt", b"caption only")
        add_member(tar, "002.json", b"{}")
        add_member(tar, "003.jpg", encoded(BLUE))
    rows = list(iter_webdataset_shard(str(shard), set_name="a"))
    assert [row[ERROR] for row in rows] == ["", "no_image: 001", "no_image: 002", ""]
    assert rows[1][IMAGE_BYTES] == b"" and rows[1][CAPTION] == "caption only"
    assert rows[1][URI] == f"{shard}#001"


def test_webdataset_link_and_device_members_are_counted(tmp_path: Path) -> None:
    shard = tmp_path / "links.tar"
    with tarfile.open(shard, "w") as tar:
        directory = tarfile.TarInfo("sub")
        directory.type = tarfile.DIRTYPE
        tar.addfile(directory)  # structure: neither used nor counted
        add_member(tar, "sub/000.jpg", encoded(RED))
        for name, kind in (
            ("sub/001.jpg", tarfile.SYMTYPE),
            ("sub/002.jpg", tarfile.LNKTYPE),
            ("sub/003.jpg", tarfile.CHRTYPE),
            ("sub/004.jpg", tarfile.FIFOTYPE),
        ):
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "sub/000.jpg" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            tar.addfile(info)
        add_member(tar, "sub/005.txt", b"a caption whose image is a link")
        link = tarfile.TarInfo("sub/005.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    rows = list(iter_webdataset_shard(str(shard), set_name="a"))
    got = [(row[ID], row[ERROR].split(" (")[0]) for row in rows]
    assert got == [
        ("a/links.tar/sub/001.jpg", "tar_link: sub/001.jpg -> sub/000.jpg"),
        ("a/links.tar/sub/002.jpg", "tar_link: sub/002.jpg -> sub/000.jpg"),
        ("a/links.tar/sub/003.jpg", "not_a_file: sub/003.jpg"),
        ("a/links.tar/sub/004.jpg", "not_a_file: sub/004.jpg"),
        ("a/links.tar/sub/000", ""),
        ("a/links.tar/sub/005.jpg", "tar_link: sub/005.jpg -> /etc/passwd"),
        ("a/links.tar/sub/005", "no_image: sub/005"),
    ]
    assert all(row[IMAGE_BYTES] == b"" for row in rows if row[ERROR])
    decode_image(rows[4][IMAGE_BYTES])


def test_truncated_webdataset_keeps_complete_samples(tmp_path: Path) -> None:
    samples = [(f"{i:03d}", RED, "JPEG", "jpg", f"caption {i}") for i in range(6)]
    data = write_webdataset(tmp_path / "full.tar", samples).read_bytes()
    full = list(iter_webdataset_shard(str(tmp_path / "full.tar"), set_name="a"))
    assert len(full) == 6 and all(not row[ERROR] for row in full)
    # Cut inside sample 003's image bytes, and exactly before its header: at a member boundary
    # nothing tells whether sample 002 had all its members, so it is dropped with the cut.
    with tarfile.open(tmp_path / "full.tar") as tar:
        info = tar.getmember("003.jpg")
    cases = (("mid", info.offset_data + info.size // 2, 3), ("edge", info.offset, 2))
    for name, cut, complete in cases:
        shard = tmp_path / f"cut-{name}.tar"
        shard.write_bytes(data[:cut])
        rows = list(iter_webdataset_shard(str(shard), set_name="a"))
        keys = [row[ID].rsplit("/", 1)[1] for row in rows]
        assert keys == [f"{i:03d}" for i in range(complete)] + [SHARD_ERROR_KEY], name
        assert [row[CAPTION] for row in rows[:-1]] == [f"caption {i}" for i in range(complete)]
        assert rows[-1][ERROR].startswith("truncated_tar: ")
        assert f"after {complete} sample(s)" in rows[-1][ERROR]
        assert rows[-1][IMAGE_BYTES] == b""
        assert rows[-1][ID] == f"a/{shard.name}/{SHARD_ERROR_KEY}"
        for row in rows[:-1]:
            decode_image(row[IMAGE_BYTES])


def test_unreadable_and_empty_tar_shards(tmp_path: Path) -> None:
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar archive" * 40)
    with tarfile.open(tmp_path / "empty.tar", "w"):
        pass
    cases = {
        "junk.tar": "read_error: ",
        "missing.tar": "read_error: ",
        "empty.tar": "empty_shard: ",
    }
    for name, prefix in cases.items():
        rows = list(iter_webdataset_shard(str(tmp_path / name), set_name="b"))
        assert len(rows) == 1 and rows[0][ERROR].startswith(prefix), rows
        assert rows[0][ID] == f"b/{name}/{SHARD_ERROR_KEY}"


# ---------------------------------------------------------------- Parquet


def test_parquet_binary_column(tmp_path: Path) -> None:
    table = pa.table(
        {
            "key": ["k0", "k1", "k2", None],
            "jpg": pa.array(
                [encoded(RED), None, encoded(BLUE), encoded(GREEN, "PNG")], pa.binary()
            ),
            "TEXT": ["red ", "missing", None, "green"],
            "width": [16, 16, 16, 16],
        }
    )
    shard = write_parquet(tmp_path / "p.parquet", table)
    rows = list(iter_parquet_shard(str(shard), set_name="a"))
    assert [row[ID] for row in rows] == [
        "a/p.parquet/k0",
        "a/p.parquet/k1",
        "a/p.parquet/k2",
        "a/p.parquet/3",
    ]
    assert [row[CAPTION] for row in rows] == ["red", "missing", "", "green"]
    assert [row[ERROR] for row in rows] == ["", "no_image: k1", "", ""]
    assert rows[1][IMAGE_BYTES] == b"" and rows[0][URI] == f"{shard}#k0"
    np.testing.assert_allclose(mean_colour(rows[3][IMAGE_BYTES]), GREEN, atol=2)


def test_parquet_hf_image_struct(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array(
        [
            {"bytes": encoded(RED), "path": "r.jpg"},
            None,
            {"bytes": None, "path": "gone.jpg"},
            {"bytes": encoded(BLUE), "path": "b.jpg"},
            {"bytes": encoded(GREEN), "path": "g.jpg"},
        ],
        image_type,
    )
    table = pa.table({"image": images, "text": ["r", "none", "null bytes", "b", "g"]})
    shard = write_parquet(tmp_path / "train-00000-of-00001.parquet", table)
    assert check_parquet_shard(str(shard)).image_is_struct
    rows = list(iter_parquet_shard(str(shard), set_name="b"))
    assert [row[ID].rsplit("/", 1)[1] for row in rows] == ["0", "1", "2", "3", "4"]  # row index
    assert [row[ERROR] for row in rows] == ["", "no_image: 1", "no_image: 2", "", ""]
    assert rows[4][CAPTION] == "g"
    np.testing.assert_allclose(mean_colour(rows[3][IMAGE_BYTES]), BLUE, atol=6)


def test_parquet_schema_problems(tmp_path: Path) -> None:
    metadata_only = write_parquet(
        tmp_path / "00000.parquet", pa.table({"key": ["a"], "caption": ["x"], "url": ["u"]})
    )
    with pytest.raises(InputError, match="no image bytes column") as info:
        check_parquet_shard(str(metadata_only))
    assert str(metadata_only) in str(info.value)
    rows = list(iter_parquet_shard(str(metadata_only), set_name="a"))
    assert len(rows) == 1 and rows[0][ERROR].startswith("bad_schema: ")
    with pytest.raises(InputError, match="not image bytes"):
        check_parquet_shard(str(metadata_only), ParquetOptions(image_column="caption"))
    with pytest.raises(InputError, match="no caption column 'alt'"):
        iter_check = write_parquet(tmp_path / "ok.parquet", pa.table({"jpg": [encoded(RED)]}))
        check_parquet_shard(str(iter_check), ParquetOptions(caption_column="alt"))
    (tmp_path / "junk.parquet").write_bytes(b"not parquet")
    rows = list(iter_parquet_shard(str(tmp_path / "junk.parquet"), set_name="a"))
    assert len(rows) == 1 and rows[0][ERROR].startswith("read_error: ")


# ---------------------------------------------------------------- batch functions


@pytest.fixture
def two_shards(tmp_path: Path) -> list[str]:
    tar = write_webdataset(tmp_path / "00000.tar")
    table = pa.table({"jpg": pa.array([encoded(RED), b""], pa.binary()), "caption": ["x", "y"]})
    return [str(tar), str(write_parquet(tmp_path / "00001.parquet", table))]


def test_shard_row_chunks_concatenate_shards(two_shards: list[str]) -> None:
    batch = {"shard": np.array(two_shards, dtype=object)}
    (out,) = shard_row_chunks(batch, set_name="a")
    assert tuple(out) == ROW_COLUMNS
    assert all(len(values) == 5 for values in out.values())
    assert out[ID] == [f"a/00000.tar/{key}" for key, *_ in SAMPLES] + [
        "a/00001.parquet/0",
        "a/00001.parquet/1",
    ]
    assert out[ERROR] == ["", "", "", "", "no_image: 1"]
    chunks = list(shard_row_chunks(batch, set_name="a", rows_per_chunk=2))
    assert [len(chunk[ID]) for chunk in chunks] == [2, 2, 1]
    assert sum((chunk[ID] for chunk in chunks), []) == out[ID]
    with pytest.raises(InputError, match="'shard' column"):
        next(shard_row_chunks({"uri": batch["shard"]}, set_name="a"))


def test_shard_row_chunks_in_ray_data(two_shards: list[str], ray_session) -> None:
    import ray

    dataset = ray.data.from_items([{"shard": shard} for shard in two_shards]).map_batches(
        shard_row_chunks, fn_kwargs={"set_name": "b", "rows_per_chunk": 2}, batch_size=1
    )
    rows = sorted(dataset.take_all(), key=lambda row: row[ID])
    assert len(rows) == 5
    assert set(rows[0]) == set(ROW_COLUMNS)
    by_id = {row[ID]: row for row in rows}
    assert by_id["b/00001.parquet/1"][IMAGE_BYTES] == b""
    assert by_id["b/00001.parquet/1"][ERROR] == "no_image: 1"
    red = by_id[f"b/00000.tar/{SAMPLES[0][0]}"]
    assert isinstance(red[IMAGE_BYTES], bytes) and red[CAPTION] == "a red square"
    np.testing.assert_allclose(mean_colour(red[IMAGE_BYTES]), RED, atol=6)
