"""WebDataset tar shards (img2dataset layout: key.jpg + key.txt + key.json ...), streamed.

A thin layer over the standard library's streaming `tarfile` that adds what visdiff needs: a
cut archive is told apart from a complete one (tarfile ends silently on both), and every loss
(a cut, an unreadable object, a sample without an image) becomes a row with an error.
"""

from __future__ import annotations

import posixpath
import tarfile
import zlib
from collections.abc import Iterator
from typing import Any

from visdiff.errors import first_line
from visdiff.io import storage
from visdiff.sources.shards.rows import image_row, shard_error_row, shard_name

# Sample members holding the image, in order of preference when a sample has several.
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTENSION = "txt"
_SKIPPED = "\0skipped"  # the members entry of a link/device member: its reason (never an extension)
STREAM_BUFFER_BYTES = 8 * 1024 * 1024  # one S3 GET per 8 MiB instead of per tar block


def _caption_text(data: bytes | None) -> str:
    return data.decode("utf-8", errors="replace").strip() if data else ""


def _member_key(name: str) -> tuple[str, str] | None:
    """(key, lower-case extension) of a member: WebDataset splits at the basename's first dot."""
    folder, base = posixpath.split(_member_name(name))
    if base.startswith(".") or "." not in base:  # hidden files, names without extension
        return None
    stem, extension = base.split(".", 1)
    return posixpath.join(folder, stem), extension.lower()


def _member_name(name: str) -> str:
    while name.startswith("./"):
        name = name[2:]
    return name


def _member_problem(info: tarfile.TarInfo) -> str:
    """Reason of a member that is not a regular file: `tar_link` or `not_a_file`."""
    if info.issym() or info.islnk():
        return f"tar_link: {_member_name(info.name)} -> {info.linkname}"
    return f"not_a_file: {_member_name(info.name)} (tar member type {info.type!r})"


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
    return f"invalid member header ({first_line(last)})"


def _tar_samples(
    tar: tarfile.TarFile, header_errors: list[Exception]
) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) per sample; members of one sample are consecutive.

    Only image and caption members are read; others are recorded with empty bytes so a sample
    holding only metadata is still reported (as no_image). A link or device member is its own
    entry, (member name, {_SKIPPED: reason}). When the archive is cut, the last sample may be
    missing members, so it is dropped (the caller reports the cut).
    """
    key: str | None = None
    members: dict[str, bytes] = {}
    for info in tar:
        if info.isdir():  # structure, not an entry
            continue
        parsed = _member_key(info.name)
        if parsed is None:
            continue
        if not info.isfile():  # counted, never followed: a link's target is outside the stream
            yield _member_name(info.name), {_SKIPPED: _member_problem(info).encode()}
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
    if _SKIPPED in members:
        return image_row(set_name, shard, key, f"{uri}#{key}", "", b"", members[_SKIPPED].decode())
    caption = _caption_text(members.get(CAPTION_EXTENSION))
    for extension in IMAGE_EXTENSIONS:
        if extension in members:
            image = members[extension]
            return image_row(set_name, shard, key, f"{uri}#{key}.{extension}", caption, image, "")
    return image_row(set_name, shard, key, f"{uri}#{key}", caption, b"", f"no_image: {key}")


def iter_webdataset_shard(uri: str, *, set_name: str) -> Iterator[dict[str, Any]]:
    """Stream one WebDataset tar: one row per sample.

    Never raises for bad data: a cut or corrupt archive yields the samples read so far plus one
    "truncated_tar" row, an unreadable shard one "read_error" row.
    """
    shard = shard_name(uri)
    tarinfo_class, header_errors = _tracking_tarinfo()
    produced = 0
    opened = False
    try:
        # tarfile handles .tar.gz itself ("r|*"); the stream never decompresses.
        with storage.open_stream(uri, buffer_size=STREAM_BUFFER_BYTES) as stream:
            with tarfile.open(fileobj=stream, mode="r|*", tarinfo=tarinfo_class) as tar:
                opened = True
                for key, members in _tar_samples(tar, header_errors):
                    yield _sample_row(uri, set_name, shard, key, members)
                    produced += 1
                problem = _end_problem(header_errors)
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        if not opened:
            yield shard_error_row(
                uri, set_name, f"read_error: {uri}: not a tar ({first_line(exc)})"
            )
            return
        problem = first_line(exc)
    except (OSError, ValueError) as exc:  # I/O failures, pyarrow's ArrowInvalid
        after = f" after {produced} sample(s)" if opened else ""
        yield shard_error_row(uri, set_name, f"read_error: {uri}: {first_line(exc)}{after}")
        return
    if problem is not None:
        yield shard_error_row(uri, set_name, f"truncated_tar: {problem} after {produced} sample(s)")
    elif produced == 0:
        yield shard_error_row(uri, set_name, "empty_shard: the archive holds no samples")
