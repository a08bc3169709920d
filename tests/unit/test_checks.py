"""The PromQL of the analysis checks: exact text, scoping, escaping, which checks exist."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_operator import checks
from canaryml_operator.measurements import (
    BUILTIN_CHECKS,
    DRIFT,
    ERROR_RATE,
    LATENCY_P99,
    PREDICTION_DRIFT,
    REQUESTS,
    SHADOW_AGREEMENT,
    offline_name,
)

from .specs import DESIGN_EXAMPLE, MINIMAL, changed

WITH_CANARY = changed(MINIMAL, "canary", {"model": {"uri": "s3://m/1.1.0", "version": "1.1.0"}})
SCOPE = 'model_deployment="iris",namespace="ml",track="canary",version="1.1.0"'
STABLE_SCOPE = 'model_deployment="iris",namespace="ml",track="stable",version="1.0.0"'
# The held-out figures of both tracks, read at every analysis (shown; judged by the gate only).
OFFLINE = [
    offline_name(track, kind) for track in ("canary", "stable") for kind in ("figures", "rows")
]


def queries(raw: dict[str, Any], **kwargs: Any) -> dict[str, str]:
    arguments: dict[str, Any] = {"name": "iris", "namespace": "ml", "source": "router"}
    return checks.build_queries(spec=api.parse_spec(raw), **(arguments | kwargs))


def test_the_design_example_gives_the_exact_queries() -> None:
    assert queries(DESIGN_EXAMPLE) == {
        REQUESTS: f'sum(increase(canaryml_requests_total{{{SCOPE},source="router"}}[1m]))'
        " or on() vector(0)",
        ERROR_RATE: "(sum(increase(canaryml_requests_total"
        f'{{{SCOPE},source="router",code=~"5.."}}[1m])) or on() vector(0))'
        f' / sum(increase(canaryml_requests_total{{{SCOPE},source="router"}}[1m]))',
        LATENCY_P99: "histogram_quantile(0.99, sum by (le) "
        f'(rate(canaryml_request_duration_seconds_bucket{{{SCOPE},source="router"}}[1m])))',
        DRIFT: f"max by (feature) (canaryml_feature_drift{{{SCOPE}}})",
        PREDICTION_DRIFT: f"max(canaryml_prediction_drift{{{SCOPE}}})",
        SHADOW_AGREEMENT: "(sum(increase(canaryml_shadow_comparisons_total"
        f'{{{SCOPE},result="agree"}}[1m]))'
        " or on() vector(0)) / sum(increase(canaryml_shadow_comparisons_total"
        f'{{{SCOPE},result=~"agree|disagree"}}[1m]))',
        "business-kpi": 'sum(rate(orders_total{track="canary"}[1m]))',
        "canaryOfflineFigures": f"max by (metric) (canaryml_offline_evaluation{{{SCOPE}}})",
        "canaryOfflineRows": "max by (heldout_sha256) "
        f"(canaryml_offline_evaluation_rows{{{SCOPE}}})",
        "stableOfflineFigures": f"max by (metric) (canaryml_offline_evaluation{{{STABLE_SCOPE}}})",
        "stableOfflineRows": "max by (heldout_sha256) "
        f"(canaryml_offline_evaluation_rows{{{STABLE_SCOPE}}})",
    }


def test_without_shadow_only_the_other_builtins() -> None:
    assert list(queries(WITH_CANARY)) == [
        *(name for name in BUILTIN_CHECKS if name != SHADOW_AGREEMENT),
        *OFFLINE,
    ]


def test_a_shadow_that_gets_no_traffic_has_no_agreement_check() -> None:
    raw = changed(DESIGN_EXAMPLE, "shadow.percent", 0)
    assert SHADOW_AGREEMENT not in queries(raw)


def test_request_metrics_are_scoped_by_source_and_model_metrics_are_not() -> None:
    built = queries(WITH_CANARY, source="server")
    for check in (REQUESTS, ERROR_RATE, LATENCY_P99):
        assert 'source="server"' in built[check]
    for check in (DRIFT, PREDICTION_DRIFT):
        assert "source=" not in built[check]


def test_every_builtin_is_scoped_to_this_canary() -> None:
    built = queries(DESIGN_EXAMPLE)
    for check in (REQUESTS, ERROR_RATE, LATENCY_P99, DRIFT, PREDICTION_DRIFT, SHADOW_AGREEMENT):
        assert built[check].count(SCOPE) == built[check].count("{"), check


def test_the_canary_version_comes_from_the_spec() -> None:
    raw = changed(DESIGN_EXAMPLE, "canary.model.version", "2.0.0+build.7")
    for check in (REQUESTS, ERROR_RATE, LATENCY_P99, DRIFT, PREDICTION_DRIFT, SHADOW_AGREEMENT):
        assert 'version="2.0.0+build.7"' in queries(raw)[check]


def test_without_namespace_no_namespace_matcher() -> None:
    built = queries(DESIGN_EXAMPLE, namespace=None)
    assert all("namespace=" not in built[check] for check in BUILTIN_CHECKS)
    assert built[DRIFT] == (
        'max by (feature) (canaryml_feature_drift{model_deployment="iris",track="canary",'
        'version="1.1.0"})'
    )


def test_drift_keeps_one_series_per_feature_and_says_so() -> None:
    # The provider reads the drift answer per value of this label: the query must group by
    # it. Prediction drift has no feature: one number, as every other check.
    assert dict(checks.SERIES_LABEL) == {
        DRIFT: telemetry.FEATURE_LABEL,
        "driftPValue": telemetry.FEATURE_LABEL,
        # Rows predicted per bin (analysis.baseline.maxPredictionShift): every bin kept.
        "canaryPredictionsSinceStep": telemetry.BIN_LABEL,
        "stablePredictionsSinceStep": telemetry.BIN_LABEL,
        # Held-out figures by name, and rows by the held-out data's digest: every one kept.
        "canaryOfflineFigures": telemetry.METRIC_LABEL,
        "stableOfflineFigures": telemetry.METRIC_LABEL,
        "canaryOfflineRows": telemetry.HELDOUT_SHA256_LABEL,
        "stableOfflineRows": telemetry.HELDOUT_SHA256_LABEL,
    }
    assert {
        "canaryPredictionsSinceStep",
        "stablePredictionsSinceStep",
        *OFFLINE,
    } == checks.EVERY_SERIES
    assert queries(DESIGN_EXAMPLE)[DRIFT].startswith(f"max by ({telemetry.FEATURE_LABEL}) (")


@pytest.mark.parametrize(
    ("value", "literal"),
    [
        ("plain", '"plain"'),
        ('say "hi"', r'"say \"hi\""'),
        ("back\\slash", r'"back\\slash"'),
        ("two\nlines\ttab\r", r'"two\nlines\ttab\r"'),
        ("ünïcode", '"ünïcode"'),
    ],
)
def test_label_values_are_escaped(value: str, literal: str) -> None:
    assert checks.quote(value) == literal
    assert f"model_deployment={literal}" in queries(WITH_CANARY, name=value)[DRIFT]


def test_a_name_cannot_break_out_of_its_matcher() -> None:
    query = queries(WITH_CANARY, name='x"} or vector(1) or up{a="')[REQUESTS]
    assert 'model_deployment="x\\"} or vector(1) or up{a=\\""' in query


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        ("1m", "1m"),
        ("30s", "30s"),
        ("1h30m", "1h30m"),
        ("1m30s", "1m30s"),
        ("250ms", "250ms"),
        ("2m500ms", "2m500ms"),
        ("1.5m", "90000ms"),  # PromQL has no fractions
        ("30s1m", "90000ms"),  # nor units out of order
    ],
)
def test_the_window_is_the_range_of_every_builtin(window: str, expected: str) -> None:
    built = queries(changed(DESIGN_EXAMPLE, "analysis.window", window))
    for check in (REQUESTS, ERROR_RATE, LATENCY_P99, SHADOW_AGREEMENT):
        assert f"[{expected}]" in built[check]
        assert built[check].count("[") == built[check].count(f"[{expected}]")


def test_custom_metrics_are_verbatim_and_keyed_by_name() -> None:
    metrics = [
        {"name": "kpi", "query": 'sum(rate(x{a="b"}[5m])) / 2', "max": 1},
        {"name": "p50", "query": "histogram_quantile(0.5, x)", "min": 0},
    ]
    built = queries(changed(WITH_CANARY, "analysis.metrics", metrics))
    assert built["kpi"] == 'sum(rate(x{a="b"}[5m])) / 2'
    assert built["p50"] == "histogram_quantile(0.5, x)"
    assert list(built)[-2:] == ["kpi", "p50"]


def test_no_canary_is_a_caller_error() -> None:
    with pytest.raises(ValueError, match=r"spec\.canary"):
        queries(MINIMAL)
