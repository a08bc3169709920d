"""The operator SIGKILLed at each phase of a rollout resumes with the same weight, step and
failure count: the rollout state lives in `.status`, nothing of it in the process.

Each test runs `canaryml operator` as a process against the API emulator, with a fake Prometheus
whose answers the test sets, kills it with SIGKILL at one phase (no cleanup, whatever was in
flight is lost), starts a new one, and checks that the new one goes on from the same state.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from canaryml_testing.cluster import eventually

from tests.faults.conftest import NS, OperatorProcess, World, rollout_spec

pytestmark = pytest.mark.integration

# What the next decision depends on; none of it may change across a restart.
STATE = ("phase", "canaryWeight", "currentStep", "failedChecks", "stableModel", "canaryModel")


def state(status: dict[str, Any]) -> dict[str, Any]:
    return {key: status.get(key) for key in (*STATE, "history")}


async def restart(world: World, operator: OperatorProcess, name: str) -> dict[str, Any]:
    """SIGKILL the operator, start a new one, wait until it has read the resource; the state
    at the kill."""
    operator.kill()
    before = state(await world.status(name))
    since = len(list(world.emulator))
    await operator.start()
    await eventually(
        lambda: asyncio.sleep(0, world.operator_reads(name, since)),
        what="the new operator to read the resource",
    )
    return before


async def unchanged(world: World, name: str, before: dict[str, Any], *, within: float) -> None:
    """The state stays `before` for `within` seconds (the new operator acting meanwhile)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        assert state(await world.status(name)) == before
        await asyncio.sleep(0.1)


async def test_killed_while_waiting_for_the_canary(world: World, operator: OperatorProcess) -> None:
    await world.cluster.apply(NS, "iris", rollout_spec(world.prometheus.url))
    await eventually(lambda: world.cluster.get("Deployment", NS, "iris-stable"), what="stable")
    await world.cluster.roll_out(NS, "iris-stable")  # the canary's pods are not ready yet
    await world.wait(
        "iris",
        "waiting for the canary",
        lambda s: s.get("phase") == "Progressing" and "canaryModel" in s,
    )

    before = await restart(world, operator, "iris")

    assert before["canaryWeight"] == 0 and before["currentStep"] is None
    await unchanged(world, "iris", before, within=1.0)
    await world.cluster.roll_out(NS, "iris-canary")
    first = await world.wait("iris", "the first step", lambda s: s.get("canaryWeight") == 10)
    assert first["currentStep"] == 0 and first["failedChecks"] == 0
    assert first["history"] == before["history"]


async def test_killed_mid_analysis_after_a_failed_analysis(
    world: World, operator: OperatorProcess
) -> None:
    world.prometheus.mode = "fail"
    await world.at_first_step("iris", rollout_spec(world.prometheus.url, failureLimit=3))
    failed = await world.wait("iris", "a failed analysis", lambda s: s.get("failedChecks") == 1)
    world.prometheus.mode = "HTML"  # Error analyses from now: they hold, and keep the count
    assert failed["canaryWeight"] == 10

    before = await restart(world, operator, "iris")

    count = before["failedChecks"]
    assert count in (1, 2) and before["phase"] == "Progressing"  # one more may have landed
    killed_at = (await world.status("iris"))["lastAnalysis"]["time"]
    held = await world.wait(
        "iris",
        "an analysis by the new operator",
        lambda s: s["lastAnalysis"]["time"] != killed_at,
    )
    assert held["lastAnalysis"]["verdict"] == "Error"
    assert state(held) == before  # same weight, step and failure count

    world.prometheus.mode = "fail"
    next_failed = await world.wait(
        "iris", "the next failed analysis", lambda s: s["lastAnalysis"]["verdict"] == "Failed"
    )
    assert next_failed["failedChecks"] == count + 1  # counted on, not from 0
    rolled = await world.wait("iris", "the rollback", lambda s: s["phase"] == "RolledBack")
    assert rolled["failedChecks"] == 3


async def test_killed_during_promotion(world: World, operator: OperatorProcess) -> None:
    spec = rollout_spec(world.prometheus.url, steps=[10], stepInterval="1s")
    await world.at_first_step("iris", spec)
    promoted = await world.wait("iris", "the promotion", lambda s: s.get("phase") == "Promoted")
    # The new stable has not rolled out: the canary keeps its 10 % until it has.
    assert promoted["canaryWeight"] == 10

    before = await restart(world, operator, "iris")

    await unchanged(world, "iris", before, within=1.0)
    await world.cluster.roll_out(NS, "iris-stable")
    done = await world.wait("iris", "weight 0", lambda s: s.get("canaryWeight") == 0)
    promotions = [entry for entry in done["history"] if entry["event"] == "promoted"]
    assert [entry["version"] for entry in promotions] == ["1.1.0"]  # promoted once
    assert done["stableModel"]["version"] == "1.1.0"


async def test_killed_after_rollback(world: World, operator: OperatorProcess) -> None:
    world.prometheus.mode = "fail"
    await world.at_first_step("iris", rollout_spec(world.prometheus.url, failureLimit=1))
    await world.wait("iris", "the rollback", lambda s: s.get("phase") == "RolledBack")
    world.prometheus.mode = "pass"  # a resumed analysis would now step the canary up

    before = await restart(world, operator, "iris")

    assert before["canaryWeight"] == 0 and before["stableModel"]["version"] == "1.0.0"
    await unchanged(world, "iris", before, within=2.0)
    # The new operator finishes what the killed one left: the canary's drain, then scale to 0.
    await eventually(
        lambda: world.cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["spec"]["replicas"] == 0,
        within=15,
        what="the rolled-back canary scaled to 0",
    )
    assert state(await world.status("iris")) == before
