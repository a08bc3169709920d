"""Properties of the rollout core over random specs and random sequences of analyses.

A scenario is a spec and a sequence of reconciles: a time gap, whether an analysis was taken
(and what each check measured), whether the canary Deployment is available, what the stable
Deployment serves, whether the rollout is paused, and whether the operator restarted (the
status then comes back through JSON). `decide()` runs step by step with a clock, and every
step is checked against what the rollout promises.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from canaryml_api import resource as api
from canaryml_api.tracks import Track
from canaryml_operator import measurements as m
from canaryml_operator import rollout
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.rollout import Command, Decision
from canaryml_operator.state import DeploymentState
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.unit.specs import CANARY_MODEL, MINIMAL

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
KPI = "business-kpi"
KPI_MIN, KPI_MAX = 0.1, 10.0
GATED = (m.ERROR_RATE, m.LATENCY_P99)
# Every check a spec can have; which of them are judged depends on the spec.
VALUE_CHECKS = (
    m.ERROR_RATE,
    m.LATENCY_P99,
    m.DRIFT,
    m.PREDICTION_DRIFT,
    m.SHADOW_AGREEMENT,
    KPI,
)
CHECK_KINDS = ("ok", "bad", "inf", "nan", "missing", "error")
REQUEST_KINDS = ("enough", "few", "nan", "missing", "error")
PRECEDENCE = ("Failed", "Error", "Inconclusive")
ENDED = ("Promoted", "RolledBack")

PROPERTY_SETTINGS = settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


# ---------------------------------------------------------------------------------------------
# Scenarios


@dataclass(frozen=True)
class Tick:
    """One reconcile of the operator."""

    gap: int  # seconds since the previous reconcile
    kinds: Mapping[str, str] | None  # what each check measured; None: no analysis this time
    canary_up: bool = True
    stable: Literal["missing", "old", "new"] = "old"
    paused: bool = False
    restart: bool = False


@st.composite
def specs(draw: st.DrawFn) -> api.ModelDeploymentSpec:
    steps = draw(st.lists(st.integers(1, 100), min_size=1, max_size=5, unique=True))
    raw: dict[str, Any] = {
        **MINIMAL,
        "canary": {
            "model": dict(CANARY_MODEL),
            "steps": sorted(steps),
            "stepInterval": f"{draw(st.integers(1, 60))}s",
        },
        "analysis": {
            "interval": f"{draw(st.integers(1, 30))}s",
            "failureLimit": draw(st.integers(1, 4)),
            "minRequests": draw(st.sampled_from([0, 1, 50, 100])),
        },
    }
    shadow = draw(st.sampled_from([None, 0, 100]))
    if shadow is not None:
        raw["shadow"] = {
            "model": {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"},
            "percent": shadow,
        }
    if draw(st.booleans()):
        raw["analysis"]["metrics"] = [{"name": KPI, "query": "q", "min": KPI_MIN, "max": KPI_MAX}]
    return api.parse_spec(raw)


def judged_checks(spec: api.ModelDeploymentSpec) -> list[str]:
    checks = [m.ERROR_RATE, m.LATENCY_P99, m.DRIFT, m.PREDICTION_DRIFT]
    if spec.shadow is not None and spec.shadow.percent > 0:
        checks.append(m.SHADOW_AGREEMENT)
    checks += [metric.name for metric in spec.analysis.metrics]
    return checks


@st.composite
def analyses(draw: st.DrawFn, spec: api.ModelDeploymentSpec) -> dict[str, str]:
    """What each check measured, biased so that whole rollouts happen: mostly passing."""
    checks = judged_checks(spec)
    kinds = {name: "ok" for name in VALUE_CHECKS}
    kinds[m.REQUESTS] = "enough"
    mode = draw(st.sampled_from(["pass"] * 5 + ["fail", "fail", "held", "mixed"]))
    if mode == "fail":
        for name in draw(st.lists(st.sampled_from(checks), min_size=1, max_size=2)):
            kinds[name] = draw(st.sampled_from(["bad", "inf"]))
    elif mode == "held":
        if draw(st.booleans()):
            kinds[m.REQUESTS] = draw(st.sampled_from(REQUEST_KINDS[1:]))
        else:
            kinds[draw(st.sampled_from(checks))] = draw(
                st.sampled_from(["nan", "missing", "error"])
            )
    elif mode == "mixed":
        kinds[m.REQUESTS] = draw(st.sampled_from(REQUEST_KINDS))
        for name in VALUE_CHECKS:
            kinds[name] = draw(st.sampled_from(CHECK_KINDS))
    return kinds


def ticks(
    spec: api.ModelDeploymentSpec, *, analysing: bool | None = None
) -> st.SearchStrategy[Tick]:
    assert spec.canary is not None
    interval = int(api.parse_duration(spec.canary.step_interval))
    return st.builds(
        Tick,
        gap=st.one_of(st.integers(0, interval + 1), st.integers(interval, 3 * interval)),
        kinds=(
            analyses(spec)
            if analysing
            else st.one_of(st.none(), analyses(spec), analyses(spec), analyses(spec))
        ),
        canary_up=st.sampled_from([True, True, True, False]),
        stable=st.sampled_from(["missing", "old", "new", "new"]),
        paused=st.sampled_from([False] * 9 + [True]),
        restart=st.sampled_from([False] * 4 + [True]),
    )


@st.composite
def held_streaks(draw: st.DrawFn, spec: api.ModelDeploymentSpec) -> list[Tick]:
    """Analyses in a row that can neither pass nor fail (too few requests, no data, errors)."""
    sequence = []
    for _ in range(draw(st.integers(2, rollout.HELD_STREAK_LIMIT + 2))):
        kinds = {name: "ok" for name in VALUE_CHECKS}
        kinds[m.REQUESTS] = "enough"
        if spec.analysis.min_requests > 0 and draw(st.booleans()):
            kinds[m.REQUESTS] = draw(st.sampled_from(REQUEST_KINDS[1:]))
            kinds[draw(st.sampled_from(GATED))] = draw(st.sampled_from(CHECK_KINDS))
        else:
            name = draw(st.sampled_from(judged_checks(spec)))
            kinds[name] = draw(st.sampled_from(["nan", "missing", "error"]))
        tick = draw(ticks(spec))
        sequence.append(Tick(tick.gap, kinds, True, tick.stable, False, tick.restart))
    return sequence


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[api.ModelDeploymentSpec, list[Tick]]:
    spec = draw(specs())
    single = ticks(spec).map(lambda tick: [tick])
    segments = st.one_of(single, single, single, held_streaks(spec))
    parts = draw(st.lists(segments, min_size=4, max_size=25))
    return spec, [tick for part in parts for tick in part][:60]


# ---------------------------------------------------------------------------------------------
# Inputs of decide() and what the verdict should be


def bounds(spec: api.ModelDeploymentSpec, name: str) -> tuple[float | None, float | None]:
    limits = spec.analysis.thresholds
    return {
        m.ERROR_RATE: (None, limits.max_error_rate),
        m.LATENCY_P99: (None, api.parse_duration(limits.max_latency_p99)),
        m.DRIFT: (None, limits.max_drift),
        m.PREDICTION_DRIFT: (None, limits.max_prediction_drift),
        m.SHADOW_AGREEMENT: (limits.min_shadow_agreement, None),
        KPI: (KPI_MIN, KPI_MAX),
    }[name]


def sample(spec: api.ModelDeploymentSpec, name: str, kind: str) -> Sample | None:
    """The sample a check measured (None: the provider had no series for it)."""
    if kind == "missing":
        return None
    if kind == "error":
        return Sample.failed("prometheus unreachable")
    if kind == "nan":
        return Sample(math.nan)
    low, high = bounds(spec, name)
    if kind == "ok":
        if low is not None and high is not None:
            return Sample((low + high) / 2)
        return Sample(high / 2 if high is not None else (low + 1) / 2)  # type: ignore[operator]
    if kind == "bad":
        return Sample(high * 2 + 0.1 if high is not None else low / 2)  # type: ignore[operator]
    assert kind == "inf"
    return Sample(math.inf if high is not None else -math.inf)


def request_count(spec: api.ModelDeploymentSpec, kind: str) -> float:
    least = spec.analysis.min_requests
    return {"enough": least + 10.0, "few": max(least - 1.0, 0.0)}.get(kind, 0.0)


def measurements(
    spec: api.ModelDeploymentSpec, kinds: Mapping[str, str], at: datetime
) -> Measurements:
    samples: dict[str, Sample] = {}
    requests = kinds[m.REQUESTS]
    if requests == "error":
        samples[m.REQUESTS] = Sample.failed("prometheus unreachable")
    elif requests == "nan":
        samples[m.REQUESTS] = Sample(math.nan)
    elif requests != "missing":
        samples[m.REQUESTS] = Sample(request_count(spec, requests))
    for name in VALUE_CHECKS:
        value = sample(spec, name, kinds[name])
        if value is not None:
            samples[name] = value
    return Measurements(time=at, samples=samples)


def expected_verdict(spec: api.ModelDeploymentSpec, kinds: Mapping[str, str]) -> str:
    """The analysis' verdict, worked out independently of `verdicts.judge`."""
    requests = kinds[m.REQUESTS]
    if requests == "error":
        verdicts = ["Error"]
    else:
        enough = request_count(spec, requests) >= spec.analysis.min_requests
        verdicts = ["Successful" if enough else "Inconclusive"]
    gate = verdicts[0] != "Successful"
    for name in judged_checks(spec):
        kind = kinds[name]
        if kind == "error":
            verdicts.append("Error")
        elif kind == "inf" and name not in m.INFINITY_MEASURES:
            verdicts.append("Error")  # outside what the check can measure: never a pass
        elif kind in ("nan", "missing") or (gate and name in GATED):
            verdicts.append("Inconclusive")
        elif kind in ("bad", "inf"):
            verdicts.append("Failed")
        else:
            verdicts.append("Successful")
    return next((v for v in PRECEDENCE if v in verdicts), "Successful")


