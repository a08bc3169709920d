"""The Helm chart: lint, render, validate offline, and agree with the code it deploys.

`helm template` output for the default values, for every option on
(charts/canaryml/ci/all-options-values.yaml) and for namespaced peering is validated against
the Kubernetes OpenAPI schemas (kubernetes-validate, strict: an unknown field fails) for the
oldest Kubernetes the chart supports and the newest the validator knows. The chart's CRD is the
generated one; the operator's flags and settings in the Deployment are the ones the code
reads; deploy/ is the chart rendered; a wrong value fails at install, not at run time.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import typer
import yaml
from canaryml_api import resource as api
from canaryml_cli.main import app
from canaryml_operator import children, crd
from canaryml_operator.settings import DEFAULT_METRICS_PEERS, OperatorSettings

from tests.chart import (
    ALL_OPTIONS,
    CHART,
    NAMESPACED,
    ROOT,
    find,
    helm,
    helm_binary,
    render,
    template_args,
)

OLDEST = "1.27"  # Chart.yaml's kubeVersion
DIGEST = "sha256:" + "0123456789abcdef" * 4  # all-options-values.yaml's image.digest
NEWEST = kubernetes_validate.latest_version()
CUSTOM_GROUPS = ("monitoring.coreos.com/", "kopf.dev/", "canaryml.dev/")
RENDERINGS: dict[str, list[Path]] = {
    "default": [],
    "all-options": [ALL_OPTIONS],
    "namespaced": [NAMESPACED],
}


@pytest.fixture(scope="module", params=list(RENDERINGS))
def rendering(request: pytest.FixtureRequest) -> tuple[str, list[dict[str, Any]]]:
    name = str(request.param)
    return name, render(values_files=RENDERINGS[name], include_crds=True)


def operator_container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    (deployment,) = find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return dict(container)


def operator_settings(objects: list[dict[str, Any]]) -> OperatorSettings:
    """The settings the operator reads from its Deployment's env."""
    env = operator_container(objects)["env"]
    with pytest.MonkeyPatch.context() as patch:
        for item in env:
            if "value" in item:
                patch.setenv(item["name"], item["value"])
        return OperatorSettings()


