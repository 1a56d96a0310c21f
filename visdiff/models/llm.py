"""Causal chat LLM for the Serve app: load (hub id, local folder or a tiny random model) and
generate one answer.

Generation is a short explicit decoding loop rather than `model.generate`, because sampling must
draw from a `torch.Generator` seeded per request: the global RNG is shared by the threads that
serve concurrent requests, so seeding it would not make answers reproducible.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch

from visdiff.errors import InputError, ModelUnavailableError
from visdiff.models.device import pick_device, torch_dtype

logger = logging.getLogger(__name__)

TINY = "tiny"
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


def _tiny_model() -> tuple[Any, Any]:
    """A randomly initialised 2-layer Qwen2 with a byte-level tokenizer: offline, deterministic."""
    from transformers import ByT5Tokenizer, Qwen2Config, Qwen2ForCausalLM

    tokenizer = ByT5Tokenizer()
    tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    config = Qwen2Config(
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
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = Qwen2ForCausalLM(config)
    return model, tokenizer


def _pretrained_model(name: str, dtype: torch.dtype) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
        model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelUnavailableError(
            f"LLM '{name}' cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
            "give a local folder with the weights, download it with `hf download` while online, "
            "or use llm.model=tiny"
        ) from None
    if tokenizer.chat_template is None:
        logger.warning("tokenizer of '%s' has no chat template; using a plain one", name)
        tokenizer.chat_template = SIMPLE_CHAT_TEMPLATE
    return model, tokenizer


def load_chat_model(model: str, *, num_gpus: float = 0, precision: str = "fp32") -> ChatModelBundle:
    """Load a causal chat LM in eval mode; `model="tiny"` builds a random one (tests, offline)."""
    device = pick_device(num_gpus)
    dtype = torch_dtype(precision, device)
    if model == TINY:
        net, tokenizer = _tiny_model()
        net = net.to(dtype=dtype)
    else:
        net, tokenizer = _pretrained_model(model, dtype)
    net = net.to(device).eval()
    return ChatModelBundle(model=net, tokenizer=tokenizer, device=device)


def _eos_ids(bundle: ChatModelBundle) -> set[int]:
    ids: set[int] = set()
    for source in (bundle.model.generation_config, bundle.model.config, bundle.tokenizer):
        value = getattr(source, "eos_token_id", None)
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return ids


def _new_cache_kwargs(model: Any) -> dict[str, Any]:
    """A KV cache the model fills in place; transformers 5 renamed `past_key_values` to `cache`."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    params = inspect.signature(model.forward).parameters
    return {"cache": cache} if "cache" in params else {"past_key_values": cache}


def _sample(
    logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator
) -> int:
    """Temperature + nucleus sampling from one row of logits, drawing from `generator`."""
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = cumulative - sorted_probs < top_p  # always keeps the most likely token
        sorted_probs = torch.where(keep, sorted_probs, torch.zeros_like(sorted_probs))
        choice = torch.multinomial(sorted_probs, 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def encode_chat(bundle: ChatModelBundle, messages: list[dict[str, str]]) -> torch.Tensor:
    """Chat template -> token ids (1, n); the template already holds any BOS it needs."""
    text = bundle.tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True
    )
    encoded = bundle.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    return encoded["input_ids"].to(bundle.device)


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

    Greedy when temperature == 0, else sampling seeded by `seed` (None: a random seed). The
    completion count excludes the end-of-sequence token, so it equals `max_tokens` exactly when
    the answer was cut off by the length limit.
    """
    if max_tokens < 1:
        raise InputError(f"max_tokens must be >= 1, got {max_tokens}")
    input_ids = encode_chat(bundle, messages)
    prompt_tokens = int(input_ids.shape[1])
    context = bundle.context_length
    if context is not None and prompt_tokens >= context:
        raise InputError(
            f"prompt has {prompt_tokens} tokens but the model's context is {context}; "
            "send fewer or shorter messages"
        )
    if context is not None:
        max_tokens = min(max_tokens, context - prompt_tokens)

    generator = torch.Generator(device=bundle.device)
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(int(seed))
    eos = _eos_ids(bundle)

    new_tokens: list[int] = []
    cache_kwargs = _new_cache_kwargs(bundle.model)
    step_input = input_ids
    for _ in range(max_tokens):
        out = bundle.model(input_ids=step_input, use_cache=True, **cache_kwargs)
        logits = out.logits[0, -1]
        if temperature == 0:
            token = int(torch.argmax(logits))
        else:
            token = _sample(logits, temperature, top_p, generator)
        if token in eos:
            break
        new_tokens.append(token)
        step_input = torch.tensor([[token]], device=bundle.device)
    text = bundle.tokenizer.decode(new_tokens, skip_special_tokens=True)
    if not isinstance(text, str):  # defensive: some tokenizers return bytes-like odds
        text = str(text)
    text = text.encode("utf-8", errors="replace").decode("utf-8", errors="replace")
    return text, prompt_tokens, len(new_tokens)
