"""The operator under kopf, in-process, against the Kubernetes API emulator.

`running_emulator()` starts the emulator on loopback and writes a kubeconfig file pointing at
it; `running_operator()` runs `kopf.operator()` in the test's loop, cluster-wide (the emulator
cannot list namespaces). `Cluster` is what a test does through the API, as kubectl would, plus
the one thing a cluster's controllers would do that the emulator does not: roll Deployments out.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp.web
import kmock
import kopf
import pytest
import yaml
from canaryml_api import resource as api
from kubernetes.config import kube_config

from canaryml_testing.kube_emulator import KubeEmulator

T = TypeVar("T")

TEST_USER_AGENT = "canaryml-component-tests"

MD_PATH = f"/apis/{api.GROUP}/{api.VERSION}"
PATHS = {
    "ModelDeployment": (MD_PATH, api.PLURAL),
    "AnalysisTemplate": (MD_PATH, api.TEMPLATE_PLURAL),
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "Event": ("/api/v1", "events"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
}


def spare_tests(request: aiohttp.web.BaseRequest) -> bool:
    """A `Fault`'s `spare`: the test's own calls (`Cluster`'s), as from a healthy kubectl."""
    return request.headers.get("User-Agent") == TEST_USER_AGENT


def declare_resources(emulator: kmock.KubernetesEmulator) -> None:
    emulator.resources.load_bundled()
    emulator.resources[f"{api.GROUP}/{api.VERSION}/{api.PLURAL}"] = kmock.ResourceInfo(
        kind=api.KIND,
        singular=api.SINGULAR,
        namespaced=True,
        shortnames=set(api.SHORT_NAMES),
        subresources={"status"},
        verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
    )
    # Reusable analysis: a namespaced and a cluster-scoped kind, no status.
    for kind, plural, singular, namespaced in (
        (api.TEMPLATE_KIND, api.TEMPLATE_PLURAL, api.TEMPLATE_SINGULAR, True),
        (
            api.CLUSTER_TEMPLATE_KIND,
            api.CLUSTER_TEMPLATE_PLURAL,
            api.CLUSTER_TEMPLATE_SINGULAR,
            False,
        ),
    ):
        emulator.resources[f"{api.GROUP}/{api.VERSION}/{plural}"] = kmock.ResourceInfo(
            kind=kind,
            singular=singular,
            namespaced=namespaced,
            verbs={"create", "delete", "get", "list", "patch", "update", "watch"},
        )


def write_kubeconfig(path: Path, url: str) -> Path:
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "emulator", "cluster": {"server": url}}],
        "users": [{"name": "tester", "user": {"token": "any"}}],
        "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester"}}],
        "current-context": "emulator",
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


