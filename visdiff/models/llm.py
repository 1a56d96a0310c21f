"""Causal chat LLM for the Serve app: load (hub id, local folder or a tiny random model) and
generate one answer.

Decoding is transformers' `generate()`. Its sampler draws from the global RNG, which the threads
serving concurrent requests share, so seeding it would not make an answer reproducible: instead
`generate()` runs greedy over scores on which `_SeededDraw` has already picked the one token,
drawn from a `torch.Generator` seeded per request.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from visdiff.config import TINY
from visdiff.errors import InputError, ModelUnavailableError, first_line
from visdiff.models.device import pick_device, torch_dtype

logger = logging.getLogger(__name__)

TINY_SEED = 0
# A plain role-tagged template: enough for `apply_chat_template` on a tokenizer that has none.
SIMPLE_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


@dataclass
class ChatModelBundle:
    model: Any  # a transformers PreTrainedModel with a causal LM head, in eval mode
    tokenizer: Any
    device: torch.device

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


def tiny_text_config(tokenizer: Any) -> Any:
    """The tiny models' 2-layer Qwen2 (the chat LLM, and the tiny VLM's language half)."""
    from transformers import Qwen2Config

    return Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=32768,
        tie_word_embeddings=False,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def seeded_init(build: Callable[[], Any]) -> Any:
    """`build()` under torch's global RNG seeded with TINY_SEED (restored afterwards): a tiny
    random model gets the same weights every time without disturbing anyone else's draws."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        return build()


def pretrained_pair(
    label: str, name: str, model_cls: Any, companion_cls: Any, dtype: torch.dtype, *, tiny: str
) -> tuple[Any, Any]:
    """(model, its tokenizer or processor) from a hub id or local folder; an unloadable one is
    a one-line ModelUnavailableError naming `label`, `name` and the fixes (`tiny`: offline)."""
    try:
        companion = companion_cls.from_pretrained(name)
        model = model_cls.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"{label} '{name}' cannot be loaded ({first_line(exc, typed=True)}); "
            "give a local folder with the weights, download it with `hf download` while online, "
            f"or use llm.model={tiny}"
        ) from None
    return model, companion


def load_in_eval(
    model: str,
    num_gpus: float,
    precision: str,
    tiny: tuple[str, Callable[[], tuple[Any, Any]]],
    load_pretrained: Callable[[str, torch.dtype], tuple[Any, Any]],
) -> tuple[Any, Any, torch.device]:
    """(model in eval mode on its device, its companion, the device): `model` named as
    `tiny` = (name, build) is built by `build()`, any other goes to `load_pretrained(name, dtype)`."""
    device = pick_device(num_gpus)
    dtype = torch_dtype(precision, device)
    tiny_name, build_tiny = tiny
    if model == tiny_name:
        net, companion = build_tiny()
        net = net.to(dtype=dtype)
    else:
        net, companion = load_pretrained(model, dtype)
    return net.to(device).eval(), companion, device


def _tiny_model() -> tuple[Any, Any]:
    """A randomly initialised 2-layer Qwen2 with a byte-level tokenizer: offline, deterministic."""
    from transformers import ByT5Tokenizer, Qwen2ForCausalLM

    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    config = tiny_text_config(tokenizer)
    return seeded_init(lambda: Qwen2ForCausalLM(config)), tokenizer


