"""Accuracy checks on labelled predictions (thresholds.minAccuracy, baseline.maxAccuracyDrop,
analysis.labels): the spec, the queries, the verdicts on hand-built counts, the rollout."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_operator import checks, verdicts
from canaryml_operator import evidence as ev
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Measurements, Sample

from tests.unit.test_rollout import T0, Run, condition, raw_spec
from tests.unit.test_sequential_analysis import counts

STABLE_VERSION = "0.9"


def accuracy_spec(**analysis: Any) -> api.ModelDeploymentSpec:
    raw = raw_spec()
    raw["analysis"] |= analysis
    return api.parse_spec(raw)


def labels(
    canary: tuple[float, float | None], stable: tuple[float, float | None] | None = None
) -> dict[str, float | None]:
    """(labelled, correct) per track as count measurements (correct None: no series)."""
    values = {
        m.count_name("canary", "labelled"): canary[0],
        m.count_name("canary", "correct"): canary[1],
    }
    if stable is not None:
        values |= {
            m.count_name("stable", "labelled"): stable[0],
            m.count_name("stable", "correct"): stable[1],
        }
    return values


def judged(
    spec: api.ModelDeploymentSpec,
    values: dict[str, float | None],
    *,
    age: float = 3600.0,
) -> dict[str, verdicts.CheckResult]:
    """Every check on clean request counts and `values`, `age` seconds into the step."""
    merged = {**counts(canary=(0, 5000), stable=(0, 45000)), **values}
    samples = {name: Sample(value) for name, value in merged.items()}
    measured = Measurements(time=T0 + timedelta(seconds=age), samples=samples)
    results = verdicts.judge(spec=spec, measurements=measured, step_started_at=T0)
    return {result.name: result for result in results}


# --- the spec ---------------------------------------------------------------------------------


def test_accuracy_checks_are_optional_and_imply_sequential_decisions() -> None:
    plain = accuracy_spec()
    assert plain.analysis.thresholds.min_accuracy is None and plain.analysis.labels is None
    assert not plain.analysis.accuracy_checked and plain.analysis.sequential_rates is None
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9})
    assert spec.analysis.accuracy_checked and spec.analysis.sequential_rates is not None
    # analysis.labels defaults apply when it is absent.
    assert spec.analysis.label_rules == api.LabelsSpec(min_labels=100, delay="0s")


def test_max_accuracy_drop_alone_is_an_allowance() -> None:
    spec = accuracy_spec(baseline={"maxAccuracyDrop": 0.02})
    assert spec.analysis.baseline is not None
    assert spec.analysis.baseline.max_accuracy_drop == 0.02
    assert spec.analysis.accuracy_checked


@pytest.mark.parametrize(
    "analysis",
    [
        {"thresholds": {"minAccuracy": 1.5}},
        {"baseline": {"maxAccuracyDrop": -0.1}},
        {"baseline": {"maxAccuracyDrop": 1}},
        {"labels": {"minLabels": 0}},
        {"labels": {"delay": "1d"}},
        {"labels": {"delay": "-1s"}},
    ],
)
def test_out_of_range_accuracy_fields_are_refused(analysis: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        accuracy_spec(**analysis)


def test_a_zero_label_delay_is_accepted() -> None:
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9}, labels={"delay": "0s", "minLabels": 1})
    assert spec.analysis.label_rules.delay == "0s"


# --- the queries ------------------------------------------------------------------------------


def queries_of(spec: api.ModelDeploymentSpec, *, after: float = 30.0) -> dict[str, str]:
    status = api.ModelDeploymentStatus(
        step_started_at=T0, stable_model=api.ModelIdentity(uri="s3://m/0", version=STABLE_VERSION)
    )
    return checks.build_queries(
        spec=spec, name="iris", namespace="ml", source="router", status=status,
        at=T0 + timedelta(seconds=after),
    )  # fmt: skip


def test_labels_since_the_step_began_are_queried_per_track() -> None:
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9}, baseline={"maxAccuracyDrop": 0.02})
    queries = queries_of(spec)
    start = f"@ {T0.timestamp():.3f}"
    for track, version in (("canary", "1.1.0"), ("stable", STABLE_VERSION)):
        scope = f'{{model_deployment="iris",namespace="ml",track="{track}",version="{version}"}}'
        labelled = queries[m.count_name(track, "labelled")]
        correct = queries[m.count_name(track, "correct")]
        # The same non-extrapolated growth as the request counts, with no `source` label.
        grown = f"{telemetry.FEEDBACK_LABELS_TOTAL}{scope}"
        assert labelled == f"(sum((({grown} - {grown} {start}) >= 0 or {grown})) or on() vector(0))"
        grown = f"{telemetry.FEEDBACK_CORRECT_TOTAL}{scope}"
        # No correct series is no data, not 0 (a regressor exports none).
        assert correct == f"sum((({grown} - {grown} {start}) >= 0 or {grown}))"
        assert "source" not in labelled + correct and "increase(" not in labelled + correct


def test_stable_labels_are_queried_only_for_the_comparison() -> None:
    queries = queries_of(accuracy_spec(thresholds={"minAccuracy": 0.9}))
    assert m.count_name("canary", "labelled") in queries
    assert m.count_name("stable", "labelled") not in queries
    # minAccuracy alone implies sequential checks: the request counts since the step began.
    assert m.count_name("canary", "requests") in queries and m.ERROR_RATE not in queries
    # Before the step has run a second there is nothing to count.
    early = queries_of(accuracy_spec(thresholds={"minAccuracy": 0.9}), after=0.5)
    assert not any(name.endswith("SinceStep") for name in early)


def test_specs_without_accuracy_checks_query_no_labels() -> None:
    for spec in (
        accuracy_spec(),
        accuracy_spec(sequential={}),
        accuracy_spec(baseline={"maxErrorRateRatio": 2}),
        accuracy_spec(sequential={}, labels={"minLabels": 5}),
    ):
        queries = queries_of(spec)
        assert not any("Labelled" in name or "Correct" in name for name in queries)
        assert "feedback" not in " ".join(queries.values())
        results = judged(spec, {})
        assert m.ACCURACY not in results and m.ACCURACY_VS_STABLE not in results


# --- accuracy against minAccuracy -------------------------------------------------------------


MIN_ACCURACY = accuracy_spec(thresholds={"minAccuracy": 0.9})


def test_enough_correct_labels_pass() -> None:
    result = judged(MIN_ACCURACY, labels((1000, 970)))[m.ACCURACY]
    assert result.verdict == "Successful" and result.sequential
    assert result.value == pytest.approx(0.97) and result.min == 0.9 and result.samples == 1000
    assert result.low is not None and result.high is not None
    assert 0.9 < result.low < 0.97 < result.high


def test_a_clearly_worse_canary_fails_with_evidence() -> None:
    result = judged(MIN_ACCURACY, labels((200, 150)))[m.ACCURACY]
    assert result.verdict == "Failed" and result.sequential
    assert result.evidence is not None and result.evidence >= 100
    assert result.high is not None and result.high < 0.9
    assert "accuracy 75.00 % < min 90.00 % with evidence" in result.message
    assert "150 of 200 labels correct" in result.message


def test_close_to_the_bound_is_not_sure_yet_and_says_how_many_more_labels() -> None:
    result = judged(MIN_ACCURACY, labels((150, 140)))[m.ACCURACY]
    assert result.verdict == "Inconclusive" and result.collecting
    assert result.requests_needed is not None and result.requests_needed > 0
    assert f"about {result.requests_needed} more canary labels" in result.message


def test_few_labels_are_inconclusive_with_the_count_and_what_is_missing() -> None:
    # 5 wrong labels of 5 would be evidence enough for the test: minLabels holds it.
    for labelled, correct in ((5, 0), (5, 5), (99, 99)):
        result = judged(MIN_ACCURACY, labels((labelled, correct)))[m.ACCURACY]
        assert result.verdict == "Inconclusive" and result.collecting
        assert result.samples == labelled and result.requests_needed == 100 - labelled
        assert f"{labelled} canary labels since the step began, minLabels 100" in result.message
        assert f"({100 - labelled} more needed)" in result.message
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9}, labels={"minLabels": 5})
    assert judged(spec, labels((5, 0)))[m.ACCURACY].verdict == "Failed"


def test_no_labels_at_all_hold_without_claiming_evidence_is_coming() -> None:
    result = judged(MIN_ACCURACY, labels((0, None)))[m.ACCURACY]
    assert result.verdict == "Inconclusive" and result.value is None
    assert not result.collecting and "0 canary labels" in result.message
    missing = judged(MIN_ACCURACY, {})[m.ACCURACY]
    assert missing.verdict == "Inconclusive" and "no canary label counts" in missing.message


def test_labels_without_a_correct_count_are_an_error() -> None:
    result = judged(MIN_ACCURACY, labels((300, None)))[m.ACCURACY]
    assert result.verdict == "Error" and "classifiers" in result.message
    broken = {m.count_name("canary", "labelled"): Sample.failed("timeout")}
    samples = {**{k: Sample(v) for k, v in counts(canary=(0, 10)).items()}, **broken}
    results = verdicts.judge(
        spec=MIN_ACCURACY, measurements=Measurements(time=T0, samples=samples), step_started_at=T0
    )
    [accuracy] = [r for r in results if r.name == m.ACCURACY]
    assert accuracy.verdict == "Error" and "timeout" in accuracy.message


def test_the_label_delay_holds_a_pass_but_not_a_failure() -> None:
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9}, labels={"delay": "1h"})
    held = judged(spec, labels((1000, 990)), age=600)[m.ACCURACY]
    assert held.verdict == "Inconclusive" and held.collecting
    assert "label delay 1h, 50m left" in held.message
    assert judged(spec, labels((1000, 990)), age=3600)[m.ACCURACY].verdict == "Successful"
    # The labels so far are the same version's: evidence of a bad canary rolls it back now.
    assert judged(spec, labels((200, 150)), age=60)[m.ACCURACY].verdict == "Failed"
    # Too few labels within the delay: both reasons, and evidence is coming (no stall).
    early = judged(spec, labels((0, None)), age=60)[m.ACCURACY]
    assert early.collecting and "0 canary labels" in early.message and "59m left" in early.message


def test_without_the_steps_start_the_delay_has_not_run() -> None:
    spec = accuracy_spec(thresholds={"minAccuracy": 0.9}, labels={"delay": "10m"})
    samples = {
        name: Sample(value)
        for name, value in {**counts(canary=(0, 10)), **labels((1000, 990))}.items()
    }
    results = verdicts.judge(spec=spec, measurements=Measurements(time=T0, samples=samples))
    [accuracy] = [r for r in results if r.name == m.ACCURACY]
    assert accuracy.verdict == "Inconclusive" and "label delay 10m" in accuracy.message


def test_min_accuracy_at_the_ends() -> None:
    perfect = accuracy_spec(thresholds={"minAccuracy": 1.0})
    assert judged(perfect, labels((100, 100)))[m.ACCURACY].verdict == "Successful"
    assert judged(perfect, labels((100, 99)))[m.ACCURACY].verdict == "Failed"
    anything = accuracy_spec(thresholds={"minAccuracy": 0.0})
    assert judged(anything, labels((100, 0)))[m.ACCURACY].verdict == "Successful"
    assert judged(anything, labels((10, 0)))[m.ACCURACY].verdict == "Inconclusive"


# --- the canary's accuracy against stable's ---------------------------------------------------


DROP = accuracy_spec(baseline={"maxAccuracyDrop": 0.02})


def test_a_canary_as_accurate_as_stable_passes_with_enough_labels() -> None:
    result = judged(DROP, labels((10000, 9200), (90000, 82800)))[m.ACCURACY_VS_STABLE]
    assert result.verdict == "Successful" and result.sequential
    assert result.value == pytest.approx(0.0) and result.min == -0.02
    assert result.low is not None and result.low > -0.02 and result.samples == 10000


def test_a_drop_beyond_the_allowance_fails_only_with_evidence() -> None:
    failed = judged(DROP, labels((2000, 1700), (18000, 16560)))[m.ACCURACY_VS_STABLE]
    assert failed.verdict == "Failed" and failed.value == pytest.approx(0.85 - 0.92)
    assert failed.high is not None and failed.high < -0.02
    assert "less accurate than allowed, with evidence" in failed.message
    # The same 7-point drop on 150 labels is not yet evidence.
    unsure = judged(DROP, labels((150, 128), (1350, 1242)))[m.ACCURACY_VS_STABLE]
    assert unsure.verdict == "Inconclusive" and unsure.collecting
    assert "canary labels to decide" in unsure.message or "no decision" in unsure.message


def test_the_comparison_needs_min_labels_on_both_tracks() -> None:
    result = judged(DROP, labels((500, 300), (60, 60)))[m.ACCURACY_VS_STABLE]
    assert result.verdict == "Inconclusive"
    assert "60 stable labels since the step began, minLabels 100" in result.message
    assert result.requests_needed == 40


def test_a_regressor_fails_nothing_by_its_missing_correct_count() -> None:
    result = judged(DROP, labels((500, None), (4500, None)))[m.ACCURACY_VS_STABLE]
    assert result.verdict == "Error" and "classifiers" in result.message


def test_the_accuracy_checks_are_named_written_and_bounded() -> None:
    assert {m.ACCURACY, m.ACCURACY_VS_STABLE} <= set(m.OPT_IN_CHECKS)
    assert m.value_text(m.ACCURACY, 0.934) == "93.4 %"
    assert m.value_text(m.ACCURACY_VS_STABLE, -0.012) == "-1.2 %"
    assert m.impossible(m.ACCURACY, 1.2) is not None
    assert m.impossible(m.ACCURACY_VS_STABLE, -0.5) is None
    assert m.count_name("canary", "labelled") == "canaryLabelledSinceStep"
    assert set(m.LABEL_KINDS) <= set(m.COUNT_KINDS)


# --- the rollout ------------------------------------------------------------------------------


def rollout_spec(**labels_spec: Any) -> api.ModelDeploymentSpec:
    return accuracy_spec(thresholds={"minAccuracy": 0.9}, labels=labels_spec)


def test_an_accuracy_failure_rolls_back_at_once() -> None:
    run = Run(rollout_spec())
    run.start()
    decision = run.analyse({**counts(canary=(0, 600)), **labels((300, 200))}, after=2)
    assert decision.action == "rollback"
    assert "accuracy" in decision.status.history[-1].reason
    assert "sequential decision" in decision.status.history[-1].reason


def test_too_few_labels_hold_the_weight_and_say_what_is_missing() -> None:
    run = Run(rollout_spec())
    run.start()
    for minute in range(1, 20):
        decision = run.analyse({**counts(canary=(0, 600)), **labels((minute, minute))}, after=60)
        assert decision.action == "hold"
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == "CollectingEvidence"
    assert "minLabels 100 (81 more needed)" in progressing.message
    assert run.status.last_analysis is not None
    [check] = [c for c in run.status.last_analysis.checks if c.name == m.ACCURACY]
    assert check.samples == 19 and check.requests_needed == 81


def test_the_step_waits_for_the_label_delay_then_steps_up() -> None:
    run = Run(rollout_spec(delay="2m"))  # stepInterval 30s
    run.start()
    good = {**counts(canary=(0, 600)), **labels((500, 490))}
    assert run.analyse(good, after=40).action == "hold"
    assert run.analyse(good, after=40).action == "hold"
    assert run.analyse(good, after=45).action == "stepUp"


# --- docs/operator.md's sizing table ----------------------------------------------------------


@pytest.mark.parametrize(
    ("accuracy", "min_accuracy", "labels", "decision"),
    [(0.95, 0.93, 2013, ev.PASS), (0.95, 0.90, 352, ev.PASS), (0.90, 0.93, 1011, ev.FAIL)],
)
def test_the_labels_a_decision_needs_are_the_documented_ones(
    accuracy: float, min_accuracy: float, labels: int, decision: int
) -> None:
    """The expected path: counts at exactly the true accuracy, decided first at `labels`."""

    def code(n: int) -> int:
        return int(ev.bound_decisions((1 - accuracy) * n, n, 1 - min_accuracy))

    assert code(labels) == decision
    assert code(labels - 10) == ev.UNDECIDED
