"""Blue-green's preview mirror in the router app (httpx's ASGI transport, in-process upstreams):
with `canary_mirror` and the canary at 0%, every live prediction request the stable answered
2xx also goes to the preview after the client has its answer; the preview's answers are counted
as the canary's requests; pinned requests, failed ones and reads are not mirrored; at any
weight above 0 nothing is."""

from __future__ import annotations

import asyncio
import time

import aiohttp.web
from canaryml_router.app import create_router_app
from canaryml_router.core import RoutingTable
from canaryml_testing.cluster import eventually

from tests.component.test_router import _answer, _async, _client, _value, upstream


def preview_table(stable: str, canary: str, *, weight: int = 0) -> RoutingTable:
    return RoutingTable(
        upstreams={"stable": stable, "canary": canary},
        canary_weight=weight,
        versions={"stable": "1.0.0", "canary": "1.1.0"},
        canary_mirror=True,
    )


async def test_live_requests_are_mirrored_to_the_preview_and_counted_as_its_own() -> None:
    release = asyncio.Event()

    async def slow_preview(request: aiohttp.web.Request, body: bytes) -> aiohttp.web.Response:
        await release.wait()
        return aiohttp.web.json_response(
            _answer("canary", [1], [[0.2, 0.8]]), headers={"x-canaryml-model-version": "1.1.0"}
        )

    async with upstream("stable") as stable, upstream("canary", handler=slow_preview) as preview:
        table = preview_table(stable.url, preview.url)
        assert table.canary_mirror_active and table.as_json()["canaryMirror"] is True
        async with (
            create_router_app(model_deployment="bc", table=table) as app,
            _client(app) as client,
        ):
            start = time.monotonic()
            response = await client.post("/predict", json={"a": 1})
            # The client has the stable's answer while the preview still thinks.
            assert time.monotonic() - start < 2
            assert response.status_code == 200 and response.json()["track"] == "stable"
            await eventually(lambda: _async(len(preview.seen)), what="the mirrored request")
            assert preview.seen[0].body == stable.seen[0].body
            release.set()
            counted = await eventually(
                lambda: _value(client, "canaryml_requests_total", track="canary", code="200"),
                what="the preview's answer counted",
            )
            assert counted == 1
            assert await _value(client, "canaryml_requests_total", track="stable") == 1
            # Not compared: the comparison series is the shadow's.
            assert await _value(client, "canaryml_shadow_comparisons_total") == 0

            # Not mirrored: a request pinned to a version (the stable's, or the preview's own,
            # which the preview answers itself), a read.
            pinned = await client.post(
                "/predict", json={"a": 2}, headers={"x-canaryml-model-version": "1.0.0"}
            )
            assert pinned.json()["track"] == "stable"
            own = await client.post(
                "/predict", json={"a": 3}, headers={"x-canaryml-model-version": "1.1.0"}
            )
            assert own.json()["track"] == "canary"
            await client.get("/v2/health/ready")
            await client.post("/predict", json={"a": 4})  # mirrored
            await eventually(
                lambda: _value(client, "canaryml_requests_total", track="canary"),
                until=lambda n: n == 3,
                what="the pinned request and the second mirror counted",
            )
            assert [seen.body for seen in preview.seen] == [b'{"a":1}', b'{"a":3}', b'{"a":4}']


async def test_a_failing_preview_never_changes_the_answer_and_counts_as_its_error() -> None:
    async def failing(request: aiohttp.web.Request, body: bytes) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"error": "boom"}, status=500)

    async with (
        upstream("stable") as stable,
        upstream("canary", handler=failing) as preview,
        create_router_app(
            model_deployment="bc", table=preview_table(stable.url, preview.url)
        ) as app,
        _client(app) as client,
    ):
        for i in range(3):
            response = await client.post("/predict", json={"i": i})
            assert response.status_code == 200 and response.json()["track"] == "stable"
        errors = await eventually(
            lambda: _value(client, "canaryml_requests_total", track="canary", code="500"),
            until=lambda n: n == 3,
            what="the preview's errors counted",
        )
        assert errors == 3


async def test_nothing_is_mirrored_once_the_canary_takes_traffic() -> None:
    async with upstream("stable") as stable, upstream("canary") as canary:
        table = preview_table(stable.url, canary.url, weight=100)
        assert not table.canary_mirror_active
        async with (
            create_router_app(model_deployment="bc", table=table) as app,
            _client(app) as client,
        ):
            for i in range(3):
                assert (await client.post("/predict", json={"i": i})).json()["track"] == "canary"
            await asyncio.sleep(0.2)
            assert stable.seen == [] and len(canary.seen) == 3
