"""The PromQL of every analysis check: pure text, no I/O (`providers` runs it).

The built-in checks read the series of the metrics contract (docs/metrics.md). Each
one is scoped to the canary under analysis: `model_deployment`, `namespace` (when known; a
cluster Prometheus adds it to every target), `track="canary"` and the canary's `version`, so
that requests an earlier canary served inside the window never count for a new rollout. The
request metrics are also scoped by `source` ("router" or "server"), because both the builtin
router and the model servers export the request counter and the latency histogram: summing
both would count every request twice. `check_scope` builds these labels, for the PromQL here
and for the demo's evaluator of direct scrapes alike.

How each check treats a missing series is a decision, not an accident of PromQL:

- `requests`: no series means no request reached the canary yet (its counters appear with its
  first request), so the answer is 0 (`or on() vector(0)`): the rollout core then says
  "too few requests" instead of "no data".
- `errorRate`: a missing 5xx series means no request failed, so the numerator falls back to 0;
  the denominator does not, so no requests at all (no series, or an increase of 0 and so 0/0 =
  NaN) gives no value: an error rate of nothing is unknown, not 0 %.
- `latencyP99`: no requests in the window means every bucket rate is 0 and
  `histogram_quantile` answers NaN, and no series means an empty result: both are "no data".
- `drift`, `predictionDrift`: a server exports these gauges only once its drift window holds
  enough rows to mean something, so a missing series is the truth "no data", never "no drift".
  They are computed by the model servers only, so they are not scoped by `source`. Drift keeps
  one series per feature (the largest over the canary's replicas), so that its verdict can
  name the features that drifted: the provider takes the largest as the check's value (see
  SERIES_LABEL).
- `shadowAgreement`: the router labels each comparison with the track whose answer the shadow
  was compared with; agreement is agree / (agree + disagree) over the window (comparisons that
  failed, result="error", say nothing about agreement). A missing "agree" series with some
  "disagree" ones is 0 % agreement, so the numerator falls back to 0; no comparisons at all is
  "no data". Comparisons carry the live track's `version`, so they are scoped by the canary's
  version like the request series: a previous canary's comparisons never count in the next
  one's window.

- `driftPValue`, `predictionDriftPValue` (thresholds.driftSignificance): the servers export
  each feature's p-value, Holm-adjusted over the server's features; over the canary's replicas
  the smallest counts, times the number of replicas (Bonferroni), at most 1. One series per
  feature, the smallest the check's value. Missing is "no data", as for drift.
- Counts since the step began (analysis.sequential, analysis.baseline): each series' value now
  minus its value at status.stepStartedAt (`m - m @ start`, the sample at or before the
  start), for the canary and (with a baseline) the stable track, scoped alike: requests, 5xx
  errors, timed requests (the latency histogram's +Inf bucket) and slow ones (those over the
  bucket of the latency bound). Not `increase()`: it extrapolates the first-to-last difference
  to the range's ends, which over a step's first scrape intervals nearly doubles the counts
  (145 read for 81 requests 3 s in), and the evidence with them. A series with no sample at
  the start (born since: a new replica, the first 5xx) counts whole; one that dropped (a
  restarted replica: a counter reset) counts its value since the restart. So the counts are
  whole numbers of requests, at most one scrape interval's worth early (those between the
  last scrape before the start and the start) and short of a replica gone since the start. A
  missing series is 0 (no request yet): the sequential checks then say "not sure yet". Before
  the step has run for MIN_SINCE_STEP_SECONDS there are no such queries (no data).
- Rows predicted per bin since the step began (baseline.maxPredictionShift), per track: the
  servers' prediction counter (no `source`: only servers predict) grown the same way, summed
  `by (bin)`: one series per bin, every one kept (EVERY_SERIES). The stable track's is scoped
  by the version it serves, as its request counts are. No series at all is no row yet.
- Labels since the step began (thresholds.minAccuracy, baseline.maxAccuracyDrop), per track
  (the canary's; stable's too with maxAccuracyDrop): the servers' feedback counters grown the
  same way, `labelled` (FEEDBACK_LABELS_TOTAL) and `correct` (FEEDBACK_CORRECT_TOTAL), scoped
  like the predictions (no `source`: only servers take feedback; `track` and `version` are
  those of the prediction a label is for). Counted by arrival: a label of the same version's
  prediction from before the step counts when it arrives in the step. No `labelled` series is
  no label yet (0); no `correct` series is no data, not 0: a regressor exports none, and its
  accuracy is not 0 %.
- A regressor's errors on labels since the step began (thresholds.maxMeanAbsoluteError,
  baseline.maxErrorIncrease / maxErrorRatio), per track likewise (stable's with a baseline
  error allowance): `labelled`, and `absoluteErrors` and `squaredErrors`, the growth of the
  sums FEEDBACK_ABSOLUTE_ERROR_TOTAL and FEEDBACK_SQUARED_ERROR_TOTAL, scoped and grown the same
  way. No error series is no data, not 0: a classifier exports none, and its error is not 0.

- Held-out figures (not checks: shown at every analysis, judged by analysis.offlineGate
  only), per track (the canary's, and the stable track's by the version it serves, with or
  without a baseline): `max by (metric)` of the servers' OFFLINE_EVALUATION gauges (no `source`:
  only servers export them), and `max by (heldout_sha256)` of OFFLINE_EVALUATION_ROWS. No rows
  series is "not scraped yet"; one at 0 is "the manifest records no evaluation"; two are
  replicas that disagree. Before the canary's first step, with the gate asked, an analysis
  reads these alone: no request has reached the canary.

- An A/B experiment's counts (spec.canary.experiment), per track (the canary's version, the
  stable's), since the experiment began (status.experiment.startedAt), not since the step: for
  `accuracy` the labels and the correct ones, grown as above; for a business metric its
  successQuery and totalQuery with {{track}}, {{version}} and {{range}} filled in. Not checks:
  `experiments.update` reads them.

Custom checks (`analysis.metrics`) are the user's PromQL, run verbatim.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from types import MappingProxyType
from typing import Final, Literal

from canaryml_api import resource as api
from canaryml_api import telemetry as t

from canaryml_operator import measurements as m

Source = Literal["router", "server"]

SERVER_ERROR_CODES: Final = "5.."  # CODE_LABEL values of a failed request (a PromQL regex)
COMPARED_RESULTS: Final = "agree|disagree"  # not "error": a failed comparison says nothing
SERVER_ERRORS: Final = f'{t.CODE_LABEL}=~"{SERVER_ERROR_CODES}"'
COMPARED: Final = f'{t.RESULT_LABEL}=~"{COMPARED_RESULTS}"'

# Checks whose query answers one series per value of a label, and that label: the check's
# value is the largest series', and its sample names the worst few (measurements.Sample).
SERIES_LABEL: Final[Mapping[str, str]] = MappingProxyType(
    {
        m.DRIFT: t.FEATURE_LABEL,
        m.DRIFT_P_VALUE: t.FEATURE_LABEL,
        m.count_name("canary", m.PREDICTIONS): t.BIN_LABEL,
        m.count_name("stable", m.PREDICTIONS): t.BIN_LABEL,
        m.offline_name("canary", "figures"): t.METRIC_LABEL,
        m.offline_name("stable", "figures"): t.METRIC_LABEL,
        m.offline_name("canary", "rows"): t.HELDOUT_SHA256_LABEL,
        m.offline_name("stable", "rows"): t.HELDOUT_SHA256_LABEL,
    }
)
# Of those, the counts per bin and the held-out figures: the sample keeps every series
# (`Sample.every`), not the worst.
EVERY_SERIES: Final = frozenset(
    {
        m.count_name("canary", m.PREDICTIONS),
        m.count_name("stable", m.PREDICTIONS),
        *(
            m.offline_name(track, kind)
            for track in ("canary", "stable")
            for kind in ("figures", "rows")
        ),
    }
)
# Of those, the checks whose worst series is the smallest (p-values).
LOWEST_IS_WORST: Final = frozenset({m.DRIFT_P_VALUE})
# A step younger than this has no counts since it began (nothing can have been scraped yet).
MIN_SINCE_STEP_SECONDS: Final = 1.0

# PromQL durations: integers with units in decreasing order (1h30m, 90s, 250ms).
_PROMQL_DURATION: Final = re.compile(r"(?=\d)(\d+h)?(\d+m(?!s))?(\d+s)?(\d+ms)?")
# Go string escapes that PromQL understands; Kubernetes names and versions never need more.
_ESCAPES: Final = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def quote(value: str) -> str:
    """`value` as a double-quoted PromQL string literal."""
    return '"' + value.translate(_ESCAPES) + '"'


def selector(labels: Mapping[str, str], *, extra: str = "") -> str:
    """`{a="x",b="y"}` with every value escaped; `extra` is appended verbatim (a matcher)."""
    matchers = [f"{name}={quote(value)}" for name, value in labels.items()]
    if extra:
        matchers.append(extra)
    return "{" + ",".join(matchers) + "}"


def range_duration(window: str) -> str:
    """The window for a range selector: verbatim when PromQL reads it as it is (1m, 1m30s).

    The API also admits fractional and unordered Go durations (1.5m, 30s1m) that PromQL
    rejects; those become whole milliseconds, which mean the same range.
    """
    if _PROMQL_DURATION.fullmatch(window):
        return window
    return f"{max(1, round(api.parse_duration(window) * 1000))}ms"


@dataclass(frozen=True)
class CheckScope:
    """The labels that select the canary under analysis, per kind of series (see above)."""

    canary: Mapping[str, str]  # the canary's servers' series: drift, predictions
    requests: Mapping[str, str]  # the request series: the canary's, from one source
    comparisons: Mapping[str, str]  # the router's shadow comparisons (no `source`)
    stable_requests: Mapping[str, str] | None = None  # the stable track's, when known
    stable: Mapping[str, str] | None = None  # the stable servers' series (no `source`)

    def counted_tracks(self) -> list[tuple[Literal["canary", "stable"], Mapping[str, str]]]:
        """The request series whose counts since the step began the sequential checks read:
        the canary's, and the stable track's with a baseline."""
        tracks: list[tuple[Literal["canary", "stable"], Mapping[str, str]]] = [
            ("canary", self.requests)
        ]
        if self.stable_requests is not None:
            tracks.append(("stable", self.stable_requests))
        return tracks

    def labelled_tracks(
        self, *, stable: bool
    ) -> list[tuple[Literal["canary", "stable"], Mapping[str, str]]]:
        """The servers' series whose labels since the step began the accuracy checks read: the
        canary's, and the stable track's when `stable` (and known: with a baseline)."""
        tracks: list[tuple[Literal["canary", "stable"], Mapping[str, str]]] = [
            ("canary", self.canary)
        ]
        if stable and self.stable is not None:
            tracks.append(("stable", self.stable))
        return tracks

    def predicting_tracks(self) -> list[tuple[Literal["canary", "stable"], Mapping[str, str]]]:
        """The servers' series whose rows predicted per bin predictionsVsStable compares: the
        canary's and the stable track's (empty without a baseline)."""
        if self.stable is None:
            return []
        return [("canary", self.canary), ("stable", self.stable)]


def check_scope(
    *,
    spec: api.ModelDeploymentSpec,
    name: str,
    namespace: str | None,
    source: Source,
    status: api.ModelDeploymentStatus | None = None,
) -> CheckScope:
    """The scope of every check of this spec's canary: `namespace` when known (a cluster's
    Prometheus adds it to every target; direct scrapes have none). With analysis.baseline, the
    stable track's request series too, scoped by the version it serves (from `status`)."""
    if spec.canary is None:
        raise ValueError("a check scope needs spec.canary: there is nothing to analyse")
    scope = {t.MODEL_DEPLOYMENT_LABEL: name}
    if namespace is not None:
        scope[t.NAMESPACE_LABEL] = namespace
    canary = {**scope, t.TRACK_LABEL: "canary", t.VERSION_LABEL: spec.canary.model.version}
    stable = (
        None
        if spec.analysis.baseline is None
        else {**scope, t.TRACK_LABEL: "stable", t.VERSION_LABEL: stable_version(spec, status)}
    )
    return CheckScope(
        canary=canary,
        requests={**canary, t.SOURCE_LABEL: source},
        comparisons=canary,
        stable_requests=None if stable is None else {**stable, t.SOURCE_LABEL: source},
        stable=stable,
    )


