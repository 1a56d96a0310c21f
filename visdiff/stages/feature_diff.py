"""The `feature` proposer's model part (the VisDiff paper's BLIP-2 feature baseline): the mean
image feature of set A minus that of set B, decoded to text by the captioner's language model.

"Image feature" is the output of the captioner's vision encoder (one vector per patch), averaged
over a set position by position, so the difference has the shape of one image's features and the
language side can read it as if it were an image: BLIP's text decoder cross-attends to it; BLIP-2
passes it through its Q-former and language projection into the LM, as it would an image.
A − B keeps what is in A and not in B.

No LLM is involved: the texts are the hypotheses. Decoding samples (seeded, so a seed gives the
same texts) and keeps the distinct non-empty ones.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image

from visdiff.config import CaptionerConfig
from visdiff.errors import InputError

log = logging.getLogger(__name__)

# Sampled decodes per text asked for: duplicates and empty texts are dropped afterwards.
OVERSAMPLE = 3
TOP_P = 0.9

_loaded: dict[tuple[Any, ...], Any] = {}  # one captioner per process, like the caption stage


@dataclass
class FeatureTexts:
    """The decoded texts and the images left out because they could not be decoded."""

    texts: list[str]
    used_a: int
    used_b: int
    skipped: list[str] = field(default_factory=list)  # "a[3]: truncated: ..." per image left out


def _bundle(cfg: CaptionerConfig) -> Any:
    from visdiff.models.captioner import load_captioner

    key = (cfg.kind, cfg.model, cfg.precision, cfg.num_gpus > 0)
    if key not in _loaded:
        _loaded.clear()  # a different captioner replaces the last one: keep one in memory
        _loaded[key] = load_captioner(cfg)
    return _loaded[key]


def _decode(set_name: str, datas: list[bytes], skipped: list[str]) -> list[Image.Image]:
    from visdiff.sources.decode import decode_image
    from visdiff.stages.images import decode_error_text

    images = []
    for index, data in enumerate(datas):
        try:
            images.append(decode_image(data))
        except Exception as exc:  # ImageDecodeError, or a decoder bug: this image only
            skipped.append(f"{set_name}[{index}]: {decode_error_text(exc)}")
    return images


def mean_vision_features(bundle: Any, images: list[Image.Image], batch_size: int) -> torch.Tensor:
    """(patches, hidden) float32: the vision encoder's last hidden state averaged over images."""
    total: torch.Tensor | None = None
    for start in range(0, len(images), max(1, batch_size)):
        batch = images[start : start + batch_size]
        pixels = bundle.processor.image_processor(batch, return_tensors="pt")["pixel_values"]
        pixels = pixels.to(device=bundle.device, dtype=bundle.dtype)
        with torch.inference_mode():
            hidden = bundle.model.vision_model(pixel_values=pixels).last_hidden_state
        summed = hidden.float().sum(dim=0)
        total = summed if total is None else total + summed
    assert total is not None, "mean of no images"
    return total / len(images)


def _sampling(num_texts: int, max_new_tokens: int) -> dict[str, Any]:
    return {
        "do_sample": True,
        "top_p": TOP_P,
        "top_k": 0,
        "temperature": 1.0,
        "num_return_sequences": num_texts * OVERSAMPLE,
        "max_new_tokens": max_new_tokens,
    }


def _decode_blip(
    bundle: Any, features: torch.Tensor, prompt: str | None, sampling: dict[str, Any]
) -> torch.Tensor:
    """BLIP: the text decoder cross-attends to `features` as the encoder states of one image;
    returns only the generated tokens (the prompt is not repeated)."""
    model, tokenizer = bundle.model, bundle.processor.tokenizer
    text_cfg = model.config.text_config
    if prompt:  # as BLIP's own generate: [CLS] prompt [SEP] -> [BOS] prompt
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"][:, :-1]
        ids[:, 0] = text_cfg.bos_token_id
    else:
        ids = torch.tensor([[text_cfg.bos_token_id]])
    ids = ids.to(bundle.device)
    states = features.to(device=bundle.device, dtype=bundle.dtype).unsqueeze(0)
    with torch.inference_mode():
        out = model.text_decoder.generate(
            input_ids=ids,
            eos_token_id=text_cfg.sep_token_id,
            pad_token_id=text_cfg.pad_token_id,
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(
                states.shape[:-1], dtype=torch.long, device=ids.device
            ),
            **sampling,
        )
    return out[:, ids.shape[1] :]


