"""Every query of the Grafana dashboard, as Grafana sends it, against a real Prometheus.

Prometheus scrapes the metrics of the real exporter classes (the router's RouterMetrics, the
model servers' ServerMetrics and DriftCollector) and of an operator registry with the operator's
metric names, all served in this process, the way a cluster's Prometheus would see them. Each
panel query, its Grafana variables substituted, must be accepted (HTTP 200, status success; a
syntax error answers 400) and find series that carry every label its legend shows.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

import httpx
import numpy as np
import pytest
from canaryml_router.metrics import RouterMetrics
from canaryml_server.drift import DriftMonitor, DriftReport
from canaryml_server.drift_test import DriftTest, compare_counts
from canaryml_server.metrics import REQUESTS_TOTAL, ServerMetrics
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

from .prometheus import RunningPrometheus, Target

pytestmark = pytest.mark.integration

DASHBOARD_PATH = Path(__file__).parents[2] / "charts" / "canaryml" / "dashboards" / "canaryml.json"
NAMESPACE = "ml"
DEPLOYMENT = "iris"
OTHER = "other"  # a second ModelDeployment in the namespace: no panel may show it
STABLE, CANARY = "1.0.0", "1.1.0"
WORST_PSI = 0.31
GRAFANA_VALUES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# What Grafana puts in a regex matcher for one ModelDeployment, and for several ("All").
SELECTIONS = {"one": (DEPLOYMENT,), "all": (DEPLOYMENT, OTHER)}
OPERATOR_LABELS = ("namespace", "model_deployment")
StartPrometheus = Callable[..., RunningPrometheus]


def substitute(text: str, deployments: tuple[str, ...] = (DEPLOYMENT,)) -> str:
    """Grafana's variables replaced as it does for Prometheus; KeyError for an unknown one."""
    values = {
        **GRAFANA_VALUES,
        "namespace": NAMESPACE,
        "model_deployment": deployments[0]
        if len(deployments) == 1
        else "(" + "|".join(map(re.escape, deployments)) + ")",
    }
    return re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda m: values[m.group(1) or m.group(2)], text)


def dashboard_targets() -> list[tuple[str, str, str]]:
    """(panel title and refId, expr, legendFormat) of every panel query."""
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    return [
        (f"{panel['title']} {target['refId']}", target["expr"], target.get("legendFormat", ""))
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]


def variable_queries() -> dict[str, str]:
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    return {
        variable["name"]: variable["query"]["query"]
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "query"
    }


@dataclass(frozen=True)
class FakeDriftMonitor:
    """What DriftCollector reads of a DriftMonitor: a full window with fixed PSIs."""

    rows: int = 100

    def report(self) -> DriftReport:
        return DriftReport(
            rows=self.rows,
            window=self.rows,
            feature_psi={"sepal_length": 0.02, "petal_width": WORST_PSI},
            feature_js={"sepal_length": 0.01, "petal_width": 0.2},
            prediction_psi=0.05,
            prediction_js=0.03,
        )

    def test(self) -> tuple[DriftTest, DriftTest]:
        """The calibrated tests of a window where petal_width moved and sepal_length did not."""
        features = compare_counts(
            [np.array([50, 50]), np.array([50, 50])],
            [np.array([50, 50]), np.array([90, 10])],
            names=["sepal_length", "petal_width"],
            ordered=[2, 2],
        )
        prediction = compare_counts(
            [np.array([50, 50])], [np.array([50, 50])], names=["prediction"], ordered=[0]
        )
        return features, prediction


