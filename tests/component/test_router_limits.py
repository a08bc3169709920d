"""The router's bounds against hostile or broken upstreams and clients, in process: raw asyncio
upstreams (they send what no real server would) and the router app over httpx's ASGI transport.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from canaryml_api.telemetry import CLIENT_CLOSED
from canaryml_httpd.limits import BodyBudget
from canaryml_router.app import RouterApp, create_router_app
from canaryml_router.core import RoutingTable
from canaryml_router.proxy import Proxy
from canaryml_router.upstream import (
    UpstreamBusyError,
    UpstreamError,
    UpstreamPool,
    UpstreamTimeoutError,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.security.raw_upstream import answer, endless_body, endless_header, raw_upstream


def _client(app: RouterApp) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://router", timeout=10
    )


async def _requests_total(client: httpx.AsyncClient, **labels: str) -> float:
    text = (await client.get("/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "canaryml_requests_total" and labels.items() <= sample.labels.items()
    )


async def _request(pool: UpstreamPool, within: float = 5.0) -> Any:
    return await pool.request(
        method=b"POST", target=b"/predict", headers=[], body=b"{}", within=within
    )


# --- answers ---------------------------------------------------------------------------------


async def test_an_endless_answer_is_cut_at_the_cap() -> None:
    async with raw_upstream(endless_body) as upstream:
        pool = UpstreamPool(upstream.url, max_answer_bytes=1024 * 1024)
        with pytest.raises(UpstreamError, match="an answer over 1048576 bytes"):
            await _request(pool)
        pool.close()


async def test_an_endless_answer_head_is_cut_at_the_cap() -> None:
    async with raw_upstream(endless_header) as upstream:
        pool = UpstreamPool(upstream.url, max_head_bytes=64 * 1024)
        with pytest.raises(UpstreamError, match="an answer head over 65536 bytes"):
            await _request(pool)
        pool.close()


async def test_an_answer_within_the_caps_passes() -> None:
    body = b'{"predictions": [' + b"1," * 1000 + b"1]}"
    async with raw_upstream(answer(body=body)) as upstream:
        pool = UpstreamPool(upstream.url, max_answer_bytes=len(body), max_head_bytes=200)
        response = await _request(pool)
        assert (response.status, response.body) == (200, body)
        pool.close()


async def test_answers_beyond_the_routers_budget_are_refused_and_their_bytes_come_back() -> None:
    body = b"x" * 1000
    async with raw_upstream(answer(body=body)) as upstream:
        budget = BodyBudget(1500)  # one answer fits, two do not
        pool = UpstreamPool(upstream.url, answer_budget=budget)
        held = await _request(pool)
        assert (held.body, budget.used) == (body, 1000)
        with pytest.raises(UpstreamBusyError, match="holds 1500 bytes of answers"):
            await _request(pool)
        assert budget.used == 1000  # the refused answer's bytes went back at once
        held.release()
        held.release()  # once only
        assert budget.used == 0
        again = await _request(pool)
        again.release()
        assert budget.used == 0
        pool.close()


async def test_a_cut_answer_gives_its_bytes_back() -> None:
    async with raw_upstream(endless_body) as upstream:
        budget = BodyBudget(8 * 1024 * 1024)
        pool = UpstreamPool(upstream.url, max_answer_bytes=1024 * 1024, answer_budget=budget)
        with pytest.raises(UpstreamError, match="an answer over"):
            await _request(pool)
        assert budget.used == 0
        pool.close()


async def test_the_router_answers_503_when_its_budget_is_spent_and_never_leaks_it() -> None:
    body = b'{"predictions": [' + b"1," * 600 + b"1]}"
    async with raw_upstream(answer(body=body)) as upstream:
        table = RoutingTable(
            upstreams={"stable": upstream.url, "shadow": upstream.url},
            versions={"stable": "1", "shadow": "2"},
            shadow_percent=100,
        )
        async with (
            create_router_app(
                model_deployment="m",
                table=table,
                max_answer_bytes=len(body),
                answer_budget_bytes=len(body),
            ) as app,
            _client(app) as client,
        ):
            budget = app.routes.answer_budget
            budget.used = 1  # another answer is held: this one cannot fit
            refused = await client.post("/predict", json={})
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "retry later" in refused.json()["error"]
            # The router's load is not the track's failure: nothing counted.
            assert await _requests_total(client, track="stable") == 0
            budget.used = 0
            answers = await asyncio.gather(*(client.post("/predict", json={}) for _ in range(20)))
            assert {a.status_code for a in answers} <= {200, 503}
            assert any(a.status_code == 200 for a in answers)
            await app.mirror.drain(within=5.0)
            assert budget.used == 0  # every answer, live and shadow, came back


@pytest.mark.parametrize("status", [b"999 Weird", b"099 Low"])
async def test_a_status_outside_100_to_599_is_a_502(status: bytes) -> None:
    async with raw_upstream(answer(status=status)) as upstream:
        table = RoutingTable(upstreams={"stable": upstream.url}, versions={"stable": "1"})
        async with (
            create_router_app(model_deployment="m", table=table) as app,
            _client(app) as client,
        ):
            response = await client.post("/predict", json={})
            assert response.status_code == 502
            assert "outside 100..599" in response.json()["error"]
            assert await _requests_total(client, code="502", track="stable") == 1


# --- connections -----------------------------------------------------------------------------


async def test_connections_per_upstream_are_capped_and_waiters_are_served() -> None:
    gate = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        await answer()(reader, writer)

    async with raw_upstream(slow) as upstream:
        pool = UpstreamPool(upstream.url, max_connections=3)
        calls = [asyncio.create_task(_request(pool)) for _ in range(20)]
        await asyncio.sleep(0.2)
        assert upstream.accepted == 3 and pool.open_connections == 3
        gate.set()
        answers = await asyncio.gather(*calls)
        assert [a.status for a in answers] == [200] * 20
        assert upstream.accepted == 3  # the waiters reused the three
        pool.close()


async def test_a_request_waiting_for_a_connection_times_out_and_frees_its_place() -> None:
    gate = asyncio.Event()

    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await gate.wait()
        await answer()(reader, writer)

    async with raw_upstream(slow) as upstream:
        pool = UpstreamPool(upstream.url, max_connections=1)
        busy = asyncio.create_task(_request(pool, within=5.0))
        await asyncio.sleep(0.1)
        with pytest.raises(UpstreamTimeoutError, match="no free connection"):
            await _request(pool, within=0.2)
        assert not pool._slot_waiters
        gate.set()
        assert (await busy).status == 200
        assert (await _request(pool)).status == 200
        assert upstream.accepted == 1
        pool.close()


async def test_a_closed_connection_gives_its_place_back() -> None:
    async def close_after(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await answer(extra=b"connection: close\r\n")(reader, writer)
        writer.close()

    async with raw_upstream(close_after) as upstream:
        pool = UpstreamPool(upstream.url, max_connections=1)
        for _ in range(5):
            assert (await _request(pool, within=2.0)).status == 200
        assert upstream.accepted == 5
        pool.close()


async def test_a_refused_connection_gives_its_place_back() -> None:
    pool = UpstreamPool("http://127.0.0.1:9", max_connections=1)
    for _ in range(3):
        with pytest.raises(UpstreamError):
            await _request(pool, within=1.0)
    assert pool.open_connections == 0


# --- what is counted -------------------------------------------------------------------------


async def test_only_predictions_are_counted() -> None:
    async with raw_upstream(answer(status=b"500 Internal Server Error")) as failing:
        table = RoutingTable(upstreams={"stable": failing.url}, versions={"stable": "1"})
        async with (
            create_router_app(model_deployment="m", table=table) as app,
            _client(app) as client,
        ):
            for path in ("/anything", "/v2/models/m/ready", "/predict/../x"):
                assert (await client.get(path)).status_code == 500
            assert (await client.post("/anything", json={})).status_code == 500
            assert (await client.post("/predict", json={})).status_code == 500
            infer = "/v2/models/m/versions/1/infer"
            assert (await client.post(infer, json={})).status_code == 500
            # Two predictions, both failed: a 100 % error rate, undiluted.
            assert await _requests_total(client, source="router") == 2
            assert await _requests_total(client, code="500") == 2


async def test_a_client_gone_mid_body_is_499() -> None:
    async with raw_upstream(answer()) as upstream:
        table = RoutingTable(upstreams={"stable": upstream.url}, versions={"stable": "1"})
        async with create_router_app(model_deployment="m", table=table) as app:
            messages = iter(
                [
                    {"type": "http.request", "body": b"{", "more_body": True},
                    {"type": "http.disconnect"},
                ]
            )

            async def receive() -> dict[str, Any]:
                return next(messages)

            sent: list[Any] = []

            async def send(message: dict[str, Any]) -> None:
                sent.append(message)

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/predict",
                "raw_path": b"/predict",
                "query_string": b"",
                "headers": [],
            }
            await app(scope, receive, send)
            assert not sent and upstream.accepted == 0
            async with _client(app) as client:
                code = str(CLIENT_CLOSED)
                assert await _requests_total(client, code=code, track="stable") == 1
                assert await _requests_total(client, code="500") == 0


async def test_a_client_gone_while_the_upstream_answers_is_499() -> None:
    """uvicorn's request cycle flags the disconnect; the proxy reads the flag after the call."""

    class Cycle:
        disconnected = False

        async def receive(self) -> dict[str, Any]:
            return {"type": "http.request", "body": b"{}", "more_body": False}

    cycle = Cycle()

    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cycle.disconnected = True  # the client left while the model was working
        await answer()(reader, writer)

    async with raw_upstream(hang_up) as upstream:
        table = RoutingTable(upstreams={"stable": upstream.url}, versions={"stable": "1"})
        async with create_router_app(model_deployment="m", table=table) as app:
            proxy: Proxy = app.proxy

            async def send(message: dict[str, Any]) -> None:
                return None

            scope = {
                "type": "http",
                "method": "POST",
                "path": "/predict",
                "raw_path": b"/predict",
                "query_string": b"",
                "headers": [],
            }
            await proxy.handle(scope, cycle.receive, send)
            async with _client(app) as client:
                assert await _requests_total(client, code=str(CLIENT_CLOSED)) == 1
                assert await _requests_total(client, code="200") == 0


