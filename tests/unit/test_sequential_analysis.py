"""Sequential and baseline checks wired into the analysis (analysis.sequential, .baseline) and
the calibrated drift gate (thresholds.driftSignificance): queries, verdicts, the rollout."""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_operator import checks, rollout, verdicts
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Measurements, Sample
from prometheus_client.utils import floatToGoString

from tests.unit.test_rollout import GOOD, T0, Run, condition, raw_spec


def sequential_spec(**analysis: Any) -> api.ModelDeploymentSpec:
    raw = raw_spec()
    raw["analysis"] |= {"sequential": {}} | analysis
    return api.parse_spec(raw)


def counts(
    *,
    canary: tuple[float, float],
    stable: tuple[float, float] | None = None,
    slow: tuple[float, float] = (0.0, 0.0),
) -> dict[str, float]:
    """(events, requests) of errors per track as count measurements; `slow` is (canary slow,
    stable slow); every request is timed."""
    values = {
        m.count_name("canary", "errors"): canary[0],
        m.count_name("canary", "requests"): canary[1],
        m.count_name("canary", "timed"): canary[1],
        m.count_name("canary", "slow"): slow[0],
    }
    if stable is not None:
        values |= {
            m.count_name("stable", "errors"): stable[0],
            m.count_name("stable", "requests"): stable[1],
            m.count_name("stable", "timed"): stable[1],
            m.count_name("stable", "slow"): slow[1],
        }
    return values


def judged(spec: api.ModelDeploymentSpec, values: dict[str, float]) -> dict[str, Any]:
    samples = {name: Sample(value) for name, value in {**GOOD, **values}.items()}
    results = verdicts.judge(spec=spec, measurements=Measurements(time=T0, samples=samples))
    return {result.name: result for result in results}


# --- queries ----------------------------------------------------------------------------------


def test_bucket_labels_are_the_exporters() -> None:
    for bound in (*telemetry.LATENCY_BUCKETS, math.inf):
        assert telemetry.bucket_label(bound) == floatToGoString(bound)


def test_counts_since_the_step_began_are_queried_for_both_tracks() -> None:
    spec = sequential_spec(baseline={"maxErrorRateRatio": 2})
    status = api.ModelDeploymentStatus(
        step_started_at=T0,
        stable_model=api.ModelIdentity(uri="s3://m/0", version="0.9"),
    )
    queries = checks.build_queries(
        spec=spec, name="iris", namespace="ml", source="router", status=status,
        at=T0 + timedelta(seconds=42.5),
    )  # fmt: skip
    errors = queries[m.count_name("stable", "errors")]
    # Each series' value now minus its value at the step's start: no range, no extrapolation.
    assert f"@ {T0.timestamp():.3f}" in errors and "increase(" not in errors
    assert 'track="stable",version="0.9"' in errors and 'code=~"5.."' in errors
    # The default maxLatencyP99 250ms is a bucket bound: slow is +Inf minus le="0.25".
    slow = queries[m.count_name("canary", "slow")]
    assert 'le="+Inf"' in slow and 'le="0.25"' in slow and 'track="canary"' in slow
    # Before the step has run a second there is nothing to count.
    early = checks.build_queries(
        spec=spec, name="iris", namespace="ml", source="router", status=status,
        at=T0 + timedelta(milliseconds=500),
    )  # fmt: skip
    assert not any(name.endswith("SinceStep") for name in early)


def test_latency_bound_rounds_up_to_a_bucket() -> None:
    raw = raw_spec()
    raw["analysis"] |= {"sequential": {}, "thresholds": {"maxLatencyP99": "200ms"}}
    assert m.slow_bound(api.parse_spec(raw)) == 0.25
    raw["analysis"]["thresholds"]["maxLatencyP99"] = "30s"
    spec = api.parse_spec(raw)
    assert m.slow_bound(spec) is None
    result = judged(spec, counts(canary=(0, 500)))[m.SLOW_REQUESTS]
    assert result.verdict == "Error" and "last bucket" in result.message


def test_specs_without_opt_ins_query_nothing_new() -> None:
    spec = api.parse_spec(raw_spec())
    queries = checks.build_queries(
        spec=spec, name="iris", namespace=None, source="router",
        status=api.ModelDeploymentStatus(step_started_at=T0), at=T0 + timedelta(minutes=1),
    )  # fmt: skip
    # ... but the held-out figures of both tracks, shown and never judged without offlineGate.
    offline = {
        m.offline_name(track, kind)
        for track in ("canary", "stable")
        for kind in ("figures", "rows")
    }
    assert set(queries) == {n for n in m.BUILTIN_CHECKS if n != m.SHADOW_AGREEMENT} | offline


