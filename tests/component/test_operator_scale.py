"""The operator at scale: reconciles read the children from kopf's watches, not from LISTs.

The operator keeps an index of every child kind (kopf's `@kopf.index`, filled from its watches);
a reconcile reads a resource's children from it and its body from the handler. These tests
count the requests the operator makes on the emulator (the test's own calls are told apart by
their User-Agent): a no-op reconcile lists nothing and reads nothing, a cold index (a restart
before the watch brought the children) creates no duplicates, and two operators watching
disjoint namespaces (sharding, docs/operator.md; two processes) never touch each other's
resources.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import main
from canaryml_operator.children import LABEL_MODEL_DEPLOYMENT as LABEL
from canaryml_operator.kube import RESOURCES, load_client
from canaryml_testing.cluster import (
    TEST_USER_AGENT,
    Cluster,
    eventually,
    running_emulator,
    running_operator,
)
from canaryml_testing.kube_emulator import KubeEmulator

NS = "ml"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
SHADOW = {"uri": "s3://models/iris/2.0.0", "version": "2.0.0", "sha256": "c" * 64}
FULL: dict[str, Any] = {"model": STABLE, "canary": {"model": CANARY}, "shadow": {"model": SHADOW}}
# Three tracks with the builtin router: a Deployment and a Service each, the main Service, the
# router's Deployment, ServiceAccount, Role and RoleBinding, and the NetworkPolicies.
OPERATOR_COMMAND = [sys.executable, "-m", "canaryml_cli", "operator", "--log-format", "json"]
CHILD_KINDS = ("Deployment", "Service", "ServiceAccount", "Role", "RoleBinding", "NetworkPolicy")


def operator_requests(emulator: KubeEmulator, since: int = 0, watches: bool = False) -> list[str]:
    """The operator's requests after the `since`-th as "METHOD path?query" (its watches only
    with `watches`)."""
    found = []
    for request in list(emulator)[since:]:
        if request.headers.get("User-Agent") == TEST_USER_AGENT:
            continue
        if request.params.get("watch") in ("true", "1") and not watches:
            continue
        query = "&".join(f"{k}={v}" for k, v in request.params.items())
        found.append(f"{str(request.method).rsplit('.', 1)[-1]} {request.url.path}?{query}")
    return found


async def children_of(cluster: Cluster, namespace: str, name: str) -> dict[str, set[str]]:
    found = {}
    for kind in CHILD_KINDS:
        prefix, plural = RESOURCES[kind]
        path = f"{prefix}/namespaces/{namespace}/{plural}"
        answer = await cluster.call("GET", f"{path}?labelSelector={LABEL}={name}")
        found[kind] = {obj["metadata"]["name"] for obj in answer["items"]}
    return found


async def settled(cluster: Cluster, namespace: str, name: str) -> dict[str, Any]:
    """The resource once reconciled: its status current and its children all there."""

    async def probe() -> tuple[dict[str, Any] | None, dict[str, set[str]]]:
        return (
            await cluster.get("ModelDeployment", namespace, name),
            await children_of(cluster, namespace, name),
        )

    def done(found: tuple[dict[str, Any] | None, dict[str, set[str]]]) -> bool:
        md, kids = found
        return (
            md is not None
            and (md.get("status") or {}).get("observedGeneration") == md["metadata"]["generation"]
            and all(kids.values())
        )

    md, _ = await eventually(probe, until=done, within=20, what=f"{name} reconciled")
    assert md is not None
    return md


async def quiet(emulator: KubeEmulator, seconds: float = 1.0, within: float = 30.0) -> int:
    """Wait until the operator made no request for `seconds`; the request count then. An
    operator that never goes quiet fails the test (with its last requests) instead of filling
    the emulator's log until the machine runs out of memory."""
    deadline = asyncio.get_running_loop().time() + within
    seen = -1
    while (count := len(list(emulator))) != seen:
        if asyncio.get_running_loop().time() > deadline:
            last = operator_requests(emulator, max(0, count - 20), watches=True)
            raise AssertionError(
                f"the operator made {count - seen} requests in the last "
                f"{seconds} s after {within} s; the last: {last}"
            )
        seen = count
        await asyncio.sleep(seconds)
    return count