@pytest.mark.parametrize("values", [None, ALL_OPTIONS, NAMESPACED], ids=lambda v: str(v))
def test_helm_lint_strict_passes(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    result = helm(*args, check=False)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_builtin_object_validates_against_the_kubernetes_schemas(
    rendering: tuple[str, list[dict[str, Any]]],
) -> None:
    _, objects = rendering
    builtin = [o for o in objects if not o["apiVersion"].startswith(CUSTOM_GROUPS)]
    assert {"Deployment", "ServiceAccount", "Service", "CustomResourceDefinition"} <= {
        o["kind"] for o in builtin
    }
    for version in (OLDEST, NEWEST):
        for obj in builtin:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as error:
                raise AssertionError(
                    f"{obj['kind']} {obj['metadata']['name']} (Kubernetes {version}): {error}"
                ) from error


def test_the_charts_crd_is_the_generated_one() -> None:
    committed = (ROOT / "crds" / crd.CRD_FILE).read_text(encoding="utf-8")
    assert (CHART / "crds" / crd.CRD_FILE).read_text(encoding="utf-8") == committed
    assert committed == crd.render_crd()


def test_deploy_is_the_chart_rendered_with_default_values(tmp_path: Path) -> None:
    out = tmp_path / "canaryml.yaml"
    env = {**os.environ, "CANARYML_HELM": helm_binary()}
    subprocess.run(
        ["bash", str(ROOT / "scripts" / "render-manifests.sh"), str(out)],
        check=True,
        env=env,
        capture_output=True,
        timeout=60,
    )
    committed = (ROOT / "deploy" / "canaryml.yaml").read_text(encoding="utf-8")
    assert committed == out.read_text(encoding="utf-8"), (
        "deploy/canaryml.yaml is stale: run scripts/render-manifests.sh"
    )
    kinds = [doc["kind"] for doc in yaml.safe_load_all(committed) if doc]
    assert kinds[0] == "Namespace" and kinds.count("CustomResourceDefinition") == 5


def test_the_operator_flags_are_the_clis(rendering: tuple[str, list[dict[str, Any]]]) -> None:
    """The Deployment's args parse with the real `canaryml` command, to the chosen mode."""
    name, objects = rendering
    container = operator_container(objects)
    args = list(container["args"])
    command = typer.main.get_command(app)
    assert args[0] == "operator"
    # typer may bring its own copy of click: use the command's own context class.
    subcommand = command.get_command(command.context_class(command), args[0])  # type: ignore[attr-defined]
    assert subcommand is not None
    parsed = subcommand.make_context("operator", args[1:])
    options = parsed.params
    if name == "namespaced":
        assert options["namespace"] == ["ml-staging", "ml-production"]
        assert not options["all_namespaces"]
    else:
        assert options["all_namespaces"] and not options["namespace"]
    replicas = find(objects, "Deployment")[0]["spec"]["replicas"]
    assert (options["peering"] == "canaryml") == (replicas > 1)
    assert options["standalone"] == (replicas == 1)
    assert options["liveness"] == "http://0.0.0.0:8081/healthz"


def test_the_operator_settings_parse_from_the_deployments_env(
    rendering: tuple[str, list[dict[str, Any]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    name, objects = rendering
    container = operator_container(objects)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env.pop("POD_ID") is None  # from the pod's name (kopf peering identity)
    from_secrets = {
        item["name"]: item["valueFrom"]["secretKeyRef"]
        for item in container["env"]
        if "secretKeyRef" in item.get("valueFrom", {})
    }
    for key, value in env.items():
        assert key.startswith("CANARYML_OPERATOR_"), key
        if key in from_secrets:
            value = "https://hooks.slack.com/services/T0/B0/x"  # what the kubelet would set
        monkeypatch.setenv(key, value)
    settings = OperatorSettings()
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert settings.metrics_port == ports["metrics"]
    if name == "all-options":
        assert settings.image == "registry.example.com/ml/canaryml-serving:0.1.0-rc1"
        assert settings.prometheus_url == "https://prometheus.observability.svc:9091"
        assert settings.workers == 16
        default = settings.default_feedback()
        assert default is not None
        assert (default.key_secret_ref.name, default.key_secret_ref.key) == (
            "canaryml-feedback",
            "signing-key",
        )
        assert from_secrets == {
            "CANARYML_OPERATOR_NOTIFY_URL": {"name": "canaryml-slack", "key": "webhook-url"}
        }
        (notify,) = settings.default_notifications()
        assert (notify.format, notify.events) == ("slack", ["promoted", "rolledBack"])
        assert (settings.notify_limit, settings.notify_window_seconds) == (5, 300.0)
    else:
        assert settings.image == container["image"]
        assert settings.prometheus_url == "http://prometheus.monitoring:9090"
        assert settings.default_feedback() is None
        assert not from_secrets and settings.default_notifications() == []
        assert (settings.notify_limit, settings.notify_window_seconds) == (10, 600.0)


def test_the_operator_runs_locked_down(rendering: tuple[str, list[dict[str, Any]]]) -> None:
    _, objects = rendering
    (deployment,) = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == children.RUN_AS  # the image's user
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]


def test_every_option_reaches_the_objects() -> None:
    objects = render(values_files=[ALL_OPTIONS])
    (deployment,) = find(objects, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = operator_container(objects)
    assert container["image"] == f"registry.example.com/ml/canaryml@{DIGEST}"
    assert container["imagePullPolicy"] == "Always"
    assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}]
    assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}
    assert pod["tolerations"][0]["key"] == "dedicated"
    assert "podAntiAffinity" in pod["affinity"]
    assert pod["priorityClassName"] == "system-cluster-critical"
    assert pod["serviceAccountName"] == "canaryml-operator"
    assert deployment["spec"]["template"]["metadata"]["labels"]["example.com/cost-center"] == "ml"
    assert "--verbose" in container["args"] and "--log-format=json" in container["args"]
    assert container["resources"]["limits"]["memory"] == "1Gi"
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["type"] == "RollingUpdate"
    assert find(objects, "ClusterKopfPeering", "canaryml")
    assert find(objects, "PodDisruptionBudget")
    kinds = {o["kind"] for o in objects}
    assert {"PodMonitor", "ServiceMonitor", "PrometheusRule", "ConfigMap"} <= kinds


def test_monitoring_is_off_by_default() -> None:
    kinds = {o["kind"] for o in render()}
    assert kinds == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Service",
        "Deployment",
        "NetworkPolicy",
    }


