"""Content-addressed cache: key stability, append-only Parquet store on disk and on S3 (moto),
buffered writes (one file per bucket per flush; row and time bounds)."""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visdiff.cache.keys import captioner_model_key, clip_model_key, content_hash
from visdiff.cache.store import CaptionCache, EmbeddingCache
from visdiff.config import CaptionerConfig, ClipConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
SAFE_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
VIT_B32 = ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k")


def hashes_for(count: int, start: int = 0) -> list[str]:
    return [content_hash(f"image-{i}".encode()) for i in range(start, start + count)]


def vectors(count: int, dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, dim)).astype(np.float32)


def data_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*.parquet") if not p.name.startswith("."))


# --- keys -------------------------------------------------------------------------------------


def test_content_hash_is_blake2b_128():
    data = b"\x89PNG fake image bytes"
    assert content_hash(data) == hashlib.blake2b(data, digest_size=16).hexdigest()
    assert re.fullmatch(r"[0-9a-f]{32}", content_hash(data))
    assert content_hash(data) != content_hash(data + b"\x00")


def test_model_keys_are_pinned():
    """A change of these strings orphans every existing cache: make it a deliberate one."""
    assert clip_model_key(VIT_B32) == "clip-ViT-B-32-laion2b_s34b_b79k-fp32-4a5e14287e111590"
    assert captioner_model_key(CaptionerConfig()) == "caption-blip-tiny-fp32-846866bcca802d8f"


def test_model_keys_are_stable_across_processes():
    script = (
        "from visdiff.cache.keys import clip_model_key, captioner_model_key\n"
        "from visdiff.config import ClipConfig, CaptionerConfig\n"
        "print(clip_model_key(ClipConfig(arch='ViT-B-32', pretrained='laion2b_s34b_b79k')))\n"
        "print(clip_model_key(ClipConfig()))\n"
        "print(captioner_model_key(CaptionerConfig(prompt='a photo of')))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [
        clip_model_key(VIT_B32),
        clip_model_key(ClipConfig()),
        captioner_model_key(CaptionerConfig(prompt="a photo of")),
    ]


def test_clip_key_follows_output_relevant_fields_only():
    base = clip_model_key(VIT_B32)
    assert SAFE_KEY.fullmatch(base)
    changed = [
        ClipConfig(arch="ViT-B-16", pretrained="laion2b_s34b_b79k"),
        ClipConfig(arch="ViT-B-32", pretrained="openai"),
        ClipConfig(arch="ViT-B-32", pretrained=None),
        ClipConfig(arch="ViT-B-32", pretrained="laion2b_s34b_b79k", precision="fp16"),
    ]
    keys = {clip_model_key(cfg) for cfg in changed}
    assert len(keys) == len(changed) and base not in keys
    same = ClipConfig(
        arch="ViT-B-32",
        pretrained="laion2b_s34b_b79k",
        batch_size=512,
        num_actors=8,
        num_cpus=4.0,
        num_gpus=1.0,
    )
    assert clip_model_key(same) == base


def test_captioner_key_follows_output_relevant_fields_only():
    base_cfg = CaptionerConfig(model="Salesforce/blip-image-captioning-base")
    base = captioner_model_key(base_cfg)
    assert SAFE_KEY.fullmatch(base) and "/" not in base
    variants = [
        {"kind": "blip2"},
        {"model": "Salesforce/blip-image-captioning-large"},
        {"prompt": "a photograph of"},
        {"max_new_tokens": 20},
        {"precision": "bf16"},
    ]
    keys = {captioner_model_key(CaptionerConfig(**{**vars(base_cfg), **v})) for v in variants}
    assert len(keys) == len(variants) and base not in keys
    resources = {"batch_size": 64, "num_actors": 3, "num_cpus": 2.0, "num_gpus": 0.5}
    assert captioner_model_key(CaptionerConfig(**{**vars(base_cfg), **resources})) == base


