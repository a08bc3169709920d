"""The analysis's metrics end to end: real model servers, scraped by a real Prometheus.

Each test polls Prometheus until it holds what the test needs (never a fixed sleep): the first
scrape of a new counter is its baseline, and increase() needs samples on both sides.
"""

from __future__ import annotations

import asyncio
import base64
import socket
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_api import resource as api
from canaryml_operator import verdicts
from canaryml_operator.checks import MIN_SINCE_STEP_SECONDS, build_queries
from canaryml_operator.measurements import (
    ACCURACY,
    ACCURACY_VS_STABLE,
    DRIFT,
    DRIFT_P_VALUE,
    ERROR_RATE,
    ERROR_RATE_VS_STABLE,
    LATENCY_P99,
    PREDICTION_DRIFT,
    PREDICTION_DRIFT_P_VALUE,
    PREDICTIONS,
    PREDICTIONS_VS_STABLE,
    REQUESTS,
    SHADOW_AGREEMENT,
    WORST_FEATURES_KEPT,
    Measurements,
    count_name,
)
from canaryml_operator.providers import (
    MetricError,
    PrometheusProvider,
    auth_headers,
    build_provider,
    measure,
)
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample as ExportedSample

from .prometheus import BASIC_AUTH, RunningPrometheus, Target

pytestmark = pytest.mark.integration

NAME = "demo"
NAMESPACE = "default"
CANARY = f'model_deployment="{NAME}",track="canary",version="1.1.0"'
StartPrometheus = Callable[..., RunningPrometheus]


def spec(*, url: str, metrics: list[dict[str, Any]] | None = None) -> api.ModelDeploymentSpec:
    return api.parse_spec(
        {
            "model": {"uri": "file:///models/stable", "version": "1.0.0"},
            "canary": {"model": {"uri": "file:///models/canary", "version": "1.1.0"}},
            "shadow": {"model": {"uri": "file:///models/shadow", "version": "9.9.9"}},
            "analysis": {
                "prometheus": {"url": url, "timeout": "5s"},
                "window": "1m",
                "metrics": metrics or [],
            },
        }
    )


def serve(start_server: Callable[..., str], model: Path, track: str) -> str:
    return start_server(
        model,
        "--track", track, "--model-deployment", NAME,
        env={"CANARYML_DRIFT_MIN_ROWS": "20", "CANARYML_RUNTIME": "sklearn"},
    )  # fmt: skip


async def send(url: str, rows: list[dict[str, Any]], *, invalid: int = 0) -> None:
    """One request per row (each counts), then `invalid` requests the schema refuses (422)."""
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        for row in rows:
            assert (await client.post("/predict", json=row)).status_code == 200
        for _ in range(invalid):
            assert (await client.post("/predict", json={"bad": 1})).status_code == 422


def exported(url: str, family: str) -> list[float]:
    """The values a server exports right now for one metric family."""
    return [sample.value for sample in exported_samples(url, family)]


def exported_by(url: str, family: str, *, label: str) -> dict[str, float]:
    """The values a server exports right now for one metric family, keyed by one label."""
    return {sample.labels[label]: sample.value for sample in exported_samples(url, family)}


def exported_samples(url: str, family: str) -> list[ExportedSample]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        sample
        for metric in text_string_to_metric_families(text)
        if metric.name == family
        for sample in metric.samples
    ]


@pytest.fixture
async def provider_for() -> AsyncIterator[Callable[[str], PrometheusProvider]]:
    providers: list[PrometheusProvider] = []

    def make(url: str) -> PrometheusProvider:
        provider = PrometheusProvider(url=url, timeout=5.0)
        providers.append(provider)
        return provider

    yield make
    for provider in providers:
        await provider.aclose()


@pytest.fixture
def rows(test_rows: pd.DataFrame) -> list[dict[str, Any]]:
    return [
        {str(column): cell for column, cell in record.items()}
        for record in test_rows.to_dict(orient="records")
    ]


