"""The API server answering 500s and timing out for 30 s loses no status and no command.

The operator runs as a process against the API emulator, a rollout at its first step with
analyses that pass (a 1 h step interval holds it there). Then, for FAULT_SECONDS, the emulator
answers every request of the operator with a 500, then hangs its PATCHes, then hangs every
request (and stalls the watches); the test's own calls are spared, as a kubectl elsewhere
would be, and set a promote command at the start of the outage. Once the API server answers
again the operator converges: the canary is promoted once, the command is consumed, nothing
else changed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from canaryml_operator import rollout
from canaryml_testing.cluster import eventually, spare_tests
from canaryml_testing.kube_emulator import Fault

from tests.faults.conftest import NS, OperatorProcess, World, kubelet, rollout_spec
from tests.integration.rollout_harness import background

pytestmark = pytest.mark.integration

FAULT_SECONDS = 30.0  # the outage, in three equal parts
PROMOTE = rollout.COMMAND_ANNOTATIONS["promote"]
PHASES = [
    Fault(mode="error", status=500, spare=spare_tests),
    Fault(mode="hang", methods=frozenset({"PATCH"}), spare=spare_tests),
    Fault(mode="hang", spare=spare_tests),
]


def handled(found: dict[str, Any] | None) -> bool:
    found = found or {}
    recorded = (found.get("status") or {}).get("handledCommands")
    if recorded is not None:
        return bool(recorded.get(PROMOTE) == "1.1.0")
    return PROMOTE not in found.get("metadata", {}).get("annotations", {})


async def hold_for(
    world: World, operator: OperatorProcess, seconds: float, before: tuple[Any, ...]
) -> None:
    """Poll the status for `seconds`: the operator cannot write it, so it stays `before`; and
    the operator keeps running (kopf retries failed API calls for about a minute)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert operator.running(), "the operator exited"
        status = await world.status("iris")
        assert (status["phase"], status["canaryWeight"], status["history"]) == before, status
        await asyncio.sleep(0.2)


async def test_an_api_server_outage_loses_no_status_and_no_command(
    world: World, operator: OperatorProcess
) -> None:
    first = await world.at_first_step("iris", rollout_spec(world.prometheus.url))
    before = (first["phase"], first["canaryWeight"], first["history"])
    emulator = world.emulator

    async with background(kubelet(world.cluster)):
        faulted = []
        for index, fault in enumerate(PHASES):
            await emulator.inject(fault)
            if index == 0:  # the command, set while the operator cannot see or act on it
                await world.cluster.patch(
                    "ModelDeployment", NS, "iris", {"metadata": {"annotations": {PROMOTE: "1.1.0"}}}
                )
            count = sum(emulator.faulted.values())
            await hold_for(world, operator, FAULT_SECONDS / len(PHASES), before)
            faulted.append(sum(emulator.faulted.values()) - count)
        emulator.heal()
        started = time.monotonic()

        promoted = await world.wait(
            "iris",
            "the promotion, finished",
            lambda s: s.get("phase") == "Promoted" and s.get("canaryWeight") == 0,
            within=20,
        )
        converged = time.monotonic() - started
        # Handled once: recorded in the status (the annotation may stay, as GitOps keeps it),
        # or, in the earlier form, removed.
        await eventually(
            lambda: world.cluster.get("ModelDeployment", NS, "iris"),
            until=handled,
            what="the promote command recorded as handled",
        )

    assert operator.running()
    assert all(faulted), f"the operator met each fault: {faulted} requests"
    assert emulator.faulted["PATCH"] > 0  # it tried to write while it could not
    promotions = [entry for entry in promoted["history"] if entry["event"] == "promoted"]
    assert [entry["version"] for entry in promotions] == ["1.1.0"]  # handled once
    assert PROMOTE in promotions[0]["reason"]  # by the command, not by an analysis
    assert promoted["stableModel"]["version"] == "1.1.0"
    assert promoted["failedChecks"] == 0
    reasons = [event["reason"] for event in await world.cluster.events(NS, "iris")]
    assert reasons.count("Promoted") <= 1
    print(f"\nconverged {converged:.1f} s after the API server recovered; faulted {faulted}")
