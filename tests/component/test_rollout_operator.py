"""The rollout under the real operator, against the API emulator, without metrics.

What needs no Prometheus: the first step once the canary is available, the commands (through
the `canaryml` CLI, which sets annotations naming their target, acted on once per value),
promotion with the new stable ready before the canary is retired, abort, rollback to the
previous stable, pause, replayed commands, the HTTPRoute's weights, and Error analyses when
Prometheus cannot be reached. The analyses themselves, against a real Prometheus, are in
tests/integration/test_rollout.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from canaryml_cli.main import app
from canaryml_operator import rollout
from canaryml_testing.cluster import Cluster, eventually
from typer.testing import CliRunner

NS = "default"  # the CLI's namespace when the kubeconfig context names none
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
UNREACHABLE = "http://127.0.0.1:9"  # refused at once: every analysis is an Error


def rollout_spec(**fields: Any) -> dict[str, Any]:
    return {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "analysis": {"prometheus": {"url": UNREACHABLE, "timeout": "1s"}, "interval": "1h"},
        **fields,
    }


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


async def canaryml(*args: str) -> str:
    """The `canaryml` CLI, in a thread: the emulator answers from this test's event loop."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = await cluster.get("ModelDeployment", NS, name)
    return dict((found or {}).get("status") or {})


async def wait_status(cluster: Cluster, name: str, what: str, check: Any) -> dict[str, Any]:
    return await eventually(lambda: status(cluster, name), until=check, what=what)


def condition(found: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in found.get("conditions", []) if c["type"] == kind), {})


async def reasons(cluster: Cluster, name: str) -> list[str]:
    return [event["reason"] for event in await cluster.events(NS, name)]


def model_version(deployment: dict[str, Any] | None) -> str:
    assert deployment is not None
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {item["name"]: item.get("value") for item in container["env"]}
    return str(env["CANARYML_MODEL_VERSION"])


async def at_first_step(cluster: Cluster, name: str, spec: dict[str, Any]) -> dict[str, Any]:
    await cluster.apply(NS, name, spec)
    await eventually(lambda: cluster.get("Deployment", NS, f"{name}-canary"), what="the canary")
    await cluster.roll_out(NS, f"{name}-stable")
    await cluster.roll_out(NS, f"{name}-canary")
    return await wait_status(cluster, name, "the first step", lambda s: s.get("canaryWeight") == 10)


async def test_an_available_canary_gets_the_first_step(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", rollout_spec())
    waiting = await wait_status(cluster, "iris", "the rollout", lambda s: "canaryModel" in s)
    assert waiting["canaryWeight"] == 0  # no traffic before the canary can answer
    assert condition(waiting, "Progressing")["reason"] in ("WaitingForCanary",)

    await cluster.roll_out(NS, "iris-stable")
    await cluster.roll_out(NS, "iris-canary")
    first = await wait_status(cluster, "iris", "step 1", lambda s: s.get("canaryWeight") == 10)

    assert first["currentStep"] == 0
    assert first["phase"] == "Progressing"
    # The step's first analysis is due at once and, Prometheus refusing, may already hold.
    assert condition(first, "Progressing")["reason"] in ("CanaryAnalysis", "MetricsUnavailable")
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: {"RolloutStarted", "StepUp"} <= set(found),
        what="the RolloutStarted and StepUp Events",
    )


async def test_unreachable_metrics_hold_the_weight_as_error_analyses(cluster: Cluster) -> None:
    await at_first_step(cluster, "iris", rollout_spec())
    held = await wait_status(
        cluster, "iris", "an analysis", lambda s: (s.get("lastAnalysis") or {}).get("verdict")
    )

    assert held["lastAnalysis"]["verdict"] == "Error"
    assert held["canaryWeight"] == 10
    assert held["heldAnalyses"] >= 1
    assert held["failedChecks"] == 0
    assert any("127.0.0.1:9" in reason for reason in held["lastAnalysis"]["reasons"])


