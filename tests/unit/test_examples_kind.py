"""The kind walk-through's files, checked without a cluster.

examples/kind/*.yaml are parsed and validated offline (the ModelDeployment against the CRD and
the operator's own models, with the e2e tests' canary patches merged in; the built-in kinds
against Kubernetes' schemas); the example Prometheus' scrape config is run, relabel rule by
rule, over the pods the operator and the chart really create; the README, the workflow and the
e2e steps are checked to say the same thing; traffic.py is run against a stub server; and the
e2e tests are seen to skip quickly where no cluster is reachable.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlparse

import kubernetes_validate
import pytest
import yaml
from canaryml_api import resource as api
from canaryml_operator import children

from tests import chart
from tests.e2e import steps
from tests.local_http import serving
from tests.tools import promtool
from tests.unit.test_crd import json_schema

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "examples" / "kind"
README = KIND / "README.md"
WORKFLOW = ROOT / ".github" / "workflows" / "e2e.yml"
CRD_PATH = ROOT / "crds" / "modeldeployments.canaryml.dev.yaml"
YAML_FILES = sorted(KIND.glob("*.yaml"))
# kind v0.24's node image runs 1.31; 1.30 is the oldest the walk-through is written for.
KUBERNETES_VERSIONS = ("1.30", "1.31")

Doc = dict[str, Any]


def documents(name: str) -> list[Doc]:
    return steps.load_documents(KIND / name)


def one(name: str, kind: str, object_name: str | None = None) -> Doc:
    found = [
        doc
        for doc in documents(name)
        if doc["kind"] == kind and object_name in (None, doc["metadata"]["name"])
    ]
    assert len(found) == 1, f"{name}: {len(found)} {kind} {object_name or ''}"
    return found[0]


# --- every file parses ---------------------------------------------------------------------------


def test_the_walkthrough_has_its_three_manifests() -> None:
    assert [p.name for p in YAML_FILES] == [
        "model-store.yaml",
        "modeldeployment.yaml",
        "prometheus.yaml",
    ]


@pytest.mark.parametrize("path", YAML_FILES, ids=[p.name for p in YAML_FILES])
def test_every_yaml_document_parses_as_a_kubernetes_object(path: Path) -> None:
    docs = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    assert docs and all(doc is not None for doc in docs), "an empty document"
    for doc in docs:
        assert isinstance(doc, dict)
        assert {"apiVersion", "kind", "metadata"} <= doc.keys(), doc
        assert doc["metadata"].get("name"), doc


# --- the ModelDeployment, as written and with each canary patch ---------------------------------


def model_deployment() -> Doc:
    return one("modeldeployment.yaml", api.KIND)


WITH_GOOD = steps.merge_patch(model_deployment(), steps.GOOD_CANARY_PATCH)
WITH_BAD = steps.merge_patch(WITH_GOOD, steps.BAD_CANARY_PATCH)
SETTLED = steps.merge_patch(WITH_BAD, steps.SETTLE_PATCH)
VARIANTS: dict[str, Doc] = {
    "as-written": model_deployment(),
    "good-canary": WITH_GOOD,
    "then-bad-canary": WITH_BAD,
    "settled": SETTLED,
}


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    crd = yaml.safe_load(CRD_PATH.read_text(encoding="utf-8"))
    (version,) = crd["spec"]["versions"]
    schema = json_schema(version["schema"]["openAPIV3Schema"])
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("body", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_model_deployment_is_admitted_by_the_crd_schema(validator: Any, body: Doc) -> None:
    assert body["apiVersion"] == api.API_VERSION
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert errors == []
    assert children.name_problem(body["metadata"]["name"]) is None


@pytest.mark.parametrize("body", VARIANTS.values(), ids=VARIANTS.keys())
def test_the_model_deployment_parses_as_the_operator_reads_it(body: Doc) -> None:
    spec = api.parse_spec(body["spec"])
    assert spec.routing.router == "builtin"
    assert spec.routing.sticky_header == "x-user-id"  # the header traffic.py sends
    assert api.parse_duration(spec.analysis.window) >= 4 * prometheus_scrape_interval(), (
        "each query's window must hold several scrapes of every series"
    )
    if spec.canary is not None:
        # Every step gets at least one analysis before it can pass.
        assert api.parse_duration(spec.canary.step_interval) >= api.parse_duration(
            spec.analysis.interval
        )


def test_the_patches_start_the_rollouts_the_walkthrough_describes() -> None:
    base = api.parse_spec(VARIANTS["as-written"]["spec"])
    good = api.parse_spec(WITH_GOOD["spec"])
    bad = api.parse_spec(WITH_BAD["spec"])
    stable = api.ModelRef.model_validate(steps.STABLE_MODEL)
    canary = api.ModelRef.model_validate(steps.CANARY_MODEL)
    assert (base.model, base.canary, base.shadow) == (stable, None, None)
    assert good.canary is not None and good.shadow is not None
    assert (good.model, good.canary.model, good.shadow.model) == (stable, canary, stable)
    assert good.canary.steps == [20, 50] and good.canary.step_interval == "20s"
    # The good canary's promotion waits for `canaryml promote` (the e2e test approves it).
    assert good.canary.approval is not None and good.canary.approval.required
    assert good.shadow.probability_tolerance == 0.3
    assert bad.canary is not None and bad.shadow is not None
    # The bad canary's answers are compared with the model it would replace: the promoted one.
    assert (bad.model, bad.canary.model.version, bad.shadow.model) == (stable, "1.2.0", canary)
    settled = api.parse_spec(SETTLED["spec"])
    assert (settled.model, settled.canary, settled.shadow) == (canary, None, None)
    assert "canary" not in SETTLED["spec"] and "shadow" not in SETTLED["spec"]  # null deletes


# --- the built-in kinds -------------------------------------------------------------------------

BUILTIN = [
    (name, doc) for name in ("prometheus.yaml", "model-store.yaml") for doc in documents(name)
]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "doc",
    [doc for _, doc in BUILTIN],
    ids=[f"{name}:{doc['kind']}/{doc['metadata']['name']}" for name, doc in BUILTIN],
)
def test_built_in_objects_validate_strictly(doc: Doc, version: str) -> None:
    kubernetes_validate.validate(doc, version, strict=True)


def test_prometheus_may_read_pods_and_nothing_else() -> None:
    role = one("prometheus.yaml", "ClusterRole")
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]}
    ]
    binding = one("prometheus.yaml", "ClusterRoleBinding")
    account = one("prometheus.yaml", "ServiceAccount")
    deployment = one("prometheus.yaml", "Deployment")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": account["metadata"]["name"],
            "namespace": account["metadata"]["namespace"],
        }
    ]
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]


def test_the_analysis_url_is_the_example_prometheus() -> None:
    url = urlparse(model_deployment()["spec"]["analysis"]["prometheus"]["url"])
    service = one("prometheus.yaml", "Service", "prometheus")
    port = service["spec"]["ports"][0]
    container = one("prometheus.yaml", "Deployment")["spec"]["template"]["spec"]["containers"][0]
    assert url.hostname == f"{service['metadata']['name']}.{service['metadata']['namespace']}"
    assert url.port == port["port"]
    assert any(p["name"] == port["targetPort"] for p in container["ports"])


def model_store_roles() -> dict[str, str]:
    """Role -> the ConfigMap served under /ROLE by the model store."""
    deployment = one("model-store.yaml", "Deployment", "model-store")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["python", "-m", "http.server"]
    root = container["command"][container["command"].index("--directory") + 1]
    volumes = {v["name"]: v for v in pod["volumes"]}
    served = {}
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "configMap" in volume:
            assert mount["mountPath"].startswith(f"{root}/")
            served[mount["mountPath"].removeprefix(f"{root}/")] = volume["configMap"]["name"]
    return served


def test_the_model_store_serves_every_model_the_walkthrough_names() -> None:
    served = model_store_roles()
    assert served == {role: f"model-{role}" for role in steps.ROLES}
    service = one("model-store.yaml", "Service", "model-store")
    deployment = one("model-store.yaml", "Deployment", "model-store")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    http_port = int(container["command"][3])
    assert container["ports"] == [{"name": "http", "containerPort": http_port, "protocol": "TCP"}]
    assert service["spec"]["ports"][0]["port"] == 80  # http://model-store/... has no port
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    # The models are named by the short Service name: the same namespace, or nothing resolves.
    assert deployment["metadata"]["namespace"] == model_deployment()["metadata"]["namespace"]
    for body in VARIANTS.values():
        spec = body["spec"]
        refs = [spec["model"]] + [spec[t]["model"] for t in ("canary", "shadow") if t in spec]
        for ref in refs:
            uri = urlparse(ref["uri"])
            assert uri.scheme == "http" and uri.port is None, ref
            assert uri.hostname == service["metadata"]["name"], ref
            assert uri.path.strip("/") in served, ref


def test_the_model_store_runs_the_image_the_e2e_tests_replace() -> None:
    deployment = one("model-store.yaml", "Deployment", "model-store")
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["image"] == steps.DEFAULT_IMAGE
    moved = steps.kind_manifests("model-store.yaml", namespace="e2e-x", image="registry/c:1")
    (moved_deployment,) = [doc for doc in moved if doc["kind"] == "Deployment"]
    assert moved_deployment["spec"]["template"]["spec"]["containers"][0]["image"] == "registry/c:1"
    assert {doc["metadata"]["namespace"] for doc in moved} == {"e2e-x"}
    # The image kind loaded is never pulled, as the chart is told (image.pullPolicy=Never); an
    # image from a registry is pulled as Kubernetes' default says.
    assert container["imagePullPolicy"] == e2e_helm_values()["image.pullPolicy"] == "Never"
    assert "imagePullPolicy" not in moved_deployment["spec"]["template"]["spec"]["containers"][0]
    # Non-root as the image's own user, with a read-only root and a writable /tmp.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsUser"] == 65532
    assert {"name": "tmp", "mountPath": "/tmp"} in container["volumeMounts"]


def test_each_packaged_model_fits_in_a_config_map(example_models: dict[str, Path]) -> None:
    # The API server refuses a ConfigMap whose data add up to more than 1 MiB.
    for role in steps.ROLES:
        size = sum(f.stat().st_size for f in example_models[role].iterdir() if f.is_file())
        assert size < 1024 * 1024, f"{role}: {size} bytes"


# --- the scrape config over the pods canaryml creates ------------------------------------------


def prometheus_config() -> Doc:
    config: Doc = yaml.safe_load(one("prometheus.yaml", "ConfigMap")["data"]["prometheus.yml"])
    return config


def prometheus_scrape_interval() -> float:
    return api.parse_duration(prometheus_config()["global"]["scrape_interval"])


def test_the_scrape_config_passes_promtool(tmp_path: Path) -> None:
    binary = promtool()
    config = prometheus_config()
    # Debian's promtool is built without Kubernetes discovery: the same job with a static
    # target still checks everything else (relabel actions, regexes, intervals).
    for job in config["scrape_configs"]:
        assert job.pop("kubernetes_sd_configs") == [{"role": "pod"}]
        job["static_configs"] = [{"targets": ["10.244.0.7:8080"]}]
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    result = subprocess.run(
        [binary, "check", "config", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def _go_replacement(template: str) -> str:
    """Prometheus' `$1` / `${1}` as Python's `\\g<1>`."""
    return re.sub(r"\$\{?(\w+)\}?", r"\\g<\1>", template)


def relabel(labels: Mapping[str, str], rules: list[Doc]) -> dict[str, str] | None:
    """Prometheus' relabelling (keep, drop, replace), as its docs define it: source values
    joined by `;`, regexes anchored at both ends, an empty result deletes the label."""
    out = dict(labels)
    for rule in rules:
        action = rule.get("action", "replace")
        regex = re.compile(f"^(?:{rule.get('regex', '(.*)')})$")
        value = rule.get("separator", ";").join(out.get(s, "") for s in rule["source_labels"])
        match = regex.match(value)
        if action == "keep" and match is None:
            return None
        if action == "drop" and match is not None:
            return None
        if action == "replace" and match is not None:
            result = match.expand(_go_replacement(rule.get("replacement", "$1")))
            if result:
                out[rule["target_label"]] = result
            else:
                out.pop(rule["target_label"], None)
        assert action in ("keep", "drop", "replace"), f"no model of relabel action {action}"
    return out


def scrape_targets(template: Doc, *, namespace: str, pod: str, phase: str = "Running") -> list[Doc]:
    """What the `pods` job scrapes of one pod made from a Deployment's pod template: the pod
    role's discovery labels (one target per declared port), relabelled."""
    (job,) = prometheus_config()["scrape_configs"]
    annotations = template["metadata"].get("annotations") or {}
    meta = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_phase": phase,
        **{
            "__meta_kubernetes_pod_annotation_" + re.sub(r"[^A-Za-z0-9_]", "_", key): value
            for key, value in annotations.items()
        },
    }
    ports = [p for c in template["spec"]["containers"] for p in c.get("ports", [])]
    addresses = [f"10.244.0.7:{p['containerPort']}" for p in ports] or ["10.244.0.7"]
    targets: list[Doc] = []
    for address in addresses:
        labels = relabel(
            {**meta, "__address__": address, "__metrics_path__": "/metrics"},
            job["relabel_configs"],
        )
        if labels is None:
            continue
        # Discovery labels go after relabelling; targets then alike are one (the operator's
        # pod declares a health port too, rewritten to the metrics port like the other).
        kept = {k: v for k, v in labels.items() if not k.startswith("__meta_")}
        if kept not in targets:
            targets.append(kept)
    return targets


