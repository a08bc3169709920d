"""The reconciliation core: from what should exist and what does, what to do and what to report.

Pure functions of (spec, status, live children, generation, now). The kopf handlers in
`handlers` gather those inputs and apply the results; nothing here does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from canaryml_api import resource as api

from canaryml_operator import children
from canaryml_operator.children import ChildKey, Manifest, Owner, Track

Verb = Literal["create", "patch", "delete"]
EventType = Literal["Normal", "Warning"]


@dataclass(frozen=True)
class Action:
    verb: Verb
    key: ChildKey
    manifest: Manifest
    reason: str  # the Event reason: Created, Updated, Restored, Deleted
    message: str


@dataclass(frozen=True)
class Event:
    type: EventType
    reason: str
    message: str


@dataclass(frozen=True)
class DeploymentState:
    """What a live Deployment says of its rollout (what kstatus reads for Deployments)."""

    exists: bool = False
    desired: int = 0
    available: int = 0
    updated: int = 0
    current: bool = False  # the controller has seen the latest spec
    version: str | None = None
    model: str | None = None  # children.model_reference of the artifact it runs, when known

    def serves(self, *, uri: str, version: str, sha256: str | None) -> bool:
        """Whether it has rolled out with exactly this artifact (by version alone for a
        Deployment written before the operator recorded the whole reference)."""
        if not self.rolled_out:
            return False
        if self.model is not None:
            return self.model == children.model_reference(uri=uri, version=version, sha256=sha256)
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
        desired = int(spec.get("replicas", 1))
        return cls(
            exists=True,
            desired=desired,
            available=int(status.get("availableReplicas") or 0),
            updated=int(status.get("updatedReplicas") or 0),
            current=int(status.get("observedGeneration") or 0) >= int(meta.get("generation") or 0),
            version=(meta.get("annotations") or {}).get(children.ANNOTATION_MODEL_VERSION)
            or (meta.get("labels") or {}).get("app.kubernetes.io/version"),
            model=(meta.get("annotations") or {}).get(children.ANNOTATION_MODEL),
        )


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
        actions.append(
            Action("delete", key, dict(obj), "Deleted", f"{key.kind} {key.name} deleted: {why}")
        )
    return Plan(actions)


def _hash(obj: Mapping[str, Any]) -> str | None:
    value = obj.get("metadata", {}).get("annotations", {}).get(children.ANNOTATION_SPEC_HASH)
    return value if isinstance(value, str) else None


def set_condition(
    conditions: Sequence[api.Condition],
    *,
    type: str,
    status: Literal["True", "False", "Unknown"],
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
    return sorted([*others, updated], key=lambda c: _CONDITION_ORDER.get(c.type, 99))


_CONDITION_ORDER = {"Ready": 0, "Progressing": 1, "Degraded": 2, "RolledBack": 3}


def condition(status: api.ModelDeploymentStatus, type: str) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == type), None)


def build_status(
    *,
    spec: api.ModelDeploymentSpec | None,
    invalid: str | None,
    previous: api.ModelDeploymentStatus,
    tracks: Mapping[Track, DeploymentState],
    generation: int | None,
    now: datetime,
) -> api.ModelDeploymentStatus:
    """The status the resource should show, kstatus-style.

    Ready: the stable Deployment has rolled out and its replicas are available.
    Progressing: a canary is deployed, or the stable model is rolling to a new version.
    Degraded (and kstatus' Stalled): the spec cannot be served as written.
    Reconciling: the operator is still bringing children into shape.
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
    if stable.rolled_out:
        stable_version = stable.version or stable_version
        put("Ready", True, "StableAvailable", f"stable model {stable_version}: {replicas}")
    elif not stable.exists:
        put("Ready", False, "StableMissing", "the stable Deployment does not exist yet")
    else:
        put("Ready", False, "StableNotAvailable", f"stable model {stable.version}: {replicas}")

    fields: dict[str, Any] = {"stable_version": stable_version, "observed_generation": generation}
    if invalid is not None or spec is None:
        message = invalid or "the spec is missing"
        put("Degraded", True, "InvalidSpec", message)
        put("Stalled", True, "InvalidSpec", message)
        put("Reconciling", False, "InvalidSpec", "waiting for a corrected spec")
        put("Progressing", False, "InvalidSpec", "nothing changes until the spec is corrected")
        return previous.model_copy(update={**fields, "phase": "Failed", "conditions": conditions})

    put("Degraded", False, "AsExpected", "the spec is valid and its children are in place")
    stalled = condition(previous, "Stalled")
    if stalled is None or stalled.reason == "InvalidSpec":
        put("Stalled", False, "AsExpected", "")  # the rollout core sets and clears its own
    canary = spec.canary
    canary_state = tracks.get("canary", DeploymentState())
    rolling_stable = stable.exists and not stable.rolled_out and stable_version is not None
    phase = previous.phase
    if canary is None:
        # With a canary the rollout core owns the phase and the Progressing condition.
        if rolling_stable:
            put(
                "Progressing",
                True,
                "StableRollingOut",
                f"stable model rolling out to {stable.version}: {replicas}",
            )
        else:
            put("Progressing", False, "NoCanary", "no canary in the spec")
        phase = "Progressing" if rolling_stable else "Stable"
    if stable_version is None:
        phase = "Pending"  # until the stable model first serves (the rollout core restores)
    elif phase in (None, "Pending", "Failed"):
        phase = "Progressing" if canary is not None else "Stable"
    canary_settled = canary_state.rolled_out or not canary_state.exists
    settled = stable.rolled_out and canary_settled
    put(
        "Reconciling",
        not settled,
        "AsExpected" if settled else "RollingOut",
        "" if settled else "waiting for the model Deployments to roll out",
    )
    return previous.model_copy(
        update={
            **fields,
            "phase": phase,
            "canary_version": canary.model.version if canary else None,
            "conditions": conditions,
        }
    )


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
        events.append(Event("Warning", "InvalidSpec", after.message))
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
        events.append(Event("Warning", "NotReady", ready_after.message))
    return events


def status_patch(status: api.ModelDeploymentStatus) -> dict[str, Any]:
    """The status as JSON for a merge patch; fields that became empty are removed explicitly."""
    return status.model_dump(by_alias=True, mode="json")


def parse_owner(body: Mapping[str, Any]) -> Owner:
    meta = body.get("metadata", {})
    return Owner(name=meta["name"], namespace=meta.get("namespace") or "default", uid=meta["uid"])
