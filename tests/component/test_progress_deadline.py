"""A canary whose pods never become ready, under kopf against the API emulator: the analysis
daemon wakes at spec.progressDeadline (no Deployment event marks it) and rolls it back."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_operator import NS, STABLE, condition, reasons

CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


async def test_a_canary_never_available_is_rolled_back_at_the_deadline(cluster: Cluster) -> None:
    spec: dict[str, Any] = {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "analysis": {"interval": "1h"},
        "progressDeadline": "3s",
    }
    await cluster.apply(NS, "iris", spec)
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")  # the canary's pods never become ready

    async def md() -> dict[str, Any] | None:
        return await cluster.get("ModelDeployment", NS, "iris")

    waiting = await eventually(
        md,
        until=lambda found: (
            condition(found, "Progressing").get("reason") == "WaitingForCanary"
            and "0/1 available" in condition(found, "Progressing").get("message", "")
        ),
        what="Progressing=WaitingForCanary with the pods available",
    )
    assert condition(waiting, "Reconciling")["status"] == "True"
    rolled_back = await eventually(
        md,
        until=lambda found: ((found or {}).get("status") or {}).get("phase") == "RolledBack",
        what="rolled back at the progress deadline",
    )
    assert condition(rolled_back, "RolledBack")["reason"] == "ProgressDeadlineExceeded"
    assert condition(rolled_back, "Stalled")["reason"] == "RolledBack"
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: ("Warning", "RolledBack") in found,
        what="a Warning Event RolledBack",
    )
