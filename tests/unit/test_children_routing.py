"""The traffic children: the builtin router (Deployment, ServiceAccount, Role, RoleBinding) and
the Gateway API HTTPRoute, and how the rollout plan shapes the model tracks."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import children
from canaryml_operator.state import Owner, TrackPlan

OWNER = Owner(name="iris", namespace="ml", uid="uid-1")
IMAGE = "ghcr.io/canaryml/canaryml:0.1.0"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}
SHADOW = {"uri": "s3://models/iris/2.0.0", "version": "2.0.0"}


def spec(**fields: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec({"model": STABLE, **fields})


def by_key(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def build(value: api.ModelDeploymentSpec, plan: TrackPlan | None = None) -> dict[Any, Any]:
    return by_key(children.build_children(owner=OWNER, spec=value, image=IMAGE, plan=plan))


def test_the_builtin_router_is_the_default_and_the_main_service_points_at_it() -> None:
    built = build(spec(canary={"model": CANARY}))

    assert {key for key in built if "router" in key[1]} == {
        ("ServiceAccount", "iris-router"),
        ("Role", "iris-router"),
        ("RoleBinding", "iris-router"),
        ("Deployment", "iris-router"),
    }
    service = built[("Service", "iris")]
    router = built[("Deployment", "iris-router")]
    assert service["spec"]["selector"] == router["spec"]["selector"]["matchLabels"]
    assert router["spec"]["template"]["metadata"]["labels"].items() >= (
        service["spec"]["selector"].items()
    )


def test_the_routers_role_reads_only_its_own_model_deployment() -> None:
    role = build(spec())[("Role", "iris-router")]

    assert role["rules"] == [
        {
            "apiGroups": ["canaryml.dev"],
            "resources": ["modeldeployments"],
            "resourceNames": ["iris"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    binding = build(spec())[("RoleBinding", "iris-router")]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "iris-router",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "iris-router", "namespace": "ml"}
    ]


def test_the_router_follows_its_model_deployment_as_its_service_account() -> None:
    router = build(spec(routing={"replicas": 2}))[("Deployment", "iris-router")]
    pod = router["spec"]["template"]["spec"]
    container = pod["containers"][0]
    env = {item["name"]: item for item in container["env"]}

    assert router["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == "iris-router"
    assert pod["automountServiceAccountToken"] is True
    assert container["args"] == ["router", "--follow"]
    assert env["CANARYML_MODEL_DEPLOYMENT"]["value"] == "iris"
    assert env["CANARYML_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert all(isinstance(item.get("value", ""), str) for item in container["env"])


def test_the_router_does_not_change_with_the_weight_it_reads_from_the_status() -> None:
    value = spec(canary={"model": CANARY})
    at_5 = build(value, TrackPlan(value.model, 1, 5))
    at_50 = build(value, TrackPlan(value.model, 1, 50))

    assert at_5[("Deployment", "iris-router")] == at_50[("Deployment", "iris-router")]


@pytest.mark.parametrize("router", ["none", "gateway-api"])
def test_without_the_builtin_router_the_main_service_selects_the_stable_pods(router: str) -> None:
    built = build(spec(routing={"router": router}))

    assert not any(key[1] == "iris-router" for key in built)
    assert built[("Service", "iris")]["spec"]["selector"] == children.selector_labels(
        "iris", "stable"
    )


def test_the_http_route_splits_by_the_canary_weight_and_mirrors_to_the_shadow() -> None:
    value = spec(
        canary={"model": CANARY},
        shadow={"model": SHADOW, "percent": 30},
        routing={"router": "gateway-api"},
    )
    route = build(value, TrackPlan(value.model, 1, 25))[("HTTPRoute", "iris")]

    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    (rule,) = route["spec"]["rules"]
    assert rule["backendRefs"] == [
        {"name": "iris-stable", "port": 80, "weight": 75},
        {"name": "iris-canary", "port": 80, "weight": 25},
    ]
    assert rule["filters"] == [
        {
            "type": "RequestMirror",
            "requestMirror": {"backendRef": {"name": "iris-shadow", "port": 80}, "percent": 30},
        }
    ]
    # No gateway named: the route attaches to the resource's Service (Gateway API mesh).
    assert route["spec"]["parentRefs"] == [
        {"group": "", "kind": "Service", "name": "iris", "port": 80}
    ]


def test_the_http_route_attaches_to_the_named_gateways() -> None:
    value = spec(
        routing={
            "router": "gateway-api",
            "parentRefs": [{"name": "public", "namespace": "gateways", "sectionName": "https"}],
        }
    )
    route = build(value)[("HTTPRoute", "iris")]

    assert route["spec"]["parentRefs"] == [
        {
            "group": "gateway.networking.k8s.io",
            "kind": "Gateway",
            "name": "public",
            "namespace": "gateways",
            "sectionName": "https",
        }
    ]
    assert route["spec"]["rules"][0]["backendRefs"] == [
        {"name": "iris-stable", "port": 80, "weight": 100}
    ]
    assert "filters" not in route["spec"]["rules"][0]


def test_a_new_weight_changes_the_routes_hash() -> None:
    value = spec(canary={"model": CANARY}, routing={"router": "gateway-api"})
    at_5 = build(value, TrackPlan(value.model, 1, 5))[("HTTPRoute", "iris")]
    at_10 = build(value, TrackPlan(value.model, 1, 10))[("HTTPRoute", "iris")]

    hash_key = children.ANNOTATION_SPEC_HASH
    assert at_5["metadata"]["annotations"][hash_key] != at_10["metadata"]["annotations"][hash_key]


def test_the_plan_sets_the_stable_model_and_the_canary_replicas() -> None:
    value = spec(canary={"model": CANARY, "replicas": 3})
    promoted = api.ModelRef.model_validate(CANARY)

    built = build(value, TrackPlan(promoted, None, 0))
    stable = built[("Deployment", "iris-stable")]
    env = {
        e["name"]: e.get("value")
        for e in stable["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CANARYML_MODEL_VERSION"] == "1.1.0"
    assert ("Deployment", "iris-canary") not in built
    assert ("Service", "iris-canary") not in built

    scaled = build(value, TrackPlan(value.model, 0, 0))
    assert scaled[("Deployment", "iris-canary")]["spec"]["replicas"] == 0
    assert ("Service", "iris-canary") in scaled


def test_a_mirror_percent_the_server_dropped_is_not_drift_but_another_value_is() -> None:
    """Gateway API CRDs before v1.3 prune requestMirror.percent (docs/operator.md)."""
    value = spec(
        canary={"model": CANARY},
        shadow={"model": SHADOW, "percent": 30},
        routing={"router": "gateway-api"},
    )
    route = build(value, TrackPlan(value.model, 1, 25))[("HTTPRoute", "iris")]
    assert children.is_current(live=route, desired=route)
    pruned = copy.deepcopy(route)
    del pruned["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"]
    assert children.is_current(live=pruned, desired=route)
    edited = copy.deepcopy(route)
    edited["spec"]["rules"][0]["filters"][0]["requestMirror"]["percent"] = 100
    assert not children.is_current(live=edited, desired=route)
    # Only that field: a mirror whose backend was removed by hand is still drift.
    unmirrored = copy.deepcopy(route)
    del unmirrored["spec"]["rules"][0]["filters"][0]["requestMirror"]["backendRef"]
    assert not children.is_current(live=unmirrored, desired=route)