class Reconciles:
    """Counts the reconciles the handlers run (a spy: the real function is called)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = main.reconcile_model_deployment

        def spy(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(main, "reconcile_model_deployment", spy)


@pytest.fixture
async def emulated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cluster, KubeEmulator]]:
    async with running_emulator(tmp_path, monkeypatch) as (emulator, _):
        yield Cluster(emulator), emulator


async def test_a_no_op_reconcile_lists_nothing_and_reads_nothing(
    emulated: tuple[Cluster, KubeEmulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster, emulator = emulated
    reconciles = Reconciles(monkeypatch)
    async with running_operator():
        await cluster.apply(NS, "iris", FULL)
        before = await settled(cluster, NS, "iris")
        mark = await quiet(emulator)
        runs = reconciles.count

        # An annotation nobody reads: kopf's update handler runs a reconcile with nothing to do.
        touch = {"metadata": {"annotations": {"example.com/touched": "yes"}}}
        await cluster.patch("ModelDeployment", NS, "iris", touch)

        async def reconciled() -> int:
            return reconciles.count

        await eventually(reconciled, until=lambda n: n > runs, what="a reconcile")
        await quiet(emulator)
        made = operator_requests(emulator, mark)
        after = await cluster.get("ModelDeployment", NS, "iris")

    assert after is not None
    assert after["status"] == before["status"]
    # kopf records the handled configuration in an annotation (its one PATCH of the object);
    # the reconcile itself lists nothing, reads nothing and writes nothing.
    assert made == [f"PATCH /apis/{api.GROUP}/{api.VERSION}/namespaces/{NS}/{api.PLURAL}/iris?"]


async def test_a_cold_index_creates_no_duplicates(
    emulated: tuple[Cluster, KubeEmulator],
) -> None:
    """A reconcile that finds no children in memory (the watch has not brought them yet, as
    right after a restart) plans to create them all: each create meets a 409 and is taken as
    "exists", and nothing is duplicated, deleted or reported as created."""
    cluster, emulator = emulated

    class Empty:
        def children(self, namespace: str, owner: str, kinds: tuple[str, ...]) -> list[Any]:
            return []

    async with running_operator():
        await cluster.apply(NS, "iris", FULL)
        await settled(cluster, NS, "iris")
        kids = await children_of(cluster, NS, "iris")
        events = len(await cluster.events(NS, "iris"))
        mark = await quiet(emulator)
        done = await asyncio.to_thread(
            main.reconcile_latest, NS, "iris", kube=load_client(), source=Empty()
        )
        made = operator_requests(emulator, mark)
        assert await children_of(cluster, NS, "iris") == kids
        assert len(await cluster.events(NS, "iris")) == events

    assert done.actions == []  # every create met a 409: nothing was done
    posts = [call for call in made if call.startswith("POST")]
    assert posts and len(posts) == sum(len(names) for names in kids.values())
    assert not [call for call in made if call.startswith(("DELETE", "PATCH"))]


@contextlib.contextmanager
def operator_processes(kubeconfig: Path, logs: dict[str, Path]) -> Iterator[None]:
    """One `canaryml operator --namespace NS` process per namespace (its log at `logs[NS]`),
    killed on exit. Processes, as in a cluster: kopf runs one operator per event loop (an
    operator that stops cancels every task its loop started after it, a second operator's
    included, and two in one loop hung in one run of twenty)."""
    processes = []
    try:
        for namespace, log in logs.items():
            with log.open("wb") as sink:
                processes.append(
                    subprocess.Popen(
                        [*OPERATOR_COMMAND, "--namespace", namespace, "--standalone"],
                        env={**os.environ, "KUBECONFIG": str(kubeconfig)},
                        stdout=sink,
                        stderr=subprocess.STDOUT,
                    )
                )
        yield
    finally:
        for process in processes:
            process.kill()
            process.wait()


async def test_operators_with_disjoint_namespaces_never_touch_each_others_resources(
    emulated: tuple[Cluster, KubeEmulator], tmp_path: Path
) -> None:
    """Sharding: one operator Deployment per namespace list (the chart's watchNamespaces).
    Two run at once, each reconciles its own namespace's resource, and neither makes a
    request (a watch included) in the other's namespace."""
    cluster, emulator = emulated
    logs = {namespace: tmp_path / f"{namespace}.log" for namespace in ("shard-a", "shard-b")}
    kubeconfig = Path(os.environ["KUBECONFIG"])
    with operator_processes(kubeconfig, logs):
        await cluster.apply("shard-a", "iris", FULL)
        await cluster.apply("shard-b", "wine", FULL)
        await settled(cluster, "shard-a", "iris")
        await settled(cluster, "shard-b", "wine")
        await quiet(emulator)
    made = operator_requests(emulator, watches=True)
    # Each operator logs the objects it handled (kopf's JSON records name them): its own only.
    for namespace, name in (("shard-a", "iris"), ("shard-b", "wine")):
        handled = {
            (record["object"].get("namespace"), record["object"]["name"])
            for line in logs[namespace].read_text().splitlines()
            if line.startswith("{") and "object" in (record := json.loads(line))
        }
        assert handled == {(namespace, name)}, handled
    # Both speak to one API server: tell their requests apart by namespace. Each namespace's
    # requests must be those of a complete operator, and none may be cluster-wide (beyond
    # discovery and the cluster-scoped templates, read by name).
    namespaced = [call for call in made if "/namespaces/" in call]
    assert {call.split("/namespaces/")[1].split("/")[0] for call in namespaced} == {
        "shard-a",
        "shard-b",
    }
    for namespace in ("shard-a", "shard-b"):
        watched = {
            call.split("?")[0].rsplit("/", 1)[1]
            for call in namespaced
            if f"/namespaces/{namespace}/" in call and "watch=true" in call
        }
        assert {api.PLURAL, "deployments", "services", "roles"} <= watched, watched
    cluster_wide = [
        call
        for call in made
        if "/namespaces/" not in call and ("watch=true" in call or "labelSelector" in call)
    ]
    assert not cluster_wide, cluster_wide
