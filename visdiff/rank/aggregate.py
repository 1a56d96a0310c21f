"""Score stage as a Ray Data aggregation: each block's images are scored against every
hypothesis and reduced on the spot to mergeable partial statistics (``SplitPartials``, the
accumulator: every image, and the images not shown to the proposer), so per-image scores never
travel to the driver; Ray combines the partials and ``finalize`` turns the merged one into
per-hypothesis statistics.

``fold_blocks`` runs such aggregations with plain Ray tasks instead of ``Dataset.aggregate``,
whose hash shuffle first starts aggregator actors: seconds, against ~0.1 s of scoring per
10^5 images. Under the exact cap on one node it scores by slices of hypotheses instead
(``ScoreAggregate.score_slice``): one task per core, each over every row, so that the sorts
and the finalize, most of the work, run on every core instead of in one task at the end.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.aggregate import AggregateFnV2
from ray.data.block import BlockAccessor

from visdiff import schema
from visdiff.rank.holdout import ScoredHypotheses, SplitPartials
from visdiff.rank.partials import RankedPartials, ScorePartials


class ScoreAggregate(AggregateFnV2):
    """``Dataset.aggregate(ScoreAggregate(...))`` over embedded image rows -> one value, the
    ``ScoredHypotheses`` in the order of ``hypotheses`` (unranked).

    ``held_in``: ids of the images shown to the proposer, left out of the significance figures
    (None: hold-out off, every image is tested). ``expected_total`` (images of the whole
    ranking) lets a block skip exact scores that the merge would drop anyway; see
    ``ScorePartials.from_scores``. Blocks should be large (the partials are folded pairwise):
    repartition small embedding blocks first.
    """

    NAME = "score_partials"

    def __init__(
        self,
        hypotheses: list[str],
        text_embeddings: np.ndarray,
        *,
        threshold: float,
        num_bins: int,
        exact_cap: int,
        expected_total: int | None = None,
        held_in: Iterable[str] | None = None,
    ) -> None:
        self._hypotheses = list(hypotheses)
        self._text = np.asarray(text_embeddings, dtype=np.float32)
        self._options = {"threshold": threshold, "num_bins": num_bins, "exact_cap": exact_cap}
        self._held_in = None if held_in is None else frozenset(held_in)
        self._expected_total = expected_total
        # A lower bound of the held-out total is what a block's cap check needs.
        self._expected_tested = None
        if expected_total is not None and self._held_in is not None:
            self._expected_tested = max(0, expected_total - len(self._held_in))
        self._zero = functools.partial(
            SplitPartials.empty,
            self._text.shape[0],
            holdout=self._held_in is not None,
            **self._options,
        )
        super().__init__(self.NAME, self._zero, on=None, ignore_nulls=False)

    def aggregate_block(self, block: Any) -> SplitPartials:
        rows = self._block_rows(block)
        if not rows.is_a.size:
            return self._zero()
        # (n, H) view of a hypothesis-major product: from_scores reads one row per hypothesis.
        scores = (self._text @ rows.embeddings.T).T
        return SplitPartials.from_scores(
            scores,
            rows.is_a,
            rows.tested,
            expected_total=self._expected_total,
            expected_tested=self._expected_tested,
            **self._options,
        )

    @property
    def num_hypotheses(self) -> int:
        return len(self._hypotheses)

    def by_hypothesis(self, num_rows: int) -> bool:
        """Whether ``score_slice`` may stand in for the block-by-block aggregation of
        ``num_rows`` rows: when they all fit the exact cap, so that a slice's exact scores take
        no more memory than the merged partial's would."""
        return bool(self._hypotheses) and num_rows <= self._options["exact_cap"]

    def score_slice(
        self, blocks: Sequence[Any], start: int, stop: int
    ) -> tuple[RankedPartials, RankedPartials | None]:
        """Every row of ``blocks`` scored against hypotheses ``start:stop`` only and ranked
        (``ScorePartials.ranked``): of every image and of the held-out ones (None: hold-out
        off). ``join_slices`` finalizes the slices of all hypotheses.

        Each set's scores are written by the product straight into its half of one (H_slice,
        n_a + n_b) float32 matrix, which is then sorted without a copy; slices over all rows
        need no merge of exact scores, and the slices of one ranking sort in parallel (see
        ``fold_blocks``).
        """
        text = self._text[start:stop]
        rows = [self._block_rows(block) for block in blocks]
        n_a = sum(int(r.is_a.sum()) for r in rows)
        scores = np.empty((text.shape[0], sum(r.is_a.size for r in rows)), np.float32)
        pos = [0, n_a]  # next column of set A, of set B
        for r in rows:
            for i, in_set in enumerate((r.is_a, ~r.is_a)):
                # Blocks usually hold one set (the sets are read apart): no copy of them then.
                picked = r.embeddings if in_set.all() else r.embeddings[in_set]
                np.matmul(text, picked.T, out=scores[:, pos[i] : pos[i] + picked.shape[0]])
                pos[i] += picked.shape[0]
        by_set = [scores[:, :n_a], scores[:, n_a:]]
        every = ScorePartials.from_set_scores(*by_set, **self._options).ranked()
        held_out = None
        if self._held_in is not None:
            is_a = np.concatenate([r.is_a for r in rows])
            tested = np.concatenate([r.tested for r in rows])
            held_out = ScorePartials.from_set_scores(
                np.compress(tested[is_a], by_set[0], axis=1),
                np.compress(tested[~is_a], by_set[1], axis=1),
                **self._options,
            ).ranked()
        return every, held_out

    def join_slices(
        self, slices: Sequence[tuple[RankedPartials, RankedPartials | None]]
    ) -> ScoredHypotheses:
        """``finalize`` of the ``score_slice`` results of consecutive slices covering every
        hypothesis, in order (p-values and Welch's test here: scipy.stats is loaded once)."""
        every = RankedPartials.concat([s[0] for s in slices])
        held_out = None
        if slices[0][1] is not None:
            held_out = RankedPartials.concat([s[1] for s in slices])
        # SplitPartials needs only `count` and `finalize` of its partials, as ranked ones have.
        return SplitPartials(every, held_out).finalize(self._hypotheses)

    def _block_rows(self, block: Any) -> _Rows:
        """The scored rows of one block, read with Arrow kernels: turning ids and sets into
        Python strings would cost more than the scoring."""
        table = block if isinstance(block, pa.Table) else BlockAccessor.for_block(block).to_arrow()
        ok = _flags(pc.equal(table[schema.ERROR], ""))
        tested = None if self._held_in is None else np.zeros(0, bool)
        if not ok.any():
            return _Rows(np.zeros((0, self._text.shape[1]), np.float32), np.zeros(0, bool), tested)
        embeddings = BlockAccessor.for_block(table).to_numpy(schema.EMBEDDING)
        is_a = _flags(pc.equal(table[schema.SET], schema.SET_A))[ok]
        if self._held_in is not None:
            tested = ~_is_in(table[schema.ID], self._held_in)[ok]
        return _Rows(_embeddings(embeddings, ok), is_a, tested)

    def combine(self, current_accumulator: SplitPartials, new: SplitPartials) -> SplitPartials:
        return current_accumulator.merge(new)

    def combine_all(self, accumulators: Iterable[SplitPartials]) -> SplitPartials:
        """``combine`` of many at once: exact scores are concatenated once, not per pair."""
        return SplitPartials.merge_all(accumulators)

    def finalize(self, accumulator: SplitPartials) -> ScoredHypotheses:
        return accumulator.finalize(self._hypotheses)


