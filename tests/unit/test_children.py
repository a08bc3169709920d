"""The builders of a ModelDeployment's children, and how a live child is judged current."""

from __future__ import annotations

import copy
import re
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import children
from canaryml_operator.children import ANNOTATION_SPEC_HASH
from canaryml_operator.state import Owner

OWNER = Owner(name="iris", namespace="ml", uid="0b6c1f5e-1111-4222-8333-944455556666")
IMAGE = "ghcr.io/canaryml/canaryml:0.1.0"
SHA = "c" * 64

STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}
SHADOW = {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"}

# What Kubernetes allows as a label value and as a Service name (a DNS-1035 label).
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?$")
DNS_1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")


def spec(**fields: Any) -> api.ModelDeploymentSpec:
    """A spec with the model tracks only: no router unless `routing` names one."""
    fields.setdefault("routing", {"router": "none"})
    return api.parse_spec({"model": STABLE, **fields})


def full_spec(**fields: Any) -> api.ModelDeploymentSpec:
    """Stable, canary and shadow, with distinct replica counts; `fields` replace or add."""
    serving = {"replicas": 4, **fields.pop("serving", {})}
    return spec(
        canary={"model": CANARY, "replicas": 2},
        shadow={"model": SHADOW, "replicas": 3},
        serving=serving,
        **fields,
    )


def build(value: api.ModelDeploymentSpec, image: str = IMAGE) -> list[dict[str, Any]]:
    return children.build_children(owner=OWNER, spec=value, image=image)


def by_key(manifests: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(m["kind"], m["metadata"]["name"]): m for m in manifests}


def deployment(manifests: list[dict[str, Any]], track: str) -> dict[str, Any]:
    return by_key(manifests)[("Deployment", f"{OWNER.name}-{track}")]


def container(manifest: dict[str, Any]) -> dict[str, Any]:
    containers = manifest["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    result: dict[str, Any] = containers[0]
    return result


def env(manifest: dict[str, Any]) -> dict[str, str]:
    return {item["name"]: item["value"] for item in container(manifest)["env"]}


def spec_hash_of(manifest: dict[str, Any]) -> str:
    value: str = manifest["metadata"]["annotations"][ANNOTATION_SPEC_HASH]
    return value


# --- which children ---------------------------------------------------------------------------


def test_a_stable_only_spec_gives_a_deployment_and_service_plus_the_main_service() -> None:
    assert [(m["kind"], m["metadata"]["name"]) for m in build(spec())] == [
        ("Deployment", "iris-stable"),
        ("Service", "iris-stable"),
        ("Service", "iris"),
    ]


def test_a_canary_and_a_shadow_add_a_deployment_and_a_service_each() -> None:
    assert [(m["kind"], m["metadata"]["name"]) for m in build(full_spec())] == [
        ("Deployment", "iris-stable"),
        ("Service", "iris-stable"),
        ("Deployment", "iris-canary"),
        ("Service", "iris-canary"),
        ("Deployment", "iris-shadow"),
        ("Service", "iris-shadow"),
        ("Service", "iris"),
    ]


def test_api_versions_are_the_stable_kubernetes_ones() -> None:
    for manifest in build(full_spec()):
        expected = "apps/v1" if manifest["kind"] == "Deployment" else "v1"
        assert manifest["apiVersion"] == expected


def test_every_child_lives_in_the_owners_namespace_and_is_controlled_by_it() -> None:
    for manifest in build(full_spec()):
        assert manifest["metadata"]["namespace"] == "ml"
        assert manifest["metadata"]["ownerReferences"] == [
            {
                "apiVersion": "canaryml.dev/v1alpha1",
                "kind": "ModelDeployment",
                "name": "iris",
                "uid": OWNER.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ]


# --- labels and selectors ---------------------------------------------------------------------


def test_every_child_carries_the_recommended_labels() -> None:
    for manifest in build(full_spec()):
        labels = manifest["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "canaryml-model"
        assert labels["app.kubernetes.io/instance"] == "iris"
        assert labels["app.kubernetes.io/part-of"] == "canaryml"
        assert labels["app.kubernetes.io/managed-by"] == "canaryml-operator"
        assert labels["canaryml.dev/model-deployment"] == "iris"


@pytest.mark.parametrize(
    ("track", "version"), [("stable", "1.0.0"), ("canary", "1.1.0"), ("shadow", "2.0.0")]
)
def test_track_children_are_labelled_with_their_track_and_version(track: str, version: str) -> None:
    manifests = by_key(build(full_spec()))
    for kind in ("Deployment", "Service"):
        labels = manifests[(kind, f"iris-{track}")]["metadata"]["labels"]
        assert labels["canaryml.dev/track"] == track
        assert labels["app.kubernetes.io/version"] == version
        assert labels["app.kubernetes.io/component"] == f"{track}-model-server"
    pod_labels = manifests[("Deployment", f"iris-{track}")]["spec"]["template"]["metadata"]
    assert pod_labels["labels"]["canaryml.dev/track"] == track
    assert pod_labels["labels"]["app.kubernetes.io/version"] == version


def test_the_main_service_is_the_endpoint_and_has_no_track() -> None:
    labels = by_key(build(full_spec()))[("Service", "iris")]["metadata"]["labels"]

    assert labels["app.kubernetes.io/component"] == "endpoint"
    assert "canaryml.dev/track" not in labels


@pytest.mark.parametrize("track", ["stable", "canary", "shadow"])
def test_selectors_name_the_resource_and_track_but_never_the_version(track: str) -> None:
    manifests = by_key(build(full_spec()))
    expected = {"canaryml.dev/model-deployment": "iris", "canaryml.dev/track": track}
    dep = manifests[("Deployment", f"iris-{track}")]

    assert dep["spec"]["selector"] == {"matchLabels": expected}
    assert manifests[("Service", f"iris-{track}")]["spec"]["selector"] == expected
    # A Deployment's selector must select its own pods.
    assert expected.items() <= dep["spec"]["template"]["metadata"]["labels"].items()


def test_the_main_service_sends_traffic_to_the_stable_pods() -> None:
    main = by_key(build(full_spec()))[("Service", "iris")]

    assert main["spec"]["selector"] == {
        "canaryml.dev/model-deployment": "iris",
        "canaryml.dev/track": "stable",
    }


def test_a_new_model_version_keeps_the_immutable_selector() -> None:
    before = deployment(build(spec()), "stable")
    after = deployment(build(spec(model={**STABLE, "version": "2.0.0"})), "stable")

    assert before["spec"]["selector"] == after["spec"]["selector"]
    assert (
        before["spec"]["template"]["metadata"]["labels"]
        != after["spec"]["template"]["metadata"]["labels"]
    )


def test_services_expose_port_80_onto_the_named_container_port() -> None:
    for manifest in build(full_spec()):
        if manifest["kind"] == "Service":
            assert manifest["spec"]["type"] == "ClusterIP"
            assert manifest["spec"]["ports"] == [
                {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
            ]


def test_ordinary_names_and_versions_make_valid_service_names_and_label_values() -> None:
    for manifest in build(full_spec()):
        labels = dict(manifest["metadata"]["labels"])
        if manifest["kind"] == "Service":
            assert DNS_1035_LABEL.match(manifest["metadata"]["name"])
        else:
            labels.update(manifest["spec"]["template"]["metadata"]["labels"])
        assert all(LABEL_VALUE.match(value) for value in labels.values()), labels


@pytest.mark.parametrize("version", ["1.0.0+build.7", "2024.05-"])
def test_every_version_the_api_accepts_makes_valid_label_values(version: str) -> None:
    manifests = build(spec(model={**STABLE, "version": version}))

    for manifest in manifests:
        labels = dict(manifest["metadata"]["labels"])
        if manifest["kind"] == "Deployment":
            labels.update(manifest["spec"]["template"]["metadata"]["labels"])
        for value in labels.values():
            assert LABEL_VALUE.match(value), f"{value!r} is not a valid label value"


@pytest.mark.parametrize("name", ["iris.v2", "a" * 60])
def test_a_name_kubernetes_accepts_gives_valid_children_or_a_clear_refusal(name: str) -> None:
    owner = Owner(name=name, namespace="ml", uid=OWNER.uid)
    try:
        manifests = children.build_children(owner=owner, spec=full_spec(), image=IMAGE)
    except ValueError as refusal:
        assert name in str(refusal)
        return
    for manifest in manifests:
        if manifest["kind"] == "Service":
            assert DNS_1035_LABEL.match(manifest["metadata"]["name"])
        for value in manifest["metadata"]["labels"].values():
            assert LABEL_VALUE.match(value), f"{value!r} is not a valid label value"


# --- the model server container -------------------------------------------------------------


def test_the_container_is_told_its_model_track_and_resource() -> None:
    variables = env(deployment(build(full_spec()), "canary"))

    assert variables["CANARYML_MODEL_URI"] == "s3://models/iris/1.1.0"
    assert variables["CANARYML_MODEL_VERSION"] == "1.1.0"
    assert variables["CANARYML_TRACK"] == "canary"
    assert variables["CANARYML_MODEL_DEPLOYMENT"] == "iris"
    assert variables["CANARYML_PORT"] == "8080"
    assert "CANARYML_MODEL_SHA256" not in variables


def test_the_digest_is_passed_on_only_when_the_spec_sets_it() -> None:
    manifests = build(spec(model={**STABLE, "sha256": SHA}, canary={"model": CANARY}))

    assert env(deployment(manifests, "stable"))["CANARYML_MODEL_SHA256"] == SHA
    assert "CANARYML_MODEL_SHA256" not in env(deployment(manifests, "canary"))


def test_every_env_value_is_a_string() -> None:
    for manifest in build(full_spec()):
        if manifest["kind"] == "Deployment":
            assert all(isinstance(item["value"], str) for item in container(manifest)["env"])


def test_the_container_runs_serve_from_the_operator_image_by_default() -> None:
    server = container(deployment(build(spec()), "stable"))

    assert server["image"] == IMAGE
    assert server["args"] == ["serve"]
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]


def test_the_serving_image_overrides_the_operator_image_on_every_track() -> None:
    manifests = build(full_spec(serving={"image": "registry.local/my-server:7"}))

    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            assert container(manifest)["image"] == "registry.local/my-server:7"


def test_probes_use_the_open_inference_protocol_health_endpoints() -> None:
    server = container(deployment(build(spec()), "stable"))

    assert server["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert server["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    assert server["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = server["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300  # slow downloads


def test_the_container_runs_locked_down() -> None:
    manifest = deployment(build(spec()), "stable")
    context = container(manifest)["securityContext"]
    pod = manifest["spec"]["template"]["spec"]

    assert context["runAsNonRoot"] is True
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert context["runAsUser"] != 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False


def test_writable_paths_are_empty_dirs_because_the_root_filesystem_is_read_only() -> None:
    manifest = deployment(build(spec()), "stable")
    mounts = {m["mountPath"]: m["name"] for m in container(manifest)["volumeMounts"]}
    volumes = {v["name"]: v for v in manifest["spec"]["template"]["spec"]["volumes"]}

    assert set(mounts) == {"/tmp", env(manifest)["CANARYML_MODEL_CACHE_DIR"]}
    assert all("emptyDir" in volumes[name] for name in mounts.values())


def test_the_pod_template_asks_prometheus_to_scrape_metrics() -> None:
    annotations = deployment(build(spec()), "stable")["spec"]["template"]["metadata"]["annotations"]

    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "8080"
    assert annotations["prometheus.io/path"] == "/metrics"


def test_rollouts_never_drop_capacity() -> None:
    strategy = deployment(build(spec()), "stable")["spec"]["strategy"]

    assert strategy == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
    }


def test_resources_default_to_modest_requests_and_a_memory_limit() -> None:
    resources = container(deployment(build(spec()), "stable"))["resources"]

    assert resources == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


def test_given_resources_apply_to_every_track() -> None:
    given = {"requests": {"cpu": "2", "memory": "4Gi"}, "limits": {"cpu": 4, "memory": "8Gi"}}
    manifests = build(full_spec(serving={"resources": given}))

    for manifest in manifests:
        if manifest["kind"] == "Deployment":
            assert container(manifest)["resources"] == given


def test_the_default_resources_are_copied_not_shared() -> None:
    first = container(deployment(build(spec()), "stable"))
    first["resources"]["requests"]["cpu"] = "64"

    again = container(deployment(build(spec()), "stable"))
    assert again["resources"]["requests"]["cpu"] == "100m"


def test_a_pvc_uri_becomes_a_read_only_claim_mount_and_a_local_path() -> None:
    manifest = deployment(
        build(spec(model={**STABLE, "uri": "pvc://model-store/iris/1.0.0"})), "stable"
    )
    pod = manifest["spec"]["template"]["spec"]
    claims = [v for v in pod["volumes"] if "persistentVolumeClaim" in v]
    mounts = {m["name"]: m for m in container(manifest)["volumeMounts"]}

    assert len(claims) == 1
    assert claims[0]["persistentVolumeClaim"] == {"claimName": "model-store", "readOnly": True}
    mount = mounts[claims[0]["name"]]
    assert mount["readOnly"] is True
    assert env(manifest)["CANARYML_MODEL_URI"] == f"{mount['mountPath']}/iris/1.0.0"
    assert env(manifest)["CANARYML_MODEL_URI"].startswith("/")


def test_other_uris_are_passed_through_without_extra_volumes() -> None:
    manifest = deployment(build(spec()), "stable")

    assert env(manifest)["CANARYML_MODEL_URI"] == STABLE["uri"]
    assert not any(
        "persistentVolumeClaim" in v for v in manifest["spec"]["template"]["spec"]["volumes"]
    )


def test_each_track_gets_its_own_replica_count() -> None:
    manifests = build(full_spec())

    assert deployment(manifests, "stable")["spec"]["replicas"] == 4
    assert deployment(manifests, "canary")["spec"]["replicas"] == 2
    assert deployment(manifests, "shadow")["spec"]["replicas"] == 3


# --- the spec hash and determinism ----------------------------------------------------------


def test_building_twice_gives_equal_children() -> None:
    assert build(full_spec()) == build(full_spec())


def test_every_child_carries_a_spec_hash() -> None:
    for manifest in build(full_spec()):
        assert re.fullmatch(r"[0-9a-f]{16}", spec_hash_of(manifest))


def test_a_new_model_version_changes_the_hash_of_that_track_only() -> None:
    before = by_key(build(full_spec()))
    after = by_key(build(full_spec(model={**STABLE, "version": "1.0.1"})))

    changed = {key for key in before if spec_hash_of(before[key]) != spec_hash_of(after[key])}
    assert changed == {("Deployment", "iris-stable"), ("Service", "iris-stable")}


@pytest.mark.parametrize(
    "other",
    [
        {"paused": True},
        {"analysis": {"thresholds": {"maxErrorRate": 0.01}}},
        {"routing": {"router": "none", "stickyHeader": "x-user-id"}},
    ],
)
def test_fields_the_children_do_not_use_leave_the_hashes_alone(other: dict[str, Any]) -> None:
    before = build(full_spec())
    after = build(full_spec(**other))

    assert [spec_hash_of(m) for m in before] == [spec_hash_of(m) for m in after]


def test_canary_steps_do_not_restart_the_canary_pods() -> None:
    before = deployment(build(spec(canary={"model": CANARY, "steps": [10, 50]})), "canary")
    after = deployment(build(spec(canary={"model": CANARY, "steps": [5, 20, 60]})), "canary")

    assert spec_hash_of(before) == spec_hash_of(after)


def test_replicas_image_and_resources_change_the_hash() -> None:
    base = spec_hash_of(deployment(build(spec()), "stable"))

    assert spec_hash_of(deployment(build(spec(serving={"replicas": 3})), "stable")) != base
    assert spec_hash_of(deployment(build(spec(), image="other:1"), "stable")) != base
    resources = {"requests": {"cpu": "1"}}
    assert spec_hash_of(deployment(build(spec(serving={"resources": resources})), "stable")) != base


# --- contains and is_current ----------------------------------------------------------------


def as_live(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest as the API server returns it: defaults, status and bookkeeping added."""
    live = copy.deepcopy(manifest)
    meta = live["metadata"]
    meta.update(
        uid="d-uid", resourceVersion="4711", generation=2, creationTimestamp="2024-05-01T00:00:00Z"
    )
    meta["annotations"]["deployment.kubernetes.io/revision"] = "2"
    meta["labels"]["added-by-someone"] = "yes"
    if live["kind"] == "Deployment":
        live["spec"]["progressDeadlineSeconds"] = 600
        pod = live["spec"]["template"]["spec"]
        pod.update(
            restartPolicy="Always", dnsPolicy="ClusterFirst", schedulerName="default-scheduler"
        )
        server = pod["containers"][0]
        server.update(imagePullPolicy="IfNotPresent", terminationMessagePath="/dev/termination-log")
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            server[probe]["successThreshold"] = 1
            server[probe]["httpGet"]["scheme"] = "HTTP"
        live["status"] = {"replicas": 1, "availableReplicas": 1, "observedGeneration": 2}
    else:
        live["spec"].update(
            clusterIP="10.96.0.10", clusterIPs=["10.96.0.10"], sessionAffinity="None"
        )
        live["status"] = {"loadBalancer": {}}
    return live


@pytest.mark.parametrize("index", range(7))
def test_a_live_child_with_server_defaults_is_current(index: int) -> None:
    desired = build(full_spec())[index]

    assert children.is_current(live=as_live(desired), desired=desired)


def test_a_child_is_current_against_itself() -> None:
    for manifest in build(full_spec()):
        assert children.is_current(live=manifest, desired=manifest)


def test_changed_replicas_are_not_current() -> None:
    desired = deployment(build(spec()), "stable")
    live = as_live(desired)
    live["spec"]["replicas"] = 5

    assert not children.is_current(live=live, desired=desired)


def test_an_extra_env_var_is_not_current() -> None:
    desired = deployment(build(spec()), "stable")
    live = as_live(desired)
    container(live)["env"].append({"name": "DEBUG", "value": "1"})

    assert not children.is_current(live=live, desired=desired)


def test_a_changed_env_value_is_not_current() -> None:
    desired = deployment(build(spec()), "stable")
    live = as_live(desired)
    container(live)["env"][0]["value"] = "s3://somewhere/else"

    assert not children.is_current(live=live, desired=desired)


def test_a_changed_service_selector_is_not_current() -> None:
    desired = by_key(build(spec()))[("Service", "iris")]
    live = as_live(desired)
    live["spec"]["selector"]["canaryml.dev/track"] = "canary"

    assert not children.is_current(live=live, desired=desired)


def test_normalised_resource_quantities_with_the_same_hash_are_current() -> None:
    given = {"requests": {"cpu": "0.5", "memory": "1Gi"}, "limits": {"cpu": 1}}
    desired = deployment(build(spec(serving={"resources": given})), "stable")
    live = as_live(desired)
    container(live)["resources"] = {
        "requests": {"cpu": "500m", "memory": "1Gi"},
        "limits": {"cpu": "1"},
    }

    assert children.is_current(live=live, desired=desired)


def test_a_different_hash_is_not_current_even_if_the_fields_match() -> None:
    desired = deployment(build(spec()), "stable")
    live = as_live(desired)
    live["metadata"]["annotations"][ANNOTATION_SPEC_HASH] = "0" * 16

    assert not children.is_current(live=live, desired=desired)


def test_a_live_child_without_annotations_is_not_current() -> None:
    desired = deployment(build(spec()), "stable")
    live = as_live(desired)
    del live["metadata"]["annotations"]

    assert not children.is_current(live=live, desired=desired)


@pytest.mark.parametrize(
    ("live", "desired", "expected"),
    [
        ({"a": 1, "b": 2}, {"a": 1}, True),
        ({"a": 1}, {"a": 1, "b": 2}, False),
        ({"a": {"b": 1, "c": 2}}, {"a": {"b": 1}}, True),
        ({"a": {}}, {"a": {}}, True),
        ({"a": "x"}, {"a": {}}, False),
        ([1, 2], [1, 2], True),
        ([1, 2, 3], [1, 2], False),
        ([2, 1], [1, 2], False),
        ([{"a": 1, "z": 0}], [{"a": 1}], True),
        ({"a": None}, {"a": 0}, False),
        ("1", 1, False),
    ],
)
def test_contains_tolerates_extra_keys_but_not_extra_items(
    live: Any, desired: Any, expected: bool
) -> None:
    assert children.contains(live, desired) is expected


def test_an_extra_key_in_a_service_selector_is_drift_and_the_patch_removes_it() -> None:
    main = by_key(build(full_spec()))[("Service", "iris")]
    live = as_live(main)
    live["spec"]["selector"]["app"] = "hijacked"  # what `kubectl patch` of the selector leaves

    assert not children.is_current(live=live, desired=main)
    patch = children.build_patch(live=live, desired=main)
    assert patch["spec"]["selector"] == {**main["spec"]["selector"], "app": None}
    assert main["spec"]["selector"].get("app") is None  # the desired manifest is not touched


def test_a_patch_of_a_child_in_shape_is_the_desired_manifest() -> None:
    for manifest in build(full_spec()):
        assert children.build_patch(live=as_live(manifest), desired=manifest) == manifest


def test_the_exact_model_version_is_kept_in_an_annotation_beside_the_sanitised_label() -> None:
    stable = deployment(build(spec(model={**STABLE, "version": "1.0.0+build.7"})), "stable")

    assert stable["metadata"]["labels"]["app.kubernetes.io/version"] == "1.0.0_build.7"
    assert stable["metadata"]["annotations"][children.ANNOTATION_MODEL_VERSION] == "1.0.0+build.7"


@pytest.mark.parametrize(
    ("name", "valid"),
    [("iris", True), ("a" * 56, True), ("a" * 57, False), ("iris.v2", False), ("2iris", False)],
)
def test_name_problem_says_why_a_name_cannot_name_the_children(name: str, valid: bool) -> None:
    problem = children.name_problem(name)

    assert (problem is None) is valid
    if problem:
        assert name in problem and "at most 56" in problem


def test_built_deployments_share_no_mutable_part_with_the_spec() -> None:
    resources = {"requests": {"cpu": "250m"}}
    value = spec(serving={"resources": resources})
    built = container(deployment(build(value), "stable"))["resources"]

    built["requests"]["cpu"] = "9"
    assert value.serving.resources == resources
    assert container(deployment(build(spec()), "stable"))["resources"] == {
        "requests": {"cpu": "100m", "memory": "256Mi"},
        "limits": {"memory": "1Gi"},
    }


# --- safeguards: topology spread, disruption budgets, network policies -----------------------

PROMETHEUS_PEER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}},
}
GATEWAY_PEER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "gw"}}}
SAFEGUARDS = children.Safeguards(metrics_peers=(PROMETHEUS_PEER,))


def guarded(
    value: api.ModelDeploymentSpec, safeguards: children.Safeguards = SAFEGUARDS
) -> dict[tuple[str, str], dict[str, Any]]:
    return by_key(
        children.build_children(owner=OWNER, spec=value, image=IMAGE, safeguards=safeguards)
    )


def matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """A LabelSelector (matchLabels, and matchExpressions with In and Exists) against labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for term in selector.get("matchExpressions", []):
        if term["operator"] == "Exists" and term["key"] not in labels:
            return False
        if term["operator"] == "In" and labels.get(term["key"]) not in term["values"]:
            return False
    return True


def pod_labels(manifest: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = manifest["spec"]["template"]["metadata"]["labels"]
    return labels


def test_a_pod_disruption_budget_for_each_deployment_of_more_than_one_replica() -> None:
    value = full_spec(routing={"router": "builtin", "replicas": 2})
    plan = children.TrackPlan(stable_model=value.model, canary_replicas=1)
    built = by_key(
        children.build_children(
            owner=OWNER, spec=value, image=IMAGE, plan=plan, safeguards=SAFEGUARDS
        )
    )

    budgets = {name: m for (kind, name), m in built.items() if kind == "PodDisruptionBudget"}
    assert set(budgets) == {"iris-stable", "iris-shadow", "iris-router"}  # the canary has one
    for name, budget in budgets.items():
        workload = built[("Deployment", name)]
        assert budget["apiVersion"] == "policy/v1"
        assert budget["spec"]["selector"] == workload["spec"]["selector"]
        assert budget["spec"]["maxUnavailable"] == 1
        assert budget["spec"]["unhealthyPodEvictionPolicy"] == "AlwaysAllow"
        assert budget["metadata"]["ownerReferences"] == workload["metadata"]["ownerReferences"]


@pytest.mark.parametrize("replicas", [0, 1])
def test_no_budget_for_one_replica_or_none_where_it_would_block_every_drain(replicas: int) -> None:
    built = guarded(spec(serving={"replicas": replicas}))

    assert not [key for key in built if key[0] == "PodDisruptionBudget"]


def test_a_drained_canary_loses_its_budget() -> None:
    value = full_spec()
    plan = children.TrackPlan(stable_model=value.model, canary_replicas=0)
    built = children.build_children(
        owner=OWNER, spec=value, image=IMAGE, plan=plan, safeguards=SAFEGUARDS
    )

    names = {m["metadata"]["name"] for m in built if m["kind"] == "PodDisruptionBudget"}
    assert names == {"iris-stable", "iris-shadow"}


def test_every_deployment_spreads_its_own_pods_softly_over_zones_then_nodes() -> None:
    built = guarded(full_spec(routing={"router": "builtin"}))

    deployments = [m for (kind, _), m in built.items() if kind == "Deployment"]
    assert len(deployments) == 4
    for manifest in deployments:
        spread = manifest["spec"]["template"]["spec"]["topologySpreadConstraints"]
        assert [c["topologyKey"] for c in spread] == [children.ZONE_KEY, children.HOST_KEY]
        for constraint in spread:
            assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"  # never unschedulable
            assert constraint["labelSelector"] == manifest["spec"]["selector"]
            assert matches(constraint["labelSelector"], pod_labels(manifest))
            assert constraint["matchLabelKeys"] == ["pod-template-hash"]


def test_scaling_never_changes_the_pod_template() -> None:
    # One replica to three and back: no restart of the track's pods.
    one = guarded(spec(serving={"replicas": 1}))[("Deployment", "iris-stable")]
    three = guarded(spec(serving={"replicas": 3}))[("Deployment", "iris-stable")]

    assert one["spec"]["template"] == three["spec"]["template"]


def test_the_spec_hash_covers_the_safeguards() -> None:
    plain = deployment(build(spec()), "stable")
    spread = guarded(spec())[("Deployment", "iris-stable")]

    assert spec_hash_of(plain) != spec_hash_of(spread)
    assert spec_hash_of(spread) == children.spec_hash(
        {
            **spread,
            "metadata": {
                **spread["metadata"],
                "annotations": {
                    k: v
                    for k, v in spread["metadata"]["annotations"].items()
                    if k != ANNOTATION_SPEC_HASH
                },
            },
        }
    )


def test_without_safeguards_the_workloads_alone() -> None:
    kinds = {m["kind"] for m in build(full_spec(routing={"router": "builtin", "replicas": 2}))}

    assert "PodDisruptionBudget" not in kinds and "NetworkPolicy" not in kinds


def policies(built: dict[tuple[str, str], dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: m for (kind, name), m in built.items() if kind == "NetworkPolicy"}


def test_the_router_takes_any_client_on_its_serving_port_only() -> None:
    built = guarded(full_spec(routing={"router": "builtin"}))

    router = policies(built)["iris-router"]["spec"]
    assert router["policyTypes"] == ["Ingress"]
    assert matches(router["podSelector"], pod_labels(built[("Deployment", "iris-router")]))
    for track in ("stable", "canary", "shadow"):
        assert not matches(
            router["podSelector"], pod_labels(deployment(list(built.values()), track))
        )
    (rule,) = router["ingress"]
    assert "from" not in rule  # the entry: any client
    assert rule["ports"] == [{"port": 8080, "protocol": "TCP"}]


def test_the_model_servers_take_traffic_only_from_their_router_and_prometheus() -> None:
    built = guarded(full_spec(routing={"router": "builtin"}))

    servers = policies(built)["iris-model-servers"]["spec"]
    assert servers["policyTypes"] == ["Ingress"]
    for track in ("stable", "canary", "shadow"):
        assert matches(servers["podSelector"], pod_labels(deployment(list(built.values()), track)))
    assert not matches(servers["podSelector"], pod_labels(built[("Deployment", "iris-router")]))
    traffic, scrapes = servers["ingress"]
    assert traffic["ports"] == scrapes["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert scrapes["from"] == [PROMETHEUS_PEER]
    (router_peer,) = traffic["from"]
    assert "namespaceSelector" not in router_peer  # this namespace's router only
    router_pods = pod_labels(built[("Deployment", "iris-router")])
    assert matches(router_peer["podSelector"], router_pods)
    other = {**router_pods, children.LABEL_MODEL_DEPLOYMENT: "other"}
    assert not matches(router_peer["podSelector"], other)  # not another resource's router


def test_no_metrics_peers_admits_the_router_alone_never_everyone() -> None:
    built = guarded(spec(routing={"router": "builtin"}), children.Safeguards())

    (rule,) = policies(built)["iris-model-servers"]["spec"]["ingress"]
    assert len(rule["from"]) == 1


def test_gateway_api_servers_are_open_to_the_gateway_peers_or_get_no_policy() -> None:
    gateway = spec(routing={"router": "gateway-api"})

    assert policies(guarded(gateway)) == {}  # which pods forward is the gateway's business
    with_peers = children.Safeguards(
        metrics_peers=(PROMETHEUS_PEER,), gateway_peers=(GATEWAY_PEER,)
    )
    found = policies(guarded(gateway, with_peers))
    assert set(found) == {"iris-model-servers"}
    traffic, scrapes = found["iris-model-servers"]["spec"]["ingress"]
    assert traffic["from"] == [GATEWAY_PEER] and scrapes["from"] == [PROMETHEUS_PEER]


def test_a_scrape_port_apart_from_the_serving_port_is_open_to_the_metrics_peers_only() -> None:
    found = {
        m["metadata"]["name"]: m["spec"]["ingress"]
        for m in children.build_network_policies(
            owner=OWNER,
            spec=spec(routing={"router": "builtin"}),
            safeguards=SAFEGUARDS,
            router_metrics_port=9091,
            server_metrics_port=9092,
        )
    }

    router_traffic, router_scrapes = found["iris-router"]
    assert "from" not in router_traffic and router_traffic["ports"][0]["port"] == 8080
    assert router_scrapes == {
        "from": [PROMETHEUS_PEER],
        "ports": [{"port": 9091, "protocol": "TCP"}],
    }
    assert found["iris-model-servers"][1]["ports"] == [{"port": 9092, "protocol": "TCP"}]


def test_the_policies_follow_the_pods_scrape_annotation() -> None:
    stable = deployment(build(spec()), "stable")
    stable["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] = "9092"

    assert children.scrape_port(stable, 8080) == 9092
    del stable["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"]
    assert children.scrape_port(stable, 8080) == 8080


def test_no_policies_when_the_servers_are_the_entry_or_policies_are_off() -> None:
    assert policies(guarded(spec(routing={"router": "none"}))) == {}
    off = children.Safeguards(network_policies=False, metrics_peers=(PROMETHEUS_PEER,))
    assert policies(guarded(spec(routing={"router": "builtin"}), off)) == {}


def test_policies_come_first_so_no_pod_runs_unprotected() -> None:
    built = children.build_children(
        owner=OWNER, spec=spec(routing={"router": "builtin"}), image=IMAGE, safeguards=SAFEGUARDS
    )

    kinds = [m["kind"] for m in built]
    assert kinds[:2] == ["NetworkPolicy", "NetworkPolicy"]
    assert "NetworkPolicy" not in kinds[2:]


def test_safeguards_are_children_like_the_others() -> None:
    built = guarded(full_spec(routing={"router": "builtin", "replicas": 2}))

    for (kind, _), manifest in built.items():
        if kind in ("PodDisruptionBudget", "NetworkPolicy"):
            assert manifest["metadata"]["namespace"] == OWNER.namespace
            assert manifest["metadata"]["labels"][children.LABEL_MODEL_DEPLOYMENT] == OWNER.name
            assert manifest["metadata"]["ownerReferences"][0]["uid"] == OWNER.uid
            assert children.is_current(live=manifest, desired=manifest)


def test_the_operator_settings_refuse_a_peer_that_would_admit_everyone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from canaryml_operator.settings import DEFAULT_METRICS_PEERS, OperatorSettings
    from pydantic import ValidationError

    assert OperatorSettings().safeguards().metrics_peers == DEFAULT_METRICS_PEERS
    for bad in ("[{}]", '[{"podSelecter": {}}]'):
        monkeypatch.setenv("CANARYML_OPERATOR_METRICS_PEERS", bad)
        with pytest.raises(ValidationError, match="NetworkPolicyPeer"):
            OperatorSettings()
    monkeypatch.setenv("CANARYML_OPERATOR_GATEWAY_PEERS", f"[{GATEWAY_PEER}]".replace("'", '"'))
    monkeypatch.setenv("CANARYML_OPERATOR_METRICS_PEERS", "[]")
    safeguards = OperatorSettings().safeguards()
    assert safeguards.gateway_peers == (GATEWAY_PEER,) and safeguards.metrics_peers == ()


def test_a_model_without_a_digest_is_named_unless_the_spec_allows_it() -> None:
    """Digests on by default (issue 16): which fields to set, or nothing to say."""
    pinned = {"uri": "s3://m/1", "version": "1", "sha256": "a" * 64}
    bare = {"uri": "s3://m/2", "version": "2"}
    spec = api.parse_spec(
        {"model": pinned, "canary": {"model": bare}, "shadow": {"model": {**bare, "version": "3"}}}
    )
    problem = children.unpinned_problem(spec)
    assert problem is not None
    assert problem.startswith("spec.canary.model.sha256, spec.shadow.model.sha256 not set")
    assert "spec.allowUnpinnedModels" in problem
    assert (
        children.unpinned_problem(spec.model_copy(update={"allow_unpinned_models": True})) is None
    )
    assert children.unpinned_problem(api.parse_spec({"model": pinned})) is None
    manifests = children.build_children(
        owner=OWNER, spec=api.parse_spec({"model": pinned}), image="i"
    )
    stable = next(
        m
        for m in manifests
        if m["metadata"]["name"].endswith("-stable") and m["kind"] == "Deployment"
    )
    variables = {
        e["name"]: e["value"] for e in stable["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert variables["CANARYML_REQUIRE_SHA256"] == "true"


def secret_env(manifest: dict[str, Any]) -> dict[str, dict[str, str]]:
    return {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container(manifest)["env"]
        if "valueFrom" in item
    }


def test_the_feedback_key_reaches_every_track_from_its_secret_never_as_a_value() -> None:
    feedback = {
        "keySecretRef": {"name": "ids", "key": "current"},
        "previousKeysSecretRef": {"name": "ids", "key": "previous"},
    }
    manifests = build(full_spec(serving={"feedback": feedback}))
    for track in ("stable", "canary", "shadow"):
        assert secret_env(deployment(manifests, track)) == {
            "CANARYML_FEEDBACK_KEY": {"name": "ids", "key": "current"},
            "CANARYML_FEEDBACK_PREVIOUS_KEYS": {"name": "ids", "key": "previous"},
        }
    # Without a key anywhere: no ids (the servers issue none and refuse feedback).
    assert secret_env(deployment(build(full_spec()), "stable")) == {}


def test_the_operators_default_feedback_secret_applies_unless_the_spec_names_one() -> None:
    default = api.FeedbackSpec(key_secret_ref=api.SecretKeyRef(name="chart-default", key="key"))

    def key_of(value: api.ModelDeploymentSpec) -> dict[str, str]:
        manifests = children.build_children(
            owner=OWNER, spec=value, image=IMAGE, default_feedback=default
        )
        return secret_env(deployment(manifests, "stable"))["CANARYML_FEEDBACK_KEY"]

    assert key_of(spec()) == {"name": "chart-default", "key": "key"}
    own = spec(serving={"feedback": {"keySecretRef": {"name": "mine", "key": "k"}}})
    assert key_of(own) == {"name": "mine", "key": "k"}


def test_the_operator_settings_name_the_default_feedback_secret(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from canaryml_operator.settings import OperatorSettings

    assert OperatorSettings().default_feedback() is None  # the chart's default: none
    monkeypatch.setenv("CANARYML_OPERATOR_FEEDBACK_KEY_SECRET", "canaryml-feedback")
    monkeypatch.setenv("CANARYML_OPERATOR_FEEDBACK_KEY_SECRET_KEY", "signing-key")
    default = OperatorSettings().default_feedback()
    assert default is not None
    assert (default.key_secret_ref.name, default.key_secret_ref.key) == (
        "canaryml-feedback",
        "signing-key",
    )