async def test_promote_makes_the_canary_stable_before_retiring_it(
    cluster: Cluster, tmp_path: Path
) -> None:
    await at_first_step(cluster, "iris", rollout_spec())

    output = await canaryml("promote", "iris")
    assert 'canaryml.dev/promote: "1.1.0"' in output
    promoted = await wait_status(
        cluster, "iris", "Promoted", lambda s: s.get("phase") == "Promoted"
    )
    # The command stays (a GitOps tool would put it back anyway), recorded as handled.
    assert promoted["handledCommands"] == {"canaryml.dev/promote": "1.1.0"}
    found = await cluster.get("ModelDeployment", NS, "iris")
    assert found is not None
    assert found["metadata"]["annotations"][rollout.COMMAND_ANNOTATIONS["promote"]] == "1.1.0"
    assert promoted["history"][-1]["event"] == "promoted"
    assert promoted["history"][-1]["replaced"]["version"] == "1.0.0"
    # The canary keeps its share until the stable track serves the promoted model.
    assert promoted["canaryWeight"] == 10
    stable = await eventually(
        lambda: cluster.get("Deployment", NS, "iris-stable"),
        until=lambda d: model_version(d) == "1.1.0",
        what="the stable Deployment on 1.1.0",
    )
    assert stable is not None
    assert (await cluster.get("Deployment", NS, "iris-canary")) is not None

    await cluster.roll_out(NS, "iris-stable")
    done = await wait_status(cluster, "iris", "weight 0", lambda s: s.get("canaryWeight") == 0)
    assert done["stableVersion"] == "1.1.0"
    assert condition(done, "Progressing")["reason"] == "Promoted"
    # After the drain, the canary track goes.
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is None,
        what="the canary Deployment removed",
    )
    assert await cluster.get("Service", NS, "iris-canary") is None
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: {"Promoted", "PromotionComplete"} <= set(found),
        what="the Promoted and PromotionComplete Events",
    )

    # The previous stable is in history: `canaryml rollback` returns to it.
    output = await canaryml("rollback", "iris")
    assert 'canaryml.dev/rollback: "1.1.0"' in output
    back = await wait_status(
        cluster,
        "iris",
        "rolled back",
        lambda s: (s.get("stableModel") or {}).get("version") == "1.0.0",
    )
    assert back["history"][-1]["event"] == "rolledBack"
    assert condition(back, "RolledBack")["reason"] == "ManualRollback"
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-stable"),
        until=lambda d: model_version(d) == "1.0.0",
        what="the stable Deployment back on 1.0.0",
    )

    # A GitOps sync: the next canary, with the commands of before still in Git (after someone
    # removed them by hand). A rollout of 1.2.0 starts; nothing is promoted or rolled back.
    annotations = {rollout.COMMAND_ANNOTATIONS[c]: None for c in ("promote", "rollback")}
    await cluster.patch("ModelDeployment", NS, "iris", {"metadata": {"annotations": annotations}})
    replay = {rollout.COMMAND_ANNOTATIONS["promote"]: "1.1.0",
              rollout.COMMAND_ANNOTATIONS["rollback"]: "1.1.0"}  # fmt: skip
    next_canary = {"model": {**CANARY, "version": "1.2.0"}, "steps": [10, 50], "stepInterval": "1h"}
    sync = {"metadata": {"annotations": replay}, "spec": {"canary": next_canary}}
    await cluster.patch("ModelDeployment", NS, "iris", sync)
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and model_version(d) == "1.2.0",
        what="the canary Deployment on 1.2.0",
    )
    await cluster.roll_out(NS, "iris-canary")
    stepped = await wait_status(
        cluster,
        "iris",
        "1.2.0 at its first step",
        lambda s: s.get("canaryVersion") == "1.2.0" and s.get("canaryWeight") == 10,
    )
    assert (stepped["phase"], stepped["stableModel"]["version"]) == ("Progressing", "1.0.0")
    assert [e["event"] for e in stepped["history"]] == ["promoted", "rolledBack"]
    await eventually(  # Events are posted after the status is written
        lambda: reasons(cluster, "iris"),
        until=lambda found: "CommandAlreadyHandled" in found,
        what="a CommandAlreadyHandled Event",
    )