async def test_measure_reads_the_canary_under_analysis(
    start_server: Callable[..., str],
    prometheus: StartPrometheus,
    provider_for: Callable[[str], PrometheusProvider],
    example_models: dict[str, Path],
    rows: list[dict[str, Any]],
) -> None:
    canary = serve(start_server, example_models["canary"], "canary")  # 1.1.0
    # Traffic that must not count: the stable track, and an earlier canary (another version).
    stable = serve(start_server, example_models["stable"], "stable")
    earlier = serve(start_server, example_models["bad"], "canary")  # 1.2.0
    labels = {"namespace": NAMESPACE}
    prom = prometheus([Target(url, labels) for url in (canary, stable, earlier)])
    await prom.wait_for_async("count(up == 1)", lambda v: v == 3)

    # The first scrape of a counter is its baseline: create every series before measuring.
    for url in (canary, stable, earlier):
        await send(url, rows[:1], invalid=1)
    await prom.wait_for_async(f"sum(canaryml_requests_total{{{CANARY}}})", lambda v: v == 2)

    measured = 60 + 5
    await send(canary, rows[:60], invalid=5)
    await send(stable, rows[:100])
    await send(earlier, rows[:100], invalid=10)
    await prom.wait_for_async(
        f"sum(canaryml_requests_total{{{CANARY}}})", lambda v: v == 2 + measured
    )
    await prom.wait_for_async(f"max(canaryml_feature_drift{{{CANARY}}})")

    metrics = [
        {"name": "rows", "query": f"sum(canaryml_drift_window_rows{{{CANARY}}})", "min": 0},
        {"name": "broken", "query": "sum(rate(canaryml_requests_total[1m])", "max": 1},
        {"name": "many", "query": "canaryml_model_info", "max": 1},
    ]
    queries = build_queries(
        spec=spec(url=prom.url, metrics=metrics), name=NAME, namespace=NAMESPACE, source="server"
    )
    result = await measure(provider=provider_for(prom.url), queries=queries, at=datetime.now(UTC))
    assert set(result.samples) == set(queries)
    ok = {name: s for name, s in result.samples.items() if s.error is None}
    assert set(ok) == set(queries) - {"broken", "many"}, result.samples

    # increase() extrapolates to the window's edges: never less than sent, a little more.
    assert measured <= value(result, REQUESTS) <= measured * 1.5
    assert value(result, ERROR_RATE) == 0.0  # 4xx are not errors; no 5xx series is 0
    assert 0 < value(result, LATENCY_P99) < 10
    # Exactly the canary's own gauges: the earlier canary's drift is elsewhere.
    assert value(result, DRIFT) == pytest.approx(max(exported(canary, "canaryml_feature_drift")))
    # And which features: the canary's worst few, by the names it exports, worst first.
    by_feature = exported_by(canary, "canaryml_feature_drift", label="feature")
    assert len(by_feature) > WORST_FEATURES_KEPT  # the breast-cancer data has 30 features
    worst = sorted(by_feature.items(), key=lambda item: (-item[1], item[0]))
    drift = result.get(DRIFT)
    assert [name for name, _ in drift.features] == [
        name for name, _ in worst[:WORST_FEATURES_KEPT]
    ], drift
    assert [psi for _, psi in drift.features] == pytest.approx(
        [psi for _, psi in worst[:WORST_FEATURES_KEPT]]
    )
    assert result.get(PREDICTION_DRIFT).features == ()  # no feature to name
    assert value(result, PREDICTION_DRIFT) == pytest.approx(
        exported(canary, "canaryml_prediction_drift")[0]
    )
    assert value(result, "rows") == exported(canary, "canaryml_drift_window_rows")[0] == 61
    assert result.get(SHADOW_AGREEMENT).value is None  # no router, no comparisons: no data

    broken = result.get("broken").error or ""
    # Its own words (a parse error) go to the log, not the status: the reply is not trusted.
    assert "bad_data" in broken and "operator's log" in broken, broken
    assert "3 series" in (result.get("many").error or "")

    # A server that is not Prometheus: an HTTP error, with what it said.
    not_prometheus = await measure(
        provider=provider_for(canary), queries={"x": "vector(1)"}, at=datetime.now(UTC)
    )
    assert "HTTP 404" in (not_prometheus.get("x").error or "")


