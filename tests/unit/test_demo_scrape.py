"""The demo's checks from direct scrapes: parsing, counter increases, histogram quantiles, and
every built-in check with the scope and missing-series rules of the operator's PromQL."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.telemetry import (
    FEATURE_DRIFT,
    FEEDBACK_CORRECT_TOTAL,
    FEEDBACK_LABELS_TOTAL,
    PREDICTIONS_TOTAL,
    REQUEST_DURATION_BUCKET,
    REQUESTS_TOTAL,
    SHADOW_COMPARISONS,
)
from canaryml_api.telemetry import PREDICTION_DRIFT as PREDICTION_DRIFT_METRIC
from canaryml_cli.demo.scrape import (
    CUSTOM_NEEDS_PROMETHEUS,
    ScrapedSample,
    ScrapeHistory,
    counter_increase,
    histogram_quantile,
    measure_scraped,
    parse_exposition,
)
from canaryml_operator import checks
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Sample
from canaryml_router.metrics import RouterMetrics
from canaryml_server.metrics import LATENCY_BUCKETS
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from tests.unit.specs import CANARY_MODEL, MINIMAL

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
NAME = "iris"
VERSION = CANARY_MODEL["version"]
CANARY = {"model_deployment": NAME, "track": "canary", "version": VERSION}
REQUEST_SCOPE = {**CANARY, "source": "router"}
TARGET = "http://127.0.0.1:9000"
INF = math.inf


def make_spec(
    *, window: str = "1m", shadow_percent: int | None = None, **analysis: Any
) -> api.ModelDeploymentSpec:
    raw: dict[str, Any] = {
        **MINIMAL,
        "canary": {"model": dict(CANARY_MODEL)},
        "analysis": {"window": window, **analysis},
    }
    if shadow_percent is not None:
        raw["shadow"] = {
            "model": {"uri": "s3://models/iris/2.0.0", "version": "2.0.0"},
            "percent": shadow_percent,
        }
    return api.parse_spec(raw)


SPEC = make_spec()


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def requests(value: float, *, code: str = "200", **labels: str) -> ScrapedSample:
    return ScrapedSample(REQUESTS_TOTAL, {**REQUEST_SCOPE, "code": code, **labels}, value)


def buckets(counts: Mapping[str, float], **labels: str) -> list[ScrapedSample]:
    """Cumulative bucket samples, keyed by `le`."""
    return [
        ScrapedSample(REQUEST_DURATION_BUCKET, {**REQUEST_SCOPE, "le": le, **labels}, count)
        for le, count in counts.items()
    ]


def history_of(
    scrapes: Mapping[float, Sequence[ScrapedSample]], *, target: str = TARGET
) -> ScrapeHistory:
    history = ScrapeHistory()
    for seconds, samples in scrapes.items():
        history.add(target=target, time=at(seconds), samples=samples)
    return history


def measure(
    history: ScrapeHistory, *, seconds: float = 60, spec: api.ModelDeploymentSpec = SPEC
) -> m.Measurements:
    return measure_scraped(history=history, spec=spec, name=NAME, at=at(seconds))


def values(measured: m.Measurements) -> dict[str, float | None]:
    return {check: sample.value for check, sample in measured.samples.items()}


# --- parse_exposition -------------------------------------------------------------------------


def test_parse_exposition_of_prometheus_client_output() -> None:
    registry = CollectorRegistry()
    counter = Counter(
        REQUESTS_TOTAL.removesuffix("_total"),
        "requests",
        ["model_deployment", "track", "version", "code", "source"],
        registry=registry,
    )
    counter.labels(NAME, "canary", VERSION, "200", "router").inc(3)
    counter.labels(NAME, "canary", VERSION, "500", "router").inc()
    histogram = Histogram(
        "canaryml_request_duration_seconds",
        "latency",
        ["model_deployment", "track", "version", "source"],
        buckets=(0.1, 1.0),
        registry=registry,
    )
    histogram.labels(NAME, "canary", VERSION, "router").observe(0.5)

    samples = parse_exposition(generate_latest(registry).decode())

    assert not [sample for sample in samples if sample.name.endswith("_created")]
    assert ScrapedSample(REQUESTS_TOTAL, {**REQUEST_SCOPE, "code": "200"}, 3.0) in samples
    assert ScrapedSample(REQUESTS_TOTAL, {**REQUEST_SCOPE, "code": "500"}, 1.0) in samples
    bucket_values = {
        sample.labels["le"]: sample.value
        for sample in samples
        if sample.name == REQUEST_DURATION_BUCKET
    }
    assert bucket_values == {"0.1": 0.0, "1.0": 1.0, "+Inf": 1.0}
    names = {sample.name for sample in samples}
    assert "canaryml_request_duration_seconds_count" in names
    assert "canaryml_request_duration_seconds_sum" in names
    assert all(isinstance(sample.value, float) for sample in samples)


def test_parse_exposition_rejects_what_is_not_an_exposition() -> None:
    with pytest.raises(ValueError):
        parse_exposition("<html>\n<body>Not found</body>\n</html>\n")


def test_the_routers_own_metrics_measure_end_to_end() -> None:
    """The router's real exposition: its names and labels are the ones the checks read."""
    registry = CollectorRegistry()
    router = RouterMetrics(registry=registry, model_deployment=NAME)
    router.declare_comparisons(versions={"stable": "1.0.0", "canary": VERSION})
    history = ScrapeHistory()
    history.add(
        target=TARGET, time=at(0), samples=parse_exposition(generate_latest(registry).decode())
    )
    for _ in range(99):
        router.observe_request(track="canary", version=VERSION, code=200, seconds=0.004)
    router.observe_request(track="canary", version=VERSION, code=503, seconds=0.004)
    router.observe_request(track="stable", version="1.0.0", code=500, seconds=3.0)
    for _ in range(3):
        router.observe_comparison(track="canary", version=VERSION, result="agree")
    router.observe_comparison(track="canary", version=VERSION, result="disagree")
    router.observe_comparison(track="stable", version="1.0.0", result="disagree")
    history.add(
        target=TARGET, time=at(1), samples=parse_exposition(generate_latest(registry).decode())
    )
    for _ in range(100):
        router.observe_request(track="canary", version=VERSION, code=200, seconds=0.004)
    history.add(
        target=TARGET, time=at(2), samples=parse_exposition(generate_latest(registry).decode())
    )

    measured = measure(history, seconds=2, spec=make_spec(shadow_percent=100))

    # The canary's first series appear at its first request: their baseline is the scrape at 1 s.
    assert measured.get(m.REQUESTS).value == 100.0
    assert measured.get(m.ERROR_RATE).value == 0.0
    latency = measured.get(m.LATENCY_P99).value
    assert latency is not None
    assert 0.0025 < latency <= 0.005  # the bucket 0.004 s falls in
    assert measured.get(m.SHADOW_AGREEMENT).value == 0.75