def operator_children() -> list[Doc]:
    owner = children.Owner(name=steps.NAME, namespace="ml", uid="uid-1")
    spec = api.parse_spec(WITH_GOOD["spec"])  # stable, canary, shadow and the router
    return [
        obj
        for obj in children.build_children(owner=owner, spec=spec, image=steps.DEFAULT_IMAGE)
        if obj["kind"] == "Deployment"
    ]


def test_every_pod_the_operator_creates_is_scraped_on_its_metrics_port() -> None:
    deployments = operator_children()
    assert {d["metadata"]["name"] for d in deployments} == {
        f"{steps.NAME}-{part}" for part in ("stable", "canary", "shadow", "router")
    }
    for deployment in deployments:
        template = deployment["spec"]["template"]
        name = deployment["metadata"]["name"] + "-7d9f8-abcde"
        (target,) = scrape_targets(template, namespace="ml", pod=name)
        annotations = template["metadata"]["annotations"]
        assert target["__address__"] == f"10.244.0.7:{annotations['prometheus.io/port']}"
        assert target["__metrics_path__"] == annotations["prometheus.io/path"] == "/metrics"
        # The labels the analyses' queries are scoped by.
        assert (target["namespace"], target["pod"]) == ("ml", name)


def test_the_operator_pod_is_scraped_and_keeps_its_own_namespace_labels() -> None:
    objects = chart.render(values=e2e_helm_values())
    (deployment,) = chart.find(objects, "Deployment")
    template = deployment["spec"]["template"]
    (target,) = scrape_targets(template, namespace="canaryml-system", pod="canaryml-5c6-x")
    port = next(
        p["containerPort"]
        for c in template["spec"]["containers"]
        for p in c["ports"]
        if p["name"] == "metrics"
    )
    assert target["__address__"] == f"10.244.0.7:{port}"
    # Its series carry the ModelDeployment's `namespace`: the target's must not replace it.
    (job,) = prometheus_config()["scrape_configs"]
    assert job["honor_labels"] is True


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_finished_pods_are_not_scraped(phase: str) -> None:
    template = operator_children()[0]["spec"]["template"]
    assert scrape_targets(template, namespace="ml", pod="p", phase=phase) == []