def value(result: Measurements, check: str) -> float:
    sample = result.get(check)
    assert sample.error is None and sample.value is not None, (check, sample)
    return sample.value


async def test_prometheus_down_is_an_error_per_check_and_back_is_online_again(
    start_server: Callable[..., str],
    prometheus: StartPrometheus,
    example_models: dict[str, Path],
    rows: list[dict[str, Any]],
) -> None:
    canary = serve(start_server, example_models["canary"], "canary")
    prom = prometheus([Target(canary, {"namespace": NAMESPACE})])
    await send(canary, rows[:1])
    await prom.wait_for_async(f"sum(canaryml_requests_total{{{CANARY}}})", lambda v: v == 1)
    await send(canary, rows[:30])
    await prom.wait_for_async(f"sum(canaryml_requests_total{{{CANARY}}})", lambda v: v == 31)

    the_spec = spec(url=prom.url)
    queries = build_queries(spec=the_spec, name=NAME, namespace=NAMESPACE, source="server")
    provider = build_provider(analysis=the_spec.analysis, headers={})
    try:
        assert await provider.is_online()
        before = await measure(provider=provider, queries=queries, at=datetime.now(UTC))
        assert all(sample.error is None for sample in before.samples.values()), before

        prom.stop()
        assert not await provider.is_online()
        down = await measure(provider=provider, queries=queries, at=datetime.now(UTC))
        assert set(down.samples) == set(queries)
        for sample in down.samples.values():
            assert sample.value is None
            assert sample.error and prom.url in sample.error and "unreachable" in sample.error

        prom.start()  # same port, same data: the same provider (and its pool) recovers
        assert await provider.is_online()
        back = await measure(provider=provider, queries=queries, at=datetime.now(UTC))
        assert all(sample.error is None for sample in back.samples.values()), back
        assert value(back, REQUESTS) >= 30
    finally:
        await provider.aclose()


async def test_provider_answers_scalars_vectors_and_no_data(
    prometheus: StartPrometheus, provider_for: Callable[[str], PrometheusProvider]
) -> None:
    prom = prometheus([])
    provider = provider_for(prom.url)
    now = datetime.now(UTC)
    assert await provider.query("scalar(vector(2.5))", at=now) == 2.5
    assert await provider.query("vector(3)", at=now) == 3.0
    assert await provider.query("0 / 0", at=now) is None  # NaN: no data
    assert await provider.query("vector(0) / 0", at=now) is None
    assert await provider.query("absent_series_xyz", at=now) is None
    assert await provider.query("vector(1) / 0", at=now) == float("inf")
    with pytest.raises(MetricError, match="2 series"):
        await provider.query('label_replace(vector(1), "a", "b", "", "") or vector(2)', at=now)
    with pytest.raises(MetricError, match=r"matrix.*not an instant vector"):
        await provider.query("vector(1)[1m:]", at=now)
    with pytest.raises(ValueError, match="timezone-aware"):
        await provider.query("vector(1)", at=datetime.now())

    # One value per value of a label (drift per feature); NaN is no value, as in `query`.
    def labelled(promql: str, label: str, value: str) -> str:
        return f'label_replace({promql}, "{label}", "{value}", "", "")'

    per_feature = " or ".join(
        labelled(promql, "feature", name)
        for promql, name in (("vector(1)", "a"), ("vector(2)", "b"), ("vector(0) / 0", "nan"))
    )
    assert await provider.query_by(per_feature, label="feature", at=now) == {"a": 1.0, "b": 2.0}
    assert await provider.query_by("absent_series_xyz", label="feature", at=now) == {}
    # Two series of one feature (not aggregated by it): which value would the feature have?
    unaggregated = labelled("vector(1)", "pod", "x") + " or " + labelled("vector(2)", "pod", "y")
    with pytest.raises(MetricError, match="several series with feature=''"):
        await provider.query_by(unaggregated, label="feature", at=now)
    with pytest.raises(MetricError, match="scalar, not an instant vector by feature"):
        await provider.query_by("scalar(vector(1))", label="feature", at=now)

    # Names that need escaping still give queries Prometheus parses, each with its answer.
    weird = 'we"ird\\name\n'
    queries = build_queries(spec=spec(url=prom.url), name=weird, namespace="ns", source="router")
    result = await measure(provider=provider, queries=queries, at=now)
    assert all(sample.error is None for sample in result.samples.values()), result
    assert result.get(REQUESTS).value == 0.0  # no series: zero requests
    # The held-out figures keep every series: none, and nothing to name.
    held_out = [check for check in queries if "Offline" in check]
    assert len(held_out) == 4 and all(not result.get(check).features for check in held_out)
    checks_ = [check for check in queries if check != REQUESTS and check not in held_out]
    assert [result.get(check).value for check in checks_] == [None] * 5


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield sock.getsockname()[1]


