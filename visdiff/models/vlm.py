"""Vision-language chat model for the Serve app: load (hub id, local folder or a tiny random
LLaVA) and answer OpenAI-format messages whose content mixes text and inline images.

Sampling is `models.llm`'s: `generate()` runs greedy over scores on which the seeded draw has
already picked the token, so an answer depends on the request's seed only, even with several
requests in flight on one replica. Images arrive as base64 `data:` URLs (the protocol layer has
already refused anything else); they are decoded here, upright and RGB, for the processor.
"""

from __future__ import annotations

import base64
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from visdiff.config import TINY, TINY_VLM
from visdiff.errors import InputError, ModelUnavailableError, first_line

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
# config.json model_type of common VLMs; any config with a vision_config counts as well.
VLM_MODEL_TYPES = frozenset(
    {
        "llava",
        "llava_next",
        "llava_onevision",
        "llava_next_video",
        "qwen2_vl",
        "qwen2_5_vl",
        "qwen3_vl",
        "idefics2",
        "idefics3",
        "smolvlm",
        "paligemma",
        "mllama",
        "gemma3",
        "internvl",
        "pixtral",
        "mistral3",
        "phi3_v",
        "blip-2",
        "instructblip",
    }
)
# Role-tagged like models.llm's plain template; image parts become the processor's image token.
# Newlines are written as expressions: the chat template renderer trims those after block tags.
TINY_VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>{{ '\\n' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}" + IMAGE_TOKEN + "{% elif part['type'] == 'text' %}"
    "{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}{{ '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{{ '\\n' }}{% endif %}"
)


@dataclass
class VLMBundle:
    model: Any  # a transformers image-text-to-text model, in eval mode
    processor: Any  # its processor: chat template, tokenizer and image processor
    device: torch.device

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def context_length(self) -> int | None:
        config = self.model.config
        text_config = getattr(config, "text_config", None) or config
        return getattr(text_config, "max_position_embeddings", None)

    @property
    def image_token_id(self) -> int | None:
        config = self.model.config
        for name in ("image_token_id", "image_token_index"):
            value = getattr(config, name, None)
            if isinstance(value, int):
                return value
        return None


def _read_config(model: str) -> dict[str, Any] | None:
    """config.json of a local folder or hub repo (the hub only when allowed); None if unknown."""
    path = Path(model).expanduser()
    try:
        if path.is_dir():
            file = path / "config.json"
        else:
            from huggingface_hub import hf_hub_download

            file = Path(hf_hub_download(model, "config.json", etag_timeout=10))
        return json.loads(file.read_text(encoding="utf-8"))
    except Exception:  # noqa: BLE001 - missing, offline, malformed: "unknown" is the answer
        return None


def is_vlm(model: str, *, default: bool = False) -> bool:
    """Whether `model` takes images: tiny-vlm does, tiny does not; for other names their
    config.json decides (a known VLM model_type, or a vision_config). `default` answers when
    the config cannot be read (not cached while offline, no such folder)."""
    if model == TINY_VLM:
        return True
    if model == TINY:
        return False
    config = _read_config(model)
    if not isinstance(config, dict):
        return default
    return config.get("model_type") in VLM_MODEL_TYPES or "vision_config" in config


def _tiny_vlm() -> tuple[Any, Any]:
    """A randomly initialised LLaVA (2-layer CLIP vision tower on 32 px images, 2-layer Qwen2)
    with the byte-level tokenizer plus an image token: offline, deterministic."""
    from transformers import (
        ByT5Tokenizer,
        CLIPImageProcessor,
        CLIPVisionConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaProcessor,
    )

    from visdiff.models.llm import seeded_init, tiny_text_config

    tokenizer = ByT5Tokenizer()
    # Extended, not replaced: the byte tokenizer's own extra ids stay special (skipped on decode).
    tokenizer.add_special_tokens(
        {"extra_special_tokens": [IMAGE_TOKEN]}, replace_extra_special_tokens=False
    )
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    side, patch = 32, 8
    vision = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=side,
        patch_size=patch,
        projection_dim=32,
    )
    text = tiny_text_config(tokenizer)
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=image_token_id,
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",  # drops CLS: (32/8)^2 = 16 tokens per image
    )
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(
            size={"shortest_edge": side}, crop_size={"height": side, "width": side}
        ),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        image_token=IMAGE_TOKEN,
        chat_template=TINY_VLM_CHAT_TEMPLATE,
    )
    return seeded_init(lambda: LlavaForConditionalGeneration(config)), processor