def test_the_pod_monitor_selects_the_pods_the_operator_creates() -> None:
    (monitor,) = find(render(values_files=[ALL_OPTIONS]), "PodMonitor")
    owner = children.Owner(name="iris", namespace="ml", uid="u")
    spec = api.parse_spec({"model": {"uri": "s3://m/1", "version": "1"}})
    manifests = children.build_children(
        owner=owner,
        spec=spec,
        image="img",
        plan=children.TrackPlan(stable_model=spec.model, canary_replicas=None),
    )
    pods = [m for m in manifests if m["kind"] == "Deployment"]
    assert {m["metadata"]["name"] for m in pods} == {"iris-stable", "iris-router"}
    selector = monitor["spec"]["selector"]["matchLabels"]
    for manifest in pods:
        template = manifest["spec"]["template"]
        assert selector.items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for p in template["spec"]["containers"][0]["ports"]}
        assert monitor["spec"]["podMetricsEndpoints"][0]["port"] in ports
        assert template["metadata"]["annotations"]["prometheus.io/path"] == "/metrics"
    assert monitor["spec"]["namespaceSelector"] == {"any": True}
    (namespaced,) = find(render(values_files=[NAMESPACED]), "PodMonitor")
    assert namespaced["spec"]["namespaceSelector"] == {
        "matchNames": ["ml-staging", "ml-production"]
    }