# --- the admin surface -----------------------------------------------------------------------


async def test_weights_are_not_on_the_traffic_port_in_any_spelling() -> None:
    async with raw_upstream(answer(status=b"404 Not Found", body=b"{}")) as upstream:
        table = RoutingTable(upstreams={"stable": upstream.url})
        app = create_router_app(model_deployment="m", table=table, admin=True)
        async with app, _client(app) as client:
            for path in ("/router/weights", "/router%2fweights", "/router%2Fweights"):
                for method in ("GET", "PUT"):
                    response = await client.request(method, path, json={"canaryWeight": 100})
                    assert response.status_code == 404, (method, path)
            assert app.table is not None and app.table.canary_weight == 0
            # /router/ paths are the router's own; the escaped ones went to the upstream.
            assert upstream.accepted == 1


async def test_put_cannot_repoint_upstreams_unless_allowed() -> None:
    table = RoutingTable(upstreams={"stable": "http://127.0.0.1:9"})
    app = create_router_app(model_deployment="m", table=table, admin=True)
    admin = httpx.AsyncClient(transport=httpx.ASGITransport(app=app.admin_app), base_url="http://a")
    async with app, admin:
        moved = await admin.put("/router/weights", json={"upstreams": {"stable": "http://evil"}})
        assert moved.status_code == 403 and "--admin-upstreams" in moved.json()["error"]
        assert app.table == table
        weights = await admin.put("/router/weights", json={"versions": {"stable": "2"}})
        assert weights.status_code == 200
        assert (await admin.get("/router%2fweights")).status_code == 404
