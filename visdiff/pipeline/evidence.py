"""The evidence pass: each block of embedded images is scored against every hypothesis and
reduced on the spot to its best and worst matches and fine score counts (`EvidencePartial`);
Ray folds the partials, and only the chosen images are read again, for their thumbnails.
Writes evidence.parquet, which `visdiff.report.render` reads back for report.html."""

from __future__ import annotations

import functools
import io
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.aggregate import AggregateFnV2
from ray.data.block import BlockAccessor

from visdiff import schema
from visdiff.pipeline.graph import EmbeddedImages, aggregate_embeddings
from visdiff.rank.aggregate import _embeddings
from visdiff.report.evidence import ROLES, EvidencePartial, EvidenceTable
from visdiff.report.render import EVIDENCE_FILE
from visdiff.report.writers import RunFolder
from visdiff.stages.images import row_thumbnail

THUMBNAIL_THREADS = 8  # reading the few chosen images is I/O: S3 round trips overlap


class EvidenceAggregate(AggregateFnV2):
    """`Dataset.aggregate(EvidenceAggregate(...))` over embedded image rows -> one merged
    `EvidencePartial` (failed rows are left out)."""

    NAME = "evidence"

    def __init__(self, text_embeddings: np.ndarray, k: int) -> None:
        self._text = np.asarray(text_embeddings, dtype=np.float32)
        self._k = k
        zero = functools.partial(EvidencePartial.empty, self._text.shape[0], k)
        super().__init__(self.NAME, zero, on=None, ignore_nulls=False)

    def aggregate_block(self, block: Any) -> EvidencePartial:
        batch = BlockAccessor.for_block(block).to_batch_format("numpy")
        usable = np.asarray(batch[schema.ERROR], dtype=object) == ""
        if not usable.any():
            return EvidencePartial.empty(self._text.shape[0], self._k)
        scores = _embeddings(batch[schema.EMBEDDING], usable) @ self._text.T
        return EvidencePartial.from_scores(
            scores,
            np.asarray(batch[schema.SET])[usable] == schema.SET_A,
            np.asarray(batch[schema.ID], dtype=object)[usable],
            np.asarray(batch[schema.URI], dtype=object)[usable],
            k=self._k,
        )

    def combine(self, current_accumulator: EvidencePartial, new: EvidencePartial) -> Any:
        return current_accumulator.merge(new)

    def finalize(self, accumulator: EvidencePartial) -> EvidencePartial:
        return accumulator


def compute_evidence(
    embedded: EmbeddedImages, text_embeddings: np.ndarray, hypotheses: list[str], k: int
) -> EvidenceTable:
    """Per hypothesis (the rows of `text_embeddings`, same order): the k best- and worst-
    matching images of each set with their scores and thumbnails, and both score histograms.
    A describe run folds `EvidenceAggregate` in the same pass as the ranking statistics."""
    aggregation = EvidenceAggregate(text_embeddings, k)
    partial = aggregate_embeddings(embedded, [aggregation])[aggregation.get_agg_name()]
    return finish_evidence(partial, hypotheses)


def finish_evidence(partial: EvidencePartial, hypotheses: list[str]) -> EvidenceTable:
    """The merged partial as a table, with the thumbnails of the chosen images read."""
    table = partial.finalize(list(hypotheses))
    uris = table.uris()
    with ThreadPoolExecutor(max_workers=THUMBNAIL_THREADS) as pool:
        thumbs = pool.map(lambda uri: row_thumbnail({schema.URI: uri}), uris)
        return table.with_thumbnails(dict(zip(uris, thumbs, strict=True)))


def evidence_parquet(table: EvidenceTable) -> bytes:
    """evidence.parquet's bytes: one row per hypothesis (columns: `EvidenceTable.to_columns`)."""
    picks = {"id": pa.string(), "uri": pa.string(), "score": pa.float64(), "thumbnail": pa.binary()}
    fields = [pa.field("hypothesis", pa.string())]
    fields += [pa.field(f"{r}_{a}", pa.list_(t)) for r in ROLES for a, t in picks.items()]
    fields += [
        pa.field("hist_edges", pa.list_(pa.float64())),
        pa.field("hist_a", pa.list_(pa.int64())),
        pa.field("hist_b", pa.list_(pa.int64())),
    ]
    arrow_schema = pa.schema(fields)
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pydict(table.to_columns(), schema=arrow_schema), buffer)
    return buffer.getvalue()


def write_evidence(folder: RunFolder, table: EvidenceTable) -> None:
    folder.write_bytes(EVIDENCE_FILE, evidence_parquet(table))