# --- counter_increase and histogram_quantile ---------------------------------------------------


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        ([], None),
        ([7.0], None),
        ([1.0, 1.0], 0.0),
        ([1.0, 2.0, 5.0], 4.0),
        ([5.0, 7.0, 2.0, 4.0], 6.0),  # +2, reset (then 2 counted from 0), +2
        ([3.0, 0.0], 0.0),  # a restart at 0 lost nothing visible
        ([10.0, 12.0, 1.0, 0.0, 5.0], 2.0 + 1.0 + 0.0 + 5.0),  # two resets in a row
    ],
)
def test_counter_increase(samples: list[float], expected: float | None) -> None:
    assert counter_increase(values=samples) == expected


@pytest.mark.parametrize(
    ("counts", "expected"),
    [
        # rank 99 in (0.1, 0.2], holding 50 observations: 0.1 + 0.1 * 49 / 50
        ({0.1: 50.0, 0.2: 100.0, INF: 100.0}, 0.198),
        # rank 99 in the first bucket: interpolated from 0
        ({0.5: 100.0, INF: 100.0}, 0.495),
        # rank 99 in the +Inf bucket: the highest finite bound
        ({0.1: 50.0, 0.2: 90.0, INF: 100.0}, 0.2),
        # rank 0.99 * 200 = 198 exactly at a bucket's count: that bucket's upper bound
        ({0.25: 10.0, 0.5: 198.0, 1.0: 199.0, INF: 200.0}, 0.5),
        # a first bucket whose bound is <= 0 answers its bound
        ({0.0: 100.0, 1.0: 100.0, INF: 100.0}, 0.0),
        # given out of order, sorted by bound
        ({INF: 100.0, 0.2: 100.0, 0.1: 50.0}, 0.198),
        # a decrease is raised to the count before it: (0.2 → 50) then rank 99 in (0.2, 0.4]
        ({0.1: 50.0, 0.2: 40.0, 0.4: 100.0, INF: 100.0}, 0.2 + 0.2 * 49 / 50),
        ({0.1: 0.0, INF: 0.0}, None),  # no observations
        ({INF: 5.0}, None),  # fewer than two buckets
        ({0.1: 5.0, 1.0: 5.0}, None),  # no +Inf bucket
        ({}, None),
    ],
)
def test_histogram_quantile_p99(counts: dict[float, float], expected: float | None) -> None:
    result = histogram_quantile(q=0.99, buckets=counts)
    if expected is None:
        assert result is None
    else:
        assert result == pytest.approx(expected)


