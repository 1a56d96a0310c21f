"""From a set plan to Ray Datasets with one row per image: {id, set, uri, caption, image_bytes,
error}. Records become rows on the driver (they are already listed there); shards are expanded
on the workers, streaming, so the driver only ever holds shard URIs."""

from __future__ import annotations

from typing import Any

from visdiff import schema
from visdiff.config import DataConfig
from visdiff.sampling import stable_fraction
from visdiff.sources.plan import SetPlan
from visdiff.sources.records import ImageRecord

ROWS_PER_CHUNK = 256  # rows per block when expanding a shard


def cap_records(records: list[ImageRecord], max_n: int, seed: int) -> list[ImageRecord]:
    """Seeded subset of at most `max_n` records (0 = all), independent of listing order."""
    if max_n <= 0 or len(records) <= max_n:
        return records
    ordered = sorted(records, key=lambda r: stable_fraction(r.id, seed))
    return sorted(ordered[:max_n], key=lambda r: r.id)


def seeded_shard_order(shards: list[str], seed: int) -> list[str]:
    """Shards in a seeded order: a capped run reads a random subset of shards, not the first."""
    return sorted(shards, key=lambda s: stable_fraction(s, seed))


def _record_row(record: ImageRecord) -> dict[str, Any]:
    return {**record.to_dict(), schema.IMAGE_BYTES: b"", schema.ERROR: ""}


def _num_blocks(n: int, requested: int) -> int:
    if requested > 0:
        return requested
    return max(2, min(256, n // 128))


def records_dataset(records: list[ImageRecord], *, num_blocks: int = 0) -> Any:
    import ray.data

    return ray.data.from_items(
        [_record_row(r) for r in records], override_num_blocks=_num_blocks(len(records), num_blocks)
    )


def shards_dataset(shards: list[str], set_name: str, data: DataConfig) -> Any:
    import ray.data

    from visdiff.sources.shards import shard_row_chunks

    ds = ray.data.from_items([{"shard": s} for s in shards], override_num_blocks=len(shards))
    return ds.map_batches(
        shard_row_chunks,
        fn_kwargs={
            "set_name": set_name,
            "rows_per_chunk": ROWS_PER_CHUNK,
            "image_column": data.image_column,
            "caption_column": data.caption_column,
        },
        batch_size=1,
        num_cpus=0.5,
    )


def ranking_dataset(plan: SetPlan, data: DataConfig, *, seed: int) -> tuple[Any, int | None]:
    """Every image to rank (capped). Returns the dataset and, when known, its row count."""
    if plan.records is not None:
        capped = cap_records(plan.records, data.max_num_samples, seed)
        return records_dataset(capped, num_blocks=data.num_blocks), len(capped)
    assert plan.shards is not None
    ds = shards_dataset(seeded_shard_order(plan.shards, seed), plan.set_name, data)
    if data.max_num_samples > 0:
        ds = ds.limit(data.max_num_samples)
    return ds, None


def sample_pool(plan: SetPlan, data: DataConfig, *, seed: int, size: int) -> list[dict[str, Any]]:
    """Candidates for the proposer's per-round samples. Records: all of them (no bytes). Shards:
    the first `size` readable images of the seeded shard order, with their bytes and alt-text."""
    if plan.records is not None:
        return [r.to_dict() for r in plan.records]
    assert plan.shards is not None
    ds = shards_dataset(seeded_shard_order(plan.shards, seed), plan.set_name, data)
    ds = ds.filter(lambda row: row[schema.ERROR] == "").limit(size)
    return ds.take_all()