def test_local_checkpoint_key_follows_bytes_not_path(tmp_path):
    weights = tmp_path / "a" / "model.safetensors"
    weights.parent.mkdir()
    weights.write_bytes(b"\x01" * 5000)
    copy = tmp_path / "b" / "model.safetensors"
    copy.parent.mkdir()
    shutil.copyfile(weights, copy)
    os.utime(copy, (1, 1))  # a copy on another node has another mtime: same model

    key = clip_model_key(ClipConfig(arch="ViT-B-32", pretrained=str(weights)))
    assert key.startswith("clip-ViT-B-32-model.safetensors-fp32-") and SAFE_KEY.fullmatch(key)
    assert clip_model_key(ClipConfig(arch="ViT-B-32", pretrained=str(copy))) == key
    copy.write_bytes(b"\x02" * 5000)
    assert clip_model_key(ClipConfig(arch="ViT-B-32", pretrained=str(copy))) != key

    folder = tmp_path / "blip"
    folder.mkdir()
    (folder / "config.json").write_text('{"a": 1}')
    local_key = captioner_model_key(CaptionerConfig(model=str(folder)))
    assert local_key.startswith("caption-blip-blip-fp32-")
    (folder / "config.json").write_text('{"a": 2}')
    assert captioner_model_key(CaptionerConfig(model=str(folder))) != local_key


# --- local store ------------------------------------------------------------------------------


def test_round_trip_is_exact_and_layout_is_bucketed(tmp_path):
    hashes, embeddings = hashes_for(50), vectors(50, dim=16)
    cache = EmbeddingCache(str(tmp_path), "clip-test")
    assert cache.put(hashes, embeddings) == 50
    assert cache.flush() == 50

    for path in data_files(tmp_path):
        rel = path.relative_to(tmp_path).parts
        assert rel[0] == "clip-test" and re.fullmatch(r"bucket=[0-9a-f]{2}", rel[1])
        assert re.fullmatch(r"[0-9a-f]{32}\.parquet", rel[2])
        table = pq.read_table(path)
        assert table.schema.field("embedding").type == pa.list_(pa.float32(), 16)
        assert {"content_hash", "created_at"} <= set(table.column_names)
        assert all(h[:2] == rel[1][-2:] for h in table.column("content_hash").to_pylist())

    found = EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes)
    assert set(found) == set(hashes)
    for i, h in enumerate(hashes):
        assert found[h].dtype == np.float32 and np.array_equal(found[h], embeddings[i])
        assert not found[h].flags.writeable  # cached rows cannot be corrupted by callers


def test_partial_hits_and_stats(tmp_path):
    with EmbeddingCache(str(tmp_path), "clip-test") as cache:
        cache.put(hashes_for(10), vectors(10))
    found = EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes_for(20))
    assert set(found) == set(hashes_for(10))
    fresh = EmbeddingCache(str(tmp_path), "clip-test")
    fresh.lookup(hashes_for(20))
    stats = fresh.stats()
    assert (stats["hits"], stats["misses"], stats["rows_written"]) == (10, 10, 0)
    assert stats["files_read"] == len(data_files(tmp_path))


def test_duplicate_puts_write_nothing(tmp_path):
    hashes, embeddings = hashes_for(30), vectors(30)
    cache = EmbeddingCache(str(tmp_path), "clip-test")
    assert cache.put(hashes, embeddings) == 30
    assert cache.put(hashes, embeddings) == 0  # buffered rows count as present
    cache.flush()
    files = data_files(tmp_path)
    assert cache.put(hashes, embeddings) == 0
    # Another actor that never looked these up still finds them before writing.
    assert EmbeddingCache(str(tmp_path), "clip-test").put(hashes[:10], embeddings[:10]) == 0
    # Repeats inside one call are written once.
    doubled = hashes_for(2, start=100) * 2
    assert cache.put(doubled, vectors(4)) == 2
    cache.flush()
    assert len(data_files(tmp_path)) <= len(files) + 2


def test_second_pass_reads_nothing_again(tmp_path):
    hashes = hashes_for(64)
    with EmbeddingCache(str(tmp_path), "clip-test") as writer:
        writer.put(hashes, vectors(64))
    actor = EmbeddingCache(str(tmp_path), "clip-test")
    for start in range(0, 64, 16):  # batches, as the embed stage calls it
        assert len(actor.lookup(hashes[start : start + 16])) == 16
    first = actor.stats()
    for start in range(0, 64, 16):
        actor.lookup(hashes[start : start + 16])
    again = actor.stats()
    assert again["files_read"] == first["files_read"] and again["lists"] == first["lists"]
    assert again["hits"] == 128


