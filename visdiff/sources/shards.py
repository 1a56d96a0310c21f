"""Web-scale inputs: WebDataset tar shards and Parquet shards, local or on S3.

With millions of images the driver must never list images, only shards: `resolve_shards` turns a
glob, a brace pattern or a list into shard URIs on the driver (one LIST per glob, one HEAD per
named shard), and the per-shard readers below run on Ray workers, streaming each shard so it is
never fully in memory. No Ray in this module: the pipeline maps `shard_rows_batch` (or
`shard_row_chunks`) over a dataset of shard rows.

Every image becomes one row with the columns of `ROW_COLUMNS`. Nothing a shard contains may
fail the run: a truncated tar, an unreadable object or a sample without an image becomes a row
with an `error` ("<reason>: <detail>"), so every loss is counted in the report instead of lost.
"""

from __future__ import annotations

import os
import posixpath
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from visdiff.errors import InputError
from visdiff.io import storage
from visdiff.schema import CAPTION, ERROR, ID, IMAGE_BYTES, SET, URI
from visdiff.sources.braces import expand_braces, has_braces
from visdiff.sources.records import one_line

if TYPE_CHECKING:
    import numpy as np
    import pyarrow as pa

ROW_COLUMNS = (ID, SET, URI, CAPTION, IMAGE_BYTES, ERROR)

WEBDATASET = "webdataset"
PARQUET = "parquet"
FORMAT_SUFFIXES = {".tar": WEBDATASET, ".tar.gz": WEBDATASET, ".tgz": WEBDATASET}
FORMAT_SUFFIXES[".parquet"] = PARQUET

# WebDataset sample members holding the image, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"

# Parquet column names tried in order when a column is "auto".
IMAGE_COLUMNS = ("image", "jpg", "png", "image_bytes", "bytes")
CAPTION_COLUMNS = ("caption", "txt", "text", "TEXT")
KEY_COLUMNS = ("key", "id", "__key__")
AUTO = "auto"

SHARD_ERROR_KEY = "__shard_error__"  # key of the row that stands for a whole-shard failure
STREAM_BUFFER_BYTES = 8 * 1024 * 1024  # one S3 GET per 8 MiB instead of per tar block
PARQUET_BATCH_ROWS = 256  # rows per record batch: images are large, keep batches small
EXISTS_THREADS = 32  # parallel HEAD requests when checking named shards
GLOB_CHARS = "*?["
MAX_LISTED = 5  # names quoted in an error message


# ---------------------------------------------------------------- resolving shard specs (driver)


def _spec_text(spec: str | list[str]) -> str:
    if isinstance(spec, str):
        return spec
    shown = ", ".join(spec[:3]) + (f", ... ({len(spec)} in all)" if len(spec) > 3 else "")
    return f"[{shown}]"


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in GLOB_CHARS)


def _normalise(uri: str) -> str:
    """Remote URIs as given; local paths absolute (Ray workers may run elsewhere)."""
    if storage.is_remote(uri):
        return uri
    return os.path.abspath(storage.local_path(uri))


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """fnmatch-style matching where `*`, `?` stay inside one folder and `**` crosses folders."""
    out: list[str] = []
    index, size = 0, len(pattern)
    while index < size:
        char = pattern[index]
        if pattern.startswith("**", index):
            index += 2
            if pattern.startswith("/", index):  # "**/" also matches no folder at all
                out.append("(?:.*/)?")
                index += 1
            else:
                out.append(".*")
            continue
        if char == "*":
            out.append("[^/]*")
        elif char == "?":
            out.append("[^/]")
        elif char == "[":
            end = index + 1
            if end < size and pattern[end] in "!^":
                end += 1
            if end < size and pattern[end] == "]":
                end += 1
            close = pattern.find("]", end)
            if close == -1:
                out.append(re.escape(char))
            else:
                body = pattern[index + 1 : close].replace("\\", "\\\\")
                if body[:1] in ("!", "^"):
                    body = "^/" + body[1:]
                out.append(f"[{body}]")
                index = close
        else:
            out.append(re.escape(char))
        index += 1
    return re.compile("".join(out) + r"\Z")