def test_histogram_quantile_outside_0_1() -> None:
    counts = {0.1: 1.0, INF: 1.0}
    assert histogram_quantile(q=-0.5, buckets=counts) == -INF
    assert histogram_quantile(q=1.5, buckets=counts) == INF
    assert histogram_quantile(q=math.nan, buckets=counts) is None


# --- ScrapeHistory -----------------------------------------------------------------------------


def test_history_keeps_scrapes_in_time_order_and_prunes() -> None:
    history = ScrapeHistory()
    history.add(target="a", time=at(2), samples=[requests(2)])
    history.add(target="a", time=at(0), samples=[requests(0)])  # a late answer
    history.add(target="a", time=at(1), samples=[requests(1)])
    history.add(target="b", time=at(0), samples=[])

    window = history.between(start=at(0), end=at(2))
    assert [scrape.time for scrape in window["a"]] == [at(0), at(1), at(2)]
    assert history.between(start=at(0.5), end=at(1))["a"][0].samples == (requests(1),)

    history.prune(before=at(1))
    assert history.targets == ["a"]  # b had nothing left
    assert [scrape.time for scrape in history.between(start=T0, end=at(9))["a"]] == [
        at(1),
        at(2),
    ]


# --- measure_scraped: requests and errorRate ---------------------------------------------------


def test_requests_and_error_rate_over_the_window() -> None:
    history = history_of(
        {
            -10: [requests(500), requests(50, code="500")],  # before the window: not read
            0: [requests(1000), requests(100, code="500")],
            30: [requests(1030), requests(105, code="500")],
            60: [requests(1090), requests(110, code="500")],
            61: [requests(9999), requests(9999, code="500")],  # after `at`: not read
        }
    )
    measured = measure(history)
    assert measured.time == at(60)
    assert measured.get(m.REQUESTS).value == 100.0
    assert measured.get(m.ERROR_RATE).value == pytest.approx(0.1)


def test_increase_across_a_restart_and_a_series_born_in_the_window() -> None:
    history = history_of(
        {
            0: [requests(40)],
            20: [requests(50)],
            30: [requests(5)],  # the process restarted: 5 more, counted from 0
            40: [requests(25), requests(0, code="503")],  # the 503 series appears
            60: [requests(35), requests(2, code="503"), requests(9, code="504")],
        }
    )
    measured = measure(history)
    # 200: 10 + 5 + 20 + 10 = 45; 503: 2 from its first sample; 504: one sample, nothing.
    assert measured.get(m.REQUESTS).value == 47.0
    assert measured.get(m.ERROR_RATE).value == pytest.approx(2 / 47)


def test_no_5xx_series_is_an_error_rate_of_zero() -> None:
    history = history_of({0: [requests(10)], 60: [requests(30)]})
    assert values(measure(history))[m.ERROR_RATE] == 0.0


def test_series_of_several_targets_add_up() -> None:
    history = ScrapeHistory()
    for target, (first, last) in {"a": (0, 10), "b": (100, 130)}.items():
        history.add(target=target, time=at(0), samples=[requests(first)])
        history.add(target=target, time=at(60), samples=[requests(last)])
    assert measure(history).get(m.REQUESTS).value == 40.0


