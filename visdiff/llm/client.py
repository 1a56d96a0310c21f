"""Chat clients: the proposer and the judge talk to any LLM only through `ChatClient`.

`HTTPChatClient` wraps the `openai` SDK, so our Serve app, a vLLM server and OpenAI itself are
interchangeable; the SDK does the retries (connection errors, 408/409/429/5xx, with backoff that
honours `Retry-After`) and parses the typed `ChatCompletion`. What visdiff adds: a failed call
raises `LLMError` with one line naming the endpoint and the fix, error text is never returned as
if it were the model's answer, and the API key never appears in messages, logs or repr.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import openai
from openai.types.chat import ChatCompletion

from visdiff.errors import LLMError, first_line

_MAX_ERROR_CHARS = 500
# Local servers need no key, but the SDK insists on one: this one is sent and ignored.
_NO_KEY = "no-key"
_FIXES = {
    401: "check the key in the env var named by llm.api_key_env",
    403: "check the key in the env var named by llm.api_key_env",
    404: "check llm.base_url and the model name the server answers to",
    429: "the server is rate limiting: lower the load or raise the quota",
}


@dataclass(frozen=True)
class ChatReply:
    """One answer and why generation stopped: "stop", or "length" when cut at max_tokens."""

    text: str
    finish_reason: str | None


Messages = list[dict[str, str]]  # OpenAI chat messages: {role, content}


@runtime_checkable
class ChatClient(Protocol):
    """Anything that turns chat messages into one answer."""

    def reply(
        self, messages: Messages, *, temperature: float, max_tokens: int, seed: int | None = None
    ) -> ChatReply: ...


class HTTPChatClient:
    """Client for an OpenAI-compatible `/v1` endpoint; `max_retries` retries after the first try."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 2,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise LLMError(f"LLM base_url '{base_url}' must start with http:// or https://")
        if max_retries < 0:
            raise LLMError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self._api_key = api_key or None
        self._sdk: openai.OpenAI | None = None

    @classmethod
    def from_env(
        cls,
        base_url: str,
        model: str,
        api_key_env: str,
        **kwargs: Any,
    ) -> HTTPChatClient:
        """Read the key from the env var *named* by the config; local servers need none."""
        api_key = os.environ.get(api_key_env) if api_key_env else None
        return cls(base_url, model, api_key=api_key, **kwargs)

    @property
    def url(self) -> str:
        return f"{self.base_url}/chat/completions"

    @property
    def has_api_key(self) -> bool:
        return self._api_key is not None

    def __repr__(self) -> str:
        key = "***" if self._api_key else None
        return f"HTTPChatClient(base_url={self.base_url!r}, model={self.model!r}, api_key={key})"

    # The SDK client holds sockets: rebuild it lazily after pickling (e.g. into Ray tasks).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_sdk"] = None
        return state

    def _client(self) -> openai.OpenAI:
        if self._sdk is None:
            self._sdk = openai.OpenAI(
                base_url=self.base_url,
                api_key=self._api_key or _NO_KEY,
                timeout=self.timeout_s,
                max_retries=self.max_retries,
            )
        return self._sdk

    def close(self) -> None:
        if self._sdk is not None:
            self._sdk.close()
            self._sdk = None

    def __enter__(self) -> HTTPChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reply(
        self, messages: Messages, *, temperature: float, max_tokens: int, seed: int | None = None
    ) -> ChatReply:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            request["seed"] = seed
        try:
            completion = self._client().chat.completions.create(**request)
        except openai.APIError as exc:
            raise self._error(exc) from None
        return self._reply_of(completion)

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key they rejected; never let it into an exception."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _error(self, exc: openai.APIError) -> LLMError:
        tries = f"{self.max_retries + 1} attempt(s)"
        if isinstance(exc, openai.APITimeoutError):
            return LLMError(
                f"LLM endpoint {self.url} did not answer within {self.timeout_s:g} s "
                f"({tries}); raise llm.timeout_s or use a faster model"
            )
        if isinstance(exc, openai.APIConnectionError):
            cause = exc.__cause__ or exc
            return LLMError(
                f"cannot reach LLM endpoint {self.url} after {tries}: "
                f"{self._scrub(first_line(cause, typed=True))}; is the server running and "
                "llm.base_url right?"
            )
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            fix = _FIXES.get(status)
            if fix is None and (status >= 500 or status in (408, 409)):
                fix = f"the server failed after {tries}; see its log"
            return LLMError(
                f"LLM endpoint {self.url} answered HTTP {status}: "
                f"{self._server_message(exc)}" + (f"; {fix}" if fix else "")
            )
        return LLMError(
            f"LLM endpoint {self.url} answered something that is not a chat completion: "
            f"{self._scrub(first_line(exc, _MAX_ERROR_CHARS))}"
        )

    def _server_message(self, exc: openai.APIStatusError) -> str:
        """The server's own words: OpenAI's error message, FastAPI's `detail`, else the body."""
        body = exc.body
        message: Any = None
        if isinstance(body, dict):
            message = body.get("message") or body.get("detail")
            if isinstance(body.get("error"), (dict, str)):
                error = body["error"]
                message = error.get("message") if isinstance(error, dict) else error
        if not message:
            message = exc.response.text or exc.response.reason_phrase
        return self._scrub(first_line(str(message), _MAX_ERROR_CHARS))

    def _reply_of(self, completion: Any) -> ChatReply:
        if not isinstance(completion, ChatCompletion):
            raise LLMError(
                f"LLM endpoint {self.url} answered JSON that is not an object with choices: "
                f"{self._scrub(first_line(str(completion), _MAX_ERROR_CHARS))!r}"
            )
        if not completion.choices:
            raise LLMError(f"LLM endpoint {self.url} answered without choices: nothing to use")
        choice = completion.choices[0]
        content = choice.message.content if choice.message is not None else None
        if not isinstance(content, str):
            raise LLMError(
                f"LLM endpoint {self.url} answered without text content "
                f"(finish_reason={choice.finish_reason!r}); a refusal or tool call cannot be used"
            )
        return ChatReply(content, choice.finish_reason)
