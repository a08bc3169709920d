"""The held-out figures in the status and the offline gate (analysis.offlineGate): the spec, the
queries, the pure gate (`offline.judge_gate`), what the rollout core does with it before any
traffic, the demo's scrapes, `canaryml status` and the operator's counters."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, get_args

import pytest
from canaryml_api import resource as api
from canaryml_api import telemetry as t
from canaryml_api.tracks import Track
from canaryml_cli.demo.scrape import ScrapedSample, ScrapeHistory, measure_scraped
from canaryml_operator import checks, crd, metrics, offline, rollout
from canaryml_operator import measurements as m
from canaryml_operator.cli import render_status
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.state import DeploymentState
from canaryml_server.evaluation import KNOWN_METRICS
from rich.console import Console

from tests.unit.test_rollout import (
    CANARY_UP,
    GOOD,
    T0,
    Run,
    condition,
    raw_spec,
    reasons,
)

DIGEST = "d" * 64
OTHER_DIGEST = "e" * 64
CANARY_VERSION = "1.1.0"
STABLE_VERSION = "1.0.0"
OFFLINE_NAMES = {
    m.offline_name(track, kind) for track in ("canary", "stable") for kind in ("figures", "rows")
}


def gate_spec(
    metric: str = "accuracy", max_drop: float = 0.01, **fields: Any
) -> api.ModelDeploymentSpec:
    raw = raw_spec(**fields)
    raw["analysis"]["offlineGate"] = {"metric": metric, "maxDrop": max_drop}
    return api.parse_spec(raw)


def track(
    name: str, *, rows: float = 2000, digest: str = DIGEST, **figures: float
) -> dict[str, Sample]:
    """One track's samples as the provider reads them (every series kept)."""
    return {
        m.offline_name(name, "rows"): Sample.every({digest: rows}),  # type: ignore[arg-type]
        m.offline_name(name, "figures"): Sample.every(figures),  # type: ignore[arg-type]
    }


def not_evaluated(name: str) -> dict[str, Sample]:
    """A manifest without an evaluation: the rows series at 0, no digest, no figure."""
    return track(name, rows=0, digest="")


def gate(spec: api.ModelDeploymentSpec, *parts: Mapping[str, Sample]) -> offline.GateResult:
    samples: dict[str, Sample] = {}
    for part in parts:
        samples |= part
    status = api.ModelDeploymentStatus(
        stable_model=api.ModelIdentity(uri="s3://models/iris/1.0.0", version=STABLE_VERSION)
    )
    return offline.judge_gate(
        spec=spec, status=status, measurements=Measurements(time=T0, samples=samples)
    )


def gate_run(spec: api.ModelDeploymentSpec | None = None) -> Run:
    """A rollout whose canary just became available (no analysis yet): weight 0."""
    run = Run(spec or gate_spec())
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    assert decision.action == "none" and run.status.current_step is None
    return run


def gate_analysis(
    run: Run,
    *parts: Mapping[str, Sample],
    after: float = 15,
    tracks: Mapping[Track, DeploymentState] = CANARY_UP,
) -> Any:
    samples: dict[str, Sample] = {}
    for part in parts:
        samples |= part
    run.now += timedelta(seconds=after)
    return run.decide(Measurements(time=run.now, samples=samples), tracks=tracks)


# --- the spec ----------------------------------------------------------------------------------


def test_the_gate_is_opt_in_with_accuracy_by_default_and_a_margin_required() -> None:
    assert api.parse_spec(raw_spec()).analysis.offline_gate is None
    assert gate_spec().analysis.offline_gate == api.OfflineGateSpec(
        metric="accuracy", max_drop=0.01
    )
    raw = raw_spec()
    for bad in ({}, {"maxDrop": -0.1}, {"maxDrop": math.inf}, {"metric": "auc", "maxDrop": 0}):
        raw["analysis"]["offlineGate"] = bad
        with pytest.raises(ValueError, match="offlineGate"):
            api.parse_spec(raw)