def tracks_of(spec: api.ModelDeploymentSpec, tick: Tick) -> dict[Track, DeploymentState]:
    assert spec.canary is not None

    def serving(version: str) -> DeploymentState:
        return DeploymentState(
            exists=True, desired=1, available=1, updated=1, current=True, version=version
        )

    tracks: dict[Track, DeploymentState] = {}
    if tick.canary_up:
        tracks["canary"] = serving(spec.canary.model.version)
    if tick.stable != "missing":
        model = spec.canary.model if tick.stable == "new" else spec.model
        tracks["stable"] = serving(model.version)
    return tracks


def roundtrip(status: api.ModelDeploymentStatus) -> api.ModelDeploymentStatus:
    return api.ModelDeploymentStatus.model_validate(status.model_dump(by_alias=True, mode="json"))


def outcome(decision: Decision) -> tuple[Any, ...]:
    """What the operator does with a decision: the status it writes (as JSON), the Events it
    emits."""
    return (
        decision.status.model_dump(by_alias=True, mode="json"),
        decision.action,
        decision.events,
    )


def decide(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, tick: Tick, now: datetime
) -> Decision:
    commands: dict[Command, str] = {"pause": "true"} if tick.paused else {}
    return rollout.decide(
        spec=spec,
        status=status,
        measurements=None if tick.kinds is None else measurements(spec, tick.kinds, now),
        now=now,
        tracks=tracks_of(spec, tick),
        commands=commands,
    )


