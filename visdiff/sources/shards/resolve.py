"""Shard-spec resolution on the driver: a URI, a list, a brace pattern or a glob -> shard URIs.

Only shards are listed, never images: one LIST per glob, one HEAD per named shard. Brace
patterns (`s3://bucket/laion/{00000..00999}.tar`, as WebDataset, img2dataset and most LAION
tooling name shard sets) expand with `braceexpand`; globs match with fsspec's translator, so
`*` and `?` stay inside one folder and `**` crosses folders.
"""

from __future__ import annotations

import os
import re
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

from braceexpand import UnbalancedBracesError, braceexpand
from fsspec.utils import glob_translate

from visdiff.errors import InputError, first_line
from visdiff.io import storage
from visdiff.sources.shards.rows import shard_name

WEBDATASET = "webdataset"
PARQUET = "parquet"
FORMAT_SUFFIXES = {".tar": WEBDATASET, ".tar.gz": WEBDATASET, ".tgz": WEBDATASET}
FORMAT_SUFFIXES[".parquet"] = PARQUET

GLOB_CHARS = "*?["
MAX_EXPANSION = 1_000_000  # names per brace range and per whole pattern
EXISTS_THREADS = 32  # parallel HEAD requests when checking named shards
MAX_LISTED = 5  # names quoted in an error message

_NUMERIC_RANGE = re.compile(r"\{(-?\d+)\.\.(-?\d+)(?:\.\.-?\d+)?\}")
_INNER_GROUP = re.compile(r"\{[^{}]*\}")


# ---------------------------------------------------------------- brace patterns


def has_braces(pattern: str) -> bool:
    return "{" in pattern or "}" in pattern


def _brace_error(pattern: str, problem: str) -> InputError:
    return InputError(
        f"shard pattern '{pattern}': {problem}; use WebDataset brace notation such as "
        "'shards/{00000..00999}.tar' or 'shards/{train,val}-{0..9}.tar'"
    )


def expand_braces(pattern: str) -> list[str]:
    """All names a brace pattern stands for, in bash order; InputError naming it when malformed.

    Around `braceexpand`, visdiff refuses what is almost surely a typo rather than expanding it:
    a reversed numeric range, a group that is neither a range nor a comma list (braceexpand
    keeps it literally), and more than MAX_EXPANSION names (checked before memory runs out).
    """
    for match in _NUMERIC_RANGE.finditer(pattern):
        start, stop = int(match[1]), int(match[2])
        if start > stop:
            raise _brace_error(pattern, f"reversed range {match[0]} ({start} > {stop})")
        if stop - start + 1 > MAX_EXPANSION:
            count = stop - start + 1
            raise _brace_error(
                pattern, f"range {match[0]} has {count} items (limit {MAX_EXPANSION})"
            )
    try:
        names = list(islice(braceexpand(pattern, escape=False), MAX_EXPANSION + 1))
    except UnbalancedBracesError:
        raise _brace_error(pattern, "unbalanced braces") from None
    if len(names) > MAX_EXPANSION:
        raise _brace_error(pattern, f"expands to more than {MAX_EXPANSION} names")
    literal = next((name for name in names if has_braces(name)), None)
    if literal is not None:
        group = _INNER_GROUP.search(literal)
        raise _brace_error(
            pattern,
            f"group {group[0] if group else literal} is neither a numeric range (a..b) nor a "
            "comma list (a,b)",
        )
    return names


# ---------------------------------------------------------------- globs


def _is_glob(pattern: str) -> bool:
    return any(char in pattern for char in GLOB_CHARS)


def _glob(pattern: str, spec_text: str) -> list[str]:
    """Files matching a glob: one listing of the folder before the first glob character.

    Hidden files and folders (".name") never match: they are sync and editor leftovers.
    """
    first = min(pattern.index(c) for c in GLOB_CHARS if c in pattern)
    cut = pattern.rfind("/", 0, first) + 1
    prefix, rest = pattern[:cut], pattern[cut:]
    remote = storage.is_remote(pattern)
    if remote and prefix.count("/") < 3:  # "s3://bucket*/..."
        raise InputError(
            f"shard spec '{spec_text}': glob '{pattern}' has a wildcard in the bucket name; "
            "name the bucket literally"
        )
    try:
        matcher = re.compile(glob_translate(rest))
    except (ValueError, re.error) as exc:
        raise InputError(
            f"shard spec '{spec_text}': glob '{pattern}' is invalid ({first_line(exc)}); "
            "write '**' as a whole folder level, e.g. 'shards/**/*.tar'"
        ) from None
    root = prefix.rstrip("/") if remote else os.path.abspath(storage.local_path(prefix) or ".")
    try:
        paths = storage.list_files(root, recursive="/" in rest or "**" in rest)
    except (OSError, ValueError) as exc:
        raise InputError(
            f"shard spec '{spec_text}': folder '{prefix or '.'}' of glob '{pattern}' cannot be "
            f"listed ({first_line(exc)}); check the bucket and prefix"
        ) from None
    base = root.rstrip("/") + "/" if remote else root.rstrip(os.sep) + os.sep
    found = []
    for path in paths:
        relative = path[len(base) :].replace(os.sep, "/")
        hidden = any(part.startswith(".") for part in relative.split("/"))
        if not hidden and matcher.match(relative):
            found.append(path)
    return found


# ---------------------------------------------------------------- checks


def _spec_text(spec: str | list[str]) -> str:
    if isinstance(spec, str):
        return spec
    shown = ", ".join(spec[:3]) + (f", ... ({len(spec)} in all)" if len(spec) > 3 else "")
    return f"[{shown}]"


def _normalise(uri: str) -> str:
    """Remote URIs as given; local paths absolute (Ray workers may run elsewhere)."""
    if storage.is_remote(uri):
        return uri
    return os.path.abspath(storage.local_path(uri))


def _file_problem(uri: str) -> str | None:
    """None for an existing file, else why not (one HEAD request for remote URIs)."""
    try:
        return None if storage.is_file(uri) else "not found"
    except (OSError, ValueError) as exc:
        return first_line(exc)


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

    Globs list the folder before their first wildcard; explicitly named shards (and brace
    expansions) are checked to exist, in parallel. Raises InputError naming the spec when
    nothing matches or a named shard is missing.
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