async def test_a_slow_server_is_a_timeout(silent_port: int) -> None:
    provider = PrometheusProvider(url=f"http://127.0.0.1:{silent_port}", timeout=0.3)
    try:
        with pytest.raises(MetricError, match=r"did not answer within 0\.3 s"):
            await provider.query("vector(1)", at=datetime.now(UTC))
        assert not await provider.is_online()
    finally:
        await provider.aclose()


async def test_credentials_from_secrets_reach_a_protected_prometheus(
    prometheus: StartPrometheus,
) -> None:
    prom = prometheus([], basic_auth=True)
    analysis = spec(url=prom.url).analysis
    basic = base64.b64encode(":".join(BASIC_AUTH).encode()).decode()
    # As read from a Secret made with `echo ... | kubectl create secret`: a trailing newline.
    headers = auth_headers(bearer_token=None, authorization=f"Basic {basic}\n")
    allowed = build_provider(analysis=analysis, headers=headers)
    refused = build_provider(analysis=analysis, headers={})
    try:
        assert await allowed.is_online()
        assert await allowed.query("vector(7)", at=datetime.now(UTC)) == 7.0
        assert not await refused.is_online()
        with pytest.raises(MetricError, match="HTTP 401"):
            await refused.query("vector(7)", at=datetime.now(UTC))
    finally:
        await allowed.aclose()
        await refused.aclose()


def test_auth_headers() -> None:
    assert auth_headers(bearer_token=None, authorization=None) == {}
    assert auth_headers(bearer_token="abc\n", authorization=None) == {"Authorization": "Bearer abc"}
    assert auth_headers(bearer_token=None, authorization=" Basic eDp5 ") == {
        "Authorization": "Basic eDp5"
    }
    with pytest.raises(ValueError, match="not both"):
        auth_headers(bearer_token="a", authorization="Basic b")
    with pytest.raises(ValueError, match="empty"):
        auth_headers(bearer_token=" \n", authorization=None)
    with pytest.raises(ValueError, match="several lines"):
        auth_headers(bearer_token="a\nb", authorization=None)
    assert isinstance(build_provider(analysis=api.AnalysisSpec(), headers={}), PrometheusProvider)