def test_the_gate_metrics_are_the_figures_the_packager_records() -> None:
    names = set(get_args(api.OfflineMetric))
    assert names == set(KNOWN_METRICS)
    assert names == set(t.OFFLINE_HIGHER_IS_BETTER) | set(t.OFFLINE_LOWER_IS_BETTER)
    assert not set(t.OFFLINE_HIGHER_IS_BETTER) & set(t.OFFLINE_LOWER_IS_BETTER)


def test_the_crd_leaves_the_gate_out_of_the_defaults() -> None:
    schema = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    analysis = schema["properties"]["spec"]["properties"]["analysis"]
    gate_schema = analysis["properties"]["offlineGate"]
    # A `{}` default would switch the gate on in every object (and fail: maxDrop is required).
    assert "default" not in gate_schema and gate_schema["required"] == ["maxDrop"]
    assert gate_schema["properties"]["metric"]["enum"] == list(get_args(api.OfflineMetric))
    record = schema["properties"]["status"]["properties"]["lastAnalysis"]
    offline_schema = record["properties"]["offline"]
    assert offline_schema["x-kubernetes-list-map-keys"] == ["track"]
    assert offline_schema["items"]["properties"]["metrics"]["additionalProperties"] == {
        "type": "number"
    }


# --- the queries -------------------------------------------------------------------------------


def status_at(step: int | None) -> api.ModelDeploymentStatus:
    return api.ModelDeploymentStatus(
        current_step=step,
        step_started_at=T0,
        stable_model=api.ModelIdentity(uri="s3://models/iris/0.9.0", version="0.9.0"),
    )


def test_before_the_first_step_the_gate_reads_the_figures_alone() -> None:
    queries = checks.build_queries(
        spec=gate_spec(), name="iris", namespace="ml", source="router",
        status=status_at(None), at=T0 + timedelta(seconds=30),
    )  # fmt: skip
    canary = 'model_deployment="iris",namespace="ml",track="canary",version="1.1.0"'
    stable = 'model_deployment="iris",namespace="ml",track="stable",version="0.9.0"'
    assert queries == {
        "canaryOfflineFigures": f"max by (metric) (canaryml_offline_evaluation{{{canary}}})",
        "canaryOfflineRows": "max by (heldout_sha256) "
        f"(canaryml_offline_evaluation_rows{{{canary}}})",
        "stableOfflineFigures": f"max by (metric) (canaryml_offline_evaluation{{{stable}}})",
        "stableOfflineRows": "max by (heldout_sha256) "
        f"(canaryml_offline_evaluation_rows{{{stable}}})",
    }
    # Only servers export the figures: no `source`; and the provider keeps every series.
    assert all("source=" not in query for query in queries.values())
    assert OFFLINE_NAMES <= checks.EVERY_SERIES
    assert {checks.SERIES_LABEL[name] for name in OFFLINE_NAMES} == {
        t.METRIC_LABEL,
        t.HELDOUT_SHA256_LABEL,
    }


def test_at_a_step_every_check_is_read_and_the_figures_beside_them() -> None:
    at_step = checks.build_queries(
        spec=gate_spec(), name="iris", namespace="ml", source="router",
        status=status_at(0), at=T0 + timedelta(seconds=30),
    )  # fmt: skip
    assert {m.REQUESTS, m.ERROR_RATE, m.LATENCY_P99} <= set(at_step)
    assert set(at_step) >= OFFLINE_NAMES
    # Without the gate an analysis is never taken before the first step; were it, it would
    # read every check as before.
    plain = checks.build_queries(
        spec=api.parse_spec(raw_spec()), name="iris", namespace="ml", source="router",
        status=status_at(None),
    )  # fmt: skip
    assert m.REQUESTS in plain and set(plain) >= OFFLINE_NAMES
    assert not checks.offline_gate_pending(gate_spec(), None)
    assert checks.offline_gate_pending(gate_spec(), status_at(None))
    assert not checks.offline_gate_pending(gate_spec(), status_at(1))