def test_pods_without_the_annotation_are_not_scraped() -> None:
    template = one("model-store.yaml", "Deployment")["spec"]["template"]
    assert scrape_targets(template, namespace="ml", pod="model-store-1") == []


# --- README, workflow and e2e steps say the same -------------------------------------------------


def readme_commands() -> list[str]:
    """Every command of the README's bash blocks, continuation lines joined."""
    text = README.read_text(encoding="utf-8")
    commands: list[str] = []
    for block in re.findall(r"```(?:bash|sh)\n(.*?)```", text, flags=re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()  # a trailing comment
            if line and not line.startswith("#"):
                commands.append(line)
    return commands


def test_the_readme_patches_are_the_ones_the_e2e_tests_apply() -> None:
    patches = []
    for command in readme_commands():
        words = shlex.split(command)
        if words[:2] == ["kubectl", "patch"]:
            assert words[2:] == [
                "md",
                steps.NAME,
                "-n",
                "ml",
                "--type",
                "merge",
                "-p",
                words[-1],
            ], command
            patches.append(json.loads(words[-1]))
    assert patches == [steps.GOOD_CANARY_PATCH, steps.BAD_CANARY_PATCH, steps.SETTLE_PATCH]


def test_the_readme_creates_the_config_maps_the_model_store_mounts() -> None:
    created = {}
    for command in readme_commands():
        words = shlex.split(command)
        if words[:3] == ["kubectl", "create", "configmap"]:
            (source,) = [w.removeprefix("--from-file=") for w in words if w.startswith("--from")]
            created[words[3]] = source
            assert words[4:6] == ["-n", "ml"], command
    assert created == {f"model-{role}": f"build/models/{role}/" for role in steps.ROLES}
    assert set(created) == set(model_store_roles().values())


def helm_install(words: list[str]) -> list[str]:
    assert words[:4] == ["helm", "install", "canaryml", "charts/canaryml"], words
    return words


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text(encoding="utf-8"))
    return loaded


