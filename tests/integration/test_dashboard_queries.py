"""Every query of the Grafana dashboard, as Grafana sends it, against a real Prometheus.

Prometheus scrapes the metrics of the real exporter classes (the router's RouterMetrics, the
model servers' ServerMetrics, DriftCollector and FeedbackMetrics) and of an operator registry
with the operator's metric names, all served in this process, the way a cluster's Prometheus
would see them, while a thread keeps sending them traffic and feedback (so that rates are not
0). Each panel query, its Grafana variables substituted, must be accepted (HTTP 200, status
success; a syntax error answers 400) and find series that carry every label its legend shows.
"""

from __future__ import annotations

import json
import re
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any, cast
from wsgiref.simple_server import WSGIServer

import httpx
import numpy as np
import pytest
from canaryml_api.telemetry import (
    BIN_LABEL,
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_DELAY_BUCKETS,
    FEEDBACK_LABELS_TOTAL,
    LATENCY_BUCKETS,
    REASON_LABEL,
)
from canaryml_router.metrics import RouterMetrics
from canaryml_server.drift import DriftMonitor, DriftReport, Sampling
from canaryml_server.drift_test import DriftTest, compare_counts
from canaryml_server.feedback import Labelled
from canaryml_server.metrics import REQUESTS_TOTAL, ServerMetrics
from canaryml_server.predictions import PredictionTally
from canaryml_server.profile import CategoricalBins
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from prometheus_client.registry import Collector

from .prometheus import RunningPrometheus, Target

pytestmark = pytest.mark.integration

DASHBOARD_PATH = Path(__file__).parents[2] / "charts" / "canaryml" / "dashboards" / "canaryml.json"
NAMESPACE = "ml"
DEPLOYMENT = "iris"
OTHER = "other"  # a second ModelDeployment in the namespace: no panel may show it
STABLE, CANARY = "1.0.0", "1.1.0"
WORST_PSI = 0.31
# Each tick of traffic: the router's requests (stable fast, canary slow) and the rows each
# server predicts, by class. Whole batches, so every scrape sees these shares exactly.
TICK_S = 0.05
FAST_S, SLOW_S = 0.004, 0.3
CLASSES = (0, 1, 2)
PREDICTED = {"stable": (0, 0, 0, 1), "canary": (0, 1, 1, 1)}  # class 2: never, share 0
# Each tick's feedback, as the servers' feedback endpoint counts it: (track, delay in seconds,
# correct) per labelled prediction, by the server that took it. Any replica takes feedback for
# every track: the canary's labels reach both servers, and only their sum is its accuracy (1/4;
# 1 and 0 on each server alone, 1/2 their mean). Summed over servers scraped at different
# times, a rate is exact only to the scrapes' jitter.
FEEDBACK = {
    "stable": [("stable", 5.0, True)] * 3 + [("stable", 5.0, False), ("canary", 120.0, True)],
    "canary": [("canary", 120.0, False)] * 3,
}
ACCURACY = {"stable": 0.75, "canary": 0.25}
REFUSED = Tally({"tampered": 1, "expired": 2})  # each tick, by iris's stable server
# OTHER is a regressor with one track: its feedback's errors (true - predicted), MAE 1.0.
ERRORS = (1.5, -0.5)
GRAFANA_VALUES = {"__rate_interval": "1m", "__range": "1h", "__interval": "15s"}
# What Grafana puts in a regex matcher for one ModelDeployment, and for several ("All").
SELECTIONS = {"one": (DEPLOYMENT,), "all": (DEPLOYMENT, OTHER)}
OPERATOR_LABELS = ("namespace", "model_deployment")
P_VALUES = "Drift p-value by track (calibrated test, log scale)"
SLOW_REQUESTS = "Slow requests by track"
CLASS_SHARE = "Predicted class share by track"
ACCURACY_PANEL = "Accuracy on labelled predictions by track"
MEAN_ABSOLUTE_ERROR = "Mean absolute error by track"
LABEL_DELAY = "Label delay p50/p95 by track"
FEEDBACK_REFUSED = "Feedback refused by reason"
# Panels of regressors only: empty when only iris, a classifier, is selected.
REGRESSOR_ONLY = {MEAN_ABSOLUTE_ERROR}
P_VALUE_FLOOR = 1e-16  # the panel's clamp_min: a p-value of 0 stays on its log axis
StartPrometheus = Callable[..., RunningPrometheus]
Tick = Callable[[], None]
# Ticks and scrapes take turns: a scrape never sees half of a tick (a label counted but not
# yet whether it was correct), so a ratio of one server's series is exact.
TURNS = threading.Lock()