def offline_tracks(
    scope: CheckScope,
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus | None,
) -> list[tuple[Literal["canary", "stable"], Mapping[str, str]]]:
    """The servers' series whose held-out figures are read: the canary's, and the stable
    track's by the version it serves (with or without a baseline)."""
    stable = {
        **scope.canary,
        t.TRACK_LABEL: "stable",
        t.VERSION_LABEL: stable_version(spec, status),
    }
    return [("canary", scope.canary), ("stable", stable)]


def offline_gate_pending(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus | None
) -> bool:
    """Whether an analysis now is the offline gate's (analysis.offlineGate, the canary at no
    step yet): before any traffic, only the held-out figures are read."""
    return (
        spec.analysis.offline_gate is not None
        and status is not None
        and status.current_step is None
    )


def stable_version(spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus | None) -> str:
    """The version the stable track serves: status.stableModel's, else spec.model's."""
    if status is not None and status.stable_model is not None:
        return status.stable_model.version
    return spec.model.version


def build_queries(
    *,
    spec: api.ModelDeploymentSpec,
    name: str,
    namespace: str | None,
    source: Source,
    status: api.ModelDeploymentStatus | None = None,
    at: datetime | None = None,
) -> dict[str, str]:
    """The PromQL of each check of this spec's canary, keyed by check name (and the counts
    since the step began, keyed by `measurements.count_name`, for sequential checks: these
    need the `status` and the analysis time `at`).

    `source` says whose request metrics to read: "router" when the builtin router runs (it
    sees every request, including those a dying pod never answered), "server" otherwise.
    """
    if spec.canary is None:
        raise ValueError("build_queries needs spec.canary: there is nothing to analyse")
    window = range_duration(spec.analysis.window)
    analysis = spec.analysis
    scope = check_scope(spec=spec, name=name, namespace=namespace, source=source, status=status)
    canary, requests = scope.canary, scope.requests
    offline: dict[str, str] = {}
    for track, labels in offline_tracks(scope, spec=spec, status=status):
        offline |= _offline(track, labels)
    if offline_gate_pending(spec, status):
        return offline  # no traffic yet: nothing else to read
    drift = f"max by ({t.FEATURE_LABEL}) ({t.FEATURE_DRIFT}{selector(canary)})"
    queries = {}
    if analysis.sequential_rates is None:
        # Judged sequentially, requests and errors come from the counts since the step began.
        queries[m.REQUESTS] = _requests(requests, window=window)
        queries[m.ERROR_RATE] = _error_rate(requests, window=window)
    queries |= {
        m.LATENCY_P99: _latency_p99(requests, window=window),
        m.DRIFT: drift,
        m.PREDICTION_DRIFT: f"max({t.PREDICTION_DRIFT}{selector(canary)})",
    }
    if analysis.thresholds.drift_significance is not None:
        queries[m.DRIFT_P_VALUE] = _bonferroni(t.FEATURE_DRIFT_P_VALUE, canary, by=t.FEATURE_LABEL)
        queries[m.PREDICTION_DRIFT_P_VALUE] = _bonferroni(t.PREDICTION_DRIFT_P_VALUE, canary)
    if analysis.sequential_rates is not None:
        since = _since_step(status, at)
        if since is not None:
            for track, labels in scope.counted_tracks():
                queries |= _counts(track, labels, since=since, slow=m.slow_bound(spec))
            if analysis.baseline is not None and analysis.baseline.max_prediction_shift:
                for track, labels in scope.predicting_tracks():
                    queries[m.count_name(track, m.PREDICTIONS)] = _grown(
                        t.PREDICTIONS_TOTAL, labels, since=since, by=t.BIN_LABEL
                    )
            if analysis.accuracy_checked:
                for track, labels in scope.labelled_tracks(stable=compares_accuracy(spec)):
                    queries |= _label_counts(track, labels, since=since, kinds=label_kinds(spec))
    if spec.shadow is not None and spec.shadow.percent > 0:
        queries[m.SHADOW_AGREEMENT] = _shadow_agreement(scope.comparisons, window=window)
    queries |= experiment_queries(spec=spec, name=name, namespace=namespace, status=status, at=at)
    queries |= offline
    for metric in spec.analysis.metrics:
        queries[metric.name] = metric.query
    return queries


