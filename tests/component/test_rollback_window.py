"""The rollback window (spec.rollbackWindow) under the real operator, against the API emulator:
the stable Deployment is left alone through a promotion and an instant rollback (its generation
never moves: no pod rollout), and the analysis daemon closes a window at its time."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually

NS = "ml"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
UNREACHABLE = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


def spec(window: str) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "analysis": {"prometheus": {"url": UNREACHABLE, "timeout": "1s"}, "interval": "1h"},
        "serving": {"replicas": 3},
        "rollbackWindow": window,
        "routing": {"router": "none"},
    }


async def status(cluster: Cluster) -> dict[str, Any]:
    found = await cluster.get("ModelDeployment", NS, "iris")
    return dict((found or {}).get("status") or {})


def reason(found: dict[str, Any]) -> str:
    progressing = next((c for c in found.get("conditions", []) if c["type"] == "Progressing"), {})
    return str(progressing.get("reason"))


async def annotate(cluster: Cluster, command: str, value: str) -> None:
    key = rollout.COMMAND_ANNOTATIONS[command]  # type: ignore[index]
    await cluster.patch("ModelDeployment", NS, "iris", {"metadata": {"annotations": {key: value}}})


async def model_of(cluster: Cluster, name: str) -> tuple[str, int]:
    """The model version a Deployment runs and its generation (moves with each pod change)."""
    found = await cluster.get("Deployment", NS, name)
    assert found is not None
    return found["metadata"]["annotations"]["canaryml.dev/model-version"], int(
        found["metadata"]["generation"]
    )


async def promoted_with_window(cluster: Cluster, window: str) -> int:
    """Promote at the first step; the canary grows to 3 pods and takes all traffic. The stable
    Deployment's generation, which must not move from here."""
    await cluster.apply(NS, "iris", spec(window))
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the canary")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    await eventually(lambda: status(cluster), until=lambda s: s.get("canaryWeight") == 10)
    version, generation = await model_of(cluster, "iris-stable")
    assert version == "1.0.0"
    await annotate(cluster, "promote", "1.1.0")
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"]["replicas"] == 3,
        what="the canary grown to the stable's 3 replicas",
    )
    growing = await status(cluster)
    assert (growing["phase"], growing["canaryWeight"]) == ("Promoted", 10)
    assert reason(growing) == rollout.SCALING_UP_CANARY
    await cluster.roll_out(NS, "iris-canary")
    switched = await eventually(
        lambda: status(cluster),
        until=lambda s: s.get("canaryWeight") == 100,
        what="all traffic on the canary",
    )
    assert reason(switched) == rollout.ROLLBACK_WINDOW and switched["rollbackWindowEndsAt"]
    assert await model_of(cluster, "iris-stable") == ("1.0.0", generation)
    return generation


async def test_a_rollback_within_the_window_changes_no_pod(cluster: Cluster) -> None:
    generation = await promoted_with_window(cluster, "1h")
    await annotate(cluster, "rollback", "1.1.0")
    back = await eventually(
        lambda: status(cluster),
        until=lambda s: s.get("canaryWeight") == 0,
        what="the traffic back on the previous stable",
    )
    assert back["stableModel"]["version"] == "1.0.0"
    assert "rollbackWindowEndsAt" not in back or back["rollbackWindowEndsAt"] is None
    # The canary goes after its drain; the stable Deployment was never changed.
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda found: found is None,
        what="the canary removed",
    )
    assert await model_of(cluster, "iris-stable") == ("1.0.0", generation)
    messages = [
        e["message"] for e in await cluster.events(NS, "iris") if e["reason"] == "RolledBack"
    ]
    assert any("within the rollback window" in message for message in messages), messages


async def test_the_window_closes_at_its_time_and_the_stable_rolls_out(cluster: Cluster) -> None:
    generation = await promoted_with_window(cluster, "2s")
    # No event marks the end of the window: the analysis daemon wakes for it.
    rolling = await eventually(
        lambda: status(cluster),
        until=lambda s: reason(s) == "Promoting",
        what="the window closed",
    )
    assert rolling["canaryWeight"] == 100
    await eventually(
        lambda: model_of(cluster, "iris-stable"),
        until=lambda found: found[0] == "1.1.0" and found[1] > generation,
        what="the stable rolling to 1.1.0",
    )
    await cluster.roll_out(NS, "iris-stable")
    await eventually(
        lambda: status(cluster),
        until=lambda s: s.get("canaryWeight") == 0 and reason(s) == "Promoted",
        what="the promotion complete",
    )
