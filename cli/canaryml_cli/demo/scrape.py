"""The operator's built-in checks computed from direct scrapes of `/metrics`, no Prometheus.

Pure, no I/O: the demo's `ScrapeMeasurer` polls every process about once a second, parses each
answer with `parse_exposition`, keeps it in a `ScrapeHistory`, and `measure_scraped` computes
every check of `checks.build_queries` from the scrapes in the analysis window
`[at - analysis.window, at]` (both ends included).

Each check has the scope of its PromQL, from the same `checks.check_scope` (the scrapes carry
no namespace label, so the scope has none), and treats missing series as the PromQL does (see
`checks`):

- A counter's increase over the window is its last sample in the window minus its first, plus
  the value before every drop (a drop is a counter reset, as in Prometheus's `increase()`). A
  series first seen inside the window takes its first sample as baseline; a series with fewer
  than two samples in the window contributes nothing. A series is one label set of one target
  (the target plays the part of Prometheus's `instance` label).
- `requests`: the sum of the increases of the request counter; 0 when nothing contributes.
- `errorRate`: the 5xx part of that sum over the whole of it; None when the whole is 0 or
  nothing contributes.
- `latencyP99`: `histogram_quantile(0.99, ...)` of the bucket increases summed by `le`. The
  PromQL sums `rate()`s instead: rates are increases divided by the same range, and a quantile
  does not change when every bucket is scaled alike.
- `drift`, `predictionDrift`: the largest value of the gauge in the newest scrape of each target
  in the window; None when no such scrape holds the series. Drift is taken per feature first
  (`max by (feature)`), so that its sample names the worst features, as the provider's does.
- `shadowAgreement` (when the spec mirrors traffic): agree / (agree + disagree) of the
  increases of the router's shadow comparison counter; None when that sum is 0 or absent.
- `driftPValue`, `predictionDriftPValue` (thresholds.driftSignificance): per feature, the
  smallest p-value in the newest scrape of each target times the number of targets, at most 1.
- Counts since the step began (sequential checks): as `checks` queries them, each series' value
  at `at` minus its value in the target's last scrape at or before status.stepStartedAt, a
  drop adding back the value before it (a reset). A series missing from that scrape, or of a
  target first scraped after the start (a new process), counts from 0. The demo's measurer
  keeps 10 minutes of scrapes: for an older start, the oldest kept scrape is the baseline.
  Rows predicted (baseline.maxPredictionShift) likewise, summed per bin, every bin kept.
  Labels (thresholds.minAccuracy, baseline.maxAccuracyDrop) likewise, from the servers'
  feedback counters: `labelled` 0 when no series, `correct` no data when no series (a
  regressor's servers export none); a regressor's sums of errors (maxMeanAbsoluteError,
  maxErrorIncrease, maxErrorRatio) likewise, no data when no series.
- Held-out figures, per track: the gauges `max by (metric)` and the rows `max by
  (heldout_sha256)` in the newest scrape of each target in the window, every series kept; the
  offline gate's analysis before the canary's first step reads these alone.
- Custom checks (`analysis.metrics`) are PromQL: they fail with a message saying how to run
  the demo with a Prometheus.

Where the numbers differ from Prometheus's, by design:

- No extrapolation. Prometheus's `increase()` stretches the first-to-last difference to the
  window's edges (by about window / (window - scrape interval) for a series that lived through
  the whole window). Here it is the plain difference, a whole number of requests, so `requests`
  reads a little lower; the ratios (errorRate, latencyP99, shadowAgreement) are close, not
  identical, because series born inside the window are extrapolated differently there.
- The window includes its start; Prometheus 3 excludes it. With scrapes a second apart this
  moves at most one sample.
- Gauges: an instant query looks back up to 5 minutes but marks a target's series stale at its
  first failed scrape. Here the newest successful scrape in the window counts, so the gauges of
  a target that stopped answering last until its last scrape leaves the window.
- Explicit timestamps in an exposition are ignored (the scrape time counts); canaryml's
  exporters never write them.

A NaN is never returned: no data (None) instead, as the operator's provider reads one.
"""

from __future__ import annotations

import bisect
import contextlib
import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Final, Literal

