"""A loopback HTTP proxy in front of an S3 API server that can answer a fixed share of requests
with S3's throttling error (HTTP 503, <Code>SlowDown</Code>), as a busy bucket does.

The test session's S3 endpoint (AWS_ENDPOINT_URL, set before Ray starts, so every Ray worker has
it) is this proxy, relaying to moto unchanged; a test switches throttling on for a while without
restarting anything, and the session's warm workers see it at once:

    with proxy.throttle(every=3):
        ...  # a third of the session's S3 requests now get 503 SlowDown
    assert proxy.throttled > 0  # counters cover the last throttle() block

Which requests are throttled is decided by a counter, not by chance: every `every`-th request
that is not itself a retry of a request throttled just before. A retried request is therefore
never throttled twice in a row, so one retry always suffices (the tests are about retrying at
all and about results, not about how long a client keeps trying).
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

SLOWDOWN_BODY = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message>"
    b"<RequestId>visdiff-slowdown-proxy</RequestId></Error>"
)
# Hop-by-hop headers are the proxy's own business, not the upstream's (RFC 9110 7.6.1).
# The body is relayed whole, so its framing headers are the proxy's to set too.
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "upgrade",
    "te",
    "expect",
    "content-length",
}
# Answers that carry no body and, for 204/1xx, must not carry Content-Length (RFC 9110 8.6).
_NO_BODY_STATUS = {204, 304}


@dataclass
class SlowdownProxy:
    endpoint: str  # http://127.0.0.1:<port>, what clients use instead of the upstream
    upstream: str
    every: int | None = None  # None: pass everything through
    requests: int = 0  # requests received since the last throttle() began, throttled included
    throttled: int = 0  # answered 503 SlowDown
    methods: dict[str, int] = field(default_factory=dict)  # throttled requests per HTTP method
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of each request
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: int = 0
    _just_throttled: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    def reset(self) -> None:
        """Zero the counters (what a test reads covers its own requests only)."""
        with self._lock:
            self.requests = self.throttled = self._counter = 0
            self.methods = {}
            self.seen = []
            self._just_throttled = set()

    @contextmanager
    def throttle(self, every: int = 3) -> Iterator[SlowdownProxy]:
        """Answer every `every`-th request 503 SlowDown inside the block; counters start at
        zero and stay readable after it; pass-through again on exit."""
        if every < 2:
            raise ValueError(f"every={every}: must be >= 2 (1 would throttle every first attempt)")
        if self.every is not None:
            raise RuntimeError("throttle() blocks do not nest: the proxy is already throttling")
        self.reset()
        self.every = every
        try:
            yield self
        finally:
            self.every = None

    def should_throttle(self, method: str, path: str, byte_range: str) -> bool:
        """Count the request; True when it is to be answered 503 SlowDown."""
        key = (method, path, byte_range)
        with self._lock:
            self.requests += 1
            if len(self.seen) < 100_000:  # a whole session passes through: bounded memory
                self.seen.append((method, path))
            every = self.every
            if every is None:
                return False
            if key in self._just_throttled:  # the retry of a throttled request goes through
                self._just_throttled.discard(key)
                return False
            self._counter += 1
            if self._counter % every:
                return False
            self._just_throttled.add(key)
            self.throttled += 1
            self.methods[method] = self.methods.get(method, 0) + 1
            return True


def _handler(proxy: SlowdownProxy) -> type[BaseHTTPRequestHandler]:
    upstream = urlsplit(proxy.upstream)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (stdlib name)
            pass

        def _body(self) -> bytes:
            """The request body, de-chunked: S3 clients stream uploads with Transfer-Encoding
            chunked (the aws-chunked payload inside is the upstream's to decode)."""
            if "chunked" not in self.headers.get("Transfer-Encoding", "").lower():
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""
            parts = []
            while True:
                size = int(self.rfile.readline().split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline().strip():  # HTTP trailer lines, then a blank
                        pass
                    return b"".join(parts)
                parts.append(self.rfile.read(size))
                self.rfile.readline()  # the CRLF after each chunk

        def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], data: bytes):
            self.send_response(status, reason)
            for name, value in headers:
                if name.lower() not in _HOP_BY_HOP:
                    self.send_header(name, value)
            if self.command == "HEAD":  # no body, but the object's length as S3 sends it
                length = dict((k.lower(), v) for k, v in headers).get("content-length", "0")
                self.send_header("Content-Length", length)
            elif status not in _NO_BODY_STATUS:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if self.command != "HEAD" and status not in _NO_BODY_STATUS:
                self.wfile.write(data)

        def _relay(self) -> None:
            body = self._body()  # read even when throttling: the connection stays usable
            if proxy.should_throttle(self.command, self.path, self.headers.get("Range", "")):
                slowdown = [("Content-Type", "application/xml"), ("Retry-After", "0")]
                head = [("Content-Length", str(len(SLOWDOWN_BODY)))]
                self._answer(503, "Slow Down", slowdown + head, SLOWDOWN_BODY)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self._answer(answer.status, answer.reason, answer.getheaders(), data)
            finally:
                connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextmanager
def running_proxy(upstream: str, *, port: int = 0) -> Iterator[SlowdownProxy]:
    """A pass-through proxy to `upstream` on loopback `port` (0: a free one) until exit, when
    it stops and closes its port."""
    proxy = SlowdownProxy(endpoint="", upstream=upstream)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(proxy))
    server.daemon_threads = True
    proxy.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    try:
        yield proxy
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
