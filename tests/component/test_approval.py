"""The manual approval gate (spec.canary.approval.required) under the real operator, against the
API emulator and a stand-in Prometheus whose every series reads 0 (no errors, no latency, no
drift; minRequests 0), so every analysis passes: the canary climbs its steps, then holds at the
last one with Approved=False (AwaitingApproval) while the analysis daemon goes on, and
`canaryml promote` releases it, once."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_rollout_operator import (
    CANARY,
    NS,
    STABLE,
    canaryml,
    condition,
    reasons,
    wait_status,
)


class ZeroPrometheus:
    """Answers every instant query with one series whose value is 0 (the held-out figures'
    queries with none: no figures), and counts the queries."""

    def __init__(self) -> None:
        self.queries = 0
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
        self.queries += 1
        series = {"metric": {"feature": "mean radius"}, "value": [time.time(), "0"]}
        result = [] if "offline" in promql else [series]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return aiohttp.web.Response(body=json.dumps(body).encode(), content_type="application/json")


@pytest.fixture
async def prometheus() -> AsyncIterator[ZeroPrometheus]:
    fake = ZeroPrometheus()
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
        "canary": {
            "model": CANARY,
            "steps": [10, 50],
            "stepInterval": "2s",
            "approval": {"required": True},
        },
        "analysis": {
            "prometheus": {"url": url, "timeout": "1s"},
            "interval": "1s",
            "window": "10s",
            "minRequests": 0,
        },
    }


def awaiting(found: dict[str, Any]) -> bool:
    approved = condition(found, "Approved")
    return approved.get("status") == "False" and approved.get("reason") == "AwaitingApproval"


async def test_the_gate_holds_at_the_last_step_until_promote(
    cluster: Cluster, prometheus: ZeroPrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # `canaryml status` on one line per row
    await cluster.apply(NS, "iris", gated_spec(prometheus.url))
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")

    held = await wait_status(cluster, "iris", "the approval gate", awaiting)
    assert (held["phase"], held["canaryWeight"], held["currentStep"]) == ("Progressing", 50, 1)
    assert held["stableModel"]["version"] == "1.0.0"  # not promoted
    message = condition(held, "Approved")["message"]
    assert "canary 1.1.0 passed every step and holds 50%" in message
    assert 'canaryml.dev/promote: "1.1.0"' in message
    assert condition(held, "Progressing")["reason"] == "AwaitingApproval"
    # As a pause, kstatus Current: nothing moves until a person acts.
    reconciling = condition(held, "Reconciling")
    assert (reconciling["status"], reconciling["reason"]) == ("False", "AwaitingApproval")

    # The analyses go on while it waits, and the wait is told once.
    first = held["lastAnalysis"]["time"]
    later = await wait_status(
        cluster, "iris", "analyses during the wait", lambda s: s["lastAnalysis"]["time"] > first
    )
    assert awaiting(later) and later["lastAnalysis"]["verdict"] == "Successful"
    assert later["canaryWeight"] == 50
    assert (await reasons(cluster, "iris")).count("AwaitingApproval") == 1

    shown = await canaryml("status", "iris")
    assert "AWAITED since" in shown and "canaryml promote iris -n default" in shown

    output = await canaryml("promote", "iris")
    assert 'canaryml.dev/promote: "1.1.0"' in output
    promoted = await wait_status(
        cluster, "iris", "Promoted", lambda s: s.get("phase") == "Promoted"
    )
    assert promoted["handledCommands"] == {"canaryml.dev/promote": "1.1.0"}
    approved = condition(promoted, "Approved")
    assert (approved["status"], approved["reason"]) == ("True", "Approved")
    assert promoted["history"][-1]["event"] == "promoted"
    assert promoted["history"][-1]["reason"] == 'promoted by canaryml.dev/promote: "1.1.0"'
    events = await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: "Promoted" in found,
        what="the Promoted Event",
    )
    assert events.count("Promoted") == 1 and events.count("AwaitingApproval") == 1
