"""A Prometheus URL in a spec points wherever its author likes: the replies of a hostile
server posing as Prometheus (a real HTTP server on loopback) are read bounded in size and
time, redirects are refused, and nothing of a reply's body reaches the status."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import providers, verdicts
from canaryml_operator.checks import build_queries
from canaryml_operator.providers import MAX_REPLY_BYTES, MetricError, PrometheusProvider

from tests.local_http import serving

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC)
MARK = "LEAKED-FROM-THE-REPLY"
CHUNK = b"x" * 65536


class Sent:
    """What a handler wrote (bytes) and saw (request headers), across its threads."""

    def __init__(self) -> None:
        self.bytes = 0
        self.requests: list[dict[str, str]] = []
        self.lock = threading.Lock()


def handler(reply: Callable[[BaseHTTPRequestHandler, Sent], None], sent: Sent) -> Any:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length") or 0))
            with sent.lock:
                sent.requests.append(dict(self.headers))
            # The client stopping to read is what these tests want.
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                reply(self, sent)

        def log_message(self, *_: Any) -> None:
            pass

    return Handler


def endless(chunked_length: bool) -> Callable[[BaseHTTPRequestHandler, Sent], None]:
    """200 MB of reply, announced (Content-Length) or not (streamed until the end)."""

    def reply(h: BaseHTTPRequestHandler, sent: Sent) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        if chunked_length:
            h.send_header("Content-Length", str(200 * 1024 * 1024))
        h.end_headers()
        for _ in range(200 * 1024 * 1024 // len(CHUNK)):
            h.wfile.write(CHUNK)
            with sent.lock:
                sent.bytes += len(CHUNK)

    return reply


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "no-length"])
async def test_a_huge_reply_is_refused_after_at_most_the_cap(announced: bool) -> None:
    sent = Sent()
    with serving(handler(endless(announced), sent)) as url:
        provider = PrometheusProvider(url=url, timeout=20)
        tracemalloc.start()
        try:
            started = time.monotonic()
            with pytest.raises(MetricError, match=r"more than 1024 KiB"):
                await provider.query("vector(1)", at=NOW)
            elapsed = time.monotonic() - started
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
            await provider.aclose()
    # Before: the whole 200 MB was read into memory. Now at most the cap and a few chunks.
    assert peak < 4 * MAX_REPLY_BYTES, peak
    assert elapsed < 10
    if announced:
        assert sent.bytes <= 16 * MAX_REPLY_BYTES  # refused on the header, before the body


async def test_a_reply_dripping_forever_ends_at_the_timeout() -> None:
    def drip(h: BaseHTTPRequestHandler, sent: Sent) -> None:
        h.send_response(200)
        h.end_headers()
        for _ in range(100):
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.05)  # each byte well within any read timeout

    with serving(handler(drip, Sent())) as url:
        provider = PrometheusProvider(url=url, timeout=0.5)
        try:
            started = time.monotonic()
            with pytest.raises(MetricError, match=r"did not answer within 0\.5 s"):
                await provider.query("vector(1)", at=NOW)
            assert time.monotonic() - started < 2.0
        finally:
            await provider.aclose()


async def test_a_redirect_is_refused_and_never_followed() -> None:
    elsewhere = Sent()

    def answer(h: BaseHTTPRequestHandler, sent: Sent) -> None:
        data = {"resultType": "scalar", "result": [0, "1"]}
        body = json.dumps({"status": "success", "data": data}).encode()
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    with serving(handler(answer, elsewhere)) as target:

        def redirect(h: BaseHTTPRequestHandler, sent: Sent) -> None:
            h.send_response(307)  # 307 keeps the POST and its body
            h.send_header("Location", f"{target}/api/v1/query")
            h.send_header("Content-Length", "0")
            h.end_headers()

        with serving(handler(redirect, Sent())) as url:
            provider = PrometheusProvider(
                url=url, timeout=5, headers={"Authorization": "Bearer s3cret"}
            )
            try:
                with pytest.raises(MetricError, match="HTTP 307, a redirect") as refused:
                    await provider.query("vector(1)", at=NOW)
            finally:
                await provider.aclose()
    assert target not in str(refused.value)
    assert elsewhere.requests == []  # the credentials went nowhere else


def replying(status: int, body: bytes, *, headers: dict[str, str] | None = None) -> Any:
    def reply(h: BaseHTTPRequestHandler, sent: Sent) -> None:
        h.send_response(status)
        for key, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            h.send_header(key, value)
        h.end_headers()
        h.wfile.write(body)

    return reply


def vector(*series: tuple[dict[str, str], str]) -> bytes:
    result = [{"metric": labels, "value": [0, value]} for labels, value in series]
    return json.dumps({"status": "success", "data": {"resultType": "vector", "result": result}}
                      ).encode()  # fmt: skip


@pytest.mark.parametrize(
    "reply",
    [
        replying(500, f"internal page with {MARK}".encode()),
        replying(401, f"<html>{MARK}</html>".encode()),
        replying(200, f"not json {MARK}".encode()),
        replying(200, json.dumps({"status": MARK}).encode()),
        replying(200, json.dumps({"status": "success", "data": MARK}).encode()),
        replying(200, json.dumps({"status": "success", "data": {"resultType": MARK}}).encode()),
        replying(400, json.dumps({"status": "error", "errorType": MARK, "error": MARK}).encode()),
        replying(
            422, json.dumps({"status": "error", "errorType": "bad_data", "error": MARK}).encode()
        ),
        replying(200, vector(({"a": MARK}, "1"), ({MARK: MARK}, "2"))),
        replying(200, vector(({}, MARK))),
        replying(200, vector(({}, "1")), headers={"Content-Encoding": "gzip"}),
    ],
    ids=[
        "500-page",
        "401-html",
        "not-json",
        "bad-status",
        "bad-data",
        "bad-type",
        "error-unknown-type",
        "error-text",
        "two-series",
        "bad-sample",
        "gzip",
    ],
)
async def test_no_part_of_a_reply_reaches_the_status(reply: Any) -> None:
    spec = api.parse_spec(
        {
            "model": {"uri": "s3://m/1.0.0", "version": "1.0.0"},
            "canary": {"model": {"uri": "s3://m/1.1.0", "version": "1.1.0"}},
        }
    )
    queries = build_queries(spec=spec, name="iris", namespace="ml", source="router")
    with serving(handler(reply, Sent())) as url:
        provider = PrometheusProvider(url=url, timeout=5)
        try:
            measured = await providers.measure(provider=provider, queries=queries, at=NOW)
        finally:
            await provider.aclose()
    results = verdicts.judge(spec=spec, measurements=measured)
    record = verdicts.build_record(results=results, time=NOW, step=0, weight=5)
    written = json.dumps(record.model_dump(by_alias=True, mode="json"))
    assert record.verdict == "Error", written
    assert MARK not in written
    assert all(url in r or "query" in r for r in record.reasons)  # each still says what failed
