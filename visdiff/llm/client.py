"""Chat clients: the proposer and the judge talk to any LLM only through `ChatClient`.

`HTTPChatClient` speaks the OpenAI chat-completions protocol, so our Serve app, a vLLM server and
OpenAI itself are interchangeable. A failed call raises `LLMError`; error text is never returned
as if it were the model's answer. The API key never appears in messages, logs or repr.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Protocol, runtime_checkable

import httpx

from visdiff.errors import LLMError

logger = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_ERROR_CHARS = 500
_MAX_BACKOFF_S = 30.0


@runtime_checkable
class ChatClient(Protocol):
    """Anything that turns chat messages into one answer string."""

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
    ) -> str: ...


class HTTPChatClient:
    """Client for an OpenAI-compatible `/v1` endpoint.

    Retries connection failures, 408/409/429 and 5xx answers with exponential backoff (honouring
    `Retry-After`); other 4xx answers fail at once because repeating them cannot help. Read
    timeouts are not retried: a generation that took `timeout_s` once will likely do so again.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        backoff_s: float = 0.5,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise LLMError(f"LLM base_url '{base_url}' must start with http:// or https://")
        if max_retries < 0:
            raise LLMError(f"max_retries must be >= 0, got {max_retries}")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.backoff_s = float(backoff_s)
        self._api_key = api_key or None
        self._http: httpx.Client | None = None

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

    # The httpx client holds sockets: rebuild it lazily after pickling (e.g. into Ray tasks).
    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_http"] = None
        return state

    def _client(self) -> httpx.Client:
        if self._http is None:
            headers = {"Content-Type": "application/json"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._http = httpx.Client(headers=headers, timeout=self.timeout_s)
        return self._http

    def close(self) -> None:
        if self._http is not None:
            self._http.close()
            self._http = None

    def __enter__(self) -> HTTPChatClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key they rejected; never let it into an exception."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def complete(
        self,
        messages: list[dict[str, str]],
        *,
        temperature: float,
        max_tokens: int,
        seed: int | None = None,
    ) -> str:
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "temperature": temperature,
            "max_tokens": max_tokens,
        }
        if seed is not None:
            body["seed"] = seed
        data = self._post_with_retries(body)
        return self._answer_text(data)

    def _post_with_retries(self, body: dict[str, Any]) -> dict[str, Any]:
        attempt = 0
        while True:
            delay: float | None = None
            try:
                response = self._client().post(self.url, json=body)
            except httpx.ReadTimeout as exc:
                raise LLMError(
                    f"LLM endpoint {self.url} did not answer within {self.timeout_s:g} s "
                    f"({type(exc).__name__}); raise llm.timeout_s or use a faster model"
                ) from None
            except httpx.TransportError as exc:
                if attempt >= self.max_retries:
                    raise LLMError(
                        f"cannot reach LLM endpoint {self.url} after {attempt + 1} attempt(s): "
                        f"{self._scrub(str(exc)) or type(exc).__name__}; is the server running "
                        "and llm.base_url right?"
                    ) from None
            else:
                if response.status_code < 400:
                    return self._json(response)
                if response.status_code not in _RETRY_STATUS or attempt >= self.max_retries:
                    raise LLMError(
                        f"LLM endpoint {self.url} answered HTTP {response.status_code} "
                        f"after {attempt + 1} attempt(s): {self._error_message(response)}"
                    )
                delay = _retry_after(response)
            if delay is None:
                delay = self.backoff_s * (2**attempt)
            delay = min(delay, _MAX_BACKOFF_S)
            logger.warning(
                "LLM request to %s failed (attempt %d of %d); retrying in %.2f s",
                self.url,
                attempt + 1,
                self.max_retries + 1,
                delay,
            )
            time.sleep(delay)
            attempt += 1

    def _json(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json()
        except ValueError:
            raise LLMError(
                f"LLM endpoint {self.url} answered HTTP {response.status_code} with a body that "
                f"is not JSON: {self._scrub(response.text[:_MAX_ERROR_CHARS])!r}"
            ) from None
        if not isinstance(data, dict):
            raise LLMError(f"LLM endpoint {self.url} answered JSON that is not an object")
        return data

    def _error_message(self, response: httpx.Response) -> str:
        """The server's own words: OpenAI's {"error": {"message"}}, FastAPI's {"detail"}, text."""
        message: Any = None
        try:
            data = response.json()
        except ValueError:
            data = None
        if isinstance(data, dict):
            error = data.get("error")
            if isinstance(error, dict):
                message = error.get("message")
            elif isinstance(error, str):
                message = error
            if message is None:
                message = data.get("detail") or data.get("message")
        if message is None:
            message = response.text or response.reason_phrase
        return self._scrub(str(message)[:_MAX_ERROR_CHARS])

    def _answer_text(self, data: dict[str, Any]) -> str:
        choices = data.get("choices")
        if not isinstance(choices, list) or not choices:
            raise LLMError(f"LLM endpoint {self.url} answered without choices: nothing to use")
        first = choices[0]
        message = first.get("message") if isinstance(first, dict) else None
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, str):
            reason = first.get("finish_reason") if isinstance(first, dict) else None
            raise LLMError(
                f"LLM endpoint {self.url} answered without text content "
                f"(finish_reason={reason!r}); a refusal or tool call cannot be used"
            )
        return content


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