def experiment_started(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus | None
) -> datetime | None:
    """When the A/B experiment of the spec's canary began (status.experiment.startedAt, for
    this canary version and metric); None without one, or before it began."""
    experiment = spec.canary.experiment if spec.canary is not None else None
    record = status.experiment if status is not None else None
    if experiment is None or record is None or spec.canary is None:
        return None
    if record.canary_version != spec.canary.model.version or record.metric != experiment.metric:
        return None
    return record.started_at


def experiment_queries(
    *,
    spec: api.ModelDeploymentSpec,
    name: str,
    namespace: str | None,
    status: api.ModelDeploymentStatus | None,
    at: datetime | None,
) -> dict[str, str]:
    """The A/B experiment's counts per track since it began, keyed by
    `measurements.experiment_name`: for accuracy, the labels that arrived for each track's
    predictions and the correct ones (the servers' feedback counters, as the accuracy checks
    read them); for a business metric, its successQuery and totalQuery with {{track}},
    {{version}} and {{range}} filled in. Empty without an experiment, or before it began."""
    started = experiment_started(spec, status)
    if started is None or at is None or spec.canary is None:
        return {}
    experiment = spec.canary.experiment
    assert experiment is not None
    age = (at - started).total_seconds()
    if age < MIN_SINCE_STEP_SECONDS:
        return {}
    scope = {t.MODEL_DEPLOYMENT_LABEL: name}
    if namespace is not None:
        scope[t.NAMESPACE_LABEL] = namespace
    versions: dict[Literal["canary", "stable"], str] = {
        "canary": spec.canary.model.version,
        "stable": stable_version(spec, status),
    }
    queries = {}
    for track, version in versions.items():
        successes, samples = (
            m.experiment_name(track, "successes"),
            m.experiment_name(track, "samples"),
        )
        if experiment.metric == api.EXPERIMENT_ACCURACY:
            labels = {**scope, t.TRACK_LABEL: track, t.VERSION_LABEL: version}
            since = f"{started.timestamp():.3f}"
            grown = {
                kind: f"({_grown(_FEEDBACK_SERIES[kind], labels, since=since)} or on() vector(0))"
                for kind in ("labelled", "correct")
            }
            queries[successes], queries[samples] = grown["correct"], grown["labelled"]
        else:
            assert experiment.success_query is not None and experiment.total_query is not None
            values = {"track": track, "version": version, "range": f"{max(1, int(age))}s"}
            queries[successes] = fill_placeholders(experiment.success_query, values)
            queries[samples] = fill_placeholders(experiment.total_query, values)
    return queries