@pytest.mark.parametrize(
    "scrapes",
    [
        {},  # nothing scraped
        {0: [requests(10)]},  # one sample: no increase
        {0: [requests(10), requests(0, code="500")], 60: [requests(10), requests(0, code="500")]},
        {-1: [requests(0)], 61: [requests(10)]},  # samples only outside the window
    ],
)
def test_no_requests_is_zero_requests_and_no_error_rate(
    scrapes: dict[float, list[ScrapedSample]],
) -> None:
    measured = measure(history_of(scrapes))
    assert measured.get(m.REQUESTS) == Sample(0.0)
    assert measured.get(m.ERROR_RATE) == Sample()
    assert measured.get(m.LATENCY_P99) == Sample()


@pytest.mark.parametrize(
    "labels",
    [
        {"model_deployment": "other"},
        {"track": "stable"},
        {"version": "1.0.0"},
        {"source": "server"},
    ],
)
def test_request_series_out_of_scope_are_ignored(labels: dict[str, str]) -> None:
    history = history_of(
        {
            0: [requests(0), requests(0, code="500", **labels), *buckets({"+Inf": 0}, **labels)],
            60: [
                requests(10),
                requests(90, code="500", **labels),
                *buckets({"0.1": 90, "+Inf": 90}, **labels),
            ],
        }
    )
    measured = measure(history)
    assert values(measured)[m.REQUESTS] == 10.0
    assert values(measured)[m.ERROR_RATE] == 0.0
    assert values(measured)[m.LATENCY_P99] is None


def test_source_server_reads_the_servers_request_series() -> None:
    history = history_of(
        {
            0: [requests(0), requests(0, source="server")],
            60: [requests(10), requests(4, source="server")],
        }
    )
    measured = measure_scraped(history=history, spec=SPEC, name=NAME, at=at(60), source="server")
    assert measured.get(m.REQUESTS).value == 4.0


# --- latencyP99 --------------------------------------------------------------------------------


def test_latency_p99_sums_bucket_increases_by_le() -> None:
    history = ScrapeHistory()
    # Two targets whose bucket increases add up to {0.1: 50, 0.2: 100, +Inf: 100}; one writes
    # its bounds as "0.10": the same bucket.
    history.add(target="a", time=at(0), samples=buckets({"0.1": 5, "0.2": 5, "+Inf": 5}))
    history.add(target="a", time=at(60), samples=buckets({"0.1": 35, "0.2": 65, "+Inf": 65}))
    history.add(target="b", time=at(0), samples=buckets({"0.10": 0, "0.2": 0, "+Inf": 0}))
    history.add(target="b", time=at(60), samples=buckets({"0.10": 20, "0.2": 40, "+Inf": 40}))
    assert measure(history).get(m.LATENCY_P99).value == pytest.approx(0.198)


def test_latency_p99_in_the_inf_bucket_is_the_highest_bound() -> None:
    history = history_of(
        {
            0: buckets({"0.5": 0, "1.0": 0, "+Inf": 0}),
            60: buckets({"0.5": 10, "1.0": 10, "+Inf": 20}),
        }
    )
    assert measure(history).get(m.LATENCY_P99).value == 1.0


