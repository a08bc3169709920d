"""Prometheus metrics of one server, on a registry of its own (one per app, as MLServer does).

Names and labels are the metrics contract of `canaryml_api.telemetry` (docs/metrics.md); the
operator's analysis queries them. Drift gauges are computed from the window's bin counts at
scrape time.
"""

from __future__ import annotations

import logging
import math
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import Any

from canaryml_api.telemetry import (
    BIN_LABEL,
    CODE_LABEL,
    DRIFT_ROWS_BINNED,
    DRIFT_ROWS_SEEN,
    DRIFT_WINDOW_ROWS,
    FEATURE_DRIFT,
    FEATURE_DRIFT_P_VALUE,
    FEATURE_LABEL,
    FEEDBACK_ABSOLUTE_ERROR_TOTAL,
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_DELAY,
    FEEDBACK_DELAY_BUCKETS,
    FEEDBACK_LABELS_TOTAL,
    FEEDBACK_REJECT_REASONS,
    FEEDBACK_REJECTED_TOTAL,
    FEEDBACK_SQUARED_ERROR_TOTAL,
    HELDOUT_SHA256_LABEL,
    LATENCY_BUCKETS,
    METRIC_LABEL,
    MODEL_DEPLOYMENT_LABEL,
    MODEL_INFO,
    MODEL_LABEL,
    OFFLINE_EVALUATION,
    OFFLINE_EVALUATION_ROWS,
    PREDICTION_DRIFT,
    PREDICTION_DRIFT_P_VALUE,
    PREDICTIONS_TOTAL,
    REASON_LABEL,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RUNTIME_LABEL,
    SOURCE_LABEL,
    SOURCE_SERVER,
    TRACK_LABEL,
    VERSION_LABEL,
)
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from canaryml_server.drift import DriftMonitor
from canaryml_server.evaluation import Evaluation
from canaryml_server.feedback import Labelled
from canaryml_server.predictions import PredictionTally

log = logging.getLogger("canaryml.server")


class DriftCollector(Collector):
    """PSI per feature and of the predictions, and the calibrated test's p-values, once the
    window holds enough rows to mean it."""

    def __init__(self, monitor: DriftMonitor, *, labels: dict[str, str], min_rows: int) -> None:
        self._monitor = monitor
        self._labels = labels
        self._min_rows = min_rows

    def collect(self) -> Iterator[Metric]:
        names = list(self._labels)
        values = list(self._labels.values())
        window_rows = self._monitor.rows
        rows = GaugeMetricFamily(
            DRIFT_WINDOW_ROWS, "Rows in the drift window (rows binned)", labels=names
        )
        rows.add_metric(values, window_rows)
        yield rows
        sampling = self._monitor.sampling()
        seen = CounterMetricFamily(
            DRIFT_ROWS_SEEN, "Rows the drift monitor saw (every row predicted)", labels=names
        )
        seen.add_metric(values, sampling.rows_seen)
        yield seen
        binned = CounterMetricFamily(
            DRIFT_ROWS_BINNED,
            "Rows the drift monitor binned: at most CANARYML_DRIFT_SAMPLE_ROWS of each request",
            labels=names,
        )
        binned.add_metric(values, sampling.rows_binned)
        yield binned
        if window_rows < self._min_rows:
            return  # no series: too few rows is "no data", not "no drift"
        report = self._monitor.report()
        features = GaugeMetricFamily(
            FEATURE_DRIFT,
            "PSI of the feature's recent values against the training reference",
            labels=[*names, FEATURE_LABEL],
        )
        for feature, value in report.feature_psi.items():
            features.add_metric([*values, feature], value)
        yield features
        prediction = GaugeMetricFamily(
            PREDICTION_DRIFT,
            "PSI of recent predictions against the predictions on the training reference",
            labels=names,
        )
        prediction.add_metric(values, report.prediction_psi)
        yield prediction
        try:
            tested, predictions_tested = self._monitor.test()
        except Exception:  # a failing test must not take the request metrics' scrape with it
            log.exception("the drift test failed: no p-values in this scrape")
            return
        p_values = GaugeMetricFamily(
            FEATURE_DRIFT_P_VALUE,
            "p-value of the feature's recent values against the training reference (G and rank "
            "tests on the bins), Holm-adjusted over the features",
            labels=[*names, FEATURE_LABEL],
        )
        for column in tested.columns:
            p_values.add_metric([*values, column.name], column.adjusted_p)
        yield p_values
        prediction_p = GaugeMetricFamily(
            PREDICTION_DRIFT_P_VALUE,
            "p-value of recent predictions against the predictions on the training reference",
            labels=names,
        )
        prediction_p.add_metric(values, predictions_tested.p_value)
        yield prediction_p


