"""The ModelDeployment API (canaryml.dev/v1alpha1): the single source of truth.

The CRD in crds/ is generated from these models (`canaryml crd`); the operator validates every
object with them again, so an object admitted by an older CRD still gets a clear message, and
the builtin router reads the object it follows with them too. Field names are camelCase on the
wire (docs/architecture.md).
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "canaryml.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "ModelDeployment"
PLURAL = "modeldeployments"
SINGULAR = "modeldeployment"
SHORT_NAMES = ("md",)

# Schemes the server's storages understand, plus pvc:// which the operator turns into a mount.
URI_PATTERN = r"^(s3://|gs://|https?://|file://|pvc://|models:/|runs:/)\S+$"
HTTP_URL_PATTERN = r"^https?://\S+$"
DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """Seconds in a Go-style duration such as `30s`, `1m30s` or `250ms`."""
    if not re.fullmatch(DURATION_PATTERN, text):
        raise ValueError(f"{text!r} is not a duration like 30s, 2m or 250ms")
    return sum(float(n) * _UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _positive_duration(text: str) -> str:
    if parse_duration(text) <= 0:
        raise ValueError(f"duration {text!r} must be greater than zero")
    return text


def _a_duration(text: str) -> str:
    parse_duration(text)
    return text


def _known_scheme(uri: str) -> str:
    if not re.fullmatch(URI_PATTERN, uri):
        raise ValueError(
            f"unsupported model URI {uri!r} (use s3://, gs://, http(s)://, file://, "
            "pvc://CLAIM/path, models:/NAME/VERSION, models:/NAME@ALIAS or runs:/RUN/PATH)"
        )
    return uri


# The patterns live in the JSON schema (for the CRD) and in the validators (for a readable
# message), so that the API server and the operator reject the same values.
Duration = Annotated[
    str,
    Field(
        max_length=32,
        json_schema_extra={
            "pattern": DURATION_PATTERN,
            # A pattern cannot say "not zero"; CEL parses the same Go durations.
            "x-kubernetes-validations": [
                {"rule": "duration(self) > duration('0s')", "message": "must be greater than 0"}
            ],
        },
    ),
    AfterValidator(_positive_duration),
]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


def _positive(value: float) -> float:
    if not value > 0:
        raise ValueError(f"must be greater than 0, got {value}")
    return value


# A finite amount above 0 in a unit of the user's (a regressor's target). Not `gt`: the
# exclusiveMinimum it writes is a boolean to Kubernetes 1.27, so a CEL rule says "not 0".
PositiveAmount = Annotated[
    float,
    Field(
        ge=0.0,
        allow_inf_nan=False,
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "self > 0.0", "message": "must be greater than 0"}
            ]
        },
    ),
    AfterValidator(_positive),
]
# A duration that may be 0 (analysis.labels.delay: labels known at once).
NonNegativeDuration = Annotated[
    str,
    Field(max_length=32, json_schema_extra={"pattern": DURATION_PATTERN}),
    AfterValidator(_a_duration),
]

DEFAULT_SHADOW_PERCENT = 100
DEFAULT_PROGRESS_DEADLINE = "10m"  # as Flagger's and Argo Rollouts' progressDeadlineSeconds
DEFAULT_ROLLBACK_WINDOW = "0s"  # no window: the stable rolls to a promoted model at once
DEFAULT_PROBABILITY_TOLERANCE = 0.05


def _list_map(*, key: str) -> dict[str, Any]:
    """CRD markers for a list of objects identified by one field (merged by it, no duplicates)."""
    return {"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": [key]}


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


class ModelRef(_Model):
    """Where a packaged model lives and which version it is."""

    uri: Annotated[str, AfterValidator(_known_scheme)] = Field(
        max_length=2048,
        description="s3://, gs://, http(s)://, file://, pvc://CLAIM/path, models:/name/version, "
        "models:/name@alias or runs:/run-id/path (MLflow)",
        json_schema_extra={"pattern": URI_PATTERN},
    )
    version: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
    sha256: str | None = Field(
        default=None,
        pattern=r"^[0-9a-f]{64}$",
        description="the artifact digest; a model that does not match is refused before loading",
    )


def _strictly_increasing(steps: list[int]) -> list[int]:
    for before, after in itertools.pairwise(steps):
        if after <= before:
            raise ValueError(f"steps must be strictly increasing, got {steps}")
    return steps


class ApprovalSpec(_Model):
    """A person's go-ahead before the final promotion (Flagger's confirm-promotion, Argo
    Rollouts' indefinite pause step)."""

    required: bool = Field(
        default=False,
        description="when the last step has passed, hold the canary at its weight (analyses "
        "go on: a failing check still rolls it back) until `canaryml promote NAME` (the "
        "annotation canaryml.dev/promote: <canary version>) approves the promotion",
    )


DEFAULT_BLUE_GREEN_ANALYSIS_STEPS = 5


class BlueGreenSpec(_Model):
    """Blue-green instead of canary steps (Flagger's and Argo Rollouts' blueGreen): the new
    model runs as a preview that takes no live traffic (reachable through its Service
    NAME-canary, A/B segments and version pins), is analysed there, then takes all traffic
    at once."""

    analysis_steps: int = Field(
        default=DEFAULT_BLUE_GREEN_ANALYSIS_STEPS,
        ge=1,
        le=100,
        description="the preview must pass its checks for this many analysis intervals "
        "(analysisSteps x analysis.interval) before it takes all traffic at once",
    )
    mirror: bool = Field(
        default=False,
        description="builtin router only: also send every live prediction request the stable "
        "answered 2xx to the preview, after the client has its answer (never seen by the "
        "client); the preview's answers count as its own requests in the analysis",
    )


EXPERIMENT_ACCURACY = "accuracy"
DEFAULT_EXPERIMENT_WEIGHT = 50
DEFAULT_EXPERIMENT_MIN_SAMPLES = 100


