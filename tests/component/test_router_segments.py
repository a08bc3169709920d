"""A/B segments, version pins and per-client rate limits through the router app (httpx's ASGI
transport, small in-process upstreams), and segments following a ModelDeployment through the
Kubernetes API emulator."""

from __future__ import annotations

import contextlib
from dataclasses import replace
from pathlib import Path

import httpx
from canaryml_api.telemetry import ROUTER_RATE_LIMITED, VERSION_HEADER
from canaryml_router.app import RouterApp, create_router_app
from canaryml_router.core import RateLimit, RoutingTable, SegmentRule
from canaryml_router.follow import ModelDeploymentFollower
from canaryml_router.settings import RouterSettings
from canaryml_testing.cluster import Cluster, eventually, running_emulator

from tests.component.test_router import (
    NAME,
    NAMESPACE,
    _configuration,
    _set_status,
    _spec,
    _value,
    upstream,
)

TRACK = "x-canaryml-track"


def client_of(app: RouterApp, peer: str = "10.0.0.7") -> httpx.AsyncClient:
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, client=(peer, 5000)),
        base_url="http://router",
        timeout=10,
    )


def segments(*rules: str) -> tuple[SegmentRule, ...]:
    settings = RouterSettings(
        model_deployment=NAME, upstreams=["stable=http://s"], canary_match=list(rules)
    )
    return settings.static_table().segments


async def test_segment_requests_reach_only_the_canary_at_weight_0() -> None:
    async with upstream("stable") as stable, upstream("canary", version="1.1.0") as canary:
        table = RoutingTable(
            upstreams={"stable": stable.url, "canary": canary.url},
            canary_weight=0,
            sticky_header="x-user",
            versions={"stable": "1.0.0", "canary": "1.1.0"},
            segments=segments("header:x-tenant=beta", "cookie:canary=yes"),
        )
        async with (
            create_router_app(model_deployment=NAME, table=table) as app,
            client_of(app) as client,
        ):
            matched = [{"x-tenant": "beta", "x-user": f"u{i}"} for i in range(20)] + [
                {"cookie": f"s={i}; canary=yes"} for i in range(20)
            ]
            for headers in matched:
                answer = await client.post("/predict", json={}, headers=headers)
                assert (answer.status_code, answer.headers[TRACK]) == (200, "canary")
            for i in range(40):
                other = {"x-tenant": "alpha", "x-user": f"u{i}", "cookie": "canary=no"}
                answer = await client.post("/predict", json={}, headers=other)
                assert answer.headers[TRACK] == "stable"
            assert len(canary.seen) == 40 and len(stable.seen) == 40
            # The segment header reaches the canary as sent.
            assert canary.seen[0].headers["x-tenant"] == "beta"
            assert await _value(client, "canaryml_requests_total", track="canary") == 40
            assert await _value(client, "canaryml_router_canary_weight") == 0


async def test_version_pinned_requests_reach_their_track_whatever_the_weights() -> None:
    async with (
        upstream("stable") as stable,
        upstream("canary", version="1.1.0") as canary,
        upstream("shadow", version="2.0.0") as shadow,
    ):
        table = RoutingTable(
            upstreams={"stable": stable.url, "canary": canary.url, "shadow": shadow.url},
            shadow_percent=100,
            versions={"stable": "1.0.0", "canary": "1.1.0", "shadow": "2.0.0"},
        )
        async with (
            create_router_app(model_deployment=NAME, table=table) as app,
            client_of(app) as client,
        ):
            for weight in (0, 50, 100):
                app.set_table(replace(table, canary_weight=weight))
                for version, track in (("1.0.0", "stable"), ("1.1.0", "canary")):
                    path = f"/v2/models/{NAME}/versions/{version}/infer"
                    answer = await client.post(path, json={"inputs": []})
                    assert answer.headers[TRACK] == track, (weight, version)
                    pinned = await client.post(
                        "/predict", json={}, headers={VERSION_HEADER: version}
                    )
                    assert pinned.headers[TRACK] == track, (weight, version)
            # The path reaches the upstream unchanged (its server checks the version too).
            assert canary.seen[0].path_qs == f"/v2/models/{NAME}/versions/1.1.0/infer"
            # Not the shadow's version, nor an unknown one: 404 naming what is served.
            for version in ("2.0.0", "9.9.9"):
                path = f"/v2/models/{NAME}/versions/{version}/infer"
                for answer in (
                    await client.post(path, json={}),
                    await client.post("/predict", json={}, headers={VERSION_HEADER: version}),
                ):
                    assert answer.status_code == 404
                    assert answer.json() == {
                        "error": f"model version {version!r} is not served here; served: "
                        "1.0.0 (stable), 1.1.0 (canary)"
                    }
            # 404s are no track's requests; each track counted its pinned requests.
            assert await _value(client, "canaryml_requests_total", track="canary") == 6
            assert await _value(client, "canaryml_requests_total", track="stable") == 6
            assert await _value(client, "canaryml_requests_total", code="404") == 0
            # Path-pinned requests are not mirrored (the shadow would refuse the version);
            # header-pinned /predict ones are.
            await app.mirror.drain(within=2.0)
            assert {s.path_qs for s in shadow.seen} == {"/predict"}
            assert len(shadow.seen) == 6


