"""A/B experiments (spec.canary.experiment) under the real operator, against the API emulator
and a stand-in Prometheus: every safety series reads 0 (so every analysis passes), and the
feedback counters answer labels that grow with the analyses' time, the canary right on 95 % of them
and the stable on 80 %. The canary takes the experiment's weight at once, the status names the
canary the winner with one Event, nothing is promoted until `canaryml promote`."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp.web
import pytest
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_approval import ZeroPrometheus
from tests.component.test_rollout_operator import (
    CANARY,
    NS,
    STABLE,
    canaryml,
    condition,
    reasons,
    wait_status,
)

ACCURACY = {"canary": 0.95, "stable": 0.80}


class LabelsPrometheus(ZeroPrometheus):
    """ZeroPrometheus, with each track's labels since the experiment began growing by 100 a
    second of the analysis's time (the `time` every query of one analysis shares), and its
    correct ones at ACCURACY."""

    def __init__(self) -> None:
        super().__init__()
        self.began: float | None = None
        self.experiment_queries: list[str] = []

    async def _query(self, request: aiohttp.web.Request) -> aiohttp.web.Response:
        form = await request.post()
        promql = str(form.get("query") or request.query.get("query") or "")
        at = float(str(form.get("time") or time.time()))
        track = next((t for t in ACCURACY if f'track="{t}"' in promql), None)
        if track is None or "canaryml_feedback_" not in promql:
            return await super()._query(request)
        if self.began is None:
            self.began = at
        labels = 100.0 * round(at - self.began)
        value = labels if "labels_total" in promql else round(labels * ACCURACY[track])
        self.experiment_queries.append(promql)
        series = {"metric": {}, "value": [at, str(value)]}
        body = {"status": "success", "data": {"resultType": "vector", "result": [series]}}
        return aiohttp.web.Response(body=json.dumps(body).encode(), content_type="application/json")


@pytest.fixture
async def prometheus() -> AsyncIterator[LabelsPrometheus]:
    fake = LabelsPrometheus()
    await fake.start()
    try:
        yield fake
    finally:
        await fake.close()


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


def experiment_spec(url: str) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {
            "model": CANARY,
            "experiment": {"metric": "accuracy", "weight": 30, "minSamples": 200},
        },
        "analysis": {
            "prometheus": {"url": url, "timeout": "1s"},
            "interval": "1s",
            "window": "10s",
            "minRequests": 0,
        },
    }


def decided(found: dict[str, Any]) -> bool:
    return (found.get("experiment") or {}).get("winner", "undecided") != "undecided"


async def test_the_experiment_names_the_winner_and_waits_for_promote(
    cluster: Cluster, prometheus: LabelsPrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")  # `canaryml status` on one line per row
    await cluster.apply(NS, "iris", experiment_spec(prometheus.url))
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")

    found = await wait_status(cluster, "iris", "the winner", decided)
    record = found["experiment"]
    assert record["winner"] == "canary", record
    assert record["low"] > 0 and record["effect"] == pytest.approx(0.15, abs=0.01)
    assert min(record["canarySamples"], record["stableSamples"]) >= 200
    assert (found["phase"], found["canaryWeight"], found["currentStep"]) == ("Progressing", 30, 0)
    assert found["stableModel"]["version"] == "1.0.0"  # not promoted
    # The counts are read since the experiment began, for each track's version.
    started = record["startedAt"]
    assert prometheus.experiment_queries
    assert all(" @ " in query for query in prometheus.experiment_queries)
    assert any('version="1.1.0"' in query for query in prometheus.experiment_queries)
    assert any('version="1.0.0"' in query for query in prometheus.experiment_queries)

    # Decided once; later analyses hold the weight and promote nothing.
    first = found["lastAnalysis"]["time"]
    later = await wait_status(
        cluster, "iris", "analyses after", lambda s: s["lastAnalysis"]["time"] > first
    )
    assert later["canaryWeight"] == 30 and later["phase"] == "Progressing"
    assert later["experiment"]["decidedAt"] == record["decidedAt"]
    assert later["experiment"]["startedAt"] == started
    assert condition(later, "Progressing")["reason"] == "ExperimentDecided"
    assert (await reasons(cluster, "iris")).count("ExperimentDecided") == 1

    shown = await canaryml("status", "iris")
    assert "A/B experiment on accuracy" in shown and "winner" in shown

    await canaryml("promote", "iris")
    promoted = await wait_status(
        cluster, "iris", "Promoted", lambda s: s.get("phase") == "Promoted"
    )
    assert promoted["history"][-1]["reason"] == 'promoted by canaryml.dev/promote: "1.1.0"'
    assert promoted["experiment"]["winner"] == "canary"
