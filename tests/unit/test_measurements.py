"""What an analysis measured: drift samples naming their worst features, and how every check's
values read (the one notation of Events, status messages, `canaryml status` and the demo)."""

from __future__ import annotations

import math

import pytest
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Sample, compared_texts, features_text, value_text

# --- how values read ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("check", "value", "text"),
    [
        (m.ERROR_RATE, 0.2308, "23.1 %"),  # a fraction, shown in %
        (m.SHADOW_AGREEMENT, 0.04348, "4.3 %"),
        (m.LATENCY_P99, 0.002491, "2.5 ms"),  # seconds, shown in ms
        (m.LATENCY_P99, 0.475, "475.0 ms"),
        (m.LATENCY_P99, math.inf, "inf ms"),  # histogram_quantile's answer past the last bucket
        (m.REQUESTS, 41.0, "41"),
        (m.REQUESTS, 54.44, "54"),  # Prometheus's increases are fractional: whole requests
        (m.REQUESTS, 54.5001, "55"),
        (m.DRIFT, 8.27412, "8.274"),  # a PSI: a plain number
        (m.PREDICTION_DRIFT, 7.852e-05, "0.000"),
        ("orders", 12.3456, "12.346"),  # a custom check: a plain number under its own name
        (m.ERROR_RATE, -1e-9, "0.0 %"),  # float noise around 0 is no negative rate
        (m.DRIFT, None, m.NO_VALUE),
    ],
)
def test_each_check_reads_in_its_own_unit(check: str, value: float | None, text: str) -> None:
    assert value_text(check, value) == text


def test_bounds_read_like_values_and_widen_only_to_tell_them_apart() -> None:
    assert compared_texts(m.ERROR_RATE, 0.2308, 0.05) == ("23.1 %", "5.0 %")
    assert compared_texts(m.LATENCY_P99, 0.475, 0.2) == ("475.0 ms", "200.0 ms")
    assert compared_texts(m.REQUESTS, 12.0, 20.0) == ("12", "20")
    # Rounded alike, different numbers: as many more decimals as it takes.
    assert compared_texts(m.ERROR_RATE, 0.0504, 0.05) == ("5.04 %", "5.00 %")
    assert compared_texts(m.REQUESTS, 19.6, 20.0) == ("19.6", "20.0")
    assert compared_texts("kpi", 0.00012, 0.0001) == ("0.00012", "0.00010")
    # Equal numbers read equal: no decimals are added in vain.
    assert compared_texts(m.DRIFT, 0.25, 0.25) == ("0.250", "0.250")


def test_features_read_in_the_checks_notation() -> None:
    features = (("mean radius", 8.27412), ("worst area", 2.31))
    assert features_text(m.DRIFT, features) == "mean radius 8.274, worst area 2.310"
    assert features_text(m.DRIFT, ()) == ""


# --- a value per feature -----------------------------------------------------------------------


def test_worst_of_keeps_the_largest_value_and_names_the_worst_features_first() -> None:
    by_feature = {
        "mean texture": 0.05,
        "mean radius": 8.274,
        "worst area": 2.31,
        "mean smoothness": 0.01,
        "mean symmetry": math.nan,  # PromQL's max skips NaN: no value, not a drifted feature
    }
    ranked = [
        ("mean radius", 8.274),
        ("worst area", 2.31),
        ("mean texture", 0.05),
        ("mean smoothness", 0.01),
    ]
    assert len(ranked) > m.WORST_FEATURES_KEPT  # the cap is exercised
    assert Sample.worst_of(by_feature) == Sample(
        value=8.274, features=tuple(ranked[: m.WORST_FEATURES_KEPT])
    )


def test_worst_of_breaks_ties_by_name_and_nothing_is_no_data() -> None:
    assert Sample.worst_of({"b": 0.3, "a": 0.3}).features[:2] == (("a", 0.3), ("b", 0.3))
    assert Sample.worst_of({}) == Sample()
    assert Sample.worst_of({"x": math.nan}) == Sample()
