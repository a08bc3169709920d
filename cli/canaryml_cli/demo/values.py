"""How each check's numbers read, in the live panel, the plain lines and the plot alike.

One format per quantity: rates (error rate, shadow agreement) in %, latency in ms, request
counts as whole numbers (Prometheus's increases are fractional: 54.44 requests reads 54), drift
(a PSI) and custom checks as plain numbers. Values arrive in the analysis's units (fractions,
seconds); `Quantity.scale` turns them into the shown ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from canaryml_operator import api
from canaryml_operator.measurements import (
    DRIFT,
    ERROR_RATE,
    LATENCY_P99,
    PREDICTION_DRIFT,
    REQUESTS,
    SHADOW_AGREEMENT,
)


@dataclass(frozen=True)
class Quantity:
    """What a check measures and how its values are shown."""

    label: str  # an axis's name for it
    scale: float  # from the analysis's unit to the shown one
    unit: str  # after the number; "" for none
    decimals: int


QUANTITIES: Final = {
    REQUESTS: Quantity("canary requests", 1.0, "", 0),
    ERROR_RATE: Quantity("error rate", 100.0, "%", 1),
    LATENCY_P99: Quantity("p99 latency", 1000.0, "ms", 1),
    DRIFT: Quantity("feature drift", 1.0, "", 3),
    PREDICTION_DRIFT: Quantity("prediction drift", 1.0, "", 3),
    SHADOW_AGREEMENT: Quantity("shadow agreement", 100.0, "%", 1),
}


def quantity(check: str) -> Quantity:
    """A built-in check's quantity; a custom check's value is a plain number under its name."""
    return QUANTITIES.get(check) or Quantity(check, 1.0, "", 3)


def value_text(check: str, value: float | None) -> str:
    """A check's value as a person reads it: `20.0 %`, `4.2 ms`, `54`, `0.333`; `-` for none."""
    if value is None:
        return "-"
    shown = quantity(check)
    number = f"{value * shown.scale:.{shown.decimals}f}"
    return f"{number} {shown.unit}" if shown.unit else number


def axis_label(check: str) -> str:
    shown = quantity(check)
    return f"{shown.label} ({shown.unit})" if shown.unit else shown.label


def bound_text(check: api.CheckRecord) -> str:
    """`<= 5.0 %`, `>= 20`, both for a custom check with a range, or "" without a bound."""
    parts = []
    if check.min is not None:
        parts.append(">= " + value_text(check.name, check.min))
    if check.max is not None:
        parts.append("<= " + value_text(check.name, check.max))
    return ", ".join(parts)
