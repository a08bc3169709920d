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

Bounds, so that no upstream can make the router hold unbounded memory or sockets: an answer's
head (status line and headers) is capped at `max_head_bytes` and its body at `max_answer_bytes`
(beyond either, or with a status outside 100..599, the connection is dropped and the request
fails with UpstreamError, a 502); at most `max_connections` connections per upstream are open,
and a request beyond them waits for a free one within its deadline (UpstreamTimeoutError, 504).
Pools may share a budget (`canaryml_httpd.limits.BodyBudget`): the answer bytes the router
holds at once, over every upstream, from their first byte until the caller has sent them on and
calls `UpstreamResponse.release()`. An answer that does not fit fails with UpstreamBusyError (the
router answers 503: its own load, not the track's fault), so that 100 connections to each of
three upstreams, each answering the largest allowed body, cannot take the router past its pod's
memory limit.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import ssl
from typing import cast
from urllib.parse import urlsplit

import httptools
from canaryml_httpd.limits import BodyBudget

Headers = list[tuple[bytes, bytes]]
_STATUS_INFORMATIONAL = range(100, 200)
SWEEP_SECONDS = 0.05  # how late a timeout may fire
MAX_ANSWER_BYTES = 16 * 1024 * 1024  # default cap of an upstream answer's body
MAX_HEAD_BYTES = 64 * 1024  # default cap of an upstream answer's status line and headers
MAX_CONNECTIONS = 100  # default cap of open connections per upstream
ANSWER_BUDGET_BYTES = 64 * 1024 * 1024  # default bytes of answers held at once, all upstreams


class UpstreamError(Exception):
    """The upstream gave no usable answer: the router answers 502."""


class UpstreamTimeoutError(UpstreamError):
    """No complete answer before the deadline: the router answers 504."""


class UpstreamBusyError(UpstreamError):
    """The router already holds its budget of answer bytes: it answers 503, not the track."""


def _unusable(what: str) -> UpstreamError:
    return UpstreamError(f"the upstream sent {what}")


class _ConnectionClosedError(UpstreamError):
    def __init__(self, *, received: bool) -> None:
        super().__init__("the upstream closed the connection")
        self.received = received


class UpstreamResponse:
    """One complete answer: status, headers (names lower-case) and the whole body. `release()`
    gives its bytes back to the answer budget once the caller is done with the body."""

    __slots__ = ("_budget", "_held", "body", "headers", "status")

    def __init__(
        self,
        status: int,
        headers: Headers,
        body: bytes,
        budget: BodyBudget | None = None,
        held: int = 0,
    ) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self._budget = budget
        self._held = held

    def release(self) -> None:
        """Give the body's bytes back to the budget; once, later calls do nothing."""
        if self._held:
            assert self._budget is not None
            self._budget.used -= self._held
            self._held = 0


class _Connection(asyncio.Protocol):
    """One kept-alive connection: at most one request in flight, answers parsed as they come."""

    def __init__(self, loop: asyncio.AbstractEventLoop, pool: UpstreamPool) -> None:
        self._loop = loop
        self._pool = pool
        self._max_head = pool.max_head_bytes
        self._max_body = pool.max_answer_bytes
        self._budget = pool.answer_budget
        self._held = 0  # budget bytes taken by the answer being read
        self._head_size = 0
        self._body_size = 0
        self._overflow: UpstreamError | None = None  # why the answer being read is unusable
        self.made = False
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
        self.made = True

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed:
            self._pool._connection_gone()
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
            return
        if not self._headers_done:
            # Counted after feeding, so a chunk that completes the head is not held against it;
            # httptools itself has no cap and grows a never-ending header without bound.
            self._head_size += len(data)
            if self._head_size > self._max_head:
                self._overflow = _unusable(f"an answer head over {self._max_head} bytes")
        if self._overflow is not None:
            self._fail(self._overflow)
            self.abort()

    # httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name.lower(), value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        if not 100 <= self._status <= 599:
            # A client cannot be sent such a status (RFC 9110 15): the answer is unusable.
            self._overflow = _unusable(f"status {self._status}, outside 100..599")
            return
        self._headers_done = self._status not in _STATUS_INFORMATIONAL
        if self._head_only and self._status not in _STATUS_INFORMATIONAL:
            # The parser cannot know a HEAD answer has no body: finish here, never reuse.
            self.reusable = False
            self._finish()

    def on_body(self, body: bytes) -> None:
        self._body_size += len(body)
        if self._body_size > self._max_body:
            self._overflow = _unusable(f"an answer over {self._max_body} bytes")
            self._chunks = []
            return
        if self._overflow is not None:
            return
        budget = self._budget
        if budget is not None:
            if len(body) > budget.free():
                self._overflow = UpstreamBusyError(
                    f"the router holds {budget.limit} bytes of answers already: retry later"
                )
                self._chunks = []
                return
            budget.used += len(body)
            self._held += len(body)
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
        if waiter is not None and not waiter.done() and self._overflow is None:
            body = self._chunks[0] if len(self._chunks) == 1 else b"".join(self._chunks)
            held, self._held = self._held, 0  # the response holds them now
            waiter.set_result(
                UpstreamResponse(self._status, self._headers, body, self._budget, held)
            )

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
        self._head_size = self._body_size = 0
        self._overflow = None
        self.received = False
        try:
            self._transport.write(data)
            return await waiter
        except BaseException:
            # Cancelled just as the answer came: nobody will send it on, so it gives its bytes
            # back here.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                waiter.result().release()
            raise
        finally:
            self._waiter = None
            self._give_back()
            if not waiter.done():  # cancelled mid-answer: the stream is out of step
                self.reusable = False
                self.abort()

    def _give_back(self) -> None:
        """The bytes of an answer that failed or was cut go back to the budget."""
        if self._held:
            assert self._budget is not None
            self._budget.used -= self._held
            self._held = 0

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

    def __init__(
        self,
        base_url: str,
        *,
        idle_timeout: float = 4.0,
        max_idle: int = 256,
        max_connections: int = MAX_CONNECTIONS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_head_bytes: int = MAX_HEAD_BYTES,
        answer_budget: BodyBudget | None = None,
    ) -> None:
        problem = url_problem(base_url)
        if problem is not None:
            raise ValueError(f"upstream {base_url!r}: {problem}")
        if min(max_connections, max_answer_bytes, max_head_bytes) < 1:
            raise ValueError("connection and answer caps must be at least 1")
        self.max_connections = max_connections
        self.max_answer_bytes = max_answer_bytes
        self.max_head_bytes = max_head_bytes
        self.answer_budget = answer_budget
        self.open_connections = 0  # connecting or connected, idle or busy
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
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
        while True:
            now = loop.time()
            while idle:
                connection = idle.pop()
                if connection.closed or not connection.reusable:
                    continue
                if now - connection.idle_since > self._idle_timeout:
                    connection.abort()
                    continue
                return connection, True
            if self.open_connections < self.max_connections:
                return await self._connect(loop, deadline), False
            await self._wait_for_slot(loop, deadline)

    async def _wait_for_slot(self, loop: asyncio.AbstractEventLoop, deadline: float) -> None:
        """Until a connection is released or closed (then look again), or the deadline."""
        waiter: asyncio.Future[None] = loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                await waiter
        except BaseException as error:
            if waiter.done() and not waiter.cancelled():
                self._wake()  # woken just as it gave up: pass the turn on
            else:
                with contextlib.suppress(ValueError):
                    self._slot_waiters.remove(waiter)
            if isinstance(error, TimeoutError):
                raise UpstreamTimeoutError(
                    f"no free connection to {self.url} in time "
                    f"({self.max_connections} open, the most allowed)"
                ) from None
            raise

    def _wake(self) -> None:
        waiters = self._slot_waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _connection_gone(self) -> None:
        self.open_connections -= 1
        self._wake()

    async def _connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> _Connection:
        made: list[_Connection] = []

        def protocol() -> _Connection:
            made.append(_Connection(loop, self))
            return made[-1]

        self.open_connections += 1
        try:
            async with asyncio.timeout_at(deadline):
                _, connection = await loop.create_connection(
                    protocol, self._host, self._port, ssl=self._ssl
                )
        except BaseException as error:
            if not (made and made[-1].made):  # else its connection_lost gives the slot back
                self._connection_gone()
            if isinstance(error, TimeoutError):
                raise UpstreamTimeoutError(f"no connection to {self.url} in time") from None
            if isinstance(error, OSError):
                raise UpstreamError(f"cannot connect to {self.url}: {error}") from None
            raise
        return connection

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
        if self._slot_waiters:
            self._wake()

    def close(self) -> None:
        """Close the idle connections; those in flight close when their answer is in (their
        deadlines still hold: the sweeper stops by itself once none is left)."""
        self._closed = True
        while self._idle:
            self._idle.pop().abort()
