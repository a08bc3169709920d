"""The demo's scenarios and its example ModelDeployment: pure data, no I/O.

A scenario says what goes wrong in the rollout, and how:

- good: nothing; the canary is promoted.
- errors: the canary server answers 20 % of predictions with HTTP 500 (CANARYML_INJECT_ERRORS).
- latency: 10 % of the canary's predictions take 0.4 s longer (CANARYML_INJECT_LATENCY).
- drift: requests that the router sends to the canary carry a feature far outside its training
  range (the traffic generator knows which ones: it routes by the sticky header itself).
- shadow-disagree: a bad shadow and a good canary: the shadow is the bundled `bad` model, so
  the good canary's answers disagree with it (the router compares every canary answer with the
  shadow's answer to the same request), and the shadow agreement check rolls the good canary
  back. The policy trusts the shadow: a wrong reference fails a good model.
- accuracy: the canary is the bundled `worse` model (example_models): no errors, no slower, no
  input drift, the same shares of predicted classes, but wrong on a slice of the data. The
  demo's traffic sends each row's true label back (POST /v2/models/{name}/feedback, through
  the router) a second after its answer, and the accuracy checks roll the canary back. The
  shadow runs the same model, so that the shadow agreement has nothing to say.
- approval: the good canary with spec.canary.approval.required: it passes every step, then
  holds at the last one until its promotion is approved (demo.approval: the annotation added
  to the run's ModelDeployment file, or the demo's own approval after --approve-after
  seconds), and is promoted.

The example spec is the rollout policy the demo uses without `--spec`: short intervals, the
sequential checks against the stable track (analysis.sequential, analysis.baseline) and the
calibrated drift gate (thresholds.driftSignificance), and the accuracy checks on the labels
the traffic sends back (thresholds.minAccuracy, baseline.maxAccuracyDrop). A bad canary is
rolled back within seconds; a good one is promoted once each step has shown, with evidence,
that its slow requests stay under 1 % (the p99 bound) and its accuracy over 90 %: a few
hundred canary requests per step.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

from canaryml_api import resource as api

Scenario = Literal["good", "errors", "latency", "drift", "shadow-disagree", "accuracy", "approval"]
SCENARIOS: Final[tuple[str, ...]] = get_args(Scenario)
DEFAULT_SCENARIO: Final = "good"

NAME: Final = "breast-cancer"
# The bundled example models (demo.example_models) and the version each is packaged as.
VERSIONS: Final[Mapping[str, str]] = {
    "stable": "1.0.0",
    "canary": "1.1.0",
    "bad": "1.2.0",
    "worse": "1.3.0",
}
ROLES: Final[tuple[str, ...]] = tuple(VERSIONS)
SPEC_FILE: Final = "modeldeployment.yaml"  # the example's ModelDeployment, as the demo keeps it
NAMESPACE: Final = "demo"  # the label a cluster's Prometheus adds; the demo's adds it too
STICKY_HEADER: Final = "x-canaryml-demo-user"
# The drift scenario moves this feature of the bundled data (its first column) out of range.
DRIFT_FEATURE: Final = "mean radius"

# The traffic sends each answered row's true label this long after its answer; the spec's
# analysis.labels.delay allows for it.
LABEL_DELAY_S: Final = 1.0
LABEL_DELAY: Final = "2s"

# The model servers' drift window: a few hundred rows, and no number before 100 of them
# (the worst of 30 features' PSI over fewer rows is mostly noise).
SERVER_ENV: Final[Mapping[str, str]] = {
    "CANARYML_DRIFT_WINDOW": "300",
    "CANARYML_DRIFT_MIN_ROWS": "100",
}


@dataclass(frozen=True)
class ScenarioPlan:
    """How a scenario changes the run."""

    description: str
    canary_env: Mapping[str, str] = field(default_factory=dict)  # fault injection
    shift_canary_inputs: bool = False  # drift: move one feature of canary-bound requests
    canary_role: str = "canary"  # which bundled model the canary runs
    label_delay_s: float = LABEL_DELAY_S  # from an answer to its label sent back
    shadow_role: str = "canary"  # which bundled model the shadow runs
    approval: bool = False  # spec.canary.approval.required: the promotion awaits approval

    @property
    def swaps_models(self) -> bool:
        """The scenario runs other bundled models than the example's canary (a user's spec
        names its own)."""
        return self.canary_role != "canary" or self.shadow_role != "canary"

    @property
    def fault_outside_spec(self) -> bool:
        """The fault is the demo's doing (injected or sent), not the ModelDeployment's: a run
        of the spec needs the scenario again to reproduce it."""
        return bool(self.canary_env) or self.shift_canary_inputs


PLANS: Final[Mapping[str, ScenarioPlan]] = {
    "good": ScenarioPlan("a healthy canary: promoted"),
    "errors": ScenarioPlan(
        "the canary fails 20 % of its predictions with HTTP 500: rolled back",
        canary_env={"CANARYML_INJECT_ERRORS": "0.2"},
    ),
    "latency": ScenarioPlan(
        "10 % of the canary's predictions take 0.4 s longer: rolled back",
        canary_env={"CANARYML_INJECT_LATENCY": "0.4", "CANARYML_INJECT_LATENCY_FRACTION": "0.1"},
    ),
    "drift": ScenarioPlan(
        "the canary's inputs drift, one feature far outside its training range: rolled back",
        shift_canary_inputs=True,
        # The labels come late, as they do in life: the inputs tell first (what watching
        # drift is for), and the accuracy checks are the second line.
        label_delay_s=20.0,
    ),
    "shadow-disagree": ScenarioPlan(
        "a bad shadow (the bundled bad model) and a good canary that disagrees with it: "
        "the canary is rolled back",
        shadow_role="bad",
    ),
    "accuracy": ScenarioPlan(
        "the canary (the bundled worse model) is wrong on a slice of the data, and nothing "
        "but the labels sent back shows it: rolled back on accuracy",
        canary_role="worse",
        shadow_role="worse",
    ),
    "approval": ScenarioPlan(
        "a healthy canary that waits at its last step for its promotion to be approved "
        "(spec.canary.approval): promoted once approved",
        approval=True,
    ),
}


def example_spec(
    *, models: Mapping[str, Path], digests: Mapping[str, str], scenario: str
) -> dict[str, Any]:
    """The example ModelDeployment (a whole manifest) over the bundled models' folders."""
    plan = PLANS[scenario]

    def ref(role: str) -> dict[str, Any]:
        return {
            "uri": models[role].resolve().as_uri(),
            "version": VERSIONS[role],
            "sha256": digests[role],
        }

    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": ref("stable"),
            "canary": {
                "model": ref(plan.canary_role),
                "steps": [10, 25, 50],
                "stepInterval": "10s",
                **({"approval": {"required": True}} if plan.approval else {}),
            },
            "shadow": {"model": ref(plan.shadow_role), "percent": 100, "probabilityTolerance": 0.3},
            "analysis": {
                "prometheus": {"url": "http://127.0.0.1:9090", "timeout": "2s"},
                "interval": "2s",
                "window": "10s",
                "minRequests": 20,
                "failureLimit": 2,
                # Errors and slow requests judged on every request since the step began, the
                # canary against its bounds and against the stable track on the same traffic.
                "sequential": {"falseRollbackRate": 0.01, "falsePromotionRate": 0.01},
                "baseline": {
                    "maxErrorRateRatio": 2,
                    "maxErrorRateIncrease": 0.02,
                    "maxSlowRatio": 2,
                    "maxSlowIncrease": 0.02,
                    # Labels sent back: at most 10 points less accurate than stable.
                    "maxAccuracyDrop": 0.1,
                },
                "labels": {"minLabels": 100, "delay": LABEL_DELAY},
                "thresholds": {
                    "maxErrorRate": 0.05,
                    "maxLatencyP99": "200ms",
                    # The calibrated drift gate: a false alarm in 1 of 1,000 analyses.
                    "driftSignificance": 0.001,
                    "minShadowAgreement": 0.85,
                    "minAccuracy": 0.9,
                },
            },
            "routing": {"router": "builtin", "stickyHeader": STICKY_HEADER},
            "serving": {"replicas": 1},
        },
    }
