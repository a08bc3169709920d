"""The chart's RBAC is exactly what the operator uses: every API call covered, nothing more.

The list of calls is not written down anywhere: the real operator (kopf, its handlers, the
analysis daemon) runs against the API emulator through a scenario that takes every path that
touches the API (each router, each track added and removed, hand edits put back, a command
annotation, Prometheus credentials from a Secret, Events, kopf peering), and every request it
makes is recorded. Each request becomes an RBAC permission (API group, resource, verb); the
permissions the chart grants must be that set, neither more nor less.

Discovery (/api, /apis/GROUP/VERSION) needs no rule: every authenticated user may read it.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kmock
import pytest
from canaryml_operator import metrics, rollout
from canaryml_testing.cluster import (
    TEST_USER_AGENT,
    Cluster,
    eventually,
    running_emulator,
    running_operator,
)

from tests.chart import find, render

PEERING = "canaryml"  # the chart's peering name: the release's full name
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
SHADOW = {"uri": "s3://models/iris/2.0.0", "version": "2.0.0", "sha256": "c" * 64}


@dataclass(frozen=True, order=True)
class Permission:
    group: str
    resource: str  # plural, or plural/subresource
    verb: str


@dataclass(frozen=True)
class Call:
    permission: Permission
    namespace: str | None  # None: a cluster-scoped request


def call_of(method: str, path: str, query: Mapping[str, str]) -> Call | None:
    """The RBAC view of one request; None for discovery and other non-resource paths."""
    parts = [part for part in path.split("/") if part]
    if parts[:1] == ["api"] and len(parts) >= 2:
        group, rest = "", parts[2:]
    elif parts[:1] == ["apis"] and len(parts) >= 3:
        group, rest = parts[1], parts[3:]
    else:
        return None
    if not rest:
        return None  # /api/v1, /apis/GROUP/VERSION: discovery
    namespace = None
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
    named = len(rest) > 1
    method = method.upper()
    if method == "GET":
        verb = "watch" if query.get("watch") in ("true", "1") else ("get" if named else "list")
    elif method == "DELETE":
        verb = "delete" if named else "deletecollection"
    else:
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update"}[method]
    return Call(Permission(group, resource, verb), namespace)


def operator_calls(emulator: kmock.KubernetesEmulator) -> list[Call]:
    calls = []
    for request in emulator:
        if request.headers.get("User-Agent") == TEST_USER_AGENT:
            continue  # the test's own calls, as kubectl would make them
        call = call_of(str(request.method.value), request.url.path, request.url.query)
        if call is not None:
            calls.append(call)
    return calls


def granted(rules: Iterable[Mapping[str, Any]]) -> set[Permission]:
    found = set()
    for rule in rules:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"a wildcard in {rule}"
                    found.add(Permission(group, resource, verb))
    return found


def declare_peerings(emulator: kmock.KubernetesEmulator) -> None:
    for plural, kind, namespaced in (
        ("clusterkopfpeerings", "ClusterKopfPeering", False),
        ("kopfpeerings", "KopfPeering", True),
    ):
        emulator.resources[f"kopf.dev/v1/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            namespaced=namespaced,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )


@pytest.fixture(autouse=True)
def short_drain(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(rollout, "DRAIN_SECONDS", 0.5)


@pytest.fixture
async def emulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cluster, kmock.KubernetesEmulator]]:
    async with running_emulator(tmp_path, monkeypatch) as (emulator, _):
        declare_peerings(emulator)
        import canaryml_operator.main  # noqa: F401  (registers the handlers)

        yield Cluster(emulator), emulator


async def exercise(cluster: Cluster, ns: str) -> None:
    """Every path of the operator that reaches the API, for resources in `ns`."""
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "prometheus-auth",
            "namespace": ns,
            "labels": {"canaryml.dev/prometheus-credentials": "true"},  # opted in
        },
        "data": {"header": base64.b64encode(b"Basic dXNlcjpwYXNz").decode()},
    }
    await cluster.call("POST", f"/api/v1/namespaces/{ns}/secrets", secret)
    # Reusable analysis: a template of each kind, read at each reconcile and analysis.
    template = {"metrics": [{"name": "upstream-errors", "query": "sum(errors)", "max": 1}]}
    await cluster.call(
        "POST",
        f"/apis/canaryml.dev/v1alpha1/namespaces/{ns}/analysistemplates",
        {"kind": "AnalysisTemplate", "metadata": {"name": "errors"}, "spec": template},
    )
    await cluster.call(
        "POST",
        "/apis/canaryml.dev/v1alpha1/clusteranalysistemplates",
        {
            "kind": "ClusterAnalysisTemplate",
            "metadata": {"name": f"slo-{ns}"},
            "spec": {"metrics": [{"name": "slo", "query": "sum(slo)", "max": 1}]},
        },
    )
    spec = {
        "model": STABLE,
        "canary": {"model": CANARY, "steps": [10, 50], "stepInterval": "1h"},
        "shadow": {"model": SHADOW},
        "analysis": {
            "prometheus": {
                "url": "http://127.0.0.1:9",  # refused at once: Error analyses
                "timeout": "1s",
                "authorizationSecretRef": {"name": "prometheus-auth", "key": "header"},
            },
            "interval": "1s",
            "templates": [
                {"name": "errors"},
                {"name": f"slo-{ns}", "kind": "ClusterAnalysisTemplate"},
            ],
        },
        "routing": {"router": "builtin"},
        "serving": {"replicas": 2},  # a PodDisruptionBudget for the stable track
    }
    await cluster.apply(ns, "iris", spec)
    for track in ("stable", "canary", "shadow", "router"):
        await eventually(lambda t=track: cluster.get("Deployment", ns, f"iris-{t}"), what=track)
        await cluster.roll_out(ns, f"iris-{track}")

    async def last_analysis() -> dict[str, Any]:
        found = await cluster.get("ModelDeployment", ns, "iris") or {}
        return dict((found.get("status") or {}).get("lastAnalysis") or {})

    # The analysis read the Secret, then could not reach Prometheus.
    analysis = await eventually(last_analysis, what="an analysis")
    assert analysis["verdict"] == "Error" and "127.0.0.1:9" in " ".join(analysis["reasons"])

    # Hand edits of the router's identity are put back at the next reconcile.
    rbac = "/apis/rbac.authorization.k8s.io/v1/namespaces"
    await cluster.patch("ServiceAccount", ns, "iris-router", {"automountServiceAccountToken": True})
    await cluster.call(
        "PATCH", f"{rbac}/{ns}/roles/iris-router", {"rules": [{"apiGroups": [""], "verbs": []}]}
    )
    intruder = {"kind": "ServiceAccount", "name": "intruder", "namespace": ns}
    await cluster.call("PATCH", f"{rbac}/{ns}/rolebindings/iris-router", {"subjects": [intruder]})
    # And of the safeguards: a NetworkPolicy opened to all, a PodDisruptionBudget loosened.
    await cluster.patch("NetworkPolicy", ns, "iris-model-servers", {"spec": {"ingress": [{}]}})
    await cluster.patch("PodDisruptionBudget", ns, "iris-stable", {"spec": {"maxUnavailable": 2}})
    await cluster.apply(ns, "iris", {**spec, "routing": {"router": "builtin", "replicas": 2}})
    await eventually(
        lambda: cluster.get("NetworkPolicy", ns, "iris-model-servers"),
        until=lambda found: found is not None and "from" in found["spec"]["ingress"][0],
        what="the model servers' NetworkPolicy put back",
    )
    await eventually(
        lambda: cluster.get("PodDisruptionBudget", ns, "iris-stable"),
        until=lambda found: found is not None and found["spec"]["maxUnavailable"] == 1,
        what="the stable track's PodDisruptionBudget put back",
    )
    await eventually(  # created with the router's second replica
        lambda: cluster.get("PodDisruptionBudget", ns, "iris-router"),
        what="the router's PodDisruptionBudget",
    )
    await eventually(
        lambda: cluster.get("ServiceAccount", ns, "iris-router"),
        until=lambda found: found is not None and found["automountServiceAccountToken"] is False,
        what="the router's ServiceAccount put back",
    )
    await eventually(
        lambda: cluster.call("GET", f"{rbac}/{ns}/rolebindings/iris-router"),
        until=lambda found: found["subjects"][0]["name"] == "iris-router",
        what="the router's RoleBinding put back",
    )
    await eventually(
        lambda: cluster.call("GET", f"{rbac}/{ns}/roles/iris-router"),
        until=lambda found: found["rules"][0]["verbs"] == ["get", "list", "watch"],
        what="the router's Role put back",
    )

    # Autoscaling: the stable track's HorizontalPodAutoscaler created, changed, then deleted.
    hpa = "HorizontalPodAutoscaler"
    for bounds in ({"minReplicas": 2, "maxReplicas": 4}, {"minReplicas": 2, "maxReplicas": 5}):
        scaled = {**spec, "serving": {"replicas": 2, "autoscaling": bounds}}
        await cluster.apply(ns, "iris", scaled)
        await eventually(
            lambda: cluster.get(hpa, ns, "iris-stable"),
            until=lambda found, b=bounds: (
                found is not None and found["spec"]["maxReplicas"] == b["maxReplicas"]
            ),
            what="the stable track's HorizontalPodAutoscaler",
        )
    await cluster.apply(ns, "iris", {**spec, "serving": {"replicas": 2, "autoscaling": None}})
    await eventually(
        lambda: cluster.get(hpa, ns, "iris-stable"),
        until=lambda found: found is None,
        what="the HorizontalPodAutoscaler deleted",
    )

    # The gateway-api router: an HTTPRoute instead of the router Deployment.
    gateway = {**spec, "routing": {"router": "gateway-api"}}
    await cluster.apply(ns, "iris", gateway)
    await eventually(lambda: cluster.get("HTTPRoute", ns, "iris"), what="the HTTPRoute")
    await eventually(
        lambda: cluster.get("Deployment", ns, "iris-router"),
        until=lambda found: found is None,
        what="the router Deployment deleted",
    )
    for kind in ("PodDisruptionBudget", "NetworkPolicy"):  # no gateway peers: no policy
        await eventually(
            lambda k=kind: cluster.get(k, ns, "iris-router"),
            until=lambda found: found is None,
            what=f"the router's {kind} deleted",
        )
    # A command annotation: handled (recorded in the status); the route's weights follow.
    await cluster.patch(
        "ModelDeployment",
        ns,
        "iris",
        {"metadata": {"annotations": {rollout.COMMAND_ANNOTATIONS["abort"]: "1.1.0"}}},
    )
    await eventually(
        lambda: cluster.get("ModelDeployment", ns, "iris"),
        until=lambda found: (
            found is not None
            and (found.get("status") or {})
            .get("handledCommands", {})
            .get(rollout.COMMAND_ANNOTATIONS["abort"])
            == "1.1.0"
        ),
        what="the abort command handled",
    )

    # Back to builtin (the HTTPRoute goes), then no canary (its Deployment and Service go).
    await cluster.apply(ns, "iris", {**spec, "canary": None})
    await eventually(
        lambda: cluster.get("HTTPRoute", ns, "iris"),
        until=lambda found: found is None,
        what="the HTTPRoute deleted",
    )
    await eventually(
        lambda: cluster.get("Service", ns, "iris-canary"),
        until=lambda found: found is None,
        what="the canary's Service deleted",
    )
    await cluster.delete("ModelDeployment", ns, "iris")

    async def series_left() -> float | None:
        labels = {"namespace": ns, "model_deployment": "iris"}
        return metrics.REGISTRY.get_sample_value("canaryml_operator_canary_weight", labels)

    # The operator has handled the deletion once its event handler dropped the series.
    await eventually(series_left, until=lambda value: value is None, what="the deletion handled")


def mismatch(used: set[Permission], rules: set[Permission]) -> str:
    missing = sorted(used - rules)
    unused = sorted(rules - used)
    return f"used but not granted: {missing}; granted but never used: {unused}"


async def test_cluster_wide_rbac_is_exactly_the_calls_made(
    emulated: tuple[Cluster, kmock.KubernetesEmulator],
) -> None:
    cluster, emulator = emulated
    await cluster.call(
        "POST",
        "/apis/kopf.dev/v1/clusterkopfpeerings",
        {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering", "metadata": {"name": PEERING}},
    )
    async with running_operator(clusterwide=True, standalone=False, peering_name=PEERING):
        await exercise(cluster, "ml")

    used = {call.permission for call in operator_calls(emulator)}
    chart = render(values={"replicas": 2})
    (role,) = find(chart, "ClusterRole")
    assert not find(chart, "Role")
    assert used == granted(role["rules"]), mismatch(used, granted(role["rules"]))

    # One replica runs standalone: the same rules without peering.
    (single,) = find(render(), "ClusterRole")
    peering = {p for p in granted(role["rules"]) if p.group == "kopf.dev"}
    assert peering and granted(single["rules"]) == granted(role["rules"]) - peering


async def test_namespaced_rbac_is_exactly_the_calls_made_in_each_namespace(
    emulated: tuple[Cluster, kmock.KubernetesEmulator],
) -> None:
    cluster, emulator = emulated
    namespaces = ["ml-a", "ml-b"]
    for ns in namespaces:
        await cluster.call(
            "POST",
            f"/apis/kopf.dev/v1/namespaces/{ns}/kopfpeerings",
            {"apiVersion": "kopf.dev/v1", "kind": "KopfPeering", "metadata": {"name": PEERING}},
        )
    async with running_operator(
        clusterwide=False, namespaces=namespaces, standalone=False, peering_name=PEERING
    ):
        await exercise(cluster, "ml-b")

    calls = operator_calls(emulator)
    chart = render(values={"replicas": 2, "watchNamespaces": "{ml-a,ml-b}"})
    # The one cluster-scoped call: ClusterAnalysisTemplates read, granted by a ClusterRole of
    # their own (bound to the operator's account).
    (cluster_role,) = find(chart, "ClusterRole")
    (cluster_binding,) = find(chart, "ClusterRoleBinding")
    assert cluster_binding["roleRef"]["name"] == cluster_role["metadata"]["name"]
    cluster_wide = {c.permission for c in calls if c.namespace is None}
    assert cluster_wide == granted(cluster_role["rules"]), mismatch(
        cluster_wide, granted(cluster_role["rules"])
    )
    assert cluster_wide == {Permission("canaryml.dev", "clusteranalysistemplates", "get")}
    calls = [c for c in calls if c.namespace is not None]
    assert {c.namespace for c in calls} == set(namespaces)  # kopf watches both
    roles = {role["metadata"]["namespace"]: role for role in find(chart, "Role")}
    assert set(roles) == set(namespaces)
    # ml-b saw the whole scenario; ml-a only kopf's watches and peering, which the same rules
    # cover (one Role for every namespace, as the resources may be anywhere among them).
    used = {c.permission for c in calls if c.namespace == "ml-b"}
    assert used == granted(roles["ml-b"]["rules"]), mismatch(used, granted(roles["ml-b"]["rules"]))
    assert granted(roles["ml-a"]["rules"]) == granted(roles["ml-b"]["rules"])
    assert {c.permission for c in calls if c.namespace == "ml-a"} <= used
