"""Chat clients: the proposer and the judge talk to any LLM only through `ChatClient`.

`HTTPChatClient` wraps the `openai` SDK, so our Serve app, a vLLM server and OpenAI itself are
interchangeable; the SDK does the retries (connection errors, 408/409/429/5xx, with backoff that
honours `Retry-After`) and parses the typed `ChatCompletion`. What visdiff adds: a failed call
raises `LLMError` with one line naming the endpoint and the fix, error text is never returned as
if it were the model's answer, and the API key never appears in messages, logs or repr.

Bounds: `timeout_s` is a total deadline per attempt (connect + every read, see `deadline.py`),
and an answer larger than `max_answer_bytes` is refused, not cut (a cut JSON answer cannot be
parsed, and a half answer would read as a whole one). The raw response is streamed so that
neither a slow nor a huge answer is read beyond its bound.

Cost: every client counts its calls and tokens (`usage()`, thread-safe), and gives the picklable
`ClientSettings` it was built from, so Ray actors (the llm/vlm rankers) call the same endpoint
with their own client, reading the key from the same env var.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from typing import Any, Protocol, Self, runtime_checkable

import httpx2
import openai
from openai.types.chat import ChatCompletion

from visdiff.errors import LLMError, first_line
from visdiff.llm.deadline import Deadline, http_client_with_deadline

_MAX_ERROR_CHARS = 500
# Local servers need no key, but the SDK insists on one: this one is sent and ignored.
_NO_KEY = "no-key"
DEFAULT_MAX_ANSWER_BYTES = 1 << 20
_FIXES = {
    401: "check the key in the env var named by llm.api_key_env (llm.serve_api_key_env for "
    "our Serve app)",
    403: "check the key in the env var named by llm.api_key_env (llm.serve_api_key_env for "
    "our Serve app)",
    404: "check llm.base_url and the model name the server answers to",
    429: "the server is rate limiting: lower the load or raise the quota",
}


@dataclass(frozen=True)
class ChatReply:
    """One answer and why generation stopped: "stop", or "length" when cut at max_tokens.

    What it cost rides along (equality ignores it: the same answer is the same answer): tokens
    from the server's `usage` when it sent one, and `cached` when no call was made for it."""

    text: str
    finish_reason: str | None
    prompt_tokens: int | None = field(default=None, compare=False)
    completion_tokens: int | None = field(default=None, compare=False)
    cached: bool = field(default=False, compare=False)


# OpenAI chat messages: {role, content}; content is a string, or a list of parts (text and
# image_url) for vision models.
Messages = list[dict[str, Any]]

USAGE_KEYS = ("calls", "failed", "prompt_tokens", "completion_tokens", "cached")


def empty_usage() -> dict[str, int]:
    return dict.fromkeys(USAGE_KEYS, 0)


def merge_usage(*usages: dict[str, int]) -> dict[str, int]:
    """Sum of usage counts (the run's client, the rankers' actors, the judge), key by key."""
    total = empty_usage()
    for usage in usages:
        for key, value in usage.items():
            total[key] = total.get(key, 0) + int(value)
    return total


