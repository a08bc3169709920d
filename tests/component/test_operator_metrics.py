"""The operator's own /metrics, as the chart's ServiceMonitor and alerts read them."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import httpx
import pytest
from canaryml_operator import main, metrics, rollout
from canaryml_testing.cluster import Cluster, eventually
from prometheus_client.parser import text_string_to_metric_families

NS = "default"
SPEC = {
    "model": {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64},
    "canary": {
        "model": {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64},
        "steps": [10, 50],
        "stepInterval": "1h",
    },
    "analysis": {"prometheus": {"url": "http://127.0.0.1:9", "timeout": "1s"}, "interval": "1s"},
}


@pytest.fixture
def metrics_port(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """Listed before `cluster`: the operator reads the setting when it starts."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = int(probe.getsockname()[1])
    monkeypatch.setattr(main.operator_settings(), "metrics_port", port)
    # The registry is the process's: other tests' resources of the same name left series.
    metrics.forget(namespace=NS, name="iris")
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)
    yield port


async def samples(port: int) -> dict[tuple[str, str, str], float]:
    """(sample name, model_deployment, the phase/verdict/result label) -> value."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            if labels.get("namespace") == NS:
                extra = labels.get("phase") or labels.get("verdict") or labels.get("result") or ""
                found[(sample.name, labels["model_deployment"], extra)] = sample.value
    return found


async def test_phase_weight_analyses_and_rollbacks_are_exported(
    metrics_port: int, cluster: Cluster
) -> None:
    await cluster.apply(NS, "iris", SPEC)
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")

    found = await eventually(
        lambda: samples(metrics_port),
        until=lambda s: s.get(("canaryml_operator_analyses_total", "iris", "Error"), 0) >= 1,
        what="an Error analysis counted",
    )
    assert found[("canaryml_operator_phase", "iris", "Progressing")] == 1
    assert found[("canaryml_operator_phase", "iris", "Stable")] == 0
    assert found[("canaryml_operator_canary_weight", "iris", "")] == 10
    assert found[("canaryml_operator_held_analyses", "iris", "")] >= 1
    # Declared at 0 before the first one, so that increase() sees the first rollback.
    assert found[("canaryml_operator_rollouts_total", "iris", "rolledBack")] == 0

    await cluster.patch(
        "ModelDeployment",
        NS,
        "iris",
        {"metadata": {"annotations": {rollout.COMMAND_ANNOTATIONS["abort"]: "1.1.0"}}},
    )
    found = await eventually(
        lambda: samples(metrics_port),
        until=lambda s: s.get(("canaryml_operator_rollouts_total", "iris", "rolledBack")) == 1,
        what="the rollback counted",
    )
    assert found[("canaryml_operator_canary_weight", "iris", "")] == 0
    assert found[("canaryml_operator_phase", "iris", "RolledBack")] == 1
    assert found[("canaryml_operator_rollouts_total", "iris", "promoted")] == 0

    await cluster.delete("ModelDeployment", NS, "iris")
    await eventually(
        lambda: samples(metrics_port),
        until=lambda s: not any(key[1] == "iris" for key in s),
        what="the deleted resource's series gone",
    )
