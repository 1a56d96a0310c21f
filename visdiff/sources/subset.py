"""A capped run's share of a set, chosen by seed and independent of listing order: a subset of
the listed records, or the order in which shards are read (a capped run reads a random subset
of shards, not the first ones)."""

from __future__ import annotations

from visdiff.sampling import stable_fraction
from visdiff.sources.records import ImageRecord


def cap_records(records: list[ImageRecord], max_n: int, seed: int) -> list[ImageRecord]:
    """Seeded subset of at most `max_n` records (0 = all), independent of listing order."""
    if max_n <= 0 or len(records) <= max_n:
        return records
    ordered = sorted(records, key=lambda r: stable_fraction(r.id, seed))
    return sorted(ordered[:max_n], key=lambda r: r.id)


def seeded_shard_order(shards: list[str], seed: int) -> list[str]:
    """Shards in a seeded order: a capped run reads a random subset of shards, not the first."""
    return sorted(shards, key=lambda s: stable_fraction(s, seed))