class Whole(Collector):
    """A registry whose scrapes wait for the tick in progress."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Any]:
        with TURNS:
            return iter(list(self._registry.collect()))


def quantile_in_bucket(q: float, seconds: float) -> float:
    """histogram_quantile of observations that all fall in one bucket: interpolated in it."""
    bounds = (0.0, *FEEDBACK_DELAY_BUCKETS)
    upper = next(i for i, bound in enumerate(bounds) if bound >= seconds)
    return bounds[upper - 1] + q * (bounds[upper] - bounds[upper - 1])


def substitute(
    text: str, deployments: tuple[str, ...] = (DEPLOYMENT,), slow_bound: str | None = None
) -> str:
    """Grafana's variables replaced as it does for Prometheus; KeyError for an unknown one."""
    values = {
        **GRAFANA_VALUES,
        "namespace": NAMESPACE,
        "slow_bound": slow_bound or custom_variables()["slow_bound"][0],
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


def custom_variables() -> dict[str, tuple[str, list[str]]]:
    """(default, options) of each custom variable."""
    dashboard = json.loads(DASHBOARD_PATH.read_text())
    return {
        variable["name"]: (
            variable["current"]["value"],
            [option["value"] for option in variable["options"]],
        )
        for variable in dashboard["templating"]["list"]
        if variable["type"] == "custom"
    }


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
            sampling=self.sampling(),
        )

    def sampling(self) -> Sampling:
        return Sampling(rows_seen=4 * self.rows, rows_binned=self.rows, sample_rows=16)

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


def router_registry(deployment: str) -> tuple[CollectorRegistry, Tick]:
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

    def tick() -> None:
        router.observe_request(track="stable", version=STABLE, code=200, seconds=FAST_S)
        router.observe_request(track="canary", version=CANARY, code=200, seconds=SLOW_S)

    return registry, tick


def server_registry(track: str, version: str) -> tuple[CollectorRegistry, Tick]:
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
    # What the data plane does: count each batch's predicted classes (a classifier's profile).
    tally = PredictionTally(CategoricalBins(categories=list(CLASSES), proportions=[0.4, 0.4, 0.2]))
    server.count_predictions(tally)
    batch = np.array(PREDICTED[track])
    feedback = server.count_feedback(regression=False)
    versions = {"stable": STABLE, "canary": CANARY}
    labelled = [
        Labelled(track=of, version=versions[of], delay_seconds=delay, correct=correct, error=None)
        for of, delay, correct in FEEDBACK[track]
    ]

    def tick() -> None:
        tally.observe(batch)
        feedback.labelled(labelled)
        if track == "stable":
            feedback.rejected(REFUSED)

    return registry, tick


def regressor_registry() -> tuple[CollectorRegistry, Tick]:
    """OTHER's one server: a regressor given feedback."""
    registry = CollectorRegistry()
    server = ServerMetrics(
        registry=registry,
        model_deployment=OTHER,
        track="stable",
        version=STABLE,
        model_name="housing",
        runtime="sklearn",
    )
    feedback = server.count_feedback(regression=True)
    labelled = [
        Labelled(track="stable", version=STABLE, delay_seconds=30.0, correct=None, error=error)
        for error in ERRORS
    ]

    def tick() -> None:
        feedback.labelled(labelled)

    return registry, tick


def operator_registry() -> tuple[CollectorRegistry, Tick]:
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
    return registry, lambda: None