@dataclass(frozen=True)
class _Rows:
    """The scored (not failed) rows of a block: vectors, set A flags, not-shown-to-the-proposer
    flags (None: hold-out off)."""

    embeddings: np.ndarray  # (n, D) float32
    is_a: np.ndarray  # (n,) bool
    tested: np.ndarray | None  # (n,) bool


def _flags(mask: Any) -> np.ndarray:
    """A boolean Arrow result as a numpy array, nulls as False."""
    return np.asarray(pc.fill_null(mask, False).to_numpy(zero_copy_only=False), dtype=bool)


def _is_in(column: Any, values: frozenset[str]) -> np.ndarray:
    """Which entries of an Arrow ``column`` are in ``values`` (Arrow's hash set when the
    column holds strings, else per row in Python)."""
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        return _flags(pc.is_in(column, value_set=pa.array(list(values), column.type)))
    ids = column.to_numpy(zero_copy_only=False)
    return np.fromiter((i in values for i in ids), bool, len(ids))


# Scores (rows x hypotheses) worth a slice task of their own, ~0.05 s of sorting and
# statistics: fewer go by blocks, whose tasks a small input shares with other aggregations.
_SCORES_PER_SLICE = 1 << 20

# Partials folded per combine_all call: under the exact cap each call concatenates the exact
# scores merged so far once, so the copying stays a small multiple of the total.
_FOLD_BATCH = 8


