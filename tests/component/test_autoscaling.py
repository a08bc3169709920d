"""Autoscaling under the real operator, against the API emulator.

The emulator runs no HPA controller: a test scales a Deployment the way the HPA controller
does (a write of spec.replicas) and checks that the operator's reconciles leave that value
alone while an autoscaler owns the Deployment, and write their own again once none does.
"""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_operator import children, rollout
from canaryml_testing.cluster import Cluster, eventually

NS = "ml"
HPA = "HorizontalPodAutoscaler"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
STABLE_2 = {"uri": "s3://models/iris/1.0.1", "version": "1.0.1", "sha256": "d" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
UNREACHABLE = "http://127.0.0.1:9"
AUTOSCALING = {"minReplicas": 4, "maxReplicas": 20, "targetCpuUtilization": 70}


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


def bounds(hpa: dict[str, Any] | None) -> tuple[int, int] | None:
    return None if hpa is None else (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])


async def replicas_after_a_reconcile(cluster: Cluster, name: str) -> Any:
    """The Deployment's spec.replicas once the operator has patched it again: a hand edit of
    its spec-hash annotation is drift, which the operator's next patch (all its fields, and
    replicas only where it owns them) puts back."""
    poke = {"metadata": {"annotations": {children.ANNOTATION_SPEC_HASH: "edited"}}}
    await cluster.patch("Deployment", NS, name, poke)
    found = await eventually(
        lambda: cluster.get("Deployment", NS, name),
        until=lambda d: (
            d is not None
            and d["metadata"]["annotations"][children.ANNOTATION_SPEC_HASH] != "edited"
        ),
        what=f"{name} patched by the operator",
    )
    assert found is not None
    return found["spec"].get("replicas")


async def test_the_stable_and_router_autoscalers_own_the_replicas(cluster: Cluster) -> None:
    spec = {
        "model": STABLE,
        "serving": {"replicas": 2, "autoscaling": AUTOSCALING},
        "routing": {"router": "builtin", "autoscaling": {"minReplicas": 2, "maxReplicas": 5}},
    }
    await cluster.apply(NS, "iris", spec)
    stable = await eventually(lambda: cluster.get(HPA, NS, "iris-stable"), what="the HPA")
    router = await eventually(lambda: cluster.get(HPA, NS, "iris-router"), what="router HPA")
    assert bounds(stable) == (4, 20) and bounds(router) == (2, 5)
    assert stable["spec"]["scaleTargetRef"]["name"] == "iris-stable"
    assert stable["metadata"]["ownerReferences"][0]["kind"] == "ModelDeployment"
    deployment = await cluster.get("Deployment", NS, "iris-stable")
    assert deployment is not None and "replicas" not in deployment["spec"]

    # The HPA controller scales both up; reconciles, after hand edits and a new model version
    # (a rollout of the stable's pods), keep its values.
    for name, count in (("iris-stable", 9), ("iris-router", 3)):
        await cluster.patch("Deployment", NS, name, {"spec": {"replicas": count}})
        assert await replicas_after_a_reconcile(cluster, name) == count
    await cluster.apply(NS, "iris", {**spec, "model": STABLE_2})
    rolled = await eventually(
        lambda: cluster.get("Deployment", NS, "iris-stable"),
        until=lambda d: d is not None and "1.0.1" in str(d["metadata"]["annotations"]),
        what="the stable rolled to 1.0.1",
    )
    assert rolled is not None and rolled["spec"]["replicas"] == 9

    # A hand edit of the autoscaler is put back at the next reconcile.
    await cluster.patch(HPA, NS, "iris-stable", {"spec": {"maxReplicas": 100}})
    await replicas_after_a_reconcile(cluster, "iris-stable")
    await eventually(
        lambda: cluster.get(HPA, NS, "iris-stable"),
        until=lambda found: bounds(found) == (4, 20),
        what="the HPA put back",
    )

    # Autoscaling removed: the autoscalers go, the operator's replicas are written again.
    await cluster.apply(
        NS, "iris", {**spec, "model": STABLE_2, "serving": {"replicas": 2, "autoscaling": None}}
    )
    await eventually(
        lambda: cluster.get(HPA, NS, "iris-stable"),
        until=lambda found: found is None,
        what="the stable's HPA deleted",
    )
    fixed = await cluster.get("Deployment", NS, "iris-stable")
    assert fixed is not None and fixed["spec"]["replicas"] == 2
    assert await cluster.get(HPA, NS, "iris-router") is not None  # routing.autoscaling stays

    async def deleted() -> list[str]:
        return [e["message"] for e in await cluster.events(NS, "iris") if e["reason"] == "Deleted"]

    await eventually(
        deleted,
        until=lambda found: any("no longer autoscaled" in message for message in found),
        what="the Deleted Event",
    )


async def test_the_canary_autoscaler_follows_its_weight(cluster: Cluster) -> None:
    spec = {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h", "replicas": 1},
        "analysis": {"prometheus": {"url": UNREACHABLE, "timeout": "1s"}, "interval": "1h"},
        "serving": {"autoscaling": AUTOSCALING},
        "routing": {"router": "none"},
    }
    await cluster.apply(NS, "iris", spec)
    canary = await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="canary")
    # At weight 0 (waiting for its pods) the canary runs canary.replicas, no autoscaler.
    assert canary is not None and canary["spec"]["replicas"] == 1
    assert await cluster.get(HPA, NS, "iris-canary") is None
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    # At 10%: ceil(4 * 0.1) = 1 .. ceil(20 * 0.1) = 2.
    hpa = await eventually(lambda: cluster.get(HPA, NS, "iris-canary"), what="the canary HPA")
    assert bounds(hpa) == (1, 2)
    # The step changed no pod (same template) and no replicas: the autoscaler takes over from
    # the canary's 1, and what it sets then stays.
    stepped = await cluster.get("Deployment", NS, "iris-canary")
    assert stepped is not None and stepped["spec"]["replicas"] == 1
    assert stepped["spec"]["template"] == canary["spec"]["template"]
    await cluster.patch("Deployment", NS, "iris-canary", {"spec": {"replicas": 2}})
    assert await replicas_after_a_reconcile(cluster, "iris-canary") == 2

    # Aborted: weight 0, the autoscaler deleted, and (once drained) the canary scaled to 0.
    await cluster.patch(
        "ModelDeployment",
        NS,
        "iris",
        {"metadata": {"annotations": {rollout.COMMAND_ANNOTATIONS["abort"]: "1.1.0"}}},
    )
    await eventually(
        lambda: cluster.get(HPA, NS, "iris-canary"),
        until=lambda found: found is None,
        what="the canary HPA deleted",
    )
    await cluster.roll_out(NS, "iris-canary")  # a child event after the drain
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"].get("replicas") == 0,
        what="the canary scaled to 0",
    )
    assert bounds(await cluster.get(HPA, NS, "iris-stable")) == (4, 20)
