"""Error hierarchy: the CLI turns each into a one-line message and an exit code."""


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
