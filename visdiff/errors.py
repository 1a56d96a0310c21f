"""Error hierarchy: the CLI turns each into a one-line message and an exit code."""

from __future__ import annotations


class VisdiffError(Exception):
    """Base class; `exit_code` is what the CLI returns for it."""

    exit_code = 1


class ConfigError(VisdiffError):
    """A config key is unknown, mistyped or has an invalid value."""

    exit_code = 2


class InputError(VisdiffError):
    """An input (path, manifest, group name, image set) cannot be used."""

    exit_code = 3


class ModelUnavailableError(VisdiffError):
    """A model's weights cannot be found locally nor reached on the hub."""

    exit_code = 4


class LLMError(VisdiffError):
    """The LLM endpoint failed or answered something unusable; never parsed as hypotheses."""

    exit_code = 5


def first_line(error: object, limit: int = 200, *, typed: bool = False) -> str:
    """An error's text as the one short line our messages quote: its first non-blank line (the
    type name when it has no text), cut to `limit` characters.

    `typed` prefixes the type name of foreign exceptions (`OSError: ...`), which say less on
    their own than ours do.

    >>> first_line(ValueError("bad header\\n  at byte 12"))
    'bad header'
    >>> first_line(KeyError(), typed=True)
    'KeyError'
    >>> first_line(OSError("x" * 50), limit=10, typed=True)
    'OSError: xxxxxxx...'
    """
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else ""
    if len(line) > limit:
        line = line[: limit - 3] + "..."
    name = type(error).__name__
    if not line:
        return name
    return f"{name}: {line}" if typed and not isinstance(error, VisdiffError) else line
