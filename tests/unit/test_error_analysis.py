"""A regressor's error checks on labelled predictions (thresholds.maxMeanAbsoluteError,
baseline.maxErrorIncrease / maxErrorRatio, analysis.labels): the spec, the queries, the
statistics, the verdicts on hand-built sums, the demo's scrapes and the rollout."""

from __future__ import annotations

import io
import math
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_cli.demo.scrape import ScrapedSample, ScrapeHistory, measure_scraped
from canaryml_operator import checks, crd, verdicts
from canaryml_operator import evidence as ev
from canaryml_operator import measurements as m
from canaryml_operator.cli import render_status
from canaryml_operator.measurements import Measurements, Sample
from rich.console import Console

from tests.unit.test_accuracy_analysis import STABLE_VERSION, accuracy_spec, labels, queries_of
from tests.unit.test_rollout import T0, Run, condition
from tests.unit.test_sequential_analysis import counts

# The errors of a normal with mean absolute error 1: |e| has sd sqrt(pi / 2 - 1) ~ 0.755.
NORMAL_SD = math.sqrt(math.pi / 2)


def sums(n: float, mae: float, spread: float = 0.755) -> tuple[float, float, float]:
    """(labels, sum |e|, sum e^2) of n labels whose |e| has mean `mae` and sd `spread` x mae."""
    sd = spread * mae
    return n, n * mae, n * (sd * sd + mae * mae)


def errors(
    canary: tuple[float, float | None, float | None],
    stable: tuple[float, float | None, float | None] | None = None,
) -> dict[str, float | None]:
    """(labelled, sum |e|, sum e^2) per track as count measurements (None: no series)."""
    values: dict[str, float | None] = {}
    for track, given in (("canary", canary), ("stable", stable)):
        if given is not None:
            for kind, value in zip(m.ERROR_KINDS, given, strict=True):
                values[m.count_name(track, kind)] = value  # type: ignore[arg-type]
    return values


def judged(
    spec: api.ModelDeploymentSpec, values: dict[str, float | None], *, age: float = 3600.0
) -> dict[str, verdicts.CheckResult]:
    """Every check on clean request counts and `values`, `age` seconds into the step."""
    merged = {**counts(canary=(0, 5000), stable=(0, 45000)), **values}
    samples = {name: Sample(value) for name, value in merged.items()}
    measured = Measurements(time=T0 + timedelta(seconds=age), samples=samples)
    results = verdicts.judge(spec=spec, measurements=measured, step_started_at=T0)
    return {result.name: result for result in results}


MAE = accuracy_spec(thresholds={"maxMeanAbsoluteError": 1.0})
INCREASE = accuracy_spec(baseline={"maxErrorIncrease": 0.25})
RATIO = accuracy_spec(baseline={"maxErrorRatio": 1.25})


# --- the spec ---------------------------------------------------------------------------------


def test_error_checks_are_optional_and_imply_sequential_decisions_and_label_rules() -> None:
    plain = accuracy_spec()
    assert plain.analysis.thresholds.max_mean_absolute_error is None
    assert not plain.analysis.error_asked and not plain.analysis.accuracy_checked
    for spec in (MAE, INCREASE, RATIO):
        assert spec.analysis.error_asked and not spec.analysis.accuracy_asked
        assert spec.analysis.accuracy_checked and spec.analysis.sequential_rates is not None
        assert spec.analysis.label_rules == api.LabelsSpec(min_labels=100, delay="0s")
    assert MAE.analysis.thresholds.max_mean_absolute_error == 1.0


def test_each_error_allowance_alone_is_an_allowance() -> None:
    for spec, field in ((INCREASE, "max_error_increase"), (RATIO, "max_error_ratio")):
        baseline = spec.analysis.baseline
        assert baseline is not None and baseline.compares_errors and getattr(baseline, field)
    both = accuracy_spec(baseline={"maxErrorIncrease": 0, "maxErrorRatio": 1})
    assert both.analysis.baseline is not None and both.analysis.baseline.compares_errors


