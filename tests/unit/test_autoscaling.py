"""Autoscaling: the HorizontalPodAutoscaler children, the canary's bounds following its weight,
and the replicas the operator stops writing when an autoscaler owns them."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import children, reconcile
from canaryml_operator.children import Safeguards
from canaryml_operator.state import Owner, TrackPlan

OWNER = Owner(name="iris", namespace="ml", uid="0b6c1f5e-1111-4222-8333-944455556666")
IMAGE = "ghcr.io/canaryml/canaryml:0.1.0"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}
SHADOW = {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"}
HPA = "HorizontalPodAutoscaler"


def spec(**fields: Any) -> api.ModelDeploymentSpec:
    fields.setdefault("routing", {"router": "none"})
    return api.parse_spec({"model": STABLE, **fields})


def autoscaled(**fields: Any) -> api.ModelDeploymentSpec:
    return spec(
        canary={"model": CANARY, "replicas": 2},
        shadow={"model": SHADOW, "replicas": 3},
        serving={
            "replicas": 4,
            "autoscaling": {"minReplicas": 4, "maxReplicas": 20, "targetCpuUtilization": 70},
        },
        **fields,
    )


def build(
    value: api.ModelDeploymentSpec, plan: TrackPlan | None = None, **options: Any
) -> dict[tuple[str, str], dict[str, Any]]:
    built = children.build_children(owner=OWNER, spec=value, image=IMAGE, plan=plan, **options)
    return {(m["kind"], m["metadata"]["name"]): m for m in built}


def at_weight(value: api.ModelDeploymentSpec, weight: int, replicas: int | None = 2) -> TrackPlan:
    return TrackPlan(value.model, replicas, weight)


# --- the spec ---------------------------------------------------------------------------------


def test_autoscaling_has_a_default_for_every_bound() -> None:
    found = spec(serving={"autoscaling": {}}).serving.autoscaling
    assert found == api.AutoscalingSpec(min_replicas=1, max_replicas=10, target_cpu_utilization=80)


def test_the_fields_are_camel_case_on_the_wire() -> None:
    found = spec(serving={"autoscaling": {"targetCpuUtilization": 55}}).serving.autoscaling
    assert found is not None and found.target_cpu_utilization == 55
    dumped = api.AutoscalingSpec().model_dump(by_alias=True)
    assert set(dumped) == {"minReplicas", "maxReplicas", "targetCpuUtilization"}


@pytest.mark.parametrize(
    ("autoscaling", "message"),
    [
        ({"minReplicas": 5, "maxReplicas": 2}, "minReplicas 5 must not exceed maxReplicas 2"),
        ({"minReplicas": 0}, "spec.serving.autoscaling.minReplicas"),
        ({"maxReplicas": 1001}, "spec.serving.autoscaling.maxReplicas"),
        ({"targetCpuUtilization": 0}, "spec.serving.autoscaling.targetCpuUtilization"),
    ],
)
def test_bad_bounds_are_refused_naming_the_field(autoscaling: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message.replace(".", r"\.")):
        spec(serving={"autoscaling": autoscaling})


def test_resources_without_a_cpu_request_cannot_be_autoscaled_on_cpu() -> None:
    with pytest.raises(ValueError, match=r"spec\.serving: .*set resources\.requests\.cpu"):
        spec(serving={"resources": {"limits": {"memory": "1Gi"}}, "autoscaling": {}})
    # With a CPU request, or the default resources (100m), it is fine.
    spec(serving={"resources": {"requests": {"cpu": "1"}}, "autoscaling": {}})
    spec(serving={"autoscaling": {}})


# --- the canary's bounds ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("weight", "bounds"),
    [(1, (1, 1)), (5, (1, 1)), (10, (1, 2)), (25, (1, 5)), (50, (2, 10)), (100, (4, 20))],
)
def test_the_canary_bounds_are_the_stables_times_its_weight_rounded_up(
    weight: int, bounds: tuple[int, int]
) -> None:
    stable = api.AutoscalingSpec(min_replicas=4, max_replicas=20, target_cpu_utilization=70)
    found = children.canary_autoscaling(stable, weight)
    assert (found.min_replicas, found.max_replicas) == bounds
    assert found.target_cpu_utilization == 70


@pytest.mark.parametrize("weight", range(0, 101))
def test_the_canary_bounds_are_valid_and_grow_with_the_weight(weight: int) -> None:
    stable = api.AutoscalingSpec(min_replicas=3, max_replicas=7)
    found = children.canary_autoscaling(stable, weight)
    assert 1 <= found.min_replicas <= found.max_replicas <= stable.max_replicas
    if weight:
        before = children.canary_autoscaling(stable, weight - 1)
        assert before.min_replicas <= found.min_replicas
        assert before.max_replicas <= found.max_replicas


# --- the children -------------------------------------------------------------------------------


def test_without_autoscaling_there_is_no_autoscaler_and_replicas_are_written() -> None:
    built = build(spec(canary={"model": CANARY}, serving={"replicas": 3}), at_weight(spec(), 10))
    assert not [key for key in built if key[0] == HPA]
    assert built[("Deployment", "iris-stable")]["spec"]["replicas"] == 3


def test_the_stable_track_gets_an_autoscaler_and_no_replicas_of_ours() -> None:
    value = autoscaled()
    built = build(value, at_weight(value, 0))
    deployment = built[("Deployment", "iris-stable")]
    assert "replicas" not in deployment["spec"]
    hpa = built[(HPA, "iris-stable")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "iris-stable",
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 20)
    (metric,) = hpa["spec"]["metrics"]
    assert metric == {
        "type": "Resource",
        "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}},
    }
    # Named, labelled, owned as its Deployment.
    assert hpa["metadata"]["labels"] == deployment["metadata"]["labels"]
    assert hpa["metadata"]["ownerReferences"] == deployment["metadata"]["ownerReferences"]
    assert children.ANNOTATION_SPEC_HASH in hpa["metadata"]["annotations"]


def test_the_canary_is_autoscaled_only_while_it_has_weight() -> None:
    value = autoscaled()
    waiting = build(value, at_weight(value, 0))
    assert (HPA, "iris-canary") not in waiting
    assert waiting[("Deployment", "iris-canary")]["spec"]["replicas"] == 2  # canary.replicas
    stepped = build(value, at_weight(value, 25))
    assert "replicas" not in stepped[("Deployment", "iris-canary")]["spec"]
    hpa = stepped[(HPA, "iris-canary")]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 5)
    # Rolled back and drained: scaled to 0 by the operator, no autoscaler.
    drained = build(value, at_weight(value, 0, replicas=0))
    assert (HPA, "iris-canary") not in drained
    assert drained[("Deployment", "iris-canary")]["spec"]["replicas"] == 0


def test_the_shadow_keeps_its_fixed_replicas() -> None:
    value = autoscaled()
    built = build(value, at_weight(value, 50))
    assert (HPA, "iris-shadow") not in built
    assert built[("Deployment", "iris-shadow")]["spec"]["replicas"] == 3


def test_a_step_changes_the_canary_autoscaler_but_never_its_pods() -> None:
    value = autoscaled()
    before, after = build(value, at_weight(value, 10)), build(value, at_weight(value, 50))
    assert before[("Deployment", "iris-canary")] == after[("Deployment", "iris-canary")]
    assert before[(HPA, "iris-canary")] != after[(HPA, "iris-canary")]


def test_the_router_gets_its_own_autoscaler_from_routing_autoscaling() -> None:
    value = spec(routing={"router": "builtin", "replicas": 2, "autoscaling": {"maxReplicas": 6}})
    built = build(value)
    assert "replicas" not in built[("Deployment", "iris-router")]["spec"]
    hpa = built[(HPA, "iris-router")]["spec"]
    assert hpa["scaleTargetRef"]["name"] == "iris-router"
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (1, 6)
    # Without it, the router's replicas are written as before.
    plain = build(spec(routing={"router": "builtin", "replicas": 2}))
    assert plain[("Deployment", "iris-router")]["spec"]["replicas"] == 2
    assert (HPA, "iris-router") not in plain


def test_an_autoscaled_deployments_budget_follows_min_replicas() -> None:
    value = autoscaled(routing={"router": "builtin", "autoscaling": {"minReplicas": 1}})
    built = build(value, at_weight(value, 50), safeguards=Safeguards())
    assert built[("PodDisruptionBudget", "iris-stable")]["spec"]["maxUnavailable"] == 1  # min 4
    assert ("PodDisruptionBudget", "iris-canary") in built  # min 2 at 50%
    assert ("PodDisruptionBudget", "iris-router") not in built  # min 1: would block drains
    assert (
        "topologySpreadConstraints"
        in (built[("Deployment", "iris-stable")]["spec"]["template"]["spec"])
    )


# --- no fight over replicas ---------------------------------------------------------------------


def live_of(manifest: dict[str, Any], **spec_fields: Any) -> dict[str, Any]:
    """The child as the API server returns it, with what the operator did not write."""
    live = {**manifest, "spec": {**manifest["spec"], **spec_fields}}
    live["metadata"] = {**manifest["metadata"], "uid": "x", "resourceVersion": "7"}
    return live


def test_replicas_the_autoscaler_set_are_no_drift_and_never_patched() -> None:
    value = autoscaled()
    desired = children.build_children(
        owner=OWNER, spec=value, image=IMAGE, plan=at_weight(value, 25)
    )
    live = [live_of(m, replicas=9) if m["kind"] == "Deployment" else m for m in desired]
    plan = reconcile.plan_children(desired=desired, live=live, owner=OWNER, reconciled_before=True)
    # Stable and canary are the autoscalers'; the shadow's fixed replicas are put back.
    (action,) = plan.actions
    assert (action.verb, action.key.name) == ("patch", "iris-shadow")
    assert action.manifest["spec"]["replicas"] == 3


def test_turning_autoscaling_on_patches_without_replicas_and_off_writes_them_again() -> None:
    fixed = spec(serving={"replicas": 3})
    on = spec(serving={"replicas": 3, "autoscaling": {"minReplicas": 2}})
    before = children.build_children(owner=OWNER, spec=fixed, image=IMAGE)
    live = [live_of(m) for m in before]
    plan = reconcile.plan_children(
        desired=children.build_children(owner=OWNER, spec=on, image=IMAGE),
        live=live,
        owner=OWNER,
        reconciled_before=True,
    )
    verbs = {(a.verb, a.key.kind, a.key.name) for a in plan.actions}
    assert verbs == {("patch", "Deployment", "iris-stable"), ("create", HPA, "iris-stable")}
    (patch,) = [a.manifest for a in plan.actions if a.verb == "patch"]
    assert "replicas" not in patch["spec"]  # a merge patch leaves the live value alone

    # Autoscaling removed: the autoscaler is deleted and the replicas written again.
    autoscaled_live = [
        live_of(m, replicas=7) if m["kind"] == "Deployment" else live_of(m)
        for m in children.build_children(owner=OWNER, spec=on, image=IMAGE)
    ]
    plan = reconcile.plan_children(
        desired=before, live=autoscaled_live, owner=OWNER, reconciled_before=True
    )
    by_verb = {a.verb: a for a in plan.actions}
    assert set(by_verb) == {"patch", "delete"}
    assert by_verb["patch"].manifest["spec"]["replicas"] == 3
    assert by_verb["delete"].key == children.ChildKey("HorizontalPodAutoscaler", "iris-stable")
    assert "no longer autoscaled" in by_verb["delete"].message
