"""A stand-in for an external OpenAI-compatible endpoint: a real HTTP server on 127.0.0.1.

It speaks POST /v1/chat/completions and GET /v1/models, replays canned answers in order (cycling),
records what it received, and can be told to fail. Use it wherever a test needs "some LLM server"
without a model:

    with serve_standin(["answer 1", "answer 2"]) as standin:
        client = HTTPChatClient(standin.base_url, "any-model")
        ...
        assert standin.requests[0]["messages"][0]["content"] == "..."

`requests` holds the JSON bodies of all chat-completion requests received (failed ones included),
`headers` the matching request headers (lower-case names).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

STANDIN_MODEL = "standin-model"


@dataclass
class StandIn:
    base_url: str  # ends with /v1, like OpenAI's
    answers: list[str]
    require_key: str | None = None
    requests: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _next_answer: int = 0
    _failures: list[int] = field(default_factory=list)  # statuses of the next failing requests
    _raw: list[tuple[int, Any]] = field(default_factory=list)  # verbatim next responses

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` chat requests answer HTTP `status` with an OpenAI-style error body and
        `retry-after-ms: 10`, so a client that honours it retries at once."""
        with self._lock:
            self._failures.extend([status] * n)

    def respond_next(self, payload: Any, status: int = 200) -> None:
        """The next chat request gets exactly this JSON payload (e.g. a malformed answer)."""
        with self._lock:
            self._raw.append((status, payload))

    def _record(self, body: dict[str, Any], headers: dict[str, str]) -> tuple[int, Any]:
        """Record one chat request and decide the (status, payload) to answer it with."""
        with self._lock:
            self.requests.append(body)
            self.headers.append(headers)
            if self.require_key is not None:
                sent = headers.get("authorization", "")
                if sent != f"Bearer {self.require_key}":
                    # Like OpenAI, echo what was sent: clients must not leak it further.
                    shown = sent.removeprefix("Bearer ") or "(none)"
                    return 401, _error(f"Incorrect API key provided: {shown}", "invalid_api_key")
            if self._failures:
                status = self._failures.pop(0)
                return status, _error(f"stand-in told to fail with HTTP {status}", "server_error")
            if self._raw:
                return self._raw.pop(0)
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                return 400, _error("messages must be a non-empty list", "invalid_request_error")
            answer = self.answers[self._next_answer % len(self.answers)]
            self._next_answer += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        completion_tokens = len(answer.split())
        return 200, {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", STANDIN_MODEL),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }


def _error(message: str, code: str) -> dict[str, Any]:
    kind = "server_error" if code == "server_error" else "invalid_request_error"
    return {"error": {"message": message, "type": kind, "param": None, "code": code}}


def _handler_for(standin: StandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
            pass

        def _send(self, status: int, payload: Any) -> None:
            data = json.dumps(payload).encode()
            self.send_response(status)
            if status >= 500 or status == 429:
                self.send_header("retry-after-ms", "10")
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.rstrip("/") == "/v1/models":
                card = {"id": STANDIN_MODEL, "object": "model", "created": 0, "owned_by": "test"}
                self._send(200, {"object": "list", "data": [card]})
            else:
                self._send(404, _error(f"no route {self.path}", "not_found"))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length)
            if self.path.rstrip("/") != "/v1/chat/completions":
                self._send(404, _error(f"no route {self.path}", "not_found"))
                return
            try:
                body = json.loads(raw)
            except ValueError:
                self._send(400, _error("body is not JSON", "invalid_request_error"))
                return
            if not isinstance(body, dict):
                self._send(400, _error("body must be a JSON object", "invalid_request_error"))
                return
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload = standin._record(body, headers)
            self._send(status, payload)

    return Handler


@contextmanager
def serve_standin(answers: list[str], *, require_key: str | None = None) -> Iterator[StandIn]:
    """Run the stand-in on a free port for the duration of the `with` block."""
    if not answers:
        raise ValueError("serve_standin needs at least one canned answer")
    standin = StandIn(base_url="", answers=list(answers), require_key=require_key)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(standin))
    server.daemon_threads = True
    standin.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(
        target=server.serve_forever,
        kwargs={"poll_interval": 0.05},
        name="openai-standin",
        daemon=True,
    )
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