class UsageCounter:
    """Thread-safe counts of what a client spent; it travels as zeros (each process counts its
    own calls, and the pipeline adds them up)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts = empty_usage()

    def add(self, **counts: int) -> None:
        with self._lock:
            for key, value in counts.items():
                self._counts[key] += int(value)

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def __reduce__(self) -> tuple[type[UsageCounter], tuple[()]]:
        return (UsageCounter, ())


@dataclass(frozen=True)
class ClientSettings:
    """Everything needed to build an `HTTPChatClient` elsewhere (a Ray actor): picklable, and
    never the key itself, only the name of the env var that holds it.

    `identity` is what the model really is, for answer caches: our Serve app answers to one
    name (llm.served_model_name) whatever model it runs, so its clients set the model there
    (llm.model); empty means `model`."""

    base_url: str
    model: str
    api_key_env: str = ""
    timeout_s: float = 300.0
    max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES
    max_retries: int = 2
    identity: str = ""

    @property
    def model_identity(self) -> str:
        return self.identity or self.model

    def build(self) -> HTTPChatClient:
        """A client for these settings; the key is read from the environment of the caller."""
        return HTTPChatClient.from_env(
            self.base_url,
            self.model,
            self.api_key_env,
            timeout_s=self.timeout_s,
            max_answer_bytes=self.max_answer_bytes,
            max_retries=self.max_retries,
            identity=self.identity,
        )


@runtime_checkable
class ChatClient(Protocol):
    """Anything that turns chat messages into one answer."""

    def reply(
        self, messages: Messages, *, temperature: float, max_tokens: int, seed: int | None = None
    ) -> ChatReply: ...


def usage_of(client: object) -> dict[str, int]:
    """A client's usage counts; zeros for a client that does not count (a test double)."""
    usage = getattr(client, "usage", None)
    return merge_usage(usage()) if callable(usage) else empty_usage()