@pytest.fixture
def exporters() -> Iterator[list[Target]]:
    """The router, two model servers and the operator, each on its own loopback port, with
    traffic every TICK_S."""
    in_namespace = {"namespace": NAMESPACE}  # what a cluster's Prometheus adds to each target
    registries = [
        (router_registry(DEPLOYMENT), in_namespace),
        (router_registry(OTHER), in_namespace),
        (server_registry("stable", STABLE), in_namespace),
        (server_registry("canary", CANARY), in_namespace),
        (regressor_registry(), in_namespace),
        (operator_registry(), {}),  # its series carry their resource's namespace
    ]
    stop = threading.Event()

    def traffic() -> None:
        while not stop.wait(TICK_S):
            with TURNS:
                for (_, tick), _ in registries:
                    tick()

    sender = threading.Thread(target=traffic, name="traffic", daemon=True)
    servers: list[tuple[WSGIServer, threading.Thread]] = []
    targets = []
    try:
        for (registry, _), labels in registries:
            server, thread = start_http_server(
                0, addr="127.0.0.1", registry=cast(CollectorRegistry, Whole(registry))
            )
            servers.append((server, thread))
            targets.append(Target(f"http://127.0.0.1:{server.server_port}", labels))
        sender.start()
        yield targets
    finally:
        stop.set()
        if sender.is_alive():
            sender.join(timeout=5)
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
        panel = title.rsplit(" ", 1)[0]
        if not result and not (selection == "one" and panel in REGRESSOR_ONLY):
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

    # The opt-in checks' panels. The calibrated test's smallest p-values, as the servers
    # computed them (both test the same window).
    features, prediction = FakeDriftMonitor().test()
    smallest = {
        "A": max(min(column.adjusted_p for column in features.columns), P_VALUE_FLOOR),
        "B": max(prediction.p_value, P_VALUE_FLOOR),
    }
    assert smallest["A"] < 0.01 < smallest["B"]  # petal_width moved, the predictions did not
    for ref, p_value in smallest.items():
        p_values = {
            s["metric"]["track"]: float(s["value"][1]) for s in results["one", f"{P_VALUES} {ref}"]
        }
        assert p_values == pytest.approx({"stable": p_value, "canary": p_value}), ref
    # Each track's predicted rows by class, as the servers' tallies counted them.
    shares = {
        (s["metric"]["track"], s["metric"][BIN_LABEL]): float(s["value"][1])
        for s in results["one", f"{CLASS_SHARE} A"]
    }
    assert shares == pytest.approx(
        {
            (track, str(label)): predicted.count(label) / len(predicted)
            for track, predicted in PREDICTED.items()
            for label in CLASSES
        }
    )
    # Slow requests: stable answers in FAST_S, the canary in SLOW_S. Every bound the variable
    # offers is a bucket Prometheus has (a wrong `le` would leave the panel without series).
    default, bounds = custom_variables()["slow_bound"]
    assert default in bounds and [float(b) for b in bounds] == list(LATENCY_BUCKETS)
    [(_, slow_expr, _)] = [t for t in dashboard_targets() if t[0] == f"{SLOW_REQUESTS} A"]
    for bound in bounds:
        query = substitute(slow_expr, slow_bound=bound)
        response = get(running, "/api/v1/query", query=query)
        assert response.status_code == 200, response.text
        slow = {
            s["metric"]["track"]: float(s["value"][1]) for s in response.json()["data"]["result"]
        }
        slower = {"stable": float(bound) < FAST_S, "canary": float(bound) < SLOW_S}
        assert slow == pytest.approx({k: float(v) for k, v in slower.items()}), f"{bound}: {query}"

    # Feedback. Each track's accuracy on its labels, whichever server took them; none for the
    # regressor, and no mean absolute error for the classifier.
    def by_track(key: tuple[str, str]) -> dict[tuple[str, str, str], float]:
        return {
            (s["metric"]["model_deployment"], s["metric"]["track"], s["metric"]["version"]): float(
                s["value"][1]
            )
            for s in results[key]
        }

    accuracy = by_track(("all", f"{ACCURACY_PANEL} A"))
    labelled_of = [(of, correct) for items in FEEDBACK.values() for of, _, correct in items]
    assert {
        track: sum(correct for of, correct in labelled_of if of == track)
        / sum(of == track for of, _ in labelled_of)
        for track in ACCURACY
    } == ACCURACY
    assert accuracy == {
        (DEPLOYMENT, "stable", STABLE): pytest.approx(ACCURACY["stable"]),  # one server's
        (DEPLOYMENT, "canary", CANARY): pytest.approx(ACCURACY["canary"], abs=0.15),
    }
    # The canary's, to the jitter's digit: the panel's sums of the servers' rates, not a mean
    # of each server's accuracy (1/2), at one evaluation time.
    [(_, accuracy_expr, _)] = [t for t in dashboard_targets() if t[0] == f"{ACCURACY_PANEL} A"]
    at = str(float(get(running, "/api/v1/query", query="time()").json()["data"]["result"][0]))
    canary = f'{{namespace="{NAMESPACE}", model_deployment="{DEPLOYMENT}", track="canary"}}'

    def at_once(query: str) -> list[dict[str, Any]]:
        response = get(running, "/api/v1/query", query=query, time=at)
        assert response.status_code == 200, response.text
        return cast(list[dict[str, Any]], response.json()["data"]["result"])

    window = GRAFANA_VALUES["__rate_interval"]
    per_server = {
        metric: [float(s["value"][1]) for s in at_once(f"rate({metric}{canary}[{window}])")]
        for metric in (FEEDBACK_CORRECT_TOTAL, FEEDBACK_LABELS_TOTAL)
    }
    assert [len(rates) for rates in per_server.values()] == [2, 2]  # both servers took some
    [panel_canary] = [
        float(s["value"][1])
        for s in at_once(substitute(accuracy_expr))
        if s["metric"]["track"] == "canary"
    ]
    assert panel_canary == pytest.approx(
        sum(per_server[FEEDBACK_CORRECT_TOTAL]) / sum(per_server[FEEDBACK_LABELS_TOTAL])
    )
    assert results["one", f"{MEAN_ABSOLUTE_ERROR} A"] == []
    mean_absolute_error = sum(map(abs, ERRORS)) / len(ERRORS)
    assert by_track(("all", f"{MEAN_ABSOLUTE_ERROR} A")) == {
        (OTHER, "stable", STABLE): pytest.approx(mean_absolute_error)
    }
    # The label delay's quantiles, interpolated in the one bucket each track's delays fall in.
    delays = {"stable": 5.0, "canary": 120.0}
    for ref, q in (("A", 0.95), ("B", 0.5)):
        assert by_track(("one", f"{LABEL_DELAY} {ref}")) == pytest.approx(
            {
                (DEPLOYMENT, "stable", STABLE): quantile_in_bucket(q, delays["stable"]),
                (DEPLOYMENT, "canary", CANARY): quantile_in_bucket(q, delays["canary"]),
            }
        ), ref
    # Refusals by reason, the reasons with none left out, in the proportions they happened.
    refused = {
        (s["metric"]["model_deployment"], s["metric"][REASON_LABEL]): float(s["value"][1])
        for s in results["all", f"{FEEDBACK_REFUSED} A"]
    }
    assert set(refused) == {(DEPLOYMENT, reason) for reason in REFUSED}
    assert refused[DEPLOYMENT, "expired"] == pytest.approx(2 * refused[DEPLOYMENT, "tampered"])

    # The variables: Grafana's label_values(selector, label) is the label-values API, match[].
    expected = {"namespace": [NAMESPACE], "model_deployment": sorted([DEPLOYMENT, OTHER])}
    for name, query in variable_queries().items():
        match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", query)
        assert match is not None, query
        selector, label = substitute(match.group(1)), match.group(2)
        response = get(running, f"/api/v1/label/{label}/values", **{"match[]": selector})
        assert response.status_code == 200, response.text
        assert response.json()["data"] == expected[name], query
