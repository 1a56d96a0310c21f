"""Every variant name the config accepts, and every name a shipped config or preset uses, has an
implementation registered under it (and nothing is registered that the config would refuse)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from visdiff.config import EVALUATORS, PROPOSERS, RANKERS
from visdiff.errors import ConfigError
from visdiff.registry import Registry

ROOT = Path(__file__).resolve().parents[1]
KEYS = {
    "propose.proposer": PROPOSERS,
    "rank.ranker": RANKERS,
    "evaluate.evaluator": EVALUATORS,
}


def _registries() -> dict[str, Registry]:
    from visdiff.pipeline.evaluators import EVALUATORS as evaluators
    from visdiff.pipeline.proposers import PROPOSERS as proposers
    from visdiff.pipeline.rankers import RANKERS as rankers

    return {r.key: r for r in (proposers, rankers, evaluators)}


@pytest.mark.parametrize("key", sorted(KEYS))
def test_config_choices_and_registered_names_are_the_same(key: str) -> None:
    assert set(_registries()[key].names()) == set(KEYS[key])


def _shipped_yaml() -> list[Path]:
    return sorted([*(ROOT / "configs").rglob("*.yaml"), *(ROOT / "visdiff/presets").glob("*.yaml")])


def _names_in(path: Path) -> list[tuple[str, str]]:
    data = yaml.safe_load(path.read_text()) or {}
    found = []
    for key in KEYS:
        node = data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is not None:
            found.append((key, str(node)))
    return found


def test_every_variant_named_in_a_shipped_config_is_implemented() -> None:
    registries = _registries()
    named = [(p, key, name) for p in _shipped_yaml() for key, name in _names_in(p)]
    assert named, "no shipped config names a variant: the check would pass vacuously"
    for path, key, name in named:
        try:
            implementation = registries[key].get(name)
        except ConfigError as exc:
            pytest.fail(f"{path.relative_to(ROOT)}: {exc}")
        assert callable(implementation)


def test_an_unknown_name_is_a_one_line_error_listing_the_names() -> None:
    with pytest.raises(ConfigError) as err:
        _registries()["rank.ranker"].get("sentence")
    assert "\n" not in str(err.value)
    assert all(name in str(err.value) for name in RANKERS)