class ExperimentSpec(_Model):
    """An A/B experiment (docs/operator.md, "A/B experiments"): the canary at a fixed weight,
    no steps and no automatic promotion, until the comparison of one metric between the two
    tracks is decided with anytime-valid statistics. The winner is shown in status.experiment;
    promoting it stays a person's (or an automation's) `canaryml promote`."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": f"self.metric == '{EXPERIMENT_ACCURACY}' ? "
                    "(!has(self.successQuery) && !has(self.totalQuery)) : "
                    "(has(self.successQuery) && has(self.totalQuery))",
                    "message": f"metric {EXPERIMENT_ACCURACY} comes from the feedback labels "
                    "(no queries); a business metric needs successQuery and totalQuery",
                }
            ]
        }
    )

    metric: str = Field(
        default=EXPERIMENT_ACCURACY,
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
        description=f"what is compared: {EXPERIMENT_ACCURACY} (the share of correct predictions "
        "among the labels sent back, per track) or the name of a business metric given by "
        "successQuery and totalQuery",
    )
    weight: int = Field(
        default=DEFAULT_EXPERIMENT_WEIGHT,
        ge=1,
        le=99,
        description="the canary's fixed share of traffic, in percent, for the whole experiment",
    )
    success_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="a business metric: PromQL for one track's successes since the experiment "
        "began, with the placeholders {{track}} (canary or stable), {{version}} (the track's "
        "model version) and {{range}} (the experiment's age, e.g. 3600s)",
    )
    total_query: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        description="a business metric: PromQL for one track's trials (the successes' "
        "denominator) since the experiment began, with the same placeholders",
    )
    min_samples: int = Field(
        default=DEFAULT_EXPERIMENT_MIN_SAMPLES,
        ge=1,
        le=10_000_000,
        description="samples (labels, or trials of a business metric) each track needs before "
        "anything is decided",
    )
    min_effect: (
        Annotated[
            float,
            Field(
                ge=0.0,
                le=1.0,
                json_schema_extra={
                    "x-kubernetes-validations": [
                        {"rule": "self > 0.0", "message": "must be greater than 0"}
                    ]
                },
            ),
            AfterValidator(_positive),
        ]
        | None
    ) = Field(
        default=None,
        description="optional: decide that there is no difference (winner none) once the "
        "difference's interval lies within +-minEffect; without it the experiment runs until a "
        "winner is named or it is promoted or aborted",
    )

    @model_validator(mode="after")
    def _queries(self) -> ExperimentSpec:
        given = (self.success_query is not None, self.total_query is not None)
        if self.metric == EXPERIMENT_ACCURACY and any(given):
            raise ValueError(
                f"experiment metric {EXPERIMENT_ACCURACY} comes from the feedback labels: "
                "remove successQuery and totalQuery (or name a business metric)"
            )
        if self.metric != EXPERIMENT_ACCURACY and not all(given):
            raise ValueError(
                f"experiment metric {self.metric!r} is a business metric: set successQuery "
                "and totalQuery (PromQL with {{track}}), or use metric accuracy"
            )
        return self


class CanarySpec(_Model):
    model: ModelRef
    steps: Annotated[
        list[Annotated[int, Field(ge=1, le=100)]],
        Field(
            min_length=1,
            max_length=20,
            json_schema_extra={
                "x-kubernetes-list-type": "set",
                "x-kubernetes-validations": [
                    {"rule": "self.isSorted()", "message": "steps must be strictly increasing"}
                ],
            },
        ),
        AfterValidator(_strictly_increasing),
    ] = Field(default=[5, 10, 25, 50], description="canary weights in percent, increasing")
    step_interval: Duration = Field(default="30s", description="time each step must pass")
    replicas: int = Field(default=1, ge=0, le=100)
    approval: ApprovalSpec | None = Field(
        default=None,
        description="opt-in: wait for a person's approval before the final promotion",
    )
    experiment: ExperimentSpec | None = Field(
        default=None,
        description="opt-in: an A/B experiment instead of steps: the canary at a fixed weight "
        "until the comparison on a metric is decided; never promoted automatically (steps, "
        "stepInterval and approval do not apply)",
    )
    blue_green: BlueGreenSpec | None = Field(
        default=None,
        description="opt-in: the blue-green strategy (steps and stepInterval are then not "
        "used): a preview at weight 0, analysed, then switched to 100% at once",
    )


class ShadowSpec(_Model):
    model: ModelRef
    percent: int = Field(
        default=DEFAULT_SHADOW_PERCENT, ge=0, le=100, description="share of traffic mirrored"
    )
    replicas: int = Field(default=1, ge=0, le=100)
    probability_tolerance: Fraction = Field(
        default=DEFAULT_PROBABILITY_TOLERANCE,
        description="shadow and live answers agree when the class is the same and every "
        "probability differs by at most this much",
    )


class SecretKeyRef(_Model):
    name: str = Field(min_length=1, max_length=253)
    key: str = Field(min_length=1, max_length=253)


class PrometheusRef(_Model):
    url: str | None = Field(
        default=None,
        pattern=HTTP_URL_PATTERN,
        description="the Prometheus HTTP API; default: the operator's (Helm value "
        "prometheus.url, else http://prometheus.monitoring:9090)",
    )
    timeout: Duration = "5s"
    bearer_token_secret_ref: SecretKeyRef | None = Field(
        default=None, description="a Secret key holding a bearer token"
    )
    authorization_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="a Secret key holding a whole Authorization header value (e.g. Basic ...)",
    )


class Thresholds(_Model):
    max_error_rate: Fraction = 0.05
    max_latency_p99: Duration = "250ms"
    max_drift: float = Field(default=0.25, ge=0.0, le=100.0)
    max_prediction_drift: float = Field(default=0.25, ge=0.0, le=100.0)
    min_shadow_agreement: Fraction = 0.9
    drift_significance: float | None = Field(
        default=None,
        ge=1e-6,
        le=0.2,
        description="calibrated drift gate (opt-in): fail when a feature's drift test, or the "
        "prediction drift test, has a p-value below this (Holm-adjusted over features, "
        "Bonferroni over replicas); maxDrift and maxPredictionDrift then only describe the "
        "effect (PSI) and fail nothing",
    )
    min_accuracy: Fraction | None = Field(
        default=None,
        description="opt-in, classifiers: the smallest acceptable accuracy on labelled "
        "predictions (feedback), judged sequentially on the labels that arrived since the step "
        "began (analysis.labels says how many are needed and how late they come)",
    )
    max_mean_absolute_error: PositiveAmount | None = Field(
        default=None,
        description="opt-in, regressors: the largest acceptable mean absolute error on labelled "
        "predictions (feedback), in the target's units, judged sequentially on the labels that "
        "arrived since the step began (analysis.labels applies as for minAccuracy)",
    )


# Built-in checks whose names a custom metric's (lowercase with dashes) could take; the other
# built-ins are camelCase, which a custom name cannot be.
RESERVED_METRIC_NAMES = ("requests", "drift", "accuracy")


class CustomMetric(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.min) || has(self.max)", "message": "set min, max or both"},
                {
                    "rule": "!has(self.min) || !has(self.max) || self.min <= self.max",
                    "message": "min must not exceed max",
                },
                {
                    "rule": f"!(self.name in {list(RESERVED_METRIC_NAMES)!r})",
                    "message": f"{', '.join(RESERVED_METRIC_NAMES)} are names of built-in checks",
                },
            ]
        }
    )

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    query: str = Field(min_length=1, max_length=4096)
    min: float | None = None
    max: float | None = None
    dry_run: bool = Field(
        default=False,
        description="measured and recorded in status.lastAnalysis.checks (marked dryRun) "
        "like the others, but never fails or holds a rollout: trust a new check before it gates",
    )

    @model_validator(mode="after")
    def _bounded(self) -> CustomMetric:
        if self.min is None and self.max is None:
            raise ValueError(f"metric {self.name!r}: set min, max or both")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"metric {self.name!r}: min {self.min} exceeds max {self.max}")
        return self


# Built-in check names that a custom metric's (lowercase) name could collide with.


class SequentialSpec(_Model):
    """Judge errors and latency from every request since the step began, with error rates
    that hold however many analyses look (docs/judgment.md, "Sequential decisions")."""

    false_rollback_rate: float = Field(
        default=0.01,
        ge=1e-6,
        le=0.2,
        description="chance, per step, of rolling back a canary that is exactly at a bound",
    )
    false_promotion_rate: float = Field(
        default=0.01,
        ge=1e-6,
        le=0.2,
        description="chance, per step, of passing a canary that is exactly at a bound",
    )


class BaselineSpec(_Model):
    """The canary against the stable track on the same traffic since the step began: the
    largest acceptable worsening. The canary passes a part when its rate is within
    max(ratio x stable, stable + increase) of that part's given fields, the prediction
    part when the share of every predicted class (bin) is within maxPredictionShift of
    stable's, and a regressor's error part when its mean absolute error on labels is within
    max(maxErrorRatio x stable's, stable's + maxErrorIncrease)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.maxErrorRateRatio) || has(self.maxErrorRateIncrease) || "
                    "has(self.maxSlowRatio) || has(self.maxSlowIncrease) || "
                    "has(self.maxPredictionShift) || has(self.maxAccuracyDrop) || "
                    "has(self.maxErrorIncrease) || has(self.maxErrorRatio)",
                    "message": "set at least one allowance",
                }
            ]
        }
    )

    max_error_rate_ratio: float | None = Field(
        default=None, ge=1.0, le=1000.0, description="canary error rate / stable error rate"
    )
    max_error_rate_increase: float | None = Field(
        default=None, ge=0.0, le=0.99, description="canary error rate - stable error rate"
    )
    max_slow_ratio: float | None = Field(
        default=None,
        ge=1.0,
        le=1000.0,
        description="share of requests slower than the latency bound (thresholds."
        "maxLatencyP99, rounded up to a histogram bucket): canary / stable",
    )
    max_slow_increase: float | None = Field(
        default=None, ge=0.0, le=0.99, description="share of slow requests: canary - stable"
    )
    max_prediction_shift: float | None = Field(
        default=None,
        ge=1e-6,  # above 0 (no exclusiveMinimum: Kubernetes 1.27 reads it as a boolean)
        le=1.0,
        description="largest difference, canary - stable, of the share of predictions in any "
        "one class (or bin of the reference profile), either way: 0.05 is 5 percentage points",
    )
    max_accuracy_drop: float | None = Field(
        default=None,
        ge=0.0,
        le=0.99,
        description="classifiers: stable accuracy - canary accuracy on labelled predictions "
        "(feedback) since the step began: 0.02 is 2 percentage points",
    )
    max_error_increase: float | None = Field(
        default=None,
        ge=0.0,
        allow_inf_nan=False,
        description="regressors: canary mean absolute error - stable mean absolute error on "
        "labelled predictions (feedback) since the step began, in the target's units",
    )
    max_error_ratio: float | None = Field(
        default=None,
        ge=1.0,
        le=1000.0,
        description="regressors: canary mean absolute error / stable mean absolute error on "
        "labelled predictions since the step began (1.1: at most 10 % larger); with "
        "maxErrorIncrease, either passes",
    )

    @property
    def compares_errors(self) -> bool:
        """Whether a regressor's errors on labels are compared (maxErrorIncrease, maxErrorRatio)."""
        return self.max_error_increase is not None or self.max_error_ratio is not None

    @model_validator(mode="after")
    def _some_allowance(self) -> BaselineSpec:
        if all(
            value is None
            for value in (
                self.max_error_rate_ratio,
                self.max_error_rate_increase,
                self.max_slow_ratio,
                self.max_slow_increase,
                self.max_prediction_shift,
                self.max_accuracy_drop,
                self.max_error_increase,
                self.max_error_ratio,
            )
        ):
            raise ValueError("set at least one allowance (maxErrorRateRatio, ...)")
        return self