def promotions(status: api.ModelDeploymentStatus) -> int:
    return sum(entry.event == "promoted" for entry in status.history)


def stalled(status: api.ModelDeploymentStatus) -> bool:
    return any(c.type == "Stalled" and c.status == "True" for c in status.conditions)


# ---------------------------------------------------------------------------------------------
# Running a scenario, checking each step


def run(
    spec: api.ModelDeploymentSpec, ticks: list[Tick], *, restart_always: bool = False
) -> list[Decision]:
    """Every decision of the scenario, each checked against the rollout's promises."""
    assert spec.canary is not None
    steps = spec.canary.steps
    interval = timedelta(seconds=api.parse_duration(spec.canary.step_interval))
    limit = spec.analysis.failure_limit
    canary = api.ModelIdentity.of(spec.canary.model)
    status, now = api.ModelDeploymentStatus(), T0
    failed_in_a_row = held_in_a_row = 0
    decisions: list[Decision] = []
    for tick in ticks:
        now += timedelta(seconds=tick.gap)
        if tick.restart or restart_always:
            status = roundtrip(status)
        decision = decide(spec, status, tick, now)
        new = decision.status

        # Deterministic, and a JSON round trip of the status changes nothing.
        assert decide(spec, status, tick, now) == decision
        assert outcome(decide(spec, roundtrip(status), tick, now)) == outcome(decision)

        # The weight stays in range and matches the step.
        assert 0 <= new.canary_weight <= 100
        if new.current_step is not None:
            assert new.phase in ("Progressing", "Paused")
            assert new.canary_weight == steps[new.current_step]
        elif new.phase in ("Progressing", "Paused", "RolledBack"):
            assert new.canary_weight == 0

        # Every change of weight is one step up, or to 0 by a rollback or a finished promotion.
        # (The canary becoming available and its first analysis can share one decision, whose
        # action is then the analysis'.)
        if new.canary_weight != status.canary_weight:
            before, after = status.current_step, new.current_step
            if after is not None and before is None:
                assert (status.canary_weight, after, new.canary_weight) == (0, 0, steps[0])
                assert tick.canary_up
            elif after is not None:
                assert before is not None and after == before + 1
                assert (status.canary_weight, new.canary_weight) == (steps[before], steps[after])
                assert decision.action == "stepUp"
            else:
                assert decision.action in ("rollback", "promoted"), decision.action
                assert new.canary_weight == 0

        # Which analyses are judged, and how.
        ended = status.phase in ENDED
        measuring = tick.kinds is not None and not ended
        # A paused rollout gives a canary that just became available no traffic, and no analysis.
        at_a_step = status.current_step is not None or (
            tick.canary_up and not ended and not tick.paused
        )
        judged = measuring and at_a_step and not tick.paused
        verdict = expected_verdict(spec, tick.kinds) if tick.kinds is not None else None
        if measuring and at_a_step:
            record = new.last_analysis
            assert record is not None
            assert (record.time, record.verdict) == (now, verdict)
        if not measuring:
            assert new.last_analysis == status.last_analysis or decision.action == "start"

        if judged:
            failed_in_a_row = failed_in_a_row + 1 if verdict == "Failed" else 0
            held_in_a_row = held_in_a_row + 1 if verdict in ("Inconclusive", "Error") else 0
        elif measuring:  # a paused analysis: a streak ends for this test's counting
            failed_in_a_row = held_in_a_row = 0

        # failureLimit Failed analyses in a row end the rollout, nothing else does.
        if failed_in_a_row >= limit:
            assert (new.phase, new.canary_weight, new.current_step) == ("RolledBack", 0, None)
            assert status.phase == "RolledBack" or decision.action == "rollback"
        if decision.action == "rollback":
            assert judged and verdict == "Failed"
            assert new.failed_checks >= limit
            assert new.history[-1].event == "rolledBack"
        if judged and verdict in ("Inconclusive", "Error"):
            assert decision.action == "hold"
            assert new.canary_weight == status.canary_weight or status.current_step is None
        # Stalled only for a real stall: Error analyses HELD_STREAK_LIMIT in a row, or
        # Inconclusive ones for progressDeadline; a shorter Inconclusive streak is Progressing.
        analysis_interval = api.parse_duration(spec.analysis.interval)
        deadline = api.parse_duration(spec.progress_deadline)
        if judged and verdict == "Error" and held_in_a_row >= rollout.HELD_STREAK_LIMIT:
            assert stalled(new)
        if judged and verdict == "Inconclusive":
            if held_in_a_row * analysis_interval >= deadline:
                assert stalled(new)
            elif not stalled(status) and new.held_analyses * analysis_interval < deadline:
                assert not stalled(new)
        if judged and verdict in ("Successful", "Failed"):
            assert not stalled(new)

        # A step is left only by a Successful analysis once its interval is over.
        elapsed = None
        restarted = "StepClockRestarted" in [e.reason for e in decision.events]
        if status.current_step is not None and status.step_started_at is not None:
            elapsed = now - status.step_started_at
            if status.phase == "Paused" and not tick.paused:
                elapsed = timedelta(0)  # a resumed step earns its whole interval again
            elif judged:
                # An analysis after a gap longer than the limit restarts the step clock.
                last = status.last_analysis.time if status.last_analysis else status.step_started_at
                gap = (now - max(last, status.step_started_at)).total_seconds()
                assert restarted == (gap > rollout.analysis_gap_limit(spec))
                if restarted:
                    elapsed = timedelta(0)
        if not (judged and status.current_step is not None):
            assert not restarted
        moved_on = decision.action in ("promote", "stepUp") and status.current_step is not None
        if moved_on:
            assert judged and verdict == "Successful"
            assert elapsed is not None and elapsed >= interval
        elif judged and verdict == "Successful" and elapsed is not None:
            assert elapsed < interval  # a pass that was due would have moved on

        # Without commands, "promoted" only follows a Successful analysis at the last step.
        if promotions(new) != promotions(status):
            assert promotions(new) == promotions(status) + 1
            assert decision.action == "promote"
            assert status.current_step == len(steps) - 1
            assert (new.phase, new.stable_model) == ("Promoted", canary)
            assert new.canary_weight == status.canary_weight
            assert new.history[-1].replaced == api.ModelIdentity.of(spec.model)
        if decision.action == "promoted":
            assert status.phase == "Promoted" and tick.stable == "new"
        decisions.append(decision)
        status = new
    event(f"ends {status.phase}")  # --hypothesis-show-statistics: what the scenarios reach
    if stalled(status) or any(stalled(d.status) for d in decisions):
        event("stalled")
    return decisions


