"""Docstring examples are doctests (scikit-learn's habit): every visdiff module whose source has
an example (the statistics in visdiff.rank first of all) runs here, so the README's test
command runs them and an example that drifts from the code fails CI."""

from __future__ import annotations

import doctest
import importlib
from pathlib import Path

import pytest

import visdiff

PACKAGE = Path(visdiff.__file__).parent


def _modules_with_examples() -> list[str]:
    names = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if ">>> " in path.read_text(encoding="utf-8"):
            parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
            names.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return names


MODULES = _modules_with_examples()


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_pass(name: str) -> None:
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{name}: {result.failed} of {result.attempted} examples failed"
    assert result.attempted > 0, f"{name} has '>>> ' in its source but no doctest ran"


def test_every_statistics_module_has_examples() -> None:
    """A doctest run that finds nothing cannot fail: the statistics keep their examples."""
    rank = {p.stem for p in (PACKAGE / "rank").glob("*.py")} - {"__init__", "aggregate"}
    assert {f"visdiff.rank.{stem}" for stem in rank} <= set(MODULES)
