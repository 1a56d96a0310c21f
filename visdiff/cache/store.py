"""Append-only Parquet store of per-image values (embeddings, captions) keyed by content hash.

Layout: `<root>/<model_key>/bucket=<xx>/<uuid4>.parquet`, `xx` being the first hex chars of the
content hash. Writers only ever create new files under fresh names (a temp name renamed into
place locally; one PUT on object stores), so concurrent writers on many nodes never conflict and
a killed writer leaves at most an ignored temp file. Readers tolerate duplicates (identical by
construction), files that vanish (deleted by hand) and unreadable files (skipped, warned).
All byte access goes through `visdiff.io.storage`, local folders and object stores alike.

Each instance keeps the buckets it has read in memory, bounded by an LRU on count and bytes, and
re-lists a bucket only when asked for a hash it does not hold, reading just the files it has not
seen: an actor that reuses one instance across batches does not re-read the store each batch.

Writes are buffered: `put` collects rows (visible to this instance's `lookup` at once) and a flush
writes ONE file per touched bucket when the buffer holds `flush_rows` rows, when its oldest row is
`flush_after_s` old (checked on each put and by a daemon timer, so an idle actor flushes too), and
on `flush()` / `close()`. One file per bucket per batch made thousands of tiny files (one object
store PUT each) per 10^4 images; a killed process loses at most the last `flush_after_s` of rows,
which the next run recomputes. Holders must call `close()` (or `flush()`) before they go away.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import uuid
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from visdiff.io import storage

logger = logging.getLogger(__name__)

HASH_COLUMN = "content_hash"
CREATED_COLUMN = "created_at"
BUCKET_PREFIX = "bucket="
_SUFFIX = ".parquet"
_PREFIX_CHARS = {16: 1, 256: 2, 4096: 3}  # num_buckets -> hex chars of the hash naming a bucket
_HEX = re.compile(r"[0-9a-f]+")
_MODEL_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_ROW_OVERHEAD = 120  # rough bytes of Python objects per cached row (dict slot, str, array view)
FLUSH_ROWS = 4096  # buffered rows that trigger a flush
FLUSH_AFTER_S = 5.0  # age of the oldest buffered row that triggers a flush (the loss window)


def _visible(name: str) -> bool:
    """Data files only: temp files of in-flight or killed writers start with '.' or '_'."""
    return name.endswith(_SUFFIX) and not name.startswith((".", "_"))


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


@dataclass
class _Pending:
    """Rows of one bucket waiting for the next flush (hash -> value in put order)."""

    values: dict[str, Any] = field(default_factory=dict)
    nbytes: int = 0


def _flush_timer(ref: weakref.ref[_ParquetStore], wake: threading.Event) -> None:
    """Daemon loop: flush the store's buffer when its oldest row is due. Holds the store only
    weakly, so a store dropped without `close()` does not live on through its timer."""
    while True:
        store = ref()
        if store is None:
            return
        delay = store._timer_tick()
        del store
        if delay is None:  # closed
            return
        wake.wait(delay)
        wake.clear()


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
        flush_rows: int = FLUSH_ROWS,
        flush_after_s: float = FLUSH_AFTER_S,
    ) -> None:
        """Open (lazily; nothing is read here) the entries of `model_key` under `root`.

        `root` is a local folder or a URI such as `s3://bucket/prefix`. `num_buckets` must match
        every other user of the root. The in-memory index keeps at most `max_cached_buckets`
        buckets and about `max_cached_bytes`, least recently used first out. A bucket is
        re-listed for an unknown hash at most every `relist_after_s` seconds (0: every time; a
        larger value saves object-store LIST calls at the price of missing rows that other
        actors wrote meanwhile, which are then recomputed, never wrong). `io_threads` bounds
        parallel listings, reads and writes. `put` rows are written when `flush_rows` are
        buffered or the oldest is `flush_after_s` old (1 and 0: write on every put).
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
        base = root if storage.is_remote(root) else os.path.abspath(storage.local_path(root))
        self._model_dir = f"{base.rstrip('/')}/{model_key}"
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self._cached_bytes = 0
        self._bad_files: set[str] = set()
        self._lock = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        self._flush_rows = max(1, flush_rows)
        self._flush_after_s = max(0.0, flush_after_s)
        self._pending: dict[str, _Pending] = {}  # bucket -> rows not yet handed to a flush
        self._flushing: dict[str, _Pending] = {}  # rows being written now (still looked up)
        self._pending_rows = 0
        self._pending_since: float | None = None  # monotonic time of the oldest pending row
        self._flush_lock = threading.Lock()  # one flush at a time, outside `_lock` for the I/O
        self._timer: threading.Thread | None = None
        self._wake = threading.Event()
        self._closed = False
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

    def _rows(self, values: Any, rows: list[int]) -> tuple[list[Any], int]:
        """Per-row cached values of the selected rows (cheap: views), and their bytes."""
        raise NotImplementedError

    def _column(self, values: list[Any]) -> pa.Array:
        """The value column of one data file, from per-row values as `_rows` gives them."""
        raise NotImplementedError

    def _check_compatible(self, values: list[Any], source: str) -> None:
        """Raise ValueError when `values` cannot live beside the existing entries."""

    # --- public API -----------------------------------------------------------------------
    def lookup(self, hashes: Sequence[str]) -> dict[str, Any]:
        """{hash: value} for the given hashes that are in the store or in this instance's
        write buffer; misses are left out."""
        groups = self._group(hashes)
        with self._lock:
            requested = sum(len(wanted) for wanted in groups.values())
            found = self._buffered(groups)
            groups = {n: w - found.keys() for n, w in groups.items() if w - found.keys()}
            now = time.monotonic()
            stale = [
                name
                for name, wanted in groups.items()
                if not self._holds(name, wanted)
                and now - self._bucket(name).listed_at >= self._relist_after_s
            ]
            self._refresh(stale)
            for name, wanted in groups.items():
                values = self._bucket(name).values
                found.update((h, values[h]) for h in wanted if h in values)
                self._buckets.move_to_end(name)
            self._count(hits=len(found), misses=requested - len(found))
            self._evict()
        return found

    def put(self, hashes: Sequence[str], values: Any) -> int:
        """Add values for hashes the store lacks to the write buffer (flushed as one new file per
        touched bucket; see the module docstring).

        Returns the number of new rows taken (0 when every hash is already present). A flush
        that this call triggers and that fails raises; its rows stay buffered for the next one.
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
            taken = 0
            buffered = self._buffered(
                {n: {hashes[row] for row in rows} for n, rows in groups.items()}
            )
            for name, rows in groups.items():
                known = self._bucket(name).values
                rows = [
                    row for row in rows if hashes[row] not in known and hashes[row] not in buffered
                ]
                if not rows:
                    continue
                cached, nbytes = self._rows(values, rows)
                pending = self._pending.setdefault(name, _Pending())
                pending.values.update(zip((hashes[row] for row in rows), cached, strict=True))
                pending.nbytes += nbytes
                taken += len(rows)
            if taken:
                if self._pending_since is None:  # the oldest row: (re)arm the timer for it
                    self._pending_since = time.monotonic()
                    self._start_timer()
                self._pending_rows += taken
            self._evict()
            due = self._due()
            # The timer thread writes (the caller goes on computing); the caller writes itself
            # only when the buffer outgrows twice its bound (writes cannot keep up) or has no
            # timer.
            inline = due and (not self._timer_alive() or self._pending_rows >= 2 * self._flush_rows)
        if inline:
            self.flush()
        elif due:
            self._wake.set()
        return taken

    def flush(self) -> int:
        """Write every buffered row now, one file per bucket; returns the rows written.

        Lookups go on meanwhile (the rows in flight stay visible). On failure the rows go back
        to the buffer and the error is raised.
        """
        with self._flush_lock:
            with self._lock:
                if not self._pending:
                    return 0
                batch = self._flushing = self._pending
                self._pending, self._pending_rows, self._pending_since = {}, 0, None
            try:
                written = self._write(batch)
            except BaseException:
                with self._lock:
                    for name, rows in self._pending.items():  # put meanwhile: after the old
                        self._add_pending(batch, name, rows)
                    self._pending, self._flushing = batch, {}
                    self._pending_rows = sum(len(p.values) for p in batch.values())
                    self._pending_since = time.monotonic()
                raise
            with self._lock:
                for name, rows in written:
                    self._merge(name, [rows])
                self._flushing = {}
                rows_written = sum(len(rows.hashes) for _, rows in written)
                self._count(rows_written=rows_written, files_written=len(written))
                self._evict()
        return rows_written

    def stats(self) -> dict[str, int]:
        """Counters since creation: hits, misses, rows_written, files_written, files_read,
        bytes_read, lists (directory listings), bad_files, cached_buckets, cached_bytes,
        buffered_rows (taken by put, not yet written)."""
        with self._lock, self._stats_lock:
            return {
                **self._stats,
                "cached_buckets": len(self._buckets),
                "cached_bytes": self._cached_bytes,
                "buffered_rows": self._pending_rows
                + sum(len(p.values) for p in self._flushing.values()),
            }

    def close(self) -> None:
        """Flush the buffer, then stop the flush timer and the I/O threads (the store stays
        usable; they restart on demand). A failed flush raises once the threads are stopped."""
        try:
            self.flush()
        finally:
            with self._lock:
                self._closed = True
                timer, self._timer = self._timer, None
            self._wake.set()
            if timer is not None and timer is not threading.current_thread():
                timer.join()
            with self._flush_lock, self._lock:  # no listing, read or write is using the pool
                self._closed = False
                with self._pool_lock:
                    pool, self._pool = self._pool, None
                if pool is not None:
                    pool.shutdown(wait=True)

    def __enter__(self) -> _ParquetStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ------------------------------------------------------------------------
    def _buffered(self, groups: dict[str, set[str]]) -> dict[str, Any]:
        """{hash: value} of the wanted hashes that wait in the buffer or are being flushed."""
        found: dict[str, Any] = {}
        for buffer in (self._pending, self._flushing):
            for name, wanted in groups.items():
                rows = buffer.get(name)
                if rows is not None:
                    found.update((h, rows.values[h]) for h in wanted if h in rows.values)
        return found

    @staticmethod
    def _add_pending(into: dict[str, _Pending], name: str, rows: _Pending) -> None:
        target = into.setdefault(name, _Pending())
        target.values.update(rows.values)
        target.nbytes += rows.nbytes

    def _due(self) -> bool:
        """Whether the buffer is full or its oldest row is `flush_after_s` old."""
        if self._pending_since is None:
            return False
        return (
            self._pending_rows >= self._flush_rows
            or time.monotonic() - self._pending_since >= self._flush_after_s
        )

    def _timer_alive(self) -> bool:
        return self._timer is not None and self._timer.is_alive()

    def _start_timer(self) -> None:
        """Start the daemon flush timer on the first buffered row (an idle store has none, and
        a store that flushes on every put needs none)."""
        if self._flush_after_s <= 0 or self._flush_rows <= 1:
            return
        if self._timer_alive():
            self._wake.set()  # re-arm it for the new oldest row
            return
        self._timer = threading.Thread(
            target=_flush_timer,
            args=(weakref.ref(self), self._wake),
            name="visdiff-cache-flush",
            daemon=True,
        )
        self._timer.start()

    def _timer_tick(self) -> float | None:
        """One timer step: flush when due; seconds until the next check (None: stop)."""
        with self._lock:
            if self._closed:
                return None
            due = self._due()
        if due:
            try:
                self.flush()
            except Exception as exc:  # kept buffered; the next tick, put or close retries
                logger.warning(
                    "cache flush to %s failed; %d rows stay buffered for a retry (%s: %s)",
                    self._model_dir,
                    self._pending_rows,
                    type(exc).__name__,
                    exc,
                )
                return max(self._flush_after_s, 1.0)
        with self._lock:
            if self._pending_since is None:
                return max(self._flush_after_s, 1.0)
            return max(self._pending_since + self._flush_after_s - time.monotonic(), 0.01)

    def _write(self, batch: dict[str, _Pending]) -> list[tuple[str, _FileRows]]:
        """One new data file per bucket of `batch`, encoded and written in the I/O threads."""
        files = [(name, f"{uuid.uuid4().hex}{_SUFFIX}", rows) for name, rows in batch.items()]

        def write_one(name: str, file_name: str, rows: _Pending) -> None:
            data = self._encode(list(rows.values), self._column(list(rows.values.values())))
            storage.write_bytes(f"{self._folder(name)}/{file_name}", data)

        self._map(write_one, files)
        return [
            (name, _FileRows(file_name, list(rows.values), list(rows.values.values()), rows.nbytes))
            for name, file_name, rows in files
        ]

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
        with self._pool_lock:  # the flush timer and the caller's thread both get here
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self._io_threads, thread_name_prefix="visdiff-cache"
                )
            pool = self._pool
        return list(pool.map(lambda item: function(*item), items))

    def _count(self, **amounts: int) -> None:
        with self._stats_lock:
            for key, amount in amounts.items():
                self._stats[key] += amount

    @staticmethod
    def _list(folder: str) -> list[str]:
        """Names of the files directly in a bucket folder; [] before its first write."""
        paths = storage.list_files(folder, recursive=False, missing_ok=True)
        return [path.rsplit("/", 1)[-1] for path in paths]

    def _refresh(self, names: Sequence[str]) -> None:
        """List the buckets and merge the files not read before."""
        if not names:
            return
        listings = self._map(self._list, [(self._folder(n),) for n in names])
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
            data = storage.read_bytes(path)
        except FileNotFoundError:  # deleted after listing (a person cleaning the cache)
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

    def _rows(self, values: np.ndarray, rows: list[int]) -> tuple[list[Any], int]:
        # Read-only views of `_prepare`'s copy: buffering a row copies nothing.
        return [values[row] for row in rows], len(rows) * values.shape[1] * values.itemsize

    def _column(self, values: list[Any]) -> pa.Array:
        matrix = np.stack(values)
        return pa.FixedSizeListArray.from_arrays(
            pa.array(matrix.reshape(-1), pa.float32()), matrix.shape[1]
        )


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

    def _rows(self, values: list[str], rows: list[int]) -> tuple[list[Any], int]:
        selected = [values[row] for row in rows]
        return selected, sum(len(c) for c in selected)

    def _column(self, values: list[Any]) -> pa.Array:
        return pa.array(values, pa.string())