def test_new_files_from_other_writers_are_seen(tmp_path):
    reader = EmbeddingCache(str(tmp_path), "clip-test")
    writer = EmbeddingCache(str(tmp_path), "clip-test")
    writer.put(hashes_for(5), vectors(5))
    writer.flush()
    assert len(reader.lookup(hashes_for(6))) == 5
    read_before = reader.stats()["files_read"]
    new = hashes_for(1, start=5)
    writer.put(new, vectors(1, seed=1))
    writer.flush()
    found = reader.lookup(hashes_for(6))
    assert set(found) == set(hashes_for(6))
    assert reader.stats()["files_read"] == read_before + 1  # only the new file is read


def test_relist_interval_trades_freshness_for_listings(tmp_path):
    reader = EmbeddingCache(str(tmp_path), "clip-test", relist_after_s=3600)
    new = hashes_for(1)
    assert reader.lookup(new) == {}
    with EmbeddingCache(str(tmp_path), "clip-test") as writer:
        writer.put(new, vectors(1))
    assert reader.lookup(new) == {}  # not re-listed within the interval: a miss, never wrong
    assert reader.stats()["lists"] == 1
    assert set(EmbeddingCache(str(tmp_path), "clip-test").lookup(new)) == set(new)


def test_concurrent_writers_in_threads(tmp_path):
    hashes, embeddings = hashes_for(200), vectors(200)
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def actor(seed: int) -> None:
        try:
            cache = EmbeddingCache(str(tmp_path), "clip-test")
            order = np.random.default_rng(seed).permutation(200)
            start.wait()
            for batch in np.array_split(order, 5):  # overlapping batches across actors
                hits = cache.lookup([hashes[i] for i in batch])
                misses = [i for i in batch if hashes[i] not in hits]
                cache.put([hashes[i] for i in misses], embeddings[misses])
            cache.close()
        except BaseException as exc:  # surfaced in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=actor, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    found = EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes)
    assert len(found) == 200
    assert all(np.array_equal(found[h], embeddings[i]) for i, h in enumerate(hashes))
    assert not [p for p in tmp_path.rglob("*") if p.name.startswith(".")]  # no temp leftovers


WRITER = """
import sys, numpy as np
from visdiff.cache.keys import content_hash
from visdiff.cache.store import EmbeddingCache
root, seed = sys.argv[1], int(sys.argv[2])
hashes = [content_hash(f"image-{i}".encode()) for i in range(120)]
emb = np.random.default_rng(0).standard_normal((120, 8)).astype(np.float32)
cache = EmbeddingCache(root, "clip-test")
for batch in np.array_split(np.random.default_rng(seed).permutation(120), 4):
    cache.put([hashes[i] for i in batch], emb[batch])
cache.close()
print(cache.stats()["rows_written"])
"""


def test_concurrent_writer_processes(tmp_path):
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(seed)],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for seed in (1, 2)
    ]
    written = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        written.append(int(out))
    assert sum(written) >= 120  # overlap may be written twice: harmless duplicates
    found = EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes_for(120))
    expected = vectors(120)
    assert len(found) == 120
    assert all(np.array_equal(found[h], expected[i]) for i, h in enumerate(hashes_for(120)))


def test_dimension_mismatch_raises(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "clip-test")
    cache.put(hashes_for(4), vectors(4, dim=8))
    cache.flush()
    with pytest.raises(ValueError, match="dimension 9"):
        cache.put(hashes_for(4, start=10), vectors(4, dim=9))
    with pytest.raises(ValueError, match="dimension 9"):  # a fresh actor checks stored rows
        EmbeddingCache(str(tmp_path), "clip-test").put(hashes_for(4), vectors(4, dim=9))
    with pytest.raises(ValueError, match="differs from 16"):
        EmbeddingCache(str(tmp_path), "clip-test", dim=16).lookup(hashes_for(4))
    with pytest.raises(ValueError, match="shape"):
        cache.put(hashes_for(3), vectors(4))
    with pytest.raises(ValueError, match="NaN"):
        cache.put(hashes_for(1, start=50), np.full((1, 8), np.nan))


def test_invalid_hashes_and_keys_are_rejected(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "clip-test")
    for bad in ("../etc", "ABCDEF", "x"):
        with pytest.raises(ValueError, match="hex digest"):
            cache.lookup([bad])
    with pytest.raises(ValueError, match="safe folder name"):
        EmbeddingCache(str(tmp_path), "../elsewhere")
    with pytest.raises(ValueError, match="num_buckets"):
        EmbeddingCache(str(tmp_path), "clip-test", num_buckets=100)