def test_the_service_monitor_scrapes_the_operator_with_its_labels() -> None:
    objects = render(values_files=[ALL_OPTIONS])
    (monitor,) = find(objects, "ServiceMonitor")
    (service,) = find(objects, "Service")
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] == service["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["honorLabels"] is True  # the resource's namespace, not the operator's
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_the_dashboard_configmap_carries_the_dashboard() -> None:
    (config_map,) = find(render(values_files=[ALL_OPTIONS]), "ConfigMap")
    assert config_map["metadata"]["namespace"] == "monitoring"
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = (CHART / "dashboards" / "canaryml.json").read_text(encoding="utf-8")
    assert json.loads(config_map["data"]["canaryml.json"]) == json.loads(shipped)


def test_custom_resources_have_the_shape_their_operators_read() -> None:
    objects = render(values_files=[ALL_OPTIONS])
    (rule,) = find(objects, "PrometheusRule")
    alerts = {r["alert"]: r for group in rule["spec"]["groups"] for r in group["rules"]}
    assert set(alerts) == {
        "CanarymlRolledBack",
        "CanarymlAnalysisErroring",
        "CanarymlCanaryStuck",
        "CanarymlFeedbackRefused",
        "CanarymlAccuracyBelowStable",
    }
    for alert in alerts.values():
        assert alert["expr"] and alert["annotations"]["summary"]
        assert "{{ $labels.model_deployment }}" in alert["annotations"]["summary"]
    assert alerts["CanarymlCanaryStuck"]["for"] == "45m"
    assert "[15m]" in alerts["CanarymlAnalysisErroring"]["expr"]


BAD_VALUES: list[tuple[dict[str, str], str]] = [
    ({"replicas": "two"}, "replicas"),
    ({"replicas": "0"}, "replicas"),
    ({"logLevel": "verbose"}, "logLevel"),
    ({"logFormat": "xml"}, "logFormat"),
    ({"watchNamespaces": "{ml-*}"}, "watchNamespaces"),
    ({"prometheus.url": "prometheus:9090"}, "prometheus"),
    ({"replica": "2"}, "replica"),
    ({"image.pullPolicy": "Sometimes"}, "pullPolicy"),
    ({"monitoring.prometheusRule.stuckAfter": "soon"}, "stuckAfter"),
    ({"metrics.port": "8081"}, "port"),
    ({"image.digest": "latest"}, "digest"),
    ({"image.digest": "sha256:abc"}, "digest"),
    ({"networkPolicy.apiServerPorts": "{0}"}, "apiServerPorts"),
    ({"networkPolicy.prometheus[0].podSelecter.app": "p"}, "prometheus"),
]


@pytest.mark.parametrize(("values", "named"), BAD_VALUES, ids=[b[1] for b in BAD_VALUES])
def test_a_wrong_value_fails_at_install_naming_it(values: Mapping[str, str], named: str) -> None:
    args = template_args()
    for key, value in values.items():
        args += ["--set", f"{key}={value}"]
    result = helm(*args, check=False)
    assert result.returncode != 0, f"{values} was accepted"
    assert "values don't meet the specifications of the schema" in result.stderr
    assert named in result.stderr


def crd_schema() -> dict[str, Any]:
    document = yaml.safe_load((ROOT / "crds" / crd.CRD_FILE).read_text(encoding="utf-8"))
    schema: dict[str, Any] = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema


def test_the_example_resources_validate_against_the_crd() -> None:
    schema = crd_schema()
    examples = [ROOT / "examples" / "modeldeployment.yaml"]
    for path in examples:
        for document in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if document and document.get("kind") == api.KIND:
                jsonschema.validate(document, schema)
                api.parse_spec(document["spec"])
    # The schema does reject: a wrong type and an unknown field.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": {"model": {"uri": 3, "version": "1"}}}, schema)


def test_the_operators_children_validate_against_the_kubernetes_schemas() -> None:
    """What the operator creates, for every track and router, is valid Kubernetes."""
    owner = children.Owner(name="iris", namespace="ml", uid="u")
    model = {"uri": "pvc://models/iris/1", "version": "1.0.0", "sha256": "a" * 64}
    # The safeguards of the all-options values: PodDisruptionBudgets, NetworkPolicies.
    safeguards = operator_settings(render(values_files=[ALL_OPTIONS])).safeguards()
    assert safeguards.metrics_peers and safeguards.gateway_peers
    kinds = set()
    for router in ("builtin", "gateway-api"):
        spec = api.parse_spec(
            {
                "model": model,
                "canary": {"model": {**model, "version": "1.1.0"}},
                "shadow": {"model": {**model, "version": "2.0.0"}},
                "serving": {"replicas": 2},
                "routing": {"router": router, "replicas": 2},
            }
        )
        manifests = children.build_children(
            owner=owner,
            spec=spec,
            image="img",
            plan=children.TrackPlan(stable_model=spec.model, canary_replicas=1, canary_weight=10),
            safeguards=safeguards,
        )
        kinds |= {manifest["kind"] for manifest in manifests}
        for manifest in manifests:
            if manifest["kind"] == "HTTPRoute":
                continue  # the Gateway API's schemas are not in kubernetes-validate
            for version in (OLDEST, NEWEST):
                kubernetes_validate.validate(manifest, version, strict=True)
    assert {"PodDisruptionBudget", "NetworkPolicy"} <= kinds


def test_the_chart_ships_the_packages_version_and_image() -> None:
    from canaryml_operator import __version__
    from canaryml_operator.settings import OperatorSettings as Settings

    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    assert chart["appVersion"] == __version__
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    # The operator's own default serving image is the chart's default image.
    default_image = Settings.model_fields["image"].default
    assert default_image == f"{values['image']['repository']}:{chart['appVersion']}"


def test_an_image_digest_pins_the_operator_and_the_pods_it_creates() -> None:
    digest = "sha256:" + "ab" * 32
    objects = render(values={"image.digest": digest, "image.tag": "0.9.9"})
    container = operator_container(objects)
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert container["image"] == f"ghcr.io/canaryml/canaryml@{digest}"  # the tag is unused
    assert env["CANARYML_OPERATOR_IMAGE"] == container["image"]
    # Without a digest, the tag as before.
    assert operator_container(render())["image"] == "ghcr.io/canaryml/canaryml:0.1.0"


def rules(policy: dict[str, Any], direction: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = policy["spec"].get(direction) or []
    peers = "from" if direction == "ingress" else "to"
    for rule in found:
        assert rule.get(peers, ["a peer"]), f"an empty peer list admits everyone: {rule}"
    return found


def test_the_operator_takes_only_health_and_metrics_and_reaches_only_api_and_prometheus() -> None:
    objects = render()
    (policy,) = find(objects, "NetworkPolicy")
    (deployment,) = find(objects, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]
    ports = {p["name"]: p["containerPort"] for p in operator_container(objects)["ports"]}
    health, metrics = rules(policy, "ingress")
    assert "from" not in health and [p["port"] for p in health["ports"]] == [ports["health"]]
    values = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    prometheus = values["networkPolicy"]["prometheus"]
    assert metrics["from"] == prometheus
    assert [p["port"] for p in metrics["ports"]] == [ports["metrics"]]
    api_server, to_prometheus, dns = rules(policy, "egress")
    assert [p["port"] for p in api_server["ports"]] == [443, 6443] and "to" not in api_server
    assert to_prometheus == {"to": prometheus}
    assert {(p["port"], p["protocol"]) for p in dns["ports"]} == {(53, "UDP"), (53, "TCP")}
    # The default peer is the Prometheus of the default URL (namespace monitoring).
    assert "prometheus.monitoring:" in values["prometheus"]["url"]
    assert prometheus == list(DEFAULT_METRICS_PEERS)  # the operator's own default
    assert prometheus[0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "monitoring"
    }


def test_no_prometheus_peers_drop_the_rules_never_open_them() -> None:
    (policy,) = find(render(values={"networkPolicy.prometheus": "null"}), "NetworkPolicy")
    (health,) = rules(policy, "ingress")
    assert [p["port"] for p in health["ports"]] == [8081]
    assert all("to" not in rule for rule in rules(policy, "egress"))
    assert not find(render(values={"networkPolicy.operator": "false"}), "NetworkPolicy")


def test_the_network_policy_values_reach_the_operators_settings() -> None:
    values = yaml.safe_load(ALL_OPTIONS.read_text(encoding="utf-8"))["networkPolicy"]
    off = {"networkPolicy.modelDeployments": "false"}
    safeguards = operator_settings(render(values_files=[ALL_OPTIONS], values=off)).safeguards()
    assert safeguards.network_policies is False
    assert list(safeguards.metrics_peers) == values["prometheus"]
    assert list(safeguards.gateway_peers) == values["gateway"]
    (policy,) = find(render(values_files=[ALL_OPTIONS]), "NetworkPolicy")
    (api_server, *_, to_webhooks) = rules(policy, "egress")
    assert [p["port"] for p in api_server["ports"]] == [443]
    assert to_webhooks == {"to": values["webhooks"]}  # the webhook and notification receivers


def test_watching_namespaces_reads_no_secret_cluster_wide() -> None:
    objects = render(values_files=[NAMESPACED])
    # Cluster-wide, only the cluster-scoped ClusterAnalysisTemplates are read.
    (templates,) = find(objects, "ClusterRole")
    assert templates["rules"] == [
        {"apiGroups": ["canaryml.dev"], "resources": ["clusteranalysistemplates"], "verbs": ["get"]}
    ]
    (binding,) = find(objects, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == templates["metadata"]["name"]
    roles = find(objects, "Role")
    assert {r["metadata"]["namespace"] for r in roles} == {"ml-staging", "ml-production"}
    for role in roles:
        assert any("secrets" in rule["resources"] for rule in role["rules"])
    # Cluster-wide (the default), the same rules in one ClusterRole.
    (cluster_role,) = find(render(), "ClusterRole")
    assert any("secrets" in rule["resources"] for rule in cluster_role["rules"])