def test_latency_p99_of_a_real_histogram() -> None:
    registry = CollectorRegistry()
    histogram = Histogram(
        "canaryml_request_duration_seconds",
        "latency",
        ["model_deployment", "track", "version", "source"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    ).labels(NAME, "canary", VERSION, "router")
    history = ScrapeHistory()
    history.add(
        target=TARGET, time=at(0), samples=parse_exposition(generate_latest(registry).decode())
    )
    for _ in range(100):
        histogram.observe(0.003)  # (0.0025, 0.005]
    history.add(
        target=TARGET, time=at(60), samples=parse_exposition(generate_latest(registry).decode())
    )
    # rank 99 of 100, all in (0.0025, 0.005]: 0.0025 + 0.0025 * 99 / 100
    assert measure(history).get(m.LATENCY_P99).value == pytest.approx(0.0025 + 0.0025 * 0.99)


# --- drift and predictionDrift -----------------------------------------------------------------


def feature_drift(value: float, feature: str, **labels: str) -> ScrapedSample:
    return ScrapedSample(FEATURE_DRIFT, {**CANARY, "feature": feature, **labels}, value)


def prediction_drift(value: float, **labels: str) -> ScrapedSample:
    return ScrapedSample(PREDICTION_DRIFT_METRIC, {**CANARY, **labels}, value)


def test_drift_is_the_max_of_the_newest_scrape_of_each_target() -> None:
    history = ScrapeHistory()
    history.add(target="a", time=at(10), samples=[feature_drift(0.9, "x"), prediction_drift(0.8)])
    history.add(
        target="a",
        time=at(50),
        samples=[feature_drift(0.1, "x"), feature_drift(0.3, "y"), prediction_drift(0.05)],
    )
    history.add(target="b", time=at(30), samples=[feature_drift(0.2, "x")])
    measured = measure(history)
    assert measured.get(m.DRIFT).value == 0.3  # not 0.9: a's newest scrape says 0.3
    assert measured.get(m.PREDICTION_DRIFT).value == 0.05


def test_drift_names_its_worst_features_each_the_max_over_targets() -> None:
    # As `max by (feature)`: a feature's value is its largest over the replicas; the sample
    # names the worst few, worst first, as the operator's provider does.
    history = ScrapeHistory()
    history.add(
        target="a",
        time=at(50),
        samples=[feature_drift(0.4, "mean radius"), feature_drift(0.05, "mean texture")],
    )
    history.add(
        target="b",
        time=at(50),
        samples=[
            feature_drift(0.1, "mean radius"),
            feature_drift(0.2, "worst area"),
            feature_drift(0.01, "mean smoothness"),
            feature_drift(math.nan, "mean symmetry"),
        ],
    )
    drift = measure(history).get(m.DRIFT)
    ranked = [
        ("mean radius", 0.4),
        ("worst area", 0.2),
        ("mean texture", 0.05),
        ("mean smoothness", 0.01),
    ]
    assert len(ranked) > m.WORST_FEATURES_KEPT  # the cap is exercised
    assert drift == Sample(value=0.4, features=tuple(ranked[: m.WORST_FEATURES_KEPT]))
    assert measure(history).get(m.PREDICTION_DRIFT).features == ()  # no feature to name


def test_drift_missing_from_the_newest_scrape_is_no_data() -> None:
    history = history_of(
        {
            -5: [feature_drift(0.7, "x")],  # before the window
            10: [feature_drift(0.5, "x"), prediction_drift(0.5)],
            50: [],  # the series went away (a restarted server's window is too small)
        }
    )
    measured = measure(history)
    assert measured.get(m.DRIFT) == Sample()
    assert measured.get(m.PREDICTION_DRIFT) == Sample()


@pytest.mark.parametrize(
    "labels", [{"version": "1.0.0"}, {"track": "stable"}, {"model_deployment": "other"}]
)
def test_drift_out_of_scope_is_ignored(labels: dict[str, str]) -> None:
    history = history_of(
        {
            50: [
                feature_drift(0.9, "x", **labels),
                feature_drift(0.1, "y"),
                prediction_drift(0.9, **labels),
            ]
        }
    )
    measured = measure(history)
    assert measured.get(m.DRIFT).value == 0.1
    assert measured.get(m.PREDICTION_DRIFT) == Sample()


def test_drift_nan_is_skipped_and_never_returned() -> None:
    history = history_of({50: [feature_drift(math.nan, "x"), feature_drift(0.2, "y")]})
    assert measure(history).get(m.DRIFT).value == 0.2
    history = history_of({50: [feature_drift(math.nan, "x"), prediction_drift(math.nan)]})
    measured = measure(history)
    assert measured.get(m.DRIFT) == Sample()
    assert measured.get(m.PREDICTION_DRIFT) == Sample()


# --- shadowAgreement ---------------------------------------------------------------------------


def comparisons(value: float, result: str, **labels: str) -> ScrapedSample:
    scope = {
        "model_deployment": NAME,
        "track": "canary",
        "version": VERSION,
        "result": result,
        **labels,
    }
    return ScrapedSample(SHADOW_COMPARISONS, scope, value)


SHADOWED = make_spec(shadow_percent=50)


def test_shadow_agreement_ignores_errors_and_other_tracks() -> None:
    history = history_of(
        {
            0: [
                comparisons(0, "agree"),
                comparisons(0, "disagree"),
                comparisons(0, "error"),
                comparisons(0, "skipped"),
                comparisons(0, "disagree", track="stable"),
            ],
            60: [
                comparisons(30, "agree"),
                comparisons(10, "disagree"),
                comparisons(500, "error"),
                comparisons(500, "skipped"),
                comparisons(500, "disagree", track="stable"),
            ],
        }
    )
    assert measure(history, spec=SHADOWED).get(m.SHADOW_AGREEMENT).value == 0.75


def test_shadow_agreement_ignores_an_earlier_canarys_comparisons() -> None:
    earlier = {"version": "0.9.0"}
    history = history_of(
        {
            0: [comparisons(0, "agree"), comparisons(0, "disagree", **earlier)],
            60: [comparisons(3, "agree"), comparisons(900, "disagree", **earlier)],
        }
    )
    assert measure(history, spec=SHADOWED).get(m.SHADOW_AGREEMENT) == Sample(1.0)


def test_shadow_agreement_with_only_disagreements_is_zero() -> None:
    history = history_of({0: [comparisons(0, "disagree")], 60: [comparisons(4, "disagree")]})
    assert measure(history, spec=SHADOWED).get(m.SHADOW_AGREEMENT) == Sample(0.0)


@pytest.mark.parametrize(
    "scrapes",
    [
        {},
        {0: [comparisons(3, "agree")], 60: [comparisons(3, "agree")]},  # no new comparison
        {0: [comparisons(0, "error")], 60: [comparisons(9, "error")]},  # only failures
    ],
)
def test_shadow_agreement_without_comparisons_is_no_data(
    scrapes: dict[float, list[ScrapedSample]],
) -> None:
    assert measure(history_of(scrapes), spec=SHADOWED).get(m.SHADOW_AGREEMENT) == Sample()


@pytest.mark.parametrize("spec", [SPEC, make_spec(shadow_percent=0)])
def test_no_shadow_agreement_without_mirrored_traffic(spec: api.ModelDeploymentSpec) -> None:
    history = history_of({0: [comparisons(0, "agree")], 60: [comparisons(4, "agree")]})
    assert m.SHADOW_AGREEMENT not in measure(history, spec=spec).samples


# --- custom checks, keys, window ---------------------------------------------------------------


def test_custom_metrics_fail_with_a_way_out() -> None:
    spec = make_spec(
        metrics=[{"name": "business-kpi", "query": "sum(rate(orders_total[1m]))", "min": 1}]
    )
    sample = measure(ScrapeHistory(), spec=spec).get("business-kpi")
    assert sample == Sample.failed(CUSTOM_NEEDS_PROMETHEUS)
    assert "--prometheus" in CUSTOM_NEEDS_PROMETHEUS


@pytest.mark.parametrize(
    "spec",
    [
        SPEC,
        make_spec(shadow_percent=100),
        make_spec(metrics=[{"name": "kpi", "query": "vector(1)", "max": 2}]),
    ],
)
def test_the_checks_are_those_of_the_operators_queries(spec: api.ModelDeploymentSpec) -> None:
    queries = checks.build_queries(spec=spec, name=NAME, namespace=None, source="router")
    assert set(measure(ScrapeHistory(), spec=spec).samples) == set(queries)


def test_the_window_is_the_specs() -> None:
    history = history_of({0: [requests(0)], 45: [requests(10)], 60: [requests(30)]})
    assert measure(history, spec=make_spec(window="15s")).get(m.REQUESTS).value == 20.0
    assert measure(history, spec=make_spec(window="1.5m")).get(m.REQUESTS).value == 30.0


def test_a_spec_without_canary_is_refused() -> None:
    with pytest.raises(ValueError, match="canary"):
        measure_scraped(history=ScrapeHistory(), spec=api.parse_spec(MINIMAL), name=NAME, at=T0)


def test_counts_since_the_step_began_and_p_values_from_scrapes() -> None:
    spec = make_spec(
        window="10s",
        sequential={},
        baseline={"maxErrorRateRatio": 2},
        thresholds={"driftSignificance": 0.01},
    )
    stable_scope = {"track": "stable", "version": MINIMAL["model"]["version"]}
    p_value = "canaryml_feature_drift_p_value"

    def scrape(n: float) -> list[ScrapedSample]:
        return [
            requests(10 * n),
            requests(n, code="500"),
            requests(100 * n, **stable_scope),
            *buckets({"0.25": 10 * n, "+Inf": 11 * n}),
            *buckets({"0.25": 100 * n, "+Inf": 100 * n}, **stable_scope),
            ScrapedSample(p_value, {**CANARY, "feature": "a"}, 0.5),
            ScrapedSample(p_value, {**CANARY, "feature": "b"}, 0.004),
        ]

    # Scrapes every second for a minute; the step began at 20 s, long before the 10 s window.
    history = history_of({float(s): scrape(s) for s in range(61)})
    status = api.ModelDeploymentStatus(step_started_at=at(20))
    measured = measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status)
    got = values(measured)
    assert got[m.count_name("canary", "requests")] == 11 * 40
    assert got[m.count_name("canary", "errors")] == 40
    assert got[m.count_name("canary", "timed")] == 11 * 40
    assert got[m.count_name("canary", "slow")] == 40
    assert got[m.count_name("stable", "requests")] == 100 * 40
    assert got[m.count_name("stable", "slow")] == 0
    # Bonferroni over the one target: the smallest p-value as it is.
    assert got[m.DRIFT_P_VALUE] == 0.004
    assert measured.get(m.DRIFT_P_VALUE).features[0] == ("b", 0.004)
    # Without the status there is nothing since a step began.
    assert m.count_name("canary", "requests") not in values(
        measure_scraped(history=history, spec=spec, name=NAME, at=at(60))
    )


