"""Reusable analysis under the real operator, against the API emulator and a stand-in Prometheus
whose every series reads 0 and which records the queries it is asked: a ModelDeployment's
analysis.templates (an AnalysisTemplate and a ClusterAnalysisTemplate) bring their metrics,
args substituted, into every analysis; an edited template is used at the next analysis; a
missing one holds the rollout with a condition and an Event, the tracks untouched, until it
exists again; a metric name given twice is an invalid spec naming both."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
from canaryml_api import resource as api
from canaryml_testing.cluster import MD_PATH, Cluster, eventually

from tests.component.test_rollout_operator import (
    CANARY,
    NS,
    STABLE,
    condition,
    reasons,
    status,
    wait_status,
)

CLUSTER_TEMPLATES = f"{MD_PATH}/{api.CLUSTER_TEMPLATE_PLURAL}"


class RecordingPrometheus:
    """Answers every instant query with one series whose value is 0 (the held-out figures'
    with none), and keeps the queries asked."""

    def __init__(self) -> None:
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
        series = {"metric": {"feature": "mean radius"}, "value": [time.time(), "0"]}
        result = [] if "offline" in promql else [series]
        body = {"status": "success", "data": {"resultType": "vector", "result": result}}
        return aiohttp.web.Response(body=json.dumps(body).encode(), content_type="application/json")


@pytest.fixture
async def prometheus() -> AsyncIterator[RecordingPrometheus]:
    fake = RecordingPrometheus()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


LATENCY = {
    "args": [{"name": "service"}, {"name": "quantile", "value": "0.99"}],
    "metrics": [
        {
            "name": "upstream-latency",
            "query": "histogram_quantile({{args.quantile}}, "
            'rate(upstream_seconds_bucket{service="{{args.service}}"}[1m]))',
            "max": 0.5,
        }
    ],
}
ERRORS = {
    "metrics": [
        {"name": "upstream-errors", "query": "sum(rate(upstream_errors_total[1m]))", "max": 1}
    ]
}


async def create_templates(cluster: Cluster) -> None:
    await cluster.call(
        "POST",
        cluster.path("AnalysisTemplate", NS),
        {
            "apiVersion": api.API_VERSION,
            "kind": api.TEMPLATE_KIND,
            "metadata": {"name": "latency", "namespace": NS},
            "spec": LATENCY,
        },
    )
    await create_cluster_template(cluster)


async def create_cluster_template(cluster: Cluster) -> None:
    await cluster.call(
        "POST",
        CLUSTER_TEMPLATES,
        {
            "apiVersion": api.API_VERSION,
            "kind": api.CLUSTER_TEMPLATE_KIND,
            "metadata": {"name": "errors"},
            "spec": ERRORS,
        },
    )


def templated_spec(url: str, **analysis: Any) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "analysis": {
            "prometheus": {"url": url, "timeout": "1s"},
            "interval": "1s",
            "window": "10s",
            "minRequests": 0,
            "metrics": [{"name": "own", "query": "sum(own_total)", "max": 1}],
            "templates": [
                {"name": "latency", "args": [{"name": "service", "value": "payments"}]},
                {"name": "errors", "kind": "ClusterAnalysisTemplate"},
            ],
            **analysis,
        },
    }


def checks(found: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {check["name"]: check for check in (found.get("lastAnalysis") or {}).get("checks", [])}


async def at_first_step(cluster: Cluster, spec: dict[str, Any]) -> dict[str, Any]:
    await cluster.apply(NS, "iris", spec)
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    return await wait_status(
        cluster, "iris", "an analysis with every metric", lambda s: len(checks(s)) >= 3
    )


async def test_template_metrics_are_judged_with_the_inline_ones_and_edits_reach_the_next_analysis(
    cluster: Cluster, prometheus: RecordingPrometheus
) -> None:
    await create_templates(cluster)
    found = await at_first_step(cluster, templated_spec(prometheus.url))
    named = checks(found)
    assert {"own", "upstream-latency", "upstream-errors"} <= set(named)
    assert named["upstream-latency"]["verdict"] == "Successful"
    assert (named["upstream-latency"]["max"], named["upstream-errors"]["max"]) == (0.5, 1.0)
    # The args substituted: the reference's value, the template's default.
    assert (
        'histogram_quantile(0.99, rate(upstream_seconds_bucket{service="payments"}[1m]))'
        in prometheus.queries
    )
    assert "sum(rate(upstream_errors_total[1m]))" in prometheus.queries
    assert not any("{{" in query for query in prometheus.queries)

    # An edit of the template (no change of the ModelDeployment) is used at the next analysis.
    edited = {**LATENCY, "metrics": [{**LATENCY["metrics"][0], "max": 0.25}]}
    await cluster.patch("AnalysisTemplate", NS, "latency", {"spec": edited})
    found = await wait_status(
        cluster,
        "iris",
        "an analysis with the edited bound",
        lambda s: checks(s).get("upstream-latency", {}).get("max") == 0.25,
    )
    assert found["canaryWeight"] == 10 and found["phase"] == "Progressing"


async def test_a_missing_template_holds_the_rollout_until_it_exists(
    cluster: Cluster, prometheus: RecordingPrometheus
) -> None:
    await create_templates(cluster)
    await at_first_step(cluster, templated_spec(prometheus.url))
    stable_before = await cluster.get("Deployment", NS, "iris-stable")
    canary_before = await cluster.get("Deployment", NS, "iris-canary")
    assert stable_before is not None and canary_before is not None

    await cluster.call("DELETE", f"{CLUSTER_TEMPLATES}/errors")
    held = await wait_status(
        cluster,
        "iris",
        "the TemplateNotFound condition",
        lambda s: condition(s, "Stalled").get("reason") == "TemplateNotFound",
    )
    message = condition(held, "Degraded")["message"]
    assert message == (
        "analysis.templates: ClusterAnalysisTemplate 'errors' not found; the rollout holds "
        "until it exists or the reference is removed"
    )
    assert held["canaryWeight"] == 10 and held["currentStep"] == 0
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda said: "TemplateNotFound" in said,
        what="the TemplateNotFound Event",
    )
    # The tracks keep what they had: no write to either Deployment.
    for name, before in (("iris-stable", stable_before), ("iris-canary", canary_before)):
        after = await cluster.get("Deployment", NS, name)
        assert after is not None
        assert after["metadata"]["generation"] == before["metadata"]["generation"], name
    # No analysis while it is missing (one and a half analysis intervals).
    last = held["lastAnalysis"]["time"]
    queries = len(prometheus.queries)
    await asyncio.sleep(1.5)
    assert (await status(cluster, "iris"))["lastAnalysis"]["time"] == last
    assert len(prometheus.queries) == queries

    # Created again: the next look (an analysis interval later) resumes the analyses.
    await create_cluster_template(cluster)
    resumed = await wait_status(
        cluster,
        "iris",
        "analyses again",
        lambda s: (
            (s.get("lastAnalysis") or {}).get("time") != last
            and condition(s, "Stalled").get("status") != "True"
        ),
    )
    assert "upstream-errors" in checks(resumed)
    assert condition(resumed, "Degraded").get("status") != "True"
    assert resumed["canaryWeight"] == 10


async def test_a_metric_name_clash_is_an_invalid_spec_naming_both(
    cluster: Cluster, prometheus: RecordingPrometheus
) -> None:
    await create_templates(cluster)
    spec = templated_spec(
        prometheus.url,
        metrics=[{"name": "upstream-errors", "query": "sum(mine)", "max": 1}],
    )
    await cluster.apply(NS, "iris", spec)
    found = await wait_status(
        cluster,
        "iris",
        "the InvalidSpec condition",
        lambda s: condition(s, "Degraded").get("reason") == "InvalidSpec",
    )
    assert condition(found, "Degraded")["message"] == (
        "analysis.templates: metric 'upstream-errors' is defined both by analysis.metrics and "
        "by ClusterAnalysisTemplate 'errors'; rename one"
    )
    assert found["phase"] == "Failed"
    await eventually(
        lambda: cluster.events(NS, "iris"),
        until=lambda events: any(
            e["reason"] == "InvalidSpec" and "ClusterAnalysisTemplate 'errors'" in e["message"]
            for e in events
        ),
        what="the InvalidSpec Event",
    )
    assert await cluster.get("Deployment", NS, "iris-canary") is None  # nothing created


async def test_a_resource_waiting_for_its_template_starts_once_it_is_created(
    cluster: Cluster, prometheus: RecordingPrometheus
) -> None:
    spec = templated_spec(prometheus.url)
    spec["analysis"]["templates"] = [{"name": "errors", "kind": "ClusterAnalysisTemplate"}]
    await cluster.apply(NS, "iris", spec)
    await wait_status(
        cluster,
        "iris",
        "the TemplateNotFound condition",
        lambda s: condition(s, "Degraded").get("reason") == "TemplateNotFound",
    )
    assert await cluster.get("Deployment", NS, "iris-stable") is None  # nothing created yet

    await create_cluster_template(cluster)  # no change to the ModelDeployment
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    found = await wait_status(
        cluster, "iris", "an analysis", lambda s: "upstream-errors" in checks(s)
    )
    assert found["canaryWeight"] == 10
    assert condition(found, "Degraded").get("status") != "True"
