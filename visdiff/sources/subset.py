"""A capped run's share of a set, chosen by seed alone: the images whose `stable_key(id, seed)`
is smallest. Listed sets (folders, manifests) sort their records; shard sets, whose size is
unknown until read, prune rows while streaming against a bound that only ever moves down
(`KeyBound`) and settle the exact choice once every shard is read. Either way the choice does
not depend on listing order, block sizes, actors or nodes, and one seed picks the same ids from
the same images whatever kind of input holds them."""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable
from typing import Any

from visdiff.sampling import stable_key
from visdiff.schema import ERROR, ID
from visdiff.sources.records import ImageRecord


def selection_key(item_id: str, seed: int) -> tuple[int, str]:
    """Sort key of the seeded choice; the id breaks (astronomically rare) hash ties."""
    return stable_key(item_id, seed), item_id


def smallest_ids(ids: Iterable[str], n: int, seed: int) -> list[str]:
    """The `n` distinct ids with the smallest selection keys, in key order."""
    if n < 0:
        raise ValueError(f"n must be >= 0 (images to keep), got {n}")
    return heapq.nsmallest(n, set(ids), key=lambda i: selection_key(i, seed))


def cap_records(records: list[ImageRecord], max_n: int, seed: int) -> list[ImageRecord]:
    """Seeded subset of at most `max_n` records (0 = all), independent of listing order."""
    if max_n <= 0 or len(records) <= max_n:
        return records
    chosen = heapq.nsmallest(max_n, records, key=lambda r: selection_key(r.id, seed))
    return sorted(chosen, key=lambda r: r.id)


class KeyBound:
    """The `n` smallest keys offered so far, wherever they were read. Its bound (the n-th
    smallest offered key) is never below the n-th smallest key of the whole set, so a row with
    a larger key can be dropped at once without changing the final choice; the bound only
    moves down, so later readers drop more. Held by one Ray actor for a whole set."""

    def __init__(self, n: int) -> None:
        if n <= 0:
            raise ValueError(f"n must be > 0 (images to keep), got {n}")
        self.n = n
        self._negated: list[int] = []  # max-heap of the n smallest keys
        self.offered = 0  # keys offered in all: the rows the cap chose from

    def offer(self, keys: list[int]) -> int | None:
        """Take in a chunk's keys; the bound afterwards (None until `n` keys were offered)."""
        heap = self._negated
        self.offered += len(keys)
        for key in keys:
            if len(heap) < self.n:
                heapq.heappush(heap, -key)
            elif key < -heap[0]:
                heapq.heapreplace(heap, -key)
        return self.bound

    def count(self) -> int:
        """`offered`, as a method an actor handle can call."""
        return self.offered

    @property
    def bound(self) -> int | None:
        return -self._negated[0] if len(self._negated) == self.n else None


def prune_chunk(
    chunk: dict[str, list],
    *,
    seed: int,
    offer: Callable[[list[int]], int | None],
    readable_only: bool = False,
) -> dict[str, list]:
    """The rows of a column chunk (a shard reader's output) that may still be chosen: their keys
    are offered first (`KeyBound.offer`, through its actor), then rows above the new bound are
    dropped. `readable_only`: rows with an error take no part (the proposer's pool)."""
    rows = range(len(chunk[ID]))
    if readable_only:
        rows = [i for i in rows if not chunk[ERROR][i]]
    keys = {i: stable_key(str(chunk[ID][i]), seed) for i in rows}
    if not keys:
        return {name: [] for name in chunk}
    bound = offer(list(keys.values()))
    kept = [i for i, key in keys.items() if bound is None or key <= bound]
    return {name: [values[i] for i in kept] for name, values in chunk.items()}


def keep_ids(batch: Any, ids: frozenset[str]) -> Any:
    """The rows of a pyarrow batch whose id is in `ids`: the final cut of a pruned shard set."""
    import pyarrow as pa
    import pyarrow.compute as pc

    mask = pc.is_in(batch[ID], value_set=pa.array(sorted(ids), batch[ID].type))
    return batch.filter(mask)