def test_a_baseline_needs_an_allowance() -> None:
    raw = raw_spec()
    raw["analysis"]["baseline"] = {}
    with pytest.raises(ValueError, match="at least one allowance"):
        api.parse_spec(raw)


# --- verdicts ---------------------------------------------------------------------------------


def test_clear_failure_is_failed_with_its_interval_and_evidence() -> None:
    result = judged(sequential_spec(), counts(canary=(20, 60)))[m.ERROR_RATE]
    assert result.verdict == "Failed" and result.sequential
    assert result.low is not None and result.high is not None
    assert result.low > 0.05 and result.low < 20 / 60 < result.high
    assert result.evidence >= 100 and result.samples == 60
    assert "with evidence" in result.message and "20 of 60 requests" in result.message


def test_few_requests_are_not_sure_yet_and_say_how_many_more() -> None:
    result = judged(sequential_spec(), counts(canary=(0, 20)))[m.ERROR_RATE]
    assert result.verdict == "Inconclusive" and result.collecting
    assert result.requests_needed is not None and result.requests_needed > 0
    assert f"about {result.requests_needed} more" in result.message
    record = result.record()
    assert record.requests_needed == result.requests_needed and record.samples == 20


def test_many_clean_requests_pass_every_sequential_check() -> None:
    results = judged(sequential_spec(), counts(canary=(0, 600)))
    assert results[m.ERROR_RATE].verdict == "Successful"
    assert results[m.SLOW_REQUESTS].verdict == "Successful"
    # Shown, not judged: the window's minRequests gate does not apply.
    assert results[m.REQUESTS].value == 600 and results[m.REQUESTS].verdict == "Successful"
    assert results[m.LATENCY_P99].verdict == "Successful"


def test_a_canary_much_worse_than_stable_fails_the_comparison_under_the_bound() -> None:
    # 3 % errors: within maxErrorRate 5 %, but 30 times stable's 0.1 %.
    spec = sequential_spec(baseline={"maxErrorRateRatio": 2, "maxErrorRateIncrease": 0.01})
    results = judged(spec, counts(canary=(60, 2000), stable=(20, 20000)))
    assert results[m.ERROR_RATE].verdict != "Failed"
    comparison = results[m.ERROR_RATE_VS_STABLE]
    assert comparison.verdict == "Failed"
    assert comparison.value == pytest.approx(30.0)
    assert comparison.low > 2


def test_a_canary_like_stable_passes_the_comparison() -> None:
    spec = sequential_spec(baseline={"maxErrorRateRatio": 2, "maxErrorRateIncrease": 0.01})
    results = judged(spec, counts(canary=(20, 4000), stable=(200, 40000)))
    assert results[m.ERROR_RATE_VS_STABLE].verdict == "Successful"


def test_slow_requests_are_compared_too() -> None:
    spec = sequential_spec(baseline={"maxSlowRatio": 2})
    results = judged(spec, counts(canary=(0, 1000), stable=(0, 10000), slow=(100, 100)))
    assert results[m.SLOW_REQUESTS].verdict == "Failed"
    assert results[m.SLOW_REQUESTS_VS_STABLE].verdict == "Failed"
    assert m.ERROR_RATE_VS_STABLE not in results


def test_missing_counts_are_no_data_and_unreadable_ones_errors() -> None:
    spec = sequential_spec()
    assert judged(spec, {})[m.ERROR_RATE].verdict == "Inconclusive"
    assert not judged(spec, {})[m.ERROR_RATE].collecting
    samples = {**{n: Sample(v) for n, v in GOOD.items()}}
    samples[m.count_name("canary", "errors")] = Sample.failed("timeout")
    samples[m.count_name("canary", "requests")] = Sample(10.0)
    results = verdicts.judge(spec=spec, measurements=Measurements(time=T0, samples=samples))
    assert {r.name: r.verdict for r in results}[m.ERROR_RATE] == "Error"


def test_calibrated_drift_gate_judges_p_values_and_shows_psi() -> None:
    raw = raw_spec()
    raw["analysis"]["thresholds"] = {"driftSignificance": 0.01}
    spec = api.parse_spec(raw)
    # A large PSI with nothing significant (a small window's noise) fails nothing.
    quiet = judged(spec, {m.DRIFT: 3.0, m.DRIFT_P_VALUE: 0.4, m.PREDICTION_DRIFT_P_VALUE: 0.9})
    assert all(result.verdict == "Successful" for result in quiet.values())
    assert quiet[m.DRIFT].value == 3.0
    drifted = judged(spec, {m.DRIFT_P_VALUE: 1e-6, m.PREDICTION_DRIFT_P_VALUE: 0.9})
    assert drifted[m.DRIFT_P_VALUE].verdict == "Failed"
    assert judged(spec, {})[m.DRIFT_P_VALUE].verdict == "Inconclusive"  # no window yet