# --- the pure gate -----------------------------------------------------------------------------


def test_a_canary_within_the_margin_passes() -> None:
    result = gate(gate_spec(), track("canary", accuracy=0.952), track("stable", accuracy=0.96))
    assert result.outcome == "pass" and result.check.verdict == "Successful"
    assert result.check.name == m.OFFLINE_VS_STABLE
    assert result.check.value == pytest.approx(-0.008)
    assert (result.check.min, result.check.max) == (-0.01, None)
    assert "0.952 >= stable 1.0.0's 0.96 - maxDrop 0.01 (= 0.95)" in result.check.message
    assert [f.track for f in result.figures] == ["canary", "stable"]


def test_exactly_at_the_margin_is_no_failure_whatever_the_rounding() -> None:
    # 0.95 - 0.96 is -0.010000000000000009 in floats.
    result = gate(gate_spec(), track("canary", accuracy=0.95), track("stable", accuracy=0.96))
    assert result.outcome == "pass"


def test_a_canary_worse_than_the_margin_fails_naming_both_figures_and_the_margin() -> None:
    result = gate(gate_spec(), track("canary", accuracy=0.93), track("stable", accuracy=0.955))
    assert result.outcome == "fail" and result.check.verdict == "Failed"
    assert result.check.value == pytest.approx(-0.025)
    assert result.check.message == (
        "offlineVsStable: canary 1.1.0's held-out accuracy 0.93 < stable 1.0.0's 0.955 - "
        "maxDrop 0.01 (= 0.945), on the same 2,000 held-out rows"
    )


def test_an_error_figure_may_grow_by_the_margin_at_most() -> None:
    spec = gate_spec(metric="rmse", max_drop=0.5)
    worse = gate(spec, track("canary", rmse=12.0, mae=9.0), track("stable", rmse=11.0, mae=8.0))
    assert worse.outcome == "fail" and worse.check.value == pytest.approx(1.0)
    assert (worse.check.min, worse.check.max) == (None, 0.5)
    assert "rmse 12 > stable 1.0.0's 11 + maxDrop 0.5 (= 11.5)" in worse.check.message
    better = gate(spec, track("canary", rmse=11.4), track("stable", rmse=11.0))
    assert better.outcome == "pass" and "11.4 <= stable" in better.check.message
    # r2 is a figure the larger the better, and may be negative.
    r2 = gate(
        gate_spec(metric="r2", max_drop=0.05), track("canary", r2=-0.2), track("stable", r2=0.1)
    )
    assert r2.outcome == "fail"


@pytest.mark.parametrize(
    ("parts", "verdict", "says"),
    [
        ((track("stable", accuracy=0.9),), "Inconclusive", "of canary 1.1.0 are not scraped yet"),
        ((track("canary", accuracy=0.9),), "Inconclusive", "of stable 1.0.0 are not scraped yet"),
        (
            (
                {m.offline_name("canary", "rows"): Sample.failed("prometheus unreachable")},
                {m.offline_name("canary", "figures"): Sample()},
                track("stable", accuracy=0.9),
            ),
            "Error",
            "prometheus unreachable",
        ),
        (
            (
                {m.offline_name("canary", "rows"): Sample.every({DIGEST: 2000, OTHER_DIGEST: 50})},
                {m.offline_name("canary", "figures"): Sample.every({"accuracy": 0.9})},
                track("stable", accuracy=0.9),
            ),
            "Inconclusive",
            "export different held-out evaluations",
        ),
    ],
)
def test_figures_not_known_yet_wait(
    parts: tuple[Mapping[str, Sample], ...], verdict: str, says: str
) -> None:
    result = gate(gate_spec(), *parts)
    assert result.outcome == "wait" and result.check.verdict == verdict
    assert says in result.check.message and result.check.value is None