def fill_placeholders(query: str, values: Mapping[str, str]) -> str:
    """`query` with each `{{name}}` of `values` replaced (spaces inside the braces allowed)."""
    names = "|".join(re.escape(key) for key in values)
    return re.sub(r"\{\{\s*(" + names + r")\s*\}\}", lambda found: values[found[1]], query)


def _offline(track: Literal["canary", "stable"], labels: Mapping[str, str]) -> dict[str, str]:
    """A track's held-out figures by name, and its held-out rows by the data's digest (see the
    module's docstring); every replica of a version serves one artifact, so `max` merges them."""
    return {
        m.offline_name(track, "figures"): (
            f"max by ({t.METRIC_LABEL}) ({t.OFFLINE_EVALUATION}{selector(labels)})"
        ),
        m.offline_name(track, "rows"): (
            f"max by ({t.HELDOUT_SHA256_LABEL}) ({t.OFFLINE_EVALUATION_ROWS}{selector(labels)})"
        ),
    }


def _since_step(status: api.ModelDeploymentStatus | None, at: datetime | None) -> str | None:
    """The step's start as a PromQL `@` time (Unix seconds, to the millisecond); None when
    unknown or too recent for anything to have been scraped since."""
    if status is None or status.step_started_at is None or at is None:
        return None
    started = status.step_started_at
    if (at - started).total_seconds() < MIN_SINCE_STEP_SECONDS:
        return None
    return f"{started.timestamp():.3f}"