# ---------------------------------------------------------------------------------------------
# Properties


@PROPERTY_SETTINGS
@given(scenarios())
def test_random_rollouts_keep_their_promises(
    scenario: tuple[api.ModelDeploymentSpec, list[Tick]],
) -> None:
    spec, ticks = scenario
    run(spec, ticks)


@settings(PROPERTY_SETTINGS, max_examples=40)
@given(scenarios())
def test_restarting_before_every_decision_changes_no_outcome(
    scenario: tuple[api.ModelDeploymentSpec, list[Tick]],
) -> None:
    spec, ticks = scenario
    plain = [replace(tick, restart=False) for tick in ticks]
    steady = run(spec, plain)
    restarted = run(spec, plain, restart_always=True)
    assert [outcome(d) for d in restarted] == [outcome(d) for d in steady]


@st.composite
def failing_ends(draw: st.DrawFn) -> tuple[api.ModelDeploymentSpec, list[Tick], list[Tick]]:
    spec, prefix = draw(scenarios())
    checks = judged_checks(spec)
    failing = []
    for _ in range(spec.analysis.failure_limit):
        kinds = {name: "ok" for name in VALUE_CHECKS}
        kinds[m.REQUESTS] = draw(st.sampled_from(REQUEST_KINDS))
        # A failing check that no gate can hide.
        kinds[draw(st.sampled_from([c for c in checks if c not in GATED]))] = "bad"
        tick = draw(ticks(spec, analysing=True))
        failing.append(Tick(tick.gap, kinds, True, tick.stable, False, tick.restart))
    return spec, prefix, failing