def test_p_value_queries_take_the_smallest_feature_over_replicas() -> None:
    raw = raw_spec()
    raw["analysis"]["thresholds"] = {"driftSignificance": 0.01}
    queries = checks.build_queries(
        spec=api.parse_spec(raw), name="iris", namespace=None, source="router"
    )
    assert queries[m.DRIFT_P_VALUE].startswith("clamp_max(min by (feature) (")
    assert "count by (feature)" in queries[m.DRIFT_P_VALUE]
    assert Sample.worst_of({"a": 0.5, "b": 0.001}, lowest=True).value == 0.001


# --- the rollout ------------------------------------------------------------------------------


def test_a_sequential_failure_rolls_back_at_once() -> None:
    run = Run(sequential_spec())  # failureLimit 2: a window failure would need two
    run.start()
    decision = run.analyse(counts(canary=(20, 60)), after=2)
    assert decision.action == "rollback"
    assert "sequential decision" in decision.status.history[-1].reason
    [check] = [c for c in decision.status.last_analysis.checks if c.name == m.ERROR_RATE]
    assert check.evidence is not None and check.low is not None and check.samples == 60


def test_not_sure_yet_holds_the_weight_without_stalling() -> None:
    run = Run(sequential_spec())
    run.start()
    # Far longer than progressDeadline (10m) of holds, requests arriving slowly.
    for minute in range(1, 30):
        decision = run.analyse(counts(canary=(0, minute)), after=60)
        assert decision.action == "hold"
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == "CollectingEvidence"
    assert "more canary requests to decide" in progressing.message
    stalled = condition(run.status, "Stalled")
    assert stalled is None or stalled.status == "False"


def test_evidence_of_a_good_canary_steps_up_after_the_interval() -> None:
    run = Run(sequential_spec())
    run.start()
    assert run.analyse(counts(canary=(0, 50)), after=15).action == "hold"
    assert run.analyse(counts(canary=(1, 700)), after=15).action == "stepUp"
    assert run.status.current_step == 1


def test_the_sequential_record_survives_the_api_round_trip() -> None:
    run = Run(sequential_spec())
    run.start()
    run.analyse(counts(canary=(1, 20)), after=2)
    raw = run.status.model_dump(by_alias=True, mode="json")
    [check] = [c for c in raw["lastAnalysis"]["checks"] if c["name"] == m.ERROR_RATE]
    assert {"low", "high", "evidence", "samples", "requestsNeeded"} <= set(check)
    assert api.parse_status(raw).last_analysis == run.status.last_analysis
    assert rollout.HELD_REASONS[-1] == "CollectingEvidence"


# --- the canary's predictions against stable's (baseline.maxPredictionShift) ------------------


def shift_spec(shift: float = 0.05) -> api.ModelDeploymentSpec:
    return sequential_spec(baseline={"maxPredictionShift": shift})


def judged_predictions(
    spec: api.ModelDeploymentSpec,
    canary: dict[str, float] | Sample,
    stable: dict[str, float] | Sample,
) -> verdicts.CheckResult:
    samples = {name: Sample(v) for name, v in {**GOOD, **counts(canary=(0, 1))}.items()}
    for track, bins in (("canary", canary), ("stable", stable)):
        name = m.count_name(track, m.PREDICTIONS)
        samples[name] = bins if isinstance(bins, Sample) else Sample.every(bins)
    results = verdicts.judge(spec=spec, measurements=Measurements(time=T0, samples=samples))
    [result] = [r for r in results if r.name == m.PREDICTIONS_VS_STABLE]
    return result


STABLE_BINS = {"0": 33_000.0, "1": 33_500.0, "2": 33_500.0}


def test_max_prediction_shift_is_optional_and_alone_an_allowance() -> None:
    assert api.BaselineSpec(max_error_rate_ratio=2).max_prediction_shift is None
    assert shift_spec(0.05).analysis.baseline.max_prediction_shift == 0.05  # type: ignore[union-attr]
    for bad in (0, -0.1, 1.5):
        with pytest.raises(ValueError):
            shift_spec(bad)
    schema = api.BaselineSpec.model_json_schema(by_alias=True)
    field = schema["properties"]["maxPredictionShift"]
    assert "exclusiveMinimum" not in str(field) and "maxPredictionShift" not in schema.get(
        "required", []
    )
    rules = schema["x-kubernetes-validations"][0]["rule"]
    assert "has(self.maxPredictionShift)" in rules


