"""Prometheus metrics of the router, on a registry of its own, served at the router's /metrics.

Names and labels are the metrics contract of `canaryml_api.telemetry` (docs/metrics.md). The
request series carry
`source="router"` (the model servers' carry `source="server"`), so a query picks one view of
the traffic and never counts a request twice.

The request counter and histogram are plain numbers turned into metric families at scrape time,
not prometheus_client's Counter and Histogram: those take a lock per increment and walk the
buckets in Python, about 3 us per proxied request, 5 % of the router's whole cost. Everything
here runs on the router's one event-loop thread (requests and scrapes alike), so no lock is
needed.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Mapping

from canaryml_api.telemetry import (
    CODE_LABEL,
    COMPARISON_RESULTS,
    LATENCY_BUCKETS,
    MODEL_DEPLOYMENT_LABEL,
    REQUEST_DURATION,
    REQUESTS_TOTAL,
    RESULT_LABEL,
    ROUTER_CANARY_WEIGHT,
    ROUTER_RATE_LIMITED,
    ROUTER_SHADOW_PERCENT,
    SHADOW_COMPARISONS,
    SOURCE_LABEL,
    SOURCE_ROUTER,
    TRACK_LABEL,
    VERSION_LABEL,
)
from prometheus_client import CollectorRegistry, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

DECLARED_CODES = (200, 500, 502, 503, 504)


class _Histogram:
    __slots__ = ("counts", "total")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one is +Inf
        self.total = 0.0


class _RouterCollector(Collector):
    """Requests by (track, version, code), durations by (track, version), comparisons by
    (live track, its version, result): counted by RouterMetrics, exposed here."""

    def __init__(self, model_deployment: str) -> None:
        self.deployment = model_deployment
        self.requests: dict[tuple[str, str, int], int] = {}
        self.durations: dict[tuple[str, str], _Histogram] = {}
        self.comparisons: dict[tuple[str, str, str], int] = {}
        self.rate_limited = 0

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            REQUESTS_TOTAL,
            "Requests answered through the router, by the track that answered and status code",
            labels=[MODEL_DEPLOYMENT_LABEL, TRACK_LABEL, VERSION_LABEL, CODE_LABEL, SOURCE_LABEL],
        )
        for (track, version, code), count in sorted(self.requests.items()):
            requests.add_metric([self.deployment, track, version, str(code), SOURCE_ROUTER], count)
        yield requests
        durations = HistogramMetricFamily(
            REQUEST_DURATION,
            "Time from a request's arrival at the router to its answer being ready, by track",
            labels=[MODEL_DEPLOYMENT_LABEL, TRACK_LABEL, VERSION_LABEL, SOURCE_LABEL],
        )
        bounds = [*map(floatToGoString, LATENCY_BUCKETS), "+Inf"]
        for (track, version), histogram in sorted(self.durations.items()):
            cumulative, buckets = 0, []
            for bound, count in zip(bounds, histogram.counts, strict=True):
                cumulative += count
                buckets.append((bound, float(cumulative)))
            durations.add_metric(
                [self.deployment, track, version, SOURCE_ROUTER], buckets, histogram.total
            )
        yield durations
        comparisons = CounterMetricFamily(
            SHADOW_COMPARISONS,
            "Shadow answers compared with the live answer of `track` at `version`: agree, "
            "disagree, error (the shadow failed or timed out) or skipped (too many mirrors in "
            "flight)",
            labels=[MODEL_DEPLOYMENT_LABEL, TRACK_LABEL, VERSION_LABEL, RESULT_LABEL],
        )
        for (track, version, result), count in sorted(self.comparisons.items()):
            comparisons.add_metric([self.deployment, track, version, result], count)
        yield comparisons
        limited = CounterMetricFamily(
            ROUTER_RATE_LIMITED,
            "Requests refused with 429 by the per-client rate limit (never a track's request)",
            labels=[MODEL_DEPLOYMENT_LABEL],
        )
        limited.add_metric([self.deployment], self.rate_limited)
        yield limited


class RouterMetrics:
    def __init__(self, *, registry: CollectorRegistry, model_deployment: str) -> None:
        self.registry = registry
        self._collector = _RouterCollector(model_deployment)
        registry.register(self._collector)
        self._canary_weight = Gauge(
            ROUTER_CANARY_WEIGHT,
            "Percent of traffic the router sends to the canary",
            [MODEL_DEPLOYMENT_LABEL],
            registry=registry,
        ).labels(model_deployment)
        self._shadow_percent = Gauge(
            ROUTER_SHADOW_PERCENT,
            "Percent of prediction requests the router mirrors to the shadow",
            [MODEL_DEPLOYMENT_LABEL],
            registry=registry,
        ).labels(model_deployment)

    def observe_request(self, *, track: str, version: str, code: int, seconds: float) -> None:
        collector = self._collector
        key = (track, version, code)
        collector.requests[key] = collector.requests.get(key, 0) + 1
        histogram = collector.durations.get((track, version))
        if histogram is None:
            histogram = collector.durations[(track, version)] = _Histogram()
            # Error series at 0 from the first request on: Prometheus takes a new series' first
            # sample as its baseline, so an error series born at 1 would hide that first error
            # from increase() and delay a rollback by a scrape.
            for declared in DECLARED_CODES:
                collector.requests.setdefault((track, version, declared), 0)
        histogram.counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        histogram.total += seconds

    def observe_rate_limited(self) -> None:
        """A request refused by the rate limit: counted here only, never as a track's."""
        self._collector.rate_limited += 1

    def observe_comparison(self, *, track: str, version: str, result: str) -> None:
        key = (track, version, result)
        self._collector.comparisons[key] = self._collector.comparisons.get(key, 0) + 1

    def declare_comparisons(self, *, versions: Mapping[str, str]) -> None:
        """Series at 0 for every result of these live tracks ({track: version}): a ratio over
        `rate()` of them is then defined from the first mirror on, not absent until each result
        has happened."""
        for track, version in versions.items():
            for result in COMPARISON_RESULTS:
                self._collector.comparisons.setdefault((track, version, result), 0)

    def set_weights(self, *, canary_weight: int, shadow_percent: int) -> None:
        self._canary_weight.set(canary_weight)
        self._shadow_percent.set(shadow_percent)
