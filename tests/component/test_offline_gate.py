"""The offline gate (analysis.offlineGate) under the real operator, against the API emulator and
a stand-in Prometheus that answers the held-out figures of each track: the analysis daemon
judges the available canary at weight 0, and a canary worse offline than stable allows is
rolled back before it ever gets traffic; a good one gets its first step."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp.web
import pytest
from canaryml_api import telemetry as t
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_operator import NS, STABLE, condition

CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
DIGEST = "d" * 64


class HeldOutPrometheus:
    """Answers the offline figures' queries with `figures[track]` (on DIGEST's 2,000 rows) and
    every other query with an empty vector; records whether any query asked for requests."""

    def __init__(self) -> None:
        self.figures: dict[str, dict[str, float]] = {}
        self.queries: list[str] = []
        self.url = ""
        self._runner: aiohttp.web.AppRunner | None = None

    async def start(self) -> None:
        app = aiohttp.web.Application()
        app.router.add_route("*", "/api/v1/query", self._query)
        self._runner = aiohttp.web.AppRunner(app, shutdown_timeout=0.5)
        await self._runner.setup()
        site = aiohttp.web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _query(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        form = await request.post()
        promql = str(form.get("query") or request.query.get("query") or "")
        self.queries.append(promql)
        track = "canary" if 'track="canary"' in promql else "stable"
        figures = self.figures.get(track, {})
        result: list[Mapping[str, Any]] = []
        if t.OFFLINE_EVALUATION_ROWS in promql:
            result = [_series({t.HELDOUT_SHA256_LABEL: DIGEST}, 2000.0)] if figures else []
        elif t.OFFLINE_EVALUATION in promql:
            result = [_series({t.METRIC_LABEL: name}, value) for name, value in figures.items()]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return aiohttp.web.Response(body=json.dumps(body).encode(), content_type="application/json")


def _series(labels: dict[str, str], value: float) -> dict[str, Any]:
    return {"metric": labels, "value": [time.time(), repr(value)]}


@pytest.fixture
async def prometheus() -> AsyncIterator[HeldOutPrometheus]:
    fake = HeldOutPrometheus()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


def gated_spec(url: str) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "analysis": {
            "prometheus": {"url": url, "timeout": "1s"},
            "interval": "1s",
            "offlineGate": {"metric": "accuracy", "maxDrop": 0.01},
        },
    }


async def roll_out(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    await cluster.apply(NS, name, spec)
    await eventually(lambda: cluster.get("Deployment", NS, f"{name}-canary"), what="the canary")
    await cluster.roll_out(NS, f"{name}-stable")
    await cluster.roll_out(NS, f"{name}-canary")


async def md(cluster: Cluster, name: str) -> dict[str, Any]:
    return dict(await cluster.get("ModelDeployment", NS, name) or {})


async def test_a_canary_worse_offline_is_rolled_back_before_any_traffic(
    cluster: Cluster, prometheus: HeldOutPrometheus
) -> None:
    prometheus.figures = {"canary": {"accuracy": 0.93}, "stable": {"accuracy": 0.955}}
    await roll_out(cluster, "iris", gated_spec(prometheus.url))

    found = await eventually(
        lambda: md(cluster, "iris"),
        until=lambda found: (found.get("status") or {}).get("phase") == "RolledBack",
        what="the canary refused by the offline gate",
    )
    status = found["status"]
    assert status["canaryWeight"] == 0 and "currentStep" not in status
    assert condition(found, "RolledBack")["reason"] == rollout.OFFLINE_GATE_FAILED
    assert condition(found, "Stalled")["reason"] == "RolledBack"
    message = condition(found, "RolledBack")["message"]
    assert "held-out accuracy 0.93 < stable 1.0.0's 0.955 - maxDrop 0.01" in message
    last = status["lastAnalysis"]
    assert (last["verdict"], last["weight"]) == ("Failed", 0)
    assert {f["track"]: f["metrics"] for f in last["offline"]} == {
        "canary": {"accuracy": 0.93},
        "stable": {"accuracy": 0.955},
    }
    events = await eventually(
        lambda: cluster.events(NS, "iris"),
        until=lambda events: any(e["reason"] == "RolledBack" for e in events),
        what="the RolledBack Event",
    )
    rolled_back = next(e for e in events if e["reason"] == "RolledBack")
    assert rolled_back["type"] == "Warning" and rolled_back["message"] == message
    assert not any(e["reason"] == "StepUp" for e in events)
    # Before any traffic only the figures were asked for: no request count, no error rate.
    assert prometheus.queries
    assert all(t.OFFLINE_EVALUATION in query for query in prometheus.queries)


async def test_a_canary_within_the_margin_gets_its_first_step(
    cluster: Cluster, prometheus: HeldOutPrometheus
) -> None:
    await roll_out(cluster, "iris", gated_spec(prometheus.url))
    # Not scraped yet: held at 0 %, saying so.
    held = await eventually(
        lambda: md(cluster, "iris"),
        until=lambda found: "not scraped yet" in condition(found, "Progressing").get("message", ""),
        what="the gate waiting for the figures",
    )
    assert held["status"]["canaryWeight"] == 0

    prometheus.figures = {"canary": {"accuracy": 0.96}, "stable": {"accuracy": 0.955}}
    first = await eventually(
        lambda: md(cluster, "iris"),
        until=lambda found: (found.get("status") or {}).get("canaryWeight") == 10,
        what="the first step",
    )
    assert first["status"]["currentStep"] == 0
    events = await eventually(
        lambda: cluster.events(NS, "iris"),
        until=lambda events: any(e["reason"] == "StepUp" for e in events),
        what="the StepUp Event",
    )
    step_up = next(e for e in events if e["reason"] == "StepUp")
    assert "offline gate passed" in step_up["message"]
