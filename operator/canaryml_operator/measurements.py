"""What one analysis measured: the input of the rollout core, produced by a metric provider.

Pure data, no I/O: `providers` fills it from Prometheus, tests and the local demo build it
directly. Each check is keyed by its name: the built-in names below, or a custom metric's
`analysis.metrics[].name`.

Also how each check's numbers read, wherever a person reads them (the rollout's Events and
status messages, `canaryml status`, the demo's lines, panel and plot): one notation per
quantity. Rates (error rate, shadow agreement, accuracy) in %, latency in ms, request counts as
whole numbers (Prometheus's increases are fractional: 54.44 requests reads 54), drift (a PSI),
a regressor's errors (in the target's units) and custom checks as plain numbers. Values are
kept in the analysis's units (fractions, seconds); `Notation.scale` turns them into the shown
ones.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final, Literal

from canaryml_api import resource as api
from canaryml_api.telemetry import LATENCY_BUCKETS

# Built-in checks, named as the fields of status.lastAnalysis.
REQUESTS: Final = "requests"  # canary requests in the window (the minRequests gate)
ERROR_RATE: Final = "errorRate"
LATENCY_P99: Final = "latencyP99"  # seconds
DRIFT: Final = "drift"  # worst per-feature PSI of the canary's inputs
PREDICTION_DRIFT: Final = "predictionDrift"
SHADOW_AGREEMENT: Final = "shadowAgreement"
# Calibrated drift gate (thresholds.driftSignificance): the smallest p-value.
DRIFT_P_VALUE: Final = "driftPValue"
PREDICTION_DRIFT_P_VALUE: Final = "predictionDriftPValue"
# Sequential checks (analysis.sequential, analysis.baseline), from counts since the step began.
SLOW_REQUESTS: Final = "slowRequests"  # share slower than the latency bound's bucket
ERROR_RATE_VS_STABLE: Final = "errorRateVsStable"  # canary rate / stable rate
SLOW_REQUESTS_VS_STABLE: Final = "slowRequestsVsStable"
# The largest difference, canary - stable, of the share of predictions in one class (bin).
PREDICTIONS_VS_STABLE: Final = "predictionsVsStable"
# Accuracy on labelled predictions (thresholds.minAccuracy, baseline.maxAccuracyDrop), from
# the labels that arrived since the step began: the canary's share of correct predictions, and
# canary accuracy - stable accuracy (negative: the canary is less accurate).
ACCURACY: Final = "accuracy"
ACCURACY_VS_STABLE: Final = "accuracyVsStable"
# A regressor's error on labelled predictions (thresholds.maxMeanAbsoluteError,
# baseline.maxErrorIncrease / maxErrorRatio), from the labels since the step began: the canary's
# mean absolute error, and canary MAE - stable MAE (positive: the canary errs more), both in the
# target's units.
MEAN_ABSOLUTE_ERROR: Final = "meanAbsoluteError"
ERROR_VS_STABLE: Final = "errorVsStable"
BUILTIN_CHECKS: Final = (
    REQUESTS,
    ERROR_RATE,
    LATENCY_P99,
    DRIFT,
    PREDICTION_DRIFT,
    SHADOW_AGREEMENT,
)
# Built-in checks a spec opts into (analysis.sequential / baseline, thresholds.driftSignificance).
OPT_IN_CHECKS: Final = (
    SLOW_REQUESTS,
    ERROR_RATE_VS_STABLE,
    SLOW_REQUESTS_VS_STABLE,
    PREDICTIONS_VS_STABLE,
    DRIFT_P_VALUE,
    PREDICTION_DRIFT_P_VALUE,
    ACCURACY,
    ACCURACY_VS_STABLE,
    MEAN_ABSOLUTE_ERROR,
    ERROR_VS_STABLE,
)

# Counts since the step began, per track: the inputs of the sequential checks, not checks.
# (Custom check names are lowercase with dashes: these cannot collide with them.)
CountKind = Literal[
    "requests", "errors", "timed", "slow", "labelled", "correct", "absoluteErrors",
    "squaredErrors", "predictions",
]  # fmt: skip
COUNT_KINDS: Final[tuple[CountKind, ...]] = (
    "requests", "errors", "timed", "slow", "labelled", "correct", "absoluteErrors",
    "squaredErrors",
)  # fmt: skip
# Of those, the feedback counts (labels that arrived, and how many said the prediction was
# right): queried only when an accuracy check is asked.
LABEL_KINDS: Final[tuple[CountKind, ...]] = ("labelled", "correct")
# A regressor's: labels that arrived, and the sums of |true - predicted| and of its square over
# them: queried only when an error check is asked.
ERROR_KINDS: Final[tuple[CountKind, ...]] = ("labelled", "absoluteErrors", "squaredErrors")
# Rows predicted per bin (analysis.baseline.maxPredictionShift): one Sample with every bin.
PREDICTIONS: Final[CountKind] = "predictions"


def count_name(track: Literal["canary", "stable"], kind: CountKind) -> str:
    """`canaryErrorsSinceStep`: the measurement of `kind` requests of `track` since the step
    began (`timed`: those in the latency histogram; `slow`: those of them over the bound;
    `labelled`: labels that arrived for the track's predictions; `correct`: those that say
    the prediction was right; `absoluteErrors`, `squaredErrors`: a regressor's sums of
    |true - predicted| and its square over those labels; `predictions`: rows predicted, per
    bin, see `Sample.every`)."""
    return f"{track}{kind[0].upper()}{kind[1:]}SinceStep"


# An A/B experiment's counts (spec.canary.experiment), per track, since the experiment began
# (status.experiment.startedAt): its metric's successes and samples (for accuracy: the correct
# predictions and the labels that arrived; for a business metric: its two queries).
ExperimentKind = Literal["successes", "samples"]
EXPERIMENT_KINDS: Final[tuple[ExperimentKind, ...]] = ("successes", "samples")


def experiment_name(track: Literal["canary", "stable"], kind: ExperimentKind) -> str:
    """`canarySuccessesSinceExperiment`: the measurement of `kind` of `track` since the
    experiment began."""
    return f"{track}{kind.capitalize()}SinceExperiment"


# The held-out figures of each track's model (`canaryml package --evaluate`, exported by its
# servers), read at every analysis to be shown, and judged only by the offline gate
# (analysis.offlineGate) before the canary's first step: not checks. `figures`: one Sample with
# every figure by name; `rows`: one with the held-out rows by the held-out data's digest.
OfflineKind = Literal["figures", "rows"]
# The offline gate's check: canary figure - stable figure, against -maxDrop (or +maxDrop).
OFFLINE_VS_STABLE: Final = "offlineVsStable"


def offline_name(track: Literal["canary", "stable"], kind: OfflineKind) -> str:
    """`canaryOfflineFigures`, `stableOfflineRows`: a track's held-out figures, or rows."""
    return f"{track}Offline{kind.capitalize()}"