def test_killed_writer_leftovers_are_ignored(tmp_path, caplog):
    hashes = hashes_for(3)
    with EmbeddingCache(str(tmp_path), "clip-test") as cache:
        cache.put(hashes, vectors(3))
    folder = tmp_path / "clip-test" / f"bucket={hashes[0][:2]}"
    (folder / ".0123.parquet.99.tmp").write_bytes(b"PAR1 half written")  # temp of a killed writer
    (folder / "00000000000000000000000000000000.parquet").write_bytes(b"")  # zero bytes
    (folder / "11111111111111111111111111111111.parquet").write_bytes(b"garbage, not parquet")
    pq.write_table(pa.table({"other": [1]}), folder / "22222222222222222222222222222222.parquet")

    reader = EmbeddingCache(str(tmp_path), "clip-test")
    with caplog.at_level(logging.WARNING, logger="visdiff.cache.store"):
        found = reader.lookup(hashes)
        reader.lookup(hashes_for(1, start=99) + [hashes[0][:2] + "f" * 30])  # forces a re-list
    assert set(found) == set(hashes)
    warned = [r.getMessage() for r in caplog.records]
    assert len(warned) == 3 and not any(".tmp" in m for m in warned)  # each bad file once
    assert reader.stats()["bad_files"] == 3
    assert reader.put(hashes_for(2, start=200), vectors(2)) == 2  # still writable


def test_many_hashes_across_all_buckets_and_lru_bound(tmp_path):
    hashes, embeddings = hashes_for(3000), vectors(3000, dim=4)
    with EmbeddingCache(str(tmp_path), "clip-test") as writer:
        assert writer.put(hashes, embeddings) == 3000
    buckets = {p.parent.name for p in data_files(tmp_path)}
    assert len(buckets) == 256

    bounded = EmbeddingCache(str(tmp_path), "clip-test", max_cached_buckets=8)
    found = bounded.lookup(hashes)
    assert len(found) == 3000
    assert all(np.array_equal(found[h], embeddings[i]) for i, h in enumerate(hashes))
    assert bounded.stats()["cached_buckets"] == 8

    byte_bounded = EmbeddingCache(str(tmp_path), "clip-test", max_cached_bytes=10_000)
    assert len(byte_bounded.lookup(hashes)) == 3000
    stats = byte_bounded.stats()
    assert stats["cached_bytes"] <= 10_000 or stats["cached_buckets"] == 1


# --- S3 (moto server) -------------------------------------------------------------------------


def test_s3_round_trip_reuse_and_new_files(s3_bucket):
    import boto3

    root = f"s3://{s3_bucket}/cache"
    hashes, embeddings = hashes_for(40), vectors(40, dim=32)
    first = EmbeddingCache(root, "clip-s3")
    assert first.put(hashes[:30], embeddings[:30]) == 30
    first.flush()

    keys = [
        obj["Key"]
        for page in boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=s3_bucket)
        for obj in page.get("Contents", [])
    ]
    assert keys and all(
        re.fullmatch(r"cache/clip-s3/bucket=[0-9a-f]{2}/[0-9a-f]{32}\.parquet", k) for k in keys
    )

    second = EmbeddingCache(root, "clip-s3")  # another actor, another run
    found = second.lookup(hashes)
    assert set(found) == set(hashes[:30])
    assert all(np.array_equal(found[h], embeddings[i]) for i, h in enumerate(hashes[:30]))
    assert second.put(hashes[:30], embeddings[:30]) == 0

    first.put(hashes[30:], embeddings[30:])  # appears between the second actor's lookups
    first.close()
    found = second.lookup(hashes)
    assert len(found) == 40 and np.array_equal(found[hashes[35]], embeddings[35])
    assert second.stats()["rows_written"] == 0

    assert len(EmbeddingCache(root, "clip-s3").lookup(hashes)) == 40


