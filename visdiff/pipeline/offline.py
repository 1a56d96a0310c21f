"""The offline ranking path (rank.ranker=caption, preset models=offline): the input's own
captions stand in for the images, and a small sentence-embedding model stands in for CLIP.

Every image of both sets (capped as for CLIP) is kept when it has a caption and its file
decodes; its "embedding" is its caption's sentence vector, so `EmbeddedImages` is filled as the
CLIP path fills it and the same scoring, statistics, report and stats.json follow unchanged.
Images without a caption are left out, each recorded with reason `no_caption`. Captions are
embedded on the driver: a sentence model on a few short texts costs less than starting an actor,
and this mode is for a laptop-sized run, not a web-scale one.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from visdiff import schema
from visdiff.config import DataConfig, SentenceConfig
from visdiff.models.sentence import SentenceModel, load_sentence_model
from visdiff.pipeline.graph import EmbeddedImages, ranking_dataset
from visdiff.sources.plan import InputPlan
from visdiff.sources.subset import cap_records
from visdiff.stages.images import Batch, decode_all, load_bytes, strings

NO_CAPTION = "no_caption: the input has no caption for this image, and the ranker reads captions"
_ROW_COLUMNS = [schema.ID, schema.SET, schema.URI, schema.CAPTION, schema.ERROR]
CHECK_CHUNK = 64  # images per decode check on the driver
CHECK_THREADS = 4
ROWS_PER_BLOCK = 4096  # embedded rows per block of the dataset handed to the scoring


def check_captioned(batch: Batch) -> Batch:
    """ERROR per row: `no_caption` without a caption, else the read/decode error of its file
    ("" when it decodes), so a broken file is skipped here as it is on the CLIP path."""
    n = len(batch[schema.ID])
    captions = [str(c or "").strip() for c in batch.get(schema.CAPTION, [""] * n)]
    before = [str(e) for e in batch.get(schema.ERROR, [""] * n)]
    before = [e or ("" if c else NO_CAPTION) for e, c in zip(before, captions, strict=True)]
    datas, errors = load_bytes({**batch, schema.ERROR: strings(before)})  # uncaptioned: unread
    decode_all(datas, errors)
    return {
        schema.ID: batch[schema.ID],
        schema.SET: batch[schema.SET],
        schema.URI: batch[schema.URI],
        schema.CAPTION: strings(captions),
        schema.ERROR: strings(errors),
    }


class CaptionRanker:
    """The run's sentence model (loaded once, on first use, from any thread) and the two
    embeddings the ranking needs: every image's caption, then the hypotheses."""

    def __init__(self, cfg: SentenceConfig) -> None:
        self._cfg = cfg
        self._model: SentenceModel | None = None
        self._lock = threading.Lock()

    def _loaded(self) -> SentenceModel:
        with self._lock:
            if self._model is None:
                self._model = load_sentence_model(self._cfg)
            return self._model

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) unit vectors: the hypotheses' side of the cosine similarity."""
        return self._loaded().encode(texts)

    def embed_images(self, plan: InputPlan, data: DataConfig, *, seed: int) -> EmbeddedImages:
        """Every image row of both sets, embedded by its caption; rows that fail keep a zero
        vector and their ERROR (scoring skips them; stats.json lists them)."""
        import ray.data

        rows = _checked_rows(plan, data, seed=seed)
        ok = [i for i, r in enumerate(rows) if not r[schema.ERROR]]
        vectors = self.embed_texts([rows[i][schema.CAPTION] for i in ok])
        embedding = np.zeros((len(rows), vectors.shape[1]), np.float32)
        embedding[ok] = vectors
        items = [
            {**{k: r[k] for k in _ROW_COLUMNS if k != schema.CAPTION}, schema.EMBEDDING: e}
            for r, e in zip(rows, embedding, strict=True)
        ]
        blocks = max(1, min(64, len(items) // ROWS_PER_BLOCK))
        dataset = ray.data.from_items(items, override_num_blocks=blocks)
        return EmbeddedImages(
            dataset,
            num_rows=len(rows),
            rows_per_set={s: sum(r[schema.SET] == s for r in rows) for s in schema.SETS},
            from_cache=0,
            skipped=[
                {k: r[k] for k in (schema.ID, schema.SET, schema.URI)} | {"reason": r[schema.ERROR]}
                for r in rows
                if r[schema.ERROR]
            ],
        )


def _checked_rows(plan: InputPlan, data: DataConfig, *, seed: int) -> list[dict[str, Any]]:
    """id, set, uri, caption and error of every image to rank. Listed sets are checked on the
    driver (a few threads: decoding releases the GIL), where a Ray Data pass would cost more than
    the work; shard sets are read and checked by Ray Data, and only these columns come back."""
    rows: list[dict[str, Any]] = []
    for p in plan.sets:
        if p.records is not None:
            capped = [r.to_dict() for r in cap_records(p.records, data.max_num_samples, seed)]
            chunks = [capped[i : i + CHECK_CHUNK] for i in range(0, len(capped), CHECK_CHUNK)]
            with ThreadPoolExecutor(max_workers=CHECK_THREADS) as pool:
                for checked in pool.map(_check_chunk, chunks):
                    rows += checked
        else:
            ds, _ = ranking_dataset(p, data, seed=seed)
            checked = ds.map_batches(check_captioned, batch_format="numpy")
            rows += checked.select_columns(_ROW_COLUMNS).take_all()
    return rows


def _check_chunk(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    batch = {k: np.array([r.get(k, "") for r in rows], dtype=object) for k in _ROW_COLUMNS}
    out = check_captioned(batch)
    return [{k: out[k][i] for k in _ROW_COLUMNS} for i in range(len(rows))]
