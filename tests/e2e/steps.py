"""The kind walk-through (examples/kind/README.md) as steps the e2e tests run.

Every step is the `kubectl` command the README shows, run through subprocess and echoed as
`$ kubectl ...`, so the workflow's log, a person following the README and these tests see the
same commands. The canary patches live here once: the tests apply them, the unit tests
(tests/unit/test_examples_kind.py) check them against the CRD and the README's copies.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parents[2]
KIND = ROOT / "examples" / "kind"
TRAFFIC_SCRIPT = KIND / "traffic.py"

NAME = "breast-cancer"
CRD = "modeldeployments.canaryml.dev"
RESOURCE = f"md/{NAME}"  # the short name the README uses
ROUTER_DEPLOYMENT = f"deployment/{NAME}-router"
ROLES = ("stable", "canary", "bad")

E2E_FLAG = "CANARYML_E2E"  # "1": a cluster that cannot be used fails the tests, never skips
IMAGE_ENV, DEFAULT_IMAGE = "CANARYML_E2E_IMAGE", "canaryml:e2e"
NAMESPACE_ENV, DEFAULT_NAMESPACE = "CANARYML_E2E_NAMESPACE", "ml"
# A namespace the tests created carries this label: only such a one is deleted to start afresh.
OWNED_LABEL = "canaryml.dev/e2e"

# Pinned to the digests examples/train_models.py gives (tests/unit/test_examples_pinned.py).
STABLE_MODEL: dict[str, Any] = {
    "uri": "http://model-store/stable",
    "version": "1.0.0",
    "sha256": "6ca19cea7ab3edf29ccef908d2ff904569ffac7314c308964ff7969256d1c34b",
}
CANARY_MODEL: dict[str, Any] = {
    "uri": "http://model-store/canary",
    "version": "1.1.0",
    "sha256": "61593d7d5e599c52d4335c56af8f03eb55ae00a06657b91c5942ec718bbf8ae2",
}
BAD_MODEL: dict[str, Any] = {
    "uri": "http://model-store/bad",
    "version": "1.2.0",
    "sha256": "493244cf53506d662724606a93ea493dd5f8b9e772ce2cd3885afb0ad9963c10",
}
STEPS = [20, 50]
STEP_INTERVAL = "20s"
PROBABILITY_TOLERANCE = 0.3


def canary_patch(
    canary: Mapping[str, Any], *, shadow: Mapping[str, Any], approval: bool = False
) -> dict[str, Any]:
    """The merge patch that starts a rollout of `canary`, its answers compared with `shadow`'s;
    with `approval`, its promotion waits for `canaryml promote` (canary.approval.required).

    The shadow is the model the canary would replace: a canary that answers unlike it is
    suspect. Probabilities may differ by PROBABILITY_TOLERANCE (the forest's votes and the
    logistic regression's probabilities are both right, and differently sure).
    """
    rollout: dict[str, Any] = {
        "model": dict(canary),
        "steps": list(STEPS),
        "stepInterval": STEP_INTERVAL,
    }
    if approval:
        rollout["approval"] = {"required": True}
    return {
        "spec": {
            "canary": rollout,
            "shadow": {
                "model": dict(shadow),
                "percent": 100,
                "probabilityTolerance": PROBABILITY_TOLERANCE,
            },
        }
    }


# A good canary (the forest, 1.1.0) against the stable model it replaces, promoted once
# approved...
GOOD_CANARY_PATCH = canary_patch(CANARY_MODEL, shadow=STABLE_MODEL, approval=True)
# ...then a bad one (a tree fitted on shuffled labels) against the now-stable forest.
BAD_CANARY_PATCH = canary_patch(BAD_MODEL, shadow=CANARY_MODEL)
# At last the spec names what runs, as a Git commit would after a promotion: nothing moves.
SETTLE_PATCH: dict[str, Any] = {
    "spec": {"model": dict(CANARY_MODEL), "canary": None, "shadow": None}
}


def merge_patch(target: Any, patch: Any) -> Any:
    """`target` with a JSON merge patch (RFC 7386) applied, as `kubectl patch --type merge`
    does: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, Mapping):
        return patch
    result: dict[str, Any] = dict(target) if isinstance(target, Mapping) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def load_documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc]
    assert all(isinstance(doc, dict) for doc in docs), f"{path}: every document is an object"
    return docs


# ---------------------------------------------------------------------------------------------
# kubectl