def test_counts_since_the_step_began_start_at_the_last_scrape_before_it() -> None:
    spec = make_spec(window="10s", sequential={})
    history = ScrapeHistory()
    for s in range(0, 61, 10):
        samples = [requests(100 + s)]  # 100 before the step began at 25 s
        if s >= 40:
            samples.append(requests(s - 39, code="500"))  # born after the start: 1 at 40 s
        # A restart at 50 s: the counter begins again at 0.
        history.add(target="old", time=at(s), samples=samples if s < 50 else [requests(s - 50)])
        if s >= 30:  # a replica started after the step began: every request counts
            history.add(target="new", time=at(s), samples=[requests(7 + s)])
    status = api.ModelDeploymentStatus(step_started_at=at(25))
    got = values(measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status))
    # old: 120 at 20 s (the baseline), 140 at 40 s, a reset, 10 at 60 s: 140 - 120 + 10 = 30,
    # and its 5xx series, absent from the baseline, 1 from 0; new: 67 at 60 s, from 0.
    assert got[m.count_name("canary", "requests")] == 30 + 1 + 67
    assert got[m.count_name("canary", "errors")] == 1

    # Scrapes before the start pruned: the oldest kept is the baseline (counts run short).
    history.prune(before=at(35))
    got = values(measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status))
    # old: 140 at 40 s, a reset, 10 at 60 s; new was first seen after the start: still from 0.
    assert got[m.count_name("canary", "requests")] == 10 + 67


