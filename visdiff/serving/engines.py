"""Inference engines behind the Serve app: one request in, one OpenAI-shaped response out.

The mapping from protocol fields to generation parameters happens here, once, so the HTTP layer
and the model code never see each other's types.
"""

from __future__ import annotations

from visdiff.llm.protocol import (
    ChatChoice,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatMessage,
    Usage,
)

DEFAULT_MAX_TOKENS = 256  # when a request leaves max_tokens out


class TransformersChatEngine:
    """A Hugging Face causal LM (or the tiny random one) run in-process on CPU or one GPU."""

    def __init__(
        self,
        model: str,
        *,
        num_gpus: float = 0,
        precision: str = "fp32",
        served_model_name: str | None = None,
    ) -> None:
        from visdiff.models.llm import load_chat_model

        self.model_name = model
        self.served_model_name = served_model_name or model
        self._bundle = load_chat_model(model, num_gpus=num_gpus, precision=precision)

    def chat(self, request: ChatCompletionRequest) -> ChatCompletionResponse:
        from visdiff.models.llm import generate_chat

        max_tokens = request.max_tokens or DEFAULT_MAX_TOKENS
        messages = [{"role": m.role, "content": m.content or ""} for m in request.messages]
        text, prompt_tokens, completion_tokens = generate_chat(
            self._bundle,
            messages,
            temperature=request.temperature,
            max_tokens=max_tokens,
            seed=request.seed,
            top_p=request.top_p,
        )
        finish_reason = "length" if completion_tokens >= max_tokens else "stop"
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