def _pretrained_model(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer = pretrained_pair(
        "LLM", name, AutoModelForCausalLM, AutoTokenizer, dtype, tiny=TINY
    )
    if tokenizer.chat_template is None:
        logger.warning("tokenizer of '%s' has no chat template; using a plain one", name)
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return model, tokenizer


def load_chat_model(model: str, *, num_gpus: float = 0, precision: str = "fp32") -> ChatModelBundle:
    """Load a causal chat LM in eval mode; `model="tiny"` builds a random one (tests, offline)."""
    net, tokenizer, device = load_in_eval(
        model, num_gpus, precision, (TINY, _tiny_model), _pretrained_model
    )
    return ChatModelBundle(model=net, tokenizer=tokenizer, device=device)


def _eos_ids(bundle: ChatModelBundle) -> list[int]:
    ids: set[int] = set()
    for source in (bundle.model.generation_config, bundle.model.config, bundle.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return sorted(ids)


class _SeededDraw:
    """Logits processor that samples the next token from `generator` and leaves it the only
    finite score, so `generate()`'s greedy step takes exactly that draw."""

    def __init__(self, generator: torch.Generator) -> None:
        self.generator = generator

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(scores, dim=-1)
        choice = torch.multinomial(probs, 1, generator=self.generator)
        drawn = torch.full_like(scores, -math.inf)
        return drawn.scatter(-1, choice, scores.gather(-1, choice))


def _sampling_processors(
    temperature: float, top_p: float, seed: int | None, device: torch.device
) -> Any:
    """Temperature and nucleus warpers from transformers, then the seeded draw."""
    from transformers import (
        LogitsProcessorList,
        TemperatureLogitsWarper,
        TopPLogitsWarper,
    )

    generator = torch.Generator(device=device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    processors = LogitsProcessorList([TemperatureLogitsWarper(temperature)])
    if top_p < 1.0:
        processors.append(TopPLogitsWarper(top_p))
    processors.append(_SeededDraw(generator))
    return processors


def encode_chat(bundle: ChatModelBundle, messages: list[dict[str, str]]) -> torch.Tensor:
    """Chat template -> token ids (1, n); the template already holds any BOS it needs."""
    text = bundle.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    encoded = bundle.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return encoded["input_ids"].to(bundle.device)


def token_budget(
    prompt_tokens: int,
    context: int | None,
    max_tokens: int,
    *,
    counted: str = "",
    fix: str = "send fewer or shorter messages",
) -> int:
    """New tokens allowed: `max_tokens`, cut to what the context leaves; a prompt that fills the
    context is the request's fault (`counted` says what the count includes, `fix` the remedy)."""
    if context is None:
        return max_tokens
    if prompt_tokens >= context:
        raise InputError(
            f"prompt has {prompt_tokens} tokens{counted} but the model's context is {context}; "
            f"{fix}"
        )
    return min(max_tokens, context - prompt_tokens)


def decoding_settings(
    bundle: Any, eos: list[int], temperature: float, top_p: float, seed: int | None
) -> dict[str, Any]:
    """`generate()` keywords for one request (`bundle`: .tokenizer and .device): greedy over
    `_SeededDraw`'s pick, so only the request's settings decide and a hub model's own sampling
    defaults (repetition penalty, top-k) are switched off."""
    pad = bundle.tokenizer.pad_token_id
    return {
        "do_sample": False,  # the draw, if any, is `_SeededDraw`'s
        "logits_processor": (
            None
            if temperature == 0
            else _sampling_processors(temperature, top_p, seed, bundle.device)
        ),
        "eos_token_id": eos or None,
        "pad_token_id": pad if pad is not None else (eos[0] if eos else None),
        "repetition_penalty": 1.0,
    }


def decode_new_tokens(
    bundle: Any, output: torch.Tensor, prompt_tokens: int, eos: list[int]
) -> tuple[str, int, bool]:
    """(text, completion tokens without the end-of-sequence token, whether it stopped on one)
    for the first sequence of `generate()`'s output; text is valid UTF-8 whatever the bytes."""
    new_tokens = output[0, prompt_tokens:].tolist()
    stopped = bool(new_tokens) and new_tokens[-1] in eos
    if stopped:
        new_tokens.pop()
    text = bundle.tokenizer.decode(new_tokens, skip_special_tokens=True)
    # str(): defensive, some tokenizers return bytes-like odds.
    text = str(text).encode("utf-8", errors="replace").decode("utf-8", errors="replace")
    return text, len(new_tokens), stopped


@torch.inference_mode()
def generate_chat(
    bundle: ChatModelBundle,
    messages: list[dict[str, str]],
    *,
    temperature: float,
    max_tokens: int,
    seed: int | None = None,
    top_p: float = 1.0,
) -> tuple[str, int, int]:
    """One answer: (text, prompt tokens, completion tokens).

    Greedy when temperature == 0, else sampling seeded by `seed` (None: a random seed). Only the
    request's settings decide: a hub model's own sampling defaults (repetition penalty, top-k)
    are switched off. The completion count excludes the end-of-sequence token, so it equals
    `max_tokens` exactly when the answer was cut off by the length limit.
    """
    if max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    input_ids = encode_chat(bundle, messages)
    prompt_tokens = int(input_ids.shape[1])
    max_tokens = token_budget(prompt_tokens, bundle.context_length, max_tokens)
    eos = _eos_ids(bundle)
    output = bundle.model.generate(
        input_ids,
        attention_mask=torch.ones_like(input_ids),
        max_new_tokens=max_tokens,
        **decoding_settings(bundle, eos, temperature, top_p, seed),
    )
    text, completion_tokens, _ = decode_new_tokens(bundle, output, prompt_tokens, eos)
    return text, prompt_tokens, completion_tokens
