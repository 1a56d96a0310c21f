"""stats.json of a describe run: images read, skipped and why, cache use, captioning,
hypotheses. The run's objects are described here by the attributes read (Protocols), so that
the report room depends on neither the pipeline nor the proposer."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any, Protocol


class SetPlanLike(Protocol):
    set_name: str
    display_name: str
    records: Sequence[Any] | None
    shards: Sequence[str] | None


class InputPlanLike(Protocol):
    skipped: list[dict[str, Any]]

    @property
    def sets(self) -> Sequence[SetPlanLike]: ...


class EmbeddedLike(Protocol):
    num_rows: int
    rows_per_set: dict[str, int]
    from_cache: int
    skipped: list[dict[str, str]]


class RoundLike(Protocol):
    ids_a: list[str]
    ids_b: list[str]


class CaptionedLike(Protocol):
    rounds: Sequence[RoundLike]
    captions: dict[str, str]
    caption_source: dict[str, str]
    failed: list[dict[str, str]]
    rows: dict[str, dict[str, Any]]


class ProposalLike(Protocol):
    round_index: int
    hypotheses: list[str]
    raw_text: str


def _set_counts(
    p: SetPlanLike, plan_skipped: list[dict[str, Any]], embedded: EmbeddedLike
) -> dict[str, Any]:
    """One set's counts, which add up: listed = used + skipped.

    listed: every entry the listing met (folders, manifests) or every row read (shards, which
    are never listed on the driver). used: ranked. skipped: the set's entries of the skipped
    list plus the images left out by data.max_num_samples (`over_cap`, counted, not listed).
    """
    name = p.set_name
    listed_skipped = sum(1 for s in plan_skipped if s.get("set") == name)
    failed = sum(1 for s in embedded.skipped if s["set"] == name)
    read = embedded.rows_per_set.get(name, 0)
    over_cap = (len(p.records) - read) if p.records is not None else None
    listed = (len(p.records) + listed_skipped) if p.records is not None else read
    return {
        "name": p.display_name,
        "listed": listed,
        "shards": len(p.shards) if p.shards is not None else None,
        "read": read,
        "over_cap": over_cap,
        "used": read - failed,
        "skipped": listed_skipped + failed + (over_cap or 0),
        "ranked": read - failed,
    }


def run_stats(
    plan: InputPlanLike,
    embedded: EmbeddedLike,
    captioned: CaptionedLike,
    proposals: Sequence[ProposalLike],
    hypotheses: list[str],
) -> dict[str, Any]:
    skipped = [{**s, "stage": "listing"} for s in plan.skipped]
    skipped += [{**s, "stage": "embed"} for s in embedded.skipped]
    for s in skipped:
        s["reason_code"] = str(s.get("reason", "")).split(":", 1)[0]
    images = {p.set_name: _set_counts(p, plan.skipped, embedded) for p in plan.sets}
    over_cap = sum(n["over_cap"] or 0 for n in images.values())
    by_reason = Counter(s["reason_code"] for s in skipped)
    if over_cap:
        by_reason["over_cap"] = over_cap
    return {
        "images": images,
        "skipped": skipped,
        "skipped_by_reason": dict(by_reason),
        "cache": {
            "hits": embedded.from_cache,
            "misses": embedded.num_rows - embedded.from_cache - len(embedded.skipped),
        },
        "captioning": {
            "images_captioned": sum(1 for v in captioned.caption_source.values() if v == "model"),
            "captions_from_input": sum(
                1 for v in captioned.caption_source.values() if v == "input"
            ),
            "failed": captioned.failed,
        },
        "hypotheses": {
            "rounds": len(proposals),
            "proposed": sum(len(p.hypotheses) for p in proposals),
            "unique": len(hypotheses),
        },
    }
