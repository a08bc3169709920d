"""The offline gate: held-out figures for the manifest, and `--require` expressions over them.

`canaryml package --evaluate HELDOUT.csv` predicts the held-out rows through the predictor the
artifact will be served with (the ONNX form when it was kept) and records scikit-learn's metrics
in the manifest's `evaluation` block. `--require 'accuracy>=0.95'` then gates packaging on them,
as a CI pipeline's model-performance step does before any traffic reaches the model.

Metric names follow scikit-learn's scorer names where one exists, so that the name says how the
figure was averaged: `f1` is the positive class's F1 (binary), `f1_macro` the unweighted mean
over classes (multiclass); `roc_auc` is binary, `roc_auc_ovr` one-vs-rest, macro-averaged.
Unlike a scorer, every figure is recorded as computed (`mae`, not `neg_mean_absolute_error`).
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

CLASSIFIER_METRICS = ("accuracy", "f1", "f1_macro", "roc_auc", "roc_auc_ovr", "log_loss")
REGRESSOR_METRICS = ("mae", "rmse", "r2")
KNOWN_METRICS = CLASSIFIER_METRICS + REGRESSOR_METRICS


class Evaluation(BaseModel):
    """The manifest's `evaluation` block: figures of the served predictor on held-out rows."""

    model_config = ConfigDict(frozen=True)

    rows: int
    source_sha256: str
    """sha256 of the held-out CSV as read; its path is not recorded (it would tie the digest to
    the machine that packaged)."""
    target: str
    runtime: Literal["onnx", "sklearn"]
    """The predictor the figures come from: the one the artifact is served with by default."""
    metrics: dict[str, float]
    positive_class: Any | None = None
    """Binary classifiers: the class `f1` and `roc_auc` score (the model's second class)."""
    skipped: dict[str, str] = {}
    """Metric name -> why it was not computed (no predict_proba, one class in the rows, ...)."""
    evaluated_at: datetime | None = None
    """From SOURCE_DATE_EPOCH only, like the manifest's `created`: the digest stays reproducible."""


def classifier_metrics(
    y_true: np.ndarray, labels: np.ndarray, probabilities: np.ndarray | None, classes: Sequence[Any]
) -> tuple[dict[str, float], dict[str, str], Any | None]:
    """Figures, skipped metrics with reasons, and the positive class (binary only)."""
    from sklearn.metrics import accuracy_score, f1_score, log_loss, roc_auc_score

    metrics: dict[str, float] = {"accuracy": float(accuracy_score(y_true, labels))}
    skipped: dict[str, str] = {}
    binary = len(classes) == 2
    positive = classes[1] if binary else None
    present = len(np.unique(y_true))
    if binary:
        metrics["f1"] = float(f1_score(y_true, labels, pos_label=positive, average="binary"))
    else:
        metrics["f1_macro"] = float(
            f1_score(y_true, labels, labels=list(classes), average="macro", zero_division=0)
        )
    auc = "roc_auc" if binary else "roc_auc_ovr"
    if probabilities is None:
        reason = "the served model gives no class probabilities (no predict_proba)"
        skipped[auc] = reason
        skipped["log_loss"] = reason
        return metrics, skipped, positive
    proba = np.asarray(probabilities, dtype=np.float64)
    if present < len(classes) and not binary:
        skipped[auc] = (
            f"the held-out rows hold {present} of the {len(classes)} classes; one-vs-rest AUC "
            "needs every class"
        )
    elif present < 2:
        skipped[auc] = "the held-out rows hold a single class; AUC needs both"
    elif binary:
        metrics[auc] = float(roc_auc_score(y_true == positive, proba[:, 1]))
    else:
        metrics[auc] = float(
            roc_auc_score(y_true, proba, multi_class="ovr", average="macro", labels=list(classes))
        )
    sums = proba.sum(axis=1, keepdims=True)
    if not np.allclose(sums, 1.0, rtol=np.sqrt(np.finfo(np.float64).eps)):
        # The ONNX form computes in float32: rows sum to one within 1e-7, which scikit-learn's
        # float64 check warns about. Its own renormalisation is what this does, warning apart.
        proba = proba / sums
    metrics["log_loss"] = float(log_loss(y_true, proba, labels=list(classes)))
    return metrics, skipped, positive


