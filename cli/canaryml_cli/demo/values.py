"""How each check's numbers read in the live panel, the plain lines and the plot.

The notation itself (units, scale, decimals) is the operator's, `measurements.value_text`: the
demo's lines read like the Events they sit next to. Here: what the demo adds around it, the
plot's axis names, the panel's bounds, and the worst feature next to a drift value.
"""

from __future__ import annotations

from typing import Final

from canaryml_api import resource as api
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Measurements, notation, value_text

# An axis's name for each built-in check; a custom check's is its own name.
AXIS_NAMES: Final = {
    m.REQUESTS: "canary requests",
    m.ERROR_RATE: "error rate",
    m.LATENCY_P99: "p99 latency",
    m.DRIFT: "feature drift",
    m.PREDICTION_DRIFT: "prediction drift",
    m.SHADOW_AGREEMENT: "shadow agreement",
    m.SLOW_REQUESTS: "slow requests",
    m.ERROR_RATE_VS_STABLE: "errors / stable's",
    m.SLOW_REQUESTS_VS_STABLE: "slow / stable's",
    m.DRIFT_P_VALUE: "drift p-value",
    m.PREDICTION_DRIFT_P_VALUE: "prediction p-value",
    m.PREDICTIONS_VS_STABLE: "class shift vs stable",
    m.ACCURACY: "accuracy on labels",
    m.ACCURACY_VS_STABLE: "accuracy vs stable",
    m.MEAN_ABSOLUTE_ERROR: "mean absolute error on labels",
    m.ERROR_VS_STABLE: "MAE vs stable",
}


def axis_label(check: str) -> str:
    name, unit = AXIS_NAMES.get(check, check), notation(check).unit
    return f"{name} ({unit})" if unit else name


def bound_text(check: api.CheckRecord) -> str:
    """`<= 5.0 %`, `>= 20`, both for a custom check with a range, or "" without a bound."""
    parts = []
    if check.min is not None:
        parts.append(">= " + value_text(check.name, check.min))
    if check.max is not None:
        parts.append("<= " + value_text(check.name, check.max))
    return ", ".join(parts)


def check_value_text(check: api.CheckRecord, measured: Measurements | None) -> str:
    """The check's value, and for drift the feature it comes from (the worst one, when the
    analysis's `measured` samples are at hand): `0.274 (mean radius)`."""
    shown = value_text(check.name, check.value)
    features = measured.get(check.name).features if measured is not None else ()
    if check.value is None or not features:
        return shown
    worst, _ = features[0]
    return f"{shown} ({worst})"