def _glob(pattern: str, spec_text: str) -> list[str]:
    """Files matching a glob: one listing of the folder before the first glob character."""
    first = min(pattern.index(c) for c in GLOB_CHARS if c in pattern)
    cut = pattern.rfind("/", 0, first) + 1
    prefix, rest = pattern[:cut], pattern[cut:]
    if storage.is_remote(pattern) and prefix.count("/") < 3:  # "s3://bucket*/..."
        raise InputError(
            f"shard spec '{spec_text}': glob '{pattern}' has a wildcard in the bucket name; "
            "name the bucket literally"
        )
    recursive = "/" in rest or "**" in rest
    if storage.is_remote(pattern):
        root = prefix.rstrip("/")
    else:
        root = os.path.abspath(storage.local_path(prefix) or ".")
    try:
        paths = storage.list_files(root, recursive=recursive)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"shard spec '{spec_text}': folder '{prefix or '.'}' of glob '{pattern}' cannot be "
            f"listed ({one_line(exc)}); check the bucket and prefix"
        ) from None
    matcher = _glob_regex(rest)
    base = root.rstrip("/") + "/"
    if not storage.is_remote(pattern):
        base = root.rstrip(os.sep) + os.sep
    found = []
    for path in paths:
        relative = path[len(base) :].replace(os.sep, "/")
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if not hidden and matcher.match(relative):
            found.append(path)
    return found


def _file_problem(uri: str) -> str | None:
    """None for an existing file, else why not (one HEAD request for remote URIs)."""
    try:
        return None if storage.is_file(uri) else "not found"
    except (OSError, ValueError) as exc:
        return one_line(exc)


def _check_named(uris: list[str], spec_text: str) -> None:
    if not uris:
        return
    with ThreadPoolExecutor(max_workers=min(EXISTS_THREADS, len(uris))) as pool:
        problems = list(pool.map(_file_problem, uris))
    bad = [(uri, problem) for uri, problem in zip(uris, problems, strict=True) if problem]
    if bad:
        shown = "; ".join(f"'{uri}' ({problem})" for uri, problem in bad[:MAX_LISTED])
        more = f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        raise InputError(
            f"shard spec '{spec_text}': {len(bad)} of {len(uris)} shard(s) cannot be used: "
            f"{shown}{more}; fix the names (brace ranges include both ends) or upload the shards"
        )


def shard_format(uri: str) -> str:
    """ "webdataset" for .tar/.tar.gz/.tgz, "parquet" for .parquet; InputError otherwise."""
    lowered = uri.lower()
    for suffix in sorted(FORMAT_SUFFIXES, key=len, reverse=True):
        if lowered.endswith(suffix):
            return FORMAT_SUFFIXES[suffix]
    raise InputError(
        f"shard '{uri}' has an unsupported format; shards must be WebDataset tars "
        "(.tar, .tar.gz, .tgz) or Parquet files (.parquet)"
    )


def shard_name(uri: str) -> str:
    """The shard's file name ("00042.tar"): the middle part of every row id."""
    if storage.is_remote(uri):
        return posixpath.basename(uri.rstrip("/"))
    return os.path.basename(storage.local_path(uri))


def _check_formats(uris: list[str], spec_text: str) -> None:
    bad = [uri for uri in uris if not any(uri.lower().endswith(s) for s in FORMAT_SUFFIXES)]
    if bad:
        shown = ", ".join(f"'{uri}'" for uri in bad[:MAX_LISTED])
        raise InputError(
            f"shard spec '{spec_text}' includes {len(bad)} file(s) that are not shards: {shown}; "
            "shards must end in .tar, .tar.gz, .tgz or .parquet (narrow the glob, e.g. '*.tar')"
        )