from canaryml_api import resource as api
from canaryml_api import telemetry as t
from canaryml_operator import measurements as m
from canaryml_operator.checks import (
    COMPARED_RESULTS,
    MIN_SINCE_STEP_SECONDS,
    SERVER_ERROR_CODES,
    Source,
    check_scope,
    compares_accuracy,
    label_kinds,
    offline_gate_pending,
    offline_tracks,
)
from canaryml_operator.measurements import Measurements, Sample
from prometheus_client.parser import text_string_to_metric_families

CUSTOM_NEEDS_PROMETHEUS: Final = (
    "custom PromQL checks need Prometheus: run the demo with --prometheus auto "
    "(prometheus installed) or --prometheus URL"
)
P99: Final = 0.99
# The matchers of checks.SERVER_ERRORS and checks.COMPARED, as Python regexes (PromQL anchors
# them, hence fullmatch).
_SERVER_ERROR_CODE: Final = re.compile(SERVER_ERROR_CODES)
_COMPARED_RESULT: Final = re.compile(COMPARED_RESULTS)
# prometheus_client exposes the creation time of every counter and histogram as a gauge of
# its own: a timestamp, not a measurement.
_CREATED_SUFFIX: Final = "_created"

LabelKey = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class ScrapedSample:
    """One sample of an exposition: its full name (a counter's with `_total`, a histogram
    bucket's with `_bucket`), labels and value."""

    name: str
    labels: Mapping[str, str]
    value: float


def parse_exposition(text: str) -> list[ScrapedSample]:
    """Every sample of a Prometheus text exposition, `_created` ones left out.

    Raises ValueError when `text` is not in the exposition format.
    """
    return [
        ScrapedSample(name=sample.name, labels=dict(sample.labels), value=float(sample.value))
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith(_CREATED_SUFFIX)
    ]