def test_caption_cache_round_trip(tmp_path):
    hashes = hashes_for(4)
    captions = ["a dog on a beach", "", "ünïcödé caption ✓", "two people doing yoga"]
    cache = CaptionCache(str(tmp_path), captioner_model_key(CaptionerConfig()))
    assert cache.put(hashes, captions) == 4
    assert cache.put(hashes, captions) == 0
    cache.flush()
    found = CaptionCache(str(tmp_path), captioner_model_key(CaptionerConfig())).lookup(
        hashes_for(6)
    )
    assert found == dict(zip(hashes, captions, strict=True))
    table = pq.read_table(data_files(tmp_path)[0])
    assert table.schema.field("caption").type == pa.string()
    with pytest.raises(ValueError, match="str"):
        cache.put(hashes_for(1, start=9), [3])


# --- buffered writes --------------------------------------------------------------------------


def wait_until(condition, timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_puts_are_buffered_and_flushed_as_one_file_per_bucket(tmp_path):
    hashes, embeddings = hashes_for(400), vectors(400)
    cache = EmbeddingCache(str(tmp_path), "clip-test")
    for start in range(0, 400, 16):  # 25 batches, as the embed stage puts them
        assert cache.put(hashes[start : start + 16], embeddings[start : start + 16]) == 16
    assert data_files(tmp_path) == []  # under both bounds: nothing written yet
    assert cache.stats()["buffered_rows"] == 400
    found = cache.lookup(hashes)  # this instance sees its buffer
    assert all(np.array_equal(found[h], embeddings[i]) for i, h in enumerate(hashes))
    assert not found[hashes[0]].flags.writeable
    assert EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes) == {}  # others do not

    assert cache.flush() == 400 and cache.flush() == 0
    buckets = {h[:2] for h in hashes}
    files = data_files(tmp_path)
    assert len(files) == len(buckets) == len({p.parent for p in files})  # one file per bucket
    stats = cache.stats()
    assert (stats["rows_written"], stats["files_written"], stats["buffered_rows"]) == (
        400,
        len(buckets),
        0,
    )
    reread = EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes)
    assert all(np.array_equal(reread[h], embeddings[i]) for i, h in enumerate(hashes))
    cache.close()


def test_row_bound_flushes_in_the_background_and_inline_when_behind(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "clip-test", flush_rows=32, flush_after_s=3600)
    cache.put(hashes_for(20), vectors(20))
    assert data_files(tmp_path) == []
    cache.put(hashes_for(20, start=20), vectors(20, seed=1))  # 40 >= 32: the timer writes
    assert wait_until(lambda: cache.stats()["buffered_rows"] == 0)
    assert cache.stats()["rows_written"] == 40
    cache.close()
    # Without a running timer (closed) a full buffer is written by put itself.
    cache.put(hashes_for(70, start=100), vectors(70, seed=2))
    assert cache.stats()["rows_written"] == 110 and cache.stats()["buffered_rows"] == 0


def test_time_bound_flushes_an_idle_store(tmp_path):
    def timers() -> set[threading.Thread]:
        return {t for t in threading.enumerate() if t.name == "visdiff-cache-flush"}

    before = timers()  # other tests' dropped stores may still have theirs for a moment
    cache = EmbeddingCache(str(tmp_path), "clip-test", flush_after_s=0.2)
    cache.put(hashes_for(3), vectors(3))
    assert timers() - before
    assert wait_until(lambda: len(data_files(tmp_path)) > 0)  # no further put, no close
    assert len(EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes_for(3))) == 3
    cache.close()
    assert not timers() - before  # close() stopped it


def test_failed_flush_keeps_rows_for_the_next_one(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "clip-test", flush_after_s=3600)
    cache.put(hashes_for(5), vectors(5))
    blocker = tmp_path / "clip-test"
    blocker.write_text("a file where the cache folder should be")
    with pytest.raises(OSError):
        cache.flush()
    assert cache.stats()["buffered_rows"] == 5 and len(cache.lookup(hashes_for(5))) == 5
    blocker.unlink()
    cache.close()
    assert len(EmbeddingCache(str(tmp_path), "clip-test").lookup(hashes_for(5))) == 5


def test_a_dropped_store_is_not_kept_alive_by_its_timer(tmp_path):
    cache = EmbeddingCache(str(tmp_path), "clip-test", flush_after_s=0.05)
    cache.put(hashes_for(2), vectors(2))
    ref = weakref.ref(cache)
    del cache
    assert wait_until(lambda: ref() is None)
