"""A `ChatClient` that answers a question it has seen before from an answer cache.

The cache is duck-typed (`key`, `get`, `put`: `visdiff.cache.answers.AnswerCache`), since llm/
may not import cache/. Only whole answers are stored: a failed call raises and stores nothing.
The key covers the model identity (not the name the server answers to: our Serve app answers to
one name whatever model it runs), the messages as sent and the sampling settings with the seed.
"""

from __future__ import annotations

from typing import Any, Protocol

from visdiff.llm.client import (
    ChatClient,
    ChatReply,
    ClientSettings,
    ClosingClient,
    Messages,
    UsageCounter,
    merge_usage,
    usage_of,
)


class AnswerStore(Protocol):
    def key(self, model: str, messages: Messages, sampling: dict[str, Any]) -> str: ...

    def get(self, key: str) -> dict[str, Any] | None: ...

    def put(self, key: str, answer: dict[str, Any]) -> None: ...


def _identity_of(client: object) -> str:
    settings = getattr(client, "settings", None)
    if isinstance(settings, ClientSettings):
        return settings.model_identity
    return str(getattr(client, "identity", "") or getattr(client, "model", ""))


class CachingChatClient(ClosingClient):
    """`inner` behind an answer cache; `usage()` adds the answers served from it (`cached`)."""

    def __init__(self, inner: ChatClient, cache: AnswerStore, *, model_id: str = "") -> None:
        self.inner = inner
        self.cache = cache
        self.model_id = model_id or _identity_of(inner)
        if not self.model_id:
            raise ValueError("CachingChatClient needs the model identity for its cache keys")
        self._usage = UsageCounter()

    @property
    def settings(self) -> ClientSettings:
        """The inner client's settings, so Ray actors call the same endpoint."""
        return self.inner.settings  # type: ignore[attr-defined]

    @property
    def model(self) -> str:
        return str(getattr(self.inner, "model", self.model_id))

    def usage(self) -> dict[str, int]:
        return merge_usage(usage_of(self.inner), self._usage.snapshot())

    def close(self) -> None:
        close = getattr(self.inner, "close", None)
        if callable(close):
            close()

    def reply(
        self, messages: Messages, *, temperature: float, max_tokens: int, seed: int | None = None
    ) -> ChatReply:
        # Numbers are normalised so that temperature=0 and temperature=0.0 share one entry.
        sampling = {
            "temperature": float(temperature),
            "max_tokens": int(max_tokens),
            "seed": None if seed is None else int(seed),
        }
        key = self.cache.key(self.model_id, messages, sampling)
        stored = self.cache.get(key)
        if stored is not None and isinstance(stored.get("text"), str):
            self._usage.add(cached=1)
            return ChatReply(stored["text"], stored.get("finish_reason"), cached=True)
        reply = self.inner.reply(
            messages, temperature=temperature, max_tokens=max_tokens, seed=seed
        )
        self.cache.put(key, {"text": reply.text, "finish_reason": reply.finish_reason})
        return reply
