"""Blue-green (spec.canary.blueGreen) under the real operator, against the API emulator and a
stand-in Prometheus whose every series reads 0 (every analysis passes, minRequests 0): the
preview runs at 0% behind its own Service, is analysed for analysisSteps x interval, grows to
the stable's size, then takes all traffic at once; the stable Deployment, untouched while it
had the traffic, rolls only after the switch; the HTTPRoute goes 100/0 -> 0/100 in one change.
A switch back within spec.rollbackWindow changes no pod."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

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


def bg_spec(url: str, **fields: Any) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {"model": CANARY, "blueGreen": {"analysisSteps": 2}},
        "analysis": {
            "prometheus": {"url": url, "timeout": "1s"},
            "interval": "1s",
            "window": "10s",
            "minRequests": 0,
        },
        "serving": {"replicas": 3},
        "routing": {"router": "gateway-api"},
        **fields,
    }


async def weights(cluster: Cluster) -> list[int]:
    route = await cluster.get("HTTPRoute", NS, "iris")
    assert route is not None
    return [backend["weight"] for backend in route["spec"]["rules"][0]["backendRefs"]]


async def generation(cluster: Cluster, name: str) -> tuple[str, int]:
    found = await cluster.get("Deployment", NS, name)
    assert found is not None
    meta = found["metadata"]
    return meta["annotations"]["canaryml.dev/model-version"], int(meta["generation"])


async def previewing(cluster: Cluster, spec: dict[str, Any]) -> int:
    """Apply, roll the pods out; the preview at 0% is analysed. The stable's generation."""
    await cluster.apply(NS, "iris", spec)
    await eventually(lambda: cluster.get("Deployment", NS, "iris-canary"), what="the preview")
    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    # The preview's own Service: the canary track's, selecting its pods.
    service = await cluster.get("Service", NS, "iris-canary")
    assert service is not None
    assert service["spec"]["selector"]["canaryml.dev/track"] == "canary"
    version, stable_generation = await generation(cluster, "iris-stable")
    assert version == "1.0.0"
    return stable_generation


async def test_the_preview_is_analysed_at_zero_then_switched_at_once(
    cluster: Cluster, prometheus: ZeroPrometheus, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "400")
    stable_generation = await previewing(cluster, bg_spec(prometheus.url))
    preview = await wait_status(
        cluster,
        "iris",
        "the preview analysed",
        lambda s: s.get("currentStep") == 0 and (s.get("lastAnalysis") or {}).get("verdict"),
    )
    assert (preview["phase"], preview["canaryWeight"]) == ("Progressing", 0)
    assert preview["lastAnalysis"]["weight"] == 0
    assert await weights(cluster) == [100, 0]
    shown = await canaryml("status", "iris")
    assert "blueGreen" in shown and "Service iris-canary" in shown

    # The analyses pass for 2 x 1s: promoted, the preview grows to the stable's 3 pods at 0%.
    grown = await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"]["replicas"] == 3,
        what="the preview grown to 3 replicas",
        within=30,
    )
    assert grown is not None
    growing = await wait_status(cluster, "iris", "promoted", lambda s: s["phase"] == "Promoted")
    assert growing["canaryWeight"] == 0
    assert condition(growing, "Progressing")["reason"] == rollout.SCALING_UP_CANARY
    assert await weights(cluster) == [100, 0]
    assert await generation(cluster, "iris-stable") == ("1.0.0", stable_generation)

    await cluster.roll_out(NS, "iris-canary")
    # All at once: the HTTPRoute's one change is 100/0 -> 0/100.
    await eventually(lambda: weights(cluster), until=lambda w: w == [0, 100], what="0/100")
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: "BlueGreenSwitch" in found,
        what="the BlueGreenSwitch Event",
    )
    # Only then the stable, with no traffic, rolls to the promoted model.
    await eventually(
        lambda: generation(cluster, "iris-stable"),
        until=lambda found: found[0] == "1.1.0" and found[1] > stable_generation,
        what="the stable rolling to 1.1.0 after the switch",
    )
    await cluster.roll_out(NS, "iris-stable")
    done = await wait_status(
        cluster,
        "iris",
        "the promotion complete",
        lambda s: (
            s.get("canaryWeight") == 0 and condition(s, "Progressing")["reason"] == "Promoted"
        ),
    )
    assert done["stableModel"]["version"] == "1.1.0"
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda found: found is None,
        what="the preview removed",
    )


async def test_a_switch_back_within_the_window_changes_no_pod(
    cluster: Cluster, prometheus: ZeroPrometheus
) -> None:
    stable_generation = await previewing(cluster, bg_spec(prometheus.url, rollbackWindow="1h"))
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"]["replicas"] == 3,
        what="the preview grown to 3 replicas",
        within=30,
    )
    await cluster.roll_out(NS, "iris-canary")
    await eventually(lambda: weights(cluster), until=lambda w: w == [0, 100], what="0/100")
    await canaryml("rollback", "iris")
    await eventually(lambda: weights(cluster), until=lambda w: w == [100, 0], what="back 100/0")
    back = await wait_status(cluster, "iris", "rolled back", lambda s: s["canaryWeight"] == 0)
    assert back["stableModel"]["version"] == "1.0.0"
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda found: found is None,
        what="the preview removed",
    )
    assert await generation(cluster, "iris-stable") == ("1.0.0", stable_generation)