class ClosingClient:
    """Base for a client that holds connections: `with client:` closes them on the way out."""

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class HTTPChatClient(ClosingClient):
    """Client for an OpenAI-compatible `/v1` endpoint; `max_retries` retries after the first try."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        timeout_s: float = 300.0,
        max_retries: int = 2,
        max_answer_bytes: int = DEFAULT_MAX_ANSWER_BYTES,
        api_key_env: str = "",
        identity: str = "",
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise LLMError(f"LLM base_url '{base_url}' must start with http:// or https://")
        if max_retries < 0:
            raise LLMError(f"max_retries must be >= 0, got {max_retries}")
        if not timeout_s > 0 or max_answer_bytes < 1:
            raise LLMError(
                f"timeout_s must be > 0 and max_answer_bytes >= 1, got {timeout_s}, "
                f"{max_answer_bytes}"
            )
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = float(timeout_s)
        self.max_retries = int(max_retries)
        self.max_answer_bytes = int(max_answer_bytes)
        self._api_key = api_key or None
        self.api_key_env = api_key_env
        self.identity = identity
        self._sdk: openai.OpenAI | None = None
        self._deadline: Deadline | None = None
        self._sdk_lock = threading.Lock()
        self._usage = UsageCounter()

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
        return cls(base_url, model, api_key=api_key, api_key_env=api_key_env, **kwargs)

    @property
    def settings(self) -> ClientSettings:
        """How to build this client elsewhere (a Ray actor) without carrying its key."""
        if self._api_key is not None and not self.api_key_env:
            raise LLMError(
                f"the client for {self.base_url} was given its key directly, so other processes "
                "cannot get it: build it with HTTPChatClient.from_env (the key in an env var)"
            )
        return ClientSettings(
            self.base_url,
            self.model,
            self.api_key_env,
            self.timeout_s,
            self.max_answer_bytes,
            self.max_retries,
            self.identity,
        )

    def usage(self) -> dict[str, int]:
        """Calls sent by this client (`failed`: those that raised), tokens the server reported,
        and `cached` (always 0 here; a caching wrapper counts its own)."""
        return self._usage.snapshot()

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
        state["_deadline"] = None
        del state["_sdk_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._sdk_lock = threading.Lock()

    def _client(self) -> tuple[openai.OpenAI, Deadline]:
        with self._sdk_lock:  # several threads may send their first request at once
            if self._sdk is None or self._deadline is None:
                self._deadline = Deadline(self.timeout_s)
                self._sdk = openai.OpenAI(
                    base_url=self.base_url,
                    api_key=self._api_key or _NO_KEY,
                    timeout=self.timeout_s,
                    max_retries=self.max_retries,
                    http_client=http_client_with_deadline(
                        self._deadline, openai.DEFAULT_CONNECTION_LIMITS
                    ),
                )
            return self._sdk, self._deadline

    def close(self) -> None:
        with self._sdk_lock:
            if self._sdk is not None:
                self._sdk.close()
                self._sdk = None

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
        sdk, deadline = self._client()
        try:
            try:
                # Non-streaming request, raw response streamed: read under the deadline and cap.
                with sdk.chat.completions.with_streaming_response.create(**request) as response:
                    body = self._read_answer(response, deadline)
            except openai.APIError as exc:
                raise self._error(exc) from None
            finally:
                deadline.clear()
            reply = self._reply_of(self._parse(body))
        except BaseException:
            self._usage.add(calls=1, failed=1)
            raise
        self._usage.add(
            calls=1,
            prompt_tokens=reply.prompt_tokens or 0,
            completion_tokens=reply.completion_tokens or 0,
        )
        return reply

    def _read_answer(self, response: Any, deadline: Deadline) -> bytes:
        """The body, refused past `max_answer_bytes` or past the attempt's deadline."""
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_answer_bytes:
            raise self._too_big()
        chunks: list[bytes] = []
        size = 0
        try:
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > self.max_answer_bytes:
                    raise self._too_big()
                chunks.append(chunk)
                if deadline.passed:  # backstop where the socket deadline is not installed
                    raise httpx2.ReadTimeout("deadline passed")
        except httpx2.TimeoutException:
            raise self._timed_out("finish its answer", "the answer is not retried") from None
        except httpx2.TransportError as exc:
            raise LLMError(
                f"LLM endpoint {self.url} broke off its answer: "
                f"{self._scrub(first_line(exc, typed=True))}; see the server's log"
            ) from None
        return b"".join(chunks)

    def _too_big(self) -> LLMError:
        return LLMError(
            f"LLM endpoint {self.url} sent an answer larger than llm.max_answer_bytes="
            f"{self.max_answer_bytes} bytes; it is refused, not cut: raise llm.max_answer_bytes "
            "or lower llm.max_tokens"
        )

    def _timed_out(self, what: str, tries: str) -> LLMError:
        return LLMError(
            f"LLM endpoint {self.url} did not {what} within llm.timeout_s={self.timeout_s:g} s "
            f"(a total deadline per attempt; {tries}); raise llm.timeout_s or use a faster "
            "model or server"
        )

    def _parse(self, body: bytes) -> Any:
        """The JSON answer as a ChatCompletion (built without validation, as the SDK does);
        any other JSON value is returned as is for `_reply_of` to refuse."""
        try:
            data = json.loads(body)
        except ValueError:
            shown = first_line(body.decode("utf-8", "replace") or "(empty)", _MAX_ERROR_CHARS)
            raise LLMError(
                f"LLM endpoint {self.url} answered something that is not JSON: "
                f"{self._scrub(shown)!r}"
            ) from None
        return ChatCompletion.model_construct(**data) if isinstance(data, dict) else data

    def _scrub(self, text: str) -> str:
        """Servers sometimes echo the key they rejected; never let it into an exception."""
        if self._api_key:
            text = text.replace(self._api_key, "***")
        return text

    def _error(self, exc: openai.APIError) -> LLMError:
        tries = f"{self.max_retries + 1} attempt(s)"
        if isinstance(exc, openai.APITimeoutError):
            return self._timed_out("answer", tries)
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
        prompt_tokens, completion_tokens = _tokens(getattr(completion, "usage", None))
        return ChatReply(content, choice.finish_reason, prompt_tokens, completion_tokens)


def _tokens(usage: Any) -> tuple[int | None, int | None]:
    """(prompt, completion) tokens of a response's `usage` (a dict when built without
    validation); None where the server sent none or something else."""
    if usage is None:
        return None, None
    get = usage.get if isinstance(usage, dict) else lambda key: getattr(usage, key, None)
    counts = [get("prompt_tokens"), get("completion_tokens")]
    clean = [
        c if isinstance(c, int) and not isinstance(c, bool) and c >= 0 else None for c in counts
    ]
    return clean[0], clean[1]