def _decode_blip2(
    bundle: Any, features: torch.Tensor, prompt: str | None, sampling: dict[str, Any]
) -> torch.Tensor:
    """BLIP-2: Q-former queries over `features`, projected into the LM's input embeddings and
    followed by the prompt's; the LM generates from those embeddings (new tokens only)."""
    model, tokenizer = bundle.model, bundle.processor.tokenizer
    states = features.to(device=bundle.device, dtype=bundle.dtype).unsqueeze(0)
    with torch.inference_mode():
        queries = model.query_tokens.expand(1, -1, -1)
        query_out = model.qformer(
            query_embeds=queries,
            encoder_hidden_states=states,
            encoder_attention_mask=torch.ones(
                states.shape[:-1], dtype=torch.long, device=states.device
            ),
            return_dict=True,
        ).last_hidden_state
        image_embeds = model.language_projection(query_out.to(states.dtype))
        ids = tokenizer(prompt or "", return_tensors="pt")["input_ids"].to(bundle.device)
        lm_cfg = model.language_model.config
        if not lm_cfg.is_encoder_decoder and ids.shape[1] > 1 and ids[0, -1] == lm_cfg.eos_token_id:
            ids = ids[:, :-1]  # a decoder-only LM must not start after an end-of-text token
        text_embeds = model.get_input_embeddings()(ids).to(image_embeds.dtype)
        embeds = torch.cat([image_embeds, text_embeds], dim=1)
        mask = torch.ones(embeds.shape[:-1], dtype=torch.long, device=embeds.device)
        # Given only embeddings, generate returns only the new tokens.
        return model.language_model.generate(inputs_embeds=embeds, attention_mask=mask, **sampling)


def decode_difference(
    bundle: Any,
    features: torch.Tensor,
    *,
    num_texts: int,
    seed: int,
    prompt: str | None,
    max_new_tokens: int,
) -> list[str]:
    """Up to `num_texts` distinct, stripped, non-empty texts sampled from the captioner's
    language side conditioned on `features` (patches, hidden); the same seed, the same texts."""
    from transformers import Blip2ForConditionalGeneration

    decode = (
        _decode_blip2 if isinstance(bundle.model, Blip2ForConditionalGeneration) else _decode_blip
    )
    cuda = [bundle.device] if bundle.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        tokens = decode(bundle, features, prompt, _sampling(num_texts, max_new_tokens))
    texts = []
    for text in bundle.processor.tokenizer.batch_decode(tokens, skip_special_tokens=True):
        text = " ".join(text.split())
        if text and text not in texts:
            texts.append(text)
    return texts[:num_texts]


def feature_difference_texts(
    cfg: CaptionerConfig,
    images_a: list[bytes],
    images_b: list[bytes],
    *,
    num_texts: int,
    seed: int,
) -> FeatureTexts:
    """Texts describing mean feature(A) − mean feature(B), decoded by the captioner `cfg` names
    (loaded once per process). Undecodable images are left out and listed in `skipped`; a set
    with no decodable image is an InputError."""
    if num_texts < 1:
        raise ValueError(f"num_texts must be >= 1, got {num_texts}")
    skipped: list[str] = []
    decoded = {"a": _decode("a", images_a, skipped), "b": _decode("b", images_b, skipped)}
    for set_name, images in decoded.items():
        if not images:
            raise InputError(
                f"propose.proposer=feature: no image of set {set_name} in this round could be "
                "decoded (see the decode errors); check the images of that set"
            )
    if skipped:
        log.warning("feature proposer: %d undecodable images left out", len(skipped))
    bundle = _bundle(cfg)
    mean_a, mean_b = (mean_vision_features(bundle, decoded[s], cfg.batch_size) for s in "ab")
    texts = decode_difference(
        bundle,
        mean_a - mean_b,
        num_texts=num_texts,
        seed=seed,
        prompt=cfg.prompt,
        max_new_tokens=cfg.max_new_tokens,
    )
    return FeatureTexts(texts, len(decoded["a"]), len(decoded["b"]), skipped)