def test_rows_predicted_per_bin_since_the_step_began_from_scrapes() -> None:
    spec = make_spec(window="10s", baseline={"maxPredictionShift": 0.05})
    stable = {"model_deployment": NAME, "track": "stable", "version": MINIMAL["model"]["version"]}

    def predicted(value: float, bin_: str, **labels: str) -> ScrapedSample:
        return ScrapedSample(PREDICTIONS_TOTAL, {**CANARY, "bin": bin_, **labels}, value)

    history = ScrapeHistory()
    for s in range(0, 61, 10):
        samples = [
            predicted(100 + 2 * s, "0"),  # 140 at the baseline (20 s), 220 at 60 s
            predicted(50 + s, "1"),
            predicted(3 * s, "0", **stable),
            predicted(1000, "0", version="0.1"),  # an earlier canary's: out of scope
        ]
        if s >= 40:
            samples.append(predicted(s - 39, "2"))  # a class first predicted after the start
        history.add(target="a", time=at(s), samples=samples)
        if s >= 30:  # a replica started since: every row counts
            history.add(target="b", time=at(s), samples=[predicted(s, "1")])
    status = api.ModelDeploymentStatus(step_started_at=at(25))
    measured = measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status)
    canary = measured.get(m.count_name("canary", m.PREDICTIONS))
    assert dict(canary.features) == {"0": 80.0, "1": 40.0 + 60.0, "2": 21.0}
    assert canary.value == 80 + 100 + 21
    assert dict(measured.get(m.count_name("stable", m.PREDICTIONS)).features) == {"0": 120.0}
    # The operator's queries ask for the same counts.
    queries = checks.build_queries(
        spec=spec, name=NAME, namespace=None, source="router", status=status, at=at(60)
    )
    since = {name for name in queries if name.endswith("SinceStep")}
    assert since == {name for name in measured.samples if name.endswith("SinceStep")}


