"""Verdicts: each check of one analysis judged against its bounds, and the analysis's overall
verdict and record (status.lastAnalysis).

Pure functions of (spec, measurements), below the rollout core, which acts on them; the demo's
report and `canaryml status` read them too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Final, Literal

from canaryml_api import resource as api
from canaryml_api import telemetry as t

from canaryml_operator import evidence as ev
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
    # Sequential checks: decided on evidence since the step began (a Failed one rolls back at
    # once; an Inconclusive one with data is collecting evidence, not stalled).
    sequential: bool = False
    low: float | None = None
    high: float | None = None
    evidence: float | None = None
    samples: float | None = None
    requests_needed: int | None = None
    # Shown next to the checks that judge, never judged itself (PSI beside the drift test).
    informational: bool = False
    # A custom metric with dryRun: judged and recorded with the verdict it would have had,
    # left out of the analysis's verdict (it never fails or holds a rollout).
    dry_run: bool = False

    @property
    def collecting(self) -> bool:
        """Not sure yet, with data: more requests will decide."""
        return self.sequential and self.verdict == "Inconclusive" and self.samples is not None

    def record(self) -> api.CheckRecord:
        return api.CheckRecord(
            name=self.name,
            verdict=self.verdict,
            value=_finite(self.value),
            min=self.min,
            max=self.max,
            message=self.message,
            low=_finite(self.low),
            high=_finite(self.high),
            evidence=_finite(self.evidence),
            samples=self.samples,
            requests_needed=self.requests_needed,
            dry_run=True if self.dry_run else None,
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
    informational: bool = False,
) -> CheckResult:
    """One check's verdict. `gate` names why the value cannot be trusted yet (too few
    requests): the check is then Inconclusive whatever its value. An `informational` check is
    shown, never judged: Successful whatever it reads."""
    if informational:
        value = None if sample.value is None or math.isnan(sample.value) else sample.value
        note = "" if sample.error is None else f"{name} (not judged): {sample.error}"
        return CheckResult(name, "Successful", value, message=note, informational=True)
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
        message = f"{name} {shown} < min {bound}"
        under = [(feature, each) for feature, each in sample.features if each < min]
        if under:
            message += f" ({m.features_text(name, under)})"
        return CheckResult(name, "Failed", value, min, max, message)
    return CheckResult(name, "Successful", value, min, max, "")


def judge(
    *,
    spec: api.ModelDeploymentSpec,
    measurements: m.Measurements,
    step_started_at: datetime | None = None,
) -> list[CheckResult]:
    """Every check of one analysis, built-ins first, then the custom metrics.
    `step_started_at` (status.stepStartedAt) times the accuracy checks' label delay."""
    analysis, limits = spec.analysis, spec.analysis.thresholds
    if analysis.sequential_rates is not None:
        results = judge_sequential(
            spec=spec, measurements=measurements, step_started_at=step_started_at
        )
    else:
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
        ]
    calibrated = limits.drift_significance
    # Drift comes from the servers' own windows, which hold enough rows or no series. With a
    # calibrated gate, the PSI is the effect size shown next to the test: it fails nothing.
    results += [
        judge_value(
            name=m.DRIFT,
            sample=measurements.get(m.DRIFT),
            max=limits.max_drift if calibrated is None else None,
            informational=calibrated is not None,
        ),
        judge_value(
            name=m.PREDICTION_DRIFT,
            sample=measurements.get(m.PREDICTION_DRIFT),
            max=limits.max_prediction_drift if calibrated is None else None,
            informational=calibrated is not None,
        ),
    ]
    if calibrated is not None:
        results += [
            judge_value(name=name, sample=measurements.get(name), min=calibrated)
            for name in (m.DRIFT_P_VALUE, m.PREDICTION_DRIFT_P_VALUE)
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
        result = judge_value(
            name=metric.name,
            sample=measurements.get(metric.name),
            min=metric.min,
            max=metric.max,
        )
        results.append(dry_run(result) if metric.dry_run else result)
    return results


def dry_run(result: CheckResult) -> CheckResult:
    """A dry-run check (analysis.metrics[].dryRun): its own verdict kept, its message saying
    it did not count; `overall` leaves it out."""
    message = result.message
    if result.verdict != "Successful":
        message = f"dry run (not counted): {message}"
    return replace(result, dry_run=True, message=message)


# The share of requests allowed over the latency bound: "p99 <= bound" is "at most 1 % slower".
SLOW_SHARE: Final = 0.01
_SEQUENTIAL_VERDICTS: Final[Mapping[ev.Decision, Verdict]] = {
    ev.Decision.PASS: "Successful",
    ev.Decision.FAIL: "Failed",
    ev.Decision.UNDECIDED: "Inconclusive",
}


def judge_sequential(
    *,
    spec: api.ModelDeploymentSpec,
    measurements: m.Measurements,
    step_started_at: datetime | None = None,
) -> list[CheckResult]:
    """The sequential checks (analysis.sequential, analysis.baseline) on the counts since the
    step began: `requests` (shown, not judged: the evidence knows how many it rests on),
    `errorRate` against maxErrorRate, `slowRequests` (the share over the latency bound's
    bucket) against 1 % (p99 within the bound), `accuracy` against thresholds.minAccuracy,
    `meanAbsoluteError` against thresholds.maxMeanAbsoluteError, and with a baseline the canary
    against the stable track on each rate the baseline names (`accuracyVsStable` on
    baseline.maxAccuracyDrop, `errorVsStable` on baseline.maxErrorIncrease / maxErrorRatio)."""
    analysis = spec.analysis
    rates = analysis.sequential_rates
    assert rates is not None
    alpha, beta = rates.false_rollback_rate, rates.false_promotion_rate
    canary = _track_counts(measurements, "canary")
    requests = canary["requests"]
    results = [
        CheckResult(m.REQUESTS, "Successful", requests, message="", informational=True)
        if not isinstance(requests, _NoCount)
        else CheckResult(
            m.REQUESTS, "Successful", None, message=requests.reason, informational=True
        )
    ]
    max_error_rate = analysis.thresholds.max_error_rate
    results.append(
        _judge_bound(m.ERROR_RATE, canary, "errors", "requests", max_error_rate, alpha, beta)
    )
    # The window's p99 is still worth reading; slowRequests judges latency.
    latency = measurements.get(m.LATENCY_P99)
    results.append(judge_value(name=m.LATENCY_P99, sample=latency, informational=True))
    slow = m.slow_bound(spec)
    if slow is None:
        results.append(
            CheckResult(
                m.SLOW_REQUESTS,
                "Error",
                None,
                message=f"{m.SLOW_REQUESTS}: maxLatencyP99 "
                f"{analysis.thresholds.max_latency_p99} is past the latency histogram's last "
                "bucket: no request can be told slow",
                sequential=True,
            )
        )
    else:
        results.append(
            _judge_bound(m.SLOW_REQUESTS, canary, "slow", "timed", SLOW_SHARE, alpha, beta)
        )
    labels = _LabelRules.of(spec, measurements.time, step_started_at)
    min_accuracy = analysis.thresholds.min_accuracy
    if min_accuracy is not None:
        results.append(_judge_accuracy(measurements, min_accuracy, labels, alpha, beta))
    max_mae = analysis.thresholds.max_mean_absolute_error
    if max_mae is not None:
        results.append(_judge_mean_error(measurements, max_mae, labels, alpha, beta))
    baseline = analysis.baseline
    if baseline is not None:
        stable = _track_counts(measurements, "stable")
        parts = [
            (m.ERROR_RATE_VS_STABLE, "errors", "requests",
             baseline.max_error_rate_ratio, baseline.max_error_rate_increase),
            (m.SLOW_REQUESTS_VS_STABLE, "slow", "timed",
             baseline.max_slow_ratio, baseline.max_slow_increase),
        ]  # fmt: skip
        for name, events, total, ratio, increase in parts:
            if ratio is None and increase is None:
                continue
            allowance = ev.Allowance(ratio=ratio, increase=increase)
            results.append(
                _judge_comparison(name, canary, stable, events, total, allowance, alpha, beta)
            )
        if baseline.max_prediction_shift is not None:
            results.append(_judge_shares(measurements, baseline.max_prediction_shift, alpha, beta))
        if baseline.max_accuracy_drop is not None:
            results.append(
                _judge_accuracy_drop(measurements, baseline.max_accuracy_drop, labels, alpha, beta)
            )
        if baseline.compares_errors:
            error_allowance = ev.MeanAllowance(
                ratio=baseline.max_error_ratio, increase=baseline.max_error_increase
            )
            results.append(
                _judge_error_increase(measurements, error_allowance, labels, alpha, beta)
            )
    return results


@dataclass(frozen=True)
class _NoCount:
    """Why a count is missing: no data yet (Inconclusive) or a failed query (Error)."""

    verdict: Verdict
    reason: str


# A track's counts since the step began, by kind: a number, or why there is none.
_Counts = Mapping[str, float | _NoCount]


def _track_counts(measurements: m.Measurements, track: Literal["canary", "stable"]) -> _Counts:
    counts: dict[str, float | _NoCount] = {}
    for kind in m.COUNT_KINDS:
        sample = measurements.get(m.count_name(track, kind))
        if sample.error is not None:
            reason = f"{track} {kind} since the step began: {sample.error}"
            counts[kind] = _NoCount("Error", reason)
        elif sample.value is None or math.isnan(sample.value):
            counts[kind] = _NoCount("Inconclusive", f"no {track} counts since the step began yet")
        else:
            problem = m.impossible(m.REQUESTS, sample.value)
            # Extrapolated increases can be a hair below 0 or differ by a fraction: clip.
            counts[kind] = (
                _NoCount("Error", f"{track} {kind}: {problem}")
                if problem is not None
                else max(sample.value, 0.0)
            )
    return counts


def _pair(
    name: str, counts: _Counts, events: str, total: str, bound: float | None
) -> ev.Counts | CheckResult:
    """(events, requests) from `counts`, or the Error / no-data result of `name` (with its
    `bound`, a max) when absent."""
    x, n = counts[events], counts[total]
    for value in (x, n):
        if isinstance(value, _NoCount):
            message = f"{name}: {value.reason}"
            return CheckResult(
                name, value.verdict, None, max=bound, message=message, sequential=True
            )
    assert not isinstance(x, _NoCount) and not isinstance(n, _NoCount)
    return ev.Counts(events=min(x, n), requests=n)


def _judge_bound(
    name: str,
    counts: _Counts,
    events: str,
    total: str,
    bound: float,
    alpha: float,
    beta: float,
) -> CheckResult:
    pair = _pair(name, counts, events, total, bound)
    if isinstance(pair, CheckResult):
        return pair
    if bound >= 1 or bound <= 0:
        # Nothing to weigh: every rate is within 100 %; any event is over 0 %.
        failed = bound <= 0 and pair.events > 0
        message = f"{name} {m.value_text(name, pair.rate)} > max 0" if failed else ""
        return CheckResult(
            name, "Failed" if failed else "Successful", pair.rate, None, bound, message,
            sequential=True, samples=pair.requests,
        )  # fmt: skip
    check = ev.check_bound(pair.events, pair.requests, bound, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[check.decision]
    interval = f"{_rate(name, check.interval.low)}-{_rate(name, check.interval.high)}"
    seen = f"{pair.events:.0f} of {pair.requests:.0f} requests since the step began"
    estimate, limit = _rate(name, check.estimate), _rate(name, bound)
    if verdict == "Failed":
        message = (
            f"{name} {estimate} > max {limit} with evidence {check.evidence.worse:.3g} >= "
            f"{check.evidence.worse_needed:g} (interval {interval}; {seen})"
        )
    elif verdict == "Inconclusive":
        message = (
            f"{name} {estimate} against max {limit}: not sure yet (interval {interval}; "
            f"{seen}; {_needed_text(check.requests_needed)})"
        )
    else:
        message = ""
    return CheckResult(
        name, verdict, check.estimate, None, bound, message, sequential=True,
        low=check.interval.low, high=check.interval.high, evidence=check.evidence.worse,
        samples=pair.requests, requests_needed=check.requests_needed,
    )  # fmt: skip


def _judge_comparison(
    name: str,
    canary: _Counts,
    stable: _Counts,
    events: str,
    total: str,
    allowance: ev.Allowance,
    alpha: float,
    beta: float,
) -> CheckResult:
    ours = _pair(name, canary, events, total, allowance.ratio)
    if isinstance(ours, CheckResult):
        return ours
    theirs = _pair(name, stable, events, total, allowance.ratio)
    if isinstance(theirs, CheckResult):
        return theirs
    result = ev.compare_rates(ours, theirs, allowance, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[result.decision]
    rate_check = m.ERROR_RATE if events == "errors" else m.SLOW_REQUESTS
    ratio = result.ratio
    if ratio is None and ours.rate:
        ratio = math.inf  # events on the canary, none on stable
    allowed = " or ".join(
        part
        for part in (
            f"{allowance.ratio:g}x stable" if allowance.ratio is not None else "",
            f"stable + {_rate(rate_check, allowance.increase)}"
            if allowance.increase is not None
            else "",
        )
        if part
    )
    what = (
        f"canary {_rate(rate_check, ours.rate)} ({ours.events:.0f} of {ours.requests:.0f}) vs "
        f"stable {_rate(rate_check, theirs.rate)} ({theirs.events:.0f} of "
        f"{theirs.requests:.0f}) since the step began: ratio {_ratio(ratio)} (interval "
        f"{_ratio(result.ratio_interval.low)}-{_ratio(result.ratio_interval.high)}), increase "
        f"interval {_rate(rate_check, result.increase_interval.low)} to "
        f"{_rate(rate_check, result.increase_interval.high)}; allowed: {allowed}"
    )
    needed = _needed_text(result.requests_needed)
    message = _comparison_message(name, verdict, "worse than allowed", what, needed)
    return CheckResult(
        name, verdict, ratio, None, allowance.ratio, message, sequential=True,
        low=result.ratio_interval.low, high=result.ratio_interval.high,
        evidence=result.evidence.worse, samples=ours.requests,
        requests_needed=result.requests_needed,
    )  # fmt: skip


def _label_delay_hold(
    verdict: Verdict, needed: int | None, waiting: str | None
) -> tuple[Verdict, str, int | None] | None:
    """A label check's verdict while the step's label delay runs: Inconclusive, what the
    evidence says so far, and the labels still needed (none once it would pass: time has to
    pass, not labels); None when the delay does not hold it (a Failed, or no delay left)."""
    if verdict == "Failed" or not waiting:
        return None
    if verdict == "Successful":
        return "Inconclusive", "enough evidence to pass", None
    return "Inconclusive", "not sure yet", needed


def _comparison_message(name: str, verdict: Verdict, worse: str, what: str, needed: str) -> str:
    """A comparison's message: `worse` with evidence when Failed, "not sure yet" with what
    more is `needed` when Inconclusive, nothing when Successful."""
    if verdict == "Failed":
        return f"{name}: {worse}, with evidence: {what}"
    if verdict == "Inconclusive":
        return f"{name}: not sure yet: {what}; {needed}"
    return ""


def _bin_counts(
    measurements: m.Measurements, track: Literal["canary", "stable"]
) -> dict[str, float] | CheckResult:
    """A track's rows predicted per bin since the step began, or the Error / no-data result
    of predictionsVsStable when they cannot be had."""
    name = m.PREDICTIONS_VS_STABLE
    sample = measurements.get(m.count_name(track, m.PREDICTIONS))
    if sample.error is not None:
        message = f"{name}: {track} predictions since the step began: {sample.error}"
        return CheckResult(name, "Error", None, message=message, sequential=True)
    if sample.value is None:
        message = f"{name}: no {track} prediction counts since the step began yet"
        return CheckResult(name, "Inconclusive", None, message=message, sequential=True)
    for label, count in sample.features:
        problem = m.impossible(m.REQUESTS, count)
        if problem is not None:
            message = f"{name}: {track} predictions in bin {_bin(label)}: {problem}"
            return CheckResult(name, "Error", None, message=message, sequential=True)
    return {label: max(count, 0.0) for label, count in sample.features}


def _judge_shares(
    measurements: m.Measurements, shift: float, alpha: float, beta: float
) -> CheckResult:
    """predictionsVsStable: each bin's share of the canary's predictions against stable's."""
    name = m.PREDICTIONS_VS_STABLE
    canary = _bin_counts(measurements, "canary")
    if isinstance(canary, CheckResult):
        return canary
    stable = _bin_counts(measurements, "stable")
    if isinstance(stable, CheckResult):
        return stable
    # Each server exports every bin of its own profile from the start (at 0): bins only one
    # track has, on both sides, are bins of different edges (regressors profiled apart), whose
    # counts cannot be compared. A class only one side has is still a class (its share 0).
    only_canary, only_stable = set(canary) - set(stable), set(stable) - set(canary)
    if only_canary and only_stable:
        return CheckResult(
            name, "Error", None, max=shift, sequential=True,
            message=f"{name}: the canary's and stable's prediction bins differ (canary only: "
            f"{_labels(only_canary)}; stable only: {_labels(only_stable)}): a regressor's bins "
            "are its own reference profile's, so two versions' rarely match; compare "
            "classifiers, or drop analysis.baseline.maxPredictionShift",
        )  # fmt: skip
    rows = sum(canary.values())
    if not canary or not stable or rows <= 0 or sum(stable.values()) <= 0:
        track = "canary" if rows <= 0 else "stable"
        message = f"{name}: no {track} predictions since the step began yet"
        return CheckResult(
            name, "Inconclusive", None, max=shift, message=message, sequential=True,
            samples=rows if rows > 0 else None,
        )  # fmt: skip
    result = ev.compare_shares(canary, stable, shift, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[result.decision]
    worst = result.worst
    assert worst is not None
    what = (
        f"bin {_bin(worst.bin)}: canary {_share(worst.canary)} vs stable {_share(worst.stable)} "
        f"since the step began, difference {_points(worst.difference)} (interval "
        f"{worst.interval.low * 100:+.1f} to {worst.interval.high * 100:+.1f}); allowed: "
        f"±{shift * 100:g} points"
    )
    others = [b for b in result.bins[1 : m.WORST_FEATURES_KEPT] if b.difference]
    if others:
        what += "; next: " + ", ".join(f"{_bin(b.bin)} {_points(b.difference)}" for b in others)
    needed = _needed_text(result.requests_needed)
    message = _comparison_message(name, verdict, "predicts differently from stable", what, needed)
    value = abs(worst.difference) if worst.difference is not None else None
    return CheckResult(
        name, verdict, value, None, shift, message, sequential=True,
        low=worst.interval.low, high=worst.interval.high, samples=worst.canary.requests,
        requests_needed=result.requests_needed,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Accuracy on labels (thresholds.minAccuracy, baseline.maxAccuracyDrop)


@dataclass(frozen=True)
class _LabelRules:
    """analysis.labels as one analysis applies it: the labels a track needs, and whether the
    step is still within the label delay (and for how long)."""

    min_labels: int
    delay: str
    delay_left: float  # seconds of the delay still to run; 0 past it

    @classmethod
    def of(
        cls, spec: api.ModelDeploymentSpec, now: datetime, step_started_at: datetime | None
    ) -> _LabelRules:
        rules = spec.analysis.label_rules
        delay = api.parse_duration(rules.delay)
        if delay <= 0:
            left = 0.0
        elif step_started_at is None:
            left = delay  # the step's age is unknown: the delay has not run
        else:
            left = max(delay - (now - step_started_at).total_seconds(), 0.0)
        return cls(min_labels=rules.min_labels, delay=rules.delay, delay_left=left)

    @property
    def waiting(self) -> str | None:
        """Why no accuracy check may pass yet because of the delay; None past it."""
        if self.delay_left <= 0:
            return None
        return (
            f"labels of this step's predictions may not have arrived (label delay "
            f"{self.delay}, {_seconds_text(self.delay_left)} left)"
        )


@dataclass(frozen=True)
class _LabelCounts:
    """One track's labels that arrived since the step began, and the correct ones."""

    track: Literal["canary", "stable"]
    labelled: float
    correct: float

    @property
    def errors(self) -> ev.Counts:
        """The wrong predictions of the labelled: accuracy as an error rate on labels."""
        return ev.Counts(events=self.labelled - self.correct, requests=self.labelled)

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.labelled if self.labelled > 0 else None

    @property
    def text(self) -> str:
        return f"{self.track} {self.correct:.0f} of {self.labelled:.0f} correct"


def _label_counts(
    name: str, measurements: m.Measurements, track: Literal["canary", "stable"]
) -> _LabelCounts | CheckResult:
    """A track's label counts since the step began, or the Error / no-data result of `name`
    when they cannot be had."""
    numbers: dict[str, float | None] = {}
    for kind in m.LABEL_KINDS:
        sample = measurements.get(m.count_name(track, kind))
        what = f"{name}: {track} {kind} labels since the step began"
        if sample.error is not None:
            return CheckResult(
                name, "Error", None, message=f"{what}: {sample.error}", sequential=True
            )
        if sample.value is None or math.isnan(sample.value):
            numbers[kind] = None
            continue
        problem = m.impossible(m.REQUESTS, sample.value)
        if problem is not None:
            return CheckResult(name, "Error", None, message=f"{what}: {problem}", sequential=True)
        numbers[kind] = max(sample.value, 0.0)
    labelled, correct = numbers["labelled"], numbers["correct"]
    if labelled is None:
        message = f"{name}: no {track} label counts since the step began yet"
        return CheckResult(name, "Inconclusive", None, message=message, sequential=True)
    if labelled > 0 and correct is None:
        # The servers count correct predictions for classifiers only: a regressor's labels
        # have no accuracy (not an accuracy of 0).
        return CheckResult(
            name, "Error", None, sequential=True,
            message=f"{name}: {labelled:.0f} {track} labels since the step began but no "
            f"count of correct ones ({t.FEEDBACK_CORRECT_TOTAL}): accuracy checks are for "
            "classifiers; a regressor's servers count errors, not correct predictions",
        )  # fmt: skip
    return _LabelCounts(track, labelled, min(correct or 0.0, labelled))


def _label_gate(
    name: str,
    tracks: Sequence[_LabelCounts | _ErrorCounts],
    rules: _LabelRules,
    *,
    value: float | None,
    bound: tuple[float | None, float | None],
) -> CheckResult | None:
    """Inconclusive while a track has fewer than minLabels labels (neither pass nor fail on a
    handful of labels), saying how many there are and how many more are needed; None when
    every track has enough."""
    short = [t for t in tracks if t.labelled < rules.min_labels]
    if not short:
        return None
    needed = max(math.ceil(rules.min_labels - t.labelled) for t in short)
    counted = "; ".join(
        f"{t.labelled:.0f} {t.track} labels since the step began, minLabels {rules.min_labels} "
        f"({math.ceil(rules.min_labels - t.labelled)} more needed)"
        for t in short
    )
    waiting = rules.waiting
    message = f"{name}: not sure yet: {counted}" + (f"; {waiting}" if waiting else "")
    canary = tracks[0]
    # No label at all once the delay has run is not "collecting": labels may not be sent at
    # all, and a hold that long is a stall a person should look at.
    samples = canary.labelled if canary.labelled > 0 or waiting else None
    return CheckResult(
        name, "Inconclusive", value, bound[0], bound[1], message, sequential=True,
        samples=samples, requests_needed=needed,
    )  # fmt: skip


def _judge_accuracy(
    measurements: m.Measurements,
    min_accuracy: float,
    rules: _LabelRules,
    alpha: float,
    beta: float,
) -> CheckResult:
    """accuracy: the canary's wrong predictions among its labels since the step began against
    the error rate 1 - minAccuracy, with `check_bound` (the test errorRate uses), read back as
    an accuracy. Never decided below minLabels labels; never passed within the label delay."""
    name = m.ACCURACY
    canary = _label_counts(name, measurements, "canary")
    if isinstance(canary, CheckResult):
        return replace(canary, min=min_accuracy)
    accuracy = canary.accuracy
    gated = _label_gate(name, [canary], rules, value=accuracy, bound=(min_accuracy, None))
    if gated is not None:
        return gated
    errors, bound = canary.errors, 1 - min_accuracy
    seen = f"{canary.correct:.0f} of {canary.labelled:.0f} labels correct since the step began"
    waiting = rules.waiting
    if bound <= 0 or bound >= 1:
        # Nothing to weigh: minAccuracy 1 fails on any wrong prediction, 0 on none.
        failed = bound <= 0 and errors.events > 0
        verdict: Verdict = "Failed" if failed else "Successful"
        message = f"{name} {_rate(name, accuracy)} < min 100 % ({seen})" if failed else ""
        if not failed and waiting:
            verdict, message = "Inconclusive", f"{name}: {waiting}"
        return CheckResult(
            name, verdict, accuracy, min_accuracy, None, message, sequential=True,
            samples=canary.labelled,
        )  # fmt: skip
    check = ev.check_bound(errors.events, errors.requests, bound, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[check.decision]
    low, high = 1 - check.interval.high, 1 - check.interval.low
    interval = f"{_rate(name, low)}-{_rate(name, high)}"
    estimate, limit = _rate(name, accuracy), _rate(name, min_accuracy)
    needed = check.requests_needed
    if verdict == "Failed":
        message = (
            f"{name} {estimate} < min {limit} with evidence {check.evidence.worse:.3g} >= "
            f"{check.evidence.worse_needed:g} (interval {interval}; {seen})"
        )
    elif verdict == "Inconclusive":
        message = (
            f"{name} {estimate} against min {limit}: not sure yet (interval {interval}; "
            f"{seen}; {_labels_needed_text(needed)})"
        )
    else:
        message = ""
    held = _label_delay_hold(verdict, needed, waiting)
    if held is not None:
        # The labels so far may be the quick ones: no pass before the late ones could arrive.
        verdict, shown, needed = held
        message = (
            f"{name} {estimate} against min {limit}: {shown}, but {waiting} (interval "
            f"{interval}; {seen})"
        )
    return CheckResult(
        name, verdict, accuracy, min_accuracy, None, message, sequential=True,
        low=low, high=high, evidence=check.evidence.worse, samples=canary.labelled,
        requests_needed=needed,
    )  # fmt: skip


def _judge_accuracy_drop(
    measurements: m.Measurements,
    drop: float,
    rules: _LabelRules,
    alpha: float,
    beta: float,
) -> CheckResult:
    """accuracyVsStable: the canary's error rate on labels against stable's with
    `compare_rates` and the allowance "stable's + maxAccuracyDrop" (no ratio part: a drop
    is in points), read back as canary accuracy - stable accuracy, at least -maxAccuracyDrop.
    Never decided below minLabels labels on either track; never passed within the delay."""
    name = m.ACCURACY_VS_STABLE
    floor = -drop
    tracks = []
    for track in ("canary", "stable"):
        counts = _label_counts(name, measurements, track)
        if isinstance(counts, CheckResult):
            return replace(counts, min=floor)
        tracks.append(counts)
    canary, stable = tracks
    difference = (
        canary.accuracy - stable.accuracy
        if canary.accuracy is not None and stable.accuracy is not None
        else None
    )
    gated = _label_gate(name, tracks, rules, value=difference, bound=(floor, None))
    if gated is not None:
        return gated
    result = ev.compare_rates(
        canary.errors, stable.errors, ev.Allowance(increase=drop), alpha=alpha, beta=beta
    )
    verdict = _SEQUENTIAL_VERDICTS[result.decision]
    # The increase of the error rate, flipped: the accuracy difference and its interval.
    low, high = -result.increase_interval.high, -result.increase_interval.low
    what = (
        f"canary {_rate(m.ACCURACY, canary.accuracy)} ({canary.correct:.0f} of "
        f"{canary.labelled:.0f} labels correct) vs stable {_rate(m.ACCURACY, stable.accuracy)} "
        f"({stable.correct:.0f} of {stable.labelled:.0f}) since the step began: difference "
        f"{_points(difference)} (interval {_points(low)} to {_points(high)}); allowed: "
        f"{drop * 100:g} points less than stable"
    )
    needed = result.requests_needed
    waiting = rules.waiting
    message = _comparison_message(
        name, verdict, "less accurate than allowed", what, _labels_needed_text(needed)
    )
    held = _label_delay_hold(verdict, needed, waiting)
    if held is not None:
        verdict, shown, needed = held
        message = f"{name}: {shown}, but {waiting}: {what}"
    return CheckResult(
        name, verdict, difference, floor, None, message, sequential=True,
        low=low, high=high, samples=canary.labelled, requests_needed=needed,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# A regressor's errors on labels (thresholds.maxMeanAbsoluteError, baseline.maxErrorIncrease,
# baseline.maxErrorRatio)


@dataclass(frozen=True)
class _ErrorCounts:
    """One track's labels that arrived since the step began, and the sums of their absolute
    and squared errors."""

    track: Literal["canary", "stable"]
    labelled: float
    absolute: float
    squared: float

    @property
    def sums(self) -> ev.ErrorSums:
        return ev.ErrorSums(labels=self.labelled, absolute=self.absolute, squared=self.squared)


_ERROR_KIND_TEXTS: Final[Mapping[str, str]] = {
    "labelled": "labels",
    "absoluteErrors": "sum of absolute errors",
    "squaredErrors": "sum of squared errors",
}


def _error_counts(
    name: str, measurements: m.Measurements, track: Literal["canary", "stable"]
) -> _ErrorCounts | CheckResult:
    """A track's labels since the step began and the sums of their errors, or the Error /
    no-data result of `name` when they cannot be had."""
    numbers: dict[str, float | None] = {}
    for kind in m.ERROR_KINDS:
        sample = measurements.get(m.count_name(track, kind))
        what = f"{name}: {track} {_ERROR_KIND_TEXTS[kind]} since the step began"
        if sample.error is not None:
            return CheckResult(
                name, "Error", None, message=f"{what}: {sample.error}", sequential=True
            )
        if sample.value is None or math.isnan(sample.value):
            numbers[kind] = None
            continue
        problem = m.impossible(m.REQUESTS, sample.value)
        if problem is not None:
            return CheckResult(name, "Error", None, message=f"{what}: {problem}", sequential=True)
        numbers[kind] = max(sample.value, 0.0)
    labelled, absolute, squared = (numbers[kind] for kind in m.ERROR_KINDS)
    if labelled is None:
        message = f"{name}: no {track} label counts since the step began yet"
        return CheckResult(name, "Inconclusive", None, message=message, sequential=True)
    if labelled > 0 and (absolute is None or squared is None):
        # The servers sum errors for regressors only: a classifier's labels have no error
        # (not an error of 0).
        return CheckResult(
            name, "Error", None, sequential=True,
            message=f"{name}: {labelled:.0f} {track} labels since the step began but no sums "
            f"of their errors ({t.FEEDBACK_ABSOLUTE_ERROR_TOTAL}, "
            f"{t.FEEDBACK_SQUARED_ERROR_TOTAL}): error checks are for regressors; a "
            "classifier's servers count correct predictions, not errors",
        )  # fmt: skip
    return _ErrorCounts(track, labelled, absolute or 0.0, squared or 0.0)


def _judge_mean_error(
    measurements: m.Measurements,
    max_error: float,
    rules: _LabelRules,
    alpha: float,
    beta: float,
) -> CheckResult:
    """meanAbsoluteError: the canary's mean absolute error on its labels since the step began
    against thresholds.maxMeanAbsoluteError, with `check_mean` (an asymptotic confidence
    sequence: errors are unbounded). Never decided below minLabels labels; never passed within
    the label delay; a failure with evidence rolls back at once, as for accuracy."""
    name = m.MEAN_ABSOLUTE_ERROR
    canary = _error_counts(name, measurements, "canary")
    if isinstance(canary, CheckResult):
        return replace(canary, max=max_error)
    sums = canary.sums
    gated = _label_gate(name, [canary], rules, value=sums.mean, bound=(None, max_error))
    if gated is not None:
        return gated
    check = ev.check_mean(sums, max_error, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[check.decision]
    interval = f"{_amount(name, check.interval.low)}-{_amount(name, check.interval.high)}"
    seen = (
        f"{canary.labelled:.0f} labels since the step began, |error| sd "
        f"{_amount(name, sums.deviation)}"
    )
    estimate, limit = m.compared_texts(name, sums.mean or 0.0, max_error)
    needed = check.labels_needed
    if verdict == "Failed":
        message = f"{name} {estimate} > max {limit} with evidence: interval {interval} ({seen})"
    elif verdict == "Inconclusive":
        message = (
            f"{name} {estimate} against max {limit}: not sure yet (interval {interval}; "
            f"{seen}; {_labels_needed_text(needed)})"
        )
    else:
        message = ""
    waiting = rules.waiting
    held = _label_delay_hold(verdict, needed, waiting)
    if held is not None:
        # The labels so far may be the quick ones: no pass before the late ones could arrive.
        verdict, shown, needed = held
        message = (
            f"{name} {estimate} against max {limit}: {shown}, but {waiting} (interval "
            f"{interval}; {seen})"
        )
    return CheckResult(
        name, verdict, sums.mean, None, max_error, message, sequential=True,
        low=check.interval.low, high=check.interval.high, samples=canary.labelled,
        requests_needed=needed,
    )  # fmt: skip


def _judge_error_increase(
    measurements: m.Measurements,
    allowance: ev.MeanAllowance,
    rules: _LabelRules,
    alpha: float,
    beta: float,
) -> CheckResult:
    """errorVsStable: the canary's mean absolute error on labels against stable's with
    `compare_means` and the allowance max(maxErrorRatio x stable's, stable's +
    maxErrorIncrease), read as canary MAE - stable MAE (its max maxErrorIncrease; none with a
    ratio alone, which the message tells). Never decided below minLabels labels on either
    track; never passed within the delay."""
    name = m.ERROR_VS_STABLE
    ceiling = allowance.increase
    tracks = []
    for track in ("canary", "stable"):
        counts = _error_counts(name, measurements, track)
        if isinstance(counts, CheckResult):
            return replace(counts, max=ceiling)
        tracks.append(counts)
    canary, stable = tracks
    mean_c, mean_s = canary.sums.mean, stable.sums.mean
    difference = mean_c - mean_s if mean_c is not None and mean_s is not None else None
    gated = _label_gate(name, tracks, rules, value=difference, bound=(None, ceiling))
    if gated is not None:
        return gated
    result = ev.compare_means(canary.sums, stable.sums, allowance, alpha=alpha, beta=beta)
    verdict = _SEQUENTIAL_VERDICTS[result.decision]
    low, high = result.difference_interval.low, result.difference_interval.high
    allowed = " or ".join(
        part
        for part in (
            f"{allowance.ratio:g}x stable's" if allowance.ratio is not None else "",
            f"stable's + {_amount(name, allowance.increase)}"
            if allowance.increase is not None
            else "",
        )
        if part
    )
    what = (
        f"canary MAE {_amount(name, mean_c)} ({canary.labelled:.0f} labels) vs stable "
        f"{_amount(name, mean_s)} ({stable.labelled:.0f}) since the step began: difference "
        f"{_signed(name, difference)} (interval {_signed(name, low)} to {_signed(name, high)}), "
        f"ratio {_ratio(result.ratio)} (interval {_ratio(result.ratio_interval.low)}-"
        f"{_ratio(result.ratio_interval.high)}); allowed: {allowed}"
    )
    needed = result.labels_needed
    waiting = rules.waiting
    message = _comparison_message(
        name, verdict, "larger errors than allowed", what, _labels_needed_text(needed)
    )
    held = _label_delay_hold(verdict, needed, waiting)
    if held is not None:
        verdict, shown, needed = held
        message = f"{name}: {shown}, but {waiting}: {what}"
    return CheckResult(
        name, verdict, difference, None, ceiling, message, sequential=True,
        low=low, high=high, samples=canary.labelled, requests_needed=needed,
    )  # fmt: skip


def _amount(check: str, value: float | None) -> str:
    """An error in the target's units, in the check's notation; `inf` for an open end."""
    if value is not None and math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return m.value_text(check, value)


def _signed(check: str, value: float | None) -> str:
    """A difference of errors with its sign: `+0.120`, `-0.050`."""
    text = _amount(check, value)
    return f"+{text}" if value is not None and value > 0 and text[0].isdigit() else text


def _labels_needed_text(needed: int | None) -> str:
    if needed is None:
        return "no decision in sight at the current rates"
    return f"about {needed} more canary labels to decide"


def _seconds_text(seconds: float) -> str:
    """`1h5m`, `12m30s`, `40s`: a remaining time, to the second."""
    whole = math.ceil(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(hours, "h"), (minutes, "m"), (secs, "s")]
    return "".join(f"{n}{unit}" for n, unit in parts if n) or "0s"


def _labels(labels: set[str]) -> str:
    shown = sorted(labels)
    more = f" and {len(shown) - 3} more" if len(shown) > 3 else ""
    return ", ".join(_bin(label) for label in shown[:3]) + more


# A bin's label as a message shows it: quoted, and cut (it is a label value of the reply).
_BIN_SHOWN: Final = 40


def _bin(label: str) -> str:
    return repr(label if len(label) <= _BIN_SHOWN else label[: _BIN_SHOWN - 3] + "...")


def _share(counts: ev.Counts) -> str:
    share = m.value_text(m.PREDICTIONS_VS_STABLE, counts.rate)
    return f"{share} ({counts.events:.0f} of {counts.requests:.0f})"


def _points(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 100:+.1f} points"


def _rate(check: str, value: float | None) -> str:
    return m.value_text(check, value, decimals=2)


def _ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return "inf" if math.isinf(value) else f"{value:.3g}"


def _needed_text(needed: int | None) -> str:
    if needed is None:
        return "no decision in sight at the current rates"
    return f"about {needed} more canary requests to decide"


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
    when another query could not run. Dry-run checks (analysis.metrics[].dryRun) count for
    nothing."""
    verdicts = {result.verdict for result in results if not result.dry_run}
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
        reasons=[
            result.message
            for result in results
            if result.verdict != "Successful" and not result.dry_run
        ],
        checks=[result.record() for result in results],
    )