def workflow_steps() -> list[Doc]:
    (job,) = workflow()["jobs"].values()
    found: list[Doc] = job["steps"]
    return found


def workflow_helm_install() -> list[str]:
    runs = [s["run"] for s in workflow_steps() if "helm install" in s.get("run", "")]
    assert len(runs) == 1
    return helm_install(shlex.split(re.sub(r"\\\n\s*", " ", runs[0]).strip()))


def e2e_helm_values() -> dict[str, str]:
    words = workflow_helm_install()
    pairs = [words[i + 1] for i, word in enumerate(words) if word == "--set"]
    return dict(pair.split("=", 1) for pair in pairs)


def test_the_readme_installs_the_chart_as_the_workflow_does() -> None:
    installs = [
        helm_install(shlex.split(c)) for c in readme_commands() if c.startswith("helm install")
    ]
    assert installs == [workflow_helm_install()]
    assert e2e_helm_values() == {
        "image.repository": "canaryml",
        "image.tag": "e2e",
        "image.pullPolicy": "Never",
        "prometheus.url": model_deployment()["spec"]["analysis"]["prometheus"]["url"],
    }


def test_the_chart_accepts_the_workflows_values() -> None:
    # helm template checks values.schema.json, as helm install does.
    objects = chart.render(values=e2e_helm_values())
    (deployment,) = chart.find(objects, "Deployment")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "canaryml:e2e"
    assert container["imagePullPolicy"] == "Never"


