"""The reconciliation core: from what should exist and what does, what to do and what to report.

Pure functions of (spec, status, live children, generation, now). The operator's handlers
(`main`, through `loop`) gather those inputs and apply the results; nothing here does I/O.

The status has one writer per field (docs/architecture.md): the rollout core (`rollout.decide`)
writes the rollout state; `observe` writes what the children say (Ready, Reconciling, Degraded,
the stable version, the observed generation) and what an invalid spec stops; `phase_of`
derives the phase from both; `build_status` puts the three together.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from canaryml_api import resource as api
from canaryml_api.tracks import Track

from canaryml_operator import children, writeback
from canaryml_operator.children import ChildKey, Manifest
from canaryml_operator.state import (
    AWAITING_APPROVAL,
    SCALING_UP_CANARY,
    DeploymentState,
    Event,
    Owner,
    awaiting_approval,
    condition,
    rollout_phase,
    set_condition,
)

Verb = Literal["create", "patch", "delete"]


@dataclass(frozen=True)
class Action:
    verb: Verb
    key: ChildKey
    manifest: Manifest
    reason: str  # the Event reason: Created, Updated, Restored, Deleted
    message: str


@dataclass(frozen=True)
class Plan:
    actions: list[Action] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.actions)


def owned_by(live: Mapping[str, Any], owner: Owner) -> bool:
    refs = live.get("metadata", {}).get("ownerReferences") or []
    return any(ref.get("uid") == owner.uid and ref.get("controller") for ref in refs)


def plan_children(
    *,
    desired: Sequence[Manifest],
    live: Sequence[Mapping[str, Any]],
    owner: Owner,
    reconciled_before: bool,
) -> Plan:
    """Create what is missing, patch what drifted, delete what the spec no longer names.

    `reconciled_before` says the operator already brought this generation into shape, so a
    missing child was deleted by hand and is being restored, not created for the first time.
    """
    live_by_key = {ChildKey.of(obj): obj for obj in live if owned_by(obj, owner)}
    actions: list[Action] = []
    for manifest in desired:
        key = ChildKey.of(manifest)
        current = live_by_key.pop(key, None)
        if current is None:
            reason = "Restored" if reconciled_before else "Created"
            verb_text = "restored after it was deleted" if reconciled_before else "created"
            actions.append(
                Action("create", key, manifest, reason, f"{key.kind} {key.name} {verb_text}")
            )
        elif not children.is_current(live=current, desired=manifest):
            same_spec = _hash(current) == _hash(manifest)
            reason, text = (
                ("Restored", "put back after a hand edit")
                if same_spec
                else ("Updated", "updated to the new spec")
            )
            patch = children.build_patch(live=current, desired=manifest)
            actions.append(Action("patch", key, patch, reason, f"{key.kind} {key.name} {text}"))
    for key, obj in sorted(live_by_key.items(), key=lambda item: (item[0].kind, item[0].name)):
        track = obj.get("metadata", {}).get("labels", {}).get(children.LABEL_TRACK, "")
        why = f"the {track} track was removed from the spec" if track else "no longer in the spec"
        if key.kind == "HorizontalPodAutoscaler" and any(
            ChildKey("Deployment", key.name) == ChildKey.of(m) for m in desired
        ):
            why = "its Deployment's replicas are no longer autoscaled"
        actions.append(
            Action("delete", key, dict(obj), "Deleted", f"{key.kind} {key.name} deleted: {why}")
        )
    return Plan(actions)


def _hash(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("metadata", {}).get("annotations", {}).get(children.ANNOTATION_SPEC_HASH)
    return value if isinstance(value, str) else None


def _rolling_stable(stable: DeploymentState, stable_version: str | None) -> bool:
    """The stable model is rolling to a new version (it served one before)."""
    return stable.exists and not stable.rolled_out and stable_version is not None


def phase_of(
    *,
    spec: api.ModelDeploymentSpec | None,
    invalid: str | None,
    rollout: api.ModelDeploymentStatus,
    stable: DeploymentState,
    stable_version: str | None,
) -> api.Phase:
    """The one phase of the resource, from the rollout state and the observed state.

    Failed while the spec is invalid; Pending until the stable model first served; then, with
    a canary, the rollout's phase (`state.rollout_phase`), and without one, Progressing while
    the stable model rolls to a new version, else Stable.
    """
    if invalid is not None or spec is None:
        return "Failed"
    if stable_version is None:
        return "Pending"
    if spec.canary is None:
        return "Progressing" if _rolling_stable(stable, stable_version) else "Stable"
    return rollout_phase(rollout)


def build_status(
    *,
    spec: api.ModelDeploymentSpec | None,
    invalid: str | None,
    previous: api.ModelDeploymentStatus,
    tracks: Mapping[Track, DeploymentState],
    generation: int | None,
    now: datetime,
    invalid_reason: str = "InvalidSpec",
) -> api.ModelDeploymentStatus:
    """The status the resource shows: `previous` (the rollout core's status) with the observed
    state of the children, kstatus-style, and the phase derived from both (`phase_of`).

    Ready: the stable Deployment has rolled out and its replicas are available.
    Reconciling: the operator is still bringing the model Deployments into shape.
    Degraded (and kstatus' Stalled, reason InvalidSpec): the spec cannot be served as written;
    then Progressing says nothing progresses. Without a canary, Progressing says whether the
    stable model rolls out; with one, it is the rollout core's.
    """
    stable = tracks.get("stable", DeploymentState())
    conditions = list(previous.conditions)

    def put(kind: str, ok: bool, reason: str, message: str) -> None:
        nonlocal conditions
        conditions = set_condition(
            conditions,
            type=kind,
            status="True" if ok else "False",
            reason=reason,
            message=message,
            generation=generation,
            now=now,
        )

    replicas = f"{stable.available}/{stable.desired} replicas available"
    stable_version = previous.stable_version
    if stable.rolled_out and stable.desired == 0:
        # Scaled to zero on purpose: nothing to wait for (kstatus Current, Argo CD Suspended),
        # but nothing serves either, so not Ready.
        stable_version = stable.version or stable_version
        message = f"serving.replicas is 0: stable model {stable_version} has no pods to serve"
        put("Ready", False, SCALED_TO_ZERO, message)
    elif stable.rolled_out:
        stable_version = stable.version or stable_version
        put("Ready", True, "StableAvailable", f"stable model {stable_version}: {replicas}")
    elif not stable.exists:
        put("Ready", False, "StableMissing", "the stable Deployment does not exist yet")
    else:
        put("Ready", False, "StableNotAvailable", f"stable model {stable.version}: {replicas}")
    observed = {"stable_version": stable_version, "observed_generation": generation}

    if invalid is not None or spec is None:
        message = invalid or "the spec is missing"
        put("Degraded", True, invalid_reason, message)
        put("Stalled", True, invalid_reason, message)
        put("Reconciling", False, invalid_reason, "waiting for a corrected spec")
        put("Progressing", False, invalid_reason, "nothing changes until the spec is corrected")
        phase = phase_of(
            spec=spec, invalid=message, rollout=previous, stable=stable, stable_version=None
        )
        return previous.model_copy(update={**observed, "phase": phase, "conditions": conditions})

    put("Degraded", False, "AsExpected", "the spec is valid and its children are in place")
    stalled = condition(previous, "Stalled")
    phase = phase_of(
        spec=spec, invalid=invalid, rollout=previous, stable=stable, stable_version=stable_version
    )
    if spec.canary is not None and phase == "RolledBack":
        # kstatus Failed: the spec's canary will not be served until the spec changes.
        rolled_back = condition(previous, "RolledBack")
        put("Stalled", True, "RolledBack", rolled_back.message if rolled_back else "rolled back")
    elif stalled is None or stalled.reason in (
        "InvalidSpec",
        children.UNPINNED_MODEL,
        writeback.MODEL_NOT_IN_REGISTRY,
        CHILD_CONFLICT,
        "RolledBack",
    ):
        put("Stalled", False, "AsExpected", "")
    if spec.canary is None:
        if _rolling_stable(stable, stable_version):
            message = f"stable model rolling out to {stable.version}: {replicas}"
            put("Progressing", True, "StableRollingOut", message)
        else:
            put("Progressing", False, "NoCanary", "no canary in the spec")
    canary = tracks.get("canary", DeploymentState())
    settled = stable.rolled_out and (canary.rolled_out or not canary.exists)
    progressing = next((c for c in conditions if c.type == "Progressing"), None)
    stalled_now = next((c for c in conditions if c.type == "Stalled" and c.status == "True"), None)
    if not settled:
        put("Reconciling", True, "RollingOut", "waiting for the model Deployments to roll out")
    elif stalled_now is not None:
        # kstatus: Stalled, not in progress (Flux fails instead of waiting for its timeout).
        put("Reconciling", False, "Stalled", f"{stalled_now.reason}: see the Stalled condition")
    elif spec.canary is not None and phase == "Progressing" and awaiting_approval(previous):
        # As a pause: nothing moves until a person approves (kstatus Current, Argo CD
        # Suspended); the analyses go on.
        approval = awaiting_approval(previous)
        put("Reconciling", False, AWAITING_APPROVAL, approval.message if approval else "")
    elif spec.canary is not None and (
        phase == "Progressing"
        or (
            phase == "Promoted"
            and (_holds(progressing, "Promoting") or _holds(progressing, SCALING_UP_CANARY))
        )
    ):
        # A rollout in flight is not Current for kstatus (Flux waits for it).
        message = progressing.message if progressing else "rollout in progress"
        put("Reconciling", True, "RolloutInProgress", message)
    elif phase == "Paused":
        put("Reconciling", False, "Paused", "the rollout is paused: nothing changes until resumed")
    else:
        put("Reconciling", False, "AsExpected", "")
    return previous.model_copy(update={**observed, "phase": phase, "conditions": conditions})


def _holds(found: api.Condition | None, reason: str) -> bool:
    return found is not None and found.status == "True" and found.reason == reason


SCALED_TO_ZERO = "ScaledToZero"
CHILD_CONFLICT = "ChildConflict"


def foreign_owner(live: Mapping[str, Any]) -> str:
    """Whom an object that is not this resource's belongs to, as `kubectl get` would name it."""
    meta = live.get("metadata") or {}
    refs = meta.get("ownerReferences") or []
    ref = next((r for r in refs if r.get("controller")), refs[0] if refs else None)
    if ref is not None:
        return f"{ref.get('kind', '?')} {ref.get('name', '?')}"
    owner = (meta.get("labels") or {}).get(children.LABEL_MODEL_DEPLOYMENT)
    if owner:
        return f"ModelDeployment {owner} (by its label; it has no owner reference)"
    return "no ModelDeployment (created by someone else)"


def claimants(name: str) -> list[str]:
    """The ModelDeployments that could want a child named `name`: children are named after
    their owner, alone or with a suffix (`a-stable` for `a`, or `a-stable` itself)."""
    parts = name.split("-")
    return ["-".join(parts[:end]) for end in range(len(parts), 0, -1)]


def in_conflict(status: api.ModelDeploymentStatus) -> bool:
    degraded = condition(status, "Degraded")
    return degraded is not None and degraded.status == "True" and degraded.reason == CHILD_CONFLICT


def conflict_message(key: ChildKey, live: Mapping[str, Any]) -> str:
    return f"{key.kind} {key.name} already exists and belongs to {foreign_owner(live)}"


def with_conflicts(
    status: api.ModelDeploymentStatus,
    *,
    previous: api.ModelDeploymentStatus,
    conflicts: Sequence[str],
    generation: int | None,
    now: datetime,
) -> api.ModelDeploymentStatus:
    """The status when children it needs exist but belong to someone else (two resources whose
    child names collide, such as `a`'s stable Service and `a-stable`'s endpoint): never
    overwritten, so this one is Degraded, not Ready, and Stalled (a person must rename one),
    naming each object. The other resource keeps working."""
    if not conflicts:
        return status
    message = (
        "; ".join(conflicts)
        + ": not overwritten; rename this ModelDeployment or remove the other object"
    )
    # Set over the conditions as they were before this turn: while the conflict lasts, their
    # lastTransitionTime stays put (build_status has just said the opposite).
    kinds = ("Degraded", "Stalled", "Ready", "Reconciling")
    conditions = [c for c in status.conditions if c.type not in kinds]
    conditions += [c for c in previous.conditions if c.type in kinds]
    conflict: tuple[tuple[str, Literal["True", "False"]], ...] = (
        ("Degraded", "True"),
        ("Stalled", "True"),
        ("Ready", "False"),
        ("Reconciling", "False"),
    )
    for kind, value in conflict:
        conditions = set_condition(
            conditions,
            type=kind,
            status=value,
            reason=CHILD_CONFLICT,
            message=message,
            generation=generation,
            now=now,
        )
    return status.model_copy(update={"conditions": conditions})


def build_events(
    *, previous: api.ModelDeploymentStatus, status: api.ModelDeploymentStatus, plan: Plan
) -> list[Event]:
    """The Events a person watching `kubectl describe` needs: one per kind of change (all the
    children created, restored... at once, in one message), none per no-op."""
    by_reason: dict[str, list[str]] = {}
    for action in plan.actions:
        by_reason.setdefault(action.reason, []).append(action.message)
    events = [
        Event("Warning" if reason == "Restored" else "Normal", reason, "; ".join(messages))
        for reason, messages in by_reason.items()
    ]
    before, after = condition(previous, "Degraded"), condition(status, "Degraded")
    if (
        after
        and after.status == "True"
        and (before is None or before.status != "True" or before.message != after.message)
    ):
        events.append(Event("Warning", after.reason, after.message))
    elif after and after.status == "False" and before and before.status == "True":
        events.append(Event("Normal", "SpecValid", "the spec is valid again"))
    ready_before, ready_after = condition(previous, "Ready"), condition(status, "Ready")
    if (
        ready_after
        and ready_after.status == "True"
        and (ready_before is None or ready_before.status != "True")
    ):
        events.append(Event("Normal", "Ready", ready_after.message))
    elif (
        ready_after
        and ready_after.status == "False"
        and ready_before
        and (ready_before.status == "True")
    ):
        if ready_after.reason == SCALED_TO_ZERO:  # on purpose, not a failure
            events.append(Event("Normal", SCALED_TO_ZERO, ready_after.message))
        else:
            events.append(Event("Warning", "NotReady", ready_after.message))
    return events


def status_patch(status: api.ModelDeploymentStatus) -> dict[str, Any]:
    """The status as JSON for a merge patch; fields that became empty are removed explicitly."""
    return status.model_dump(by_alias=True, mode="json")
