"""The connection limits and the decisions made with them: pure, no sockets, no event loop.

Defaults (docs/serving.md, "Connection limits"):
- 32 KiB of request head, 100 header fields: what common proxies accept (nginx's
  large_client_header_buffers is 4 x 8 KiB; Envoy's max_request_headers_kb defaults to 60 KiB
  and 100 headers), far above any prediction client's few hundred bytes.
- 10 s to send a request head, as Go's ReadHeaderTimeout is usually set; 30 s without a body
  byte while a body is due.
- 8 MiB of body, the same for the router and the model server, and 64 MiB of bodies in flight
  per process: 8 full-size bodies at once, far below the pods' memory limits (server 1 GiB,
  router 512 MiB).
"""

from __future__ import annotations

from dataclasses import dataclass

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    max_header_bytes: int = 32 * 1024
    """Request line and header fields; more gets 431 and the connection closed."""
    max_headers: int = 100
    """Header fields; more gets 431 and the connection closed."""
    header_timeout: float = 10.0
    """Seconds from a connection's first byte (or its opening) to the end of a request head."""
    body_timeout: float = 30.0
    """Seconds without a byte while a request body is incomplete; then 408 and closed."""
    max_body_bytes: int = 8 * MiB
    """A larger body gets 413: from Content-Length before reading, else while reading."""
    body_budget_bytes: int = 64 * MiB
    """Bodies in flight in the process at most; a request over it gets 503 with Retry-After."""

    def __post_init__(self) -> None:
        if self.body_budget_bytes < self.max_body_bytes:
            raise ValueError("the body budget must hold at least one body of the maximum size")


DEFAULT_LIMITS = ConnectionLimits()
# Declared bodies up to this size are not taken from the budget: most prediction requests are
# this small, and skipping the bookkeeping keeps it off their path. At most `limit_concurrency`
# of them are in flight (1000 x 16 KiB = 16 MiB), a bound of its own.
SMALL_BODY_BYTES = 16 * 1024
RETRY_AFTER_SECONDS = 1


@dataclass(frozen=True, slots=True)
class Refusal:
    """An answer the protocol gives instead of the application, then closes the connection."""

    status: int
    message: str
    retry_after: int | None = None


class BodyBudget:
    """Bytes of bodies a process holds at once: request bodies in flight here, upstream answers
    in the router (`canaryml_router.upstream`)."""

    __slots__ = ("limit", "used")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("a body budget must be at least 1 byte")
        self.limit = limit
        self.used = 0

    def free(self) -> int:
        return self.limit - self.used


def refusal(
    limits: ConnectionLimits,
    *,
    head_bytes: int,
    headers: int,
    content_length: int | None,
    body_bytes: int = 0,
    chunk: int = 0,
    budget_free: int,
) -> Refusal | None:
    """Why a request is refused, or None. `content_length` is the declared length (None for a
    chunked body), `body_bytes` what a chunked body has brought so far including its new
    `chunk`, `budget_free` what the process's body budget has left before this request's bytes
    (the declared length, or the new chunk) are taken from it."""
    if head_bytes > limits.max_header_bytes:
        return Refusal(431, f"request head over {limits.max_header_bytes} bytes")
    if headers > limits.max_headers:
        return Refusal(431, f"more than {limits.max_headers} header fields")
    size = content_length if content_length is not None else body_bytes
    if size > limits.max_body_bytes:
        return Refusal(413, f"body over {limits.max_body_bytes} bytes")
    # A chunked body takes from the budget chunk by chunk, a declared one all at once.
    wanted = content_length if content_length is not None else chunk
    if wanted > budget_free:
        return Refusal(503, "too many request bodies in flight: retry later", RETRY_AFTER_SECONDS)
    return None


def response_bytes(refused: Refusal) -> bytes:
    """The whole HTTP/1.1 answer of a refusal, which closes the connection."""
    body = b'{"error":"' + refused.message.encode("ascii") + b'"}'
    head = [
        f"HTTP/1.1 {refused.status} {_REASONS.get(refused.status, '')}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "connection: close",
    ]
    if refused.retry_after is not None:
        head.append(f"retry-after: {refused.retry_after}")
    return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body


_REASONS = {
    408: "Request Timeout",
    413: "Content Too Large",
    431: "Request Header Fields Too Large",
    503: "Service Unavailable",
}