def test_the_workflow_builds_loads_installs_and_runs_the_e2e_tests() -> None:
    loaded = workflow()
    triggers: dict[str, Any] = loaded.get("on", loaded.get(True)) or {}  # YAML 1.1: `on` is true
    assert set(triggers) == {"push", "pull_request", "workflow_dispatch"}
    assert triggers["push"] == {"branches": ["main"]}
    (job,) = loaded["jobs"].values()
    assert job["runs-on"] == "ubuntu-latest" and job["timeout-minutes"] == 40
    runs = "\n".join(s.get("run", "") for s in workflow_steps())
    for command in (
        "docker build --provenance=false -t canaryml:e2e .",
        "kind load docker-image canaryml:e2e --name canaryml",
        "kubectl apply -f examples/kind/prometheus.yaml",
        "python -m pytest tests/e2e -m e2e -v",
    ):
        assert command in runs, command
    (test_step,) = [s for s in workflow_steps() if "pytest tests/e2e" in s.get("run", "")]
    assert test_step["env"][steps.E2E_FLAG] == "1"  # never green by skipping
    dumps = [s for s in workflow_steps() if s.get("if") == "failure()"]
    assert dumps and "kubectl logs -n canaryml-system deploy/canaryml" in dumps[0]["run"]


# --- traffic.py -------------------------------------------------------------------------------


SENT_ROWS = [
    {"mean radius": 14.1, "mean texture": 19.2},
    {"mean radius": 20.5, "mean texture": 25.1},
]


