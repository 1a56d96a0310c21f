"""A total deadline per HTTP attempt (connect + every write and read), for the LLM client.

HTTP timeouts bound each socket operation, so a server that sends one byte per second never
trips them. Here every socket operation of an attempt is given at most the time left until the
attempt's end, and fails at once when none is left: the whole attempt (headers and body) ends
within the deadline. An attempt starts when the HTTP client sends a request (its `request` event
hook); the openai SDK's retries are new requests, so each retry gets a fresh deadline.

The network backend is swapped in below the openai SDK's HTTP library (httpx2, on httpcore2);
requests through an environment proxy use the proxy's transport and keep only the per-operation
timeouts (the client still checks the deadline between body chunks).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from typing import Any

import httpcore2
import httpx2


class Deadline(threading.local):
    """The end of the current attempt, per thread (a client may serve several threads)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.ends_at: float | None = None

    def start(self, _request: object = None) -> None:
        self.ends_at = time.monotonic() + self.seconds

    def clear(self) -> None:
        self.ends_at = None

    @property
    def passed(self) -> bool:
        return self.ends_at is not None and time.monotonic() >= self.ends_at

    def cap(self, timeout: float | None, timeout_error: type[Exception]) -> float | None:
        """`timeout` shortened to the time left; `timeout_error` when none is left."""
        if self.ends_at is None:
            return timeout
        left = self.ends_at - time.monotonic()
        if left <= 0:
            raise timeout_error(f"the deadline of {self.seconds:g} s per attempt passed")
        return left if timeout is None else min(timeout, left)


class _DeadlineStream(httpcore2.NetworkStream):
    def __init__(self, inner: httpcore2.NetworkStream, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._inner.read(max_bytes, self._deadline.cap(timeout, httpcore2.ReadTimeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._inner.write(buffer, self._deadline.cap(timeout, httpcore2.WriteTimeout))

    def close(self) -> None:
        self._inner.close()

    def start_tls(
        self, ssl_context: Any, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.NetworkStream:
        timeout = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        return _DeadlineStream(
            self._inner.start_tls(ssl_context, server_hostname, timeout), self._deadline
        )

    def get_extra_info(self, info: str) -> Any:
        return self._inner.get_extra_info(info)


class _DeadlineBackend(httpcore2.NetworkBackend):
    def __init__(self, inner: httpcore2.NetworkBackend, deadline: Deadline) -> None:
        self._inner = inner
        self._deadline = deadline

    def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[Any] | None = None,
    ) -> httpcore2.NetworkStream:
        timeout = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        stream = self._inner.connect_tcp(host, port, timeout, local_address, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def connect_unix_socket(
        self, path: str, timeout: float | None = None, socket_options: Iterable[Any] | None = None
    ) -> httpcore2.NetworkStream:
        timeout = self._deadline.cap(timeout, httpcore2.ConnectTimeout)
        stream = self._inner.connect_unix_socket(path, timeout, socket_options)
        return _DeadlineStream(stream, self._deadline)

    def sleep(self, seconds: float) -> None:
        self._inner.sleep(seconds)


def http_client_with_deadline(deadline: Deadline, limits: httpx2.Limits) -> httpx2.Client:
    """An HTTP client for the openai SDK whose every attempt ends within `deadline.seconds`."""
    transport = httpx2.HTTPTransport(limits=limits)
    # httpx2 takes no network backend, but its connection pool (httpcore2) does: swap ours in
    # before the first connection. Fail loudly if a new httpx2 moves it.
    pool = getattr(transport, "_pool", None)
    inner = getattr(pool, "_network_backend", None)
    if not isinstance(inner, httpcore2.NetworkBackend):
        raise RuntimeError("httpx2 changed: cannot install the LLM request deadline")
    pool._network_backend = _DeadlineBackend(inner, deadline)  # type: ignore[union-attr]
    return httpx2.Client(
        transport=transport,
        timeout=deadline.seconds,
        follow_redirects=True,
        event_hooks={"request": [deadline.start]},
    )
