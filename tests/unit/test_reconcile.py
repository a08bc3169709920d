"""The reconciliation core: the plan of child changes, the status and the Events."""

from __future__ import annotations

import copy
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import children, reconcile, state
from canaryml_operator.children import ANNOTATION_SPEC_HASH, ChildKey
from canaryml_operator.reconcile import Plan
from canaryml_operator.state import DeploymentState, Event, Owner, set_condition

OWNER = Owner(name="iris", namespace="ml", uid="uid-iris")
STRANGER = Owner(name="iris", namespace="ml", uid="uid-someone-else")
IMAGE = "ghcr.io/canaryml/canaryml:0.1.0"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}

T0 = datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
T1 = T0 + timedelta(minutes=5)
T2 = T0 + timedelta(minutes=10)


def spec(**fields: Any) -> api.ModelDeploymentSpec:
    """A spec with the model tracks only: no router unless `routing` names one."""
    fields.setdefault("routing", {"router": "none"})
    return api.parse_spec({"model": STABLE, **fields})


def with_canary(**fields: Any) -> api.ModelDeploymentSpec:
    return spec(canary={"model": CANARY}, **fields)


def desired_of(value: api.ModelDeploymentSpec, owner: Owner = OWNER) -> list[dict[str, Any]]:
    return children.build_children(owner=owner, spec=value, image=IMAGE)