# What each built-in check can measure at all. A value outside (a negative or infinite rate, an
# agreement over 100 %) is a broken query or a metrics source not to be believed: an Error,
# which holds the weight, never a pass. A custom check's range is its query's: finite is all
# that is known. NaN is no data (0/0: nothing to divide), which holds the weight too.
POSSIBLE_RANGES: Final[Mapping[str, tuple[float, float]]] = {
    REQUESTS: (0.0, math.inf),
    ERROR_RATE: (0.0, 1.0),
    LATENCY_P99: (0.0, math.inf),
    DRIFT: (0.0, math.inf),
    PREDICTION_DRIFT: (0.0, math.inf),
    SHADOW_AGREEMENT: (0.0, 1.0),
    DRIFT_P_VALUE: (0.0, 1.0),
    PREDICTION_DRIFT_P_VALUE: (0.0, 1.0),
    SLOW_REQUESTS: (0.0, 1.0),
    ERROR_RATE_VS_STABLE: (0.0, math.inf),
    SLOW_REQUESTS_VS_STABLE: (0.0, math.inf),
    PREDICTIONS_VS_STABLE: (0.0, 1.0),
    ACCURACY: (0.0, 1.0),
    ACCURACY_VS_STABLE: (-1.0, 1.0),
    MEAN_ABSOLUTE_ERROR: (0.0, math.inf),
    ERROR_VS_STABLE: (-math.inf, math.inf),
}
# +Inf is a measurement of these: histogram_quantile answers it when the quantile is past the
# last bucket, a PSI when a bin expected nothing. It is over any max: Failed, not a pass.
INFINITY_MEASURES: Final = frozenset({LATENCY_P99, DRIFT, PREDICTION_DRIFT})
# Rounding slack: ratios of extrapolated increases may miss their bounds by a hair.
RANGE_TOLERANCE: Final = 1e-9


