"""Purity experiments (`data.purity`): how well do the differences survive when each set is
contaminated by the other? A share `1 - purity` of each set is exchanged with the other set.

The original implementation sampled the swapped images without taking them out of their own
set, so an image could end up in both sets. Here the two draws are disjoint and exchanged: the
same number leaves and enters each set, so both keep their sizes and no image is in both.
The draws are seeded and independent of listing order (like every sample in visdiff), and use
their own hash salt so that a later `data.max_num_samples` cap does not favour swapped images.

>>> from visdiff.sources.records import ImageRecord
>>> a = [ImageRecord(f"a/{i}.jpg", "a", f"/d/a/{i}.jpg") for i in range(10)]
>>> b = [ImageRecord(f"b/{i}.jpg", "b", f"/d/b/{i}.jpg") for i in range(6)]
>>> new_a, new_b, stats = apply_purity(a, b, 0.5, seed=0)
>>> len(new_a), len(new_b), stats["swapped_a_to_b"], stats["swapped_b_to_a"]
(10, 6, 3, 3)
>>> sum(r.id.startswith("b/") for r in new_a), {r.set for r in new_a}, {r.set for r in new_b}
(3, {'a'}, {'b'})
"""

from __future__ import annotations

import dataclasses
from typing import Any

from visdiff.errors import ConfigError
from visdiff.sampling import stable_fraction
from visdiff.schema import SET_A, SET_B
from visdiff.sources.records import ImageRecord

_SALT = "purity/"  # distinct from the capping order (sources/subset.py hashes the bare id)


def swap_count(n_a: int, n_b: int, purity: float) -> int:
    """Images each set gives the other: round((1 - purity) * min(n_a, n_b)).

    >>> swap_count(100, 40, 0.9), swap_count(100, 40, 1.0), swap_count(3, 3, 0.5)
    (4, 0, 2)
    """
    if not 0.5 <= purity <= 1:
        raise ConfigError(f"data.purity = {purity} must be in [0.5, 1] (1 = no swap)")
    return int(round((1.0 - purity) * min(n_a, n_b)))


def _draw(records: list[ImageRecord], n: int, seed: int) -> set[str]:
    ordered = sorted(records, key=lambda r: (stable_fraction(_SALT + r.id, seed), r.id))
    return {r.id for r in ordered[:n]}


def apply_purity(
    a: list[ImageRecord], b: list[ImageRecord], purity: float, seed: int
) -> tuple[list[ImageRecord], list[ImageRecord], dict[str, Any]]:
    """Sets A and B after exchanging `swap_count` seeded images each way, plus the stats for
    stats.json. Swapped records keep their id (its prefix still names the set they came from)
    and get the other set's name in `set`; both lists come back sorted by id."""
    n = swap_count(len(a), len(b), purity)
    stats: dict[str, Any] = {
        "purity": purity,
        "swapped_a_to_b": n,
        "swapped_b_to_a": n,
        "size_a": len(a),
        "size_b": len(b),
    }
    if n == 0:
        return a, b, stats
    leave_a, leave_b = _draw(a, n, seed), _draw(b, n, seed)
    new_a = [r for r in a if r.id not in leave_a]
    new_b = [r for r in b if r.id not in leave_b]
    new_a += [dataclasses.replace(r, set=SET_A) for r in b if r.id in leave_b]
    new_b += [dataclasses.replace(r, set=SET_B) for r in a if r.id in leave_a]
    new_a.sort(key=lambda r: r.id)
    new_b.sort(key=lambda r: r.id)
    return new_a, new_b, stats
