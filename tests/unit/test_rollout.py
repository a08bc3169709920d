"""The rollout core: verdicts, every transition of `decide()`, the commands and the track plan.

Each test drives `decide()` the way the operator does (a clock, the live Deployments, the
measurements of one analysis) and reads the status, the Events and the commands it handled.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Collection, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.tracks import Track
from canaryml_operator import measurements as m
from canaryml_operator import rollout, verdicts
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.rollout import Command, Decision
from canaryml_operator.state import DeploymentState, Event, TrackPlan, model_reference

from tests.unit.specs import CANARY_MODEL, DESIGN_EXAMPLE, MINIMAL, changed

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
STABLE_MODEL: dict[str, Any] = MINIMAL["model"]
NEXT_MODEL: dict[str, Any] = {"uri": "s3://models/iris/1.2.0", "version": "1.2.0"}
STABLE_ID = api.ModelIdentity(uri=STABLE_MODEL["uri"], version=STABLE_MODEL["version"])
CANARY_ID = api.ModelIdentity(uri=CANARY_MODEL["uri"], version=CANARY_MODEL["version"])
NEXT_ID = api.ModelIdentity(uri=NEXT_MODEL["uri"], version=NEXT_MODEL["version"])

# Values every built-in check passes with under the default thresholds.
GOOD: dict[str, float] = {
    m.REQUESTS: 120.0,
    m.ERROR_RATE: 0.01,
    m.LATENCY_P99: 0.1,
    m.DRIFT: 0.05,
    m.PREDICTION_DRIFT: 0.05,
}
BAD_ERRORS = {m.ERROR_RATE: 0.2}
FEW_REQUESTS = {m.REQUESTS: 3.0}
UNREACHABLE = {name: Sample.failed("prometheus unreachable") for name in GOOD}


def raw_spec(
    *,
    steps: Collection[int] = (5, 25, 50),
    interval: str = "30s",
    failure_limit: int = 2,
    min_requests: int = 50,
    canary_model: Mapping[str, Any] = CANARY_MODEL,
    **top: Any,
) -> dict[str, Any]:
    raw = copy.deepcopy(MINIMAL)
    raw["canary"] = {"model": dict(canary_model), "steps": list(steps), "stepInterval": interval}
    raw["analysis"] = {"failureLimit": failure_limit, "minRequests": min_requests}
    raw.update(top)
    return raw


def make_spec(**fields: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec(raw_spec(**fields))


def measured(
    at: datetime, overrides: Mapping[str, float | Sample | None] | None = None
) -> Measurements:
    """One analysis: GOOD values, with `overrides` (a float, a Sample, or None for no data)."""
    values: dict[str, float | Sample | None] = {**GOOD, **(overrides or {})}
    samples = {
        name: value if isinstance(value, Sample) else Sample(value)
        for name, value in values.items()
    }
    return Measurements(time=at, samples=samples)


def deployment(
    version: str, *, replicas: int = 1, ready: bool = True, uri: str | None = None
) -> DeploymentState:
    """A live Deployment; with `uri`, it also names its exact artifact (as the operator's
    Deployments do), else it is known by version only."""
    return DeploymentState(
        exists=True,
        desired=replicas,
        available=replicas if ready else 0,
        updated=replicas,
        current=True,
        version=version,
        model=model_reference(uri=uri, version=version, sha256=None) if uri else None,
    )


CANARY_UP: dict[Track, DeploymentState] = {"canary": deployment(CANARY_MODEL["version"])}
PROMOTE: dict[Command, str] = {"promote": CANARY_MODEL["version"]}
ABORT: dict[Command, str] = {"abort": CANARY_MODEL["version"]}


def roundtrip(status: api.ModelDeploymentStatus) -> api.ModelDeploymentStatus:
    """The status as a restarted operator reads it back from the API server."""
    return api.ModelDeploymentStatus.model_validate(status.model_dump(by_alias=True, mode="json"))


def condition(status: api.ModelDeploymentStatus, type: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type), None)


def reasons(decision: Decision) -> list[str]:
    return [event.reason for event in decision.events]


class Run:
    """One ModelDeployment driven through `decide()` with a clock."""

    def __init__(
        self,
        spec: api.ModelDeploymentSpec | None = None,
        status: api.ModelDeploymentStatus | None = None,
        now: datetime = T0,
    ) -> None:
        self.spec = spec or make_spec()
        self.status = status or api.ModelDeploymentStatus()
        self.now = now

    def decide(
        self,
        measurements: Measurements | None = None,
        *,
        after: float = 0.0,
        tracks: Mapping[Track, DeploymentState] | None = None,
        commands: Mapping[Command, str] = rollout.NO_COMMANDS,
        generation: int | None = None,
    ) -> Decision:
        self.now += timedelta(seconds=after)
        decision = rollout.decide(
            spec=self.spec,
            status=self.status,
            measurements=measurements,
            now=self.now,
            tracks=tracks,
            commands=commands,
            generation=generation,
        )
        self.status = decision.status
        return decision

    def analyse(
        self,
        overrides: Mapping[str, float | Sample | None] | None = None,
        *,
        after: float = 0.0,
        tracks: Mapping[Track, DeploymentState] | None = None,
        commands: Mapping[Command, str] = rollout.NO_COMMANDS,
    ) -> Decision:
        self.now += timedelta(seconds=after)
        return self.decide(measured(self.now, overrides), tracks=tracks, commands=commands)

    def start(self) -> Decision:
        """The canary started and became available: it is at steps[0]."""
        self.decide()
        decision = self.decide(after=10, tracks=CANARY_UP)
        assert decision.action == "stepUp"
        return decision

    def to_step(self, index: int) -> None:
        self.start()
        interval = api.parse_duration(self.spec.canary.step_interval)  # type: ignore[union-attr]
        for _ in range(index):
            assert self.analyse(after=interval).action == "stepUp"
        assert self.status.current_step == index

    def promote(self) -> Decision:
        assert self.spec.canary is not None
        self.to_step(len(self.spec.canary.steps) - 1)
        decision = self.analyse(after=api.parse_duration(self.spec.canary.step_interval))
        assert decision.action == "promote"
        return decision


# ---------------------------------------------------------------------------------------------
# Commands from annotations


def test_no_annotations_no_commands() -> None:
    assert rollout.commands_from(None) == {}
    assert rollout.commands_from({"other.io/promote": "true"}) == {}


def test_one_shot_annotations_are_commands() -> None:
    annotations = {
        "canaryml.dev/promote": "true",
        "canaryml.dev/abort": "",
        "canaryml.dev/rollback": "2024-05-01T12:00:00Z",
    }
    assert rollout.commands_from(annotations) == {
        "promote": "true",
        "abort": "",
        "rollback": "2024-05-01T12:00:00Z",
    }
    assert rollout.commands_from({"canaryml.dev/promote": " 1.2.0 "}) == {"promote": "1.2.0"}
    assert rollout.commands_from({"canaryml.dev/promote": "false"}) == {}


@pytest.mark.parametrize(
    ("value", "target"),
    [
        ("1.2.0", "1.2.0"),
        ("1.2.0@2024-05-01", "1.2.0"),
        ("v2+build.7", "v2+build.7"),
        ("true", None),
        ("yes", None),
        ("", None),
        ("2024-05-01T12:00:00Z", None),  # what `canaryml promote` wrote before
    ],
)
def test_a_command_names_its_target(value: str, target: str | None) -> None:
    assert rollout.command_target(value) == target


@pytest.mark.parametrize("value", ["true", "True", " yes ", "1"])
def test_paused_annotation_true(value: str) -> None:
    assert rollout.commands_from({"canaryml.dev/paused": value}) == {"pause": "true"}


@pytest.mark.parametrize("value", ["false", "", "0", "no"])
def test_paused_annotation_not_true(value: str) -> None:
    assert rollout.commands_from({"canaryml.dev/paused": value}) == {}


# ---------------------------------------------------------------------------------------------
# Verdicts of single checks


def test_judge_value_within_bounds_is_successful() -> None:
    result = verdicts.judge_value(name="kpi", sample=Sample(1.0), min=0.5, max=2.0)
    assert (result.verdict, result.value, result.message) == ("Successful", 1.0, "")


def test_judge_value_at_a_bound_is_successful() -> None:
    assert verdicts.judge_value(name="x", sample=Sample(0.05), max=0.05).verdict == "Successful"
    assert verdicts.judge_value(name="x", sample=Sample(0.9), min=0.9).verdict == "Successful"


def test_judge_value_above_max_fails_with_value_and_threshold() -> None:
    result = verdicts.judge_value(name="errorRate", sample=Sample(0.2), max=0.05)
    assert result.verdict == "Failed"
    assert result.message == "errorRate 20.0 % > max 5.0 %"
    assert (result.value, result.max) == (0.2, 0.05)


def test_judge_value_below_min_fails_with_value_and_threshold() -> None:
    result = verdicts.judge_value(name="shadowAgreement", sample=Sample(0.5), min=0.9)
    assert result.verdict == "Failed"
    assert result.message == "shadowAgreement 50.0 % < min 90.0 %"


@pytest.mark.parametrize("sample", [Sample(None), Sample(math.nan)])
def test_judge_value_without_data_is_inconclusive(sample: Sample) -> None:
    result = verdicts.judge_value(name="drift", sample=sample, max=0.25)
    assert result.verdict == "Inconclusive"
    assert result.value is None
    assert result.message == "drift: no data"


def test_judge_value_error_is_error_whatever_the_gate() -> None:
    result = verdicts.judge_value(
        name="errorRate", sample=Sample.failed("timeout"), max=0.05, gate="too few"
    )
    assert result.verdict == "Error"
    assert result.message == "errorRate: timeout"


def test_judge_value_gate_makes_even_a_failing_value_inconclusive() -> None:
    result = verdicts.judge_value(name="errorRate", sample=Sample(0.9), max=0.05, gate="too few")
    assert result.verdict == "Inconclusive"
    assert result.value == 0.9
    assert result.message == "errorRate: too few"


def test_judge_value_infinite_latency_fails() -> None:
    # histogram_quantile answers +Inf when every request fell in the last bucket.
    result = verdicts.judge_value(name="latencyP99", sample=Sample(math.inf), max=0.25)
    assert result.verdict == "Failed"


def test_a_drift_failure_names_the_features_over_the_bound() -> None:
    sample = Sample.worst_of({"mean radius": 8.274, "worst area": 2.31, "mean texture": 1.5})
    result = verdicts.judge_value(name=m.DRIFT, sample=sample, max=2.0)
    assert result.verdict == "Failed"
    # mean texture drifted too, but within the bound: not named.
    assert result.message == "drift 8.274 > max 2.000 (mean radius 8.274, worst area 2.310)"


def test_a_check_with_no_feature_names_none() -> None:
    result = verdicts.judge_value(name=m.PREDICTION_DRIFT, sample=Sample(0.9), max=0.25)
    assert result.message == "predictionDrift 0.900 > max 0.250"


def test_a_fractional_request_count_never_reads_as_enough() -> None:
    # Prometheus's increase() extrapolates: 19.6 requests must not read "20 < minRequests 20".
    spec = make_spec(min_requests=20)
    results = by_name(verdicts.judge(spec=spec, measurements=measured(T0, {m.REQUESTS: 19.6})))
    assert results[m.REQUESTS].message == "requests 19.6 < minRequests 20.0"
    results = by_name(verdicts.judge(spec=spec, measurements=measured(T0, {m.REQUESTS: 12.0})))
    assert results[m.REQUESTS].message == "requests 12 < minRequests 20"


# ---------------------------------------------------------------------------------------------
# Verdicts of a whole analysis


def by_name(results: list[verdicts.CheckResult]) -> dict[str, verdicts.CheckResult]:
    return {result.name: result for result in results}


def test_judge_checks_in_order_all_passing() -> None:
    results = verdicts.judge(spec=make_spec(), measurements=measured(T0))
    assert [r.name for r in results] == [
        m.REQUESTS,
        m.ERROR_RATE,
        m.LATENCY_P99,
        m.DRIFT,
        m.PREDICTION_DRIFT,
    ]
    assert {r.verdict for r in results} == {"Successful"}
    assert verdicts.overall(results) == "Successful"


def test_judge_thresholds_come_from_the_spec() -> None:
    results = by_name(verdicts.judge(spec=make_spec(), measurements=measured(T0)))
    assert results[m.REQUESTS].min == 50.0
    assert results[m.ERROR_RATE].max == 0.05
    assert results[m.LATENCY_P99].max == 0.25  # "250ms"
    assert results[m.DRIFT].max == 0.25
    assert results[m.PREDICTION_DRIFT].max == 0.25


def test_too_few_requests_make_error_rate_and_latency_inconclusive() -> None:
    overrides = {m.REQUESTS: 3.0, m.ERROR_RATE: 0.9, m.LATENCY_P99: 5.0}
    results = by_name(verdicts.judge(spec=make_spec(), measurements=measured(T0, overrides)))
    assert results[m.REQUESTS].verdict == "Inconclusive"
    assert results[m.REQUESTS].message == "requests 3 < minRequests 50"
    for name in (m.ERROR_RATE, m.LATENCY_P99):
        assert results[name].verdict == "Inconclusive"
        assert "too few canary requests (requests 3 < minRequests 50)" in results[name].message
    # Drift is not gated by the request count.
    assert results[m.DRIFT].verdict == "Successful"


def test_too_few_requests_do_not_hide_a_drift_failure() -> None:
    overrides = {m.REQUESTS: 3.0, m.DRIFT: 0.9}
    results = verdicts.judge(spec=make_spec(), measurements=measured(T0, overrides))
    assert by_name(results)[m.DRIFT].verdict == "Failed"
    assert verdicts.overall(results) == "Failed"


@pytest.mark.parametrize("value", [None, math.nan])
def test_no_request_data_counts_as_zero_requests(value: float | None) -> None:
    results = by_name(
        verdicts.judge(spec=make_spec(), measurements=measured(T0, {m.REQUESTS: value}))
    )
    assert results[m.REQUESTS].verdict == "Inconclusive"
    assert results[m.REQUESTS].value == 0.0
    assert results[m.ERROR_RATE].verdict == "Inconclusive"


def test_exactly_min_requests_is_enough() -> None:
    results = by_name(
        verdicts.judge(spec=make_spec(), measurements=measured(T0, {m.REQUESTS: 50.0}))
    )
    assert results[m.REQUESTS].verdict == "Successful"
    assert results[m.ERROR_RATE].verdict == "Successful"


def test_min_requests_zero_needs_no_traffic() -> None:
    spec = make_spec(min_requests=0)
    results = by_name(verdicts.judge(spec=spec, measurements=measured(T0, {m.REQUESTS: None})))
    assert results[m.REQUESTS].verdict == "Successful"
    assert results[m.ERROR_RATE].verdict == "Successful"


def test_unreachable_prometheus_is_error() -> None:
    results = verdicts.judge(spec=make_spec(), measurements=measured(T0, UNREACHABLE))
    assert by_name(results)[m.REQUESTS].verdict == "Error"
    assert by_name(results)[m.DRIFT].message == "drift: prometheus unreachable"
    assert verdicts.overall(results) == "Error"


def test_nan_error_rate_is_no_data() -> None:
    results = by_name(
        verdicts.judge(spec=make_spec(), measurements=measured(T0, {m.ERROR_RATE: math.nan}))
    )
    assert results[m.ERROR_RATE].verdict == "Inconclusive"
    assert results[m.ERROR_RATE].message == "errorRate: no data"


def test_shadow_agreement_only_with_a_shadow() -> None:
    overrides = {m.SHADOW_AGREEMENT: 0.1}
    without = verdicts.judge(spec=make_spec(), measurements=measured(T0, overrides))
    assert m.SHADOW_AGREEMENT not in by_name(without)
    assert verdicts.overall(without) == "Successful"

    shadow = {"model": {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"}}
    off = make_spec(shadow={**shadow, "percent": 0})
    assert m.SHADOW_AGREEMENT not in by_name(verdicts.judge(spec=off, measurements=measured(T0)))

    on = make_spec(shadow=shadow)
    results = by_name(verdicts.judge(spec=on, measurements=measured(T0, overrides)))
    assert results[m.SHADOW_AGREEMENT].verdict == "Failed"
    assert results[m.SHADOW_AGREEMENT].min == 0.9
    agreeing = by_name(
        verdicts.judge(spec=on, measurements=measured(T0, {m.SHADOW_AGREEMENT: 0.97}))
    )
    assert agreeing[m.SHADOW_AGREEMENT].verdict == "Successful"
    missing = by_name(verdicts.judge(spec=on, measurements=measured(T0)))
    assert missing[m.SHADOW_AGREEMENT].verdict == "Inconclusive"


@pytest.mark.parametrize(
    ("value", "verdict", "message"),
    [
        (1.0, "Successful", ""),
        (0.1, "Successful", ""),
        (10.0, "Successful", ""),
        (0.05, "Failed", "business-kpi 0.050 < min 0.100"),
        (12.0, "Failed", "business-kpi 12.000 > max 10.000"),
        (None, "Inconclusive", "business-kpi: no data"),
    ],
)
def test_custom_metric_min_and_max(value: float | None, verdict: str, message: str) -> None:
    spec = api.parse_spec(DESIGN_EXAMPLE)
    results = verdicts.judge(
        spec=spec, measurements=measured(T0, {m.SHADOW_AGREEMENT: 0.95, "business-kpi": value})
    )
    assert results[-1].name == "business-kpi"
    assert (results[-1].verdict, results[-1].message) == (verdict, message)
    assert (results[-1].min, results[-1].max) == (0.1, 10.0)
    assert [r.name for r in results][-2] == m.SHADOW_AGREEMENT


def test_custom_metric_with_only_a_max() -> None:
    raw = changed(raw_spec(), "analysis.metrics", [{"name": "cost", "query": "q", "max": 3}])
    spec = api.parse_spec(raw)
    low = verdicts.judge(spec=spec, measurements=measured(T0, {"cost": -100.0}))
    high = verdicts.judge(spec=spec, measurements=measured(T0, {"cost": 3.5}))
    assert by_name(low)["cost"].verdict == "Successful"
    assert by_name(high)["cost"].verdict == "Failed"


def result(verdict: api.Verdict) -> verdicts.CheckResult:
    return verdicts.CheckResult("x", verdict, None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ([], "Successful"),
        (["Successful", "Successful"], "Successful"),
        (["Successful", "Inconclusive"], "Inconclusive"),
        (["Inconclusive", "Error", "Successful"], "Error"),
        (["Error", "Failed", "Inconclusive"], "Failed"),
        (["Failed", "Successful"], "Failed"),
    ],
)
def test_overall_precedence(given: list[api.Verdict], expected: str) -> None:
    assert verdicts.overall([result(v) for v in given]) == expected


def test_build_record_keeps_values_reasons_and_checks() -> None:
    results = verdicts.judge(
        spec=make_spec(), measurements=measured(T0, {m.ERROR_RATE: 0.2, m.DRIFT: None})
    )
    record = verdicts.build_record(results=results, time=T0, step=1, weight=25)
    assert (record.time, record.step, record.weight, record.verdict) == (T0, 1, 25, "Failed")
    assert (record.requests, record.error_rate, record.latency_p99) == (120.0, 0.2, 0.1)
    assert record.drift is None
    assert record.prediction_drift == 0.05
    assert record.shadow_agreement is None
    assert record.reasons == ["errorRate 20.0 % > max 5.0 %", "drift: no data"]
    assert [(c.name, c.verdict) for c in record.checks] == [
        (m.REQUESTS, "Successful"),
        (m.ERROR_RATE, "Failed"),
        (m.LATENCY_P99, "Successful"),
        (m.DRIFT, "Inconclusive"),
        (m.PREDICTION_DRIFT, "Successful"),
    ]
    assert record.checks[1].max == 0.05


# ---------------------------------------------------------------------------------------------
# Starting a rollout


def test_no_canary_is_stable() -> None:
    run = Run(make_spec(canary=None))
    decision = run.decide(generation=3)
    assert decision.action == "none"
    assert decision.status.phase == "Stable"
    assert (decision.status.canary_weight, decision.status.current_step) == (0, None)
    assert decision.status.stable_model == STABLE_ID
    assert decision.status.spec_model == STABLE_ID
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "NoCanary")
    assert progressing.observed_generation == 3
    assert decision.events == []
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) is None


def test_a_canary_starts_a_rollout_waiting_for_it() -> None:
    run = Run()
    decision = run.decide(measured(T0))
    status = decision.status
    assert decision.action == "start"
    assert status.phase == "Progressing"
    assert (status.canary_weight, status.current_step) == (0, None)
    assert status.canary_model == CANARY_ID
    assert status.canary_version == "1.1.0"
    assert status.stable_model == STABLE_ID
    assert status.last_analysis is None  # nothing to analyse before the canary runs
    assert decision.events == [
        Event(
            "Normal",
            "RolloutStarted",
            "canary 1.1.0 rollout started (steps 5%, 25%, 50%, each for 30s)",
        )
    ]
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", "WaitingForCanary")
    rolled_back = condition(status, "RolledBack")
    assert rolled_back is not None
    assert (rolled_back.status, rolled_back.reason) == ("False", "NewRollout")
    assert rollout.next_analysis_in(spec=run.spec, status=status, now=T0) is None


@pytest.mark.parametrize(
    "canary",
    [
        DeploymentState(),
        deployment("1.1.0", ready=False),
        deployment("1.0.0"),  # still the previous canary's pods
        deployment("1.1.0", replicas=0),
        DeploymentState(
            exists=True, desired=1, available=1, updated=1, current=False, version="1.1.0"
        ),
    ],
)
def test_weight_stays_0_until_the_canary_is_available(canary: DeploymentState) -> None:
    run = Run()
    run.decide()
    decision = run.analyse({m.ERROR_RATE: 0.9}, after=60, tracks={"canary": canary})
    assert decision.action == "none"
    assert (decision.status.canary_weight, decision.status.current_step) == (0, None)
    assert decision.status.failed_checks == 0
    assert decision.status.last_analysis is None
    assert decision.events == []


def test_an_available_canary_gets_the_first_step() -> None:
    run = Run()
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    assert decision.action == "stepUp"
    assert (decision.status.canary_weight, decision.status.current_step) == (5, 0)
    assert decision.status.step_started_at == T0 + timedelta(seconds=10)
    message = "canary 1.1.0 available: weight 0% -> 5% (step 1 of 3)"
    assert decision.events == [Event("Normal", "StepUp", message)]
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason, progressing.message) == (
        "True",
        "CanaryAnalysis",
        message,
    )
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 0.0


def test_the_canary_available_at_once_is_started_and_stepped_in_one_decision() -> None:
    decision = Run().decide(tracks=CANARY_UP)
    assert decision.action == "stepUp"
    assert reasons(decision) == ["RolloutStarted", "StepUp"]
    assert decision.status.canary_weight == 5


# ---------------------------------------------------------------------------------------------
# Steps


def test_a_pass_before_the_step_interval_holds_the_weight() -> None:
    run = Run()
    run.start()
    started = run.status.step_started_at
    decision = run.analyse(after=29)
    assert decision.action == "pass"
    assert (decision.status.canary_weight, decision.status.current_step) == (5, 0)
    assert decision.status.step_started_at == started
    assert decision.status.last_analysis is not None
    assert decision.status.last_analysis.verdict == "Successful"
    assert decision.events == []


def test_a_pass_after_the_step_interval_steps_up() -> None:
    run = Run()
    run.start()
    run.analyse(after=15)
    decision = run.analyse(after=15)  # exactly stepInterval after the step started
    assert decision.action == "stepUp"
    assert (decision.status.canary_weight, decision.status.current_step) == (25, 1)
    assert decision.status.step_started_at == run.now
    [event] = decision.events
    assert (event.type, event.reason) == ("Normal", "StepUp")
    assert event.message.startswith(
        "canary weight 5% -> 25% (step 2 of 3): every check passed for 30s ("
    )
    assert event.message.endswith(
        "(requests 120, errorRate 1.0 %, latencyP99 100.0 ms, drift 0.050, predictionDrift 0.050)"
    )
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert progressing.message == event.message


def test_steps_are_taken_one_at_a_time() -> None:
    run = Run()
    run.start()
    # Each wait as long as the analysis gap limit allows (60 s: the default 1m window), twice the
    # step interval: still one step per analysis.
    weights = [run.analyse(after=60).status.canary_weight for _ in range(2)]
    assert weights == [25, 50]


def test_the_analysis_record_is_kept_in_status() -> None:
    run = Run()
    run.to_step(1)
    decision = run.analyse({m.ERROR_RATE: 0.03}, after=5)
    record = decision.status.last_analysis
    assert record is not None
    assert (record.time, record.step, record.weight) == (run.now, 1, 25)
    assert record.error_rate == 0.03
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 15.0
    later = run.now + timedelta(seconds=20)
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=later) == 0.0


# ---------------------------------------------------------------------------------------------
# Failed analyses


def test_one_failure_below_the_limit_holds_and_restarts_the_step() -> None:
    run = Run()
    run.start()
    decision = run.analyse(BAD_ERRORS, after=29)
    assert decision.action == "failed"
    assert decision.status.failed_checks == 1
    assert (decision.status.canary_weight, decision.status.phase) == (5, "Progressing")
    assert decision.status.step_started_at == run.now
    assert decision.status.last_analysis is not None
    assert decision.status.last_analysis.reasons == ["errorRate 20.0 % > max 5.0 %"]
    # The step has to earn its whole interval again.
    assert run.analyse(after=29).action == "pass"
    assert run.status.failed_checks == 0
    assert run.analyse(after=1).action == "stepUp"


def test_failures_at_the_limit_roll_back() -> None:
    run = Run()
    run.to_step(1)
    assert run.analyse(BAD_ERRORS, after=15).action == "failed"
    decision = run.analyse({m.ERROR_RATE: 0.3}, after=15)
    status = decision.status
    assert decision.action == "rollback"
    assert (status.phase, status.canary_weight, status.current_step) == ("RolledBack", 0, None)
    assert status.failed_checks == 2
    assert status.step_started_at == run.now
    assert status.stable_model == STABLE_ID  # the stable model keeps serving
    message = (
        "canary 1.1.0 rolled back at 25%: errorRate 30.0 % > max 5.0 % "
        "(2 failed analyses in a row, failureLimit 2)"
    )
    assert decision.events == [Event("Warning", "RolledBack", message)]
    rolled_back = condition(status, "RolledBack")
    assert rolled_back is not None
    assert (rolled_back.status, rolled_back.reason, rolled_back.message) == (
        "True",
        "AnalysisFailed",
        message,
    )
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "RolledBack")
    entry = status.history[-1]
    assert (entry.event, entry.version, entry.uri, entry.time) == (
        "rolledBack",
        "1.1.0",
        CANARY_MODEL["uri"],
        run.now,
    )
    assert entry.reason == message
    assert rollout.next_analysis_in(spec=run.spec, status=status, now=run.now) is None


def test_an_infinite_latency_rolls_back() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    decision = run.analyse({m.LATENCY_P99: math.inf}, after=5)
    assert decision.action == "rollback"
    assert "latencyP99 inf ms > max 250.0 ms" in decision.events[0].message


def test_an_infinite_latency_is_written_as_valid_json() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    decision = run.analyse({m.LATENCY_P99: math.inf}, after=5)
    json.dumps(decision.status.model_dump(by_alias=True, mode="json"), allow_nan=False)


def test_rollback_message_names_every_failing_check() -> None:
    shadow = {"model": {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"}}
    run = Run(make_spec(failure_limit=1, shadow=shadow))
    run.start()
    decision = run.analyse({m.LATENCY_P99: 0.75, m.SHADOW_AGREEMENT: 0.5}, after=5)
    assert decision.action == "rollback"
    [event] = decision.events
    assert "latencyP99 750.0 ms > max 250.0 ms" in event.message
    assert "shadowAgreement 50.0 % < min 90.0 %" in event.message
    assert "failureLimit 1" in event.message


def test_a_drift_rollback_names_the_features_that_drifted() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    drift = Sample.worst_of({"mean radius": 8.274, "worst area": 2.31, "mean texture": 0.01})
    decision = run.analyse({m.DRIFT: drift}, after=5)
    assert decision.action == "rollback"
    assert decision.events == [
        Event(
            "Warning",
            "RolledBack",
            "canary 1.1.0 rolled back at 5%: drift 8.274 > max 0.250 (mean radius 8.274, "
            "worst area 2.310) (1 failed analyses in a row, failureLimit 1)",
        )
    ]


def test_failure_limit_one_rolls_back_at_the_first_failure() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    assert run.analyse({m.DRIFT: 0.4}, after=1).action == "rollback"
    assert run.status.canary_weight == 0


def test_a_success_resets_the_failure_count() -> None:
    run = Run(make_spec(failure_limit=2))
    run.start()
    assert run.analyse(BAD_ERRORS, after=5).action == "failed"
    assert run.analyse(after=5).action == "pass"
    assert run.status.failed_checks == 0
    assert run.analyse(BAD_ERRORS, after=5).action == "failed"
    assert run.status.phase == "Progressing"


def test_held_analyses_between_failures_do_not_reset_the_count() -> None:
    # Flaky metrics must not hide a canary that fails whenever it can be measured.
    run = Run(make_spec(failure_limit=2))
    run.start()
    assert run.analyse(BAD_ERRORS, after=5).action == "failed"
    assert run.analyse(UNREACHABLE, after=5).action == "hold"
    assert run.status.failed_checks == 1
    assert run.analyse(BAD_ERRORS, after=5).action == "rollback"


def test_failed_beats_error_in_one_analysis() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    decision = run.analyse({m.ERROR_RATE: 0.5, m.DRIFT: Sample.failed("bad query")}, after=5)
    assert decision.action == "rollback"


def test_after_a_rollback_analyses_change_nothing() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    run.analyse(BAD_ERRORS, after=5)
    before = run.status
    for overrides in (None, BAD_ERRORS):
        decision = run.analyse(overrides, after=100, tracks=CANARY_UP)
        assert decision.action == "none"
        assert decision.events == []
    assert run.status == before


# ---------------------------------------------------------------------------------------------
# Inconclusive and Error hold the weight


@pytest.mark.parametrize("overrides", [FEW_REQUESTS, UNREACHABLE, {m.DRIFT: None}])
def test_held_analyses_never_step_up(overrides: Mapping[str, Any]) -> None:
    run = Run()
    run.start()
    for _ in range(3):
        decision = run.analyse(overrides, after=15)
        assert decision.action == "hold"
        assert (decision.status.canary_weight, decision.status.current_step) == (5, 0)
        assert decision.status.failed_checks == 0
        assert decision.events == []
    assert run.status.held_analyses == 3


@pytest.mark.parametrize("overrides", [FEW_REQUESTS, UNREACHABLE])
def test_held_analyses_never_promote(overrides: Mapping[str, Any]) -> None:
    run = Run(make_spec(steps=[50]))
    run.start()
    for _ in range(rollout.HELD_STREAK_LIMIT + 2):
        assert run.analyse(overrides, after=1000).action == "hold"
    assert (run.status.phase, run.status.canary_weight) == ("Progressing", 50)
    assert run.status.history == []


def test_held_analyses_keep_the_failure_count() -> None:
    run = Run(make_spec(failure_limit=3))
    run.start()
    run.analyse(BAD_ERRORS, after=5)
    run.analyse(FEW_REQUESTS, after=5)
    assert (run.status.failed_checks, run.status.held_analyses) == (1, 1)


def test_a_warming_drift_window_is_progressing_not_stalled() -> None:
    """Inconclusive analyses (the drift window still filling) for less than progressDeadline:
    Progressing with the reason, no Stalled, no Warning (Argo CD would show Degraded)."""
    run = Run(make_spec(interval="10m"))
    run.start()
    for count in range(1, 3 * rollout.HELD_STREAK_LIMIT):
        decision = run.analyse({m.DRIFT: None}, after=15)
        assert decision.action == "hold"
        assert decision.events == []
        stalled = condition(decision.status, "Stalled")
        assert stalled is None or stalled.status == "False"
        progressing = condition(decision.status, "Progressing")
        assert progressing is not None
        assert (progressing.status, progressing.reason) == ("True", "AnalysisInconclusive")
        assert progressing.message.startswith(f"weight held at 5% ({count} analyses in a row): ")
        assert "drift: no data" in progressing.message
    # The checks pass again: Progressing says so.
    progressing = condition(run.analyse(after=15).status, "Progressing")
    assert progressing is not None
    assert (progressing.reason, progressing.message) == (
        "CanaryAnalysis",
        "canary 1.1.0 at 5% (step 1 of 3): the checks pass again",
    )


def test_inconclusive_analyses_longer_than_the_progress_deadline_are_stalled() -> None:
    run = Run(make_spec(progressDeadline="1m"))  # 4 analyses of 15 s
    run.start()
    for _ in range(3):
        run.analyse(FEW_REQUESTS, after=15)
    assert condition(run.status, "Stalled") is None
    decision = run.analyse(FEW_REQUESTS, after=15)
    stalled = condition(decision.status, "Stalled")
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("True", "AnalysisInconclusive")
    assert stalled.message.startswith("weight held at 5% for 4 analyses in a row: ")
    assert stalled.message.endswith("(longer than progressDeadline 1m)")
    assert "requests 3 < minRequests 50" in stalled.message
    assert "errorRate: too few canary requests" in stalled.message
    assert decision.events == [Event("Warning", "AnalysisInconclusive", stalled.message)]
    # Reported once, kept while the streak goes on.
    again = run.analyse(FEW_REQUESTS, after=15)
    assert again.events == []
    stalled_again = condition(again.status, "Stalled")
    assert stalled_again is not None
    assert stalled_again.status == "True"
    assert "for 5 analyses" in stalled_again.message
    assert stalled_again.last_transition_time == stalled.last_transition_time


def test_a_streak_of_errors_is_stalled_as_metrics_unavailable() -> None:
    run = Run()
    run.start()
    for _ in range(rollout.HELD_STREAK_LIMIT):
        decision = run.analyse(UNREACHABLE, after=15)
    stalled = condition(decision.status, "Stalled")
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("True", "MetricsUnavailable")
    assert "requests: prometheus unreachable" in stalled.message
    assert reasons(decision) == ["MetricsUnavailable"]
    assert decision.events[0].type == "Warning"


def test_a_success_clears_stalled() -> None:
    run = Run()
    run.start()
    for _ in range(rollout.HELD_STREAK_LIMIT):
        run.analyse(UNREACHABLE, after=15)
    decision = run.analyse(after=15)
    stalled = condition(decision.status, "Stalled")
    assert stalled is not None
    assert (stalled.status, stalled.reason) == ("False", "AsExpected")
    assert decision.status.held_analyses == 0


def test_a_failure_clears_stalled_and_the_held_count() -> None:
    run = Run(make_spec(failure_limit=3))
    run.start()
    for _ in range(rollout.HELD_STREAK_LIMIT):
        run.analyse(UNREACHABLE, after=15)
    decision = run.analyse(BAD_ERRORS, after=15)
    stalled = condition(decision.status, "Stalled")
    assert stalled is not None
    assert stalled.status == "False"
    assert decision.status.held_analyses == 0


def test_an_invalid_spec_stall_is_not_cleared_by_the_rollout() -> None:
    run = Run()
    run.start()
    invalid = api.Condition(
        type="Stalled",
        status="True",
        reason="InvalidSpec",
        message="spec.x: bad",
        last_transition_time=T0,
    )
    run.status = run.status.model_copy(update={"conditions": [*run.status.conditions, invalid]})
    decision = run.analyse(after=5)
    assert condition(decision.status, "Stalled") == invalid


# ---------------------------------------------------------------------------------------------
# Promotion


def test_the_last_step_passing_promotes() -> None:
    run = Run()
    run.to_step(2)
    decision = run.analyse(after=30)
    status = decision.status
    assert decision.action == "promote"
    assert status.phase == "Promoted"
    assert status.stable_model == CANARY_ID
    assert status.current_step is None
    assert status.canary_weight == 50  # until the stable Deployment serves the new model
    entry = status.history[-1]
    assert (entry.event, entry.version, entry.uri, entry.time) == (
        "promoted",
        "1.1.0",
        CANARY_MODEL["uri"],
        run.now,
    )
    assert entry.replaced == STABLE_ID
    assert entry.reason.startswith("every step passed; last analysis: requests 120")
    [event] = decision.events
    assert (event.type, event.reason) == ("Normal", "Promoted")
    assert event.message.startswith("canary 1.1.0 promoted to stable: every step passed")
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", "Promoting")
    assert progressing.message.endswith("the canary keeps 50% until the stable has rolled out")
    assert rollout.previous_stable(status) == STABLE_ID
    plan = rollout.plan_tracks(spec=run.spec, status=status, now=run.now + timedelta(hours=1))
    assert plan == TrackPlan(CANARY_ID.as_ref(), 1, 50, canary_serving=True)


def test_the_last_step_before_its_interval_does_not_promote() -> None:
    run = Run()
    run.to_step(2)
    assert run.analyse(after=29).action == "pass"
    assert run.status.phase == "Progressing"


def test_promotion_completes_once_the_stable_serves_the_new_model() -> None:
    run = Run()
    run.promote()
    for stable in (DeploymentState(), deployment("1.0.0"), deployment("1.1.0", ready=False)):
        decision = run.decide(after=5, tracks={"stable": stable})
        assert (decision.action, decision.status.canary_weight) == ("none", 50)
    decision = run.analyse(after=5, tracks={"stable": deployment("1.1.0")})
    status = decision.status
    assert decision.action == "promoted"
    assert (status.phase, status.canary_weight, status.step_started_at) == (
        "Promoted",
        0,
        run.now,
    )
    message = "stable model 1.1.0 rolled out: canary weight 50% -> 0%"
    assert decision.events == [Event("Normal", "PromotionComplete", message)]
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason, progressing.message) == (
        "False",
        "Promoted",
        message,
    )
    # Nothing moves after that.
    later = run.analyse(BAD_ERRORS, after=60, tracks={"stable": deployment("1.1.0")})
    assert (later.action, later.events, later.status) == ("none", [], status)


def test_promote_command_promotes_at_the_current_weight() -> None:
    run = Run()
    run.start()
    decision = run.decide(after=1, tracks=CANARY_UP, commands=PROMOTE)
    assert decision.status.handled_commands == {"canaryml.dev/promote": "1.1.0"}
    assert decision.action == "promote"
    assert (decision.status.phase, decision.status.canary_weight) == ("Promoted", 5)
    assert decision.status.stable_model == CANARY_ID
    assert decision.status.history[-1].reason == 'promoted by canaryml.dev/promote: "1.1.0"'
    assert reasons(decision) == ["Promoted"]


def test_promote_command_acts_even_while_paused_or_held() -> None:
    run = Run()
    run.start()
    run.spec = make_spec(paused=True)
    for _ in range(rollout.HELD_STREAK_LIMIT):
        run.analyse(UNREACHABLE, after=15)
    decision = run.analyse(UNREACHABLE, after=15, tracks=CANARY_UP, commands=PROMOTE)
    assert decision.action == "promote"
    assert decision.status.handled_commands == {"canaryml.dev/promote": "1.1.0"}


def test_promote_before_the_canary_is_available_waits_for_its_pods() -> None:
    run = Run()
    run.decide()
    # Its pods are not ready: the promote waits (and is not recorded: it is still to do).
    not_ready: dict[Track, DeploymentState] = {"canary": deployment("1.1.0", ready=False)}
    for _ in range(3):
        decision = run.decide(after=1, tracks=not_ready, commands=PROMOTE)
        assert decision.action == "none"
        assert (decision.status.phase, decision.status.stable_model) == ("Progressing", STABLE_ID)
        assert decision.status.handled_commands == {}
    # Available: the rollout's first step, then the promote.
    assert run.decide(after=1, tracks=CANARY_UP, commands=PROMOTE).action == "stepUp"
    decision = run.decide(after=1, tracks=CANARY_UP, commands=PROMOTE)
    assert (decision.action, decision.status.stable_model) == ("promote", CANARY_ID)
    decision = run.decide(after=10, tracks={"stable": deployment("1.1.0")}, commands=PROMOTE)
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "Promoted")
    assert reasons(decision) == ["PromotionComplete"]


def test_a_promote_never_acts_while_the_canary_pods_are_not_ready() -> None:
    run = Run()
    run.start()
    decision = run.decide(after=1, tracks={"canary": deployment("1.1.0", ready=False)},
                          commands=PROMOTE)  # fmt: skip
    assert decision.action != "promote"
    assert decision.status.stable_model == STABLE_ID


def test_promotion_of_a_same_version_canary_waits_for_the_new_stable() -> None:
    retrained = {"uri": "s3://models/iris-retrained/1.0.0", "version": "1.0.0"}
    run = Run(make_spec(canary_model=retrained, steps=[50]))
    run.decide(tracks={"canary": deployment("1.0.0")})
    run.decide(after=1, tracks={"canary": deployment("1.0.0")})
    run.decide(after=1, tracks={"canary": deployment("1.0.0")}, commands={"promote": "1.0.0"})
    assert run.status.phase == "Promoted"
    # The stable Deployment as it was before the promotion: old URI, same version.
    old = deployment("1.0.0", uri=STABLE_MODEL["uri"])
    decision = run.decide(after=1, tracks={"stable": old})
    assert decision.status.canary_weight == 50


def test_a_new_canary_with_the_same_version_waits_for_its_own_pods() -> None:
    run = Run()
    run.to_step(1)
    run.spec = make_spec(canary_model={**CANARY_MODEL, "uri": "s3://models/iris-retrained/1.1.0"})
    # The canary Deployment read before this reconcile still runs the previous artifact.
    previous = deployment(CANARY_MODEL["version"], uri=CANARY_MODEL["uri"])
    decision = run.decide(after=1, tracks={"canary": previous})
    assert decision.action == "start"
    assert decision.status.canary_weight == 0


# ---------------------------------------------------------------------------------------------
# Abort and rollback commands


def test_abort_rolls_back_at_once() -> None:
    run = Run()
    run.to_step(1)
    decision = run.decide(after=1, commands=ABORT)
    assert decision.status.handled_commands == {"canaryml.dev/abort": "1.1.0"}
    assert decision.action == "rollback"
    assert (decision.status.phase, decision.status.canary_weight) == ("RolledBack", 0)
    assert decision.status.stable_model == STABLE_ID
    message = 'aborted by canaryml.dev/abort: "1.1.0"'
    assert decision.events == [Event("Warning", "RolledBack", message)]
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None
    assert (rolled_back.status, rolled_back.reason) == ("True", "Aborted")
    assert decision.status.history[-1].event == "rolledBack"


def test_abort_while_waiting_for_the_canary() -> None:
    run = Run()
    run.decide()
    decision = run.decide(after=1, commands=ABORT)
    assert (decision.action, decision.status.phase) == ("rollback", "RolledBack")


def test_abort_wins_over_promote() -> None:
    run = Run()
    run.start()
    both = {**ABORT, **PROMOTE}
    decision = run.decide(after=1, tracks=CANARY_UP, commands=both)
    assert decision.action == "rollback"
    assert decision.status.handled_commands == {"canaryml.dev/abort": "1.1.0"}
    # promote stays for the next reconcile, which then ignores it, once.
    later = run.decide(after=1, tracks=CANARY_UP, commands=both)
    assert later.status.handled_commands["canaryml.dev/promote"] == "1.1.0"
    message = (
        'canaryml.dev/promote: "1.1.0": the rollout of canary 1.1.0 already ended (RolledBack)'
    )
    assert later.events == [Event("Normal", "CommandIgnored", message)]
    assert run.decide(after=1, tracks=CANARY_UP, commands=both).events == []


@pytest.mark.parametrize("command", ["promote", "abort"])
def test_commands_after_the_rollout_ended_are_ignored(command: Command) -> None:
    run = Run()
    run.promote()
    before = run.status
    decision = run.decide(after=1, commands={command: "1.1.0"})
    message = (
        f'canaryml.dev/{command}: "1.1.0": the rollout of canary 1.1.0 already ended (Promoted)'
    )
    assert decision.events == [Event("Normal", "CommandIgnored", message)]
    assert decision.status == before.model_copy(
        update={"handled_commands": {f"canaryml.dev/{command}": "1.1.0"}}
    )


@pytest.mark.parametrize("command", ["promote", "abort"])
def test_commands_without_a_canary_are_ignored(command: Command) -> None:
    run = Run(make_spec(canary=None))
    decision = run.decide(commands={command: "1.1.0"})
    assert decision.status.handled_commands == {f"canaryml.dev/{command}": "1.1.0"}
    message = f'canaryml.dev/{command}: "1.1.0": there is no canary in the spec'
    assert decision.events == [Event("Normal", "CommandIgnored", message)]
    assert run.decide(commands={command: "1.1.0"}).events == []  # said once


def test_rollback_returns_the_stable_to_the_previous_one() -> None:
    run = Run()
    run.promote()
    run.decide(after=5, tracks={"stable": deployment("1.1.0")})
    decision = run.decide(after=60, commands={"rollback": "1.1.0"})
    status = decision.status
    assert status.handled_commands == {"canaryml.dev/rollback": "1.1.0"}
    assert decision.action == "rollbackStable"
    assert status.stable_model == STABLE_ID
    message = "stable model rolled back from 1.1.0 to 1.0.0 by request"
    assert decision.events == [Event("Warning", "RolledBack", message)]
    rolled_back = condition(status, "RolledBack")
    assert rolled_back is not None
    assert (rolled_back.status, rolled_back.reason, rolled_back.message) == (
        "True",
        "ManualRollback",
        message,
    )
    entry = status.history[-1]
    assert (entry.event, entry.version, entry.reason) == ("rolledBack", "1.1.0", message)
    plan = rollout.plan_tracks(spec=run.spec, status=status, now=run.now)
    assert plan.stable_model == STABLE_ID.as_ref()


def test_rollback_without_history_is_refused() -> None:
    run = Run(make_spec(canary=None))
    run.decide()
    before = run.status
    decision = run.decide(after=1, commands={"rollback": "1.0.0"})
    assert decision.status.handled_commands == {"canaryml.dev/rollback": "1.0.0"}
    assert decision.events == [
        Event(
            "Warning",
            "RollbackRefused",
            "rollback: status.history has no model the current stable replaced",
        )
    ]
    assert decision.status.stable_model == before.stable_model
    assert decision.status.history == []


def test_rollback_is_refused_once_the_stable_moved_on() -> None:
    run = Run()
    run.promote()
    # The user set spec.model to something else: history has nothing it replaced.
    run.spec = make_spec(canary=None, model=NEXT_MODEL)
    decision = run.decide(after=1, commands={"rollback": "1.2.0"})
    assert reasons(decision) == ["StableUpdated", "RollbackRefused"]
    assert decision.status.stable_model == NEXT_ID


def test_rollback_during_a_rollout_aborts_the_canary_too() -> None:
    run = Run()
    run.promote()
    run.decide(after=5, tracks={"stable": deployment("1.1.0")})
    run.spec = make_spec(canary_model=NEXT_MODEL)
    run.decide(after=5, tracks={"canary": deployment("1.2.0")})
    assert (run.status.canary_weight, run.status.stable_model) == (5, CANARY_ID)
    decision = run.decide(after=5, commands={"rollback": "1.1.0"})
    status = decision.status
    assert status.handled_commands == {"canaryml.dev/rollback": "1.1.0"}
    assert (status.phase, status.canary_weight) == ("RolledBack", 0)
    assert status.stable_model == STABLE_ID
    assert [(e.event, e.version) for e in status.history[-2:]] == [
        ("rolledBack", "1.2.0"),
        ("rolledBack", "1.1.0"),
    ]
    assert reasons(decision) == ["RolledBack", "RolledBack"]


def test_previous_stable() -> None:
    assert rollout.previous_stable(api.ModelDeploymentStatus()) is None
    promoted = api.HistoryEntry(
        version="1.1.0", uri=CANARY_MODEL["uri"], event="promoted", time=T0, replaced=STABLE_ID
    )
    status = api.ModelDeploymentStatus(stable_model=CANARY_ID, history=[promoted])
    assert rollout.previous_stable(status) == STABLE_ID
    other = status.model_copy(update={"stable_model": NEXT_ID})
    assert rollout.previous_stable(other) is None


# ---------------------------------------------------------------------------------------------
# Pause


@pytest.mark.parametrize("how", ["spec", "annotation"])
def test_pause_holds_and_resume_goes_on(how: str) -> None:
    run = Run()
    run.start()
    if how == "spec":
        run.spec = make_spec(paused=True)
    commands: dict[Command, str] = {"pause": "true"} if how == "annotation" else {}
    decision = run.decide(after=1, commands=commands)
    assert decision.status.phase == "Paused"
    assert decision.status.handled_commands == {}  # pause is a level, kept while it says so
    message = "rollout paused at step 1, weight 5%"
    assert decision.events == [Event("Normal", "Paused", message)]
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason, progressing.message) == (
        "True",
        "Paused",
        message,
    )
    # Analyses are recorded, but neither failures nor passes move the rollout.
    for overrides in (BAD_ERRORS, BAD_ERRORS, BAD_ERRORS, None, None):
        decision = run.analyse(overrides, after=100, commands=commands)
        assert decision.action == "paused"
        assert decision.events == []
        assert (decision.status.canary_weight, decision.status.phase) == (5, "Paused")
        assert decision.status.failed_checks == 0
    assert decision.status.last_analysis is not None
    assert decision.status.last_analysis.time == run.now

    run.spec = make_spec(paused=False)
    decision = run.decide(after=1)
    assert decision.status.phase == "Progressing"
    assert decision.events == [Event("Normal", "Resumed", "rollout resumed at step 1, weight 5%")]
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert progressing.reason == "CanaryAnalysis"
    assert run.analyse(after=30).action == "stepUp"


def test_paused_status_is_kept_while_paused() -> None:
    run = Run()
    run.start()
    run.spec = make_spec(paused=True)
    run.decide(after=1)
    decision = run.decide(after=1)
    assert decision.events == []
    assert decision.status.phase == "Paused"


def test_a_status_paused_by_an_earlier_operator_resumes() -> None:
    run = Run()
    run.start()
    run.status = run.status.model_copy(update={"phase": "Paused"})
    decision = run.decide(after=1)
    assert decision.status.phase == "Progressing"
    assert reasons(decision) == ["Resumed"]


def test_a_paused_rollout_keeps_weight_0_when_the_canary_becomes_available() -> None:
    run = Run(make_spec(paused=True))
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    assert decision.status.canary_weight == 0


# ---------------------------------------------------------------------------------------------
# Spec changes


def test_a_new_canary_starts_a_new_rollout() -> None:
    run = Run(make_spec(failure_limit=3))
    run.to_step(2)
    run.analyse(BAD_ERRORS, after=5)
    for _ in range(2):
        run.analyse(FEW_REQUESTS, after=5)
    run.spec = make_spec(failure_limit=3, canary_model=NEXT_MODEL)
    decision = run.analyse(after=5)
    status = decision.status
    assert decision.action == "start"
    assert status.canary_model == NEXT_ID
    assert (status.canary_weight, status.current_step, status.phase) == (0, None, "Progressing")
    assert (status.failed_checks, status.held_analyses) == (0, 0)
    assert status.last_analysis is None
    assert status.step_started_at == run.now
    assert reasons(decision) == ["RolloutStarted"]
    assert rollout.plan_tracks(spec=run.spec, status=status, now=run.now) == TrackPlan(
        STABLE_ID.as_ref(), 1, 0, canary_serving=True
    )


@pytest.mark.parametrize("field", ["uri", "version", "sha256"])
def test_any_change_of_the_canary_model_restarts(field: str) -> None:
    run = Run()
    run.to_step(1)
    new = dict(CANARY_MODEL)
    new[field] = {"uri": "s3://models/iris/other", "version": "1.1.1", "sha256": "c" * 64}[field]
    run.spec = make_spec(canary_model=new)
    assert run.decide(after=1).action == "start"


def test_a_new_canary_after_a_rollback_starts_again() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    run.analyse(BAD_ERRORS, after=5)
    run.spec = make_spec(failure_limit=1, canary_model=NEXT_MODEL)
    decision = run.decide(after=5)
    assert (decision.action, decision.status.phase) == ("start", "Progressing")
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None
    assert (rolled_back.status, rolled_back.reason) == ("False", "NewRollout")
    assert decision.status.history[-1].event == "rolledBack"  # history is kept


def test_a_new_canary_after_a_promotion_compares_with_the_promoted_stable() -> None:
    run = Run()
    run.promote()
    run.decide(after=5, tracks={"stable": deployment("1.1.0")})
    run.spec = make_spec(canary_model=NEXT_MODEL)
    decision = run.decide(after=5)
    assert decision.action == "start"
    assert decision.status.stable_model == CANARY_ID


def test_a_changed_spec_model_updates_the_stable_directly() -> None:
    run = Run()
    run.to_step(1)
    run.spec = make_spec(model=NEXT_MODEL)
    decision = run.decide(after=1)
    assert decision.status.stable_model == NEXT_ID
    assert decision.status.spec_model == NEXT_ID
    assert decision.events == [
        Event(
            "Normal",
            "StableUpdated",
            "spec.model changed: the stable track now serves 1.2.0 (was 1.0.0)",
        )
    ]
    # The canary rollout goes on.
    assert (decision.status.canary_weight, decision.status.current_step) == (25, 1)
    assert rollout.plan_tracks(spec=run.spec, status=run.status, now=run.now) == TrackPlan(
        NEXT_ID.as_ref(), 1, 25, canary_serving=True
    )


def test_an_unchanged_spec_model_keeps_a_promoted_stable() -> None:
    run = Run()
    run.promote()
    decision = run.decide(after=1)
    assert decision.status.stable_model == CANARY_ID
    assert decision.status.spec_model == STABLE_ID


def test_spec_model_set_to_the_promoted_model_is_quiet() -> None:
    run = Run()
    run.promote()
    run.spec = make_spec(canary=None, model=dict(CANARY_MODEL))
    decision = run.decide(after=1)
    assert "StableUpdated" not in reasons(decision)
    assert decision.status.stable_model == CANARY_ID


def test_removing_the_canary_mid_rollout() -> None:
    run = Run()
    run.to_step(1)
    for _ in range(rollout.HELD_STREAK_LIMIT):
        run.analyse(UNREACHABLE, after=15)
    run.spec = make_spec(canary=None)
    decision = run.decide(after=1)
    status = decision.status
    assert (status.phase, status.canary_weight, status.current_step) == ("Stable", 0, None)
    assert (status.failed_checks, status.held_analyses, status.canary_version) == (0, 0, None)
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("False", "NoCanary")
    stalled = condition(status, "Stalled")
    assert stalled is not None
    assert stalled.status == "False"


@pytest.mark.parametrize("phase", ["Failed", "Pending"])
def test_no_canary_keeps_failed_and_pending(phase: api.Phase) -> None:
    run = Run(make_spec(canary=None), api.ModelDeploymentStatus(phase=phase))
    assert run.decide().status.phase == phase


# ---------------------------------------------------------------------------------------------
# State lives in status


def test_a_restarted_operator_resumes_at_the_same_step_and_failure_count() -> None:
    run = Run(make_spec(failure_limit=3))
    run.to_step(1)
    run.analyse(BAD_ERRORS, after=10)
    run.analyse(BAD_ERRORS, after=10)
    for _ in range(rollout.HELD_STREAK_LIMIT - 1):
        run.analyse(UNREACHABLE, after=10)
    restored = roundtrip(run.status)
    assert restored.model_dump(mode="json") == run.status.model_dump(mode="json")
    assert (restored.current_step, restored.failed_checks, restored.canary_weight) == (1, 2, 25)

    restarted = Run(run.spec, restored, run.now)
    held = restarted.analyse(UNREACHABLE, after=10)
    assert held.action == "hold"
    assert reasons(held) == ["MetricsUnavailable"]  # the streak continued across the restart
    final = restarted.analyse(BAD_ERRORS, after=10)
    assert final.action == "rollback"


def test_a_restart_keeps_the_step_timer() -> None:
    run = Run()
    run.start()
    run.analyse(after=20)
    restarted = Run(run.spec, roundtrip(run.status), run.now)
    assert restarted.analyse(after=9).action == "pass"
    assert restarted.analyse(after=1).action == "stepUp"


def test_a_restart_during_a_promotion_finishes_it() -> None:
    run = Run()
    run.promote()
    restarted = Run(run.spec, roundtrip(run.status), run.now)
    decision = restarted.decide(after=5, tracks={"stable": deployment("1.1.0")})
    assert decision.action == "promoted"


def status_in(phase: api.Phase, status: api.ModelDeploymentStatus) -> api.ModelDeploymentStatus:
    return status.model_copy(update={"phase": phase})


@pytest.mark.parametrize("phase", ["Failed", "Pending"])
def test_the_phase_is_restored_mid_rollout(phase: api.Phase) -> None:
    run = Run()
    run.to_step(1)
    run.analyse(BAD_ERRORS, after=5)
    run.status = status_in(phase, run.status)
    decision = run.decide(after=1)
    assert decision.status.phase == "Progressing"
    assert (decision.status.current_step, decision.status.failed_checks) == (1, 1)
    assert decision.action == "none"
    assert decision.events == []


@pytest.mark.parametrize("phase", ["Failed", "Pending"])
def test_the_phase_is_restored_after_a_promotion(phase: api.Phase) -> None:
    run = Run()
    run.promote()
    run.status = status_in(phase, run.status)
    decision = run.decide(after=1, tracks={"stable": deployment("1.1.0")})
    assert decision.status.phase == "Promoted"
    assert decision.action == "promoted"


@pytest.mark.parametrize("phase", ["Failed", "Pending"])
def test_the_phase_is_restored_after_a_rollback(phase: api.Phase) -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    run.analyse(BAD_ERRORS, after=5)
    run.status = status_in(phase, run.status)
    decision = run.analyse(after=1, tracks=CANARY_UP)
    assert (decision.status.phase, decision.status.canary_weight) == ("RolledBack", 0)
    assert decision.action == "none"


def test_the_phase_is_restored_while_waiting_for_the_canary() -> None:
    run = Run()
    run.decide()
    run.status = status_in("Pending", run.status)
    decision = run.decide(after=1)
    assert (decision.status.phase, decision.action) == ("Progressing", "none")


def test_the_same_inputs_give_the_same_decision() -> None:
    run = Run()
    run.to_step(1)
    inputs: dict[str, Any] = {
        "spec": run.spec,
        "status": run.status,
        "measurements": measured(run.now + timedelta(seconds=30), BAD_ERRORS),
        "now": run.now + timedelta(seconds=30),
        "tracks": CANARY_UP,
        "commands": {},
    }
    assert rollout.decide(**inputs) == rollout.decide(**inputs)


def test_decide_does_not_change_its_input() -> None:
    run = Run()
    run.to_step(1)
    before = run.status.model_dump()
    rollout.decide(
        spec=run.spec,
        status=run.status,
        measurements=measured(run.now, BAD_ERRORS),
        now=run.now + timedelta(seconds=60),
        commands={"abort": "1.1.0"},
    )
    assert run.status.model_dump() == before


def test_history_is_bounded() -> None:
    run = Run(make_spec(failure_limit=1))
    for index in range(rollout.HISTORY_LIMIT + 3):
        run.spec = make_spec(
            failure_limit=1, canary_model={"uri": f"s3://models/iris/c{index}", "version": "9.9"}
        )
        run.decide(after=1, tracks={"canary": deployment("9.9")})
        run.analyse(BAD_ERRORS, after=1)
        assert run.status.phase == "RolledBack"
    assert len(run.status.history) == rollout.HISTORY_LIMIT
    assert run.status.history[-1].uri == f"s3://models/iris/c{rollout.HISTORY_LIMIT + 2}"
    roundtrip(run.status)  # still valid for the CRD's maxItems


# ---------------------------------------------------------------------------------------------
# The track plan


def test_plan_without_canary() -> None:
    spec = make_spec(canary=None)
    assert rollout.plan_tracks(spec=spec, status=api.ModelDeploymentStatus(), now=T0) == TrackPlan(
        STABLE_ID.as_ref(), None, 0
    )


def test_plan_before_any_decision_uses_the_spec() -> None:
    spec = make_spec()
    assert rollout.plan_tracks(spec=spec, status=api.ModelDeploymentStatus(), now=T0) == TrackPlan(
        STABLE_ID.as_ref(), 1, 0
    )


def test_plan_during_a_rollout_follows_the_weight() -> None:
    run = Run(make_spec(canary={"model": CANARY_MODEL, "steps": [10, 20], "replicas": 3}))
    run.start()
    plan = rollout.plan_tracks(spec=run.spec, status=run.status, now=run.now)
    assert plan == TrackPlan(STABLE_ID.as_ref(), 3, 10, canary_serving=True)


def test_plan_after_a_rollback_drains_then_scales_to_zero() -> None:
    run = Run(make_spec(failure_limit=1))
    run.to_step(1)
    run.analyse(BAD_ERRORS, after=5)
    at = run.now
    drain = timedelta(seconds=rollout.DRAIN_SECONDS)

    def plan(offset: timedelta) -> TrackPlan:
        return rollout.plan_tracks(spec=run.spec, status=run.status, now=at + offset)

    assert plan(timedelta(0)) == TrackPlan(STABLE_ID.as_ref(), 1, 0)
    assert plan(drain - timedelta(milliseconds=1)) == TrackPlan(STABLE_ID.as_ref(), 1, 0)
    assert plan(drain) == TrackPlan(STABLE_ID.as_ref(), 0, 0)  # kept for inspection
    assert plan(timedelta(days=1)) == TrackPlan(STABLE_ID.as_ref(), 0, 0)


def test_plan_after_a_promotion_keeps_the_canary_until_drained() -> None:
    run = Run()
    run.promote()
    promoted = CANARY_ID.as_ref()
    later = run.now + timedelta(days=1)
    # Before the stable rolled out: the canary keeps its weight, however long that takes.
    assert rollout.plan_tracks(spec=run.spec, status=run.status, now=later) == TrackPlan(
        promoted, 1, 50, canary_serving=True
    )
    run.decide(after=5, tracks={"stable": deployment("1.1.0")})
    done = run.now
    drain = timedelta(seconds=rollout.DRAIN_SECONDS)

    def plan(offset: timedelta) -> TrackPlan:
        return rollout.plan_tracks(spec=run.spec, status=run.status, now=done + offset)

    assert plan(timedelta(0)) == TrackPlan(promoted, 1, 0)
    assert plan(drain - timedelta(milliseconds=1)) == TrackPlan(promoted, 1, 0)
    assert plan(drain) == TrackPlan(promoted, None, 0)  # removed: the stable serves it


def test_plan_for_a_status_about_an_older_canary_sends_it_nothing() -> None:
    run = Run()
    run.to_step(1)
    spec = make_spec(canary_model=NEXT_MODEL)
    assert rollout.plan_tracks(spec=spec, status=run.status, now=run.now) == TrackPlan(
        STABLE_ID.as_ref(), 1, 0
    )


def test_drain_ends_in_only_after_the_weight_went_to_0() -> None:
    run = Run(make_spec(failure_limit=1))
    assert rollout.drain_ends_in(spec=run.spec, status=run.status, now=run.now) is None
    run.start()
    assert rollout.drain_ends_in(spec=run.spec, status=run.status, now=run.now) is None
    run.analyse(BAD_ERRORS, after=5)
    at = run.now

    def ends_in(seconds: float) -> float | None:
        now = at + timedelta(seconds=seconds)
        return rollout.drain_ends_in(spec=run.spec, status=run.status, now=now)

    assert ends_in(0) == rollout.DRAIN_SECONDS
    assert ends_in(2) == rollout.DRAIN_SECONDS - 2
    assert ends_in(rollout.DRAIN_SECONDS) == 0.0
    assert ends_in(3600) == 0.0
    # Not about the canary the spec names now.
    other = make_spec(failure_limit=1, canary_model=NEXT_MODEL)
    assert rollout.drain_ends_in(spec=other, status=run.status, now=at) is None
    assert rollout.drain_ends_in(spec=make_spec(canary=None), status=run.status, now=at) is None


def test_drain_after_a_promotion_starts_when_it_completes() -> None:
    run = Run()
    run.promote()
    assert rollout.drain_ends_in(spec=run.spec, status=run.status, now=run.now) is None
    run.decide(after=5, tracks={"stable": deployment("1.1.0")})
    later = run.now + timedelta(seconds=1)
    ends_in = rollout.drain_ends_in(spec=run.spec, status=run.status, now=later)
    assert ends_in == rollout.DRAIN_SECONDS - 1


def test_next_analysis_in_stops_after_the_rollout() -> None:
    run = Run()
    run.promote()
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) is None


def test_next_analysis_is_due_at_once_after_a_step_up() -> None:
    run = Run()
    run.start()
    run.analyse(after=30)
    assert run.status.canary_weight == 25
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 0.0