@pytest.mark.parametrize(
    ("parts", "says"),
    [
        (
            (not_evaluated("canary"), track("stable", accuracy=0.9)),
            "canary 1.1.0's artifact records no held-out evaluation: package it with "
            "`canaryml package --evaluate HELDOUT.csv` (the held-out data stable 1.0.0 was "
            "evaluated on) and roll that artifact out as the canary, or remove "
            "analysis.offlineGate",
        ),
        (
            (track("canary", accuracy=0.9), not_evaluated("stable")),
            "stable 1.0.0's artifact records no held-out evaluation, so the canary's accuracy "
            "has nothing to be compared with: package the stable model with `canaryml package "
            "--evaluate` on the canary's held-out data (sha256 dddddddddddd...) and set "
            "spec.model to that artifact, or remove analysis.offlineGate",
        ),
        (
            (track("canary", rmse=1.0), track("stable", accuracy=0.9)),
            "canary 1.1.0's held-out evaluation records no accuracy (it records rmse): set "
            "analysis.offlineGate.metric",
        ),
        (
            (track("canary", accuracy=0.9), track("stable", f1=0.9)),
            "stable 1.0.0's held-out evaluation records no accuracy",
        ),
        (
            (
                track("canary", accuracy=0.99),
                track("stable", rows=500, digest=OTHER_DIGEST, accuracy=0.9),
            ),
            "canary 1.1.0 was evaluated on other held-out data than stable 1.0.0 (2,000 rows of "
            "sha256 dddddddddddd..., against 500 rows of sha256 eeeeeeeeeeee...): figures on "
            "different rows are not comparable; package both with the same `--evaluate` file, "
            "or remove analysis.offlineGate",
        ),
    ],
)
def test_figures_that_cannot_be_compared_block_and_say_what_to_do(
    parts: tuple[Mapping[str, Sample], ...], says: str
) -> None:
    result = gate(gate_spec(), *parts)
    assert result.outcome == "blocked" and result.check.verdict == "Inconclusive"
    assert says in result.check.message


# --- the rollout before any traffic ------------------------------------------------------------


def test_an_available_canary_waits_at_zero_for_the_gate_then_gets_its_first_step() -> None:
    run = gate_run()
    assert run.status.canary_weight == 0
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == rollout.WAITING_FOR_OFFLINE_GATE
    assert "held-out accuracy" in progressing.message
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 0.0

    decision = gate_analysis(run, track("canary", accuracy=0.96), track("stable", accuracy=0.955))
    assert decision.action == "stepUp"
    assert (run.status.current_step, run.status.canary_weight) == (0, 5)
    step_up = next(e for e in decision.events if e.reason == "StepUp")
    assert "weight 0% -> 5%" in step_up.message and "offline gate passed" in step_up.message
    assert "0.96 >= stable 1.0.0's 0.955 - maxDrop 0.01" in step_up.message
    # The gate's analysis is the record until the first step's own, due at once.
    record = run.status.last_analysis
    assert record is not None and (record.weight, record.step) == (0, None)
    assert record.verdict == "Successful"
    assert [check.name for check in record.checks] == [m.OFFLINE_VS_STABLE]
    assert {f.track: f.metrics for f in record.offline} == {
        "canary": {"accuracy": 0.96},
        "stable": {"accuracy": 0.955},
    }
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 0.0
    # The next analysis reads every check: the gate is not judged again.
    assert run.analyse(after=1, tracks=CANARY_UP).action == "pass"