@dataclass(frozen=True)
class Scrape:
    """One successful scrape of one target."""

    time: datetime
    samples: tuple[ScrapedSample, ...]
    _by_name: dict[str, list[ScrapedSample]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # An analysis reads a few metrics out of every scrape of the window: index them once.
        by_name: dict[str, list[ScrapedSample]] = defaultdict(list)
        for sample in self.samples:
            by_name[sample.name].append(sample)
        object.__setattr__(self, "_by_name", dict(by_name))

    def named(self, name: str) -> Sequence[ScrapedSample]:
        return self._by_name.get(name, ())


class ScrapeHistory:
    """The scrapes of every target (a key such as its URL), each target's in time order.

    Times must all be timezone-aware (or all naive): they are compared with each other and with
    the analysis time.
    """

    def __init__(self) -> None:
        self._scrapes: dict[str, list[Scrape]] = {}
        # When each target was first scraped: one first seen after a step began is a process
        # started since, whose counters began at 0 (pruning must not make an old one look new).
        self._first_seen: dict[str, datetime] = {}

    @property
    def targets(self) -> list[str]:
        return list(self._scrapes)

    def add(self, *, target: str, time: datetime, samples: Sequence[ScrapedSample]) -> None:
        """Records one scrape; one that finished late still lands in its place in time."""
        scrapes = self._scrapes.setdefault(target, [])
        bisect.insort_right(scrapes, Scrape(time=time, samples=tuple(samples)), key=_time)
        self._first_seen[target] = min(time, self._first_seen.get(target, time))

    def prune(self, *, before: datetime) -> None:
        """Forgets every scrape taken before `before`.

        No older scrape is kept as a baseline: an analysis reads only the samples inside its
        window (as Prometheus's range selectors do), so pruning before the oldest window start
        any analysis will use loses nothing. A target left with no scrape is forgotten.
        """
        for target in list(self._scrapes):
            scrapes = self._scrapes[target]
            del scrapes[: bisect.bisect_left(scrapes, before, key=_time)]
            if not scrapes:
                del self._scrapes[target]
                del self._first_seen[target]

    def since(
        self, *, start: datetime, end: datetime
    ) -> dict[str, tuple[Scrape | None, list[Scrape]]]:
        """Each target's baseline at `start` and its scrapes after it up to `end`.

        The baseline is the last scrape at or before `start`; None for a target first scraped
        after `start` (its counters began at 0); the oldest kept scrape when those before
        `start` were pruned.
        """
        found: dict[str, tuple[Scrape | None, list[Scrape]]] = {}
        for target, scrapes in self._scrapes.items():
            cut = bisect.bisect_right(scrapes, start, key=_time)
            high = bisect.bisect_right(scrapes, end, key=_time)
            if cut > 0:
                found[target] = (scrapes[cut - 1], scrapes[cut:high])
            elif self._first_seen[target] > start:
                found[target] = (None, scrapes[:high])
            else:
                found[target] = (scrapes[0], scrapes[1:high])
        return found

    def between(self, *, start: datetime, end: datetime) -> dict[str, list[Scrape]]:
        """Each target's scrapes taken from `start` to `end`, both included, oldest first."""
        found = {}
        for target, scrapes in self._scrapes.items():
            low = bisect.bisect_left(scrapes, start, key=_time)
            high = bisect.bisect_right(scrapes, end, key=_time)
            if low < high:
                found[target] = scrapes[low:high]
        return found


def _time(scrape: Scrape) -> datetime:
    return scrape.time


def counter_increase(*, values: Sequence[float]) -> float | None:
    """How much a counter sampled as `values` (oldest first) grew: None under two samples.

    A drop is a reset to 0: the value before it is added back, as Prometheus's `increase()`
    does (without its extrapolation to the window's edges).
    """
    if len(values) < 2:
        return None
    resets = sum(previous for previous, current in itertools.pairwise(values) if current < previous)
    return values[-1] - values[0] + resets


def histogram_quantile(*, q: float, buckets: Mapping[float, float]) -> float | None:
    """Prometheus's `histogram_quantile(q, ...)` of cumulative bucket counts keyed by upper bound.

    As in Prometheus: no +Inf bucket, fewer than two buckets or no observations is no data
    (None here, NaN there); counts that decrease from one bucket to the next are raised to the
    count before them; the rank `q * observations` falls in the first bucket whose count
    reaches it, and the answer interpolates linearly between that bucket's lower bound (the
    previous upper bound, or 0 for the first bucket) and its upper bound; a rank in the +Inf
    bucket answers the highest finite upper bound; a first bucket whose upper bound is <= 0
    answers that bound. Prometheus's tolerance for float rounding between buckets is left out:
    increases of counters of whole observations are whole numbers.
    """
    if math.isnan(q):
        return None
    if q < 0:
        return -math.inf
    if q > 1:
        return math.inf
    bounds = sorted(buckets)
    if not bounds or bounds[-1] != math.inf or len(bounds) < 2:
        return None
    counts: list[float] = []
    for bound in bounds:
        # Monotonic, as Prometheus forces it: a decrease is noise from series sampled apart.
        counts.append(max(buckets[bound], counts[-1]) if counts else buckets[bound])
    observations = counts[-1]
    if observations == 0:
        return None
    rank = q * observations
    # The first bucket below +Inf whose count reaches the rank; +Inf when none does.
    index = next((i for i, count in enumerate(counts[:-1]) if count >= rank), len(bounds) - 1)
    if index == len(bounds) - 1:
        return bounds[-2]
    if index == 0 and bounds[0] <= 0:
        return bounds[0]
    start, end, count = 0.0, bounds[index], counts[index]
    if index > 0:
        start = bounds[index - 1]
        count -= counts[index - 1]
        rank -= counts[index - 1]
    return start + (end - start) * (rank / count)


def measure_scraped(
    *,
    history: ScrapeHistory,
    spec: api.ModelDeploymentSpec,
    name: str,
    at: datetime,
    source: Source = "router",
    status: api.ModelDeploymentStatus | None = None,
) -> Measurements:
    """Every check of `spec`'s canary over the window ending at `at`, as `build_queries` has
    them, from the scrapes in `history` (see the module's docstring for the semantics); with
    sequential checks, the counts since status.stepStartedAt from the scrapes kept since then.

    `source` says whose request metrics to read, as in `build_queries`. Raises ValueError when
    the spec has no canary.
    """
    if spec.canary is None:
        raise ValueError("measure_scraped needs spec.canary: there is nothing to analyse")
    window = history.between(
        start=at - timedelta(seconds=api.parse_duration(spec.analysis.window)), end=at
    )
    # The PromQL's scope; direct scrapes carry no namespace label.
    analysis = spec.analysis
    scope = check_scope(spec=spec, name=name, namespace=None, source=source, status=status)
    canary, requests = scope.canary, scope.requests
    offline: dict[str, Sample] = {}
    for track, labels in offline_tracks(scope, spec=spec, status=status):
        offline |= _offline(window, track=track, scope=labels)
    if offline_gate_pending(spec, status):
        return Measurements(time=at, samples=offline)  # before any traffic: these alone

    request_increases = _increases(window, metric=t.REQUESTS_TOTAL, scope=requests)
    total = _sum(increase for _, increase in request_increases)
    errors = _sum(
        increase
        for labels, increase in request_increases
        if _SERVER_ERROR_CODE.fullmatch(labels.get(t.CODE_LABEL, ""))
    )
    samples = {
        m.REQUESTS: _sample(0.0 if total is None else total),
        # No 5xx series is no failed request (`or on() vector(0)`); no total is no data.
        m.ERROR_RATE: _ratio(0.0 if errors is None else errors, total),
        m.LATENCY_P99: _sample(_latency_p99(window, scope=requests)),
        m.DRIFT: Sample.worst_of(
            _latest_max_by(window, metric=t.FEATURE_DRIFT, scope=canary, label=t.FEATURE_LABEL)
        ),
        m.PREDICTION_DRIFT: _sample(_latest_max(window, metric=t.PREDICTION_DRIFT, scope=canary)),
    }
    if analysis.thresholds.drift_significance is not None:
        samples[m.DRIFT_P_VALUE] = Sample.worst_of(
            _bonferroni_by(window, metric=t.FEATURE_DRIFT_P_VALUE, scope=canary),
            lowest=True,
        )
        samples[m.PREDICTION_DRIFT_P_VALUE] = _sample(
            _bonferroni_by(window, metric=t.PREDICTION_DRIFT_P_VALUE, scope=canary).get("")
        )
    started = status.step_started_at if status is not None else None
    if (
        analysis.sequential_rates is not None
        and started is not None
        and (at - started).total_seconds() >= MIN_SINCE_STEP_SECONDS
    ):
        since = history.since(start=started, end=at)
        for track, labels in scope.counted_tracks():
            samples |= _counts(since, track=track, scope=labels, slow=m.slow_bound(spec))
        if analysis.baseline is not None and analysis.baseline.max_prediction_shift:
            for track, labels in scope.predicting_tracks():
                samples[m.count_name(track, m.PREDICTIONS)] = _predictions(since, scope=labels)
        if analysis.accuracy_checked:
            for track, labels in scope.labelled_tracks(stable=compares_accuracy(spec)):
                samples |= _label_counts(since, track=track, scope=labels, kinds=label_kinds(spec))
    if spec.shadow is not None and spec.shadow.percent > 0:
        samples[m.SHADOW_AGREEMENT] = _shadow_agreement(window, scope=scope.comparisons)
    samples |= offline
    for metric in spec.analysis.metrics:
        samples[metric.name] = Sample.failed(CUSTOM_NEEDS_PROMETHEUS)
    return Measurements(time=at, samples=samples)


def _offline(
    window: Mapping[str, Sequence[Scrape]],
    *,
    track: Literal["canary", "stable"],
    scope: Mapping[str, str],
) -> dict[str, Sample]:
    """A track's held-out figures `max by (metric)` and rows `max by (heldout_sha256)` in the
    newest scrape of each target, every series kept, as `checks` queries them."""
    return {
        m.offline_name(track, "figures"): Sample.every(
            _latest_max_by(window, metric=t.OFFLINE_EVALUATION, scope=scope, label=t.METRIC_LABEL)
        ),
        m.offline_name(track, "rows"): Sample.every(
            _latest_max_by(
                window,
                metric=t.OFFLINE_EVALUATION_ROWS,
                scope=scope,
                label=t.HELDOUT_SHA256_LABEL,
            )
        ),
    }


def _counts(
    since: Mapping[str, tuple[Scrape | None, Sequence[Scrape]]],
    *,
    track: Literal["canary", "stable"],
    scope: Mapping[str, str],
    slow: float | None,
) -> dict[str, Sample]:
    """A track's counts since the step began, as `checks._counts` queries them: a missing
    series is 0."""
    increases = _grown_since(since, metric=t.REQUESTS_TOTAL, scope=scope)
    by_bound: dict[float, float] = defaultdict(float)
    for labels, increase in _grown_since(since, metric=t.REQUEST_DURATION_BUCKET, scope=scope):
        with contextlib.suppress(ValueError):
            by_bound[float(labels.get(t.LE_LABEL, ""))] += increase
    timed = by_bound.get(math.inf, 0.0)
    counts = {
        m.count_name(track, "requests"): math.fsum(increase for _, increase in increases),
        m.count_name(track, "errors"): math.fsum(
            increase
            for labels, increase in increases
            if _SERVER_ERROR_CODE.fullmatch(labels.get(t.CODE_LABEL, ""))
        ),
        m.count_name(track, "timed"): timed,
    }
    if slow is not None:
        counts[m.count_name(track, "slow")] = timed - by_bound.get(slow, 0.0)
    return {name: Sample(value=value) for name, value in counts.items()}


# The feedback counter of each count kind on labels, as `checks` reads them.
_FEEDBACK_SERIES: Final[Mapping[str, str]] = {
    "labelled": t.FEEDBACK_LABELS_TOTAL,
    "correct": t.FEEDBACK_CORRECT_TOTAL,
    "absoluteErrors": t.FEEDBACK_ABSOLUTE_ERROR_TOTAL,
    "squaredErrors": t.FEEDBACK_SQUARED_ERROR_TOTAL,
}


def _label_counts(
    since: Mapping[str, tuple[Scrape | None, Sequence[Scrape]]],
    *,
    track: Literal["canary", "stable"],
    scope: Mapping[str, str],
    kinds: tuple[m.CountKind, ...] = m.LABEL_KINDS,
) -> dict[str, Sample]:
    """A track's labels since the step began and the correct ones (or a regressor's sums of
    errors), by `kinds`, as `checks._label_counts` queries them: no labels series is 0, no
    correct or error series is no data."""
    samples = {}
    for kind in kinds:
        grown = _grown_since(since, metric=_FEEDBACK_SERIES[kind], scope=scope)
        samples[m.count_name(track, kind)] = (
            Sample(math.fsum(increase for _, increase in grown))
            if kind == "labelled"
            else _sample(_sum(increase for _, increase in grown))
        )
    return samples


def _predictions(
    since: Mapping[str, tuple[Scrape | None, Sequence[Scrape]]], *, scope: Mapping[str, str]
) -> Sample:
    """Rows predicted per bin since the step began, summed `by (bin)` over the targets, as
    `checks` queries them: every bin kept; no series is a count of 0."""
    by_bin: dict[str, float] = defaultdict(float)
    for labels, increase in _grown_since(since, metric=t.PREDICTIONS_TOTAL, scope=scope):
        by_bin[labels.get(t.BIN_LABEL, "")] += increase
    return Sample.every(by_bin)


def _bonferroni_by(
    window: Mapping[str, Sequence[Scrape]], *, metric: str, scope: Mapping[str, str]
) -> dict[str, float]:
    """`clamp_max(min by (feature) (p) * on (feature) count by (feature) (p), 1)`: the
    smallest p-value of each feature (missing reads "") over the targets, times their number."""
    found: dict[str, list[float]] = defaultdict(list)
    for sample in _latest(window, metric=metric, scope=scope):
        found[sample.labels.get(t.FEATURE_LABEL, "")].append(sample.value)
    return {key: min(1.0, min(values) * len(values)) for key, values in found.items()}


def _in_scope(labels: Mapping[str, str], scope: Mapping[str, str]) -> bool:
    # A PromQL equality matcher reads a missing label as "".
    return all(labels.get(label, "") == value for label, value in scope.items())


def _increases(
    window: Mapping[str, Sequence[Scrape]], *, metric: str, scope: Mapping[str, str]
) -> list[tuple[Mapping[str, str], float]]:
    """(labels, increase) of every series of `metric` in scope with two samples in the window."""
    series: dict[tuple[str, LabelKey], list[float]] = defaultdict(list)
    labels_of: dict[tuple[str, LabelKey], Mapping[str, str]] = {}
    for target, scrapes in window.items():
        for scrape in scrapes:
            for sample in scrape.named(metric):
                if _in_scope(sample.labels, scope):
                    key = (target, tuple(sorted(sample.labels.items())))
                    series[key].append(sample.value)
                    labels_of[key] = sample.labels
    found = []
    for key, values in series.items():
        increase = counter_increase(values=values)
        if increase is not None:
            found.append((labels_of[key], increase))
    return found


def _grown_since(
    since: Mapping[str, tuple[Scrape | None, Sequence[Scrape]]],
    *,
    metric: str,
    scope: Mapping[str, str],
) -> list[tuple[Mapping[str, str], float]]:
    """(labels, growth since the baseline) of every series of `metric` in scope scraped since
    it; a series the baseline lacks grew from 0."""
    found = []
    for baseline, scrapes in since.values():
        series: dict[LabelKey, list[float]] = defaultdict(list)
        labels_of: dict[LabelKey, Mapping[str, str]] = {}
        for scrape in scrapes:
            for sample in scrape.named(metric):
                if _in_scope(sample.labels, scope):
                    key = tuple(sorted(sample.labels.items()))
                    series[key].append(sample.value)
                    labels_of[key] = sample.labels
        at_start = {
            tuple(sorted(sample.labels.items())): sample.value
            for sample in (baseline.named(metric) if baseline is not None else ())
        }
        for key, values in series.items():
            increase = counter_increase(values=[at_start.get(key, 0.0), *values])
            if increase is not None:
                found.append((labels_of[key], increase))
    return found


def _latency_p99(
    window: Mapping[str, Sequence[Scrape]], *, scope: Mapping[str, str]
) -> float | None:
    by_bound: dict[float, float] = defaultdict(float)
    for labels, increase in _increases(window, metric=t.REQUEST_DURATION_BUCKET, scope=scope):
        try:
            bound = float(labels.get("le", ""))  # "+Inf" included; "1" and "1.0" are one bucket
        except ValueError:
            continue  # histogram_quantile ignores a bucket without a numeric `le`
        by_bound[bound] += increase
    if not by_bound:
        return None  # no series: an empty result
    return histogram_quantile(q=P99, buckets=by_bound)


def _latest_max(
    window: Mapping[str, Sequence[Scrape]], *, metric: str, scope: Mapping[str, str]
) -> float | None:
    numbers = [sample.value for sample in _latest(window, metric=metric, scope=scope)]
    return max(numbers) if numbers else None


def _latest_max_by(
    window: Mapping[str, Sequence[Scrape]], *, metric: str, scope: Mapping[str, str], label: str
) -> dict[str, float]:
    """`max by (label)`: the largest value of each value of `label` (missing reads "")."""
    found: dict[str, float] = {}
    for sample in _latest(window, metric=metric, scope=scope):
        key = sample.labels.get(label, "")
        found[key] = max(found.get(key, sample.value), sample.value)
    return found


def _latest(
    window: Mapping[str, Sequence[Scrape]], *, metric: str, scope: Mapping[str, str]
) -> list[ScrapedSample]:
    """The samples of `metric` in scope in each target's newest scrape, NaN ones left out
    (PromQL's max skips NaN unless every value is NaN, and a NaN answer is no data)."""
    # Only the newest scrape: a series missing from it is gone (Prometheus marks it stale).
    return [
        sample
        for scrapes in window.values()
        for sample in scrapes[-1].named(metric)
        if _in_scope(sample.labels, scope) and not math.isnan(sample.value)
    ]


def _shadow_agreement(
    window: Mapping[str, Sequence[Scrape]], *, scope: Mapping[str, str]
) -> Sample:
    compared = [
        (labels.get(t.RESULT_LABEL, ""), increase)
        for labels, increase in _increases(window, metric=t.SHADOW_COMPARISONS, scope=scope)
        if _COMPARED_RESULT.fullmatch(labels.get(t.RESULT_LABEL, ""))
    ]
    agree = _sum(increase for result, increase in compared if result == "agree")
    # Only disagreements is 0 % agreement; no comparison at all is no data.
    return _ratio(0.0 if agree is None else agree, _sum(increase for _, increase in compared))


def _sum(values: Iterable[float]) -> float | None:
    """PromQL's sum(): None (an empty result) when there is nothing to add."""
    items = list(values)
    return math.fsum(items) if items else None


def _ratio(numerator: float, denominator: float | None) -> Sample:
    if denominator is None or denominator == 0:
        return Sample()  # 0/0 is NaN in PromQL, and the provider reads NaN as no data
    return _sample(numerator / denominator)


def _sample(value: float | None) -> Sample:
    return Sample(value=None if value is None or math.isnan(value) else value)
