"""A stand-in for an external OpenAI-compatible endpoint: a real HTTP server on 127.0.0.1.

It speaks POST /v1/chat/completions and GET /v1/models, replays canned answers in order (cycling),
records what it received, and can be told to fail. Use it wherever a test needs "some LLM server"
without a model:

    with serve_standin(["answer 1", "answer 2"]) as standin:
        client = HTTPChatClient(standin.base_url, "any-model")
        ...
        assert standin.requests[0]["messages"][0]["content"] == "..."

`requests` holds the JSON bodies of all chat-completion requests received (failed ones included),
`headers` the matching request headers (lower-case names). `deliver_next` makes the next answer
hostile in how it is sent: dripped one byte at a time (body or headers), or chunked without a
Content-Length (so a client cannot refuse an oversized answer before reading it).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
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
    # Answers computed from the request body instead of the canned ones (e.g. "yes" when the
    # prompt names a word): the order of concurrent requests then does not matter.
    answer_with: Callable[[dict[str, Any]], str] | None = None
    _next_answer: int = 0
    _failures: list[int] = field(default_factory=list)  # statuses of the next failing requests
    _raw: list[tuple[int, Any]] = field(default_factory=list)  # verbatim next responses
    _deliveries: list[Delivery] = field(default_factory=list)  # how the next ones are sent
    closed: threading.Event = field(default_factory=threading.Event, repr=False)

    def fail_next(self, n: int, status: int = 503) -> None:
        """The next `n` chat requests answer HTTP `status` with an OpenAI-style error body and
        `retry-after-ms: 10`, so a client that honours it retries at once."""
        with self._lock:
            self._failures.extend([status] * n)

    def respond_next(self, payload: Any, status: int = 200) -> None:
        """The next chat request gets exactly this JSON payload (e.g. a malformed answer)."""
        with self._lock:
            self._raw.append((status, payload))

    def deliver_next(self, delivery: Delivery) -> None:
        """The next chat request's answer is written the way `delivery` says."""
        with self._lock:
            self._deliveries.append(delivery)

    def _delivery(self) -> Delivery:
        with self._lock:
            return self._deliveries.pop(0) if self._deliveries else Delivery()

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
            if self.answer_with is not None:
                answer = self.answer_with(body)
            else:
                answer = self.answers[self._next_answer % len(self.answers)]
                self._next_answer += 1
        prompt_tokens = sum(len(str(m.get("content", "")).split()) for m in messages)
        return 200, chat_completion(answer, body.get("model", STANDIN_MODEL), prompt_tokens)


@dataclass(frozen=True)
class Delivery:
    """How one answer is written: `drip_s` > 0 sends one byte every `drip_s` seconds (of the
    body, or of the status line and headers too with `drip_headers`); `chunked` sends the body
    in 64 KiB chunks with no Content-Length."""

    drip_s: float = 0.0
    drip_headers: bool = False
    chunked: bool = False


def chat_completion(answer: str, model: str = STANDIN_MODEL, prompt_tokens: int = 0) -> dict:
    """An OpenAI chat.completion object whose one choice says `answer`."""
    completion_tokens = len(answer.split())
    return {
        "id": f"chatcmpl-{uuid.uuid4().hex}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": model,
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

        def _send(self, status: int, payload: Any, how: Delivery | None = None) -> None:
            how = how or Delivery()
            data = json.dumps(payload).encode()
            self.send_response(status)
            if status >= 500 or status == 429:
                self.send_header("retry-after-ms", "10")
            self.send_header("Content-Type", "application/json")
            if how.chunked:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(len(data)))
            if how.drip_s > 0 and how.drip_headers:
                head = b"".join(self._headers_buffer) + b"\r\n"
                self._headers_buffer = []
                self._drip(head, how.drip_s)
            else:
                self.end_headers()
            if how.chunked:
                for start in range(0, len(data), 1 << 16):
                    piece = data[start : start + (1 << 16)]
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
                self.wfile.write(b"0\r\n\r\n")
            elif how.drip_s > 0:
                self._drip(data, how.drip_s)
            else:
                self.wfile.write(data)

        def _drip(self, data: bytes, interval_s: float) -> None:
            """One byte per interval, until done, the client hangs up or the stand-in stops."""
            for i in range(len(data)):
                try:
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                except OSError:
                    return
                if standin.closed.wait(interval_s):
                    return

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
            self._send(status, payload, standin._delivery())

    return Handler


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hangs up mid-answer (deadline, size cap) is expected, not an error."""
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


@contextmanager
def serve_standin(answers: list[str], *, require_key: str | None = None) -> Iterator[StandIn]:
    """Run the stand-in on a free port for the duration of the `with` block."""
    if not answers:
        raise ValueError("serve_standin needs at least one canned answer")
    standin = StandIn(base_url="", answers=list(answers), require_key=require_key)
    server = _QuietServer(("127.0.0.1", 0), _handler_for(standin))
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
        standin.closed.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def manifest_run_argv(examples_dir: Any, run_dir: Any, base_url: str, *overrides: str) -> list[str]:
    """`visdiff describe` on the shared example's manifest and its own captions, proposing
    through the stand-in at `base_url` (the runs the end-to-end tests make against it)."""
    from pathlib import Path

    config = Path(__file__).resolve().parents[1] / "configs" / "examples_manifest.yaml"
    llm = ["llm.backend=external", f"llm.base_url={base_url}"]
    llm += [o for o in overrides if o.startswith("llm.")]
    # The judge (evaluate.llm) is set to the same endpoint, explicitly, as a user would.
    judge = [f"evaluate.{o}" for o in llm if o.split("=", 1)[0] in _JUDGE_MIRRORS]
    return [
        "describe",
        "--config",
        str(config),
        f"data.manifest={Path(examples_dir) / 'manifest.csv'}",
        f"output_dir={run_dir}",
        "caption.source=manifest",
        *llm[:2],
        *judge,
        *overrides,
    ]


_JUDGE_MIRRORS = {
    "llm.backend",
    "llm.base_url",
    "llm.external_model",
    "llm.api_key_env",
    "llm.model",
}
