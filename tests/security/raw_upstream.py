"""Raw upstreams for the router's tests: asyncio servers that send what no real model server
would (endless answers, endless headers, odd statuses) and count the connections they accept.

`raw_upstream(handler)` runs one in the caller's event loop; `ThreadedUpstream(handler)` runs
one in a thread of its own, for tests that drive a real router process with blocking clients.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType

PREDICTION = b'{"predictions": [1]}'
Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


class RawUpstream:
    """An asyncio server answering each request with `handler`; counts accepted connections."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.accepted = 0
        self.heads: list[bytes] = []  # of the requests read so far, the last one last
        self.url = ""
        self._writers: list[asyncio.StreamWriter] = []

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.accepted += 1
        self._writers.append(writer)
        with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
            while head := await read_request(reader):
                self.heads.append(head)
                await self.handler(reader, writer)

    def close_all(self) -> None:
        for writer in self._writers:
            writer.transport.abort()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """Read one request (head and Content-Length body); its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return head


@contextlib.asynccontextmanager
async def raw_upstream(handler: Handler) -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream(handler)
    server = await asyncio.start_server(upstream._serve, "127.0.0.1", 0)
    upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        yield upstream
    finally:
        server.close()
        upstream.close_all()
        await server.wait_closed()


def answer(status: bytes = b"200 OK", body: bytes = PREDICTION, extra: bytes = b"") -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(
            b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\n" + extra
            + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
        )  # fmt: skip
        await writer.drain()

    return handle


async def endless_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
    chunk = b"x" * 65536
    while True:
        writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        await writer.drain()


async def endless_header(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(b"HTTP/1.1 200 OK\r\nx-long: ")
    while True:
        writer.write(b"a" * 65536)
        await writer.drain()


class ThreadedUpstream:
    """A RawUpstream served from its own thread and event loop (a context manager)."""

    def __init__(self, handler: Handler) -> None:
        self.upstream = RawUpstream(handler)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._loop.run_until_complete, args=(self._run(),))

    @property
    def url(self) -> str:
        return self.upstream.url

    @property
    def accepted(self) -> int:
        return self.upstream.accepted

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        server = await asyncio.start_server(self.upstream._serve, "127.0.0.1", 0, backlog=1024)
        self.upstream.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        self._ready.set()
        await self._stop.wait()
        server.close()
        self.upstream.close_all()
        await server.wait_closed()

    def __enter__(self) -> ThreadedUpstream:
        self._thread.start()
        assert self._ready.wait(10), "the raw upstream did not start"
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=10)
        self._loop.close()