def test_a_canary_worse_offline_is_rolled_back_before_any_traffic() -> None:
    run = gate_run()
    decision = gate_analysis(run, track("canary", accuracy=0.93), track("stable", accuracy=0.955))
    assert decision.action == "rollback"
    status = run.status
    assert (status.phase, status.canary_weight, status.current_step) == ("RolledBack", 0, None)
    rolled_back = condition(status, "RolledBack")
    assert rolled_back is not None and rolled_back.reason == rollout.OFFLINE_GATE_FAILED
    message = (
        "canary 1.1.0 rolled back before any traffic: offlineVsStable: canary 1.1.0's held-out "
        "accuracy 0.93 < stable 1.0.0's 0.955 - maxDrop 0.01 (= 0.945), on the same 2,000 "
        "held-out rows"
    )
    assert rolled_back.message == message
    assert ("Warning", "RolledBack", message) in [
        (e.type, e.reason, e.message) for e in decision.events
    ]
    assert status.history[-1].event == "rolledBack" and status.history[-1].reason == message
    assert status.last_analysis is not None and status.last_analysis.verdict == "Failed"
    assert status.failed_checks == 1
    # Scaled to 0 after the drain, as every rolled-back canary; the spec's canary stays out.
    plan = rollout.plan_tracks(spec=run.spec, status=status, now=run.now + timedelta(minutes=1))
    assert (plan.canary_replicas, plan.canary_weight) == (0, 0)
    assert run.decide(after=60, tracks=CANARY_UP).status.canary_weight == 0


def test_figures_not_scraped_hold_at_zero_and_stall_after_the_progress_deadline() -> None:
    run = gate_run(gate_spec(progressDeadline="1m"))
    decision = gate_analysis(run, track("stable", accuracy=0.955))
    assert decision.action == "hold" and run.status.canary_weight == 0
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == "AnalysisInconclusive"
    assert "not scraped yet" in progressing.message
    assert run.status.held_analyses == 1
    # Due again one analysis.interval (the default 15s) after the gate's analysis.
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 15.0
    for _ in range(3):
        decision = gate_analysis(run, track("stable", accuracy=0.955))
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "True"
    assert stalled.reason == "AnalysisInconclusive"
    assert run.status.phase == "Progressing" and run.status.canary_weight == 0
    # Once scraped, the gate judges and the stall is over.
    gate_analysis(run, track("canary", accuracy=0.96), track("stable", accuracy=0.955))
    assert run.status.current_step == 0
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "False"


def test_a_gate_that_cannot_judge_stalls_at_once_and_says_so_once() -> None:
    run = gate_run()
    first = gate_analysis(run, not_evaluated("canary"), track("stable", accuracy=0.955))
    assert first.action == "hold" and run.status.canary_weight == 0
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "True"
    assert stalled.reason == rollout.OFFLINE_GATE_BLOCKED
    assert "records no held-out evaluation" in stalled.message
    assert reasons(first) == [rollout.OFFLINE_GATE_BLOCKED]
    again = gate_analysis(run, not_evaluated("canary"), track("stable", accuracy=0.955))
    assert reasons(again) == []  # said once
    assert run.status.phase == "Progressing"  # not rolled back: no evidence against it

    # Removing the gate lets this very canary in at once, and the stall is over.
    run.spec = api.parse_spec(raw_spec())
    decision = run.decide(after=1, tracks=CANARY_UP)
    assert decision.action == "stepUp" and run.status.canary_weight == 5
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "False"


def test_analyses_are_due_before_the_first_step_only_to_judge_the_gate() -> None:
    run = Run(gate_spec())
    run.decide()  # the rollout started; the canary's pods are not available yet
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) is None
    # Not available: the gate waits for the pods (the progress deadline runs, as without it).
    decision = gate_analysis(
        run, track("canary", accuracy=0.1), track("stable", accuracy=0.9), tracks={}
    )
    assert decision.action == "none" and run.status.last_analysis is None
    run.decide(after=1, tracks=CANARY_UP)
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 0.0
    paused = Run(gate_spec(paused=True), status=run.status, now=run.now)
    paused.decide(tracks=CANARY_UP)
    assert rollout.next_analysis_in(spec=paused.spec, status=paused.status, now=paused.now) is None
    without = Run(api.parse_spec(raw_spec()))
    without.decide()
    assert rollout.next_analysis_in(spec=without.spec, status=without.status, now=T0) is None