DEFAULT_MIN_LABELS = 100


class LabelsSpec(_Model):
    """How the checks on labels (thresholds.minAccuracy, baseline.maxAccuracyDrop; for
    regressors thresholds.maxMeanAbsoluteError, baseline.maxErrorIncrease, .maxErrorRatio) wait
    for labels: labels are counted as they arrive, since the step began (docs/judgment.md,
    "Accuracy on labels")."""

    min_labels: int = Field(
        default=DEFAULT_MIN_LABELS,
        ge=1,
        le=10_000_000,
        description="labels a track needs since the step began before a check on labels "
        "(accuracy, or a regressor's error) may pass or fail (below it: Inconclusive, the "
        "weight held)",
    )
    delay: NonNegativeDuration = Field(
        default="0s",
        description="how long after a prediction its label may arrive: during a step's first "
        "delay no check on labels passes (a failure with evidence still rolls back)",
    )


# A held-out figure `canaryml package --evaluate` records, by its name in the manifest (and in
# `--require`): telemetry.OFFLINE_HIGHER_IS_BETTER, then the errors, OFFLINE_LOWER_IS_BETTER.
OfflineMetric = Literal[
    "accuracy", "f1", "f1_macro", "roc_auc", "roc_auc_ovr", "r2", "log_loss", "mae", "rmse"
]


class OfflineGateSpec(_Model):
    """Refuse, before it gets any traffic, a canary whose held-out figure (`canaryml package
    --evaluate`) is worse than the stable model's by more than maxDrop (docs/operator.md,
    "The offline gate")."""

    metric: OfflineMetric = Field(
        default="accuracy",
        description="the held-out figure compared, named as the manifest records it: accuracy, "
        "f1, f1_macro, roc_auc, roc_auc_ovr, r2 (larger is better); log_loss, mae, rmse "
        "(errors: smaller is better)",
    )
    max_drop: float = Field(
        ge=0.0,
        allow_inf_nan=False,
        description="how much worse than stable's the canary's figure may be, in the figure's "
        "units: canary >= stable - maxDrop (canary <= stable + maxDrop for an error); "
        "0.01 is one point of accuracy",
    )


# --- References to reusable analysis (docs/operator.md, "Reusable analysis: templates") ------
# The templates themselves are at the end of this module.
TemplateKind = Literal["AnalysisTemplate", "ClusterAnalysisTemplate"]
MAX_TEMPLATE_REFS = 10
MAX_TEMPLATE_ARGS = 20
MAX_ARG_VALUE_LENGTH = 1024
ARG_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
# A Kubernetes object name (RFC 1123 subdomain).
OBJECT_NAME_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"


def _unique_arg_names(args: list[Any]) -> list[Any]:
    """Template args (declared or given) named once each."""
    names = [arg.name for arg in args]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"args must have unique names, repeated: {', '.join(duplicated)}")
    return args


class TemplateArgValue(_Model):
    """One argument given to a template: `{{args.NAME}}` in its queries becomes `value`."""

    name: str = Field(max_length=63, pattern=ARG_NAME_PATTERN)
    value: str = Field(max_length=MAX_ARG_VALUE_LENGTH)


class AnalysisTemplateRef(_Model):
    """A template whose metrics this resource's analysis adds to its own `metrics`."""

    name: str = Field(min_length=1, max_length=253, pattern=OBJECT_NAME_PATTERN)
    kind: TemplateKind = Field(
        default="AnalysisTemplate",
        description="AnalysisTemplate (in the resource's namespace) or ClusterAnalysisTemplate",
    )
    args: Annotated[
        list[TemplateArgValue],
        Field(max_length=MAX_TEMPLATE_ARGS, json_schema_extra=_list_map(key="name")),
        AfterValidator(_unique_arg_names),
    ] = Field(default_factory=list, description="values of the template's declared args")


def _unique_template_refs(refs: list[AnalysisTemplateRef]) -> list[AnalysisTemplateRef]:
    keys = [f"{ref.kind}/{ref.name}" for ref in refs]
    duplicated = sorted({key for key in keys if keys.count(key) > 1})
    if duplicated:
        raise ValueError(f"analysis.templates repeats {', '.join(duplicated)}")
    return refs


MIN_ANALYSIS_INTERVAL = "1s"


def _at_least_min_interval(text: str) -> str:
    if parse_duration(text) < parse_duration(MIN_ANALYSIS_INTERVAL):
        raise ValueError(f"interval {text!r} is shorter than the minimum {MIN_ANALYSIS_INTERVAL}")
    return text


