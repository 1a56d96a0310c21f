"""Byte access for local paths and object-store URIs behind one small API: the one storage layer
of sources, the per-image cache and run folders.

Local paths use the OS directly (fast, relative paths work); anything with a scheme goes through
`pyarrow.fs`. Filesystem objects are cached per (scheme, bucket) because creating an S3 client
is slow and every Ray worker reads many objects from the same bucket.
"""

from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from pyarrow import NativeFile
    from pyarrow.fs import FileSystem

_cache: dict[tuple[str, str], FileSystem] | None = None  # created on first remote access
_cache_lock = threading.Lock()


def is_remote(uri: str) -> bool:
    """True for URIs with a scheme other than file:// (s3://bucket/key, gs://..., ...)."""
    scheme = urlsplit(uri).scheme
    # One-letter "schemes" are Windows drive letters, not URIs.
    return len(scheme) > 1 and scheme != "file"


def local_path(uri: str) -> str:
    """The OS path of a local URI (strips file://)."""
    if uri.startswith("file://"):
        return urlsplit(uri).path
    return uri


def _s3_filesystem(bucket: str) -> FileSystem:
    """S3 client configured from the standard AWS environment.

    pyarrow does not read AWS_ENDPOINT_URL(_S3) itself, so the endpoint (MinIO, moto, ...) is
    passed explicitly; credentials come from the AWS SDK's default chain.
    """
    from pyarrow import fs as pafs

    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, object] = {}
    if endpoint:
        parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
        kwargs["endpoint_override"] = parts.netloc + parts.path.rstrip("/")
        kwargs["scheme"] = parts.scheme or "https"
        kwargs["region"] = region or "us-east-1"
    elif region:
        kwargs["region"] = region
    else:
        try:  # the bucket's own region avoids redirects on real AWS
            kwargs["region"] = pafs.resolve_s3_region(bucket)
        except OSError:
            pass
    return pafs.S3FileSystem(**kwargs)


_BUCKET_SCHEMES = ("s3", "s3a", "gs", "gcs")  # paths inside these filesystems are "bucket/key"


def _remote(uri: str) -> tuple[FileSystem, str]:
    """(filesystem, path inside it) for a remote URI, reusing cached filesystems."""
    global _cache
    from pyarrow import fs as pafs

    parts = urlsplit(uri)
    scheme, bucket = parts.scheme, parts.netloc
    if scheme not in _BUCKET_SCHEMES:  # hdfs://, ...: let pyarrow parse host and path each time
        return pafs.FileSystem.from_uri(uri)
    key = (scheme, bucket)
    with _cache_lock:
        if _cache is None:
            _cache = {}
        filesystem = _cache.get(key)
        if filesystem is None:
            if scheme in ("s3", "s3a"):
                filesystem = _s3_filesystem(bucket)
            else:
                filesystem, _ = pafs.FileSystem.from_uri(uri)
            _cache[key] = filesystem
    return filesystem, f"{bucket}{parts.path}".rstrip("/")


def _join_uri(uri: str, path: str) -> str:
    """Rebuild a URI of the same scheme for a path returned by the filesystem."""
    parts = urlsplit(uri)
    if parts.scheme in _BUCKET_SCHEMES:
        return f"{parts.scheme}://{path}"
    return f"{parts.scheme}://{parts.netloc}/{path.lstrip('/')}"


def read_bytes(uri: str) -> bytes:
    """All bytes of a file; raises OSError (FileNotFoundError, ...) when it cannot be read."""
    if not is_remote(uri):
        with open(local_path(uri), "rb") as handle:
            return handle.read()
    filesystem, path = _remote(uri)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


def exists(uri: str) -> bool:
    if not is_remote(uri):
        return os.path.exists(local_path(uri))
    from pyarrow import fs as pafs

    filesystem, path = _remote(uri)
    return filesystem.get_file_info(path).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    if not is_remote(uri):
        return os.path.isdir(local_path(uri))
    from pyarrow import fs as pafs

    filesystem, path = _remote(uri)
    return filesystem.get_file_info(path).type == pafs.FileType.Directory


def is_file(uri: str) -> bool:
    """True for an existing regular file (one stat locally)."""
    if not is_remote(uri):
        try:
            return stat.S_ISREG(os.stat(local_path(uri)).st_mode)
        except (OSError, ValueError):
            return False
    from pyarrow import fs as pafs

    filesystem, path = _remote(uri)
    return filesystem.get_file_info(path).type == pafs.FileType.File


@dataclass
class FileListing:
    """A folder's regular files, and every other entry met with why it is not one: a listing
    that drops nothing unaccounted (broken links, loops, sockets, ... are reported, not lost)."""

    files: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason code)


# Reason codes of entries that are not readable regular files.
BROKEN_LINK = "broken_link"
LINK_LOOP = "link_loop"
LINKED_FOLDER = "linked_folder"  # not followed: it may loop or leave the folder
NOT_A_FILE = "not_a_file"  # fifo, socket, device, or an object store's unknown type
UNREADABLE = "unreadable"