@PROPERTY_SETTINGS
@given(failing_ends())
def test_failure_limit_failed_analyses_in_a_row_roll_back(
    case: tuple[api.ModelDeploymentSpec, list[Tick], list[Tick]],
) -> None:
    spec, prefix, failing = case
    decisions = run(spec, prefix + failing)
    before, final = decisions[len(prefix) - 1].status, decisions[-1].status
    if before.phase == "Promoted":
        assert final.phase == "Promoted"
    else:
        assert (final.phase, final.canary_weight) == ("RolledBack", 0)
        assert final.history[-1].event == "rolledBack"


@st.composite
def passing_rollouts(draw: st.DrawFn) -> tuple[api.ModelDeploymentSpec, list[Tick]]:
    spec = draw(specs())
    assert spec.canary is not None
    interval = int(api.parse_duration(spec.canary.step_interval))
    passing = {name: "ok" for name in VALUE_CHECKS} | {m.REQUESTS: "enough"}
    sequence = [Tick(0, None, canary_up=True, stable="old")]
    for _ in spec.canary.steps:
        # Passes inside the step's interval, then one once it is over (or exactly at its end).
        inside = draw(st.lists(st.integers(0, interval // 3), max_size=2))
        sequence += [Tick(gap, passing, stable="old") for gap in inside]
        late = draw(st.sampled_from([0, 0, 1, interval]))
        # Never a gap longer than the analysis gap limit: that would restart the step's clock.
        gap = min(interval - sum(inside) + late, int(rollout.analysis_gap_limit(spec)))
        sequence.append(Tick(gap, passing, stable="old"))
    sequence.append(Tick(draw(st.integers(0, 10)), None, stable="old"))
    sequence.append(Tick(draw(st.integers(0, 10)), None, stable="new"))
    return spec, sequence


@PROPERTY_SETTINGS
@given(passing_rollouts())
def test_passing_analyses_take_every_step_then_promote(
    case: tuple[api.ModelDeploymentSpec, list[Tick]],
) -> None:
    spec, sequence = case
    assert spec.canary is not None
    decisions = run(spec, sequence)
    weights = [d.status.canary_weight for d in decisions]
    distinct = [w for i, w in enumerate(weights) if i == 0 or w != weights[i - 1]]
    assert distinct == [*spec.canary.steps, 0]
    actions = [d.action for d in decisions if d.action in ("stepUp", "promote", "promoted")]
    assert actions == ["stepUp"] * len(spec.canary.steps) + ["promote", "promoted"]
    final = decisions[-1].status
    assert final.phase == "Promoted"
    assert final.stable_model == api.ModelIdentity.of(spec.canary.model)
