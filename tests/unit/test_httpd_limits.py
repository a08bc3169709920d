"""The shared connection limits (canaryml_httpd): the pure decisions, and the protocol's body
budget bookkeeping over uvicorn's httptools protocol with an in-memory transport."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from canaryml_httpd.limits import (
    DEFAULT_LIMITS,
    SMALL_BODY_BYTES,
    ConnectionLimits,
    refusal,
    response_bytes,
)
from canaryml_httpd.protocol import LimitedHttpToolsProtocol, limited
from uvicorn.config import Config
from uvicorn.server import ServerState

MiB = 1024 * 1024


def _refusal(**overrides: Any) -> int | None:
    values: dict[str, Any] = {
        "head_bytes": 500, "headers": 5, "content_length": 100, "budget_free": 64 * MiB,
    }  # fmt: skip
    values.update(overrides)
    refused = refusal(DEFAULT_LIMITS, **values)
    return None if refused is None else refused.status


def test_the_decisions() -> None:
    assert _refusal() is None
    assert _refusal(head_bytes=32 * 1024 + 1) == 431
    assert _refusal(headers=101) == 431
    assert _refusal(content_length=8 * MiB) is None
    assert _refusal(content_length=8 * MiB + 1) == 413
    assert _refusal(content_length=None, body_bytes=8 * MiB + 1, chunk=1) == 413
    assert _refusal(content_length=5 * MiB, budget_free=4 * MiB) == 503
    assert _refusal(content_length=None, body_bytes=10, chunk=10, budget_free=9) == 503


def test_a_refusal_is_a_closing_json_answer_with_retry_after_for_503() -> None:
    refused = refusal(DEFAULT_LIMITS, head_bytes=0, headers=0, content_length=MiB, budget_free=0)
    assert refused is not None
    raw = response_bytes(refused)
    assert raw.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"connection: close\r\n" in raw
    assert b"retry-after: 1\r\n" in raw
    assert raw.endswith(b'{"error":"too many request bodies in flight: retry later"}')


def test_the_budget_must_hold_one_body() -> None:
    with pytest.raises(ValueError, match="budget"):
        ConnectionLimits(max_body_bytes=2 * MiB, body_budget_bytes=MiB)


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written = b""
        self.closing = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.written += bytes(data)

    def is_closing(self) -> bool:
        return self.closing

    def close(self) -> None:
        self.closing = True

    def can_write_eof(self) -> bool:
        return False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 80), "peername": ("127.0.0.1", 5000)}.get(name, default)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


async def _echo_length(scope: Any, receive: Any, send: Any) -> None:
    size, more = 0, True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        size += len(message.get("body", b""))
        more = message.get("more_body", False)
    body = str(size).encode()
    headers = [(b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _connection(
    limits: ConnectionLimits, protocol_class: type[LimitedHttpToolsProtocol] | None = None
) -> tuple[LimitedHttpToolsProtocol, _Transport]:
    """A connection of `protocol_class` (default: a new class bound to `limits`)."""
    config = Config(app=_echo_length, lifespan="off", access_log=False)
    config.load()
    protocol_class = protocol_class or limited(LimitedHttpToolsProtocol, limits)
    protocol = protocol_class(
        config=config, server_state=ServerState(), app_state={}, _loop=asyncio.get_running_loop()
    )
    transport = _Transport()
    protocol.connection_made(transport)
    return protocol, transport


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


KiB = 1024
BIG = 40 * KiB  # over SMALL_BODY_BYTES: taken from the budget


def _post(length: int) -> bytes:
    return b"POST / HTTP/1.1\r\nhost: x\r\ncontent-length: %d\r\n\r\n" % length


async def test_a_body_holds_the_budget_until_its_answer_and_the_next_is_refused() -> None:
    limits = ConnectionLimits(max_body_bytes=64 * KiB, body_budget_bytes=64 * KiB)
    first, first_out = _connection(limits)
    second, second_out = _connection(limits, type(first))  # one class, one budget: a process's
    budget = type(first).budget
    first.data_received(_post(BIG) + b"a" * 10)
    await _settle()
    assert budget.used == BIG
    second.data_received(_post(BIG))
    await _settle()
    assert second_out.written.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in second_out.written
    first.data_received(b"a" * (BIG - 10))
    await _settle()
    assert first_out.written.startswith(b"HTTP/1.1 200 ")
    assert first_out.written.endswith(str(BIG).encode())
    assert budget.used == 0
    first.connection_lost(None)
    second.connection_lost(None)
    assert budget.used == 0


async def test_small_bodies_are_not_counted() -> None:
    protocol, _ = _connection(ConnectionLimits())
    protocol.data_received(_post(SMALL_BODY_BYTES) + b"a" * 10)
    await _settle()
    assert type(protocol).budget.used == 0
    protocol.connection_lost(None)


async def test_a_lost_connection_gives_its_body_back() -> None:
    protocol, _ = _connection(ConnectionLimits(max_body_bytes=64 * KiB, body_budget_bytes=64 * KiB))
    budget = type(protocol).budget
    protocol.data_received(_post(BIG) + b"ab")
    await _settle()
    assert budget.used == BIG
    protocol.connection_lost(None)
    await _settle()
    assert budget.used == 0


async def test_a_head_over_the_limit_in_pieces_is_refused_before_it_completes() -> None:
    protocol, transport = _connection(ConnectionLimits(max_header_bytes=1024))
    protocol.data_received(b"GET / HTTP/1.1\r\nx-long: ")
    for _ in range(3):
        protocol.data_received(b"a" * 512)
    assert transport.written.startswith(b"HTTP/1.1 431 ")
    assert transport.closing
    protocol.data_received(b"a" * 512)  # dropped unparsed
    protocol.connection_lost(None)