def _check_unique_names(uris: list[str], spec_text: str) -> None:
    """Row ids are "<set>/<shard file name>/<key>": two shards with one name would collide."""
    seen: dict[str, str] = {}
    for uri in uris:
        name = shard_name(uri)
        if name in seen:
            raise InputError(
                f"shard spec '{spec_text}': shards '{seen[name]}' and '{uri}' share the file "
                f"name '{name}', so their image ids would collide; give one set one folder of "
                "uniquely named shards"
            )
        seen[name] = uri


def resolve_shards(spec: str | list[str]) -> list[str]:
    """Shard URIs (sorted, unique) for a URI, a list, a brace pattern or a glob.

    Only shards are listed, never images. Globs list the folder before their first wildcard;
    explicitly named shards (and brace expansions) are checked to exist, in parallel.
    Raises InputError naming the spec when nothing matches or a named shard is missing.
    """
    items = [spec] if isinstance(spec, str) else list(spec)
    spec_text = _spec_text(spec)
    if not items:
        raise InputError("shard spec is an empty list; give at least one shard URI or pattern")
    named: list[str] = []
    matched: list[str] = []
    for item in items:
        item = str(item).strip()
        if not item:
            raise InputError(f"shard spec '{spec_text}' contains an empty name")
        for pattern in expand_braces(item) if has_braces(item) else [item]:
            if not _is_glob(pattern):
                named.append(_normalise(pattern))
                continue
            found = _glob(pattern, spec_text)
            if not found:
                raise InputError(
                    f"shard spec '{spec_text}': glob '{pattern}' matched no files; check the "
                    "prefix and extension"
                )
            matched.extend(_normalise(uri) for uri in found)
    named = sorted(set(named))
    _check_named(named, spec_text)
    shards = sorted(set(named) | set(matched))
    _check_formats(shards, spec_text)
    _check_unique_names(shards, spec_text)
    return shards


# ---------------------------------------------------------------- reading shards (workers)


def _row(
    set_name: str, shard: str, key: str, uri: str, caption: str, image: bytes, error: str
) -> dict[str, Any]:
    return {
        ID: f"{set_name}/{shard}/{key}",
        SET: set_name,
        URI: uri,
        CAPTION: caption,
        IMAGE_BYTES: image,
        ERROR: error,
    }


def _shard_error(uri: str, set_name: str, error: str) -> dict[str, Any]:
    return _row(set_name, shard_name(uri), SHARD_ERROR_KEY, uri, "", b"", error)


def _remote_filesystem(uri: str) -> tuple[Any, str]:
    # The filesystem layer caches one S3 client per bucket; reuse it rather than a second cache.
    return storage.remote_filesystem(uri)


def _open_stream(uri: str) -> BinaryIO:
    """A sequential, buffered byte stream (local file or remote object)."""
    if not storage.is_remote(uri):
        return open(storage.local_path(uri), "rb")  # the caller closes it
    remote, path = _remote_filesystem(uri)
    # compression=None: tarfile handles .tar.gz itself; pyarrow would guess from the name.
    return remote.open_input_stream(path, compression=None, buffer_size=STREAM_BUFFER_BYTES)


def _caption_text(data: bytes | None) -> str:
    return data.decode("utf-8", errors="replace").strip() if data else ""


