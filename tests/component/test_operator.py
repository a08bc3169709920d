"""The operator under kopf, in-process, against the Kubernetes API emulator.

Each test drives the emulated cluster the way a user and the cluster's own controllers would
(apply a ModelDeployment, roll a Deployment out, delete or edit a child by hand) and asserts what
the user sees: the children, the status and its conditions, and the Events.
"""

from __future__ import annotations

import copy
from typing import Any

from canaryml_api import resource as api
from canaryml_testing.cluster import Cluster, eventually, running_operator

NS = "ml"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
SHADOW = {"uri": "gs://models/iris/2.0.0", "version": "2.0.0", "sha256": "c" * 64}
MINIMAL: dict[str, Any] = {"model": STABLE}
FULL: dict[str, Any] = {
    "model": STABLE,
    "canary": {"model": CANARY, "steps": [10, 50]},
    "shadow": {"model": SHADOW, "percent": 50},
    "serving": {"replicas": 2},
}


def condition(md: dict[str, Any] | None, kind: str) -> dict[str, Any]:
    for found in ((md or {}).get("status") or {}).get("conditions") or []:
        if found["type"] == kind:
            return dict(found)
    return {}


def env(deployment: dict[str, Any]) -> dict[str, str]:
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    return {item["name"]: item.get("value", "") for item in container["env"]}


async def names(cluster: Cluster, kind: str, owner: str) -> set[str]:
    selector = f"canaryml.dev/model-deployment={owner}"
    return {obj["metadata"]["name"] for obj in await cluster.list(kind, NS, selector)}


async def wait_status(cluster: Cluster, name: str, what: str, check: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        return await cluster.get("ModelDeployment", NS, name)

    found = await eventually(probe, until=lambda md: md is not None and check(md), what=what)
    assert found is not None
    return found


async def wait_children(cluster: Cluster, name: str, expected: set[str]) -> None:
    """The model tracks `expected` (and, with any, the builtin router and the main Service)."""

    async def both() -> tuple[set[str], set[str]]:
        return await names(cluster, "Deployment", name), await names(cluster, "Service", name)

    tracks = {f"{name}-{track}" for track in expected}
    deployments = tracks | {f"{name}-router"} if expected else set()
    services = tracks | {name} if expected else set()
    await eventually(
        both,
        until=lambda found: found == (deployments, services),
        what=f"Deployments {sorted(deployments)} and Services {sorted(services)}",
    )


async def reasons(cluster: Cluster, name: str) -> list[tuple[str, str]]:
    return [(event["type"], event["reason"]) for event in await cluster.events(NS, name)]


async def messages(cluster: Cluster, name: str, reason: str) -> list[tuple[str, str]]:
    return [
        (event["type"], event["message"])
        for event in await cluster.events(NS, name)
        if event["reason"] == reason
    ]


async def test_create_makes_every_child_owned_by_the_resource_and_reports_ready(
    cluster: Cluster,
) -> None:
    created = await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})

    for kind in ("Deployment", "Service"):
        for child in await cluster.list(kind, NS, "canaryml.dev/model-deployment=iris"):
            (reference,) = child["metadata"]["ownerReferences"]
            assert reference["uid"] == created["metadata"]["uid"]
            assert reference["kind"] == api.KIND and reference["controller"] is True
    canary = await cluster.get("Deployment", NS, "iris-canary")
    assert canary is not None
    assert env(canary)["CANARYML_MODEL_URI"] == CANARY["uri"]
    assert env(canary)["CANARYML_MODEL_SHA256"] == CANARY["sha256"]
    assert env(canary)["CANARYML_TRACK"] == "canary"
    stable = await cluster.get("Deployment", NS, "iris-stable")
    assert stable is not None and stable["spec"]["replicas"] == 2

    pending = await wait_status(
        cluster, "iris", "status before roll-out", lambda md: "status" in md
    )
    assert pending["status"]["observedGeneration"] == 1
    assert pending["status"]["phase"] == "Pending"
    assert condition(pending, "Ready")["status"] == "False"

    await cluster.roll_out(NS, "iris-stable")
    ready = await wait_status(
        cluster, "iris", "Ready=True", lambda md: condition(md, "Ready").get("status") == "True"
    )
    # The canary's analysis daemon must be stopped before the resource goes: kopf's finalizer.
    # Without a canary (test_deleting_the_resource_removes_its_children) there is none.
    assert ready["metadata"].get("finalizers") == ["canaryml.dev/finalizer"]
    status = ready["status"]
    assert status["stableVersion"] == "1.0.0"
    assert status["canaryVersion"] == "1.1.0"
    assert status["phase"] == "Progressing"
    assert condition(ready, "Ready")["reason"] == "StableAvailable"
    assert condition(ready, "Degraded")["status"] == "False"
    assert condition(ready, "Progressing")["status"] == "True"

    events = await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: ("Normal", "Ready") in found,
        what="the Ready event",
    )
    assert events.count(("Normal", "Created")) == 1  # one Event for all fourteen children
    (created,) = await messages(cluster, "iris", "Created")
    # 3 model Deployments and their Services, the main Service, the router's Deployment,
    # ServiceAccount, Role and RoleBinding; the router's and the model servers'
    # NetworkPolicies, and the stable track's PodDisruptionBudget (2 replicas).
    assert created[1].count(" created") == 14


