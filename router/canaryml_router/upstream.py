"""A small pooled HTTP/1.1 client for the router's upstreams (the model servers).

Why not aiohttp's client: on this project's 2-core machine a router built on a pooled
`aiohttp.ClientSession` carried 7,000 one-row requests/s at 16 connections and added 0.28 ms at
one connection, most of it the client's per-request machinery (request and response objects,
timers, tracing hooks, cookie and redirect handling). The router needs none of that: it forwards
a complete request over a kept-alive connection and reads one complete response. This client
does exactly that with an `asyncio.Protocol` and httptools' response parser (both already
installed with uvicorn[standard]), at a fraction of the cost.

What it does: keep-alive pools per upstream (idle connections reused newest first and closed
after `idle_timeout`, shorter than uvicorn's 5 s so the server rarely closes one under us), one
retry on a fresh connection when a reused one turns out closed before any byte of the answer
(the standard race of keep-alive; prediction requests have no side effects), one deadline per
request covering connect and answer (checked every SWEEP_SECONDS), and typed errors the router
maps to 502 and 504.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import cast
from urllib.parse import urlsplit

import httptools

Headers = list[tuple[bytes, bytes]]
_STATUS_INFORMATIONAL = range(100, 200)
SWEEP_SECONDS = 0.05  # how late a timeout may fire


class UpstreamError(Exception):
    """The upstream gave no usable answer: the router answers 502."""


class UpstreamTimeoutError(UpstreamError):
    """No complete answer before the deadline: the router answers 504."""


class _ConnectionClosedError(UpstreamError):
    def __init__(self, *, received: bool) -> None:
        super().__init__("the upstream closed the connection")
        self.received = received


class UpstreamResponse:
    """One complete answer: status, headers (names lower-case) and the whole body."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, headers: Headers, body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body


class _Connection(asyncio.Protocol):
    """One kept-alive connection: at most one request in flight, answers parsed as they come."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        self._waiter: asyncio.Future[UpstreamResponse] | None = None
        self._status = 0
        self._headers: Headers = []
        self._chunks: list[bytes] = []
        self._head_only = False
        self._headers_done = False
        self.received = False
        self.reusable = True
        self.closed = False
        self.idle_since = 0.0
        self.deadline = 0.0

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.reusable = False
        if self._headers_done and not any(
            name in (b"content-length", b"transfer-encoding") for name, _ in self._headers
        ):
            self._finish()  # an answer without a length ends where the connection does
        self._fail(_ConnectionClosedError(received=self.received))

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:
            # Bytes nobody asked for (an idle connection): the stream cannot be trusted.
            self.abort()
            return
        self.received = True
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as error:
            self.reusable = False
            self._fail(UpstreamError(f"invalid HTTP answer from the upstream: {error}"))
            self.abort()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = self._status not in _STATUS_INFORMATIONAL
        if self._head_only and self._status not in _STATUS_INFORMATIONAL:
            # The parser cannot know a HEAD answer has no body: finish here, never reuse.
            self.reusable = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._chunks.append(body)

    def on_message_complete(self) -> None:
        if self._status in _STATUS_INFORMATIONAL:
            self._headers = []  # 100 Continue and the like: the real answer follows
            return
        if not self._parser.should_keep_alive():
            self.reusable = False
        self._finish()

    # the exchange

    def _finish(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            waiter.set_result(UpstreamResponse(self._status, self._headers, body))

    def _fail(self, error: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def time_out(self) -> None:
        self.reusable = False
        self._fail(UpstreamTimeoutError("the upstream did not answer in time"))
        self.abort()

    async def exchange(self, data: bytes, *, head: bool) -> UpstreamResponse:
        """Send one request (head and body in one write) and wait for the complete answer;
        the pool calls `time_out` if it is not in by `deadline`."""
        assert self._transport is not None
        waiter: asyncio.Future[UpstreamResponse] = self._loop.create_future()
        self._waiter = waiter
        self._status = 0
        self._headers = []
        self._chunks = []
        self._head_only = head
        self._headers_done = False
        self.received = False
        try:
            self._transport.write(data)
            return await waiter
        finally:
            self._waiter = None
            if not waiter.done():  # cancelled mid-answer: the stream is out of step
                self.reusable = False
                self.abort()

    def abort(self) -> None:
        self.reusable = False
        if self._transport is not None:
            self._transport.abort()


def url_problem(url: str) -> str | None:
    """Why UpstreamPool refuses this base URL, or None. Callers check it before they change a
    routing table, so that a change fails whole instead of halfway through."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
        (parts.hostname or "").encode("idna")
    except ValueError as error:  # UnicodeError (a bad host name) is one too
        return f"not a URL ({error})"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "must be an http:// or https:// URL with a host"
    if any(char.isspace() for char in url):
        return "must not contain whitespace"
    if parts.query or parts.fragment or not parts.path.isascii():
        return "must have no query or fragment and an ASCII path"
    return None


