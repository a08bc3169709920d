"""Digests on by default (issue 16, item 2): the operator creates no track for a model without
a sha256 unless the spec sets allowUnpinnedModels, says so in a condition and a Warning Event
naming the fields, keeps serving everything else, and always tells the server whether a digest
is required."""

from __future__ import annotations

import copy
from typing import Any

from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_operator import (
    FULL,
    NS,
    condition,
    env,
    names,
    wait_children,
    wait_status,
)


def _unpinned(md: dict[str, Any] | None) -> bool:
    return condition(md, "Degraded").get("reason") == "UnpinnedModel"


async def test_a_model_without_a_digest_gets_no_track_and_others_are_served(
    cluster: Cluster,
) -> None:
    unpinned = copy.deepcopy(FULL)
    del unpinned["canary"]["model"]["sha256"]
    await cluster.apply(NS, "unpinned", unpinned)
    await cluster.apply(NS, "iris", FULL)

    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    stable = await cluster.get("Deployment", NS, "iris-stable")
    assert stable is not None
    assert env(stable)["CANARYML_REQUIRE_SHA256"] == "true"
    assert env(stable)["CANARYML_MODEL_SHA256"] == FULL["model"]["sha256"]

    failed = await wait_status(cluster, "unpinned", "Degraded UnpinnedModel", _unpinned)
    degraded = condition(failed, "Degraded")
    assert degraded["status"] == "True"
    assert "spec.canary.model.sha256" in degraded["message"]
    assert "spec.allowUnpinnedModels" in degraded["message"]
    assert "spec.model.sha256" not in degraded["message"]  # the stable model is pinned
    assert condition(failed, "Stalled")["reason"] == "UnpinnedModel"
    assert failed["status"]["phase"] == "Failed"
    assert await names(cluster, "Deployment", "unpinned") == set()
    events = await eventually(
        lambda: cluster.events(NS, "unpinned"),
        until=lambda found: any(e["reason"] == "UnpinnedModel" for e in found),
        what="the UnpinnedModel event",
    )
    (event,) = [e for e in events if e["reason"] == "UnpinnedModel"]
    assert event["type"] == "Warning" and event["message"] == degraded["message"]

    # The spec opts in: the tracks are created, and the server is told not to require one.
    await cluster.apply(NS, "unpinned", {**unpinned, "allowUnpinnedModels": True})
    await wait_children(cluster, "unpinned", {"stable", "canary", "shadow"})
    canary = await cluster.get("Deployment", NS, "unpinned-canary")
    assert canary is not None
    assert env(canary)["CANARYML_REQUIRE_SHA256"] == "false"
    assert "CANARYML_MODEL_SHA256" not in env(canary)
    await wait_status(
        cluster,
        "unpinned",
        "Degraded=False",
        lambda md: condition(md, "Degraded").get("status") == "False",
    )


async def test_an_edit_to_an_unpinned_model_changes_nothing_that_runs(cluster: Cluster) -> None:
    await cluster.apply(NS, "iris", FULL)
    await wait_children(cluster, "iris", {"stable", "canary", "shadow"})
    before = await cluster.get("Deployment", NS, "iris-stable")
    assert before is not None

    edited = copy.deepcopy(FULL)
    # A merge patch, as `kubectl apply` of a spec without the digest sends.
    edited["model"] = {"uri": "s3://models/iris/1.0.1", "version": "1.0.1", "sha256": None}
    await cluster.apply(NS, "iris", edited)
    failed = await wait_status(cluster, "iris", "Degraded UnpinnedModel", _unpinned)
    assert "spec.model.sha256" in condition(failed, "Degraded")["message"]
    after = await cluster.get("Deployment", NS, "iris-stable")
    assert after is not None
    assert env(after) == env(before)  # still the pinned 1.0.0
    assert await names(cluster, "Deployment", "iris") == {
        "iris-stable",
        "iris-canary",
        "iris-shadow",
        "iris-router",
    }