async def test_abort_rolls_back_at_once_and_scales_the_canary_down(cluster: Cluster) -> None:
    await at_first_step(cluster, "iris", rollout_spec())

    await canaryml("abort", "iris")
    rolled = await wait_status(
        cluster, "iris", "RolledBack", lambda s: s.get("phase") == "RolledBack"
    )

    assert rolled["canaryWeight"] == 0
    assert condition(rolled, "RolledBack")["reason"] == "Aborted"
    assert rolled["history"][-1]["event"] == "rolledBack"
    await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"]["replicas"] == 0,
        what="the canary scaled to 0",
    )
    stable = await cluster.get("Deployment", NS, "iris-stable")
    assert model_version(stable) == "1.0.0"  # the stable model keeps serving

    # A new canary version starts a new rollout.
    await cluster.apply(
        NS, "iris", rollout_spec(canary={"model": {**CANARY, "version": "1.2.0"}, "steps": [20]})
    )
    again = await wait_status(
        cluster, "iris", "a new rollout", lambda s: s.get("phase") == "Progressing"
    )
    assert again["canaryModel"]["version"] == "1.2.0"
    assert again["canaryWeight"] == 0


async def test_pause_and_resume_through_the_cli(cluster: Cluster) -> None:
    await at_first_step(cluster, "iris", rollout_spec())

    await canaryml("pause", "iris")
    await wait_status(cluster, "iris", "Paused", lambda s: s.get("phase") == "Paused")
    output = await canaryml("status", "iris")
    assert "Paused" in output and "10%" in output

    await canaryml("resume", "iris")
    resumed = await wait_status(
        cluster, "iris", "Progressing", lambda s: s.get("phase") == "Progressing"
    )
    assert resumed["canaryWeight"] == 10


async def test_the_http_route_follows_the_weight(cluster: Cluster) -> None:
    spec = rollout_spec(
        routing={"router": "gateway-api"}, shadow={"model": {**CANARY, "version": "2.0.0"}}
    )
    await at_first_step(cluster, "iris", spec)

    route = await eventually(
        lambda: cluster.get("HTTPRoute", NS, "iris"),
        until=lambda r: (
            r is not None
            and [b["weight"] for b in r["spec"]["rules"][0]["backendRefs"]] == [90, 10]
        ),
        what="the HTTPRoute at 90/10",
    )
    assert route is not None
    assert route["spec"]["rules"][0]["filters"][0]["type"] == "RequestMirror"
    assert await cluster.get("Deployment", NS, "iris-router") is None  # no builtin router

    await canaryml("abort", "iris")
    await eventually(
        lambda: cluster.get("HTTPRoute", NS, "iris"),
        until=lambda r: (
            r is not None
            and [b["weight"] for b in r["spec"]["rules"][0]["backendRefs"]] == [100, 0]
        ),
        what="the HTTPRoute back at 100/0",
    )


async def test_a_command_with_no_canary_is_recorded_and_explained(cluster: Cluster) -> None:
    await cluster.apply(NS, "plain", {"model": STABLE})
    await wait_status(cluster, "plain", "a status", lambda s: "phase" in s)

    result = await asyncio.to_thread(CliRunner().invoke, app, ["promote", "plain"])
    assert result.exit_code == 1
    assert "the spec has no canary" in result.output
    # Written by hand (or kept in Git): explained once, recorded, left in place.
    key = rollout.COMMAND_ANNOTATIONS["promote"]
    await cluster.patch(
        "ModelDeployment", NS, "plain", {"metadata": {"annotations": {key: "1.1.0"}}}
    )
    await eventually(
        lambda: reasons(cluster, "plain"),
        until=lambda found: "CommandIgnored" in found,
        what="a CommandIgnored Event",
    )
    recorded = await wait_status(
        cluster, "plain", "the command recorded", lambda s: s.get("handledCommands")
    )
    assert recorded["handledCommands"] == {key: "1.1.0"}


async def test_the_cli_says_clearly_when_the_resource_does_not_exist(cluster: Cluster) -> None:
    result = await asyncio.to_thread(CliRunner().invoke, app, ["promote", "missing"])
    assert result.exit_code == 1
    assert "ModelDeployment default/missing not found" in result.output
