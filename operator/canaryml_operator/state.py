"""The operator core's shared vocabulary: what the rollout core, the child builders and the
reconciler all speak of, below all three.

The owner of the children, what a live Deployment says of its rollout, the track plan the
rollout core hands to the child builders, Events, and how a status condition is set. Pure data
and functions, no I/O (docs/architecture.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from canaryml_api import resource as api

EventType = Literal["Normal", "Warning"]
ConditionStatus = Literal["True", "False", "Unknown"]

# Annotations of a track's Deployment that say which model it runs.
ANNOTATION_MODEL_VERSION = "canaryml.dev/model-version"  # exact; the version label is sanitised
ANNOTATION_MODEL = "canaryml.dev/model"  # uri@version#sha256: which artifact exactly
VERSION_LABEL = "app.kubernetes.io/version"


@dataclass(frozen=True)
class Owner:
    """What the children need to know of the ModelDeployment that owns them."""

    name: str
    namespace: str
    uid: str


def parse_owner(body: Mapping[str, Any]) -> Owner:
    meta = body.get("metadata", {})
    return Owner(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta["uid"])


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class TrackPlan:
    """How the model tracks run, as the rollout state says (see `rollout.plan_tracks`)."""

    stable_model: api.ModelRef
    canary_replicas: int | None  # None: no canary track at all
    canary_weight: int = 0  # the routing plan's (canaryml_api.routing.plan_routing)
    # The routing plan's too: the canary's rollout runs, so A/B segments reach it (HTTPRoute).
    canary_serving: bool = False
    # The share of the stable's autoscaling bounds the canary's autoscaler gets, in percent;
    # None: its weight. 100 while a promotion with a rollback window grows it to full size.
    canary_scale: int | None = None


def model_reference(*, uri: str, version: str, sha256: str | None) -> str:
    """One string naming an artifact exactly: two models of one version differ by it."""
    return f"{uri}@{version}" + (f"#{sha256}" if sha256 else "")


@dataclass(frozen=True)
class DeploymentState:
    """What a live Deployment says of its rollout (what kstatus reads for Deployments)."""

    exists: bool = False
    desired: int = 0
    available: int = 0
    updated: int = 0
    current: bool = False  # the controller has seen the latest spec
    version: str | None = None
    model: str | None = None  # model_reference of the artifact it runs, when known

    def serves(self, *, uri: str, version: str, sha256: str | None) -> bool:
        """Whether it has rolled out with exactly this artifact (by version alone for a
        Deployment written before the operator recorded the whole reference)."""
        if not self.rolled_out:
            return False
        if self.model is not None:
            return self.model == model_reference(uri=uri, version=version, sha256=sha256)
        return self.version == version

    @property
    def rolled_out(self) -> bool:
        return (
            self.exists
            and self.current
            and self.updated >= self.desired
            and self.available >= self.desired
        )

    @classmethod
    def of(cls, live: Mapping[str, Any] | None) -> DeploymentState:
        if live is None:
            return cls()
        meta, spec, status = live.get("metadata", {}), live.get("spec", {}), live.get("status", {})
        annotations = meta.get("annotations") or {}
        return cls(
            exists=True,
            desired=int(spec.get("replicas", 1)),
            available=int(status.get("availableReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            current=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
            version=annotations.get(ANNOTATION_MODEL_VERSION)
            or (meta.get("labels") or {}).get(VERSION_LABEL),
            model=annotations.get(ANNOTATION_MODEL),
        )


# Stalled before Reconciling: kstatus (Flux, Argo CD) reads the first of them that is True.
_CONDITION_ORDER = {
    "Ready": 0,
    "Progressing": 1,
    "Degraded": 2,
    "RolledBack": 3,
    "Stalled": 4,
    "Reconciling": 5,
}


def set_condition(
    conditions: Sequence[api.Condition],
    *,
    type: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    generation: int | None,
    now: datetime,
) -> list[api.Condition]:
    """The conditions with one set; lastTransitionTime moves only when the status flips."""
    previous = next((c for c in conditions if c.type == type), None)
    since = previous.last_transition_time if previous and previous.status == status else now
    updated = api.Condition(
        type=type,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=since,
        observed_generation=generation,
    )
    others = [c for c in conditions if c.type != type]
    # A fixed order (the others by name), whatever order they were set in: a reconcile that
    # sets them in another order must not rewrite an unchanged status.
    return sorted([*others, updated], key=lambda c: (_CONDITION_ORDER.get(c.type, 99), c.type))


def condition(status: api.ModelDeploymentStatus, type: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type), None)


ROLLOUT_PHASES: frozenset[api.Phase] = frozenset(
    {"Progressing", "Paused", "Promoted", "RolledBack"}
)


def rollout_phase(status: api.ModelDeploymentStatus) -> api.Phase:
    """The phase of the rollout of the status's canary (`status.canaryModel`): what the rollout
    core goes on from, and what the resource shows while it has a canary.

    The status's phase when it is a rollout's; while the spec was invalid (Failed) or before
    the stable model first served (Pending), the models and the history say where it is.
    """
    if status.phase in ROLLOUT_PHASES:
        return status.phase
    canary = status.canary_model
    if canary is None:
        return "Progressing"
    if status.stable_model == canary:
        return "Promoted"
    last = status.history[-1] if status.history else None
    if (
        last is not None
        and last.event == "rolledBack"
        and (last.uri, last.version) == (canary.uri, canary.version)
    ):
        return "RolledBack"
    return "Progressing"


# The manual approval gate (spec.canary.approval.required): condition Approved, False with
# reason AwaitingApproval while the canary, every step passed, waits for `canaryml promote`.
# `rollout.decide` writes it; the reconciler (Reconciling), `canaryml status` and the Argo CD
# health check (Suspended) read it.
APPROVED = "Approved"
AWAITING_APPROVAL = "AwaitingApproval"


def awaiting_approval(status: api.ModelDeploymentStatus) -> api.Condition | None:
    """The Approved condition while a person's approval of the promotion is awaited (its
    lastTransitionTime: since when), else None."""
    found = condition(status, APPROVED)
    if found is None or found.status != "False" or found.reason != AWAITING_APPROVAL:
        return None
    if status.phase not in ("Progressing", "Paused"):
        return None
    return found


# A promotion with a rollback window (spec.rollbackWindow): the Progressing reasons while the
# stable Deployment keeps the model the promotion replaced. `rollout.decide` writes them; the
# reconciler reads them (a canary growing is a rollout in progress).
SCALING_UP_CANARY = "ScalingUpCanary"  # promoted: the canary grows to the stable's size
ROLLBACK_WINDOW = "RollbackWindow"  # the canary takes all traffic; the previous stable waits


def keeps_previous_stable(status: api.ModelDeploymentStatus) -> bool:
    """Whether a promotion's rollback window holds the stable Deployment on the model the
    promotion replaced (the canary growing to full size, then taking all traffic)."""
    found = condition(status, "Progressing")
    return (
        status.phase == "Promoted"
        and found is not None
        and found.status == "True"
        and found.reason in (SCALING_UP_CANARY, ROLLBACK_WINDOW)
    )


# The rollout's strategy (spec.canary.blueGreen): the rollout core and the webhook planner both
# count steps and time them the same way.


def blue_green(spec: api.ModelDeploymentSpec) -> bool:
    """Whether the canary rolls out blue-green: a preview at weight 0, then 100% at once."""
    return spec.canary is not None and spec.canary.blue_green is not None


def step_weights(spec: api.ModelDeploymentSpec) -> list[int]:
    """The canary's weight at each step: spec.canary.steps, blue-green's one preview step at 0
    (the switch to 100% is the promotion), or an A/B experiment's one fixed weight."""
    assert spec.canary is not None
    if spec.canary.experiment is not None:
        return [spec.canary.experiment.weight]  # an A/B experiment: one fixed weight
    return [0] if blue_green(spec) else list(spec.canary.steps)


def step_seconds(spec: api.ModelDeploymentSpec) -> float:
    """How long each step must pass: spec.canary.stepInterval, or blue-green's
    analysisSteps x analysis.interval for the preview."""
    assert spec.canary is not None
    found = spec.canary.blue_green
    if found is not None:
        return found.analysis_steps * api.parse_duration(spec.analysis.interval)
    return api.parse_duration(spec.canary.step_interval)