def fold_blocks(
    dataset: Any,
    aggregations: Sequence[AggregateFnV2],
    *,
    rows_per_task: int,
    scores_per_slice: int = _SCORES_PER_SLICE,
) -> dict[str, Any]:
    """{name: finalized result} of ``aggregations`` over a materialised Ray Dataset.

    On one node, an aggregation that can (``by_hypothesis``, e.g. ``ScoreAggregate`` under
    its exact cap) runs as one task per slice of its hypotheses, each over every row, up to
    one task per core: each task scores and sorts its slice (``score_slice``), so the exact
    scores are never merged and the sorts run on every core instead of in one task after the
    rest; the driver joins the slices' per-hypothesis arrays and finalizes (``join_slices``).

    The others (or all, on a cluster): each task folds a run of consecutive blocks (about
    ``rows_per_task`` rows, so that small embedding blocks make few, full partials) into one
    accumulator per aggregation; once all are done, one task merges them, ``_FOLD_BATCH`` at a
    time, and finalizes. Only the finalized results reach the driver. Merged in block order,
    so a run is reproducible.
    """
    aggregations = list(aggregations)
    blocks = dataset.to_arrow_refs()  # zero-copy for a materialised dataset
    if not blocks:
        return {a.get_agg_name(): a.finalize(a.init(None)) for a in aggregations}
    num_rows = dataset.count()
    # On one node, blocks go as nested references that the task fetches: the tasks then share
    # their dependencies (only `shared`), so Ray can hand a worker its next task on the same
    # lease instead of asking the raylet for one lease per task (measured: the scoring phase
    # ~0.05 s, ~25%, shorter at 10^5 images per set). On a cluster they stay task arguments,
    # so that each task is leased where its blocks are.
    nested = _single_node()
    cores = _cores() if nested else 0
    slices = {
        a.get_agg_name(): _slice_count(a, num_rows, cores, scores_per_slice) for a in aggregations
    }
    sliced = [a for a in aggregations if slices[a.get_agg_name()]]
    by_block = [a for a in aggregations if not slices[a.get_agg_name()]]
    pending: dict[str, list[Any]] = {}
    if sliced:
        shared_sliced = ray.put(sliced)
        for i, a in enumerate(sliced):
            count = slices[a.get_agg_name()]
            bounds = np.linspace(0, a.num_hypotheses, count + 1).round().astype(int).tolist()
            pending[a.get_agg_name()] = [
                _score_slice.remote(shared_sliced, i, list(blocks), lo, hi)
                for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)
            ]
    folded = None
    if by_block:
        tasks = max(1, min(len(blocks), math.ceil(num_rows / max(1, rows_per_task))))
        bounds = np.linspace(0, len(blocks), tasks + 1).round().astype(int)
        shared = ray.put(by_block)
        parts = [
            _partials_of_blocks.remote(shared, list(run))
            if nested
            else _partials_of_blocks.remote(shared, [], *run)
            for run in (blocks[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:], strict=True))
        ]
        # The fold task starts once every partial exists, so it never holds a CPU slot that a
        # scoring task is waiting for; it gets the references (not the values) to free each
        # one as soon as it is merged.
        ray.wait(parts, num_returns=len(parts), fetch_local=False)
        folded = _fold_partials.remote(shared, parts)
        del parts
    results = {a.get_agg_name(): a.join_slices(ray.get(pending[a.get_agg_name()])) for a in sliced}
    if folded is not None:
        results.update(ray.get(folded))
    return {a.get_agg_name(): results[a.get_agg_name()] for a in aggregations}