def test_every_analysis_records_both_tracks_figures_and_judges_none_of_them() -> None:
    run = Run(api.parse_spec(raw_spec()))  # no gate: the figures are shown only
    run.start()
    decision = run.decide(
        Measurements(
            time=run.now + timedelta(seconds=1),
            samples={
                **{name: Sample(value) for name, value in GOOD.items()},
                **track("canary", accuracy=0.5),
                **not_evaluated("stable"),
            },
        ),
        after=1,
        tracks=CANARY_UP,
    )
    assert decision.action == "pass"
    record = run.status.last_analysis
    assert record is not None
    assert [(f.track, f.version, f.rows, f.heldout_sha256, f.metrics) for f in record.offline] == [
        ("canary", CANARY_VERSION, 2000, DIGEST, {"accuracy": 0.5}),
        ("stable", STABLE_VERSION, 0, None, {}),
    ]
    assert m.OFFLINE_VS_STABLE not in [check.name for check in record.checks]
    # Not scraped: nothing recorded.
    run.analyse(after=15, tracks=CANARY_UP)
    assert run.status.last_analysis is not None and run.status.last_analysis.offline == []


def test_the_operator_counts_the_gates_analysis_and_the_rollback() -> None:
    run = gate_run()
    before = run.status
    gate_analysis(run, track("canary", accuracy=0.5), track("stable", accuracy=0.9))
    labels = {t.NAMESPACE_LABEL: "offline-gate-test", t.MODEL_DEPLOYMENT_LABEL: "iris"}
    metrics.forget(namespace="offline-gate-test", name="iris")
    metrics.observe_status(
        namespace="offline-gate-test", name="iris", previous=before, status=run.status
    )

    def counted(name: str, **extra: str) -> float | None:
        return metrics.REGISTRY.get_sample_value(f"{name}_total", {**labels, **extra})

    assert counted(t.OPERATOR_ANALYSES, **{t.VERDICT_LABEL: "Failed"}) == 1
    assert counted(t.OPERATOR_ROLLOUTS, **{t.RESULT_LABEL: "rolledBack"}) == 1
    metrics.forget(namespace="offline-gate-test", name="iris")


# --- the demo's scrapes, and `canaryml status` --------------------------------------------------


def test_the_demo_reads_the_figures_from_its_scrapes_as_the_queries_do() -> None:
    scope = {"model_deployment": "iris"}
    canary = {**scope, "track": "canary", "version": CANARY_VERSION}
    stable = {**scope, "track": "stable", "version": STABLE_VERSION}
    history = ScrapeHistory()
    for seconds, target, labels, figures, rows, digest in (
        (50, "a", canary, {"accuracy": 0.96, "f1": 0.97}, 2000, DIGEST),
        (55, "b", canary, {"accuracy": 0.96, "f1": 0.97}, 2000, DIGEST),
        (55, "c", stable, {}, 0, ""),
        (55, "d", {**canary, "version": "0.1"}, {"accuracy": 0.1}, 10, OTHER_DIGEST),
    ):
        samples = [ScrapedSample(t.OFFLINE_EVALUATION, {**labels, t.METRIC_LABEL: name}, value)
                   for name, value in figures.items()]  # fmt: skip
        samples.append(
            ScrapedSample(
                t.OFFLINE_EVALUATION_ROWS, {**labels, t.HELDOUT_SHA256_LABEL: digest}, rows
            )
        )
        history.add(target=target, time=T0 + timedelta(seconds=seconds), samples=samples)
    spec = gate_spec()
    status = api.ModelDeploymentStatus(step_started_at=T0)  # no step yet: the gate's analysis
    measured = measure_scraped(
        history=history, spec=spec, name="iris", at=T0 + timedelta(seconds=60), status=status
    )
    queries = checks.build_queries(
        spec=spec, name="iris", namespace=None, source="router", status=status
    )
    assert set(measured.samples) == set(queries) == OFFLINE_NAMES
    assert dict(measured.get("canaryOfflineFigures").features) == {"accuracy": 0.96, "f1": 0.97}
    assert measured.get("canaryOfflineRows").features == ((DIGEST, 2000.0),)
    assert measured.get("stableOfflineRows").features == (("", 0.0),)
    assert measured.get("stableOfflineFigures").features == ()
    result = offline.judge_gate(spec=spec, status=status, measurements=measured)
    assert result.outcome == "blocked"  # stable's manifest records no evaluation
    # At a step, beside every other check.
    at_step = measure_scraped(
        history=history, spec=spec, name="iris", at=T0 + timedelta(seconds=60),
        status=status.model_copy(update={"current_step": 0}),
    )  # fmt: skip
    assert set(at_step.samples) > OFFLINE_NAMES and m.REQUESTS in at_step.samples