async def test_counts_since_the_step_began_and_drift_p_values_from_prometheus(
    start_server: Callable[..., str],
    prometheus: StartPrometheus,
    provider_for: Callable[[str], PrometheusProvider],
    example_models: dict[str, Path],
    rows: list[dict[str, Any]],
) -> None:
    """The sequential checks' PromQL on real exporters: each track's requests, 5xx errors,
    timed and slow requests and rows predicted per class since status.stepStartedAt, and the
    drift tests' p-values."""
    canary = start_server(
        example_models["canary"],
        "--track", "canary", "--model-deployment", NAME,
        env={"CANARYML_DRIFT_MIN_ROWS": "20", "CANARYML_RUNTIME": "sklearn",
             "CANARYML_INJECT_ERRORS": "0.5"},
    )  # fmt: skip
    stable = serve(start_server, example_models["stable"], "stable")
    prom = prometheus([Target(url, {"namespace": NAMESPACE}) for url in (canary, stable)])
    await prom.wait_for_async("count(up == 1)", lambda v: v == 2)
    async with httpx.AsyncClient(timeout=30) as client:
        for url in (canary, stable):  # requests before the step: not counted in it
            await client.post(f"{url}/predict", json=rows[0])
    await prom.wait_for_async("sum(canaryml_requests_total)", lambda v: v == 2)
    # The step begins once Prometheus holds those: its sample at the start is their count.
    started = datetime.now(UTC)
    answered: dict[str, list[int]] = {canary: [], stable: []}
    predicted: dict[str, Counter[str]] = {canary: Counter(), stable: Counter()}
    async with httpx.AsyncClient(timeout=30) as client:
        for url, count in ((canary, 80), (stable, 120)):
            for row in rows[:count]:
                response = await client.post(f"{url}/predict", json=row)
                answered[url].append(response.status_code)
                if response.status_code == 200:
                    predicted[url].update(str(label) for label in response.json()["predictions"])
    await prom.wait_for_async("sum(canaryml_requests_total)", lambda v: v == 202)
    await prom.wait_for_async(f"max(canaryml_feature_drift_p_value{{{CANARY}}})")

    raw = spec(url=prom.url).model_dump(by_alias=True, exclude_none=True)
    raw["analysis"] |= {
        "baseline": {"maxErrorRateRatio": 2, "maxPredictionShift": 0.05},
        "thresholds": {"driftSignificance": 0.01},
    }
    the_spec = api.parse_spec(raw)
    status = api.ModelDeploymentStatus(step_started_at=started)
    provider = provider_for(prom.url)
    # Measured a few seconds into the step, as soon as Prometheus holds every request: the
    # counts are exact. (increase() over the same range, extrapolated to its ends, read 145
    # for 81.)
    # A step younger than MIN_SINCE_STEP_SECONDS has no counts yet: wait that long at least.
    young = MIN_SINCE_STEP_SECONDS - (datetime.now(UTC) - started).total_seconds()
    await asyncio.sleep(max(0.0, young) + 0.1)
    at = datetime.now(UTC)
    assert (at - started).total_seconds() < 15
    queries = build_queries(
        spec=the_spec, name=NAME, namespace=NAMESPACE, source="server", status=status, at=at
    )
    result = await measure(provider=provider, queries=queries, at=at)
    assert all(sample.error is None for sample in result.samples.values()), result.samples
    canary_errors = answered[canary].count(500)
    assert 0 < canary_errors < 80  # half of them, give or take
    # The canary's first 5xx series was born inside the step: it counts whole.
    for track, sent, errors in (("canary", 80, canary_errors), ("stable", 120, 0)):
        assert value(result, count_name(track, "requests")) == sent
        assert value(result, count_name(track, "timed")) == sent
        assert value(result, count_name(track, "errors")) == errors
        assert 0 <= value(result, count_name(track, "slow")) <= 1.0  # a forest answers fast
    # Rows predicted per class since the step began: exactly the classes answered (the
    # canary's failed requests predicted nothing); every class of the profile is a series.
    for track, url in (("canary", canary), ("stable", stable)):
        per_bin = {k: v for k, v in result.get(count_name(track, PREDICTIONS)).features if v}
        assert per_bin == dict(predicted[url]), (track, per_bin, predicted[url])
    assert sum(predicted[canary].values()) == 80 - canary_errors
    assert 0 <= value(result, DRIFT_P_VALUE) <= 1
    assert 0 <= value(result, PREDICTION_DRIFT_P_VALUE) <= 1
    judged = {r.name: r for r in verdicts.judge(spec=the_spec, measurements=result)}
    # Half of the canary's requests failed against none of stable's: decided already.
    assert judged[ERROR_RATE].verdict == "Failed", judged[ERROR_RATE]
    assert judged[ERROR_RATE_VS_STABLE].verdict == "Failed", judged[ERROR_RATE_VS_STABLE]
    # Some 40 rows against 120 prove no 5-point difference either way.
    shares = judged[PREDICTIONS_VS_STABLE]
    assert shares.verdict == "Inconclusive" and shares.collecting, shares
    assert shares.samples == 80 - canary_errors


