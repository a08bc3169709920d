"""The bits of ASGI the router speaks: its types, reading a request body, sending an answer.

No framework (its per-request cost would be paid on every proxied request): the proxy and the
admin endpoints send their answers with `respond` as (status, headers, body).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from canaryml_router.upstream import Headers

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
Answer = tuple[int, Headers, bytes]
"""A complete HTTP answer: status, headers, body."""

MAX_BODY_BYTES = 64 * 1024 * 1024
_NO_BODY = frozenset({204, 304})
_JSON_HEADERS = [(b"content-type", b"application/json")]


class ClientGoneError(Exception):
    """The client went away before its request was complete."""


class BodyTooLargeError(Exception):
    """The request body is over MAX_BODY_BYTES."""


def json_answer(status: int, body: Any) -> Answer:
    return status, _JSON_HEADERS, orjson.dumps(body)


async def respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    if status not in _NO_BODY:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def read_body(receive: Receive) -> bytes:
    """The whole request body; ClientGoneError or BodyTooLargeError instead."""
    message = await receive()
    if message["type"] == "http.disconnect":
        raise ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)
