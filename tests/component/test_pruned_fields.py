"""A field the API server drops is not a hand edit.

Gateway API CRDs before v1.3 (standard channel) have no `requestMirror.percent`: the API server
prunes it from the HTTPRoute the operator writes, without an error. The live route then never
carries the field; the operator must not take that for a hand edit, patch the route again and
post a "Restored" Warning on every reconcile. Here the emulator prunes the field as such a CRD
would, and the resource is reconciled several times (about 3 s).
"""

from __future__ import annotations

from typing import Any

from canaryml_operator import children
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_rollout_operator import CANARY, NS, rollout_spec, wait_status

PERCENT = ("spec", "rules", "filters", "requestMirror", "percent")


def mirror(route: dict[str, Any] | None) -> dict[str, Any]:
    filters = (route or {}).get("spec", {}).get("rules", [{}])[-1].get("filters") or [{}]
    return dict(filters[0].get("requestMirror") or {})


async def test_a_percent_the_server_drops_is_not_drift(cluster: Cluster) -> None:
    assert PERCENT in children.SERVER_PRUNED
    cluster.emulator.pruned["httproutes"] = [PERCENT]
    spec = rollout_spec(
        routing={"router": "gateway-api"},
        shadow={"model": {**CANARY, "version": "2.0.0"}, "percent": 25},
    )
    await cluster.apply(NS, "iris", spec)
    route = await eventually(
        lambda: cluster.get("HTTPRoute", NS, "iris"),
        until=lambda r: bool(mirror(r)),
        what="the HTTPRoute with its RequestMirror",
    )
    assert "percent" not in mirror(route)  # pruned, as by a Gateway API CRD before v1.3
    assert mirror(route)["backendRef"]["name"] == "iris-shadow"

    # Reconciled again and again: new generations that leave the route as it is.
    for interval in ("2h", "3h", "4h"):
        spec["canary"]["stepInterval"] = interval
        applied = await cluster.apply(NS, "iris", spec)
        generation = applied["metadata"]["generation"]
        await wait_status(
            cluster,
            "iris",
            f"generation {generation} reconciled",
            lambda s, g=generation: s.get("observedGeneration") == g,
        )

    events = await cluster.events(NS, "iris")
    restored = [e["message"] for e in events if e["reason"] == "Restored"]
    assert restored == []
    assert not any("HTTPRoute" in e["message"] and e["type"] == "Warning" for e in events)
    # Created once, never patched to put the field back.
    assert cluster.requests("PATCH", "/httproutes/") == []
    assert await cluster.get("HTTPRoute", NS, "iris") == route


async def test_a_changed_percent_is_still_drift(cluster: Cluster) -> None:
    """Only a missing field is forgiven: a hand edit of the value is put back."""
    spec = rollout_spec(
        routing={"router": "gateway-api"},
        shadow={"model": {**CANARY, "version": "2.0.0"}, "percent": 25},
    )
    await cluster.apply(NS, "iris", spec)
    route = await eventually(
        lambda: cluster.get("HTTPRoute", NS, "iris"),
        until=lambda r: mirror(r).get("percent") == 25,
        what="the HTTPRoute mirroring 25 %",
    )
    assert route is not None
    rules = route["spec"]["rules"]
    rules[-1]["filters"][0]["requestMirror"]["percent"] = 100
    await cluster.patch("HTTPRoute", NS, "iris", {"spec": {"rules": rules}})
    spec["canary"]["stepInterval"] = "2h"  # a reconcile (an HTTPRoute's edit starts none)
    await cluster.apply(NS, "iris", spec)
    await eventually(
        lambda: cluster.get("HTTPRoute", NS, "iris"),
        until=lambda r: mirror(r).get("percent") == 25,
        what="the mirror put back to 25 %",
    )