class Cluster:
    """The emulated cluster, as a test sees it through the API."""

    def __init__(self, emulator: KubeEmulator) -> None:
        self.emulator = emulator

    async def call(self, method: str, path: str, body: Any = None, **headers: str) -> Any:
        headers.setdefault("User-Agent", TEST_USER_AGENT)  # tells the test's calls apart
        kwargs: dict[str, Any] = {}
        if body is not None:
            kwargs["json"] = body
            if method == "PATCH":
                headers.setdefault("Content-Type", "application/merge-patch+json")
        async with self.emulator.request(method, path, headers=headers, **kwargs) as response:
            data = await response.json(content_type=None)
            if response.status >= 400:
                raise ApiError(response.status, data)
            return data

    @staticmethod
    def path(kind: str, namespace: str, name: str | None = None, sub: str | None = None) -> str:
        prefix, plural = PATHS[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        return "/".join(part for part in (path, name, sub) if part)

    async def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = await self.call("GET", self.path(kind, namespace, name))
        except ApiError as error:
            if error.status == 404:
                return None
            raise
        return found

    async def list(self, kind: str, namespace: str, selector: str = "") -> list[dict[str, Any]]:
        path = self.path(kind, namespace) + (f"?labelSelector={selector}" if selector else "")
        items: list[dict[str, Any]] = (await self.call("GET", path))["items"]
        return items

    async def apply(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the ModelDeployment, or replace its spec (what `kubectl apply` amounts to)."""
        current = await self.get("ModelDeployment", namespace, name)
        if current is None:
            body = {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"name": name, "namespace": namespace},
                "spec": spec,
            }
            created: dict[str, Any] = await self.call(
                "POST", self.path("ModelDeployment", namespace), body
            )
            return created
        # A merge patch cannot remove keys it does not name: null out what the new spec drops.
        patch = {key: spec.get(key) for key in {*current.get("spec", {}), *spec}}
        patched: dict[str, Any] = await self.call(
            "PATCH", self.path("ModelDeployment", namespace, name), {"spec": patch}
        )
        return patched

    async def delete(self, kind: str, namespace: str, name: str) -> None:
        await self.call("DELETE", self.path(kind, namespace, name))

    async def patch(self, kind: str, namespace: str, name: str, patch: dict[str, Any]) -> Any:
        return await self.call("PATCH", self.path(kind, namespace, name), patch)

    async def roll_out(self, namespace: str, name: str) -> None:
        """What the Deployment controller and kubelets do: every replica updated and available."""
        deployment = await self.get("Deployment", namespace, name)
        assert deployment is not None, f"no Deployment {name}"
        replicas = deployment["spec"].get("replicas", 1)
        status = {
            "observedGeneration": deployment["metadata"]["generation"],
            "replicas": replicas,
            "updatedReplicas": replicas,
            "readyReplicas": replicas,
            "availableReplicas": replicas,
        }
        await self.call(
            "PATCH", self.path("Deployment", namespace, name, "status"), {"status": status}
        )

    async def events(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """Events about one ModelDeployment, oldest first."""
        return [
            event
            for event in await self.list("Event", namespace)
            if event.get("involvedObject", {}).get("name") == name
            and event.get("involvedObject", {}).get("kind") == api.KIND
        ]

    def requests(self, method: str | None = None, path_part: str = "") -> list[Any]:
        return [
            request
            for request in self.emulator
            if (method is None or str(request.method).upper().endswith(method))
            and path_part in str(request.url.path)
        ]


async def eventually(
    probe: Callable[[], Awaitable[T]],
    *,
    until: Callable[[T], bool] = bool,
    within: float = 10.0,
    what: str = "the condition",
) -> T:
    """Poll `probe` until `until` holds for its value; fail with the last value after `within`
    seconds."""
    deadline = time.monotonic() + within
    while True:
        value = await probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what}; last: {value!r}")
        await asyncio.sleep(0.05)


@contextlib.asynccontextmanager
async def running_emulator(
    tmp: Path, monkeypatch: pytest.MonkeyPatch | None = None
) -> AsyncIterator[tuple[KubeEmulator, Path]]:
    """The emulator on a loopback port and a kubeconfig for it; with `monkeypatch`, the
    kubernetes client in this process (and processes started from it) pointed there too (the
    client read KUBECONFIG when it was imported)."""
    async with KubeEmulator() as emulator, kmock.Server(emulator) as server:
        declare_resources(emulator)
        kubeconfig = write_kubeconfig(tmp / "kubeconfig", str(server.url))
        if monkeypatch is not None:
            monkeypatch.setenv("KUBECONFIG", str(kubeconfig))
            monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        yield emulator, kubeconfig


@contextlib.asynccontextmanager
async def running_operator(**options: Any) -> AsyncIterator[asyncio.Task[None]]:
    """kopf.operator() in this loop, cluster-wide and standalone unless `options` (kopf's
    namespaces, clusterwide, standalone, peering_name) say otherwise; cancelled on exit."""
    ready = asyncio.Event()
    options = {"clusterwide": True, "standalone": True, **options}
    task = asyncio.create_task(kopf.operator(ready_flag=ready, **options))
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({task, waiter}, timeout=30, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()  # raises what stopped the operator
        raise RuntimeError("the operator stopped before it was ready")
    if waiter not in done:
        task.cancel()
        raise RuntimeError("the operator was not ready within 30 s")
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