def _pretrained_vlm(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from visdiff.models.llm import pretrained_pair

    model, processor = pretrained_pair(
        "VLM", name, AutoModelForImageTextToText, AutoProcessor, dtype, tiny=TINY_VLM
    )
    if getattr(processor, "chat_template", None) is None:
        raise ModelUnavailableError(
            f"VLM '{name}' has no chat template in its processor, so its prompt format is "
            "unknown; use a chat-tuned VLM (e.g. llava-hf/llava-1.5-7b-hf)"
        )
    return model, processor


def load_vlm(model: str, *, num_gpus: float = 0, precision: str = "fp32") -> VLMBundle:
    """Load a VLM in eval mode; `model="tiny-vlm"` builds a random one (tests, offline)."""
    from visdiff.models.llm import load_in_eval

    net, processor, device = load_in_eval(
        model, num_gpus, precision, (TINY_VLM, _tiny_vlm), _pretrained_vlm
    )
    return VLMBundle(model=net, processor=processor, device=device)


def _data_url_bytes(url: str) -> bytes:
    header, sep, payload = url.partition(",")
    if not url.startswith("data:") or not sep or not header.endswith(";base64"):
        raise InputError("an image must be a base64 data: URL (data:image/jpeg;base64,...)")
    try:
        return base64.b64decode("".join(payload.split()), validate=True)
    except ValueError:
        raise InputError("an image's data: URL holds invalid base64 data") from None


def _decode(data: bytes, index: int) -> Any:
    """Upright 8-bit RGB; a broken image is the request's fault (a 400), not the server's."""
    from PIL import Image, ImageOps

    try:
        image = Image.open(io.BytesIO(data))
        image.load()
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "P"):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")
    except Exception as exc:  # noqa: BLE001 - any decoder failure (incl. PIL's bomb guard)
        raise InputError(
            f"image {index} of the request cannot be decoded ({first_line(exc, typed=True)}); "
            "send a JPEG or PNG"
        ) from None


def split_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[Any]]:
    """OpenAI messages -> (the processor's conversation: content as parts, an image part as
    {"type": "image"}; the decoded images in order)."""
    conversation: list[dict[str, Any]] = []
    images: list[Any] = []
    for message in messages:
        content = message.get("content")
        if content is None or isinstance(content, str):
            parts = [{"type": "text", "text": content or ""}]
        else:
            parts = []
            for part in content:
                kind = part.get("type")
                if kind == "text":
                    parts.append({"type": "text", "text": str(part.get("text", ""))})
                elif kind == "image_url":
                    url = str((part.get("image_url") or {}).get("url", ""))
                    images.append(_decode(_data_url_bytes(url), len(images)))
                    parts.append({"type": "image"})
                else:
                    raise InputError(f"content part type {kind!r} is not one of: text, image_url")
        conversation.append({"role": message["role"], "content": parts})
    return conversation, images


@dataclass(frozen=True)
class VLMAnswer:
    text: str
    finish_reason: str  # "stop", or "length" when cut at max_tokens
    prompt_tokens: int  # image tokens included
    completion_tokens: int


def vlm_reply(
    bundle: VLMBundle,
    messages: list[dict[str, Any]],
    *,
    max_tokens: int,
    temperature: float,
    seed: int | None = None,
    top_p: float = 1.0,
) -> VLMAnswer:
    """One answer with token counts (for the Serve app's usage field)."""
    import torch

    from visdiff.models.llm import _eos_ids, decode_new_tokens, decoding_settings, token_budget

    if max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    conversation, images = split_messages(messages)
    processor = bundle.processor
    text = processor.apply_chat_template(conversation, add_generation_prompt=True, tokenize=False)
    try:
        inputs = processor(
            text=text, images=images or None, return_tensors="pt", add_special_tokens=False
        )
    except ValueError as exc:  # e.g. more images than the template placed
        raise InputError(f"the images do not fit the prompt: {first_line(exc)}") from None
    inputs = inputs.to(device=bundle.device, dtype=bundle.dtype)
    prompt_tokens = int(inputs["input_ids"].shape[1])
    limit = token_budget(
        prompt_tokens,
        bundle.context_length,
        max_tokens,
        counted=" (images included)",
        fix="send fewer images or shorter messages",
    )
    eos = _eos_ids(bundle)  # type: ignore[arg-type]  # reads .model and .tokenizer only
    image_token = bundle.image_token_id
    with torch.inference_mode():
        output = bundle.model.generate(
            **inputs,
            max_new_tokens=limit,
            suppress_tokens=[image_token] if image_token is not None else None,
            **decoding_settings(bundle, eos, temperature, top_p, seed),
        )
    answer, completion_tokens, stopped = decode_new_tokens(bundle, output, prompt_tokens, eos)
    finish = "length" if not stopped and completion_tokens >= limit else "stop"
    return VLMAnswer(answer, finish, prompt_tokens, completion_tokens)


def generate_vlm_chat(
    bundle: VLMBundle, messages: list[dict[str, Any]], **sampling: Any
) -> tuple[str, str]:
    """(text, finish_reason) for OpenAI-format messages; `sampling` is `vlm_reply`'s keywords
    (greedy at temperature 0, else sampled from `seed`). Text-only messages work too (a VLM can
    stand in for the LLM)."""
    answer = vlm_reply(bundle, messages, **sampling)
    return answer.text, answer.finish_reason