class KubectlError(AssertionError):
    """A kubectl command failed; the message has the command and what it printed."""


def kubectl(
    *args: str, input: str | None = None, timeout: float = 120.0, check: bool = True
) -> subprocess.CompletedProcess[str]:
    command = ["kubectl", *args]
    print(f"$ {shlex.join(command)}", flush=True)
    try:
        result = subprocess.run(
            command, input=input, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as error:
        raise KubectlError(f"{shlex.join(command)}: no answer within {timeout:g} s") from error
    if check and result.returncode != 0:
        raise KubectlError(
            f"{shlex.join(command)} exited {result.returncode}\n{result.stdout}{result.stderr}"
        )
    return result


def canaryml(*args: str, timeout: float = 60.0) -> str:
    """The `canaryml` command (this checkout's), echoed as the README shows it."""
    print(f"$ {shlex.join(['canaryml', *args])}", flush=True)
    result = subprocess.run(
        [sys.executable, "-m", "canaryml_cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},  # `canaryml status`: a row on one line
    )
    if result.returncode != 0:
        raise AssertionError(
            f"canaryml {shlex.join(args)} exited {result.returncode}\n{result.stdout}"
            f"{result.stderr}"
        )
    return result.stdout


def cluster_problem() -> str | None:
    """Why these tests cannot run against the cluster KUBECONFIG names, or None when they can."""
    if shutil.which("kubectl") is None:
        return "kubectl is not on PATH"
    probes = [
        (["version", "--request-timeout=5s"], "no Kubernetes API server answers"),
        (["get", "--raw", "/readyz", "--request-timeout=5s"], "the API server is not ready"),
        (
            ["get", "crd", CRD, "--request-timeout=5s"],
            f"the {CRD} CRD is not installed (helm install canaryml charts/canaryml ...)",
        ),
    ]
    for args, meaning in probes:
        try:
            result = subprocess.run(
                ["kubectl", *args], capture_output=True, text=True, timeout=20, check=False
            )
        except subprocess.TimeoutExpired:
            return f"{meaning}: `kubectl {shlex.join(args)}` did not finish within 20 s"
        if result.returncode != 0:
            said = (result.stderr.strip() or result.stdout.strip()).splitlines()
            return f"{meaning}: `kubectl {shlex.join(args)}`: {said[-1] if said else 'failed'}"
    return None


def e2e_required() -> bool:
    return os.environ.get(E2E_FLAG, "").strip() == "1"


def get_object(namespace: str, resource: str = RESOURCE) -> dict[str, Any]:
    result = kubectl("get", resource, "-n", namespace, "-o", "json")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def get_status(namespace: str) -> dict[str, Any]:
    status: dict[str, Any] = get_object(namespace).get("status") or {}
    return status


def wait_until_exists(namespace: str, resource: str, *, timeout: float) -> dict[str, Any]:
    """The object once it exists (`kubectl wait` fails at once on an object not created yet)."""
    deadline = Deadline(timeout)
    while True:
        result = kubectl("get", resource, "-n", namespace, "-o", "json", check=False)
        if result.returncode == 0:
            found: dict[str, Any] = json.loads(result.stdout)
            return found
        if deadline.ends <= time.monotonic():
            raise AssertionError(
                f"{resource} in {namespace}: not created within {timeout:g} s\n\n"
                f"{diagnosis(namespace)}"
            )
        time.sleep(2)


def condition(status: Mapping[str, Any], kind: str) -> dict[str, Any] | None:
    return next((c for c in status.get("conditions") or [] if c.get("type") == kind), None)


def diagnosis(namespace: str) -> str:
    """What a person would look at first when a step timed out: the status the operator wrote
    (without the last analysis' per-check list, which the reasons repeat), the objects and the
    latest Events of the namespace."""
    parts: list[str] = []
    try:
        status = get_status(namespace)
        if isinstance(status.get("lastAnalysis"), dict):
            status["lastAnalysis"].pop("checks", None)
        parts.append("status:\n" + yaml.safe_dump(status, sort_keys=False))
    except KubectlError as error:
        parts.append(f"status unreadable: {error}")
    for args in (
        ["get", "modeldeployments,deployments,pods", "-n", namespace, "-o", "wide"],
        ["get", "events", "-n", namespace, "--sort-by=.lastTimestamp"],
    ):
        result = kubectl(*args, check=False)
        lines = (result.stdout + result.stderr).splitlines()
        parts.append(f"$ kubectl {shlex.join(args)}\n" + "\n".join(lines[-40:]))
    return "\n\n".join(parts)


def wait_for(
    *,
    namespace: str,
    timeout: float,
    condition: str | None = None,
    jsonpath: str | None = None,
    equals: str | None = None,
    resource: str = RESOURCE,
) -> None:
    """`kubectl wait --for=condition=X` (status True) or `--for=jsonpath='{...}'=value`; a
    timeout fails with the diagnosis."""
    if (condition is None) == (jsonpath is None):
        raise ValueError("wait for a condition or a jsonpath, not both")
    wanted = f"condition={condition}" if condition else f"jsonpath={{{jsonpath}}}={equals}"
    seconds = max(1, round(timeout))
    result = kubectl(
        "wait",
        resource,
        "-n",
        namespace,
        f"--for={wanted}",
        f"--timeout={seconds}s",
        timeout=seconds + 30,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{resource} in {namespace}: not {wanted} within {seconds} s "
            f"({(result.stderr or result.stdout).strip()})\n\n{diagnosis(namespace)}"
        )


def rollout_status(deployment: str, *, namespace: str, timeout: float) -> None:
    seconds = max(1, round(timeout))
    result = kubectl(
        "rollout",
        "status",
        deployment,
        "-n",
        namespace,
        f"--timeout={seconds}s",
        timeout=seconds + 30,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(
            f"{deployment} in {namespace} did not roll out within {seconds} s: "
            f"{(result.stderr or result.stdout).strip()}\n\n{diagnosis(namespace)}"
        )


class Deadline:
    """One time budget shared by several waits."""

    def __init__(self, seconds: float) -> None:
        self.ends = time.monotonic() + seconds

    def left(self) -> float:
        return max(1.0, self.ends - time.monotonic())


# ---------------------------------------------------------------------------------------------
# The walk-through's steps


def fresh_namespace(namespace: str) -> str | None:
    """Create `namespace`; one left by an earlier run of these tests is deleted first. Returns
    why it cannot be used (it exists and is someone else's), or None."""
    found = kubectl("get", "namespace", namespace, "-o", "json", check=False)
    if found.returncode == 0:
        labels = json.loads(found.stdout).get("metadata", {}).get("labels") or {}
        if labels.get(OWNED_LABEL) != "true":
            return (
                f"namespace {namespace} exists and was not created by these tests: delete it "
                f"or set {NAMESPACE_ENV} to another name"
            )
        kubectl("delete", "namespace", namespace, "--wait=true", "--timeout=300s", timeout=330)
    kubectl("create", "namespace", namespace)
    kubectl("label", "namespace", namespace, f"{OWNED_LABEL}=true")
    return None


def delete_namespace(namespace: str) -> None:
    kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def create_model_configmaps(models: Path, *, namespace: str) -> None:
    """One ConfigMap per packaged model folder (binary files go to binaryData). `create`, not
    client-side `apply`: apply's last-applied annotation is limited to 256 KB."""
    for role in ROLES:
        folder = models / role
        assert (folder / "manifest.json").is_file(), f"{folder} is not a packaged model"
        kubectl("create", "configmap", f"model-{role}", "-n", namespace, f"--from-file={folder}/")


def kind_manifests(file: str, *, namespace: str, image: str | None = None) -> list[dict[str, Any]]:
    """The documents of examples/kind/FILE, moved to `namespace`, with the example image
    (canaryml:e2e) replaced by `image`."""
    docs = load_documents(KIND / file)
    for doc in docs:
        meta = doc.setdefault("metadata", {})
        if "namespace" in meta:
            meta["namespace"] = namespace
        template = doc.get("spec", {}).get("template", {}).get("spec", {})
        for container in template.get("containers", []):
            if image is not None and container.get("image") == DEFAULT_IMAGE:
                container["image"] = image
                container.pop("imagePullPolicy", None)  # Never: only for the image kind loaded
    return docs


def apply(docs: Sequence[Mapping[str, Any]]) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(list(docs), sort_keys=False))


def patch_model_deployment(patch: Mapping[str, Any], *, namespace: str) -> None:
    kubectl("patch", RESOURCE, "-n", namespace, "--type", "merge", "-p", json.dumps(patch))


# ---------------------------------------------------------------------------------------------
# Traffic


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PortForward:
    """`kubectl port-forward svc/NAME PORT:80`, started again whenever it exits: it ends when
    the pod it picked goes away, and the traffic must outlive any one router pod."""

    def __init__(self, service: str, *, namespace: str, remote_port: int = 80) -> None:
        self.port = free_port()
        self.command = [
            "kubectl",
            "port-forward",
            f"svc/{service}",
            "-n",
            namespace,
            "--address=127.0.0.1",
            f"{self.port}:{remote_port}",
        ]
        self.restarts = 0
        self._stopped = threading.Event()
        self._lock = threading.Lock()  # stop() never misses a process started at that moment
        self._process: subprocess.Popen[bytes] | None = None
        self._thread = threading.Thread(target=self._supervise, name="port-forward", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> PortForward:
        print(f"$ {shlex.join(self.command)} &", flush=True)
        self._thread.start()
        return self

    def _supervise(self) -> None:
        while True:
            with self._lock:
                if self._stopped.is_set():
                    return
                process = self._process = subprocess.Popen(
                    self.command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
                )
            process.wait()
            if self._stopped.wait(1.0):
                return
            self.restarts += 1

    def wait_ready(self, *, path: str, timeout: float) -> None:
        """Until `path` answers 200 through the forward (a listening port alone proves
        nothing: kubectl listens before it has reached the pod)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            try:
                response = httpx.get(f"{self.url}{path}", timeout=5.0)
                if response.status_code == 200:
                    return
                last = f"HTTP {response.status_code}"
            except httpx.HTTPError as error:
                last = repr(error)
            time.sleep(1.0)
        raise AssertionError(f"{self.url}{path} did not answer 200 within {timeout:g} s: {last}")

    def stop(self) -> None:
        with self._lock:
            self._stopped.set()
            process = self._process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        self._thread.join(timeout=15)


class Traffic:
    """examples/kind/traffic.py as a background process, as the README runs it."""

    def __init__(self, *, url: str, rows: Path, folder: Path, rate: float = 20.0) -> None:
        self.log = folder / "traffic.log"
        self.summary = folder / "traffic.json"
        self.command = [
            sys.executable,
            str(TRAFFIC_SCRIPT),
            "--url",
            url,
            "--rows",
            str(rows),
            "--rate",
            f"{rate:g}",
            "--summary",
            str(self.summary),
        ]
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> Traffic:
        print(f"$ {shlex.join(self.command)} &", flush=True)
        with self.log.open("wb") as log:
            self._process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def output(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace") if self.log.exists() else ""

    def stop(self) -> dict[str, Any]:
        """Stop it (as Ctrl-C would) and return its totals: {"total", "codes", "tracks"}."""
        if self._process is not None and self._process.poll() is None:
            self._process.send_signal(signal.SIGTERM)
            try:
                self._process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
        if not self.summary.is_file():
            raise AssertionError(f"traffic.py wrote no summary; its output:\n{self.output()}")
        totals: dict[str, Any] = json.loads(self.summary.read_text(encoding="utf-8"))
        return totals


def answering_versions(
    url: str, row: Mapping[str, Any], *, requests: int = 20
) -> Counter[tuple[str, str]]:
    """(track, model version) of `requests` predictions, each from another user."""
    seen: Counter[tuple[str, str]] = Counter()
    with httpx.Client(timeout=10.0) as client:
        for index in range(requests):
            response = client.post(
                f"{url}/predict", json=dict(row), headers={"x-user-id": f"check-{index}"}
            )
            response.raise_for_status()
            track = response.headers.get("x-canaryml-track", "?")
            seen[(track, str(response.json().get("version")))] += 1
    return seen


def wait_until_served_by(
    url: str, row: Mapping[str, Any], *, version: str, timeout: float
) -> Counter[tuple[str, str]]:
    """Until every one of a round of predictions is answered by the stable track with
    `version` (the routers follow the status within about a second; an old stable pod may
    answer until its endpoint is removed)."""
    deadline = time.monotonic() + timeout
    seen: Counter[tuple[str, str]] = Counter()
    while time.monotonic() < deadline:
        try:
            seen = answering_versions(url, row)
        except httpx.HTTPError as error:
            print(f"prediction failed, trying again: {error!r}", flush=True)
        else:
            if set(seen) == {("stable", version)}:
                return seen
        time.sleep(2.0)
    raise AssertionError(
        f"not every answer is the stable track's {version} after {timeout:g} s: {dict(seen)}"
    )