class AnalysisSpec(_Model):
    prometheus: PrometheusRef = Field(default_factory=PrometheusRef)
    interval: Annotated[
        Duration,
        Field(
            json_schema_extra={
                "x-kubernetes-validations": [
                    {
                        "rule": f"duration(self) >= duration('{MIN_ANALYSIS_INTERVAL}')",
                        "message": f"must be at least {MIN_ANALYSIS_INTERVAL}",
                    }
                ]
            }
        ),
        AfterValidator(_at_least_min_interval),
    ] = "15s"
    window: Duration = "1m"
    min_requests: int = Field(default=50, ge=0)
    failure_limit: int = Field(default=2, ge=1, le=100)
    thresholds: Thresholds = Field(default_factory=Thresholds)
    sequential: SequentialSpec | None = Field(
        default=None,
        description="opt-in: errorRate and latency judged from every request since the step "
        "began, with evidence (pass, fail or not sure yet); a failure rolls back at once",
    )
    baseline: BaselineSpec | None = Field(
        default=None,
        description="opt-in: the canary compared with the stable track on the same traffic; "
        "judged sequentially (sequential's rates, or their defaults)",
    )
    labels: LabelsSpec | None = Field(
        default=None,
        description="the checks on labels: how many are needed and how late they come "
        "(defaults apply when thresholds.minAccuracy, .maxMeanAbsoluteError or a baseline "
        "allowance on labels (maxAccuracyDrop, maxErrorIncrease, maxErrorRatio) is set)",
    )
    offline_gate: OfflineGateSpec | None = Field(
        default=None,
        description="opt-in: before the canary gets any traffic, its held-out figure (canaryml "
        "package --evaluate, exported by its servers) must be known and at most maxDrop worse "
        "than the stable model's, on the same held-out data; worse: rolled back at 0%",
    )
    metrics: Annotated[
        list[CustomMetric],
        Field(
            max_length=20,
            json_schema_extra=_list_map(key="name"),
        ),
    ] = Field(default_factory=list)
    templates: Annotated[
        list[AnalysisTemplateRef],
        Field(max_length=MAX_TEMPLATE_REFS),
        AfterValidator(_unique_template_refs),
    ] = Field(
        default_factory=list,
        description="AnalysisTemplates and ClusterAnalysisTemplates whose metrics are added to "
        "metrics, read at each analysis (a missing one holds the rollout)",
    )

    @model_validator(mode="after")
    def _unique_metric_names(self) -> AnalysisSpec:
        names = [metric.name for metric in self.metrics]
        reserved = sorted(set(names) & set(RESERVED_METRIC_NAMES))
        if reserved:
            raise ValueError(
                f"analysis.metrics names {', '.join(reserved)} are taken by built-in checks"
            )
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"analysis.metrics names must be unique: {', '.join(duplicates)}")
        return self

    @property
    def sequential_rates(self) -> SequentialSpec | None:
        """The sequential decisions' error rates when errors and latency are judged
        sequentially (asked for, or implied by a baseline comparison or an accuracy check);
        None otherwise."""
        if self.sequential is not None:
            return self.sequential
        implied = self.baseline is not None or self.accuracy_checked
        return SequentialSpec() if implied else None

    @property
    def accuracy_checked(self) -> bool:
        """Whether a check on labels is asked: accuracy (thresholds.minAccuracy,
        baseline.maxAccuracyDrop) or a regressor's error (thresholds.maxMeanAbsoluteError,
        baseline.maxErrorIncrease, baseline.maxErrorRatio)."""
        return self.accuracy_asked or self.error_asked

    @property
    def accuracy_asked(self) -> bool:
        """Whether a classifier's accuracy on labels is judged (minAccuracy, maxAccuracyDrop)."""
        return self.thresholds.min_accuracy is not None or (
            self.baseline is not None and self.baseline.max_accuracy_drop is not None
        )

    @property
    def error_asked(self) -> bool:
        """Whether a regressor's error on labels is judged (maxMeanAbsoluteError,
        maxErrorIncrease, maxErrorRatio)."""
        return self.thresholds.max_mean_absolute_error is not None or (
            self.baseline is not None and self.baseline.compares_errors
        )

    @property
    def label_rules(self) -> LabelsSpec:
        """analysis.labels, or its defaults."""
        return self.labels if self.labels is not None else LabelsSpec()


DEFAULT_TARGET_CPU_UTILIZATION = 80
DEFAULT_MAX_REPLICAS = 10


class AutoscalingSpec(_Model):
    """A HorizontalPodAutoscaler (autoscaling/v2) for a Deployment: its replica bounds and the
    average CPU utilization it keeps, in percent of the pods' CPU request. While it is set the
    operator never writes that Deployment's replicas (docs/operator.md, "Autoscaling")."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.minReplicas) || !has(self.maxReplicas) "
                    "|| self.minReplicas <= self.maxReplicas",
                    "message": "minReplicas must not exceed maxReplicas",
                }
            ]
        }
    )

    min_replicas: int = Field(default=1, ge=1, le=1000, description="the fewest replicas")
    max_replicas: int = Field(
        default=DEFAULT_MAX_REPLICAS, ge=1, le=1000, description="the most replicas"
    )
    target_cpu_utilization: int = Field(
        default=DEFAULT_TARGET_CPU_UTILIZATION,
        ge=1,
        le=1000,
        description="average CPU use the autoscaler keeps, in percent of the CPU request",
    )

    @model_validator(mode="after")
    def _bounds(self) -> AutoscalingSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(
                f"minReplicas {self.min_replicas} must not exceed maxReplicas {self.max_replicas}"
            )
        return self


class ParentRef(_Model):
    """The Gateway (or, for east-west traffic, the Service) an HTTPRoute attaches to."""

    group: str = Field(default="gateway.networking.k8s.io", max_length=253)
    kind: str = Field(default="Gateway", max_length=63)
    name: str = Field(min_length=1, max_length=253)
    namespace: str | None = Field(default=None, max_length=63)
    section_name: str | None = Field(default=None, max_length=253)


HEADER_NAME_PATTERN = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"  # an HTTP field name (RFC 9110 token)
# A cookie value as RFC 6265 allows it unquoted (no space, '"', ',', ';' or backslash).
COOKIE_VALUE_PATTERN = r"^[!#-+\--:<-\[\]-~]+$"
MAX_CANARY_MATCHES = 16
MAX_MATCH_REGEX_LENGTH = 256
MAX_MATCH_REGEX_REPEATS = 2
# A header value longer than this never matches a `regex` (bounds the cost of a match).
MAX_REGEX_MATCHED_LENGTH = 256


def segment_regex_problem(pattern: str) -> str | None:
    """Why a canaryMatch regex is refused, or None. Accepted: what Python's `re` and RE2 (the
    gateways' dialect) both read the same way, with no repetition or alternation inside a
    repetition (catastrophic backtracking) and at most MAX_MATCH_REGEX_REPEATS repetitions, so
    that matching a header value of at most MAX_REGEX_MATCHED_LENGTH characters stays cheap
    (the worst measured, `\\w*\\w*x` against 256 letters: 0.13 ms)."""
    if len(pattern) > MAX_MATCH_REGEX_LENGTH:
        return f"longer than {MAX_MATCH_REGEX_LENGTH} characters"
    try:
        parsed = re._parser.parse(pattern)  # type: ignore[attr-defined]
    except re.error as error:
        return f"not a regular expression: {error}"
    constants = re._constants  # type: ignore[attr-defined]
    repeats = 0

    def walk(items: Any, inside_repeat: bool) -> str | None:
        nonlocal repeats
        for op, argument in items:
            if op in (constants.GROUPREF, constants.GROUPREF_EXISTS):
                return "backreferences are not supported (RE2 has none)"
            if op in (constants.ASSERT, constants.ASSERT_NOT):
                return "lookaround is not supported (RE2 has none)"
            if op in (constants.ATOMIC_GROUP, constants.POSSESSIVE_REPEAT):
                return "atomic groups and possessive repeats are not supported (RE2 has none)"
            children: list[Any] = []
            if op in (constants.MAX_REPEAT, constants.MIN_REPEAT):
                _low, high, body = argument
                if high > 1:
                    if inside_repeat:
                        return "a repetition inside a repetition (catastrophic backtracking)"
                    repeats += 1
                    if repeats > MAX_MATCH_REGEX_REPEATS:
                        return f"more than {MAX_MATCH_REGEX_REPEATS} repetitions"
                problem = walk(body, inside_repeat or high > 1)
                if problem:
                    return problem
                continue
            if op == constants.SUBPATTERN:
                children = [argument[-1]]
            elif op == constants.BRANCH:
                if inside_repeat:
                    return "an alternation inside a repetition (catastrophic backtracking)"
                children = list(argument[1])
            for child in children:
                problem = walk(child, inside_repeat)
                if problem:
                    return problem
        return None

    return walk(parsed, False)


def _safe_regex(pattern: str | None) -> str | None:
    if pattern is not None:
        problem = segment_regex_problem(pattern)
        if problem:
            raise ValueError(f"regex {pattern!r}: {problem}")
    return pattern


class CanaryMatch(_Model):
    """One A/B segment rule: a request with this header (or cookie) value goes to the canary,
    whatever its weight, while a canary rollout runs (docs/operator.md, "A/B segments, version
    pins and rate limits")."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {"rule": "has(self.header) != has(self.cookie)", "message": "set header or cookie"},
                {"rule": "has(self.value) != has(self.regex)", "message": "set value or regex"},
                {
                    "rule": "!has(self.cookie) || has(self.value)",
                    "message": "a cookie matches an exact value",
                },
            ]
        }
    )

    header: str | None = Field(
        default=None, max_length=256, pattern=HEADER_NAME_PATTERN, description="a header name"
    )
    cookie: str | None = Field(
        default=None, max_length=256, pattern=HEADER_NAME_PATTERN, description="a cookie name"
    )
    value: str | None = Field(
        default=None,
        min_length=1,
        max_length=256,
        description="the exact value (a header's, or a cookie's: no spaces, quotes, commas, "
        "semicolons or backslashes)",
    )
    regex: Annotated[str | None, AfterValidator(_safe_regex)] = Field(
        default=None,
        min_length=1,
        max_length=MAX_MATCH_REGEX_LENGTH,
        description="a header's whole value matches this regular expression (RE2 syntax; no "
        "repetition or alternation inside a repetition, at most "
        f"{MAX_MATCH_REGEX_REPEATS} repetitions); values over "
        f"{MAX_REGEX_MATCHED_LENGTH} characters never match",
    )

    @model_validator(mode="after")
    def _one_of_each(self) -> CanaryMatch:
        if (self.header is None) == (self.cookie is None):
            raise ValueError("a canaryMatch rule names a header or a cookie (one of them)")
        if (self.value is None) == (self.regex is None):
            raise ValueError("a canaryMatch rule has a value or a regex (one of them)")
        if self.cookie is not None:
            if self.value is None:
                raise ValueError(f"cookie {self.cookie!r}: a cookie matches an exact value")
            if not re.fullmatch(COOKIE_VALUE_PATTERN, self.value):
                raise ValueError(
                    f"cookie {self.cookie!r}: {self.value!r} is not a cookie value (no spaces, "
                    "quotes, commas, semicolons or backslashes)"
                )
        return self