@pytest.mark.parametrize(
    "analysis",
    [
        {"thresholds": {"maxMeanAbsoluteError": 0}},
        {"thresholds": {"maxMeanAbsoluteError": -1.5}},
        {"thresholds": {"maxMeanAbsoluteError": "inf"}},
        {"baseline": {"maxErrorIncrease": -0.1}},
        {"baseline": {"maxErrorIncrease": "nan"}},
        {"baseline": {"maxErrorRatio": 0.9}},
        {"baseline": {"maxErrorRatio": 1001}},
    ],
)
def test_out_of_range_error_fields_are_refused(analysis: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        accuracy_spec(**analysis)


def test_the_crd_carries_the_error_fields_and_their_rules() -> None:
    # Built from the models: the committed file is regenerated with `canaryml crd --out crds/`.
    spec = crd.build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    analysis = spec["spec"]["properties"]["analysis"]["properties"]
    mae = analysis["thresholds"]["properties"]["maxMeanAbsoluteError"]
    assert mae["type"] == "number" and mae["minimum"] == 0 and "exclusiveMinimum" not in mae
    assert mae["x-kubernetes-validations"] == [
        {"rule": "self > 0.0", "message": "must be greater than 0"}
    ]
    baseline = analysis["baseline"]
    assert {"maxErrorIncrease", "maxErrorRatio"} <= set(baseline["properties"])
    rule = baseline["x-kubernetes-validations"][0]["rule"]
    for field in ("maxErrorIncrease", "maxErrorRatio", "maxAccuracyDrop"):
        assert f"has(self.{field})" in rule
    assert "default" not in mae and "required" not in baseline


# --- the queries ------------------------------------------------------------------------------


def test_error_sums_since_the_step_began_are_queried_per_track() -> None:
    spec = accuracy_spec(
        thresholds={"maxMeanAbsoluteError": 1.0}, baseline={"maxErrorIncrease": 0.1}
    )
    queries = queries_of(spec)
    start = f"@ {T0.timestamp():.3f}"
    series = {
        "absoluteErrors": telemetry.FEEDBACK_ABSOLUTE_ERROR_TOTAL,
        "squaredErrors": telemetry.FEEDBACK_SQUARED_ERROR_TOTAL,
    }
    for track, version in (("canary", "1.1.0"), ("stable", STABLE_VERSION)):
        scope = f'{{model_deployment="iris",namespace="ml",track="{track}",version="{version}"}}'
        grown = f"{telemetry.FEEDBACK_LABELS_TOTAL}{scope}"
        assert queries[m.count_name(track, "labelled")] == (
            f"(sum((({grown} - {grown} {start}) >= 0 or {grown})) or on() vector(0))"
        )
        for kind, name in series.items():
            grown = f"{name}{scope}"
            # The same non-extrapolated growth; no series is no data (a classifier has none).
            assert queries[m.count_name(track, kind)] == (
                f"sum((({grown} - {grown} {start}) >= 0 or {grown}))"
            )
        # A regressor's checks read no correct count.
        assert m.count_name(track, "correct") not in queries
    assert m.count_name("canary", "absoluteErrors") == "canaryAbsoluteErrorsSinceStep"


def test_stable_error_sums_are_queried_only_for_the_comparison() -> None:
    queries = queries_of(MAE)
    assert m.count_name("canary", "squaredErrors") in queries
    assert m.count_name("stable", "labelled") not in queries
    assert m.count_name("stable", "squaredErrors") in queries_of(RATIO)
    # The accuracy checks read no error sums.
    accuracy = queries_of(accuracy_spec(thresholds={"minAccuracy": 0.9}))
    assert not {m.count_name("canary", kind) for kind in ("absoluteErrors", "squaredErrors")} & set(
        accuracy
    )
    assert "feedback_absolute" not in " ".join(accuracy.values())


def test_the_demo_scrapes_the_same_error_sums() -> None:
    spec = accuracy_spec(
        thresholds={"maxMeanAbsoluteError": 1.0}, baseline={"maxErrorIncrease": 0.1}
    )
    canary = {"model_deployment": "iris", "track": "canary", "version": "1.1.0"}
    history = ScrapeHistory()
    for s in range(0, 61, 10):
        history.add(
            target="a",
            time=T0 + timedelta(seconds=s),
            samples=[
                ScrapedSample(telemetry.FEEDBACK_LABELS_TOTAL, canary, 10.0 * s),
                ScrapedSample(telemetry.FEEDBACK_ABSOLUTE_ERROR_TOTAL, canary, 5.0 * s),
                ScrapedSample(telemetry.FEEDBACK_SQUARED_ERROR_TOTAL, canary, 4.0 * s),
            ],
        )
    status = api.ModelDeploymentStatus(
        step_started_at=T0 + timedelta(seconds=20),
        stable_model=api.ModelIdentity(uri="s3://m/0", version=STABLE_VERSION),
    )
    at = T0 + timedelta(seconds=60)
    measured = measure_scraped(history=history, spec=spec, name="iris", at=at, status=status)
    got = {name: sample.value for name, sample in measured.samples.items()}
    assert got[m.count_name("canary", "labelled")] == 400
    assert got[m.count_name("canary", "absoluteErrors")] == 200
    assert got[m.count_name("canary", "squaredErrors")] == 160
    # Stable has no series: no label yet, and no sums (no data, not 0).
    assert got[m.count_name("stable", "labelled")] == 0
    assert got[m.count_name("stable", "absoluteErrors")] is None
    queries = checks.build_queries(
        spec=spec, name="iris", namespace=None, source="router", status=status, at=at
    )
    since = {name for name in queries if name.endswith("SinceStep")}
    assert since == {name for name in measured.samples if name.endswith("SinceStep")}


# --- the statistics ---------------------------------------------------------------------------


def test_the_margin_is_the_papers_normal_mixture_boundary() -> None:
    # Theorem 2.2 of Waudby-Smith et al. with their rho for a planned t*, in unit variance.
    alpha, planned, n, variance = 0.01, 500, 300, 2.0
    rho2 = (2 * math.log(1 / alpha) + math.log(1 + 2 * math.log(1 / alpha))) / planned
    # Their rho is per unit of sigma: rho_theirs = rho / sigma.
    theirs = rho2 / variance
    expected = math.sqrt(
        2 * (n * variance * theirs + 1) / (n * n * theirs)
        * math.log(math.sqrt(n * variance * theirs + 1) / alpha)
    )  # fmt: skip
    assert float(ev.mean_margin(n, variance, alpha, planned=planned)) == pytest.approx(expected)
    # Narrowest around the planned labels, relative to the 1 / sqrt(n) rate.
    scaled = [float(ev.mean_margin(k, 1.0, alpha)) * math.sqrt(k) for k in (50, 500, 50000)]
    assert scaled[1] < scaled[0] and scaled[1] < scaled[2]
    assert math.isinf(float(ev.mean_margin(0, 1.0, alpha)))


def test_the_interval_does_not_depend_on_the_targets_units() -> None:
    small = ev.check_mean(ev.ErrorSums(*sums(400, 1.1)), 1.0)
    scaled = ev.check_mean(ev.ErrorSums(400, 400 * 1.1 * 1000, sums(400, 1.1)[2] * 1e6), 1000.0)
    assert small.decision == scaled.decision
    assert scaled.interval.low == pytest.approx(small.interval.low * 1000)
    assert scaled.interval.high == pytest.approx(small.interval.high * 1000)


def test_a_few_equal_errors_are_no_certainty() -> None:
    # Five labels, all with the same error: the empirical variance is 0, the pseudo-label's not.
    check = ev.check_mean(ev.ErrorSums(5, 5 * 0.5, 5 * 0.25), 1.0)
    assert check.decision == ev.Decision.UNDECIDED and check.interval.high > 1.0
    assert check.sums.deviation == 0.0
    # No label: nothing known.
    empty = ev.check_mean(ev.ErrorSums(0, 0, 0), 1.0)
    assert empty.interval == ev.Interval(0.0, math.inf) and empty.labels_needed is None


def test_comparisons_decide_both_ways_and_with_either_part() -> None:
    good, stable = ev.ErrorSums(*sums(2000, 1.0)), ev.ErrorSums(*sums(18000, 1.0))
    within = ev.compare_means(good, stable, ev.MeanAllowance(increase=0.25))
    assert within.decision == ev.Decision.PASS
    assert within.difference == pytest.approx(0.0) and within.difference_interval.high < 0.25
    bad = ev.ErrorSums(*sums(2000, 1.6))
    worse = ev.compare_means(bad, stable, ev.MeanAllowance(ratio=1.25))
    assert worse.decision == ev.Decision.FAIL and worse.ratio_interval.low > 1.25
    # Fail needs evidence against both parts: a generous increase saves it.
    both = ev.MeanAllowance(ratio=1.25, increase=1.0)
    assert ev.compare_means(bad, stable, both).decision != ev.Decision.FAIL
    few = ev.compare_means(ev.ErrorSums(*sums(5, 3.0)), stable, ev.MeanAllowance(increase=0.25))
    assert few.decision == ev.Decision.UNDECIDED


def test_at_the_bound_wrong_decisions_stay_under_alpha_over_every_look() -> None:
    """Seeded paths of normal errors with a mean absolute error exactly at the bound, looked
    at every 20 labels from 100 to 3,000: the share that ever Fails (or ever Passes) stays
    within alpha = beta = 0.05 (benchmarks/error_checks.py has more paths and heavy tails)."""
    rng = np.random.default_rng(11)
    paths, labels = 400, 3000
    e = rng.normal(0.0, NORMAL_SD, (paths, labels))  # E|e| = 1
    looks = np.arange(100, labels + 1, 20)
    n = np.broadcast_to(looks, (paths, looks.size))
    s1 = np.cumsum(np.abs(e), axis=1)[:, looks - 1]
    s2 = np.cumsum(e * e, axis=1)[:, looks - 1]
    codes = ev.mean_decisions(n, s1, s2, 1.0, alpha=0.05, beta=0.05)
    assert (codes == ev.FAIL).any(axis=1).mean() <= 0.05
    assert (codes == ev.PASS).any(axis=1).mean() <= 0.05


# --- meanAbsoluteError against maxMeanAbsoluteError -------------------------------------------


def test_many_small_errors_pass() -> None:
    result = judged(MAE, errors(sums(1000, 0.7)))[m.MEAN_ABSOLUTE_ERROR]
    assert result.verdict == "Successful" and result.sequential and result.message == ""
    assert result.value == pytest.approx(0.7) and result.max == 1.0 and result.samples == 1000
    assert result.low is not None and result.high is not None
    assert result.low < 0.7 < result.high < 1.0


def test_clearly_larger_errors_fail_with_evidence() -> None:
    result = judged(MAE, errors(sums(300, 1.6)))[m.MEAN_ABSOLUTE_ERROR]
    assert result.verdict == "Failed" and result.sequential
    assert result.low is not None and result.low > 1.0
    assert "meanAbsoluteError 1.600 > max 1.000 with evidence: interval" in result.message
    assert "300 labels since the step began" in result.message


def test_close_to_the_bound_is_not_sure_yet_and_says_how_many_more_labels() -> None:
    result = judged(MAE, errors(sums(200, 1.15)))[m.MEAN_ABSOLUTE_ERROR]
    assert result.verdict == "Inconclusive" and result.collecting
    assert result.requests_needed is not None and result.requests_needed > 0
    assert f"about {result.requests_needed} more canary labels" in result.message
    assert "not sure yet (interval" in result.message


def test_five_labels_decide_nothing() -> None:
    # Five labels five times over the bound: minLabels holds it, whatever they say.
    for n, mae in ((5, 5.0), (5, 0.01), (99, 0.1)):
        result = judged(MAE, errors(sums(n, mae)))[m.MEAN_ABSOLUTE_ERROR]
        assert result.verdict == "Inconclusive" and result.collecting
        assert result.samples == n and result.requests_needed == 100 - n
        assert f"{n} canary labels since the step began, minLabels 100" in result.message
    # With minLabels 5, five labels are read by the statistics, which want more for a pass.
    spec = accuracy_spec(thresholds={"maxMeanAbsoluteError": 1.0}, labels={"minLabels": 5})
    assert judged(spec, errors(sums(5, 0.5)))[m.MEAN_ABSOLUTE_ERROR].verdict == "Inconclusive"


def test_the_label_delay_holds_a_pass_but_not_a_failure() -> None:
    spec = accuracy_spec(thresholds={"maxMeanAbsoluteError": 1.0}, labels={"delay": "1h"})
    held = judged(spec, errors(sums(1000, 0.7)), age=600)[m.MEAN_ABSOLUTE_ERROR]
    assert held.verdict == "Inconclusive" and held.collecting and held.requests_needed is None
    assert "enough evidence to pass, but" in held.message and "50m left" in held.message
    assert judged(spec, errors(sums(1000, 0.7)))[m.MEAN_ABSOLUTE_ERROR].verdict == "Successful"
    failed = judged(spec, errors(sums(300, 1.6)), age=60)[m.MEAN_ABSOLUTE_ERROR]
    assert failed.verdict == "Failed"


def test_a_classifier_has_no_error_to_judge() -> None:
    # A classifier's servers export labels and correct counts, no sums of errors.
    classifier = {**errors((300, None, None)), **labels((300, 280))}
    result = judged(MAE, classifier)[m.MEAN_ABSOLUTE_ERROR]
    assert result.verdict == "Error" and result.max == 1.0
    assert "error checks are for regressors" in result.message
    assert telemetry.FEEDBACK_ABSOLUTE_ERROR_TOTAL in result.message
    # No label at all: nothing to say yet, either way.
    none = judged(MAE, errors((0, None, None)))[m.MEAN_ABSOLUTE_ERROR]
    assert none.verdict == "Inconclusive" and not none.collecting
    missing = judged(MAE, {})[m.MEAN_ABSOLUTE_ERROR]
    assert missing.verdict == "Inconclusive" and "no canary label counts" in missing.message


def test_a_failed_query_is_an_error() -> None:
    broken = {m.count_name("canary", "squaredErrors"): Sample.failed("timeout")}
    samples = {
        **{k: Sample(v) for k, v in {**counts(canary=(0, 10)), **errors(sums(300, 1))}.items()},
        **broken,
    }
    results = verdicts.judge(
        spec=MAE, measurements=Measurements(time=T0, samples=samples), step_started_at=T0
    )
    [result] = [r for r in results if r.name == m.MEAN_ABSOLUTE_ERROR]
    assert result.verdict == "Error" and "sum of squared errors" in result.message
    assert "timeout" in result.message


# --- errorVsStable against maxErrorIncrease / maxErrorRatio -----------------------------------


def test_a_canary_erring_like_stable_passes_with_enough_labels() -> None:
    result = judged(INCREASE, errors(sums(2000, 1.0), sums(18000, 1.0)))[m.ERROR_VS_STABLE]
    assert result.verdict == "Successful" and result.sequential
    assert result.value == pytest.approx(0.0) and result.max == 0.25 and result.min is None
    assert result.high is not None and result.high < 0.25 and result.samples == 2000


def test_larger_errors_than_stable_fail_only_with_evidence() -> None:
    failed = judged(INCREASE, errors(sums(1000, 1.6), sums(9000, 1.0)))[m.ERROR_VS_STABLE]
    assert failed.verdict == "Failed" and failed.value == pytest.approx(0.6)
    assert failed.low is not None and failed.low > 0.25
    assert "errorVsStable: larger errors than allowed, with evidence" in failed.message
    assert "difference +0.600" in failed.message and "allowed: stable's + 0.250" in failed.message
    # The same difference on a handful of labels decides nothing.
    few = accuracy_spec(baseline={"maxErrorIncrease": 0.25}, labels={"minLabels": 5})
    unsure = judged(few, errors(sums(5, 1.6), sums(45, 1.0)))[m.ERROR_VS_STABLE]
    assert unsure.verdict == "Inconclusive" and unsure.collecting
    assert "not sure yet" in unsure.message


def test_a_ratio_alone_reads_the_difference_with_no_max() -> None:
    worse = judged(RATIO, errors(sums(1000, 1.6), sums(9000, 1.0)))[m.ERROR_VS_STABLE]
    assert worse.verdict == "Failed" and worse.max is None
    assert "ratio 1.6" in worse.message and "allowed: 1.25x stable's" in worse.message
    same = judged(RATIO, errors(sums(2000, 1.0), sums(18000, 1.0)))[m.ERROR_VS_STABLE]
    assert same.verdict == "Successful"


def test_the_comparison_needs_min_labels_on_both_tracks() -> None:
    result = judged(INCREASE, errors(sums(500, 3.0), sums(60, 1.0)))[m.ERROR_VS_STABLE]
    assert result.verdict == "Inconclusive"
    assert "60 stable labels since the step began, minLabels 100" in result.message
    assert result.requests_needed == 40


def test_the_comparison_on_a_classifier_is_an_error() -> None:
    result = judged(INCREASE, errors((500, None, None), (4500, None, None)))[m.ERROR_VS_STABLE]
    assert result.verdict == "Error" and "regressors" in result.message and result.max == 0.25


def test_the_comparison_waits_for_the_label_delay() -> None:
    spec = accuracy_spec(baseline={"maxErrorIncrease": 0.25}, labels={"delay": "10m"})
    good = errors(sums(2000, 1.0), sums(18000, 1.0))
    held = judged(spec, good, age=60)[m.ERROR_VS_STABLE]
    assert held.verdict == "Inconclusive" and "enough evidence to pass, but" in held.message
    assert judged(spec, good, age=600)[m.ERROR_VS_STABLE].verdict == "Successful"


# --- names, notation, status ------------------------------------------------------------------


def test_the_error_checks_are_named_written_and_bounded() -> None:
    assert {m.MEAN_ABSOLUTE_ERROR, m.ERROR_VS_STABLE} <= set(m.OPT_IN_CHECKS)
    # camelCase: no custom metric (lowercase with dashes) can take these names.
    for name in (m.MEAN_ABSOLUTE_ERROR, m.ERROR_VS_STABLE):
        assert name not in api.RESERVED_METRIC_NAMES and name != name.lower()
    assert m.value_text(m.MEAN_ABSOLUTE_ERROR, 12.3456) == "12.346"
    assert m.value_text(m.ERROR_VS_STABLE, -0.5) == "-0.500"
    assert m.impossible(m.MEAN_ABSOLUTE_ERROR, -1.0) is not None
    assert m.impossible(m.ERROR_VS_STABLE, -1e6) is None
    assert set(m.ERROR_KINDS) <= set(m.COUNT_KINDS)
    # The existing names are unchanged by the camelCase-aware count names.
    assert m.count_name("stable", "labelled") == "stableLabelledSinceStep"


def test_canaryml_status_shows_the_error_checks() -> None:
    spec = accuracy_spec(
        thresholds={"maxMeanAbsoluteError": 1.0}, baseline={"maxErrorIncrease": 0.25}
    )
    results = list(judged(spec, errors(sums(200, 1.15), sums(1800, 1.0))).values())
    record = verdicts.build_record(results=results, time=T0, step=0, weight=10)
    status = api.ModelDeploymentStatus(phase="Progressing", last_analysis=record)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [10, 50]}},
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=400, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "meanAbsoluteError" in text and "errorVsStable" in text
    assert "1.150" in text and "0.150" in text and "200 (+" in text


# --- the rollout ------------------------------------------------------------------------------


def test_an_error_failure_rolls_back_at_once() -> None:
    run = Run(MAE)
    run.start()
    decision = run.analyse({**counts(canary=(0, 600)), **errors(sums(300, 2.0))}, after=2)
    assert decision.action == "rollback"
    assert "meanAbsoluteError" in decision.status.history[-1].reason


def test_too_few_labels_hold_the_weight_as_collecting_evidence() -> None:
    run = Run(MAE)
    run.start()
    for minute in range(1, 10):
        decision = run.analyse({**counts(canary=(0, 600)), **errors(sums(minute, 0.5))}, after=60)
        assert decision.action == "hold"
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == "CollectingEvidence"
    assert "minLabels 100 (91 more needed)" in progressing.message