def test_predictions_per_bin_are_queried_for_both_tracks_by_bin() -> None:
    status = api.ModelDeploymentStatus(
        step_started_at=T0, stable_model=api.ModelIdentity(uri="s3://m/0", version="0.9")
    )
    queries = checks.build_queries(
        spec=shift_spec(), name="iris", namespace="ml", source="router", status=status,
        at=T0 + timedelta(seconds=30),
    )  # fmt: skip
    stable = queries[m.count_name("stable", m.PREDICTIONS)]
    canary = queries[m.count_name("canary", m.PREDICTIONS)]
    assert stable.startswith(f"sum by ({telemetry.BIN_LABEL})(")
    assert f"@ {T0.timestamp():.3f}) >= 0 or {telemetry.PREDICTIONS_TOTAL}" in stable
    # Only servers predict: no `source`; the stable track by the version it serves.
    assert 'track="stable",version="0.9"}' in stable and "source=" not in stable
    assert 'track="canary",version="1.1.0"}' in canary
    # Without the field (another allowance only), nothing of it is queried.
    plain = checks.build_queries(
        spec=sequential_spec(baseline={"maxErrorRateRatio": 2}), name="iris", namespace="ml",
        source="router", status=status, at=T0 + timedelta(seconds=30),
    )  # fmt: skip
    assert not any("Predictions" in name for name in plain)


def test_a_canary_predicting_like_stable_passes_with_enough_rows() -> None:
    result = judged_predictions(shift_spec(), {"0": 3300, "1": 3400, "2": 3300}, STABLE_BINS)
    assert result.verdict == "Successful" and result.sequential
    assert result.value == pytest.approx(0.005) and result.max == 0.05
    assert result.low is not None and result.high is not None
    assert -0.05 < result.low < result.high < 0.05 and result.samples == 10_000


def test_a_canary_predicting_one_class_20_points_more_often_fails_and_rolls_back() -> None:
    canary = {"0": 530, "1": 140, "2": 330}
    result = judged_predictions(shift_spec(), canary, STABLE_BINS)
    assert result.verdict == "Failed" and result.value == pytest.approx(0.2)
    assert result.low is not None and result.low > 0.05
    assert "bin '0'" in result.message and "+20.0 points" in result.message
    assert "'1' -19.5 points" in result.message  # the next worst, named too
    run = Run(shift_spec())
    run.start()
    values: dict[str, float | Sample | None] = {
        **counts(canary=(0, 1000), stable=(0, 10000)),
        m.count_name("canary", m.PREDICTIONS): Sample.every(canary),
        m.count_name("stable", m.PREDICTIONS): Sample.every(STABLE_BINS),
    }
    decision = run.analyse(values, after=2)
    assert decision.action == "rollback", decision
    [check] = [c for c in run.status.last_analysis.checks if c.name == m.PREDICTIONS_VS_STABLE]
    assert check.low is not None and check.samples == 1000


def test_few_rows_are_not_sure_yet_and_missing_ones_no_data() -> None:
    result = judged_predictions(shift_spec(), {"0": 33, "1": 34, "2": 33}, STABLE_BINS)
    assert result.verdict == "Inconclusive" and result.collecting
    assert result.requests_needed is not None and "not sure yet" in result.message
    # No series yet (no row predicted since the step began): not sure yet, without a count.
    empty = judged_predictions(shift_spec(), {}, STABLE_BINS)
    assert empty.verdict == "Inconclusive" and "no canary predictions" in empty.message
    # A failed query is an Error; bins of different edges on both sides cannot be compared.
    failed = judged_predictions(shift_spec(), Sample.failed("timeout"), STABLE_BINS)
    assert failed.verdict == "Error"
    apart = judged_predictions(shift_spec(), {"1.5": 10, "+Inf": 5}, {"1.7": 10, "+Inf": 5})
    assert apart.verdict == "Error" and "bins differ" in apart.message
    # A class only one track predicts is still compared (its share on the other is 0).
    like = {"0": 3300.0, "1": 3400.0, "2": 3300.0, "3": 0.0}
    assert judged_predictions(shift_spec(), like, STABLE_BINS).verdict == "Successful"