class RateLimitSpec(_Model):
    """Per-client rate limit of the builtin router (docs/operator.md, "A/B segments, version
    pins and rate limits")."""

    requests_per_second: PositiveAmount = Field(
        le=1_000_000, description="requests per second each client may make, sustained"
    )
    burst: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="requests a client may make at once (default: requestsPerSecond rounded "
        "up, at least 1)",
    )
    client_header: str | None = Field(
        default=None,
        max_length=256,
        pattern=HEADER_NAME_PATTERN,
        description="the header naming the client (set by a trusted proxy in front); without "
        "it, or when a request lacks it, the peer address",
    )


class RoutingSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.rateLimit) || !has(self.router) || self.router == 'builtin'",
                    "message": "rateLimit is the builtin router's",
                },
                {
                    "rule": "!has(self.canaryMatch) || size(self.canaryMatch) == 0 "
                    "|| !has(self.router) || self.router != 'none'",
                    "message": "canaryMatch needs a router (builtin or gateway-api)",
                },
            ]
        }
    )

    router: Literal["builtin", "gateway-api", "none"] = "builtin"
    replicas: int = Field(default=1, ge=1, le=100, description="builtin router replicas")
    parent_refs: Annotated[list[ParentRef], Field(max_length=16)] = Field(
        default_factory=list,
        description="gateway-api only: where the HTTPRoute attaches (default: the "
        "ModelDeployment's Service, as for Gateway API mesh routing)",
    )
    sticky_header: str | None = Field(
        default=None, max_length=256, pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
    )
    canary_match: Annotated[list[CanaryMatch], Field(max_length=MAX_CANARY_MATCHES)] = Field(
        default_factory=list,
        description="A/B segments: a request matching any rule goes to the canary whatever "
        "its weight (0 included) while the rollout runs; stable otherwise",
    )
    rate_limit: RateLimitSpec | None = Field(
        default=None,
        description="builtin router only: per-client limit; over it, 429 with Retry-After",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="builtin router only: a HorizontalPodAutoscaler scales the router "
        "(routing.replicas is then not used)",
    )

    @model_validator(mode="after")
    def _routed_by_someone(self) -> RoutingSpec:
        if self.rate_limit is not None and self.router != "builtin":
            raise ValueError(
                f"routing.rateLimit is the builtin router's; with router {self.router!r} use "
                "the gateway's own rate-limit policy"
            )
        if self.canary_match and self.router == "none":
            raise ValueError("routing.canaryMatch needs a router: builtin or gateway-api")
        return self


class FeedbackSpec(_Model):
    """Where the model servers find the key that signs prediction ids (docs/serving.md)."""

    key_secret_ref: SecretKeyRef = Field(
        description="a Secret key in the ModelDeployment's namespace holding the key that signs "
        "prediction ids (at least 16 bytes); every track's servers get it"
    )
    previous_keys_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="a Secret key holding earlier keys (comma-separated or one a line): ids "
        "they signed still verify during a rotation; none are signed with them",
    )


class ServingSpec(_Model):
    replicas: int = Field(default=1, ge=0, le=1000, description="replicas of the stable track")
    image: str | None = Field(
        default=None, max_length=512, description="defaults to the operator's own image"
    )
    resources: dict[str, dict[str, str | int]] | None = Field(
        default=None, description="container resources (requests, limits) for every track"
    )
    feedback: FeedbackSpec | None = Field(
        default=None,
        description="prediction ids and the feedback endpoint: the key's Secret (without it "
        "the servers issue no ids and refuse feedback)",
    )
    autoscaling: AutoscalingSpec | None = Field(
        default=None,
        description="a HorizontalPodAutoscaler for the stable track (serving.replicas is then "
        "not used), and one for the canary while it has weight, its bounds those of the stable "
        "times the canary's weight (rounded up, at least 1)",
    )

    @model_validator(mode="after")
    def _autoscaled_cpu_request(self) -> ServingSpec:
        requests = (self.resources or {}).get("requests") or {}
        if self.autoscaling is not None and self.resources is not None and "cpu" not in requests:
            raise ValueError(
                "autoscaling scales on CPU utilization, a share of the CPU request: "
                "set resources.requests.cpu"
            )
        return self


