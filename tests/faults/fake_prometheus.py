"""A stand-in for Prometheus's query API whose answers a test sets: healthy numbers, a failing
canary, or a fault (slow, trickling, garbage, down).

Why not a real Prometheus: the faults are answers a real one never gives, and the healthy and
failing numbers are then exact and instant (no scrapes, no rate() warm-up). The real one, also
stopped, is in tests/integration/test_rollout.py.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp.web
from canaryml_api import telemetry as t

# Each garbage answer: (HTTP status, content type, body).
GARBAGE: dict[str, tuple[int, str, bytes]] = {
    "invalid JSON": (200, "application/json", b'{"status": "success", "data": {'),
    "HTML": (200, "text/html", b"<html><body><h1>Sign in</h1></body></html>"),
    "HTML 502": (502, "text/html", b"<html><body>Bad Gateway</body></html>"),
    "a list": (200, "application/json", b"[1, 2, 3]"),
    "no data": (200, "application/json", b'{"status": "success"}'),
    "data a list": (200, "application/json", b'{"status": "success", "data": []}'),
    "a matrix": (
        200,
        "application/json",
        b'{"status": "success", "data": {"resultType": "matrix", "result": []}}',
    ),
    "result a dict": (
        200,
        "application/json",
        b'{"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}}',
    ),
    "value not a pair": (
        200,
        "application/json",
        b'{"status": "success", "data": {"resultType": "vector",'
        b' "result": [{"metric": {}, "value": "0.5"}]}}',
    ),
    "value not a number": (
        200,
        "application/json",
        b'{"status": "success", "data": {"resultType": "vector",'
        b' "result": [{"metric": {}, "value": [1, {"x": 1}]}]}}',
    ),
    "status neither": (200, "application/json", b'{"status": "maybe", "data": {}}'),
    "deeply nested JSON": (200, "application/json", b"[" * 100_000 + b"]" * 100_000),
}


def _vector(value: float, labels: dict[str, str] | None = None) -> dict[str, Any]:
    series = {"metric": labels or {}, "value": [time.time(), repr(value)]}
    return {"status": "success", "data": {"resultType": "vector", "result": [series]}}


class FakePrometheus:
    """`mode` is "pass" (every check well within bounds, 100 requests), "fail" (an error rate
    of 50 %), "slow" (answers after `slow_seconds`), "trickle" (a byte every half second) or a
    key of GARBAGE. `stop()`/`start()` take it down and up again on the same port."""

    def __init__(self, *, port: int) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.mode = "pass"
        self.slow_seconds = 3.0
        self.queries = 0
        self._runner: aiohttp.web.AppRunner | None = None
        self._site: aiohttp.web.TCPSite | None = None

    async def start(self) -> None:
        if self._runner is None:
            app = aiohttp.web.Application()
            app.router.add_route("*", "/api/v1/query", self._query)
            self._runner = aiohttp.web.AppRunner(app, shutdown_timeout=0.5)
            await self._runner.setup()
        self._site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", self.port)
        await self._site.start()

    async def stop(self) -> None:
        if self._site is not None:
            await self._site.stop()
            self._site = None

    async def close(self) -> None:
        await self.stop()
        if self._runner is not None:
            await self._runner.cleanup()

    async def _query(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        self.queries += 1
        form = await request.post()
        promql = str(form.get("query") or request.query.get("query") or "")
        mode = self.mode
        if mode in GARBAGE:
            status, content_type, body = GARBAGE[mode]
            return aiohttp.web.Response(status=status, body=body, content_type=content_type)
        answer = json.dumps(self._answer(promql, failing=mode == "fail")).encode()
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        if mode == "trickle":
            return await _trickle(request, answer, every=0.5)
        return aiohttp.web.Response(body=answer, content_type="application/json")

    @staticmethod
    def _answer(promql: str, *, failing: bool) -> dict[str, Any]:
        if t.OFFLINE_EVALUATION in promql:  # the held-out figures: none scraped
            return {"status": "success", "data": {"resultType": "vector", "result": []}}
        if "histogram_quantile" in promql:
            return _vector(0.01)
        if t.FEATURE_DRIFT in promql:
            return _vector(0.01, {t.FEATURE_LABEL: "sepal_length"})
        if t.PREDICTION_DRIFT in promql:
            return _vector(0.01)
        if t.SHADOW_COMPARISONS in promql:
            return _vector(1.0)
        if promql.startswith("("):  # the error rate: errors / requests
            return _vector(0.5 if failing else 0.0)
        return _vector(100.0)  # the request count


async def _trickle(
    request: aiohttp.web.Request, body: bytes, *, every: float
) -> aiohttp.web.StreamResponse:
    """Headers at once, then the body a byte at a time: each read is quick, the whole slow."""
    response = aiohttp.web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = len(body)
    await response.prepare(request)
    try:
        for index in range(len(body)):
            await response.write(body[index : index + 1])
            await asyncio.sleep(every)
        await response.write_eof()
    except ConnectionResetError:
        pass  # the client gave up, as it should
    return response