def impossible(check: str, value: float) -> str | None:
    """Why `value` cannot be a measurement of `check`; None when it can (NaN is left to the
    caller: it means no data)."""
    if math.isinf(value) and not (value > 0 and check in INFINITY_MEASURES):
        return f"{value} is not a finite number"
    low, high = POSSIBLE_RANGES.get(check, (-math.inf, math.inf))
    if value < low - RANGE_TOLERANCE or value > high + RANGE_TOLERANCE:
        return f"{value:g} is outside the possible range [{low:g}, {high:g}]"
    return None


def slow_bound(spec: api.ModelDeploymentSpec) -> float | None:
    """The latency histogram bucket that splits slow from fast requests: the smallest bucket
    bound at or above thresholds.maxLatencyP99 (a histogram knows no finer split); None when
    the bound is past the last finite bucket."""
    bound = api.parse_duration(spec.analysis.thresholds.max_latency_p99)
    return next((b for b in LATENCY_BUCKETS if b >= bound - 1e-12), None)


# Features a drift sample names: enough to act on, few enough for one line of an Event.
WORST_FEATURES_KEPT: Final = 3

FeatureValues = tuple[tuple[str, float], ...]  # (feature, value) pairs, worst first


@dataclass(frozen=True)
class Sample:
    """One query's answer: a value, no data (value None), or an error saying why not.

    A check measured per feature (drift) also names its worst features, with their values:
    its value is the first one's. Counts per bin (`every`) keep every bin in `features`, by
    name, and their sum as the value.
    """

    value: float | None = None
    error: str | None = None
    features: FeatureValues = ()

    @classmethod
    def failed(cls, error: str) -> Sample:
        return cls(value=None, error=error)

    @classmethod
    def worst_of(cls, by_feature: Mapping[str, float], *, lowest: bool = False) -> Sample:
        """One value per feature as one sample: the largest (the smallest with `lowest`, as
        for p-values), and the worst few features.

        NaN values are left out (PromQL's max skips them); nothing left is no data. Ties are
        broken by name, so the same answer always gives the same sample.
        """
        sign = 1.0 if lowest else -1.0
        ranked = sorted(
            ((name, value) for name, value in by_feature.items() if not math.isnan(value)),
            key=lambda item: (sign * item[1], item[0]),
        )
        if not ranked:
            return cls()
        return cls(value=ranked[0][1], features=tuple(ranked[:WORST_FEATURES_KEPT]))

    @classmethod
    def every(cls, by_label: Mapping[str, float]) -> Sample:
        """Counts per label (rows predicted per bin) as one sample: every label, by name, NaN
        ones left out, and their sum as the value; nothing is a count of 0 (no series yet)."""
        kept = tuple(sorted((k, v) for k, v in by_label.items() if not math.isnan(v)))
        return cls(value=math.fsum(v for _, v in kept), features=kept)


@dataclass(frozen=True)
class Measurements:
    """Every check's sample, taken at `time`."""

    time: datetime
    samples: Mapping[str, Sample] = field(default_factory=dict)

    def get(self, check: str) -> Sample:
        return self.samples.get(check, Sample())