async def test_a_client_over_its_limit_gets_429_and_others_are_unaffected() -> None:
    async with upstream("stable") as stable:
        table = RoutingTable(
            upstreams={"stable": stable.url},
            rate_limit=RateLimit.of(0.001, 3, "x-api-key"),  # 3 at once, then ~none
        )
        async with (
            create_router_app(model_deployment=NAME, table=table) as app,
            client_of(app) as client,
            client_of(app, peer="10.0.0.8") as neighbour,
        ):
            codes = [
                (await client.post("/predict", json={}, headers={"x-api-key": "a"})).status_code
                for _ in range(5)
            ]
            assert codes == [200, 200, 200, 429, 429]
            refused = await client.post("/predict", json={}, headers={"x-api-key": "a"})
            assert refused.status_code == 429
            assert int(refused.headers["retry-after"]) >= 1
            assert refused.json()["error"].startswith("rate limit: this client is over")
            assert refused.json()["burst"] == 3
            # Another key from the same address, and requests without a key from another
            # address (named by the peer): each its own bucket.
            for _ in range(3):
                other = await client.post("/predict", json={}, headers={"x-api-key": "b"})
                assert other.status_code == 200
                assert (await neighbour.post("/predict", json={})).status_code == 200
            # Refused requests never reached the track, nor count as its requests.
            assert len(stable.seen) == 3 + 3 + 3
            assert await _value(client, "canaryml_requests_total", track="stable") == 9
            assert await _value(client, ROUTER_RATE_LIMITED) == 3
            # The router's own endpoints are never limited.
            for _ in range(5):
                assert (await client.get("/router/healthz")).status_code == 200


async def test_the_routers_default_limit_applies_when_the_table_has_none() -> None:
    async with upstream("stable") as stable:
        table = RoutingTable(upstreams={"stable": stable.url})
        limit = RateLimit.of(0.001, 1, None)
        async with (
            create_router_app(model_deployment=NAME, table=table, rate_limit=limit) as app,
            client_of(app) as client,
        ):
            assert (await client.post("/predict", json={})).status_code == 200
            assert (await client.post("/predict", json={})).status_code == 429
            assert await _value(client, ROUTER_RATE_LIMITED) == 1


async def test_segments_follow_the_model_deployment_and_end_with_a_rollback(
    tmp_path: Path,
) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stable = await stack.enter_async_context(upstream("stable"))
        canary = await stack.enter_async_context(upstream("canary", version="1.1.0"))
        emulator, kubeconfig = await stack.enter_async_context(running_emulator(tmp_path))
        cluster = Cluster(emulator)
        routing = {
            "canaryMatch": [{"header": "x-tenant", "value": "beta"}],
            "rateLimit": {"requestsPerSecond": 1000, "burst": 1000},
        }
        await cluster.apply(NAMESPACE, NAME, _spec(routing=routing))
        await _set_status(cluster, {"canaryWeight": 0, "stableVersion": "1.0.0"})
        follower = ModelDeploymentFollower(
            name=NAME,
            namespace=NAMESPACE,
            upstreams={"stable": stable.url, "canary": canary.url},
            configuration=_configuration(kubeconfig),
            max_backoff=0.5,
        )
        app = await stack.enter_async_context(
            create_router_app(model_deployment=NAME, weight_source=follower.run)
        )
        client = await stack.enter_async_context(client_of(app))

        async def table() -> RoutingTable | None:
            return app.table

        first = await eventually(table, until=lambda t: t is not None, within=5)
        assert first is not None and first.canary_available
        assert first.rate_limit == RateLimit(1000.0, 1000)
        beta = {"x-tenant": "beta"}
        for _ in range(10):
            answer = await client.post("/predict", json={}, headers=beta)
            assert answer.headers[TRACK] == "canary"
            assert (await client.post("/predict", json={})).headers[TRACK] == "stable"
        pinned = await client.post(f"/v2/models/{NAME}/versions/1.1.0/infer", json={})
        assert pinned.headers[TRACK] == "canary"

        await _set_status(cluster, {"phase": "RolledBack"})
        await eventually(
            table, until=lambda t: t is not None and not t.canary_available, within=2.0
        )
        for _ in range(10):
            answer = await client.post("/predict", json={}, headers=beta)
            assert answer.headers[TRACK] == "stable"
        gone = await client.post(f"/v2/models/{NAME}/versions/1.1.0/infer", json={})
        assert gone.status_code == 404
        assert len(canary.seen) == 11