def _counts(
    track: Literal["canary", "stable"],
    labels: Mapping[str, str],
    *,
    since: str,
    slow: float | None,
) -> dict[str, str]:
    """The counts of one track since the step began (see the module's docstring)."""

    def grown(series: str, matchers: Mapping[str, str], extra: str = "") -> str:
        return f"({_grown(series, matchers, since=since, extra=extra)} or on() vector(0))"

    counts = {
        m.count_name(track, "requests"): grown(t.REQUESTS_TOTAL, labels),
        m.count_name(track, "errors"): grown(t.REQUESTS_TOTAL, labels, SERVER_ERRORS),
        m.count_name(track, "timed"): grown(
            t.REQUEST_DURATION_BUCKET, {**labels, t.LE_LABEL: t.bucket_label(math.inf)}
        ),
    }
    if slow is not None:
        fast = grown(t.REQUEST_DURATION_BUCKET, {**labels, t.LE_LABEL: t.bucket_label(slow)})
        counts[m.count_name(track, "slow")] = f"{counts[m.count_name(track, 'timed')]} - {fast}"
    return counts


def compares_accuracy(spec: api.ModelDeploymentSpec) -> bool:
    """Whether the canary's labels are compared with stable's: its accuracy
    (baseline.maxAccuracyDrop) or a regressor's errors (maxErrorIncrease, maxErrorRatio)."""
    baseline = spec.analysis.baseline
    return baseline is not None and (
        baseline.max_accuracy_drop is not None or baseline.compares_errors
    )