def test_labels_since_the_step_began_from_scrapes() -> None:
    spec = make_spec(
        window="10s", thresholds={"minAccuracy": 0.9}, baseline={"maxAccuracyDrop": 0.02}
    )
    stable = {"model_deployment": NAME, "track": "stable", "version": MINIMAL["model"]["version"]}

    def feedback(name: str, value: float, **labels: str) -> ScrapedSample:
        return ScrapedSample(name, {**CANARY, **labels}, value)

    history = ScrapeHistory()
    for s in range(0, 61, 10):
        samples = [
            feedback(FEEDBACK_LABELS_TOTAL, 100 + 3 * s),  # 160 at the baseline (20 s)
            feedback(FEEDBACK_CORRECT_TOTAL, 90 + 2 * s),  # 130 at the baseline
            feedback(FEEDBACK_LABELS_TOTAL, 1000, version="0.1"),  # an earlier canary's
        ]
        if s >= 40:  # stable's first labels, after the start: counted from 0
            samples += [
                feedback(FEEDBACK_LABELS_TOTAL, s, **stable),
                feedback(FEEDBACK_CORRECT_TOTAL, s - 10, **stable),
            ]
        history.add(target="a", time=at(s), samples=samples)
        if s >= 30:  # a replica started since: every label counts
            history.add(
                target="b",
                time=at(s),
                samples=[
                    feedback(FEEDBACK_LABELS_TOTAL, s),
                    feedback(FEEDBACK_CORRECT_TOTAL, s),
                ],
            )
    status = api.ModelDeploymentStatus(step_started_at=at(25))
    measured = measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status)
    got = values(measured)
    assert got[m.count_name("canary", "labelled")] == (280 - 160) + 60
    assert got[m.count_name("canary", "correct")] == (210 - 130) + 60
    assert got[m.count_name("stable", "labelled")] == 60
    assert got[m.count_name("stable", "correct")] == 50
    # The operator's queries ask for the same counts.
    queries = checks.build_queries(
        spec=spec, name=NAME, namespace=None, source="router", status=status, at=at(60)
    )
    since = {name for name in queries if name.endswith("SinceStep")}
    assert since == {name for name in measured.samples if name.endswith("SinceStep")}


def test_no_label_series_is_no_label_and_no_correct_series_no_data() -> None:
    spec = make_spec(window="10s", thresholds={"minAccuracy": 0.9})
    status = api.ModelDeploymentStatus(step_started_at=at(25))
    regressor = history_of(
        {float(s): [ScrapedSample(FEEDBACK_LABELS_TOTAL, CANARY, s)] for s in range(0, 61, 10)}
    )
    for history, labelled in ((ScrapeHistory(), 0.0), (regressor, 40.0)):
        measured = measure_scraped(history=history, spec=spec, name=NAME, at=at(60), status=status)
        assert measured.get(m.count_name("canary", "labelled")).value == labelled
        assert measured.get(m.count_name("canary", "correct")).value is None