def test_status_shows_the_held_out_figures_next_to_live_accuracy() -> None:
    record = api.AnalysisRecord(
        time=T0,
        verdict="Successful",
        step=0,
        weight=5,
        checks=[
            api.CheckRecord(name=m.ACCURACY, verdict="Successful", value=0.95),
            api.CheckRecord(name=m.ACCURACY_VS_STABLE, verdict="Successful", value=-0.01),
        ],
        offline=[
            api.OfflineFigures(
                track="canary", version=CANARY_VERSION, rows=20000, heldout_sha256=DIGEST,
                metrics={"accuracy": 0.9601, "roc_auc": 0.991},
            ),
            api.OfflineFigures(track="stable", version=STABLE_VERSION),
        ],
    )  # fmt: skip
    status = api.ModelDeploymentStatus(phase="Progressing", last_analysis=record)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [5, 50]}},
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "held-out figures" in text
    assert "canary 1.1.0" in text and "stable 1.0.0" in text
    assert "20,000" in text and "none recorded" in text and DIGEST[:12] in text
    assert "96.0 %" in text and "0.9910" in text  # accuracy in %, as the live one reads
    assert "95.0 %" in text and "96.0 %" in text  # live: canary 95 %, stable 95 + 1 = 96 %


def test_a_new_reason_to_block_is_said_again() -> None:
    run = gate_run(gate_spec(metric="rmse"))
    figures = (track("canary", accuracy=0.9), track("stable", accuracy=0.9))
    assert reasons(gate_analysis(run, *figures)) == [rollout.OFFLINE_GATE_BLOCKED]
    assert reasons(gate_analysis(run, *figures)) == []
    run.spec = gate_spec(metric="mae")  # still not recorded: another message, said once
    decision = gate_analysis(run, *figures)
    assert reasons(decision) == [rollout.OFFLINE_GATE_BLOCKED]
    assert "records no mae" in decision.events[0].message
    # Waiting again (the stable's pods replaced): no stall for what no longer holds.
    run.spec = gate_spec(metric="accuracy")
    gate_analysis(run, track("canary", accuracy=0.9))
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "False"
    assert run.status.canary_weight == 0


@pytest.mark.parametrize(
    ("digest", "rows"),
    [(DIGEST, math.inf), (DIGEST, -1.0), (DIGEST, 12.5), ("not a digest\nat all", 2000.0)],
)
def test_a_rows_series_no_server_exports_is_an_error_and_never_shown(
    digest: str, rows: float
) -> None:
    result = gate(gate_spec(), track("canary", rows=rows, digest=digest, accuracy=0.9),
                  track("stable", accuracy=0.9))  # fmt: skip
    assert result.outcome == "wait" and result.check.verdict == "Error"
    assert "no held-out evaluation a server exports" in result.check.message
    assert digest not in result.check.message
    assert [f.track for f in result.figures] == ["stable"]


def test_only_finite_known_figures_are_kept() -> None:
    result = gate(
        gate_spec(),
        track("canary", accuracy=0.96, log_loss=math.inf, **{"made_up": 1.0}),
        track("stable", accuracy=0.955),
    )
    assert result.outcome == "pass"
    assert result.figures[0].metrics == {"accuracy": 0.96}
    record = api.AnalysisRecord(time=T0, verdict="Successful", offline=result.figures)
    api.AnalysisRecord.model_validate(record.model_dump(by_alias=True, mode="json"))