def regressor_metrics(
    y_true: np.ndarray, predictions: np.ndarray
) -> tuple[dict[str, float], dict[str, str]]:
    from sklearn.metrics import mean_absolute_error, r2_score, root_mean_squared_error

    y_pred = np.asarray(predictions, dtype=np.float64).ravel()
    metrics = {
        "mae": float(mean_absolute_error(y_true, y_pred)),
        "rmse": float(root_mean_squared_error(y_true, y_pred)),
    }
    skipped: dict[str, str] = {}
    if len(y_true) < 2:
        skipped["r2"] = "R² needs at least two held-out rows"
    else:
        metrics["r2"] = float(r2_score(y_true, y_pred))
    return metrics, skipped


# Requirements --------------------------------------------------------------------------------

_OPERATORS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
}
# Longest operators first, so that `>=` is not read as `>` followed by `=0.9`.
_EXPRESSION = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*(>=|<=|==|>|<)\s*([^\s<>=!]+)\s*")


class RequirementError(ValueError):
    """A `--require` expression that cannot be read, or names no recorded metric."""


@dataclass(frozen=True)
class Requirement:
    metric: str
    op: str
    threshold: float
    text: str

    def holds(self, value: float) -> bool:
        return _OPERATORS[self.op](value, self.threshold)

    def __str__(self) -> str:
        return f"{self.metric}{self.op}{self.threshold:g}"


def parse_requirement(text: str) -> Requirement:
    """`accuracy>=0.95`, `rmse < 3`: a metric, an operator (>=, >, <=, <, ==), a number.

    Metric names are checked against every name the packager can record (`KNOWN_METRICS`), so a
    typo fails before the model is even loaded; whether this model records it is known later.
    """
    match = _EXPRESSION.fullmatch(text)
    if match is None:
        raise RequirementError(
            f"cannot read the requirement {text!r}: write METRIC OP NUMBER, e.g. "
            f"'accuracy>=0.95', with OP one of {', '.join(_OPERATORS)}"
        )
    metric, op, raw = match.groups()
    try:
        threshold = float(raw)
    except ValueError:
        raise RequirementError(
            f"cannot read the requirement {text!r}: {raw!r} is not a number"
        ) from None
    if not math.isfinite(threshold):
        raise RequirementError(f"cannot read the requirement {text!r}: the bound must be finite")
    if metric not in KNOWN_METRICS:
        raise RequirementError(
            f"the requirement {text!r} names no metric canaryml records: "
            f"classifiers record {', '.join(CLASSIFIER_METRICS)}; "
            f"regressors {', '.join(REGRESSOR_METRICS)}"
        )
    return Requirement(metric=metric, op=op, threshold=threshold, text=text.strip())


@dataclass(frozen=True)
class RequirementResult:
    requirement: Requirement
    value: float

    @property
    def passed(self) -> bool:
        return self.requirement.holds(self.value)


def check_requirements(
    requirements: Sequence[Requirement], evaluation: Evaluation
) -> list[RequirementResult]:
    """Each requirement against the recorded figures; a metric not recorded is an error."""
    results = []
    for requirement in requirements:
        value = evaluation.metrics.get(requirement.metric)
        if value is None:
            why = evaluation.skipped.get(requirement.metric)
            detail = f" ({requirement.metric} was skipped: {why})" if why else ""
            raise RequirementError(
                f"the requirement {requirement.text!r} names a metric this evaluation did not "
                f"record{detail}; recorded: {', '.join(evaluation.metrics)}"
            )
        results.append(RequirementResult(requirement=requirement, value=value))
    return results


class RequirementsNotMetError(Exception):
    """The held-out figures fail at least one `--require`: nothing was written."""

    def __init__(self, evaluation: Evaluation, results: Sequence[RequirementResult]) -> None:
        failed = [r for r in results if not r.passed]
        figures = (f"{r.requirement.metric}={r.value:.6g} fails {r.requirement}" for r in failed)
        super().__init__("requirements not met: " + "; ".join(figures))
        self.evaluation = evaluation
        self.results = list(results)
