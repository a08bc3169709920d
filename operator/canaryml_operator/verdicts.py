"""Verdicts: each check of one analysis judged against its bounds, and the analysis's overall
verdict and record (status.lastAnalysis).

Pure functions of (spec, measurements), below the rollout core, which acts on them; the demo's
report and `canaryml status` read them too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from canaryml_api import resource as api

from canaryml_operator import measurements as m

Verdict = api.Verdict


@dataclass(frozen=True)
class CheckResult:
    name: str
    verdict: Verdict
    value: float | None
    min: float | None = None
    max: float | None = None
    message: str = ""

    def record(self) -> api.CheckRecord:
        return api.CheckRecord(
            name=self.name,
            verdict=self.verdict,
            value=_finite(self.value),
            min=self.min,
            max=self.max,
            message=self.message,
        )


def _finite(value: float | None) -> float | None:
    """JSON (and so the status) has no infinity: such a value is told in the message only."""
    return value if value is not None and math.isfinite(value) else None


def judge_value(
    *,
    name: str,
    sample: m.Sample,
    min: float | None = None,
    max: float | None = None,
    gate: str | None = None,
) -> CheckResult:
    """One check's verdict. `gate` names why the value cannot be trusted yet (too few
    requests): the check is then Inconclusive whatever its value."""
    if sample.error is not None:
        return CheckResult(name, "Error", None, min, max, f"{name}: {sample.error}")
    value = sample.value
    if value is None or math.isnan(value):
        return CheckResult(name, "Inconclusive", None, min, max, f"{name}: no data")
    problem = m.impossible(name, value)
    if problem is not None:
        return CheckResult(name, "Error", value, min, max, f"{name}: {problem}")
    if gate is not None:
        return CheckResult(name, "Inconclusive", value, min, max, f"{name}: {gate}")
    if max is not None and value > max:
        shown, bound = m.compared_texts(name, value, max)
        message = f"{name} {shown} > max {bound}"
        # A value per feature (drift): which ones are over, so a person knows where to look.
        over = [(feature, each) for feature, each in sample.features if each > max]
        if over:
            message += f" ({m.features_text(name, over)})"
        return CheckResult(name, "Failed", value, min, max, message)
    if min is not None and value < min:
        shown, bound = m.compared_texts(name, value, min)
        return CheckResult(name, "Failed", value, min, max, f"{name} {shown} < min {bound}")
    return CheckResult(name, "Successful", value, min, max, "")


def judge(*, spec: api.ModelDeploymentSpec, measurements: m.Measurements) -> list[CheckResult]:
    """Every check of one analysis, built-ins first, then the custom metrics."""
    analysis, limits = spec.analysis, spec.analysis.thresholds
    requests = measurements.get(m.REQUESTS)
    results = [_judge_requests(requests, analysis.min_requests)]
    few = (
        None
        if results[0].verdict == "Successful"
        else f"too few canary requests ({results[0].message})"
    )
    results += [
        judge_value(
            name=m.ERROR_RATE,
            sample=measurements.get(m.ERROR_RATE),
            max=limits.max_error_rate,
            gate=few,
        ),
        judge_value(
            name=m.LATENCY_P99,
            sample=measurements.get(m.LATENCY_P99),
            max=api.parse_duration(limits.max_latency_p99),
            gate=few,
        ),
        # Drift comes from the servers' own windows, which hold enough rows or no series.
        judge_value(name=m.DRIFT, sample=measurements.get(m.DRIFT), max=limits.max_drift),
        judge_value(
            name=m.PREDICTION_DRIFT,
            sample=measurements.get(m.PREDICTION_DRIFT),
            max=limits.max_prediction_drift,
        ),
    ]
    if spec.shadow is not None and spec.shadow.percent > 0:
        results.append(
            judge_value(
                name=m.SHADOW_AGREEMENT,
                sample=measurements.get(m.SHADOW_AGREEMENT),
                min=limits.min_shadow_agreement,
            )
        )
    for metric in analysis.metrics:
        results.append(
            judge_value(
                name=metric.name,
                sample=measurements.get(metric.name),
                min=metric.min,
                max=metric.max,
            )
        )
    return results


def _judge_requests(sample: m.Sample, min_requests: int) -> CheckResult:
    low = float(min_requests)
    if sample.error is not None:
        return CheckResult(m.REQUESTS, "Error", None, low, None, f"requests: {sample.error}")
    count = sample.value if sample.value is not None and not math.isnan(sample.value) else 0.0
    problem = m.impossible(m.REQUESTS, count)
    if problem is not None:
        return CheckResult(m.REQUESTS, "Error", count, low, None, f"requests: {problem}")
    if count < low:
        shown, bound = m.compared_texts(m.REQUESTS, count, low)
        text = f"requests {shown} < minRequests {bound}"
        return CheckResult(m.REQUESTS, "Inconclusive", count, low, None, text)
    return CheckResult(m.REQUESTS, "Successful", count, low, None, "")


def overall(results: Sequence[CheckResult]) -> Verdict:
    """Failed beats Error beats Inconclusive beats Successful: a clear failure counts even
    when another query could not run."""
    verdicts = {result.verdict for result in results}
    for verdict in ("Failed", "Error", "Inconclusive"):
        if verdict in verdicts:
            return verdict
    return "Successful"


def build_record(
    *, results: Sequence[CheckResult], time: datetime, step: int | None, weight: int
) -> api.AnalysisRecord:
    values = {result.name: _finite(result.value) for result in results}
    return api.AnalysisRecord(
        time=time,
        verdict=overall(results),
        step=step,
        weight=weight,
        error_rate=values.get(m.ERROR_RATE),
        latency_p99=values.get(m.LATENCY_P99),
        drift=values.get(m.DRIFT),
        prediction_drift=values.get(m.PREDICTION_DRIFT),
        shadow_agreement=values.get(m.SHADOW_AGREEMENT),
        requests=values.get(m.REQUESTS),
        reasons=[result.message for result in results if result.verdict != "Successful"],
        checks=[result.record() for result in results],
    )
