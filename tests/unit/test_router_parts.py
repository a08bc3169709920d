"""The router app's parts, each alone: the routes (table and pools), the proxy, the mirror and
the admin endpoints, with a stand-in upstream and plain ASGI calls (no sockets)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import orjson
import pytest
from canaryml_api.telemetry import (
    REQUESTS_TOTAL,
    ROUTER_CANARY_WEIGHT,
    SHADOW_COMPARISONS,
    TRACK_HEADER,
    VERSION_HEADER,
)
from canaryml_router.admin import AdminEndpoints
from canaryml_router.core import RoutingTable, is_prediction
from canaryml_router.metrics import RouterMetrics
from canaryml_router.mirror import Mirror
from canaryml_router.proxy import Proxy, answer_headers, request_headers
from canaryml_router.routes import Routes, Routing
from canaryml_router.upstream import UpstreamError, UpstreamPool, UpstreamResponse
from prometheus_client import CollectorRegistry

NAME = "iris"
PREDICTION = b'{"predictions": [1, 0]}'


def _live() -> UpstreamResponse:
    """A live answer as the proxy hands it to the mirror."""
    return UpstreamResponse(200, [], PREDICTION)


class FakePool:
    """Stands in for an UpstreamPool: answers `answer` (or raises it) and records requests."""

    def __init__(self, answer: UpstreamResponse | Exception, url: str = "http://fake") -> None:
        self.url = url
        self.answer = answer
        self.requests: list[dict[str, Any]] = []

    async def request(self, **request: Any) -> UpstreamResponse:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _answer(body: bytes = PREDICTION, version: bytes = b"1.1.0") -> UpstreamResponse:
    headers = [
        (b"content-type", b"application/json"),
        (VERSION_HEADER.encode(), version),
        (b"date", b"Fri, 04 Dec 2026 12:00:00 GMT"),
        (b"content-length", str(len(body)).encode()),
    ]
    return UpstreamResponse(200, headers, body)


def _metrics() -> tuple[CollectorRegistry, RouterMetrics]:
    registry = CollectorRegistry()
    return registry, RouterMetrics(registry=registry, model_deployment=NAME)


def _value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, {"model_deployment": NAME, **labels})


async def _call(
    handle: Callable[..., Any], method: str, path: str, body: bytes = b""
) -> tuple[int, dict[bytes, bytes], bytes]:
    """One request through an ASGI handler; its status, headers and body."""
    scope = {
        "type": "http",
        "method": method,
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"router"), (b"content-type", b"application/json")],
        "client": ("10.0.0.7", 5000),
    }
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await handle(scope, receive, send)
    start, end = sent
    return start["status"], dict(start["headers"]), end["body"]


# --- header handling -------------------------------------------------------------------------


def test_request_headers_drop_hop_by_hop_and_extend_forwarded_for() -> None:
    raw = [
        (b"host", b"router"),
        (b"connection", b"keep-alive, x-secret"),
        (b"x-secret", b"1"),
        (b"x-user", b"alice"),
        (b"x-forwarded-for", b"1.2.3.4"),
        (b"content-length", b"2"),
        (b"content-type", b"application/json"),
    ]
    forward, sticky = request_headers(raw, sticky=b"x-user", client=("10.0.0.7", 5000))
    assert forward == [
        (b"x-user", b"alice"),
        (b"content-type", b"application/json"),
        (b"x-forwarded-for", b"1.2.3.4, 10.0.0.7"),
    ]
    assert sticky == "alice"
    assert request_headers([], sticky=None, client=None) == ([], None)


def test_answer_headers_name_the_track_and_read_the_version() -> None:
    headers, version = answer_headers(_answer().headers, b"canary")
    assert headers == [
        (TRACK_HEADER.encode(), b"canary"),
        (b"content-type", b"application/json"),
        (VERSION_HEADER.encode(), b"1.1.0"),
    ]
    assert version == b"1.1.0"


def test_only_post_predictions_are_mirrored() -> None:
    assert is_prediction("POST", "/predict")
    assert is_prediction("POST", "/v2/models/iris/infer")
    assert not is_prediction("GET", "/predict")
    assert not is_prediction("POST", "/v2/models/iris/ready")
    assert is_prediction("POST", "/v2/models/iris/versions/2/infer")
    for junk in (
        "/anything",
        "/predict/x",
        "/v2/models//infer",
        "/v2/models/a/b/infer",
        "/v2/models/a/versions//infer",
        "/v2/models/a/other/2/infer",
        "/infer",
    ):
        assert not is_prediction("POST", junk), junk


# --- routes ----------------------------------------------------------------------------------


def test_routes_keep_one_pool_per_url_and_close_the_dropped_ones() -> None:
    registry, metrics = _metrics()
    routes = Routes(model_deployment=NAME, metrics=metrics)
    assert routes.current is None and routes.table is None
    first = RoutingTable(
        upstreams={"stable": "http://s", "canary": "http://c"}, canary_weight=30, sticky_header="X"
    )
    routes.set_table(first)
    current = routes.current
    assert current is not None and current.table == first
    assert current.sticky == b"x" and current.shadow is None
    assert _value(registry, ROUTER_CANARY_WEIGHT) == 30
    stable, canary = current.pools["stable"], current.pools["canary"]

    second = RoutingTable(
        upstreams={"stable": "http://s", "shadow": "http://sh"}, shadow_percent=10
    )
    routes.set_table(second)
    now = routes.current
    assert now is not None
    assert now.pools["stable"] is stable  # the same URL keeps its connections
    assert now.shadow is now.pools["shadow"]
    assert canary._closed and not stable._closed
    assert _value(registry, ROUTER_CANARY_WEIGHT) == 0
    agree = {"track": "stable", "version": "unknown", "result": "agree"}
    assert _value(registry, SHADOW_COMPARISONS, **agree) == 0
    routes.close()
    assert stable._closed


# --- proxy -----------------------------------------------------------------------------------


def _proxy(
    pools: dict[str, FakePool], table: RoutingTable, draw: float = 0.5
) -> tuple[Proxy, CollectorRegistry, Mirror]:
    registry, metrics = _metrics()
    routes = Routes(model_deployment=NAME, metrics=metrics)
    as_pools = cast(dict[str, UpstreamPool], pools)
    routes.current = Routing(
        table=table, pools=as_pools, sticky=None, shadow=as_pools.get("shadow")
    )
    mirror = Mirror(model_deployment=NAME, metrics=metrics, shadow_timeout=1.0, max_mirrors=4)
    proxy = Proxy(
        routes=routes, metrics=metrics, mirror=mirror, upstream_timeout=2.0, random=lambda: draw
    )
    return proxy, registry, mirror


async def test_the_proxy_forwards_to_the_chosen_track_and_counts_it() -> None:
    stable, canary = FakePool(_answer(version=b"1.0.0")), FakePool(_answer())
    table = RoutingTable(upstreams={"stable": "http://s", "canary": "http://c"}, canary_weight=60)
    proxy, registry, _ = _proxy({"stable": stable, "canary": canary}, table, draw=0.5)
    status, headers, body = await _call(proxy.handle, "POST", "/predict", b"{}")
    assert (status, body) == (200, PREDICTION)
    assert headers[TRACK_HEADER.encode()] == b"canary"
    assert b"date" not in headers and headers[b"content-length"] == str(len(body)).encode()
    assert not stable.requests and canary.requests[0]["method"] == b"POST"
    assert canary.requests[0]["within"] == 2.0
    labels = {"track": "canary", "version": "1.1.0", "code": "200", "source": "router"}
    assert _value(registry, REQUESTS_TOTAL, **labels) == 1


async def test_the_proxy_answers_502_naming_an_unreachable_track() -> None:
    table = RoutingTable(upstreams={"stable": "http://s"}, versions={"stable": "1.0.0"})
    proxy, registry, _ = _proxy({"stable": FakePool(UpstreamError("refused"))}, table)
    status, _, body = await _call(proxy.handle, "POST", "/predict", b"{}")
    assert status == 502
    assert "the stable track is unreachable" in orjson.loads(body)["error"]
    labels = {"track": "stable", "version": "1.0.0", "code": "502", "source": "router"}
    assert _value(registry, REQUESTS_TOTAL, **labels) == 1


async def test_the_proxy_hands_predictions_to_the_mirror() -> None:
    shadow = FakePool(_answer(version=b"2.0.0"))
    table = RoutingTable(
        upstreams={"stable": "http://s", "shadow": "http://sh"}, shadow_percent=100
    )
    proxy, registry, mirror = _proxy({"stable": FakePool(_answer()), "shadow": shadow}, table)
    await _call(proxy.handle, "POST", "/predict", b"{}")
    await _call(proxy.handle, "GET", "/metadata")  # not a prediction: not mirrored
    await mirror.drain(within=1.0)
    assert len(shadow.requests) == 1
    agree = {"track": "stable", "version": "1.1.0", "result": "agree"}
    assert _value(registry, SHADOW_COMPARISONS, **agree) == 1


# --- mirror ----------------------------------------------------------------------------------


async def test_the_mirror_compares_and_counts_the_shadow() -> None:
    registry, metrics = _metrics()
    mirror = Mirror(model_deployment=NAME, metrics=metrics, shadow_timeout=1.0, max_mirrors=8)
    table = RoutingTable(upstreams={"stable": "http://s", "shadow": "http://sh"})
    differs = FakePool(_answer(b'{"predictions": [0, 0]}', version=b"2.0.0"))
    fails = FakePool(UpstreamError("refused"))
    for pool in (differs, fails):
        shadow_pool = cast(UpstreamPool, pool)
        mirror.send(shadow_pool, table, "stable", "1.0", b"POST", b"/predict", [], b"{}", _live())
    await mirror.drain(within=1.0)
    stable = {"track": "stable", "version": "1.0"}
    assert _value(registry, SHADOW_COMPARISONS, result="disagree", **stable) == 1
    assert _value(registry, SHADOW_COMPARISONS, result="error", **stable) == 1
    shadow = {"track": "shadow", "source": "router"}
    assert _value(registry, REQUESTS_TOTAL, version="2.0.0", code="200", **shadow) == 1
    assert _value(registry, REQUESTS_TOTAL, version="unknown", code="502", **shadow) == 1


async def test_the_mirror_skips_beyond_its_bound() -> None:
    registry, metrics = _metrics()
    mirror = Mirror(model_deployment=NAME, metrics=metrics, shadow_timeout=1.0, max_mirrors=1)
    table = RoutingTable(upstreams={"stable": "http://s", "shadow": "http://sh"})
    release = asyncio.Event()

    class SlowPool(FakePool):
        async def request(self, **request: Any) -> UpstreamResponse:
            await release.wait()
            return await super().request(**request)

    slow = cast(UpstreamPool, SlowPool(_answer()))
    for _ in range(3):
        mirror.send(slow, table, "canary", "1.1", b"POST", b"/predict", [], b"{}", _live())
    canary = {"track": "canary", "version": "1.1"}
    assert _value(registry, SHADOW_COMPARISONS, result="skipped", **canary) == 2
    release.set()
    await mirror.drain(within=1.0)
    assert _value(registry, SHADOW_COMPARISONS, result="agree", **canary) == 1


# --- admin endpoints -------------------------------------------------------------------------


def _admin(
    *, admin: bool, source: Any = "static", admin_upstreams: bool = False
) -> tuple[AdminEndpoints, Routes]:
    registry, metrics = _metrics()
    routes = Routes(model_deployment=NAME, metrics=metrics)
    endpoints = AdminEndpoints(
        model_deployment=NAME,
        routes=routes,
        registry=registry,
        source=source,
        admin=admin,
        admin_upstreams=admin_upstreams,
    )
    return endpoints, routes


async def test_admin_endpoints_before_and_after_a_table() -> None:
    endpoints, routes = _admin(admin=False, source="follow")
    assert (await _call(endpoints.handle_admin, "GET", "/router/healthz"))[0] == 200
    assert (await _call(endpoints.handle_admin, "GET", "/router/readyz"))[0] == 503
    assert (await _call(endpoints.handle_admin, "GET", "/router/weights"))[0] == 503
    routes.set_table(RoutingTable(upstreams={"stable": "http://s"}))
    assert (await _call(endpoints.handle_admin, "GET", "/router/readyz"))[0] == 200
    status, _, body = await _call(endpoints.handle_admin, "GET", "/router/weights")
    assert status == 200
    assert orjson.loads(body)["source"] == "follow"
    status, _, body = await _call(endpoints.handle_admin, "PUT", "/router/weights", b"{}")
    assert status == 403 and b"follow the ModelDeployment" in body
    status, _, body = await _call(endpoints.handle_admin, "GET", "/metrics")
    assert status == 200 and ROUTER_CANARY_WEIGHT.encode() in body
    assert (await _call(endpoints.handle_admin, "GET", "/router/nothing"))[0] == 404
    status, headers, _ = await _call(endpoints.handle_admin, "POST", "/router/healthz")
    assert (status, headers[b"allow"]) == (405, b"GET, HEAD")
    assert (await _call(endpoints.handle_admin, "HEAD", "/router/weights"))[2] == b""


@pytest.mark.parametrize(
    ("body", "status"),
    [
        ({"canaryWeight": 25}, 200),
        ({"canaryWeight": 25, "upstreams": {"canary": "http://c"}}, 200),
        ({"shadowPercent": 5}, 422),  # no shadow upstream
        ({}, 422),
    ],
)
async def test_admin_put_changes_the_routes(body: dict[str, Any], status: int) -> None:
    endpoints, routes = _admin(admin=True, admin_upstreams=True)
    start = RoutingTable(upstreams={"stable": "http://s", "canary": "http://c0"})
    routes.set_table(start)
    put = orjson.dumps(body)
    got, _, answer = await _call(endpoints.handle_admin, "PUT", "/router/weights", put)
    assert got == status, answer
    table = routes.table
    assert table is not None
    if status == 200:
        assert table.canary_weight == 25
        assert table.upstreams["canary"] == body.get("upstreams", {}).get("canary", "http://c0")
    else:
        assert table == start