class UpstreamPool:
    """Kept-alive connections to one upstream base URL (http or https, optional path prefix).

    A pool belongs to the event loop of its first request, as its connections do.
    """

    def __init__(self, base_url: str, *, idle_timeout: float = 4.0, max_idle: int = 256) -> None:
        problem = url_problem(base_url)
        if problem is not None:
            raise ValueError(f"upstream {base_url!r}: {problem}")
        parts = urlsplit(base_url)
        assert parts.hostname is not None  # url_problem refuses a URL without one
        self.url = base_url
        self._host = parts.hostname
        default_port = 443 if parts.scheme == "https" else 80
        self._port = parts.port or default_port
        self._ssl: ssl.SSLContext | None = (
            ssl.create_default_context() if parts.scheme == "https" else None
        )
        host_header = self._host if ":" not in self._host else f"[{self._host}]"
        if self._port != default_port:
            host_header += f":{self._port}"
        self._host_line = b"host: " + host_header.encode("idna") + b"\r\n"
        self._prefix = parts.path.rstrip("/").encode("ascii")
        self._idle_timeout = idle_timeout
        self._max_idle = max_idle
        self._idle: list[_Connection] = []
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy: set[_Connection] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    async def request(
        self,
        *,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        within: float,
    ) -> UpstreamResponse:
        """Forward one request; `target` is the path and query as the client sent them."""
        # Bound once: asyncio.get_running_loop() costs a getpid() system call on Python 3.11.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        data = self._serialize(method, target, headers, body)
        head = method == b"HEAD"
        for attempt in (1, 2):
            connection, reused = await self._acquire(loop, deadline)
            connection.deadline = deadline
            self._busy.add(connection)
            if self._sweeper is None:
                self._sweeper = loop.call_later(SWEEP_SECONDS, self._sweep)
            try:
                response = await connection.exchange(data, head=head)
            except _ConnectionClosedError as error:
                if reused and not error.received and attempt == 1:
                    continue  # a kept-alive connection the server had closed: try a new one
                raise UpstreamError("the upstream closed the connection") from None
            finally:
                self._busy.discard(connection)
            self._release(connection, loop)
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    def _sweep(self) -> None:
        """Time out the exchanges past their deadline; again soon while any is in flight.

        One periodic check rather than a timer per request: a uvloop timer costs 3.4 us to
        arm and cancel, 5 % of a proxied request. Deadlines are met within SWEEP_SECONDS.
        """
        assert self._loop is not None
        now = self._loop.time()
        for connection in [c for c in self._busy if c.deadline <= now]:
            self._busy.discard(connection)
            connection.time_out()
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep) if self._busy else None

    def _serialize(self, method: bytes, target: bytes, headers: Headers, body: bytes) -> bytes:
        parts = [method, b" ", self._prefix, target, b" HTTP/1.1\r\n", self._host_line]
        for name, value in headers:
            parts += (name, b": ", value, b"\r\n")
        if body or method in (b"POST", b"PUT", b"PATCH"):
            parts += (b"content-length: ", str(len(body)).encode(), b"\r\n")
        parts += (b"\r\n", body)
        return b"".join(parts)

    async def _acquire(
        self, loop: asyncio.AbstractEventLoop, deadline: float
    ) -> tuple[_Connection, bool]:
        idle = self._idle
        now = loop.time()
        while idle:
            connection = idle.pop()
            if connection.closed or not connection.reusable:
                continue
            if now - connection.idle_since > self._idle_timeout:
                connection.abort()
                continue
            return connection, True
        return await self._connect(loop, deadline), False

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        try:
            async with asyncio.timeout_at(deadline):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                )
        except TimeoutError:
            raise UpstreamTimeoutError(f"no connection to {self.url} in time") from None
        except OSError as error:
            raise UpstreamError(f"cannot connect to {self.url}: {error}") from None
        return protocol

    def _release(self, connection: _Connection, loop: asyncio.AbstractEventLoop) -> None:
        if (
            self._closed
            or connection.closed
            or not connection.reusable
            or len(self._idle) >= self._max_idle
        ):
            connection.abort()
            return
        connection.idle_since = loop.time()
        self._idle.append(connection)

    def close(self) -> None:
        """Close the idle connections; those in flight close when their answer is in (their
        deadlines still hold: the sweeper stops by itself once none is left)."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