# --- Lifecycle webhooks and notifications (docs/operator.md, "Opt-in: lifecycle webhooks") ----
WebhookType = Literal[
    "confirm-rollout",
    "pre-rollout",
    "rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
    "post-rollout",
    "rollback",
    "event",
]
# Gating hooks hold the rollout until they answer 2xx ("rollout": a failure is a failed check);
# the others only tell, and never hold anything.
GATING_WEBHOOKS: tuple[WebhookType, ...] = (
    "confirm-rollout",
    "pre-rollout",
    "rollout",
    "confirm-traffic-increase",
    "confirm-promotion",
)
DEFAULT_WEBHOOK_TIMEOUT = "10s"
DEFAULT_WEBHOOK_MAX_ATTEMPTS = 10
DEFAULT_WEBHOOK_RETRY_INTERVAL = "5s"
MAX_WEBHOOK_TIMEOUT_SECONDS = 60.0


def _webhook_timeout(text: str) -> str:
    if parse_duration(text) > MAX_WEBHOOK_TIMEOUT_SECONDS:
        raise ValueError(f"must be at most {MAX_WEBHOOK_TIMEOUT_SECONDS:g}s, got {text}")
    return text


class WebhookSpec(_Model):
    """One lifecycle webhook: a URL the operator POSTs a versioned JSON payload to."""

    name: str = Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    type: WebhookType
    url: str = Field(max_length=2048, pattern=HTTP_URL_PATTERN)
    timeout: Annotated[Duration, AfterValidator(_webhook_timeout)] = Field(
        default=DEFAULT_WEBHOOK_TIMEOUT, description="for one attempt, the reply read whole"
    )
    max_attempts: int = Field(
        default=DEFAULT_WEBHOOK_MAX_ATTEMPTS,
        ge=1,
        le=100,
        description="attempts per occasion; a gating hook that used them all holds the rollout",
    )
    retry_interval: Duration = Field(
        default=DEFAULT_WEBHOOK_RETRY_INTERVAL,
        description="the wait after the first failed attempt, doubled after each (at most 5m)",
    )
    metadata: dict[str, str] = Field(
        default_factory=dict, max_length=32, description="passed as is in the payload"
    )
    secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="a Secret key (labelled canaryml.dev/webhook-credentials=true) whose value "
        "signs the payload: HMAC-SHA256 in the x-canaryml-signature header",
    )


NotificationEvent = Literal[
    "promoted", "rolledBack", "stepAdvanced", "held", "failed", "experimentDecided"
]
NOTIFICATION_EVENTS: tuple[NotificationEvent, ...] = (
    "promoted",
    "rolledBack",
    "stepAdvanced",
    "held",
    "failed",
    "experimentDecided",  # an A/B experiment named its winner (spec.canary.experiment)
)


class NotificationSpec(_Model):
    """Where rollout events are told: a generic JSON webhook or a Slack incoming webhook."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.url) != has(self.urlSecretRef)",
                    "message": "a notification has url or urlSecretRef (one of them)",
                }
            ]
        }
    )

    url: str | None = Field(default=None, max_length=2048, pattern=HTTP_URL_PATTERN)
    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="a Secret key (labelled canaryml.dev/webhook-credentials=true) holding the "
        "URL (Slack's incoming-webhook URLs are secrets)",
    )
    format: Literal["json", "slack"] = "json"
    events: Annotated[
        list[NotificationEvent],
        Field(min_length=1, max_length=5, json_schema_extra={"x-kubernetes-list-type": "set"}),
    ] = Field(default_factory=lambda: list(NOTIFICATION_EVENTS))

    @model_validator(mode="after")
    def _one_url(self) -> NotificationSpec:
        if (self.url is None) == (self.url_secret_ref is None):
            raise ValueError("a notification has url or urlSecretRef (one of them)")
        return self


# MLflow's rules for an alias: letters, digits, '_' and '-'; never `latest` nor `v<digits>`.
MLFLOW_ALIAS_PATTERN = r"^[A-Za-z0-9_-]{1,255}$"


def _not_a_reserved_alias(alias: str | None) -> str | None:
    if alias is not None and (alias.lower() == "latest" or re.fullmatch(r"[vV][0-9]+", alias)):
        raise ValueError(f"{alias!r} is reserved by MLflow (latest, v<number>): choose another")
    return alias


MlflowAlias = Annotated[
    str,
    Field(
        max_length=255,
        pattern=MLFLOW_ALIAS_PATTERN,
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.lowerAscii() != 'latest' && !self.matches('^[vV][0-9]+$')",
                    "message": "latest and v<number> are reserved by MLflow",
                }
            ]
        },
    ),
    AfterValidator(_not_a_reserved_alias),
]
MLFLOW_STAGES = ("Staging", "Production", "Archived")
DEFAULT_ROLLBACK_TAG = "canaryml.rollback"


class MlflowRegistryRef(_Model):
    """An MLflow tracking server (its model registry): the model servers load `models:/` and
    `runs:/` URIs from it, and the operator writes outcomes back to it."""

    tracking_uri: str = Field(
        max_length=2048,
        pattern=HTTP_URL_PATTERN,
        description="the tracking server's URL (MLFLOW_TRACKING_URI of the model servers; the "
        "operator's REST calls go to it, redirects never followed)",
    )
    token_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="a Secret key holding a bearer token (MLFLOW_TRACKING_TOKEN of the model "
        "servers; the operator sends it as Authorization: Bearer on its write-backs)",
    )


class RegistryPromoteAction(_Model):
    """What a promotion writes on the promoted model's registry version: one of the two."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "has(self.alias) != has(self.stage)",
                    "message": "onPromote sets alias or stage (one of them)",
                }
            ]
        }
    )

    alias: MlflowAlias | None = Field(
        default=None,
        description="point this alias (e.g. champion) at the promoted version",
    )
    stage: Literal["Staging", "Production", "Archived"] | None = Field(
        default=None,
        description="transition the promoted version to this stage (MLflow's stages are "
        "deprecated in favour of aliases)",
    )
    archive_existing_versions: bool = Field(
        default=False, description="with stage: archive the versions already in that stage"
    )

    @model_validator(mode="after")
    def _one_action(self) -> RegistryPromoteAction:
        if (self.alias is None) == (self.stage is None):
            raise ValueError("onPromote sets alias or stage (one of them)")
        return self


class RegistryRollbackAction(_Model):
    """What a rollback writes on the rolled-back model's registry version."""

    tag: str = Field(
        default=DEFAULT_ROLLBACK_TAG,
        min_length=1,
        max_length=250,
        pattern=r"^[A-Za-z0-9_.\-/ ]+$",
        description="the version tag set to the rollback's reason",
    )


class RegistrySpec(_Model):
    """The model registry as the source of truth: outcomes written back to it (opt-in)."""

    mlflow: MlflowRegistryRef
    on_promote: RegistryPromoteAction | None = Field(
        default=None, description="written on the promoted version once a canary is promoted"
    )
    on_rollback: RegistryRollbackAction | None = Field(
        default=None, description="written on the rolled-back version once a rollback is done"
    )


def _unique_webhook_names(hooks: list[WebhookSpec]) -> list[WebhookSpec]:
    names = [hook.name for hook in hooks]
    duplicated = sorted({name for name in names if names.count(name) > 1})
    if duplicated:
        raise ValueError(f"webhook names must be unique, repeated: {', '.join(duplicated)}")
    return hooks


