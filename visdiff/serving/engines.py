"""Inference engines behind the Serve app: one request in, one OpenAI-shaped response out.

The mapping from protocol fields to generation parameters happens here, once, so the HTTP layer
and the model code never see each other's types. One engine class serves both kinds of model:
a vision-language model (`models.vlm.is_vlm`) takes text and images, a text-only LLM refuses a
request with images (a 400 that names the fix) rather than silently dropping them.
"""

from __future__ import annotations

from typing import Any

from visdiff.errors import InputError
from visdiff.llm.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Usage,
)

DEFAULT_MAX_TOKENS = 256  # when a request leaves max_tokens out


def no_images_message(model: str) -> str:
    return (
        f"model '{model}' does not take images; use a VLM (llm.model=tiny-vlm or a "
        "LLaVA-style hub model)"
    )


class TransformersChatEngine:
    """A Hugging Face causal LM or VLM (or a tiny random one) run in-process on CPU or one GPU."""

    def __init__(
        self,
        model: str,
        *,
        num_gpus: float = 0,
        precision: str = "fp32",
        served_model_name: str | None = None,
    ) -> None:
        from visdiff.models.vlm import is_vlm

        self.model_name = model
        self.served_model_name = served_model_name or model
        self.takes_images = is_vlm(model)
        self._bundle: Any
        if self.takes_images:
            from visdiff.models.vlm import load_vlm

            self._bundle = load_vlm(model, num_gpus=num_gpus, precision=precision)
        else:
            from visdiff.models.llm import load_chat_model

            self._bundle = load_chat_model(model, num_gpus=num_gpus, precision=precision)

    def _generate(
        self, request: ChatCompletionRequest, max_tokens: int
    ) -> tuple[str, str, int, int]:
        """(text, finish_reason, prompt tokens, completion tokens)."""
        if self.takes_images:
            from visdiff.models.vlm import vlm_reply

            messages = [m.model_dump(exclude_none=True) for m in request.messages]
            answer = vlm_reply(
                self._bundle,
                messages,
                temperature=request.temperature,
                max_tokens=max_tokens,
                seed=request.seed,
                top_p=request.top_p,
            )
            return (
                answer.text,
                answer.finish_reason,
                answer.prompt_tokens,
                answer.completion_tokens,
            )
        if request.has_images():
            raise InputError(no_images_message(self.model_name))
        from visdiff.models.llm import generate_chat

        text, prompt_tokens, completion_tokens = generate_chat(
            self._bundle,
            [{"role": m.role, "content": m.text()} for m in request.messages],
            temperature=request.temperature,
            max_tokens=max_tokens,
            seed=request.seed,
            top_p=request.top_p,
        )
        finish_reason = "length" if completion_tokens >= max_tokens else "stop"
        return text, finish_reason, prompt_tokens, completion_tokens

    def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        text, finish_reason, prompt_tokens, completion_tokens = self._generate(request, max_tokens)
        text, stopped = _cut_at_stop(text, request.stop_strings())
        if stopped:
            finish_reason = "stop"
        return ChatCompletionResponse(
            model=self.served_model_name,
            choices=[
                ChatChoice(
                    index=0,
                    message=ChatMessage(role="assistant", content=text),
                    finish_reason=finish_reason,
                )
            ],
            usage=Usage(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            ),
        )


def _cut_at_stop(text: str, stops: list[str]) -> tuple[str, bool]:
    """OpenAI semantics: the answer ends before the earliest stop string, which is not returned."""
    cuts = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not cuts:
        return text, False
    return text[: min(cuts)], True