class _Stub(BaseHTTPRequestHandler):
    """A router stand-in: answers /predict, every third request with 503."""

    seen: ClassVar[list[tuple[str, str | None, Any]]] = []
    lock: ClassVar[threading.Lock] = threading.Lock()

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with self.lock:
            self.seen.append((self.path, self.headers.get("x-user-id"), body))
            failed = len(self.seen) % 3 == 0
        payload = b'{"predictions": [1]}'
        self.send_response(503 if failed else 200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        if not failed:
            self.send_header("x-canaryml-track", "stable")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def stub_router() -> Iterator[str]:
    _Stub.seen = []
    with serving(_Stub) as url:
        yield url


def test_traffic_sends_rows_at_the_rate_and_counts_answers(
    stub_router: str, tmp_path: Path
) -> None:
    rows = tmp_path / "test.csv"
    rows.write_text("mean radius,mean texture,target\n14.1,19.2,1\n20.5,25.1,0\n")
    summary = tmp_path / "summary.json"
    started = time.monotonic()
    result = subprocess.run(
        [
            *(sys.executable, str(KIND / "traffic.py"), "--url", stub_router),
            *("--rows", str(rows), "--rate", "40", "--duration", "2"),
            *("--users", "5", "--summary", str(summary)),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 20
    totals = json.loads(summary.read_text())
    seen = list(_Stub.seen)
    assert 40 <= totals["total"] == len(seen) <= 100  # 2 s at 40/s, with slack for a slow CI
    failed = len(seen) // 3
    assert totals["codes"] == {"200": len(seen) - failed, "503": failed}
    assert totals["tracks"] == {"stable": len(seen) - failed}
    for path, user, body in seen:  # one CSV row, without its target, as a JSON object
        assert path == "/predict"
        assert body in SENT_ROWS
        assert user is not None and user.startswith("user-")
    assert 1 < len({user for _, user, _ in seen}) <= 5
    assert f"total {len(seen):6d} answers" in result.stdout


def test_traffic_without_rows_says_how_to_make_them(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, str(KIND / "traffic.py"), "--rows", str(tmp_path / "missing.csv")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    assert "examples/train_models.py --out build/models" in result.stderr


# --- the e2e tests skip where they cannot run ------------------------------------------------


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port  # closed again: a connection to it is refused at once


@pytest.fixture
def unreachable_cluster(tmp_path: Path) -> dict[str, str]:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {"name": "gone", "cluster": {"server": f"https://127.0.0.1:{closed_port()}"}}
                ],
                "users": [{"name": "nobody", "user": {"token": "x"}}],
                "contexts": [{"name": "gone", "context": {"cluster": "gone", "user": "nobody"}}],
                "current-context": "gone",
            }
        )
    )
    env = {k: v for k, v in os.environ.items() if k != steps.E2E_FLAG}
    return {**env, "KUBECONFIG": str(kubeconfig)}


def run_e2e(env: Mapping[str, str]) -> tuple[subprocess.CompletedProcess[str], float]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "tests/e2e", "-q", "-rs", "-p", "no:cacheprovider"],
        cwd=ROOT,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result, time.monotonic() - started


def test_the_e2e_tests_skip_quickly_without_a_cluster(unreachable_cluster: dict[str, str]) -> None:
    result, seconds = run_e2e(unreachable_cluster)
    assert result.returncode == 0, result.stdout + result.stderr
    tests = (ROOT / "tests" / "e2e" / "test_kind.py").read_text(encoding="utf-8")
    count = len(re.findall(r"^def test_", tests, flags=re.M))
    assert re.search(rf"^{count} skipped in ", result.stdout, flags=re.M), result.stdout
    assert seconds < 10, f"took {seconds:.1f} s"


def test_the_e2e_tests_fail_without_a_cluster_when_required(
    unreachable_cluster: dict[str, str],
) -> None:
    result, _ = run_e2e({**unreachable_cluster, steps.E2E_FLAG: "1"})
    assert result.returncode != 0
    assert f"{steps.E2E_FLAG}=1 but the e2e tests cannot run" in result.stdout
    assert "skipped" not in result.stdout