def _link_target_kind(path: str) -> str | None:
    """None for a symlink to a readable file, else the reason code for skipping it."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return BROKEN_LINK
    except OSError as exc:
        return LINK_LOOP if exc.errno == errno.ELOOP else UNREADABLE
    if stat.S_ISDIR(mode):
        return LINKED_FOLDER
    if not stat.S_ISREG(mode):
        return NOT_A_FILE
    return None if os.access(path, os.R_OK) else UNREADABLE


def _entry_problem(entry: os.DirEntry[str]) -> str | None:
    """None for a readable regular file (or a symlink to one), else why it is skipped."""
    if entry.is_symlink():
        return _link_target_kind(entry.path)
    if not entry.is_file(follow_symlinks=False):
        return NOT_A_FILE
    return None if os.access(entry.path, os.R_OK) else UNREADABLE


def _scan_local(root: str, recursive: bool, listing: FileListing) -> None:
    """Walk `root` (raises for the root itself); a sub-folder that cannot be opened is one
    `unreadable` entry."""
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            with os.scandir(folder) as scan:
                entries = list(scan)
        except OSError:
            if folder == root:
                raise
            listing.skipped.append((folder, UNREADABLE))
            continue
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    pending.append(entry.path)
                continue
            problem = _entry_problem(entry)
            if problem is None:
                listing.files.append(entry.path)
            elif recursive or problem != LINKED_FOLDER:  # flat listings skip folders silently
                listing.skipped.append((entry.path, problem))


def scan_files(uri: str, *, recursive: bool = True, missing_ok: bool = False) -> FileListing:
    """The regular files under a folder (sorted, same form as `uri`) and the other entries with
    their reason code. Folders are walked, not counted; symlinks to files are files; symlinked
    folders are not followed (they may loop). A missing folder raises FileNotFoundError, or
    gives an empty listing with `missing_ok`."""
    listing = FileListing()
    if not is_remote(uri):
        try:
            _scan_local(local_path(uri), recursive, listing)
        except FileNotFoundError:
            if not missing_ok:
                raise
        listing.files.sort()
        listing.skipped.sort()
        return listing
    from pyarrow import fs as pafs

    filesystem, path = _remote(uri)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=missing_ok)
    for info in filesystem.get_file_info(selector):
        if info.type == pafs.FileType.File:
            listing.files.append(_join_uri(uri, info.path))
        elif info.type != pafs.FileType.Directory:
            listing.skipped.append((_join_uri(uri, info.path), NOT_A_FILE))
    listing.files.sort()
    listing.skipped.sort()
    return listing


def list_files(uri: str, *, recursive: bool = True, missing_ok: bool = False) -> list[str]:
    """Sorted paths/URIs of the regular files under a folder (see `scan_files`)."""
    return scan_files(uri, recursive=recursive, missing_ok=missing_ok).files


def entry_names(uri: str) -> list[str]:
    """Names directly inside a folder (files and folders); [] when it does not exist.
    NotADirectoryError when `uri` is a file."""
    if not is_remote(uri):
        root = local_path(uri)
        if os.path.exists(root) and not os.path.isdir(root):
            raise NotADirectoryError(root)
        return sorted(os.listdir(root)) if os.path.isdir(root) else []
    from pyarrow import fs as pafs

    filesystem, path = _remote(uri)
    if filesystem.get_file_info(path).type == pafs.FileType.File:
        raise NotADirectoryError(uri)
    selector = pafs.FileSelector(path, allow_not_found=True)
    return sorted(info.base_name for info in filesystem.get_file_info(selector))


def delete_file(uri: str) -> None:
    if is_remote(uri):
        filesystem, path = _remote(uri)
        filesystem.delete_file(path)
    else:
        os.remove(local_path(uri))


def make_folder(uri: str) -> None:
    """Create a local folder (and parents); object stores have no folders to create."""
    if not is_remote(uri):
        os.makedirs(local_path(uri), exist_ok=True)


def remote_filesystem(uri: str) -> tuple[FileSystem, str]:
    """(pyarrow filesystem, path inside it) for a remote URI; filesystems are cached per bucket."""
    return _remote(uri)


def open_stream(uri: str, *, buffer_size: int = 0) -> BinaryIO:
    """A sequential byte stream the caller closes; remote reads are buffered by `buffer_size`
    (one GET per buffer instead of per small read). Never decompresses: the caller decides."""
    if not is_remote(uri):
        return open(local_path(uri), "rb")
    filesystem, path = _remote(uri)
    return filesystem.open_input_stream(path, compression=None, buffer_size=buffer_size or None)


def open_file(uri: str) -> NativeFile:
    """A random-access file (seek + read), as Parquet readers need for footer and columns."""
    import pyarrow as pa

    if not is_remote(uri):
        return pa.OSFile(local_path(uri))
    filesystem, path = _remote(uri)
    return filesystem.open_input_file(path)


def write_bytes(uri: str, data: bytes) -> None:
    """Write a whole object/file atomically: readers see all of it or nothing.

    Local: a temp name (hidden, per process) renamed into place, so a killed writer leaves no
    partial file under the final name. Remote: one PUT, which object stores apply atomically.
    """
    if is_remote(uri):
        filesystem, path = _remote(uri)
        with filesystem.open_output_stream(path) as out:
            out.write(data)
        return
    path = local_path(uri)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as out:
            out.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