async def test_a_new_model_version_rolls_the_stable_deployment(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", MINIMAL)
    await wait_children(cluster, "iris", {"stable"})
    await cluster.roll_out(NS, "iris-stable")
    await wait_status(
        cluster, "iris", "Ready", lambda md: condition(md, "Ready").get("status") == "True"
    )

    new_model = {"uri": "s3://models/iris/1.0.1", "version": "1.0.1+build.7", "sha256": "d" * 64}
    await cluster.apply(NS, "iris", {"model": new_model})

    async def stable() -> dict[str, Any] | None:
        return await cluster.get("Deployment", NS, "iris-stable")

    rolled = await eventually(
        stable,
        until=lambda d: d is not None and env(d)["CANARYML_MODEL_VERSION"] == "1.0.1+build.7",
        what="the stable Deployment on the new version",
    )
    assert rolled is not None
    assert env(rolled)["CANARYML_MODEL_URI"] == new_model["uri"]
    # A label value cannot hold '+': the label is sanitised, the status keeps the exact version.
    assert rolled["metadata"]["labels"]["app.kubernetes.io/version"] == "1.0.1_build.7"
    rolling = await wait_status(
        cluster, "iris", "generation 2 observed", lambda md: md["status"]["observedGeneration"] == 2
    )
    assert rolling["metadata"]["generation"] == 2
    assert rolling["status"]["stableVersion"] == "1.0.0"  # what really serves until rolled out
    assert condition(rolling, "Progressing")["reason"] == "StableRollingOut"

    await cluster.roll_out(NS, "iris-stable")
    done = await wait_status(
        cluster, "iris", "the new version", lambda md: md["status"]["stableVersion"] != "1.0.0"
    )
    assert done["status"]["stableVersion"] == "1.0.1+build.7"
    assert done["status"]["phase"] == "Stable"
    await eventually(
        lambda: reasons(cluster, "iris"),
        until=lambda found: ("Normal", "Updated") in found,
        what="the Updated event",
    )


async def test_adding_and_removing_canary_and_shadow_adds_and_removes_their_children(
    cluster: Cluster,
) -> None:
    await cluster.apply(NS, "iris", MINIMAL)
    await wait_children(cluster, "iris", {"stable"})

    await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    with_canary = await wait_status(
        cluster, "iris", "the canary version", lambda md: md["status"].get("canaryVersion")
    )
    assert with_canary["status"]["canaryVersion"] == "1.1.0"

    without_canary = {key: value for key, value in FULL.items() if key != "canary"}
    await cluster.apply(NS, "iris", without_canary)
    await wait_children(cluster, "iris", {"stable", "shadow"})
    cleared = await wait_status(
        cluster, "iris", "no canary version", lambda md: not md["status"].get("canaryVersion")
    )
    assert cleared["status"]["canaryWeight"] == 0

    await cluster.apply(NS, "iris", MINIMAL)
    await wait_children(cluster, "iris", {"stable"})
    expected = {
        "Deployment iris-canary deleted: the canary track was removed from the spec",
        "Service iris-shadow deleted: the shadow track was removed from the spec",
    }
    await eventually(
        lambda: messages(cluster, "iris", "Deleted"),
        until=lambda found: all(any(e in m for _, m in found) for e in expected),
        what="the Deleted events",
    )


async def test_a_child_deleted_or_edited_by_hand_is_put_back(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    await wait_status(cluster, "iris", "first status", lambda md: "status" in md)
    original = await cluster.get("Deployment", NS, "iris-canary")
    assert original is not None

    await cluster.delete("Deployment", NS, "iris-canary")
    restored = await eventually(
        lambda: cluster.get("Deployment", NS, "iris-canary"),
        until=lambda d: d is not None and d["metadata"]["uid"] != original["metadata"]["uid"],
        what="iris-canary re-created",
    )
    assert restored is not None and restored["spec"] == original["spec"]

    await cluster.patch("Service", NS, "iris", {"spec": {"selector": {"app": "hijacked"}}})

    async def selector() -> dict[str, str]:
        service = await cluster.get("Service", NS, "iris")
        return dict((service or {}).get("spec", {}).get("selector", {}))

    await eventually(
        selector,
        until=lambda found: (
            found
            == {
                "canaryml.dev/model-deployment": "iris",
                "canaryml.dev/component": "router",
            }
        ),
        what="the main Service selector put back (to the router)",
    )
    expected = {
        ("Warning", "Deployment iris-canary restored after it was deleted"),
        ("Warning", "Service iris put back after a hand edit"),
    }
    await eventually(
        lambda: messages(cluster, "iris", "Restored"),
        until=lambda found: all(
            any(kind == t and text in m for t, m in found) for kind, text in expected
        ),
        what="the Restored events",
    )


async def test_an_invalid_spec_is_reported_and_the_other_resources_are_still_served(
    cluster: Cluster,
) -> None:
    bad_uri = copy.deepcopy(FULL)
    bad_uri["model"] = {"uri": "ftp://models/iris", "version": "1.0.0"}
    bad_steps = copy.deepcopy(FULL)
    bad_steps["canary"]["steps"] = [50, 10]
    # The emulator, unlike an API server with the CRD, admits all of these.
    await cluster.apply(NS, "bad-uri", bad_uri)
    await cluster.apply(NS, "bad-steps", bad_steps)
    await cluster.apply(NS, "no-model", {"serving": {"replicas": 1}})
    await cluster.apply(NS, "iris", FULL)

    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    for name, words in {
        "bad-uri": ["spec.model.uri", "ftp://models/iris"],
        "bad-steps": ["spec.canary.steps", "strictly increasing"],
        "no-model": ["spec.model", "Field required"],
    }.items():
        failed = await wait_status(
            cluster, name, f"{name} Degraded", lambda md: condition(md, "Degraded").get("status")
        )
        degraded = condition(failed, "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == "InvalidSpec"
        assert all(word in degraded["message"] for word in words), degraded["message"]
        assert condition(failed, "Stalled")["status"] == "True"
        assert failed["status"]["phase"] == "Failed"
        assert await names(cluster, "Deployment", name) == set()
        warnings = await eventually(
            lambda name=name: cluster.events(NS, name),
            until=lambda found: any(event["reason"] == "InvalidSpec" for event in found),
            what=f"the InvalidSpec event of {name}",
        )
        (event,) = [event for event in warnings if event["reason"] == "InvalidSpec"]
        assert event["type"] == "Warning" and event["message"] == degraded["message"]

    # Fixing the spec heals the resource.
    await cluster.apply(NS, "bad-uri", FULL)
    await wait_children(cluster, "bad-uri", {"stable", "canary", "shadow"})
    healed = await wait_status(
        cluster,
        "bad-uri",
        "Degraded=False",
        lambda md: condition(md, "Degraded").get("status") == "False",
    )
    assert condition(healed, "Stalled")["status"] == "False"
    await eventually(
        lambda: reasons(cluster, "bad-uri"),
        until=lambda found: ("Normal", "SpecValid") in found,
        what="the SpecValid event",
    )


async def test_a_name_too_long_for_child_names_is_reported_not_sent(cluster: Cluster) -> None:
    name = "a" * 57  # 57 + len("-shadow") > 63, the most a Service name may hold
    await cluster.apply(NS, name, FULL)

    failed = await wait_status(
        cluster, name, "Degraded", lambda md: condition(md, "Degraded").get("status")
    )
    assert condition(failed, "Degraded")["status"] == "True"
    assert "at most 56" in condition(failed, "Degraded")["message"]
    assert cluster.requests("POST", "/deployments") == []


async def test_deleting_the_resource_removes_its_children(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    await cluster.apply(NS, "other", MINIMAL)
    await wait_children(cluster, "other", {"stable"})

    await cluster.delete("ModelDeployment", NS, "iris")

    await eventually(
        lambda: cluster.get("ModelDeployment", NS, "iris"),
        until=lambda md: md is None,
        what="the ModelDeployment gone",
    )
    await wait_children(cluster, "iris", set())  # collected through their owner references
    other = await cluster.get("ModelDeployment", NS, "other")
    assert other is not None and not other["metadata"].get("finalizers")
    assert await names(cluster, "Deployment", "other") == {"other-stable", "other-router"}


async def test_a_restarted_operator_changes_nothing_that_is_in_shape(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    await cluster.roll_out(NS, "iris-stable")
    before = await wait_status(
        cluster, "iris", "Ready", lambda md: condition(md, "Ready").get("status") == "True"
    )
    # The fixture's operator keeps running; a second one resumes every resource, as a restarted
    # operator would, and must find nothing to do.
    writes_before = len(cluster.requests("PATCH")) + len(cluster.requests("POST"))
    async with running_operator():
        await eventually(
            lambda: _resumed(cluster),
            what="the second operator's resume handler to read the children",
        )
    child_writes = [
        request
        for request in [*cluster.requests("PATCH"), *cluster.requests("POST")][writes_before:]
        if "/deployments" in str(request.url.path) or "/services" in str(request.url.path)
    ]
    assert child_writes == []
    after = await cluster.get("ModelDeployment", NS, "iris")
    assert after is not None and after["status"] == before["status"]


async def _resumed(cluster: Cluster) -> bool:
    # The resume handler lists the children; two operators mean two lists per kind.
    lists = [
        request
        for request in cluster.requests("GET", "/namespaces/ml/deployments")
        if "labelSelector" in request.params
    ]
    return len(lists) >= 2