class ModelDeploymentSpec(_Model):
    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.canary) || self.canary.model.uri != self.model.uri"
                    " || self.canary.model.version != self.model.version",
                    "message": "the canary must differ from the stable model (uri or version)",
                },
                {
                    "rule": "!has(self.canary) || !has(self.canary.blueGreen)"
                    " || !has(self.canary.blueGreen.mirror) || !self.canary.blueGreen.mirror"
                    " || !has(self.routing) || !has(self.routing.router)"
                    " || self.routing.router == 'builtin'",
                    "message": "canary.blueGreen.mirror is the builtin router's",
                },
                {
                    "rule": "!has(self.canary) || !has(self.canary.blueGreen)"
                    " || !has(self.canary.experiment)",
                    "message": "canary.blueGreen and canary.experiment are two strategies: set one",
                },
            ]
        }
    )

    model: ModelRef
    canary: CanarySpec | None = None
    shadow: ShadowSpec | None = None
    analysis: AnalysisSpec = Field(default_factory=AnalysisSpec)
    routing: RoutingSpec = Field(default_factory=RoutingSpec)
    serving: ServingSpec = Field(default_factory=ServingSpec)
    paused: bool = False
    allow_unpinned_models: bool = Field(
        default=False,
        description="serve models that have no sha256 (their artifact is not verified before "
        "it is unpickled); without it a track whose model has no sha256 is not created",
    )
    progress_deadline: Duration = Field(
        default=DEFAULT_PROGRESS_DEADLINE,
        description="how long a canary may take to become available (or stay unavailable) "
        "before it is rolled back",
    )
    rollback_window: NonNegativeDuration = Field(
        default=DEFAULT_ROLLBACK_WINDOW,
        description="after a promotion, how long the previous stable keeps its pods while the "
        "promoted canary, grown to the stable's size, takes all traffic: a rollback within it "
        "only switches traffic back (0s: the stable track rolls to the new model at once)",
    )
    webhooks: Annotated[
        list[WebhookSpec],
        Field(max_length=20, json_schema_extra=_list_map(key="name")),
        AfterValidator(_unique_webhook_names),
    ] = Field(default_factory=list, description="lifecycle webhooks (docs/operator.md)")
    notifications: Annotated[list[NotificationSpec], Field(max_length=10)] = Field(
        default_factory=list,
        description="where rollout events are told; none: the operator's default, if any",
    )
    registry: RegistrySpec | None = Field(
        default=None,
        description="the MLflow registry the models come from: its URL and token for the model "
        "servers, and the outcomes (promotion, rollback) the operator writes back to it",
    )

    @model_validator(mode="after")
    def _canary_differs(self) -> ModelDeploymentSpec:
        canary = self.canary
        if canary and (canary.model.uri, canary.model.version) == (
            self.model.uri,
            self.model.version,
        ):
            raise ValueError("the canary must differ from the stable model (uri or version)")
        return self

    @model_validator(mode="after")
    def _blue_green_rules(self) -> ModelDeploymentSpec:
        found = self.canary.blue_green if self.canary else None
        if found is not None and self.canary is not None and self.canary.experiment is not None:
            raise ValueError("canary.blueGreen and canary.experiment are two strategies: set one")
        if found is not None and found.mirror and self.routing.router != "builtin":
            raise ValueError(
                "canary.blueGreen.mirror is the builtin router's; with router "
                f"{self.routing.router!r} the preview is reached through its Service or "
                "canaryMatch only"
            )
        return self


Phase = Literal["Pending", "Progressing", "Paused", "Promoted", "RolledBack", "Failed", "Stable"]


class _StatusModel(BaseModel):
    # Status is written by the operator only; tolerate fields a newer operator added.
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")