async def test_labels_sent_back_reach_the_accuracy_checks_through_prometheus(
    start_server: Callable[..., str],
    prometheus: StartPrometheus,
    provider_for: Callable[[str], PrometheusProvider],
    example_models: dict[str, Path],
) -> None:
    """Issue 18, end to end on real processes: predictions carry ids, true labels go back later
    (each track's ids to the other track's server: any replica takes any track's feedback),
    the servers count them per the id's track, Prometheus scrapes them, and the operator's
    accuracy queries read exact counts since the step began."""
    heldout = pd.read_csv(example_models["root"] / "test.csv", nrows=120)
    truth = heldout.pop("target").tolist()
    records = [
        {str(column): cell for column, cell in record.items()}
        for record in heldout.to_dict(orient="records")
    ]
    env = {"CANARYML_RUNTIME": "sklearn", "CANARYML_FEEDBACK_KEY": "k" * 32}
    urls = {
        track: start_server(
            example_models[track], "--track", track, "--model-deployment", NAME, env=env
        )
        for track in ("canary", "stable")
    }
    prom = prometheus([Target(url, {"namespace": NAMESPACE}) for url in urls.values()])
    await prom.wait_for_async("count(up == 1)", lambda v: v == 2)
    started = datetime.now(UTC)
    answers: dict[str, list[tuple[str, Any]]] = {"canary": [], "stable": []}
    async with httpx.AsyncClient(timeout=30) as client:
        for track, url in urls.items():
            body = (await client.post(f"{url}/predict", json=records)).json()
            answers[track] = list(zip(body["ids"], body["predictions"], strict=True))
        # The labels arrive later, each track's at the other track's server.
        for track, other in (("canary", "stable"), ("stable", "canary")):
            feedback = [
                {"id": prediction_id, "label": label}
                for (prediction_id, _), label in zip(answers[track], truth, strict=True)
            ]
            reply = await client.post(
                f"{urls[other]}/v2/models/breast-cancer/feedback", json={"feedback": feedback}
            )
            assert reply.status_code == 200, reply.text
            assert reply.json()["accepted"] == len(truth)
    correct = {
        track: sum(
            predicted == label for (_, predicted), label in zip(answers[track], truth, strict=True)
        )
        for track in answers
    }
    await prom.wait_for_async("sum(canaryml_feedback_labels_total)", lambda v: v == 240)
    young = MIN_SINCE_STEP_SECONDS - (datetime.now(UTC) - started).total_seconds()
    await asyncio.sleep(max(0.0, young) + 0.1)

    raw = spec(url=prom.url).model_dump(by_alias=True, exclude_none=True)
    raw["analysis"] |= {
        "thresholds": {"minAccuracy": 0.5},
        "baseline": {"maxAccuracyDrop": 0.2},
        "labels": {"minLabels": 100},
    }
    the_spec = api.parse_spec(raw)
    # The example canary (1.1.0) and stable (1.0.0) versions, as the servers label them.
    status = api.ModelDeploymentStatus(step_started_at=started)
    at = datetime.now(UTC)
    queries = build_queries(
        spec=the_spec, name=NAME, namespace=NAMESPACE, source="server", status=status, at=at
    )
    result = await measure(provider=provider_for(prom.url), queries=queries, at=at)
    for track in ("canary", "stable"):
        assert value(result, count_name(track, "labelled")) == len(truth)
        assert value(result, count_name(track, "correct")) == correct[track]
    judged = {r.name: r for r in verdicts.judge(spec=the_spec, measurements=result)}
    accuracy = judged[ACCURACY]
    assert accuracy.value == pytest.approx(correct["canary"] / len(truth))
    # 120 labels at ~96 % against a 50 % bound: decided already.
    assert accuracy.verdict == "Successful", accuracy
    assert judged[ACCURACY_VS_STABLE].verdict != "Failed", judged[ACCURACY_VS_STABLE]