class PredictionCollector(Collector):
    """Rows predicted per bin of the reference profile (docs/metrics.md)."""

    def __init__(self, tally: PredictionTally, *, labels: dict[str, str]) -> None:
        self._tally = tally
        self._labels = labels

    def collect(self) -> Iterator[Metric]:
        values = list(self._labels.values())
        family = CounterMetricFamily(
            PREDICTIONS_TOTAL.removesuffix("_total"),
            "Rows predicted, by the prediction's bin in the model's reference profile",
            labels=[*self._labels, BIN_LABEL],
        )
        for label, count in sorted(self._tally.counts().items()):
            family.add_metric([*values, label], count)
        yield family


class ServerMetrics:
    """The request counter and latency histogram, the model's info, and drift when watched."""

    def __init__(
        self,
        *,
        registry: CollectorRegistry,
        model_deployment: str,
        track: str,
        version: str,
        model_name: str,
        runtime: str,
    ) -> None:
        self.registry = registry
        self.labels = {
            MODEL_DEPLOYMENT_LABEL: model_deployment,
            TRACK_LABEL: track,
            VERSION_LABEL: version,
        }
        # The router counts the same requests with source="router": a query picks one view.
        self._request_labels = {**self.labels, SOURCE_LABEL: SOURCE_SERVER}
        self._requests = Counter(
            REQUESTS_TOTAL.removesuffix("_total"),
            "Prediction requests by HTTP status code",
            [*self._request_labels, CODE_LABEL],
            registry=registry,
        )
        self._duration = Histogram(
            REQUEST_DURATION,
            "Time to answer a prediction request",
            list(self._request_labels),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        ).labels(**self._request_labels)
        info = Gauge(
            MODEL_INFO,
            "The model this server answers with (always 1)",
            [*self.labels, MODEL_LABEL, RUNTIME_LABEL],
            registry=registry,
        )
        info.labels(**self.labels, **{MODEL_LABEL: model_name, RUNTIME_LABEL: runtime}).set(1)
        self._by_code: dict[int, Counter] = {}
        self.feedback: FeedbackMetrics | None = None  # with a feedback key (count_feedback)
        # Series at 0 before the first request: Prometheus takes a new series' first sample as
        # its baseline, so a 500 series born at 1 would hide that first error from increase().
        for code in (200, 500):
            self._counter_of(code)

    def _counter_of(self, code: int) -> Counter:
        counter = self._requests.labels(**self._request_labels, **{CODE_LABEL: str(code)})
        self._by_code[code] = counter
        return counter

    def observe_request(self, *, code: int, seconds: float) -> None:
        counter = self._by_code.get(code)
        if counter is None:
            counter = self._counter_of(code)
        counter.inc()
        self._duration.observe(seconds)

    def count_predictions(self, tally: PredictionTally) -> None:
        self.registry.register(PredictionCollector(tally, labels=self.labels))

    def watch_drift(self, monitor: DriftMonitor, *, min_rows: int) -> None:
        self.registry.register(DriftCollector(monitor, labels=self.labels, min_rows=min_rows))

    def offline_evaluation(self, evaluation: Evaluation | None) -> None:
        """The manifest's held-out figures (`canaryml package --evaluate`), as gauges the
        operator shows next to the live checks and its offline gate compares: one per finite
        figure, and the rows with the held-out data's digest (0 and no digest: none recorded)."""
        rows = Gauge(
            OFFLINE_EVALUATION_ROWS,
            "Held-out rows the model's recorded figures were computed on (0: none recorded)",
            [*self.labels, HELDOUT_SHA256_LABEL],
            registry=self.registry,
        )
        figures = Gauge(
            OFFLINE_EVALUATION,
            "The model's figure on its held-out rows, as canaryml package --evaluate recorded it",
            [*self.labels, METRIC_LABEL],
            registry=self.registry,
        )
        if evaluation is None:
            rows.labels(**self.labels, **{HELDOUT_SHA256_LABEL: ""}).set(0)
            return
        digest = {HELDOUT_SHA256_LABEL: evaluation.source_sha256}
        rows.labels(**self.labels, **digest).set(evaluation.rows)
        for name, value in sorted(evaluation.metrics.items()):
            if math.isfinite(value):  # a gauge of NaN would read as no data anyway
                figures.labels(**self.labels, **{METRIC_LABEL: name}).set(value)

    def count_feedback(self, *, regression: bool) -> FeedbackMetrics:
        self.feedback = FeedbackMetrics(
            registry=self.registry, labels=self.labels, regression=regression
        )
        return self.feedback