def _slice_count(
    aggregation: AggregateFnV2, num_rows: int, cores: int, scores_per_slice: int
) -> int:
    """Hypothesis slices to score ``aggregation`` in (0: by blocks): one per core at most,
    none of fewer than ``scores_per_slice`` scores, and only where it can (``by_hypothesis``)."""
    check = getattr(aggregation, "by_hypothesis", None)
    if not cores or check is None or not check(num_rows):
        return 0
    h = aggregation.num_hypotheses
    return min(h, cores, num_rows * h // max(1, scores_per_slice))


def _cores() -> int:
    """Tasks worth running at once here: this machine's cores (Ray's CPU slots may be more,
    sharing them), at most Ray's slots."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(cores, int(ray.cluster_resources().get("CPU", 1))))


def _single_node() -> bool:
    """Whether the Ray cluster has one live node (then block locality does not matter)."""
    return sum(1 for node in ray.nodes() if node.get("Alive")) <= 1


@ray.remote
def _partials_of_blocks(
    aggregations: list[AggregateFnV2], nested: list[Any], *blocks: Any
) -> list[Any]:
    """One accumulator per aggregation for the rows of ``nested`` (block references, fetched
    here) and ``blocks`` (one table: one product)."""
    from ray.data.block import BlockAccessor

    blocks = (*ray.get(nested), *blocks)
    builder = BlockAccessor.for_block(blocks[0]).builder()
    for block in blocks:
        builder.add_block(block)
    table = builder.build()
    return [a.aggregate_block(table) for a in aggregations]


@ray.remote
def _score_slice(
    aggregations: list[ScoreAggregate], index: int, blocks: list[Any], start: int, stop: int
) -> tuple[RankedPartials, RankedPartials | None]:
    """``aggregations[index].score_slice`` of the rows of ``blocks`` (references, fetched
    here: zero-copy from the node's object store)."""
    return aggregations[index].score_slice(ray.get(blocks), start, stop)


@ray.remote
def _fold_partials(aggregations: list[AggregateFnV2], parts: list[Any]) -> dict[str, Any]:
    """Merges the tasks' accumulators in order, a few at a time, and finalizes them."""
    folded: list[Any] | None = None
    for start in range(0, len(parts), _FOLD_BATCH):
        batch = ray.get(parts[start : start + _FOLD_BATCH])
        parts[start : start + _FOLD_BATCH] = [None] * len(batch)  # let the store free them
        if folded is not None:
            batch.insert(0, folded)
        folded = [_combine_all(a, [p[i] for p in batch]) for i, a in enumerate(aggregations)]
        del batch
    assert folded is not None  # fold_blocks submits at least one task
    return {a.get_agg_name(): a.finalize(acc) for a, acc in zip(aggregations, folded, strict=True)}


def _combine_all(aggregation: AggregateFnV2, accumulators: list[Any]) -> Any:
    many = getattr(aggregation, "combine_all", None)
    if many is not None:
        return many(accumulators)
    return functools.reduce(aggregation.combine, accumulators)


def _embeddings(column: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """(n_ok, D) float32: the block's own (read-only) memory when Ray hands a 2-D float32
    tensor column and no row failed, one copy when some did, else row by row (a ragged
    object column, e.g. when some failed rows carry no vector)."""
    if isinstance(column, np.ndarray) and column.ndim == 2:
        return np.asarray(column if ok.all() else column[ok], dtype=np.float32)
    return np.stack([np.asarray(e, dtype=np.float32) for e in column[ok]])


def error_rows(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keeps only the rows that failed upstream (for the skipped-images list in stats.json)."""
    errors = np.asarray(batch[schema.ERROR], dtype=object)
    bad = np.asarray([err != "" for err in errors], dtype=bool)
    return {
        schema.ID: np.asarray(batch[schema.ID], dtype=object)[bad],
        schema.SET: np.asarray(batch[schema.SET], dtype=object)[bad],
        schema.URI: np.asarray(batch[schema.URI], dtype=object)[bad],
        schema.ERROR: errors[bad],
    }


def block_counts(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """One row per block: rows per set, cache hits and failures (merged on the driver)."""
    sets = np.asarray(batch[schema.SET], dtype=object)
    failed = np.asarray([err != "" for err in batch[schema.ERROR]], dtype=bool)
    from_cache = np.asarray(batch.get(schema.FROM_CACHE, np.zeros(len(sets), dtype=bool)))
    counts = {f"rows_{name}": np.array([int(np.sum(sets == name))]) for name in schema.SETS}
    counts["from_cache"] = np.array([int(np.sum(from_cache))])
    counts["failed"] = np.array([int(np.sum(failed))])
    return counts