# ---------------------------------------------------------------------------------------------
# How the values read


@dataclass(frozen=True)
class Notation:
    """How a check's values are written: times `scale`, with `decimals`, then `unit`."""

    scale: float  # from the analysis's unit (a fraction, seconds) to the shown one
    unit: str  # after the number; "" for none
    decimals: int


NOTATIONS: Final[Mapping[str, Notation]] = {
    REQUESTS: Notation(1.0, "", 0),
    ERROR_RATE: Notation(100.0, "%", 1),
    LATENCY_P99: Notation(1000.0, "ms", 1),
    DRIFT: Notation(1.0, "", 3),
    PREDICTION_DRIFT: Notation(1.0, "", 3),
    SHADOW_AGREEMENT: Notation(100.0, "%", 1),
    DRIFT_P_VALUE: Notation(1.0, "", 4),
    PREDICTION_DRIFT_P_VALUE: Notation(1.0, "", 4),
    SLOW_REQUESTS: Notation(100.0, "%", 2),
    ERROR_RATE_VS_STABLE: Notation(1.0, "x", 2),
    SLOW_REQUESTS_VS_STABLE: Notation(1.0, "x", 2),
    PREDICTIONS_VS_STABLE: Notation(100.0, "%", 1),  # percentage points
    ACCURACY: Notation(100.0, "%", 1),
    ACCURACY_VS_STABLE: Notation(100.0, "%", 1),  # percentage points
    MEAN_ABSOLUTE_ERROR: Notation(1.0, "", 3),  # the target's units
    ERROR_VS_STABLE: Notation(1.0, "", 3),
    OFFLINE_VS_STABLE: Notation(1.0, "", 4),  # in the figure's own units
}
# Checks whose values are p-values: the smallest ones are written in scientific notation.
P_VALUES: Final = frozenset({DRIFT_P_VALUE, PREDICTION_DRIFT_P_VALUE})
CUSTOM_NOTATION: Final = Notation(1.0, "", 3)  # a custom check's unit is the user's query's
NO_VALUE: Final = "-"
# Decimals a comparison may add so that a value and its bound never read alike (see
# `compared_texts`); past them the two are equal for any purpose a person has.
EXTRA_DECIMALS: Final = 6


def notation(check: str) -> Notation:
    return NOTATIONS.get(check, CUSTOM_NOTATION)


def value_text(check: str, value: float | None, *, decimals: int | None = None) -> str:
    """A check's value (or bound) as a person reads it: `20.0 %`, `4.2 ms`, `54`, `0.333`;
    `-` for none. `decimals` overrides the check's own."""
    if value is None:
        return NO_VALUE
    shown = notation(check)
    places = shown.decimals if decimals is None else decimals
    if check in P_VALUES and 0 < value < 10**-places:
        return f"{value:.1e}"  # a p-value of 2e-83 is no "0.0000"
    number = f"{value * shown.scale:.{places}f}"
    if float(number) == 0:
        number = number.removeprefix("-")  # a rounded -0.0001 is no negative rate
    return f"{number} {shown.unit}" if shown.unit else number


def compared_texts(check: str, value: float, bound: float) -> tuple[str, str]:
    """`value` and `bound` written alike, with decimals added (up to EXTRA_DECIMALS) while
    different numbers would read the same: a 5.04 % error rate over a 5 % max reads
    `5.04 %` against `5.00 %`, not `5.0 %` against `5.0 %`."""
    places = notation(check).decimals
    for extra in range(EXTRA_DECIMALS + 1):
        texts = (
            value_text(check, value, decimals=places + extra),
            value_text(check, bound, decimals=places + extra),
        )
        if texts[0] != texts[1] or value == bound:
            break
    return texts


def features_text(check: str, features: Sequence[tuple[str, float]]) -> str:
    """`mean radius 8.274, worst area 2.310`: each feature with its value in the check's
    notation."""
    return ", ".join(f"{name} {value_text(check, value)}" for name, value in features)