class FeedbackMetrics:
    """Feedback counted under the track and version its prediction ids name (any replica of any
    track takes feedback for every track of its ModelDeployment), and refusals under the
    server's own labels, by reason. A classifier's series count correct labels, a regressor's
    the sums of absolute and squared errors; both count labels and the delay."""

    def __init__(self, *, registry: CollectorRegistry, labels: dict[str, str], regression: bool):
        self._model_deployment = labels[MODEL_DEPLOYMENT_LABEL]
        self._regression = regression
        names = list(labels)
        self._labels = Counter(
            FEEDBACK_LABELS_TOTAL.removesuffix("_total"),
            "Predictions given their true label or value (feedback), each id counted once",
            names,
            registry=registry,
        )
        self._correct = self._absolute = self._squared = None
        if regression:
            self._absolute = Counter(
                FEEDBACK_ABSOLUTE_ERROR_TOTAL.removesuffix("_total"),
                "Sum of |true - predicted| over the predictions given feedback",
                names,
                registry=registry,
            )
            self._squared = Counter(
                FEEDBACK_SQUARED_ERROR_TOTAL.removesuffix("_total"),
                "Sum of (true - predicted)^2 over the predictions given feedback",
                names,
                registry=registry,
            )
        else:
            self._correct = Counter(
                FEEDBACK_CORRECT_TOTAL.removesuffix("_total"),
                "Predictions whose feedback named the predicted class",
                names,
                registry=registry,
            )
        self._delay = Histogram(
            FEEDBACK_DELAY,
            "Time from a prediction to its feedback",
            names,
            buckets=FEEDBACK_DELAY_BUCKETS,
            registry=registry,
        )
        rejected = Counter(
            FEEDBACK_REJECTED_TOTAL.removesuffix("_total"),
            "Feedback items refused, by reason (a body that could not be read counts once)",
            [*names, REASON_LABEL],
            registry=registry,
        )
        # Every reason at 0 from the start, and the server's own track and version at 0.
        self._rejected = {
            reason: rejected.labels(**labels, **{REASON_LABEL: reason})
            for reason in FEEDBACK_REJECT_REASONS
        }
        self._children(labels[TRACK_LABEL], labels[VERSION_LABEL])

    def _children(self, track: str, version: str) -> tuple[Any, ...]:
        values = (self._model_deployment, track, version)
        return (
            self._labels.labels(*values),
            None if self._correct is None else self._correct.labels(*values),
            None if self._absolute is None else self._absolute.labels(*values),
            None if self._squared is None else self._squared.labels(*values),
            self._delay.labels(*values),
        )

    def labelled(self, items: Sequence[Labelled]) -> None:
        for item in items:
            labels, correct, absolute, squared, delay = self._children(item.track, item.version)
            labels.inc()
            delay.observe(item.delay_seconds)
            if correct is not None and item.correct:
                correct.inc()
            if absolute is not None and squared is not None and item.error is not None:
                absolute.inc(abs(item.error))
                squared.inc(item.error * item.error)

    def rejected(self, reasons: Tally[str]) -> None:
        for reason, count in reasons.items():
            self._rejected[reason].inc(count)
