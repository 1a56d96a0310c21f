"""All input kinds read from a real S3 API (moto's server on loopback): manifests, folder
prefixes, WebDataset and Parquet shards, plus the errors for missing objects and prefixes."""

from __future__ import annotations

import io
import json
import tarfile

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visdiff.config import DataConfig
from visdiff.errors import InputError
from visdiff.io import storage
from visdiff.schema import CAPTION, ERROR, ID, IMAGE_BYTES, URI
from visdiff.sources.decode import decode_image, read_and_decode
from visdiff.sources.manifest import load_manifest
from visdiff.sources.plan import plan_inputs
from visdiff.sources.shards.parquet import iter_parquet_shard
from visdiff.sources.shards.read import shard_row_chunks
from visdiff.sources.shards.resolve import resolve_shards
from visdiff.sources.shards.rows import SHARD_ERROR_KEY
from visdiff.sources.shards.webdataset import iter_webdataset_shard

RED, GREEN, BLUE = (220, 20, 20), (20, 200, 30), (30, 40, 210)


def encoded(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (16, 12), colour).save(out, format=fmt)
    return out.getvalue()


def mean_colour(image: Image.Image) -> np.ndarray:
    return np.asarray(image).reshape(-1, 3).mean(axis=0)


def tar_bytes(samples: list[tuple[str, bytes, str]]) -> bytes:
    """An img2dataset-style shard: key.jpg, key.txt, key.json per sample."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for key, image, caption in samples:
            for ext, data in (
                ("jpg", image),
                ("txt", caption.encode()),
                ("json", json.dumps({"key": key}).encode()),
            ):
                info = tarfile.TarInfo(f"{key}.{ext}")
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture
def bucket(s3_bucket: str) -> str:
    """The bucket filled with every input kind."""
    s3 = boto3.client("s3")

    def put(key: str, body: bytes | str) -> None:
        s3.put_object(Bucket=s3_bucket, Key=key, Body=body)

    put(
        "ds/manifest.csv",
        "path,group_name,caption\n"
        "images/cats/000001.jpg,cats,a red cat\n"
        "images/cats/000002.jpg,cats,\n"
        "images/dogs/000010.png,dogs,a blue dog\n",
    )
    put("ds/images/cats/000001.jpg", encoded(RED))
    put("ds/images/cats/000002.jpg", encoded(GREEN))
    put("ds/images/dogs/000010.png", encoded(BLUE, "PNG"))
    put("a/x/1.jpg", encoded(RED))
    put("a/2.png", encoded(GREEN, "PNG"))
    put("a/notes.txt", b"not an image")
    put("b/3.jpg", encoded(BLUE))
    for shard in range(3):
        samples = [(f"{shard:05d}{i:04d}", encoded(RED), f"caption {shard}-{i}") for i in range(2)]
        put(f"laion/{shard:05d}.tar", tar_bytes(samples))
        put(f"laion/{shard:05d}_stats.json", b"{}")
    full = tar_bytes([(f"9{i:04d}", encoded(GREEN), f"c{i}") for i in range(4)])
    put("broken/00000.tar", full[: len(full) // 2])
    table = pa.table({"key": ["p0", "p1"], "jpg": [encoded(BLUE), None], "caption": ["b", "n"]})
    out = io.BytesIO()
    pq.write_table(table, out)
    put("pq/00000.parquet", out.getvalue())
    return s3_bucket


def test_manifest_on_s3(bucket: str) -> None:
    manifest = f"s3://{bucket}/ds/manifest.csv"
    sets = load_manifest(DataConfig(manifest=manifest, group_a="cats", group_b="dogs"))
    assert [r.uri for r in sets.a] == [
        f"s3://{bucket}/ds/images/cats/000001.jpg",
        f"s3://{bucket}/ds/images/cats/000002.jpg",
    ]
    assert [r.id for r in sets.a] == ["a/images/cats/000001.jpg", "a/images/cats/000002.jpg"]
    assert [r.caption for r in sets.a] == ["a red cat", ""]
    assert [r.id for r in sets.b] == ["b/images/dogs/000010.png"]
    np.testing.assert_allclose(mean_colour(read_and_decode(sets.b[0].uri)), BLUE, atol=2)
    missing = f"s3://{bucket}/ds/missing.csv"
    with pytest.raises(InputError, match="not found") as info:
        load_manifest(DataConfig(manifest=missing, group_a="cats", group_b="dogs"))
    assert missing in str(info.value)


def test_folder_prefixes_on_s3(bucket: str) -> None:
    plan = plan_inputs(DataConfig(set_a=f"s3://{bucket}/a/", set_b=f"s3://{bucket}/b/"))
    a, b = plan.a.records or [], plan.b.records or []
    assert [r.id for r in a] == ["a/2.png", "a/x/1.jpg"]  # notes.txt is not an image
    assert [r.uri for r in b] == [f"s3://{bucket}/b/3.jpg"]
    assert (plan.a.display_name, plan.b.display_name) == ("a", "b")
    np.testing.assert_allclose(mean_colour(read_and_decode(a[1].uri)), RED, atol=6)
    missing = f"s3://{bucket}/no_such_prefix/"
    with pytest.raises(InputError, match="does not exist") as info:
        plan_inputs(DataConfig(set_a=missing, set_b=f"s3://{bucket}/b/"))
    assert missing in str(info.value)


def test_read_bytes_on_s3(bucket: str) -> None:
    assert storage.read_bytes(f"s3://{bucket}/a/notes.txt") == b"not an image"
    with pytest.raises(OSError):
        storage.read_bytes(f"s3://{bucket}/a/missing.jpg")


def test_resolve_shards_on_s3(bucket: str) -> None:
    expected = [f"s3://{bucket}/laion/{i:05d}.tar" for i in range(3)]
    assert resolve_shards(f"s3://{bucket}/laion/{{00000..00002}}.tar") == expected
    assert resolve_shards(f"s3://{bucket}/laion/*.tar") == expected  # stats files not matched
    assert resolve_shards([expected[2], expected[0], expected[2]]) == [expected[0], expected[2]]
    assert resolve_shards(f"s3://{bucket}/**/*.parquet") == [f"s3://{bucket}/pq/00000.parquet"]
    missing = f"s3://{bucket}/laion/{{00000..00004}}.tar"
    with pytest.raises(InputError, match="2 of 5 shard") as info:
        resolve_shards(missing)
    assert missing in str(info.value) and f"s3://{bucket}/laion/00004.tar" in str(info.value)
    with pytest.raises(InputError, match="matched no files"):
        resolve_shards(f"s3://{bucket}/laion/*.tgz")
    with pytest.raises(InputError, match=f"s3://{bucket}/nowhere/"):
        resolve_shards(f"s3://{bucket}/nowhere/*.tar")


def test_shard_readers_on_s3(bucket: str) -> None:
    shard = f"s3://{bucket}/laion/00001.tar"
    rows = list(iter_webdataset_shard(shard, set_name="a"))
    assert [row[ID] for row in rows] == ["a/00001.tar/000010000", "a/00001.tar/000010001"]
    assert [row[CAPTION] for row in rows] == ["caption 1-0", "caption 1-1"]
    assert rows[0][URI] == f"{shard}#000010000.jpg" and not rows[0][ERROR]
    np.testing.assert_allclose(mean_colour(decode_image(rows[0][IMAGE_BYTES])), RED, atol=6)

    broken = list(iter_webdataset_shard(f"s3://{bucket}/broken/00000.tar", set_name="b"))
    assert [row[ID].rsplit("/", 1)[1] for row in broken][-1] == SHARD_ERROR_KEY
    assert broken[-1][ERROR].startswith("truncated_tar: ")
    assert all(not row[ERROR] for row in broken[:-1]) and 1 <= len(broken) - 1 < 4

    missing = list(iter_webdataset_shard(f"s3://{bucket}/laion/00099.tar", set_name="a"))
    assert len(missing) == 1 and missing[0][ERROR].startswith("read_error: ")
    assert f"s3://{bucket}/laion/00099.tar" in missing[0][ERROR]

    parquet = list(iter_parquet_shard(f"s3://{bucket}/pq/00000.parquet", set_name="b"))
    assert [(row[ID], row[ERROR]) for row in parquet] == [
        ("b/00000.parquet/p0", ""),
        ("b/00000.parquet/p1", "no_image: p1"),
    ]
    np.testing.assert_allclose(mean_colour(decode_image(parquet[0][IMAGE_BYTES])), BLUE, atol=6)

    batch = {"shard": np.array(resolve_shards(f"s3://{bucket}/laion/*.tar"), dtype=object)}
    (out,) = shard_row_chunks(batch, set_name="a")
    assert len(out[ID]) == 6 and len(set(out[ID])) == 6 and set(out[ERROR]) == {""}
