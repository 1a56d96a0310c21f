"""A loopback HTTP proxy in front of an S3 API server that answers a fixed share of requests
with S3's throttling error (HTTP 503, <Code>SlowDown</Code>), as a busy bucket does.

Used as the S3 endpoint of a run (AWS_ENDPOINT_URL), it checks that the storage layer retries
throttled requests and that a run's results do not depend on which requests were throttled:

    with slowdown_proxy("http://127.0.0.1:5000", every=3) as proxy:
        ...  # point clients at proxy.endpoint
    assert proxy.throttled > 0

Which requests are throttled is decided by a counter, not by chance: every `every`-th request
that is not itself a retry of a request throttled just before. A retried request is therefore
never throttled twice in a row, so one retry always suffices (the test is about retrying at all
and about results, not about how long a client keeps trying).
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


@dataclass
class SlowdownProxy:
    endpoint: str  # http://127.0.0.1:<port>, what clients use instead of the upstream
    upstream: str
    every: int
    requests: int = 0  # every request received, throttled ones included
    throttled: int = 0  # answered 503 SlowDown
    methods: dict[str, int] = field(default_factory=dict)  # throttled requests per HTTP method
    seen: list[tuple[str, str]] = field(default_factory=list)  # (method, path) of every request
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _counter: int = 0
    _just_throttled: set[tuple[str, str, str]] = field(default_factory=set, repr=False)

    def should_throttle(self, method: str, path: str, byte_range: str) -> bool:
        """Count the request; True when it is to be answered 503 SlowDown."""
        key = (method, path, byte_range)
        with self._lock:
            self.requests += 1
            self.seen.append((method, path))
            if key in self._just_throttled:  # the retry of a throttled request goes through
                self._just_throttled.discard(key)
                return False
            self._counter += 1
            if self._counter % self.every:
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

        def _relay(self) -> None:
            body = self._body()  # read even when throttling: the connection stays usable
            if proxy.should_throttle(self.command, self.path, self.headers.get("Range", "")):
                self.send_response(503)
                self.send_header("Content-Type", "application/xml")
                self.send_header("Content-Length", str(len(SLOWDOWN_BODY)))
                self.send_header("Retry-After", "0")
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(SLOWDOWN_BODY)
                return
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            connection = http.client.HTTPConnection(upstream.hostname, upstream.port, timeout=60)
            try:
                headers["Content-Length"] = str(len(body))
                connection.request(self.command, self.path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                self.send_response(answer.status, answer.reason)
                for name, value in answer.getheaders():
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                if self.command == "HEAD":  # no body, but the object's length as S3 sends it
                    self.send_header("Content-Length", answer.getheader("Content-Length") or "0")
                else:
                    self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
            finally:
                connection.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _relay

    return Handler


@contextmanager
def slowdown_proxy(upstream: str, *, every: int = 3) -> Iterator[SlowdownProxy]:
    """A proxy to `upstream` on a free loopback port, throttling every `every`-th request;
    stopped (and its port closed) on exit."""
    if every < 2:
        raise ValueError(f"every={every}: must be >= 2 (1 would throttle every first attempt)")
    proxy = SlowdownProxy(endpoint="", upstream=upstream, every=every)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(proxy))
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
