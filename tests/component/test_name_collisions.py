"""Two ModelDeployments whose children's names collide, under kopf against the API emulator.

`a`'s stable track Service and `a-stable`'s endpoint Service are both named `a-stable`. The
first keeps it; the second never overwrites it, is Degraded (and not Ready) with a reason that
names the object, and gets a Warning Event; once the name is free it takes it.
"""

from __future__ import annotations

from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_operator import MINIMAL, NS, condition, names, reasons, wait_status


async def test_a_child_of_another_resource_is_never_overwritten(cluster: Cluster) -> None:
    first = await cluster.apply(NS, "a", MINIMAL)
    await eventually(
        lambda: names(cluster, "Service", "a"),
        until=lambda found: found == {"a", "a-stable"},
        what="a's Services",
    )
    await cluster.roll_out(NS, "a-stable")
    await wait_status(
        cluster, "a", "a Ready", lambda md: condition(md, "Ready").get("status") == "True"
    )

    await cluster.apply(NS, "a-stable", MINIMAL)
    degraded = await wait_status(
        cluster,
        "a-stable",
        "a-stable Degraded",
        lambda md: condition(md, "Degraded").get("reason") == "ChildConflict",
    )
    message = condition(degraded, "Degraded")["message"]
    assert message.startswith(
        "Service a-stable already exists and belongs to ModelDeployment a: not overwritten"
    )
    assert condition(degraded, "Degraded")["status"] == "True"
    assert condition(degraded, "Stalled")["status"] == "True"
    assert condition(degraded, "Ready")["status"] == "False"
    await eventually(
        lambda: reasons(cluster, "a-stable"),
        until=lambda found: ("Warning", "ChildConflict") in found,
        what="a Warning Event ChildConflict",
    )

    # The other resource keeps its Service, selector and all, and stays Ready.
    service = await cluster.get("Service", NS, "a-stable")
    assert service is not None
    (reference,) = service["metadata"]["ownerReferences"]
    assert reference["uid"] == first["metadata"]["uid"]
    assert service["spec"]["selector"]["canaryml.dev/model-deployment"] == "a"
    a = await cluster.get("ModelDeployment", NS, "a")
    assert condition(a, "Ready")["status"] == "True"
    assert condition(a, "Degraded")["status"] == "False"

    # Once `a` is gone (and its Service with it), `a-stable` takes the name.
    await cluster.delete("ModelDeployment", NS, "a")

    async def endpoint_owner() -> str | None:
        found = await cluster.get("Service", NS, "a-stable")
        labels = (found or {}).get("metadata", {}).get("labels") or {}
        return labels.get("canaryml.dev/model-deployment")

    await eventually(
        endpoint_owner, until=lambda owner: owner == "a-stable", what="a-stable's own Service"
    )
    await wait_status(
        cluster,
        "a-stable",
        "a-stable no longer Degraded",
        lambda md: condition(md, "Degraded").get("status") == "False",
    )