def router_registry(deployment: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    router = RouterMetrics(registry=registry, model_deployment=deployment)
    router.set_weights(canary_weight=20, shadow_percent=10)
    for track, version, code in [
        ("stable", STABLE, 200),
        ("stable", STABLE, 200),
        ("canary", CANARY, 200),
        ("canary", CANARY, 503),
    ]:
        router.observe_request(track=track, version=version, code=code, seconds=0.004)
    router.declare_comparisons(versions={"stable": STABLE, "canary": CANARY})
    router.observe_comparison(track="canary", version=CANARY, result="agree")
    router.observe_comparison(track="canary", version=CANARY, result="disagree")
    return registry


def server_registry(track: str, version: str) -> CollectorRegistry:
    registry = CollectorRegistry()
    server = ServerMetrics(
        registry=registry,
        model_deployment=DEPLOYMENT,
        track=track,
        version=version,
        model_name="iris",
        runtime="sklearn",
    )
    server.observe_request(code=200, seconds=0.001)
    server.watch_drift(cast(DriftMonitor, FakeDriftMonitor()), min_rows=1)
    return registry


def operator_registry() -> CollectorRegistry:
    """The operator's metric names and labels (canaryml_operator.metrics)."""
    registry = CollectorRegistry()
    labels = {"namespace": NAMESPACE, "model_deployment": DEPLOYMENT}
    weight = Gauge("canaryml_operator_canary_weight", "", OPERATOR_LABELS, registry=registry)
    weight.labels(**labels).set(20)
    phase = Gauge("canaryml_operator_phase", "", [*OPERATOR_LABELS, "phase"], registry=registry)
    for name in ("Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Failed", "Stable"):
        phase.labels(**labels, phase=name).set(1 if name == "Progressing" else 0)
    analyses = Counter(
        "canaryml_operator_analyses", "", [*OPERATOR_LABELS, "verdict"], registry=registry
    )
    for verdict in ("Successful", "Failed", "Inconclusive", "Error"):
        analyses.labels(**labels, verdict=verdict)
    rollouts = Counter(
        "canaryml_operator_rollouts", "", [*OPERATOR_LABELS, "result"], registry=registry
    )
    for result in ("promoted", "rolledBack"):
        rollouts.labels(**labels, result=result)
    for name in ("canaryml_operator_stalled", "canaryml_operator_held_analyses"):
        Gauge(name, "", OPERATOR_LABELS, registry=registry).labels(**labels).set(0)
    return registry


@pytest.fixture
def exporters() -> Iterator[list[Target]]:
    """The router, two model servers and the operator, each on its own loopback port."""
    in_namespace = {"namespace": NAMESPACE}  # what a cluster's Prometheus adds to each target
    registries = [
        (router_registry(DEPLOYMENT), in_namespace),
        (router_registry(OTHER), in_namespace),
        (server_registry("stable", STABLE), in_namespace),
        (server_registry("canary", CANARY), in_namespace),
        (operator_registry(), {}),  # its series carry their resource's namespace
    ]
    servers: list[tuple[WSGIServer, threading.Thread]] = []
    targets = []
    try:
        for registry, labels in registries:
            server, thread = start_http_server(0, addr="127.0.0.1", registry=registry)
            servers.append((server, thread))
            targets.append(Target(f"http://127.0.0.1:{server.server_port}", labels))
        yield targets
    finally:
        for server, thread in servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)


def get(prometheus: RunningPrometheus, path: str, **params: str) -> httpx.Response:
    return httpx.get(f"{prometheus.url}{path}", params=params, auth=prometheus.auth, timeout=10)


def test_every_dashboard_query_and_variable_works_on_real_series(
    prometheus: StartPrometheus, exporters: list[Target]
) -> None:
    running = prometheus(exporters)
    # rate() and increase() need two samples of every target (Prometheus scrapes its first
    # targets about 5 s after it starts: that is most of this test's time).
    running.wait_for(
        "count(sum_over_time(up[1m]) >= 2)", lambda count: count == len(exporters), within=20
    )

    # The control: Prometheus does refuse what it cannot parse, e.g. an unsubstituted variable.
    for broken in ("sum(", f"rate({REQUESTS_TOTAL}[$__rate_interval])"):
        response = get(running, "/api/v1/query", query=broken)
        assert response.status_code == 400, f"{broken}: {response.text}"
        assert response.json()["status"] == "error"

    problems = []
    results: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for (selection, deployments), (title, expr, legend) in product(
        SELECTIONS.items(), dashboard_targets()
    ):
        where = f"{title} ({selection})"
        query = substitute(expr, deployments)
        response = get(running, "/api/v1/query", query=query)
        if response.status_code != 200 or response.json().get("status") != "success":
            problems.append(f"{where}: HTTP {response.status_code} {response.text}\n  {query}")
            continue
        result = response.json()["data"]["result"]
        results[selection, title] = result
        if not result:
            problems.append(f"{where}: no series\n  {query}")
        shown = set(re.findall(r"\{\{(\w+)\}\}", legend))
        for series in result:
            labels = series["metric"]
            if not shown <= set(labels):
                problems.append(f"{where}: legend {legend!r} but series {labels}")
            if labels.get("model_deployment", DEPLOYMENT) not in deployments:
                problems.append(f"{where}: {deployments} selected, shows {labels}")
    assert problems == [], "\n".join(problems)

    # The panels that read gauges show what the exporters set.
    [phase] = results["one", "Rollout phase A"]
    assert phase["metric"]["phase"] == "Progressing"
    drift = {
        s["metric"]["track"]: float(s["value"][1])
        for s in results["one", "Worst feature drift (PSI) by track A"]
    }
    assert drift == {"stable": WORST_PSI, "canary": WORST_PSI}
    weights = [
        float(s["value"][1]) for r in ("A", "B") for s in results["one", f"Canary weight {r}"]
    ]
    assert weights == [20.0, 20.0]
    # "All" does select every ModelDeployment of the namespace.
    requests = results["all", "Request rate by track A"]
    assert {s["metric"]["model_deployment"] for s in requests} == {DEPLOYMENT, OTHER}

    # The variables: Grafana's label_values(selector, label) is the label-values API, match[].
    expected = {"namespace": [NAMESPACE], "model_deployment": sorted([DEPLOYMENT, OTHER])}
    for name, query in variable_queries().items():
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match is not None, query
        selector, label = substitute(match.group(1)), match.group(2)
        response = get(running, f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert response.status_code == 200, response.text
        assert response.json()["data"] == expected[name], query