def label_kinds(spec: api.ModelDeploymentSpec) -> tuple[m.CountKind, ...]:
    """The feedback counts the checks on labels read, per labelled track: the labels, and the
    correct ones for accuracy, the sums of errors for a regressor's error checks."""
    analysis = spec.analysis
    kinds = (m.LABEL_KINDS if analysis.accuracy_asked else ()) + (
        m.ERROR_KINDS if analysis.error_asked else ()
    )
    return tuple(dict.fromkeys(kinds))


# The feedback counter of each count kind on labels.
_FEEDBACK_SERIES: Final[Mapping[str, str]] = MappingProxyType(
    {
        "labelled": t.FEEDBACK_LABELS_TOTAL,
        "correct": t.FEEDBACK_CORRECT_TOTAL,
        "absoluteErrors": t.FEEDBACK_ABSOLUTE_ERROR_TOTAL,
        "squaredErrors": t.FEEDBACK_SQUARED_ERROR_TOTAL,
    }
)


def _label_counts(
    track: Literal["canary", "stable"],
    labels: Mapping[str, str],
    *,
    since: str,
    kinds: tuple[m.CountKind, ...] = m.LABEL_KINDS,
) -> dict[str, str]:
    """The labels of one track's predictions that arrived since the step began, and the
    correct ones among them or the sums of their errors, by `kinds` (see the module's
    docstring)."""
    queries = {}
    for kind in kinds:
        grown = _grown(_FEEDBACK_SERIES[kind], labels, since=since)
        # No labels series is no label yet; no correct or error series is no data.
        queries[m.count_name(track, kind)] = (
            f"({grown} or on() vector(0))" if kind == "labelled" else grown
        )
    return queries


def _grown(
    series: str,
    matchers: Mapping[str, str],
    *,
    since: str,
    extra: str = "",
    by: str | None = None,
) -> str:
    """The sum (per `by`) of each series' growth since the step began."""
    chosen = f"{series}{selector(matchers, extra=extra)}"
    # A series that dropped (a reset) is dropped by `>= 0`, and one with no sample at the
    # start is absent from the difference: `or` then takes either's value as it stands.
    grown_since = f"(({chosen} - {chosen} @ {since}) >= 0 or {chosen})"
    group = f" by ({by})" if by else ""
    return f"sum{group}({grown_since})"


def _bonferroni(series: str, labels: Mapping[str, str], *, by: str | None = None) -> str:
    """The smallest p-value over the replicas (per `by`), times their number, at most 1."""
    group = f" by ({by})" if by else ""
    matched = f" on ({by})" if by else ""
    chosen = f"{series}{selector(labels)}"
    return f"clamp_max(min{group} ({chosen}) *{matched} count{group} ({chosen}), 1)"


def _requests(labels: Mapping[str, str], *, window: str) -> str:
    return f"sum(increase({t.REQUESTS_TOTAL}{selector(labels)}[{window}])) or on() vector(0)"


def _error_rate(labels: Mapping[str, str], *, window: str) -> str:
    server_errors = selector(labels, extra=SERVER_ERRORS)
    errors = f"sum(increase({t.REQUESTS_TOTAL}{server_errors}[{window}]))"
    total = f"sum(increase({t.REQUESTS_TOTAL}{selector(labels)}[{window}]))"
    return f"({errors} or on() vector(0)) / {total}"


def _latency_p99(labels: Mapping[str, str], *, window: str) -> str:
    rates = f"rate({t.REQUEST_DURATION_BUCKET}{selector(labels)}[{window}])"
    return f"histogram_quantile(0.99, sum by (le) ({rates}))"


def _shadow_agreement(labels: Mapping[str, str], *, window: str) -> str:
    agree = selector({**labels, t.RESULT_LABEL: "agree"})
    compared = selector(labels, extra=COMPARED)
    return (
        f"(sum(increase({t.SHADOW_COMPARISONS}{agree}[{window}])) or on() vector(0))"
        f" / sum(increase({t.SHADOW_COMPARISONS}{compared}[{window}]))"
    )
