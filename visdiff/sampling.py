"""Seeded, order-free sampling of image ids.

Each id gets a pseudo-random key from a stable hash of (seed, round, id), and a round takes the
k ids with the smallest keys. The choice therefore depends only on the set of ids and the seed:
not on row order, on how Ray split the data into blocks, or on Python's per-process hash salt.
"""

from __future__ import annotations

import hashlib
import heapq
from collections.abc import Sequence

# blake2b "person" strings keep the two uses independent of each other.
_ROUND_PERSON = b"visdiff.round"
_FRACTION_PERSON = b"visdiff.fraction"
_SCALE = float(1 << 64)


def _hash64(person: bytes, prefix: str, item_id: str) -> int:
    if not isinstance(item_id, str):
        raise TypeError(f"image ids must be str, got {type(item_id).__name__}: {item_id!r}")
    digest = hashlib.blake2b(
        f"{prefix}\x1f{item_id}".encode("utf-8", "surrogatepass"), digest_size=8, person=person
    ).digest()
    return int.from_bytes(digest, "big")


def sample_for_round(ids: Sequence[str], *, k: int, seed: int, round_index: int) -> list[str]:
    """k distinct ids (all when there are fewer), ordered by their hash for this round."""
    if k < 0:
        raise ValueError(f"k must be >= 0 (images per set per round), got {k}")
    prefix = f"{int(seed)}:{int(round_index)}"
    keyed = {(_hash64(_ROUND_PERSON, prefix, item_id), item_id) for item_id in ids}
    return [item_id for _, item_id in heapq.nsmallest(k, keyed)]


def stable_key(id: str, seed: int) -> int:
    """A 64-bit number fixed by (id, seed): a capped set keeps the ids with the smallest keys,
    whatever kind of input lists or streams them (sources/subset.py)."""
    return _hash64(_FRACTION_PERSON, str(int(seed)), id)


def stable_fraction(id: str, seed: int) -> float:
    """`stable_key` scaled into [0, 1): keep an id when it is below a cap fraction."""
    return stable_key(id, seed) / _SCALE