class Condition(_StatusModel):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str = Field(max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    message: str = Field(default="", max_length=32768)
    last_transition_time: datetime
    observed_generation: int | None = None


class ModelIdentity(_StatusModel):
    """Which model a track serves: what a rollout compares and a rollback returns to."""

    uri: str
    version: str
    sha256: str | None = None

    @classmethod
    def of(cls, model: ModelRef) -> ModelIdentity:
        return cls(uri=model.uri, version=model.version, sha256=model.sha256)

    def as_ref(self) -> ModelRef:
        return ModelRef(uri=self.uri, version=self.version, sha256=self.sha256)


Verdict = Literal["Successful", "Failed", "Inconclusive", "Error"]


class CheckRecord(_StatusModel):
    """One check of one analysis: its value against its bounds, and what that means."""

    name: str
    verdict: Verdict
    value: float | None = None
    min: float | None = None
    max: float | None = None
    message: str = ""
    # Sequential checks only (analysis.sequential, analysis.baseline): the value's interval
    # (a confidence sequence, valid at every look), the evidence that it is worse than allowed
    # (a rollback at 1 / falseRollbackRate), the requests it rests on since the step began,
    # and roughly how many more a decision needs (None: not foreseeable).
    low: float | None = None
    high: float | None = None
    evidence: float | None = None
    samples: float | None = None
    requests_needed: int | None = None
    # A custom metric with dryRun: true: its verdict is what it would have been; it never
    # fails or holds the analysis.
    dry_run: bool | None = None


class OfflineFigures(_StatusModel):
    """One track's held-out figures, as its servers export them from the model's manifest
    (`canaryml package --evaluate`)."""

    track: str
    version: str
    rows: int = Field(default=0, description="held-out rows; 0: the manifest records none")
    heldout_sha256: str | None = Field(
        default=None, description="sha256 of the held-out data the figures were computed on"
    )
    metrics: dict[str, float] = Field(
        default_factory=dict, description="figure name (accuracy, f1, rmse, ...) -> value"
    )


class AnalysisRecord(_StatusModel):
    time: datetime
    verdict: str
    step: int | None = None
    weight: int | None = None
    error_rate: float | None = None
    latency_p99: float | None = None
    drift: float | None = None
    prediction_drift: float | None = None
    shadow_agreement: float | None = None
    requests: float | None = None
    reasons: list[str] = Field(default_factory=list)
    checks: list[CheckRecord] = Field(default_factory=list)
    offline: Annotated[
        list[OfflineFigures],
        Field(
            max_length=2,
            description="the canary's and the stable track's held-out figures, as scraped at "
            "this analysis (a track not scraped yet is absent)",
            json_schema_extra=_list_map(key="track"),
        ),
    ] = Field(default_factory=list)


class HistoryEntry(_StatusModel):
    version: str
    uri: str
    sha256: str | None = None
    event: Literal["promoted", "rolledBack"]
    time: datetime
    reason: str = ""
    replaced: ModelIdentity | None = Field(
        default=None, description="promoted: the stable model it replaced (rollback target)"
    )


class WebhookRecord(_StatusModel):
    """One webhook's attempts at its current occasion (written by `hooks.record` only)."""

    name: str
    type: str
    occasion: str = Field(description="what it was asked about: canary version and point")
    attempts: int = Field(default=0, ge=0)
    passed: bool = False
    last_result: str = Field(default="", max_length=1024)
    last_attempt_at: datetime | None = None
    next_attempt_at: datetime | None = None
    spec_digest: str = Field(default="", description="of the hook's spec: an edit starts over")


class NotificationRecord(_StatusModel):
    """What the rate limit of notifications needs (written by `notifications.plan` only)."""

    sent: Annotated[list[datetime], Field(max_length=100)] = Field(
        default_factory=list, description="when notifications were sent, within the window"
    )
    dropped: int = Field(default=0, ge=0, description="notifications the rate limit dropped")


ExperimentWinner = Literal["undecided", "canary", "stable", "none"]


class ExperimentRecord(_StatusModel):
    """The A/B experiment of the current canary (spec.canary.experiment): the comparison of
    its metric, canary - stable, on everything since the experiment began."""

    metric: str
    canary_version: str
    started_at: datetime = Field(description="when the canary got its fixed weight")
    winner: ExperimentWinner = Field(
        default="undecided",
        description="canary or stable: the difference's interval excludes 0; none: it lies "
        "within +-minEffect; undecided: not yet. Kept once decided",
    )
    effect: float | None = Field(default=None, description="canary rate - stable rate")
    low: float | None = Field(
        default=None, description="the difference's confidence sequence (valid at every look)"
    )
    high: float | None = None
    canary_samples: float = Field(default=0, ge=0)
    stable_samples: float = Field(default=0, ge=0)
    canary_successes: float = Field(default=0, ge=0)
    stable_successes: float = Field(default=0, ge=0)
    false_winner_rate: float | None = Field(
        default=None, description="the chance of naming a winner between equal tracks"
    )
    decided_at: datetime | None = None
    message: str = Field(default="", max_length=4096)


class RegistryWrite(_StatusModel):
    """One write-back to the model registry (spec.registry; written by `writeback.record`)."""

    event: Literal["promoted", "rolledBack"]
    history_time: datetime = Field(description="the status.history entry it is about")
    uri: str
    action: str = Field(description="alias NAME, stage NAME or tag KEY")
    registry_version: str | None = Field(
        default=None, description="the registry's version number written to"
    )
    done: bool = False
    attempts: int = Field(default=0, ge=0)
    last_result: str = Field(default="", max_length=1024)
    last_attempt_at: datetime | None = None


class ModelDeploymentStatus(_StatusModel):
    phase: Phase | None = None
    canary_weight: int = Field(default=0, ge=0, le=100)
    current_step: int | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    failed_checks: int = Field(default=0, ge=0)
    held_analyses: int = Field(
        default=0, ge=0, description="Inconclusive or Error analyses in a row (weight held)"
    )
    step_started_at: datetime | None = None
    rollback_window_ends_at: datetime | None = Field(
        default=None,
        description="a promotion's rollback window (spec.rollbackWindow): until then the "
        "previous stable keeps its pods and a rollback only switches traffic back",
    )
    stable_model: ModelIdentity | None = Field(
        default=None, description="the model the stable track serves"
    )
    spec_model: ModelIdentity | None = Field(
        default=None, description="spec.model as last seen: a change is a direct stable update"
    )
    canary_model: ModelIdentity | None = Field(
        default=None, description="the canary the current or last rollout is about"
    )
    last_analysis: AnalysisRecord | None = None
    handled_commands: dict[str, str] = Field(
        default_factory=dict,
        description="command annotation -> the value last acted on: the same value again "
        "(a GitOps replay) does nothing",
    )
    history: Annotated[list[HistoryEntry], Field(max_length=20)] = Field(default_factory=list)
    observed_generation: int | None = None
    webhooks: Annotated[
        list[WebhookRecord], Field(max_length=20, json_schema_extra=_list_map(key="name"))
    ] = Field(default_factory=list)
    notifications: NotificationRecord | None = None
    registry_writes: Annotated[list[RegistryWrite], Field(max_length=10)] = Field(
        default_factory=list,
        description="the write-backs to spec.registry: done, or retried at the next turn",
    )
    experiment: ExperimentRecord | None = Field(
        default=None, description="the A/B experiment of spec.canary.experiment"
    )
    conditions: Annotated[
        list[Condition],
        Field(
            max_length=16,
            json_schema_extra=_list_map(key="type"),
        ),
    ] = Field(default_factory=list)


def parse_spec(raw: Any) -> ModelDeploymentSpec:
    """The validated spec, or a ValueError whose message a person can act on."""
    try:
        return ModelDeploymentSpec.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise ValueError(explain(error)) from None


def explain(error: ValidationError) -> str:
    """One line per problem, each naming the field path as it is written in YAML."""
    lines = []
    for problem in error.errors(include_url=False):
        path = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        lines.append(f"spec.{path}: {message}" if path else f"spec: {message}")
    return "; ".join(lines)


def parse_status(raw: Any) -> ModelDeploymentStatus:
    """The status as the operator last wrote it. An unreadable field (a hand edit, an older or
    newer operator) is dropped alone, and an unreadable entry of a list alone: the history, the
    step and the counters it does not touch survive."""
    try:
        return ModelDeploymentStatus.model_validate(raw or {})
    except ValidationError:
        pass
    if not isinstance(raw, Mapping):
        return ModelDeploymentStatus()
    kept: dict[str, Any] = {}
    for name, info in ModelDeploymentStatus.model_fields.items():
        key = info.alias or name
        if key not in raw:
            continue
        value = raw[key]
        if _status_field_ok(key, value):
            kept[key] = value
        elif isinstance(value, list):
            # Entry by entry, the newest kept when the list is over its limit.
            entries = [entry for entry in value if _status_field_ok(key, [entry])]
            while entries and not _status_field_ok(key, entries):
                entries = entries[1:]
            kept[key] = entries
    return ModelDeploymentStatus.model_validate(kept)


def _status_field_ok(key: str, value: Any) -> bool:
    try:
        ModelDeploymentStatus.model_validate({key: value})
    except ValidationError:
        return False
    return True


# --- Reusable analysis: AnalysisTemplate, ClusterAnalysisTemplate ------------------------------
# Shared custom metrics (Flagger's MetricTemplate, Argo Rollouts' (Cluster)AnalysisTemplate),
# referenced from a ModelDeployment's analysis.templates; docs/operator.md, "Reusable analysis:
# templates". `{{args.NAME}}` in a query is replaced by the arg's value (the reference's, else
# the template's default) when the operator resolves the template, at each analysis.
TEMPLATE_KIND = "AnalysisTemplate"
TEMPLATE_PLURAL = "analysistemplates"
TEMPLATE_SINGULAR = "analysistemplate"
CLUSTER_TEMPLATE_KIND = "ClusterAnalysisTemplate"
CLUSTER_TEMPLATE_PLURAL = "clusteranalysistemplates"
CLUSTER_TEMPLATE_SINGULAR = "clusteranalysistemplate"
# `{{args.NAME}}`, spaces allowed inside the braces.
ARG_PLACEHOLDER = re.compile(r"\{\{\s*args\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


class TemplateArg(_Model):
    """An argument a template declares; without a value, every reference must give one."""

    name: str = Field(max_length=63, pattern=ARG_NAME_PATTERN)
    value: str | None = Field(
        default=None, max_length=MAX_ARG_VALUE_LENGTH, description="the default value"
    )


class AnalysisTemplateSpec(_Model):
    """The custom metrics a template lends to the ModelDeployments that name it."""

    args: Annotated[
        list[TemplateArg],
        Field(max_length=MAX_TEMPLATE_ARGS, json_schema_extra=_list_map(key="name")),
        AfterValidator(_unique_arg_names),
    ] = Field(
        default_factory=list,
        description="arguments used in the queries as {{args.NAME}}",
    )
    metrics: Annotated[
        list[CustomMetric],
        Field(min_length=1, max_length=20, json_schema_extra=_list_map(key="name")),
    ] = Field(description="custom metrics, as a ModelDeployment's analysis.metrics")

    @model_validator(mode="after")
    def _consistent(self) -> AnalysisTemplateSpec:
        names = [metric.name for metric in self.metrics]
        reserved = sorted(set(names) & set(RESERVED_METRIC_NAMES))
        if reserved:
            raise ValueError(f"metrics names {', '.join(reserved)} are taken by built-in checks")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"metrics names must be unique: {', '.join(duplicates)}")
        declared = {arg.name for arg in self.args}
        for metric in self.metrics:
            undeclared = sorted(set(ARG_PLACEHOLDER.findall(metric.query)) - declared)
            if undeclared:
                raise ValueError(
                    f"metric {metric.name!r} uses args not declared in args: "
                    + ", ".join(undeclared)
                )
        return self


def parse_template_spec(raw: Any) -> AnalysisTemplateSpec:
    """A template's validated spec, or a ValueError naming the field as written in YAML."""
    try:
        return AnalysisTemplateSpec.model_validate(raw if raw is not None else {})
    except ValidationError as error:
        raise ValueError(explain(error)) from None