def as_live(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the API server returns it, with fields it adds."""
    live = copy.deepcopy(manifest)
    live["metadata"].update(uid=f"uid-{manifest['metadata']['name']}", resourceVersion="17")
    if live["kind"] == "Service":
        live["spec"]["clusterIP"] = "10.96.0.20"
    else:
        live["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "IfNotPresent"
        live["status"] = {"observedGeneration": 1}
    return live


def plan(
    desired: list[dict[str, Any]], live: list[dict[str, Any]], *, reconciled_before: bool = False
) -> Plan:
    return reconcile.plan_children(
        desired=desired, live=live, owner=OWNER, reconciled_before=reconciled_before
    )


def summary(result: Plan) -> list[tuple[str, str, str, str]]:
    return [(a.verb, a.key.kind, a.key.name, a.reason) for a in result.actions]


# --- plan_children ----------------------------------------------------------------------------


def test_with_nothing_live_every_child_is_created_in_order() -> None:
    desired = desired_of(with_canary())
    result = plan(desired, [])

    assert summary(result) == [
        ("create", "Deployment", "iris-stable", "Created"),
        ("create", "Service", "iris-stable", "Created"),
        ("create", "Deployment", "iris-canary", "Created"),
        ("create", "Service", "iris-canary", "Created"),
        ("create", "Service", "iris", "Created"),
    ]
    assert [a.manifest for a in result.actions] == desired
    assert result.actions[0].message == "Deployment iris-stable created"
    assert result.changed


def test_a_child_missing_after_a_reconcile_is_restored() -> None:
    desired = desired_of(spec())
    live = [as_live(m) for m in desired if m["kind"] == "Service"]
    result = plan(desired, live, reconciled_before=True)

    assert summary(result) == [("create", "Deployment", "iris-stable", "Restored")]
    assert "restored after it was deleted" in result.actions[0].message


def test_desired_objects_as_live_give_an_empty_plan() -> None:
    desired = desired_of(with_canary())
    result = plan(desired, desired)

    assert result.actions == []
    assert not result.changed


def test_live_children_with_server_defaults_give_an_empty_plan() -> None:
    desired = desired_of(with_canary())

    assert plan(desired, [as_live(m) for m in desired], reconciled_before=True).actions == []


def test_a_new_stable_version_patches_its_track_as_updated() -> None:
    live = [as_live(m) for m in desired_of(spec())]
    desired = desired_of(spec(model={**STABLE, "version": "1.0.1"}))
    result = plan(desired, live)

    assert summary(result) == [
        ("patch", "Deployment", "iris-stable", "Updated"),
        ("patch", "Service", "iris-stable", "Updated"),
    ]
    assert result.actions[0].manifest == desired[0]
    assert result.actions[0].message == "Deployment iris-stable updated to the new spec"


def test_a_hand_edit_with_the_same_hash_is_put_back_as_restored() -> None:
    desired = desired_of(spec())
    live = [as_live(m) for m in desired]
    live[0]["spec"]["replicas"] = 10  # kubectl scale

    result = plan(desired, live)

    assert summary(result) == [("patch", "Deployment", "iris-stable", "Restored")]
    assert "put back after a hand edit" in result.actions[0].message


def test_a_live_child_without_a_hash_is_updated() -> None:
    desired = desired_of(spec())
    live = [as_live(m) for m in desired]
    del live[2]["metadata"]["annotations"][ANNOTATION_SPEC_HASH]

    assert summary(plan(desired, live)) == [("patch", "Service", "iris", "Updated")]


def test_removing_the_canary_deletes_its_children() -> None:
    live = [as_live(m) for m in desired_of(with_canary())]
    result = plan(desired_of(spec()), live)

    assert summary(result) == [
        ("delete", "Deployment", "iris-canary", "Deleted"),
        ("delete", "Service", "iris-canary", "Deleted"),
    ]
    assert all("the canary track was removed" in a.message for a in result.actions)
    assert result.actions[0].key == ChildKey("Deployment", "iris-canary")


def test_an_owned_child_without_a_track_that_is_not_desired_is_deleted() -> None:
    stray = as_live(desired_of(spec())[2])
    stray["metadata"]["name"] = "iris-old-endpoint"
    result = plan(desired_of(spec()), [*map(as_live, desired_of(spec())), stray])

    assert summary(result) == [("delete", "Service", "iris-old-endpoint", "Deleted")]
    assert "no longer in the spec" in result.actions[0].message


def test_objects_owned_by_another_uid_are_never_deleted() -> None:
    foreign = [as_live(m) for m in desired_of(with_canary(), owner=STRANGER)]
    ours = [as_live(m) for m in desired_of(spec())]

    assert plan(desired_of(spec()), [*ours, *foreign]).actions == []


@pytest.mark.parametrize(
    "references",
    [
        [],
        [{"uid": OWNER.uid, "controller": False}],
        [{"uid": OWNER.uid}],
        [{"uid": STRANGER.uid, "controller": True}],
    ],
)
def test_objects_we_do_not_control_are_left_alone(references: list[dict[str, Any]]) -> None:
    other = as_live(desired_of(with_canary())[2])
    other["metadata"]["ownerReferences"] = references

    assert plan(desired_of(spec()), [*map(as_live, desired_of(spec())), other]).actions == []


def test_a_spec_change_creates_patches_and_deletes_in_one_plan() -> None:
    live = [as_live(m) for m in desired_of(with_canary())]
    desired = desired_of(
        spec(
            model={**STABLE, "version": "1.0.1"},
            shadow={"model": CANARY},
        )
    )

    assert summary(plan(desired, live)) == [
        ("patch", "Deployment", "iris-stable", "Updated"),
        ("patch", "Service", "iris-stable", "Updated"),
        ("create", "Deployment", "iris-shadow", "Created"),
        ("create", "Service", "iris-shadow", "Created"),
        ("delete", "Deployment", "iris-canary", "Deleted"),
        ("delete", "Service", "iris-canary", "Deleted"),
    ]


# --- DeploymentState ---------------------------------------------------------------------------


def live_deployment(
    *, replicas: int | None = 2, generation: int = 2, status: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {
            "name": "iris-stable",
            "generation": generation,
            "labels": {"app.kubernetes.io/version": "1.0.0"},
        },
        "spec": {} if replicas is None else {"replicas": replicas},
    }
    if status is not None:
        body["status"] = status
    return body


def test_a_missing_deployment_does_not_exist_and_is_not_rolled_out() -> None:
    state = DeploymentState.of(None)

    assert state == DeploymentState()
    assert not state.exists
    assert not state.rolled_out


def test_a_deployment_without_status_exists_but_is_not_rolled_out() -> None:
    state = DeploymentState.of(live_deployment())

    assert (state.exists, state.desired, state.available, state.updated) == (True, 2, 0, 0)
    assert not state.current
    assert state.version == "1.0.0"
    assert not state.rolled_out


def test_a_deployment_with_some_replicas_available_is_not_rolled_out() -> None:
    status = {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 1}
    state = DeploymentState.of(live_deployment(status=status))

    assert state.current
    assert not state.rolled_out


def test_a_deployment_whose_new_spec_is_not_yet_observed_is_not_rolled_out() -> None:
    status = {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2}
    state = DeploymentState.of(live_deployment(generation=3, status=status))

    assert not state.current
    assert not state.rolled_out


def test_a_deployment_with_all_replicas_updated_and_available_is_rolled_out() -> None:
    status = {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
    state = DeploymentState.of(live_deployment(status=status))

    assert state == DeploymentState(
        exists=True, desired=2, available=2, updated=2, current=True, version="1.0.0"
    )
    assert state.rolled_out


def test_a_deployment_without_replicas_wants_one() -> None:
    state = DeploymentState.of(live_deployment(replicas=None, status={"observedGeneration": 2}))
    assert state.desired == 1
    assert not state.rolled_out


def test_a_deployment_scaled_to_zero_is_rolled_out_once_observed() -> None:
    state = DeploymentState.of(live_deployment(replicas=0, status={"observedGeneration": 2}))
    assert state.rolled_out


# --- build_status ---------------------------------------------------------------------------------

ROLLED_OUT = DeploymentState(
    exists=True, desired=2, available=2, updated=2, current=True, version="1.0.0"
)
STARTING = DeploymentState(exists=True, desired=2, available=0, updated=2, current=True)
CANARY_STARTING = DeploymentState(
    exists=True, desired=1, available=0, updated=1, current=True, version="1.1.0"
)
CANARY_UP = DeploymentState(
    exists=True, desired=1, available=1, updated=1, current=True, version="1.1.0"
)
EMPTY = api.ModelDeploymentStatus()


def status_of(
    *,
    value: api.ModelDeploymentSpec | None = None,
    invalid: str | None = None,
    previous: api.ModelDeploymentStatus = EMPTY,
    tracks: dict[str, DeploymentState] | None = None,
    generation: int | None = 3,
    now: datetime = T0,
) -> api.ModelDeploymentStatus:
    return reconcile.build_status(
        spec=value if value is not None or invalid is not None else spec(),
        invalid=invalid,
        previous=previous,
        tracks=tracks or {},  # type: ignore[arg-type]
        generation=generation,
        now=now,
    )


def conditions(status: api.ModelDeploymentStatus) -> dict[str, tuple[str, str]]:
    return {c.type: (c.status, c.reason) for c in status.conditions}


def get(status: api.ModelDeploymentStatus, kind: str) -> api.Condition:
    found = state.condition(status, kind)
    assert found is not None, f"no {kind} condition in {status.conditions}"
    return found


def test_without_a_stable_deployment_the_phase_is_pending_and_not_ready() -> None:
    status = status_of(tracks={})

    assert status.phase == "Pending"
    assert get(status, "Ready").status == "False"
    assert get(status, "Ready").reason == "StableMissing"
    assert get(status, "Reconciling").status == "True"
    assert status.stable_version is None


def test_a_stable_deployment_still_starting_is_pending_and_not_ready() -> None:
    status = status_of(tracks={"stable": STARTING})

    assert status.phase == "Pending"
    assert conditions(status)["Ready"] == ("False", "StableNotAvailable")


def test_a_rolled_out_stable_model_without_canary_is_stable_and_ready() -> None:
    status = status_of(tracks={"stable": ROLLED_OUT})

    assert status.phase == "Stable"
    assert status.stable_version == "1.0.0"
    assert status.canary_version is None
    assert status.canary_weight == 0
    assert conditions(status) == {
        "Ready": ("True", "StableAvailable"),
        "Progressing": ("False", "NoCanary"),
        "Degraded": ("False", "AsExpected"),
        "Stalled": ("False", "AsExpected"),
        "Reconciling": ("False", "AsExpected"),
    }
    assert get(status, "Ready").message == "stable model 1.0.0: 2/2 replicas available"


def test_the_kstatus_conditions_come_first_in_a_stable_order() -> None:
    status = status_of(tracks={"stable": ROLLED_OUT})
    assert [c.type for c in status.conditions][:3] == ["Ready", "Progressing", "Degraded"]


def test_with_a_canary_the_rollout_cores_phase_weight_and_progressing_are_kept() -> None:
    previous = set_condition(
        EMPTY.conditions,
        type="Progressing",
        status="True",
        reason="CanaryAnalysis",
        message="canary 1.1.0 at 10%",
        generation=1,
        now=T0,
    )
    previous_status = EMPTY.model_copy(
        update={
            "phase": "Progressing",
            "canary_version": "1.1.0",  # the rollout core's, as `rollout.decide` writes it
            "canary_weight": 10,
            "current_step": 1,
            "conditions": previous,
        }
    )
    status = status_of(
        value=with_canary(),
        previous=previous_status,
        tracks={"stable": ROLLED_OUT, "canary": CANARY_STARTING},
    )

    assert status.phase == "Progressing"
    assert status.canary_version == "1.1.0"
    assert (status.canary_weight, status.current_step) == (10, 1)
    assert conditions(status)["Ready"] == ("True", "StableAvailable")
    assert conditions(status)["Progressing"] == ("True", "CanaryAnalysis")
    assert conditions(status)["Reconciling"] == ("True", "RollingOut")


def test_a_rollout_in_flight_is_reconciling_even_with_its_pods_up() -> None:
    """kstatus reads Reconciling: a rollout in flight is InProgress, not Current."""
    status = status_of(value=with_canary(), tracks={"stable": ROLLED_OUT, "canary": CANARY_UP})

    assert status.phase == "Progressing"
    assert conditions(status)["Reconciling"] == ("True", "RolloutInProgress")


def rollout_status(phase: api.Phase, **conditions_by_type: tuple[str, str]) -> Any:
    found = [
        api.Condition(
            type=kind, status=value, reason=reason, message=f"{kind} says", last_transition_time=T0
        )
        for kind, (value, reason) in conditions_by_type.items()
    ]
    canary = api.ModelIdentity(uri=CANARY["uri"], version=CANARY["version"])
    return EMPTY.model_copy(
        update={
            "phase": phase,
            "stable_version": "1.0.0",
            "canary_model": canary,
            "canary_version": "1.1.0",
            "conditions": found,
        }
    )


@pytest.mark.parametrize(
    ("phase", "progressing", "reconciling"),
    [
        ("Progressing", ("True", "CanaryAnalysis"), ("True", "RolloutInProgress")),
        ("Promoted", ("True", "Promoting"), ("True", "RolloutInProgress")),
        ("Promoted", ("False", "Promoted"), ("False", "AsExpected")),
        ("Paused", ("True", "Paused"), ("False", "Paused")),
        ("RolledBack", ("False", "RolledBack"), ("False", "Stalled")),
    ],
)
def test_reconciling_says_whether_a_rollout_is_in_flight(
    phase: api.Phase, progressing: tuple[str, str], reconciling: tuple[str, str]
) -> None:
    previous = rollout_status(phase, Progressing=progressing)
    tracks = {"stable": ROLLED_OUT, "canary": CANARY_UP}
    status = status_of(value=with_canary(), previous=previous, tracks=tracks)
    assert conditions(status)["Reconciling"] == reconciling


def test_a_rolled_back_canary_is_stalled_until_the_spec_changes() -> None:
    """kstatus Failed: the canary in the spec will not be served as it is."""
    previous = rollout_status(
        "RolledBack", Progressing=("False", "RolledBack"), RolledBack=("True", "AnalysisFailed")
    )
    tracks = {"stable": ROLLED_OUT}
    status = status_of(value=with_canary(), previous=previous, tracks=tracks)
    stalled = get(status, "Stalled")
    assert (stalled.status, stalled.reason, stalled.message) == (
        "True",
        "RolledBack",
        "RolledBack says",
    )
    # Kept, with its transition time, while it lasts; cleared once the canary leaves the spec.
    again = status_of(value=with_canary(), previous=status, tracks=tracks, now=T1)
    assert get(again, "Stalled").last_transition_time == T0
    cleared = status_of(
        value=spec(), previous=again.model_copy(update={"phase": "Stable"}), tracks=tracks
    )
    assert conditions(cleared)["Stalled"] == ("False", "AsExpected")


def test_serving_replicas_zero_is_not_ready_but_scaled_to_zero() -> None:
    zero = DeploymentState(exists=True, desired=0, available=0, updated=0, current=True)
    status = status_of(
        value=spec(serving={"replicas": 0}), tracks={"stable": replace(zero, version="1.0.0")}
    )
    ready = get(status, "Ready")
    assert (ready.status, ready.reason) == ("False", "ScaledToZero")
    assert ready.message == "serving.replicas is 0: stable model 1.0.0 has no pods to serve"
    # Nothing to wait for: kstatus Current, not InProgress or Failed.
    assert conditions(status)["Reconciling"][0] == "False"
    assert conditions(status)["Stalled"][0] == "False"
    assert status.phase == "Stable"
    # Scaling down on purpose is announced, not warned about.
    up = status_of(value=spec(), tracks={"stable": ROLLED_OUT})
    events = reconcile.build_events(previous=up, status=status, plan=Plan())
    assert events == [Event("Normal", "ScaledToZero", ready.message)]


# --- children that belong to someone else ----------------------------------------------------


def test_a_child_owned_by_another_resource_makes_this_one_degraded() -> None:
    ok = status_of(value=spec(), tracks={"stable": ROLLED_OUT})
    other = {
        "kind": "Service",
        "metadata": {
            "name": "iris-stable",
            "labels": {children.LABEL_MODEL_DEPLOYMENT: "iris"},
            "ownerReferences": [
                {"kind": "ModelDeployment", "name": "iris", "uid": "u-other", "controller": True}
            ],
        },
    }
    message = reconcile.conflict_message(ChildKey("Service", "iris-stable"), other)
    assert message == "Service iris-stable already exists and belongs to ModelDeployment iris"
    status = reconcile.with_conflicts(ok, previous=ok, conflicts=[message], generation=3, now=T1)

    for kind in ("Degraded", "Stalled"):
        found = get(status, kind)
        assert (found.status, found.reason) == ("True", "ChildConflict")
        assert found.message.startswith(message + ": not overwritten")
    assert conditions(status)["Ready"] == ("False", "ChildConflict")
    events = reconcile.build_events(previous=ok, status=status, plan=Plan())
    assert Event("Warning", "ChildConflict", get(status, "Degraded").message) in events
    # Reported once while it lasts, with the same transition times; gone once the object is
    # ours to create.
    rebuilt = status_of(value=spec(), previous=status, tracks={"stable": ROLLED_OUT}, now=T2)
    again = reconcile.with_conflicts(
        rebuilt, previous=status, conflicts=[message], generation=3, now=T2
    )
    assert again == status
    assert reconcile.build_events(previous=status, status=again, plan=Plan()) == []
    healed = status_of(value=spec(), previous=status, tracks={"stable": ROLLED_OUT}, now=T2)
    assert conditions(healed)["Degraded"] == ("False", "AsExpected")
    assert conditions(healed)["Stalled"] == ("False", "AsExpected")
    assert conditions(healed)["Ready"] == ("True", "StableAvailable")


@pytest.mark.parametrize(
    ("metadata", "owner"),
    [
        ({"labels": {children.LABEL_MODEL_DEPLOYMENT: "x"}}, "ModelDeployment x (by its label"),
        ({}, "no ModelDeployment"),
        ({"ownerReferences": [{"kind": "Rollout", "name": "r"}]}, "Rollout r"),
    ],
)
def test_the_conflict_names_whom_the_object_belongs_to(
    metadata: dict[str, Any], owner: str
) -> None:
    assert reconcile.foreign_owner({"metadata": metadata}).startswith(owner)


def test_a_paused_rollout_stays_paused() -> None:
    previous = EMPTY.model_copy(update={"phase": "Paused", "stable_version": "1.0.0"})
    status = status_of(
        value=with_canary(paused=True), previous=previous, tracks={"stable": ROLLED_OUT}
    )
    assert status.phase == "Paused"


def test_a_paused_spec_without_a_canary_is_just_stable() -> None:
    status = status_of(value=spec(paused=True), tracks={"stable": ROLLED_OUT})
    assert status.phase == "Stable"


def test_removing_the_canary_makes_it_stable_and_clears_the_canary_version() -> None:
    previous = status_of(
        value=with_canary(), tracks={"stable": ROLLED_OUT, "canary": CANARY_UP}
    ).model_copy(update={"phase": "Progressing"})
    status = status_of(previous=previous, tracks={"stable": ROLLED_OUT}, now=T1)

    # The weight and step are the rollout core's to clear (tests/unit/test_rollout.py).
    assert status.phase == "Stable"
    assert status.canary_version is None


def test_a_stable_model_rolling_to_a_new_version_is_progressing() -> None:
    previous = status_of(tracks={"stable": ROLLED_OUT})
    rolling = DeploymentState(exists=True, desired=2, available=2, updated=1, current=True)
    status = status_of(
        value=spec(model={**STABLE, "version": "1.0.1"}),
        previous=previous,
        tracks={"stable": rolling},
        now=T1,
    )

    assert status.phase == "Progressing"
    assert status.stable_version == "1.0.0"  # until the new one is out
    assert conditions(status)["Progressing"] == ("True", "StableRollingOut")
    assert conditions(status)["Ready"] == ("False", "StableNotAvailable")


def test_an_invalid_spec_fails_degraded_and_stalled() -> None:
    message = "spec.model.uri: unsupported model URI 'ftp://x'"
    status = status_of(invalid=message, tracks={"stable": ROLLED_OUT})

    assert status.phase == "Failed"
    assert conditions(status)["Degraded"] == ("True", "InvalidSpec")
    assert conditions(status)["Stalled"] == ("True", "InvalidSpec")
    assert conditions(status)["Progressing"] == ("False", "InvalidSpec")
    assert conditions(status)["Reconciling"] == ("False", "InvalidSpec")
    assert get(status, "Degraded").message == message
    assert get(status, "Stalled").message == message


def test_a_missing_spec_is_reported_like_an_invalid_one() -> None:
    status = reconcile.build_status(
        spec=None, invalid=None, previous=EMPTY, tracks={}, generation=1, now=T0
    )

    assert status.phase == "Failed"
    assert get(status, "Degraded").message == "the spec is missing"


def test_the_observed_generation_is_recorded_on_the_status_and_every_condition() -> None:
    for status in (
        status_of(tracks={"stable": ROLLED_OUT}, generation=7),
        status_of(invalid="spec: bad", generation=7),
    ):
        assert status.observed_generation == 7
        assert {c.observed_generation for c in status.conditions} == {7}


def test_a_condition_keeps_its_transition_time_while_its_status_holds() -> None:
    first = status_of(tracks={"stable": ROLLED_OUT}, now=T0)
    second = status_of(previous=first, tracks={"stable": ROLLED_OUT}, generation=4, now=T1)

    assert all(c.last_transition_time == T0 for c in second.conditions)
    assert get(second, "Ready").observed_generation == 4


def test_a_condition_moves_its_transition_time_when_its_status_flips() -> None:
    first = status_of(tracks={"stable": ROLLED_OUT}, now=T0)
    second = status_of(previous=first, tracks={"stable": STARTING}, now=T1)
    third = status_of(previous=second, tracks={"stable": ROLLED_OUT}, now=T2)

    assert get(second, "Ready").last_transition_time == T1
    assert get(second, "Degraded").last_transition_time == T0  # still False
    assert get(third, "Ready").last_transition_time == T2


def test_a_new_reason_with_the_same_status_keeps_the_transition_time() -> None:
    first = status_of(tracks={}, now=T0)  # Ready False: StableMissing
    second = status_of(previous=first, tracks={"stable": STARTING}, now=T1)

    assert get(second, "Ready").reason == "StableNotAvailable"
    assert get(second, "Ready").last_transition_time == T0


def test_an_unchanged_world_gives_the_same_status_later() -> None:
    first = status_of(
        value=with_canary(), tracks={"stable": ROLLED_OUT, "canary": CANARY_UP}, now=T0
    )
    second = status_of(
        value=with_canary(),
        previous=first,
        tracks={"stable": ROLLED_OUT, "canary": CANARY_UP},
        now=T2,
    )

    assert second == first
    assert reconcile.status_patch(second) == reconcile.status_patch(first)


def test_the_status_keeps_history_and_the_last_analysis() -> None:
    history = [api.HistoryEntry(version="0.9.0", uri="s3://m/0.9.0", event="promoted", time=T0)]
    previous = EMPTY.model_copy(update={"history": history, "failed_checks": 1})

    status = status_of(previous=previous, tracks={"stable": ROLLED_OUT})

    assert status.history == history
    assert status.failed_checks == 1


# --- build_events ------------------------------------------------------------------------------


def test_actions_become_one_event_per_reason_and_restores_are_warnings() -> None:
    desired = desired_of(with_canary())
    live = [as_live(m) for m in desired[2:]]
    live[-1]["spec"]["selector"] = {"hand": "edited"}
    live.append(as_live(desired_of(spec(shadow={"model": CANARY}))[2]))
    actions = plan(desired, live, reconciled_before=True)
    same = status_of(tracks={"stable": STARTING})

    events = reconcile.build_events(previous=same, status=same, plan=actions)

    assert [(e.type, e.reason) for e in events] == [("Warning", "Restored"), ("Normal", "Deleted")]
    restored = [a.message for a in actions.actions if a.reason == "Restored"]
    deleted = [a.message for a in actions.actions if a.reason == "Deleted"]
    assert len(restored) == 3 and len(deleted) == 1
    assert [e.message for e in events] == ["; ".join(restored), deleted[0]]


def test_children_created_together_are_one_normal_event() -> None:
    same = status_of(tracks={"stable": STARTING})
    actions = plan(desired_of(spec()), [])

    events = reconcile.build_events(previous=same, status=same, plan=actions)

    (event,) = events
    assert (event.type, event.reason) == ("Normal", "Created")
    assert event.message == "; ".join(a.message for a in actions.actions)
    assert event.message.count(" created") == 3


def test_an_invalid_spec_is_announced_once() -> None:
    message = "spec.canary.steps: steps must be strictly increasing, got [50, 10]"
    first = status_of(invalid=message, tracks={"stable": ROLLED_OUT}, now=T0)
    second = status_of(invalid=message, previous=first, tracks={"stable": ROLLED_OUT}, now=T1)

    first_events = reconcile.build_events(previous=EMPTY, status=first, plan=Plan())
    second_events = reconcile.build_events(previous=first, status=second, plan=Plan())

    assert Event("Warning", "InvalidSpec", message) in first_events
    assert not [e for e in second_events if e.reason == "InvalidSpec"]


def test_a_different_invalid_spec_is_announced_again() -> None:
    first = status_of(invalid="spec.model.uri: bad", now=T0)
    second = status_of(invalid="spec.model.version: bad", previous=first, now=T1)

    events = reconcile.build_events(previous=first, status=second, plan=Plan())

    assert events == [Event("Warning", "InvalidSpec", "spec.model.version: bad")]


def test_a_corrected_spec_is_announced_and_a_relapse_warned_again() -> None:
    broken = status_of(invalid="spec.model.uri: bad", tracks={"stable": ROLLED_OUT}, now=T0)
    fixed = status_of(previous=broken, tracks={"stable": ROLLED_OUT}, now=T1)
    relapse = status_of(
        invalid="spec.model.uri: bad", previous=fixed, tracks={"stable": ROLLED_OUT}, now=T2
    )

    fixed_events = reconcile.build_events(previous=broken, status=fixed, plan=Plan())
    relapse_events = reconcile.build_events(previous=fixed, status=relapse, plan=Plan())

    assert [e.reason for e in fixed_events] == ["SpecValid"]
    assert relapse_events == [Event("Warning", "InvalidSpec", "spec.model.uri: bad")]


def test_becoming_ready_is_announced_once() -> None:
    pending = status_of(tracks={"stable": STARTING}, now=T0)
    ready = status_of(previous=pending, tracks={"stable": ROLLED_OUT}, now=T1)
    still = status_of(previous=ready, tracks={"stable": ROLLED_OUT}, now=T2)

    assert reconcile.build_events(previous=pending, status=ready, plan=Plan()) == [
        Event("Normal", "Ready", "stable model 1.0.0: 2/2 replicas available")
    ]
    assert reconcile.build_events(previous=ready, status=still, plan=Plan()) == []


def test_the_first_status_that_is_ready_is_announced() -> None:
    ready = status_of(tracks={"stable": ROLLED_OUT})
    events = reconcile.build_events(previous=EMPTY, status=ready, plan=Plan())

    assert [e.reason for e in events] == ["Ready"]


def test_losing_readiness_is_a_warning() -> None:
    ready = status_of(tracks={"stable": ROLLED_OUT}, now=T0)
    lost = status_of(previous=ready, tracks={"stable": STARTING}, now=T1)

    events = reconcile.build_events(previous=ready, status=lost, plan=Plan())

    assert [(e.type, e.reason) for e in events] == [("Warning", "NotReady")]


def test_a_pending_resource_that_stays_pending_is_quiet() -> None:
    pending = status_of(tracks={}, now=T0)
    again = status_of(previous=pending, tracks={}, now=T1)

    assert reconcile.build_events(previous=EMPTY, status=pending, plan=Plan()) == []
    assert reconcile.build_events(previous=pending, status=again, plan=Plan()) == []


# --- status_patch and parse_owner -----------------------------------------------------------


def test_the_status_patch_is_camel_case_json_with_nulls_for_cleared_fields() -> None:
    status = status_of(tracks={"stable": ROLLED_OUT})
    patch = reconcile.status_patch(status)

    assert json.loads(json.dumps(patch)) == patch
    assert patch["phase"] == "Stable"
    assert patch["stableVersion"] == "1.0.0"
    assert patch["observedGeneration"] == 3
    # A merge patch removes a field set to null: a finished canary's version must go.
    assert "canaryVersion" in patch
    assert patch["canaryVersion"] is None
    ready = next(c for c in patch["conditions"] if c["type"] == "Ready")
    assert ready["lastTransitionTime"] == "2024-05-01T12:00:00Z"


def test_the_status_patch_reads_back_as_the_same_status() -> None:
    status = status_of(value=with_canary(), tracks={"stable": ROLLED_OUT, "canary": CANARY_UP})
    assert api.parse_status(reconcile.status_patch(status)) == status


def test_parse_owner_reads_name_namespace_and_uid() -> None:
    body = {"metadata": {"name": "iris", "namespace": "ml", "uid": "u-1"}}
    assert state.parse_owner(body) == Owner(name="iris", namespace="ml", uid="u-1")


def test_parse_owner_defaults_the_namespace() -> None:
    body = {"metadata": {"name": "iris", "uid": "u-1"}}
    assert state.parse_owner(body).namespace == "default"


def test_the_stable_version_is_read_from_the_exact_annotation_before_the_label() -> None:
    live = live_deployment()
    live["metadata"]["labels"]["app.kubernetes.io/version"] = "1.0.0_build.7"
    live["metadata"].setdefault("annotations", {})["canaryml.dev/model-version"] = "1.0.0+build.7"

    assert DeploymentState.of(live).version == "1.0.0+build.7"