def _member_key(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member: WebDataset splits at the basename's first dot."""
    while name.startswith("./"):
        name = name[2:]
    folder, base = posixpath.split(name)
    if base.startswith(".") or "." not in base:  # hidden files, names without extension
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(folder, stem), extension.lower()


def _tracking_tarinfo() -> tuple[type[tarfile.TarInfo], list[Exception]]:
    """A TarInfo class recording header errors: tarfile ends silently on a cut archive."""
    errors: list[Exception] = []

    class TrackingTarInfo(tarfile.TarInfo):
        @classmethod
        def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
            try:
                return super().fromtarfile(tar)
            except tarfile.HeaderError as exc:
                errors.append(exc)
                raise

    return TrackingTarInfo, errors


def _end_problem(errors: list[Exception]) -> str | None:
    """Why the member loop ended, if not at the end-of-archive marker."""
    if not errors or isinstance(errors[-1], tarfile.EOFHeaderError):
        return None
    last = errors[-1]
    if isinstance(last, tarfile.EmptyHeaderError):
        return "archive ends without its end-of-archive marker"
    if isinstance(last, tarfile.TruncatedHeaderError):
        return "archive is cut inside a member header"
    return f"invalid member header ({one_line(last)})"


def _tar_samples(
    tar: tarfile.TarFile, header_errors: list[Exception]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; members of one sample are consecutive.

    Only image and caption members are read; others are recorded with empty bytes so a sample
    holding only metadata is still reported (as no_image). When the archive is cut, the last
    sample may be missing members, so it is dropped (the caller reports the cut).
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    for info in tar:
        if not info.isfile():
            continue
        parsed = _member_key(info.name)
        if parsed is None:
            continue
        member_key, extension = parsed
        if member_key != key:
            if key is not None:
                yield key, members
            key, members = member_key, {}
        if extension in IMAGE_EXTENSIONS or extension == CAPTION_EXTENSION:
            handle = tar.extractfile(info)
            members[extension] = handle.read() if handle is not None else b""
        else:
            members.setdefault(extension, b"")
    if key is not None and _end_problem(header_errors) is None:
        yield key, members


def _sample_row(
    uri: str, set_name: str, shard: str, key: str, members: dict[str, bytes]
) -> dict[str, Any]:
    caption = _caption_text(members.get(CAPTION_EXTENSION))
    for extension in IMAGE_EXTENSIONS:
        if extension in members:
            image = members[extension]
            return _row(set_name, shard, key, f"{uri}#{key}.{extension}", caption, image, "")
    return _row(set_name, shard, key, f"{uri}#{key}", caption, b"", f"no_image: {key}")


def iter_webdataset_shard(uri: str, *, set_name: str) -> Iterator[dict[str, Any]]:
    """Stream one WebDataset tar (img2dataset layout: key.jpg + key.txt + key.json ...).

    One row per sample; never raises for bad data: a cut or corrupt archive yields the samples
    read so far plus one "truncated_tar" row, an unreadable shard one "read_error" row.
    """
    shard = shard_name(uri)
    tarinfo_class, header_errors = _tracking_tarinfo()
    produced = 0
    opened = False
    try:
        with _open_stream(uri) as stream:
            with tarfile.open(fileobj=stream, mode="r|*", tarinfo=tarinfo_class) as tar:
                opened = True
                for key, members in _tar_samples(tar, header_errors):
                    yield _sample_row(uri, set_name, shard, key, members)
                    produced += 1
                problem = _end_problem(header_errors)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if not opened:
            yield _shard_error(uri, set_name, f"read_error: {uri}: not a tar ({one_line(exc)})")
            return
        problem = one_line(exc)
    except (OSError, ValueError) as exc:  # I/O failures, pyarrow's ArrowInvalid
        after = f" after {produced} sample(s)" if opened else ""
        yield _shard_error(uri, set_name, f"read_error: {uri}: {one_line(exc)}{after}")
        return
    if problem is not None:
        yield _shard_error(uri, set_name, f"truncated_tar: {problem} after {produced} sample(s)")
    elif produced == 0:
        yield _shard_error(uri, set_name, "empty_shard: the archive holds no samples")


@dataclass(frozen=True)
class ParquetColumns:
    """Which Parquet columns hold the image bytes, caption and key (None: absent)."""

    image: str
    image_is_struct: bool  # HF datasets' Image feature: struct<bytes: binary, path: string>
    caption: str | None
    key: str | None


def _is_binary(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    return pa.types.is_binary(data_type) or pa.types.is_large_binary(data_type)


def _struct_bytes(data_type: pa.DataType) -> bool:
    import pyarrow as pa

    if not pa.types.is_struct(data_type):
        return False
    index = data_type.get_field_index("bytes")
    return index >= 0 and _is_binary(data_type.field(index).type)


def _pick(
    schema: pa.Schema, wanted: str | None, candidates: tuple[str, ...], role: str, uri: str
) -> str | None:
    if wanted is None:
        return None
    if wanted != AUTO:
        if wanted not in schema.names:
            raise InputError(
                f"Parquet shard '{uri}' has no {role} column '{wanted}' "
                f"(columns: {', '.join(schema.names)})"
            )
        return wanted
    return next((name for name in candidates if name in schema.names), None)


def parquet_columns(
    schema: pa.Schema,
    uri: str,
    *,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> ParquetColumns:
    """Resolve the columns to read; InputError naming the shard when no image column fits."""
    binary = {n for n in schema.names if _is_binary(schema.field(n).type)}
    structs = [n for n in schema.names if _struct_bytes(schema.field(n).type)]
    if image_column != AUTO:
        if image_column not in schema.names:
            raise InputError(
                f"Parquet shard '{uri}' has no image column '{image_column}' "
                f"(columns: {', '.join(schema.names)})"
            )
        if image_column not in binary and image_column not in structs:
            raise InputError(
                f"Parquet shard '{uri}': column '{image_column}' has type "
                f"{schema.field(image_column).type}, not image bytes (binary, or a struct with "
                "a binary 'bytes' field as Hugging Face datasets write images)"
            )
        image = image_column
    else:
        named = [n for n in IMAGE_COLUMNS if n in binary or n in structs]
        image = (named or structs or [""])[0]
        if not image:
            raise InputError(
                f"Parquet shard '{uri}' has no image bytes column (tried "
                f"{', '.join(IMAGE_COLUMNS)} and struct columns with a 'bytes' field; columns: "
                f"{', '.join(schema.names)}); pass image_column. img2dataset's per-shard "
                ".parquet files hold metadata only: read the .tar shards instead"
            )
    return ParquetColumns(
        image=image,
        image_is_struct=_struct_bytes(schema.field(image).type),
        caption=_pick(schema, caption_column, CAPTION_COLUMNS, "caption", uri),
        key=_pick(schema, key_column, KEY_COLUMNS, "key", uri),
    )


def _open_parquet(uri: str) -> Any:
    import pyarrow.parquet as pq

    if not storage.is_remote(uri):
        return pq.ParquetFile(storage.local_path(uri))
    remote, path = _remote_filesystem(uri)
    return pq.ParquetFile(remote.open_input_file(path))


def check_parquet_shard(uri: str, **columns: str | None) -> ParquetColumns:
    """Driver-side check of one shard's schema (reads the footer only): fail before the run."""
    try:
        parquet = _open_parquet(uri)
    except (OSError, ValueError) as exc:
        raise InputError(f"Parquet shard '{uri}' cannot be read: {one_line(exc)}") from None
    return parquet_columns(parquet.schema_arrow, uri, **columns)


def _image_values(column: pa.Array, is_struct: bool) -> list[bytes | None]:
    if is_struct:
        # flatten() merges the struct's own nulls into the child, unlike field().
        column = column.flatten()[column.type.get_field_index("bytes")]
    return column.to_pylist()


def iter_parquet_shard(
    uri: str,
    *,
    set_name: str,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> Iterator[dict[str, Any]]:
    """Stream one Parquet shard in small record batches, reading only the needed columns.

    Columns are auto-detected (see IMAGE_COLUMNS, CAPTION_COLUMNS, KEY_COLUMNS; the row index is
    the key when no key column exists). Bad data never raises: null images give "no_image"
    rows, an unreadable file or schema a "read_error" / "bad_schema" row.
    """
    shard = shard_name(uri)
    try:
        parquet = _open_parquet(uri)
        columns = parquet_columns(
            parquet.schema_arrow,
            uri,
            image_column=image_column,
            caption_column=caption_column,
            key_column=key_column,
        )
    except InputError as exc:
        yield _shard_error(uri, set_name, f"bad_schema: {one_line(exc)}")
        return
    except (OSError, ValueError) as exc:
        yield _shard_error(uri, set_name, f"read_error: {uri}: {one_line(exc)}")
        return
    wanted = list(dict.fromkeys(c for c in (columns.image, columns.caption, columns.key) if c))
    index = 0
    try:
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, columns=wanted):
            size = batch.num_rows
            images = _image_values(batch.column(columns.image), columns.image_is_struct)
            captions = batch.column(columns.caption).to_pylist() if columns.caption else None
            keys = batch.column(columns.key).to_pylist() if columns.key else None
            for offset in range(size):
                raw_key = keys[offset] if keys is not None else None
                key = str(index + offset) if raw_key is None or raw_key == "" else str(raw_key)
                caption = captions[offset] if captions is not None else None
                caption = "" if caption is None else str(caption).strip()
                image = images[offset]
                error = "" if image else f"no_image: {key}"
                yield _row(set_name, shard, key, f"{uri}#{key}", caption, image or b"", error)
            index += size
    except (OSError, ValueError) as exc:
        yield _shard_error(uri, set_name, f"read_error: {uri}: {one_line(exc)} after {index} rows")
        return
    if index == 0:
        yield _shard_error(uri, set_name, "empty_shard: the file holds no rows")


def iter_shard_rows(
    uri: str,
    *,
    set_name: str,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> Iterator[dict[str, Any]]:
    """Rows of one shard of either format (the Parquet column options apply to Parquet only)."""
    if shard_format(uri) == WEBDATASET:
        return iter_webdataset_shard(uri, set_name=set_name)
    return iter_parquet_shard(
        uri,
        set_name=set_name,
        image_column=image_column,
        caption_column=caption_column,
        key_column=key_column,
    )


def _shard_uris(batch: dict[str, np.ndarray]) -> list[str]:
    if "shard" not in batch:
        raise InputError(f"shard batch needs a 'shard' column; got {', '.join(batch)}")
    return [str(uri) for uri in batch["shard"]]


def _columns(rows: Iterable[dict[str, Any]]) -> dict[str, list]:
    out: dict[str, list] = {name: [] for name in ROW_COLUMNS}
    for row in rows:
        for name in ROW_COLUMNS:
            out[name].append(row[name])
    return out


def _batch_rows(batch: dict[str, np.ndarray], options: dict[str, Any]) -> Iterator[dict]:
    for uri in _shard_uris(batch):
        yield from iter_shard_rows(uri, **options)


def shard_rows_batch(
    batch: dict[str, np.ndarray],
    *,
    set_name: str,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> dict[str, list]:
    """Ray Data `map_batches` function: a batch of shard URIs in, all their rows out as columns.

    Holds a whole shard's rows in memory; `shard_row_chunks` bounds that for large shards.
    """
    options = {
        "set_name": set_name,
        "image_column": image_column,
        "caption_column": caption_column,
        "key_column": key_column,
    }
    return _columns(_batch_rows(batch, options))


def shard_row_chunks(
    batch: dict[str, np.ndarray],
    *,
    set_name: str,
    rows_per_chunk: int = 512,
    image_column: str = AUTO,
    caption_column: str | None = AUTO,
    key_column: str | None = AUTO,
) -> Iterator[dict[str, list]]:
    """Like `shard_rows_batch` but yields column chunks of at most `rows_per_chunk` rows.

    Ray Data accepts generator functions in `map_batches`: each chunk becomes its own block, so
    a 10,000-image shard never sits in one worker's memory at once.
    """
    options = {
        "set_name": set_name,
        "image_column": image_column,
        "caption_column": caption_column,
        "key_column": key_column,
    }
    chunk: list[dict[str, Any]] = []
    for row in _batch_rows(batch, options):
        chunk.append(row)
        if len(chunk) >= rows_per_chunk:
            yield _columns(chunk)
            chunk = []
    if chunk:
        yield _columns(chunk)
