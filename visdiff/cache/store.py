"""Append-only Parquet store of per-image values (embeddings, captions) keyed by content hash.

Layout: `<root>/<model_key>/bucket=<xx>/<uuid4>.parquet`, `xx` being the first hex chars of the
content hash. Writers only ever create new files under fresh names (a temp name renamed into
place locally; one PUT on object stores), so concurrent writers on many nodes never conflict and
a killed writer leaves at most an ignored temp file. Readers tolerate duplicates (identical by
construction), files that vanish (compaction) and unreadable files (skipped with a warning).

Each instance keeps the buckets it has read in memory, bounded by an LRU on count and bytes, and
re-lists a bucket only when asked for a hash it does not hold, reading just the files it has not
seen: an actor that reuses one instance across batches does not re-read the store each batch.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.io.storage import is_remote, local_path, remote_filesystem

logger = logging.getLogger(__name__)

HASH_COLUMN = "content_hash"
CREATED_COLUMN = "created_at"
BUCKET_PREFIX = "bucket="
_SUFFIX = ".parquet"
_PREFIX_CHARS = {16: 1, 256: 2, 4096: 3}  # num_buckets -> hex chars of the hash naming a bucket
_HEX = re.compile(r"[0-9a-f]+")
_MODEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ROW_OVERHEAD = 120  # rough bytes of Python objects per cached row (dict slot, str, array view)


def _visible(name: str) -> bool:
    """Data files only: temp files of in-flight or killed writers start with '.' or '_'."""
    return name.endswith(_SUFFIX) and not name.startswith((".", "_"))


class _Storage:
    """Listing, reading, atomic writing and deleting of files under one root, local or remote."""

    def __init__(self, root: str) -> None:
        self.remote = is_remote(root)
        if self.remote:
            self.fs, self.base = remote_filesystem(root)
        else:
            self.fs, self.base = None, os.path.abspath(local_path(root))

    def join(self, *parts: str) -> str:
        return "/".join([self.base.rstrip("/"), *parts])

    def list(self, folder: str, *, dirs: bool = False) -> dict[str, int]:
        """{name: size} of the files (or folders) directly in `folder`; {} when it is absent."""
        if not self.remote:
            found: dict[str, int] = {}
            try:
                with os.scandir(folder) as entries:
                    for entry in entries:
                        try:
                            if dirs and entry.is_dir():
                                found[entry.name] = 0
                            elif not dirs and entry.is_file():
                                found[entry.name] = entry.stat().st_size
                        except FileNotFoundError:  # renamed or deleted while listing
                            continue
            except FileNotFoundError:
                return {}
            return found
        from pyarrow import fs as pafs

        selector = pafs.FileSelector(folder, allow_not_found=True, recursive=False)
        wanted = pafs.FileType.Directory if dirs else pafs.FileType.File
        infos = self.fs.get_file_info(selector)
        return {info.base_name: int(info.size or 0) for info in infos if info.type == wanted}

    def read(self, path: str) -> bytes:
        if not self.remote:
            with open(path, "rb") as handle:
                return handle.read()
        with self.fs.open_input_stream(path) as stream:
            return stream.read()

    def write(self, folder: str, name: str, data: bytes) -> None:
        """Create `folder/name` atomically: readers see the whole file or nothing."""
        if self.remote:  # a single PUT (or completed multipart upload) is atomic
            with self.fs.open_output_stream(f"{folder}/{name}") as out:
                out.write(data)
            return
        os.makedirs(folder, exist_ok=True)
        temp = os.path.join(folder, f".{name}.{os.getpid()}.tmp")
        try:
            with open(temp, "wb") as handle:
                handle.write(data)
            os.replace(temp, os.path.join(folder, name))
        except BaseException:
            try:
                os.unlink(temp)
            except OSError:
                pass
            raise

    def delete(self, path: str) -> None:
        try:
            if self.remote:
                self.fs.delete_file(path)
            else:
                os.unlink(path)
        except FileNotFoundError:
            pass


@dataclass
class _Bucket:
    files: set[str] = field(default_factory=set)  # file names already merged, never re-read
    values: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0
    listed_at: float = float("-inf")


@dataclass
class _FileRows:
    name: str
    hashes: list[str]
    values: list[Any]
    nbytes: int


class _ParquetStore:
    """Shared machinery; subclasses define the value column and its conversions."""

    value_column = ""

    def __init__(
        self,
        root: str,
        model_key: str,
        *,
        num_buckets: int = 256,
        max_cached_buckets: int = 256,
        max_cached_bytes: int = 512 * 1024 * 1024,
        relist_after_s: float = 0.0,
        io_threads: int = 16,
    ) -> None:
        """Open (lazily; nothing is read here) the entries of `model_key` under `root`.

        `root` is a local folder or a URI such as `s3://bucket/prefix`. `num_buckets` must match
        every other user of the root. The in-memory index keeps at most `max_cached_buckets`
        buckets and about `max_cached_bytes`, least recently used first out. A bucket is
        re-listed for an unknown hash at most every `relist_after_s` seconds (0: every time; a
        larger value saves object-store LIST calls at the price of missing rows that other
        actors wrote meanwhile, which are then recomputed, never wrong). `io_threads` bounds
        parallel listings, reads and writes.
        """
        if num_buckets not in _PREFIX_CHARS:
            raise ValueError(f"num_buckets={num_buckets}: use one of {sorted(_PREFIX_CHARS)}")
        if not _MODEL_KEY.fullmatch(model_key):
            raise ValueError(
                f"model_key '{model_key}' is not a safe folder name; build it with "
                "visdiff.cache.keys.clip_model_key / captioner_model_key"
            )
        self.root = root
        self.model_key = model_key
        self._prefix_chars = _PREFIX_CHARS[num_buckets]
        self._max_buckets = max(1, max_cached_buckets)
        self._max_bytes = max_cached_bytes
        self._relist_after_s = relist_after_s
        self._io_threads = max(1, io_threads)
        self._storage = _Storage(root)
        self._model_dir = self._storage.join(model_key)
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._cached_bytes = 0
        self._bad_files: set[str] = set()
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._stats = dict.fromkeys(
            ("hits", "misses", "rows_written", "files_written", "files_read", "bytes_read"), 0
        )
        self._stats.update(lists=0, bad_files=0)
        self._stats_lock = threading.Lock()  # I/O threads count too

    # --- hooks for subclasses -------------------------------------------------------------
    def _decode(self, column: pa.ChunkedArray) -> tuple[list[Any], int]:
        """Values of a file's value column, and their approximate in-memory bytes."""
        raise NotImplementedError

    def _prepare(self, values: Any, count: int) -> Any:
        """Validate and normalise the values given to `put` (ValueError on bad input)."""
        raise NotImplementedError

    def _take(self, values: Any, rows: list[int]) -> tuple[pa.Array, list[Any], int]:
        """(Arrow column, per-row cached values, their bytes) for the selected rows."""
        raise NotImplementedError

    def _check_compatible(self, values: list[Any], source: str) -> None:
        """Raise ValueError when `values` cannot live beside the existing entries."""

    # --- public API -----------------------------------------------------------------------
    def lookup(self, hashes: Sequence[str]) -> dict[str, Any]:
        """{hash: value} for the given hashes that are in the store; misses are left out."""
        groups = self._group(hashes)
        with self._lock:
            now = time.monotonic()
            stale = [
                name
                for name, wanted in groups.items()
                if not self._holds(name, wanted)
                and now - self._bucket(name).listed_at >= self._relist_after_s
            ]
            self._refresh(stale)
            found: dict[str, Any] = {}
            for name, wanted in groups.items():
                values = self._bucket(name).values
                found.update((h, values[h]) for h in wanted if h in values)
                self._buckets.move_to_end(name)
            requested = sum(len(wanted) for wanted in groups.values())
            self._count(hits=len(found), misses=requested - len(found))
            self._evict()
        return found

    def put(self, hashes: Sequence[str], values: Any) -> int:
        """Store values for hashes the store lacks, one new file per touched bucket.

        Returns the number of rows written (0 when every hash is already present).
        """
        hashes = list(hashes)
        values = self._prepare(values, len(hashes))
        groups: dict[str, list[int]] = {}
        seen: set[str] = set()
        for row, content_hash in enumerate(hashes):
            name = self._bucket_name(content_hash)
            if content_hash not in seen:
                seen.add(content_hash)
                groups.setdefault(name, []).append(row)
        with self._lock:
            # Buckets never read here may hold rows written by others: read them first so
            # that duplicates are skipped and incompatible values are caught.
            self._refresh([name for name in groups if name not in self._buckets])
            self._check_compatible([values[rows[0]] for rows in groups.values()], "put()")
            writes: list[tuple[str, list[int]]] = []
            for name, rows in groups.items():
                known = self._bucket(name).values
                rows = [row for row in rows if hashes[row] not in known]
                if rows:
                    writes.append((name, rows))
            pending: list[tuple[str, _FileRows]] = []
            uploads: list[tuple[str, str, bytes]] = []
            for name, rows in writes:
                column, cached, nbytes = self._take(values, rows)
                rows_hashes = [hashes[row] for row in rows]
                file_name = f"{uuid.uuid4().hex}{_SUFFIX}"
                uploads.append((self._folder(name), file_name, self._encode(rows_hashes, column)))
                pending.append((name, _FileRows(file_name, rows_hashes, cached, nbytes)))
            self._map(self._storage.write, uploads)
            for name, rows in pending:
                self._merge(name, [rows])
            written = sum(len(rows.hashes) for _, rows in pending)
            self._count(rows_written=written, files_written=len(pending))
            self._evict()
        return written

    def stats(self) -> dict[str, int]:
        """Counters since creation: hits, misses, rows_written, files_written, files_read,
        bytes_read, lists (directory listings), bad_files, cached_buckets, cached_bytes."""
        with self._lock, self._stats_lock:
            return {
                **self._stats,
                "cached_buckets": len(self._buckets),
                "cached_bytes": self._cached_bytes,
            }

    def close(self) -> None:
        """Stop the I/O threads (the store stays usable; they restart on demand)."""
        with self._lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None

    def compact(self, bucket: str | None = None) -> int:
        """Rewrite each bucket's files (or one bucket's) into one file; returns files removed.

        The merged file is written before the old ones are deleted, so readers find every row
        in either state; files being written meanwhile are not touched. Unreadable files are
        left in place for a person to inspect.
        """
        if bucket is None:
            listed = self._storage.list(self._model_dir, dirs=True)
            names = sorted(n[len(BUCKET_PREFIX) :] for n in listed if n.startswith(BUCKET_PREFIX))
        else:
            names = [bucket.removeprefix(BUCKET_PREFIX)]
        removed = 0
        with self._lock:
            for name in names:
                if len(name) != self._prefix_chars or not _HEX.fullmatch(name):
                    raise ValueError(f"bucket '{name}' is not {self._prefix_chars} hex chars")
                removed += self._compact_bucket(name)
            self._evict()
        return removed

    # --- internals ------------------------------------------------------------------------
    def _encode(self, hashes: list[str], column: pa.Array) -> bytes:
        """One data file's bytes: hashes, values and a write timestamp (for humans and GC)."""
        created = pa.array([datetime.now(UTC)] * len(hashes), pa.timestamp("ms", tz="UTC"))
        table = pa.table(
            {
                HASH_COLUMN: pa.array(hashes, pa.string()),
                self.value_column: column,
                CREATED_COLUMN: created,
            }
        )
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink, compression="zstd")
        return sink.getvalue().to_pybytes()

    def _bucket_name(self, content_hash: str) -> str:
        if (
            not isinstance(content_hash, str)
            or len(content_hash) < self._prefix_chars
            or not _HEX.fullmatch(content_hash)
        ):
            raise ValueError(
                f"content hash {content_hash!r} is not a lowercase hex digest; "
                "compute it with visdiff.cache.keys.content_hash"
            )
        return content_hash[: self._prefix_chars]

    def _group(self, hashes: Iterable[str]) -> dict[str, set[str]]:
        groups: dict[str, set[str]] = {}
        for content_hash in hashes:
            groups.setdefault(self._bucket_name(content_hash), set()).add(content_hash)
        return groups

    def _folder(self, name: str) -> str:
        return f"{self._model_dir}/{BUCKET_PREFIX}{name}"

    def _bucket(self, name: str) -> _Bucket:
        bucket = self._buckets.get(name)
        if bucket is None:
            bucket = self._buckets[name] = _Bucket()
        return bucket

    def _holds(self, name: str, wanted: set[str]) -> bool:
        bucket = self._buckets.get(name)
        return bucket is not None and all(h in bucket.values for h in wanted)

    def _map(self, function: Callable[..., Any], items: Sequence[Any]) -> list[Any]:
        """`function(*item)` for each item, in threads when there are several (object-store
        latency dominates)."""
        if len(items) <= 1:
            return [function(*item) for item in items]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self._io_threads, thread_name_prefix="visdiff-cache")
        return list(self._pool.map(lambda item: function(*item), items))

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            for key, amount in amounts.items():
                self._stats[key] += amount

    def _refresh(self, names: Sequence[str]) -> None:
        """List the buckets and merge the files not read before."""
        if not names:
            return
        listings = self._map(self._storage.list, [(self._folder(n),) for n in names])
        self._count(lists=len(names))
        now = time.monotonic()
        reads: list[tuple[str, str]] = []
        for name, listing in zip(names, listings, strict=True):
            bucket = self._bucket(name)
            bucket.listed_at = now
            for file_name in sorted(listing):
                path = f"{self._folder(name)}/{file_name}"
                if (
                    _visible(file_name)
                    and file_name not in bucket.files
                    and path not in self._bad_files
                ):
                    reads.append((name, file_name))
        loaded = self._map(self._read_file, reads)
        by_bucket: dict[str, list[_FileRows]] = {}
        for (name, _), rows in zip(reads, loaded, strict=True):
            if rows is not None:
                by_bucket.setdefault(name, []).append(rows)
        for name, files in by_bucket.items():
            self._merge(name, files)

    def _read_file(self, name: str, file_name: str) -> _FileRows | None:
        """Rows of one data file; None when it vanished or cannot be parsed (then warned)."""
        path = f"{self._folder(name)}/{file_name}"
        try:
            data = self._storage.read(path)
        except FileNotFoundError:  # compacted away after listing: its rows live in a new file
            return None
        self._count(files_read=1, bytes_read=len(data))
        try:
            table = pq.read_table(pa.BufferReader(data), columns=[HASH_COLUMN, self.value_column])
            hashes = table.column(HASH_COLUMN).to_pylist()
            values, nbytes = self._decode(table.column(self.value_column))
            if any(not isinstance(h, str) for h in hashes) or len(hashes) != len(values):
                raise ValueError("null or missing content hashes")
        except Exception as exc:  # any unreadable file (killed writer, foreign file) is skipped
            self._bad_files.add(path)
            self._count(bad_files=1)
            logger.warning(
                "ignoring unreadable cache file %s (%s: %s)", path, type(exc).__name__, exc
            )
            return None
        return _FileRows(file_name, hashes, values, nbytes)

    def _merge(self, name: str, files: Sequence[_FileRows]) -> None:
        bucket = self._bucket(name)
        for rows in files:
            if rows.values:
                self._check_compatible(rows.values[:1], f"{self._folder(name)}/{rows.name}")
            before = len(bucket.values)
            for content_hash, value in zip(rows.hashes, rows.values, strict=True):
                bucket.values.setdefault(content_hash, value)
            new_rows = len(bucket.values) - before
            added = (rows.nbytes // max(1, len(rows.hashes)) + _ROW_OVERHEAD) * new_rows
            bucket.files.add(rows.name)
            bucket.nbytes += added
            self._cached_bytes += added

    def _evict(self) -> None:
        while len(self._buckets) > self._max_buckets or (
            self._cached_bytes > self._max_bytes and len(self._buckets) > 1
        ):
            _, bucket = self._buckets.popitem(last=False)
            self._cached_bytes -= bucket.nbytes

    def _compact_bucket(self, name: str) -> int:
        folder = self._folder(name)
        names = sorted(
            n
            for n in self._storage.list(folder)
            if _visible(n) and f"{folder}/{n}" not in self._bad_files
        )
        if len(names) < 2:
            return 0
        loaded = self._map(self._read_file, [(name, f) for f in names])
        files = [rows for rows in loaded if rows is not None]
        merged: dict[str, Any] = {}
        for rows in files:
            if rows.values:
                self._check_compatible(rows.values[:1], f"{folder}/{rows.name}")
            for content_hash, value in zip(rows.hashes, rows.values, strict=True):
                merged.setdefault(content_hash, value)
        if len(files) < 2 or not merged:
            return 0
        ordered = sorted(merged)
        column, _, _ = self._take(
            self._stack([merged[h] for h in ordered]), list(range(len(ordered)))
        )
        file_name = f"{uuid.uuid4().hex}{_SUFFIX}"
        self._storage.write(folder, file_name, self._encode(ordered, column))
        self._count(files_written=1)
        self._map(self._storage.delete, [(f"{folder}/{rows.name}",) for rows in files])
        # The merged rows equal what was read; remember the new file so it is not re-read.
        self._merge(name, [*files])
        self._bucket(name).files.add(file_name)
        return len(files)

    def _stack(self, values: list[Any]) -> Any:
        """Inverse of per-row cached values: the `put` input form (used by compaction)."""
        return values


class EmbeddingCache(_ParquetStore):
    """float32 embedding vectors per image content hash, for one model key.

    `lookup` returns read-only (D,) float32 arrays; `put` takes an (n, D) array. All entries
    under one model key share D (`dim`, when given, is checked from the start).
    """

    value_column = "embedding"

    def __init__(self, root: str, model_key: str, *, dim: int | None = None, **kwargs: Any):
        super().__init__(root, model_key, **kwargs)
        self.dim = dim

    def _decode(self, column: pa.ChunkedArray) -> tuple[list[Any], int]:
        array = column.combine_chunks()
        if array.null_count:
            raise ValueError("null embeddings")
        if pa.types.is_fixed_size_list(array.type):
            dim = array.type.list_size
        elif pa.types.is_list(array.type) or pa.types.is_large_list(array.type):
            lengths = np.unique(array.value_lengths().to_numpy(zero_copy_only=False))
            if len(lengths) > 1:
                raise ValueError(f"ragged embeddings (lengths {lengths.tolist()})")
            dim = int(lengths[0]) if len(lengths) else 0
        else:
            raise ValueError(f"embedding column has type {array.type}, not a list of floats")
        flat = array.flatten().to_numpy(zero_copy_only=False)
        matrix = np.asarray(flat, dtype=np.float32).reshape(len(array), dim)
        matrix.flags.writeable = False
        return list(matrix), matrix.nbytes

    def _prepare(self, values: Any, count: int) -> np.ndarray:
        matrix = np.asarray(values)
        if matrix.ndim != 2 or matrix.shape[0] != count:
            raise ValueError(
                f"embeddings must have shape ({count}, D) for {count} hashes, got {matrix.shape}"
            )
        if not np.issubdtype(matrix.dtype, np.floating):
            raise ValueError(f"embeddings must be floating point, got dtype {matrix.dtype}")
        matrix = matrix.astype(np.float32, copy=True)  # our copy: callers may reuse their buffer
        if not np.isfinite(matrix).all():
            raise ValueError("embeddings contain NaN or inf; refusing to cache them")
        matrix.flags.writeable = False
        return matrix

    def _check_compatible(self, values: list[Any], source: str) -> None:
        if not values:
            return
        dim = int(np.shape(values[0])[-1])
        if self.dim is None:
            self.dim = dim
        elif dim != self.dim:
            raise ValueError(
                f"embedding dimension {dim} from {source} differs from {self.dim} already in "
                f"cache '{self._model_dir}'; the model key must identify the model (use "
                "clip_model_key), or delete that cache folder if it holds stale entries"
            )

    def _take(self, values: np.ndarray, rows: list[int]) -> tuple[pa.Array, list[Any], int]:
        selected = values[rows]
        column = pa.FixedSizeListArray.from_arrays(
            pa.array(selected.reshape(-1), pa.float32()), selected.shape[1]
        )
        return column, list(selected), selected.nbytes

    def _stack(self, values: list[Any]) -> np.ndarray:
        return np.stack(values) if values else np.zeros((0, self.dim or 0), np.float32)


class CaptionCache(_ParquetStore):
    """Generated captions per image content hash, for one captioner model key."""

    value_column = "caption"

    def _decode(self, column: pa.ChunkedArray) -> tuple[list[Any], int]:
        if not pa.types.is_string(column.type) and not pa.types.is_large_string(column.type):
            raise ValueError(f"caption column has type {column.type}, not string")
        if column.null_count:
            raise ValueError("null captions")
        captions = column.to_pylist()
        return captions, sum(len(c) for c in captions)

    def _prepare(self, values: Any, count: int) -> list[str]:
        captions = list(values)
        if len(captions) != count:
            raise ValueError(f"{len(captions)} captions given for {count} hashes")
        bad = [type(c).__name__ for c in captions if not isinstance(c, str)]
        if bad:
            raise ValueError(f"captions must be str, got {bad[0]}")
        return captions

    def _take(self, values: list[str], rows: list[int]) -> tuple[pa.Array, list[Any], int]:
        selected = [values[row] for row in rows]
        return pa.array(selected, pa.string()), selected, sum(len(c) for c in selected)
