"""The demo's scenarios and its example ModelDeployment: pure data, no I/O.

A scenario says what goes wrong with the canary, and how:

- good: nothing; the canary should be promoted.
- errors: the canary server answers 20 % of predictions with HTTP 500 (CANARYML_INJECT_ERRORS).
- latency: 10 % of the canary's predictions take 0.4 s longer (CANARYML_INJECT_LATENCY).
- drift: requests that the router sends to the canary carry a feature far outside its training
  range (the traffic generator knows which ones: it routes by the sticky header itself).
- shadow-disagree: the shadow is the bundled `bad` model: the canary's answers disagree with
  the shadow's (the router compares every canary answer with the shadow's answer to the same
  request).

The example spec is the rollout policy the demo uses without `--spec`: short intervals, so that
a good canary is promoted in about a minute and a bad one rolled back within seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, get_args

Scenario = Literal["good", "errors", "latency", "drift", "shadow-disagree"]
SCENARIOS: Final[tuple[str, ...]] = get_args(Scenario)

NAME: Final = "breast-cancer"
NAMESPACE: Final = "demo"  # the label a cluster's Prometheus adds; the demo's adds it too
STICKY_HEADER: Final = "x-canaryml-demo-user"
# The drift scenario moves this feature of the bundled data (its first column) out of range.
DRIFT_FEATURE: Final = "mean radius"

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
    shadow_role: str = "canary"  # which bundled model the shadow runs


PLANS: Final[Mapping[str, ScenarioPlan]] = {
    "good": ScenarioPlan("a healthy canary: it should be promoted"),
    "errors": ScenarioPlan(
        "the canary fails 20 % of its predictions with HTTP 500",
        canary_env={"CANARYML_INJECT_ERRORS": "0.2"},
    ),
    "latency": ScenarioPlan(
        "10 % of the canary's predictions take 0.4 s longer",
        canary_env={"CANARYML_INJECT_LATENCY": "0.4", "CANARYML_INJECT_LATENCY_FRACTION": "0.1"},
    ),
    "drift": ScenarioPlan(
        "the canary's inputs drift: one feature far outside its training range",
        shift_canary_inputs=True,
    ),
    "shadow-disagree": ScenarioPlan(
        "the canary's answers disagree with the shadow's (the bundled bad model)",
        shadow_role="bad",
    ),
}


def example_spec(
    *, models: Mapping[str, Path], digests: Mapping[str, str], scenario: str
) -> dict[str, Any]:
    """The example ModelDeployment (a whole manifest) over the bundled models' folders."""
    shadow = PLANS[scenario].shadow_role

    def ref(role: str) -> dict[str, Any]:
        version = {"stable": "1.0.0", "canary": "1.1.0", "bad": "1.2.0"}[role]
        return {
            "uri": models[role].resolve().as_uri(),
            "version": version,
            "sha256": digests[role],
        }

    return {
        "apiVersion": "canaryml.dev/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "spec": {
            "model": ref("stable"),
            "canary": {"model": ref("canary"), "steps": [10, 25, 50], "stepInterval": "10s"},
            "shadow": {"model": ref(shadow), "percent": 100, "probabilityTolerance": 0.3},
            "analysis": {
                "prometheus": {"url": "http://127.0.0.1:9090", "timeout": "2s"},
                "interval": "2s",
                "window": "10s",
                "minRequests": 20,
                "failureLimit": 2,
                "thresholds": {
                    "maxErrorRate": 0.05,
                    "maxLatencyP99": "200ms",
                    "maxDrift": 2.0,
                    "maxPredictionDrift": 0.5,
                    "minShadowAgreement": 0.85,
                },
            },
            "routing": {"router": "builtin", "stickyHeader": STICKY_HEADER},
            "serving": {"replicas": 1},
        },
    }
