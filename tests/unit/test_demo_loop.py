"""The demo's rollout loop writes the status the operator would write from the same inputs.

The demo's loop (`runner.roll_out`) runs here with a fake cluster, fake measurements and a
fake clock; every turn's inputs (the time, the measurements, the live tracks before and after
the plan was applied) are recorded and replayed through the operator's pure reconcile path
(`rollout.decide`, `rollout.plan_tracks`, `reconcile.build_status`, as the operator's handler
calls them): the final statuses agree on the phase, the conditions and the history.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.routing import RoutingPlan
from canaryml_api.tracks import Track
from canaryml_cli.demo import runner, scenarios
from canaryml_cli.demo.record import DemoRecord
from canaryml_operator import measurements as m
from canaryml_operator import reconcile, rollout
from canaryml_operator.children import routing_of
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.state import DeploymentState, Owner, TrackPlan, model_reference

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
GOOD = {
    m.REQUESTS: 120.0,
    m.ERROR_RATE: 0.0,
    m.LATENCY_P99: 0.01,
    m.DRIFT: 0.01,
    m.PREDICTION_DRIFT: 0.01,
    m.SHADOW_AGREEMENT: 1.0,
    m.DRIFT_P_VALUE: 0.5,
    m.PREDICTION_DRIFT_P_VALUE: 0.5,
}
SCENARIO_VALUES = {"good": GOOD, "errors": {**GOOD, m.ERROR_RATE: 0.2}}
# Requests a second to each track, for the counts since the step began (sequential checks).
PER_SECOND = {"canary": 20.0, "stable": 80.0}
OUTCOMES = {"good": "Promoted", "errors": "RolledBack"}


@dataclass
class Turn:
    """One turn's inputs, as the loop handed them to the operator's core."""

    now: datetime
    live: dict[Track, DeploymentState]
    after: dict[Track, DeploymentState] = field(default_factory=dict)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


def rolled_out(model: api.ModelRef, replicas: int = 1) -> DeploymentState:
    return DeploymentState(
        exists=True,
        desired=replicas,
        available=replicas,
        updated=replicas,
        current=True,
        version=model.version,
        model=model_reference(uri=model.uri, version=model.version, sha256=model.sha256),
    )


class FakeCluster:
    """Servers that do at once what the plan last applied says, when the loop converges."""

    def __init__(self, spec: api.ModelDeploymentSpec, clock: Clock) -> None:
        assert spec.canary is not None and spec.shadow is not None
        self.clock = clock
        self.models: dict[Track, api.ModelRef] = {
            "stable": spec.model,
            "canary": spec.canary.model,
            "shadow": spec.shadow.model,
        }
        self.wanted: tuple[TrackPlan, RoutingPlan] | None = None
        self.weight = 0
        self.turns: list[Turn] = []

    def states(self) -> dict[Track, DeploymentState]:
        return {track: rolled_out(model) for track, model in self.models.items()}

    def live(self) -> dict[Track, DeploymentState]:
        self.turns.append(Turn(self.clock(), self.states()))
        return self.turns[-1].live

    def apply(
        self, *, spec: api.ModelDeploymentSpec, plan: TrackPlan
    ) -> dict[Track, DeploymentState]:
        self.wanted = (plan, routing_of(spec, plan))
        self.turns[-1].after = self.states()
        return self.turns[-1].after

    async def converge(self, *, now: datetime) -> None:
        assert self.wanted is not None
        plan, routing = self.wanted
        self.weight = routing.canary_weight
        self.models["stable"] = plan.stable_model
        if not plan.canary_replicas and self.weight == 0:
            self.models.pop("canary", None)


# The bundled models' held-out accuracy (example_models): the canary is the better one.
ACCURACY = {"canary": 0.96, "stable": 0.955}


class FakeMeasurer:
    def __init__(self, values: dict[str, float]) -> None:
        self.values = values
        self.taken: dict[datetime, Measurements] = {}

    async def measure(
        self,
        *,
        spec: api.ModelDeploymentSpec,
        owner: Owner,
        status: api.ModelDeploymentStatus,
        now: datetime,
    ) -> Measurements:
        samples = {name: Sample(value) for name, value in self.values.items()}
        if status.step_started_at is not None:
            seconds = (now - status.step_started_at).total_seconds()
            for track, per_second in PER_SECOND.items():
                requests = float(round(per_second * seconds))
                error_rate = self.values[m.ERROR_RATE] if track == "canary" else 0.0
                samples |= {
                    m.count_name(track, "requests"): Sample(requests),
                    m.count_name(track, "errors"): Sample(float(round(error_rate * requests))),
                    m.count_name(track, "timed"): Sample(requests),
                    m.count_name(track, "slow"): Sample(0.0),
                    # A label for every answer (the demo's traffic sends them back).
                    m.count_name(track, "labelled"): Sample(requests),
                    m.count_name(track, "correct"): Sample(
                        float(round(ACCURACY[track] * requests))
                    ),
                }
        self.taken[now] = Measurements(time=now, samples=samples)
        return self.taken[now]

    async def aclose(self) -> None:
        return None


def demo_setup(scenario: str) -> runner.Setup:
    roles = scenarios.ROLES
    manifest = scenarios.example_spec(
        models={role: Path("/models") / role for role in roles},
        digests=dict.fromkeys(roles, "a" * 64),
        scenario=scenario,
    )
    spec = api.parse_spec(manifest["spec"])
    return runner.Setup(
        name=scenarios.NAME,
        namespace=scenarios.NAMESPACE,
        spec=spec,
        rows=[],
        plan=scenarios.PLANS[scenario],
        spec_file=Path("spec.yaml"),
        traffic_file=Path("test.csv"),
    )


def run_demo_loop(scenario: str) -> tuple[runner.Setup, FakeCluster, FakeMeasurer, DemoRecord]:
    setup = demo_setup(scenario)
    clock = Clock()
    cluster = FakeCluster(setup.spec, clock)
    measurer = FakeMeasurer(SCENARIO_VALUES[scenario])
    record = DemoRecord(
        name=setup.name,
        scenario=scenario,
        metrics="fake",
        started_at=T0,
        spec=setup.spec,
        spec_file=setup.spec_file,
        own_spec=False,
        traffic_file=setup.traffic_file,
    )
    asyncio.run(
        runner.roll_out(
            setup,
            cluster,
            measurer,
            record,
            lambda record: None,
            duration=300.0,
            clock=clock,
            sleep=clock.sleep,
        )
    )
    return setup, cluster, measurer, record


def replay(
    spec: api.ModelDeploymentSpec, turns: list[Turn], taken: dict[datetime, Measurements]
) -> api.ModelDeploymentStatus:
    """The status the operator's reconcile writes, turn after turn, from the same inputs."""
    status = api.ModelDeploymentStatus()
    for turn in turns:
        decision = rollout.decide(
            spec=spec,
            status=status,
            measurements=taken.get(turn.now),
            now=turn.now,
            tracks=turn.live,
            generation=1,
        )
        rollout.plan_tracks(spec=spec, status=decision.status, now=turn.now)
        status = reconcile.build_status(
            spec=spec,
            invalid=None,
            previous=decision.status,
            tracks=turn.after,
            generation=1,
            now=turn.now,
        )
    return status


def summary(status: api.ModelDeploymentStatus) -> dict[str, Any]:
    return {
        "phase": status.phase,
        "conditions": [(c.type, c.status, c.reason) for c in status.conditions],
        "history": [(entry.event, entry.version) for entry in status.history],
    }


@pytest.mark.parametrize("scenario", ["errors", "good"])
def test_the_demos_final_status_is_the_operators(scenario: str) -> None:
    setup, cluster, measurer, record = run_demo_loop(scenario)

    assert not record.timed_out
    assert record.status is not None and record.status.phase == OUTCOMES[scenario]
    assert len(cluster.turns) > 10 and measurer.taken
    operator = replay(setup.spec, cluster.turns, measurer.taken)
    assert summary(record.status) == summary(operator)
    # The conditions the observed state owns are there, not only the rollout core's.
    assert {"Ready", "Reconciling", "Degraded"} <= {c.type for c in record.status.conditions}
    assert record.status == operator
