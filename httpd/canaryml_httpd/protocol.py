"""uvicorn's httptools protocol with the connection limits of `canaryml_httpd.limits`.

Hand-written because neither uvicorn nor httptools bounds a request head (llhttp has no limit,
and httptools builds a header value by repeated concatenation: a header line that never ends
stalls the event loop) nor times out a slow head or body. h11 bounds heads
(`h11_max_incomplete_event_size`) but parses in Python, several times the per-request cost on
the router's hot path, and has no body timeout either.

The hot path stays cheap: one counter compare per `data_received`, one pass over the headers
when a head completes, and no timer for a request that arrives in one read (most do). A
refusal writes its answer itself (an application already running sees the client gone),
drops the rest of the input, and closes after a linger.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any, ClassVar, TypeVar, cast

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from canaryml_httpd.limits import (
    DEFAULT_LIMITS,
    SMALL_BODY_BYTES,
    BodyBudget,
    ConnectionLimits,
    Refusal,
    refusal,
    response_bytes,
)

P = TypeVar("P", bound="LimitedHttpToolsProtocol")

# After a refusal, input is read and dropped this long before the connection closes (nginx's
# lingering close): closing a socket with unread input sends a reset, and a reset makes the
# client's system drop the refusal it has not read yet.
LINGER_SECONDS = 2.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """Header size and count, header and body timeouts, body size and the process's body
    budget. `limited(cls, limits)` binds the limits (uvicorn makes one protocol per
    connection from a class)."""

    limits: ClassVar[ConnectionLimits] = DEFAULT_LIMITS
    budget: ClassVar[BodyBudget] = BodyBudget(DEFAULT_LIMITS.body_budget_bytes)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Bytes read since the last head completed, outside bodies: the current head's size
        # or more (less only for a pipelined head begun in the read that ended a body).
        self._head_bytes = 0
        self._in_body = False
        self._closed_by_limit = False
        self._head_timer: asyncio.TimerHandle | None = None
        self._linger_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._last_body_at = 0.0
        self._held = 0  # budget bytes taken by this connection's requests in flight
        self._chunked: list[int] | None = None  # [bytes held] of a chunked body being read

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        # A connection that sends nothing is closed too: uvicorn only times out idle
        # connections after a first answer.
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_timed_out)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        self._cancel_timers()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        self.budget.used -= self._held
        self._held = 0

    def data_received(self, data: bytes) -> None:
        if self._closed_by_limit:
            return
        if not self._in_body:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._closed_by_limit:  # refused during this read
            return
        scope = self.scope
        if scope is not None and "method" not in scope:  # a head incomplete after this read
            if (
                self._head_bytes > self.limits.max_header_bytes
                or len(self.headers) > self.limits.max_headers
            ):
                self._refuse(
                    refusal(
                        self.limits,
                        head_bytes=self._head_bytes,
                        headers=len(self.headers),
                        content_length=None,
                        budget_free=0,
                    )
                )
            elif self._head_timer is None:
                self._head_timer = self.loop.call_later(
                    self.limits.header_timeout, self._head_timed_out
                )
        elif self._in_body:  # a body still incomplete after this read
            self._last_body_at = self.loop.time()
            if self._body_timer is None:
                self._body_timer = self.loop.call_later(
                    self.limits.body_timeout, self._body_timed_out
                )

    # Parser callbacks

    def on_headers_complete(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        limits, budget = self.limits, self.budget
        headers = self.headers
        size = self._head_bytes
        if size > limits.max_header_bytes:  # the read held more than this head: measure it
            size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in headers)
        self._head_bytes = 0
        length: int | None = None
        chunked = False  # llhttp refuses a transfer-encoding that does not end in chunked
        for name, value in headers:  # measured: cheaper than dict(headers) for a few fields
            if name == b"content-length":
                length = int(value)  # llhttp checked the digits and refuses a second length
            elif name == b"transfer-encoding":
                chunked = True
        if (  # the common case without a call: within every limit
            size <= limits.max_header_bytes
            and len(headers) <= limits.max_headers
            and not chunked
            and (length is None or length <= min(limits.max_body_bytes, budget.limit - budget.used))
        ):
            refused = None
        else:
            refused = refusal(
                limits,
                head_bytes=size,
                headers=len(self.headers),
                content_length=length if not chunked else None,
                budget_free=budget.free(),
            )
        if refused is not None:  # answered here: no application runs, the body is dropped
            self._refuse(refused)
            return
        super().on_headers_complete()
        if not chunked and not length:
            return
        cycle: RequestResponseCycle | None = self.cycle
        if cycle is None or cycle.scope is not self.scope:  # a WebSocket upgrade: no cycle
            return
        self._in_body = True
        if chunked:
            hold = [0]  # taken from the budget chunk by chunk
            self._chunked = hold
        elif length is not None and length > SMALL_BODY_BYTES:
            hold = [length]
            budget.used += length
            self._held += length
        else:  # not counted: see SMALL_BODY_BYTES
            return
        cycle.on_response = functools.partial(self._request_done, hold)

    def on_body(self, body: bytes) -> None:
        if self._closed_by_limit:
            return
        hold = self._chunked
        if hold is not None:
            refused = refusal(
                self.limits,
                head_bytes=0,
                headers=0,
                content_length=None,
                body_bytes=hold[0] + len(body),
                chunk=len(body),
                budget_free=self.budget.free(),
            )
            if refused is not None:
                self._refuse(refused)
                return
            hold[0] += len(body)
            self.budget.used += len(body)
            self._held += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        if self._closed_by_limit:
            return
        super().on_message_complete()
        self._in_body = False
        self._chunked = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    # Limits

    def _request_done(self, hold: list[int]) -> None:
        """The answer is sent: the request's body bytes go back to the budget."""
        amount = min(hold[0], self._held)
        hold[0] = 0
        self._held -= amount
        self.budget.used -= amount
        self.on_response_complete()

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._closed_by_limit or self.transport.is_closing():
            return
        scope = self.scope
        if self._head_bytes or (scope is not None and "method" not in scope):
            self._refuse(
                Refusal(408, f"request head not sent within {self.limits.header_timeout:g} s")
            )
        elif self.cycle is None:  # connected, sent nothing
            self._close()

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if self._closed_by_limit or not self._in_body or self.transport.is_closing():
            return
        if self.flow.read_paused:  # the application is not reading: not the client's delay
            idle = 0.0
        else:
            idle = self.loop.time() - self._last_body_at
            if idle >= self.limits.body_timeout:
                self._refuse(Refusal(408, f"no body bytes for {self.limits.body_timeout:g} s"))
                return
        self._body_timer = self.loop.call_later(
            self.limits.body_timeout - idle, self._body_timed_out
        )

    def _refuse(self, refused: Refusal | None) -> None:
        """Answer `refused` unless an answer is under way on this connection, then close."""
        cycle = self.cycle
        busy = cycle is not None and not cycle.response_complete
        answered = False
        if refused is not None and not (busy and cycle.response_started):
            self.transport.write(response_bytes(refused))
            answered = True
        if busy:  # the application sees the client gone and its answer goes nowhere
            cycle.disconnected = True
            cycle.message_event.set()
        self._close(linger=answered)

    def _close(self, *, linger: bool = False) -> None:
        self._closed_by_limit = True  # from now on, input is dropped unparsed
        self._in_body = False
        self._cancel_timers()
        # The body taken in is dropped: its bytes go back to the budget now, not after lingering.
        self.budget.used -= self._held
        self._held = 0
        if linger and self.transport.can_write_eof():
            # After this turn's writes (the router's transport sends them at its end).
            self.loop.call_soon(self._end_output)
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()

    def _end_output(self) -> None:
        if not self.transport.is_closing():
            self.transport.write_eof()

    def _cancel_timers(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None


def limited(protocol: type[P], limits: ConnectionLimits) -> type[P]:
    """`protocol` bound to `limits`, with a body budget of its own (one per process: uvicorn
    serves with one class)."""
    bound = type(
        protocol.__name__,
        (protocol,),
        {"limits": limits, "budget": BodyBudget(limits.body_budget_bytes)},
    )
    return cast(type[P], bound)
