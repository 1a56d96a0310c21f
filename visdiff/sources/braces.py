"""WebDataset brace notation: `s3://bucket/laion/{00000..00999}.tar` -> 1000 shard URIs.

Shard sets are named this way in WebDataset, img2dataset and most LAION tooling, so users paste
these patterns as they are. Supported: zero-padded numeric ranges `{000..123}`, comma
alternatives `{a,b,c}` (which may nest), several groups per pattern (cartesian product, first
group varying slowest, as in bash). The size is checked before anything is built, so a typo such
as `{0..99999999}` fails at once instead of exhausting memory.
"""

from __future__ import annotations

import itertools
import re

from visdiff.errors import InputError

MAX_EXPANSION = 1_000_000  # items per range and per whole pattern

_RANGE = re.compile(r"^(\d+)\.\.(\d+)$")


def has_braces(pattern: str) -> bool:
    return "{" in pattern or "}" in pattern


def _error(pattern: str, problem: str) -> InputError:
    return InputError(
        f"shard pattern '{pattern}': {problem}; use WebDataset brace notation such as "
        "'shards/{00000..00999}.tar' or 'shards/{train,val}-{0..9}.tar'"
    )


def _matching_close(text: str, start: int, pattern: str) -> int:
    """Index of the `}` closing the `{` at `start`."""
    depth = 0
    for index in range(start, len(text)):
        if text[index] == "{":
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise _error(pattern, f"unbalanced braces: '{{' at position {start} is never closed")


def _split_top_level(body: str) -> list[str]:
    """Split a group body on commas that are not inside a nested group."""
    parts, depth, current = [], 0, []
    for char in body:
        if char == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        depth += char == "{"
        depth -= char == "}"
        current.append(char)
    parts.append("".join(current))
    return parts


def _range_items(match: re.Match[str], body: str, pattern: str) -> list[str]:
    first, last = match.group(1), match.group(2)
    start, stop = int(first), int(last)
    if start > stop:
        raise _error(pattern, f"reversed range {{{body}}} ({start} > {stop})")
    count = stop - start + 1
    if count > MAX_EXPANSION:
        raise _error(pattern, f"range {{{body}}} has {count} items (limit {MAX_EXPANSION})")
    padded = (len(first) > 1 and first.startswith("0")) or (len(last) > 1 and last.startswith("0"))
    width = max(len(first), len(last)) if padded else 0
    return [str(number).zfill(width) for number in range(start, stop + 1)]


def _parts(text: str, pattern: str) -> list[list[str]]:
    """The pattern as a sequence of alternatives lists (literals are one-item lists)."""
    parts: list[list[str]] = []
    literal_start = index = 0
    while index < len(text):
        char = text[index]
        if char == "}":
            raise _error(pattern, f"unbalanced braces: '}}' at position {index} has no '{{'")
        if char != "{":
            index += 1
            continue
        if index > literal_start:
            parts.append([text[literal_start:index]])
        close = _matching_close(text, index, pattern)
        body = text[index + 1 : close]
        range_match = _RANGE.match(body)
        if range_match:
            parts.append(_range_items(range_match, body, pattern))
        elif "," in body:
            items: list[str] = []
            for alternative in _split_top_level(body):
                items.extend(_expand(alternative, pattern))
                if len(items) > MAX_EXPANSION:
                    raise _error(pattern, f"expands to more than {MAX_EXPANSION} names")
            parts.append(items)
        else:
            raise _error(
                pattern,
                f"group {{{body}}} is neither a numeric range (a..b) nor a comma list (a,b)",
            )
        index = literal_start = close + 1
    if literal_start < len(text):
        parts.append([text[literal_start:]])
    return parts


def _expand(text: str, pattern: str) -> list[str]:
    parts = _parts(text, pattern)
    total = 1
    for items in parts:
        total *= len(items)
        if total > MAX_EXPANSION:
            raise _error(pattern, f"expands to more than {MAX_EXPANSION} names")
    return ["".join(combination) for combination in itertools.product(*parts)]


def expand_braces(pattern: str) -> list[str]:
    """All names a brace pattern stands for, in order; InputError naming it when malformed.

    A pattern without braces expands to itself.
    """
    return _expand(pattern, pattern)
