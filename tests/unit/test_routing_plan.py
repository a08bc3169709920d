"""One routing rule: the builtin router, the Gateway API HTTPRoute and the local demo give the
tracks the same traffic for the same (spec, status), a canary edited mid-rollout included."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.tracks import service_name
from canaryml_cli.demo.cluster import LocalCluster
from canaryml_cli.demo.processes import ProcessGroup
from canaryml_cli.demo.record import DemoRecord
from canaryml_operator import children, loop, rollout
from canaryml_router.core import table_from_model_deployment

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
OWNER = children.Owner(name="iris", namespace="ml", uid="uid-1")
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}
EDITED = {"uri": "s3://models/iris/1.2.0", "version": "1.2.0"}
RESIGNED = {**CANARY, "sha256": "b" * 64}  # the same version, another artifact
SHADOW = {"uri": "s3://models/iris/2.0.0", "version": "2.0.0"}


@dataclass(frozen=True)
class Case:
    name: str
    spec: dict[str, Any]
    status: dict[str, Any]
    canary_weight: int
    shadow_percent: int = 0


def _rollout(model: dict[str, Any], phase: str, weight: int, **more: Any) -> dict[str, Any]:
    return {
        "phase": phase,
        "canaryModel": model,
        "canaryWeight": weight,
        "stableModel": STABLE,
        "specModel": STABLE,
        "stepStartedAt": (NOW - timedelta(seconds=1)).isoformat(),
        **more,
    }


CASES = [
    Case("no canary, a stale weight", {"model": STABLE}, {"canaryWeight": 30}, 0),
    Case("no status yet", {"model": STABLE, "canary": {"model": CANARY}}, {}, 0),
    Case("waiting for the canary", {"model": STABLE, "canary": {"model": CANARY}},
         _rollout(CANARY, "Progressing", 0), 0),
    Case("a step of the rollout", {"model": STABLE, "canary": {"model": CANARY}},
         _rollout(CANARY, "Progressing", 25, currentStep=2), 25),
    Case("paused at a step", {"model": STABLE, "canary": {"model": CANARY}, "paused": True},
         _rollout(CANARY, "Paused", 10, currentStep=1), 10),
    Case("canary model edited mid-rollout", {"model": STABLE, "canary": {"model": EDITED}},
         _rollout(CANARY, "Progressing", 25, currentStep=2), 0),
    Case("canary artifact replaced, same version", {"model": STABLE, "canary": {"model": RESIGNED}},
         _rollout(CANARY, "Progressing", 50, currentStep=3), 0),
    Case("rolled back", {"model": STABLE, "canary": {"model": CANARY}},
         _rollout(CANARY, "RolledBack", 0), 0),
    Case("promoted, the new stable rolling out", {"model": STABLE, "canary": {"model": CANARY}},
         _rollout(CANARY, "Promoted", 50, stableModel=CANARY), 50),
    Case("promoted and drained", {"model": STABLE, "canary": {"model": CANARY}},
         _rollout(CANARY, "Promoted", 0, stableModel=CANARY,
                  stepStartedAt=(NOW - timedelta(minutes=5)).isoformat()), 0),
    Case("unreadable status", {"model": STABLE, "canary": {"model": CANARY}},
         {"canaryWeight": "lots"}, 0),
    Case("a shadow with a rollout", {"model": STABLE, "canary": {"model": CANARY},
                                     "shadow": {"model": SHADOW, "percent": 40}},
         _rollout(CANARY, "Progressing", 5, currentStep=0), 5, 40),
    Case("a shadow at the default percent", {"model": STABLE, "shadow": {"model": SHADOW}}, {},
         0, 100),
]  # fmt: skip


def _router(case: Case) -> tuple[int, int]:
    """What the builtin router's follower makes of the object it watches."""
    table = table_from_model_deployment(
        {"metadata": {"name": OWNER.name}, "spec": case.spec, "status": case.status}
    )
    weight = table.canary_weight if table.canary_active else 0
    return weight, table.shadow_percent if table.shadow_active else 0


def _http_route(case: Case) -> tuple[int, int]:
    """The backend weights and mirror percent of the operator's HTTPRoute (gateway-api)."""
    spec = api.parse_spec({**case.spec, "routing": {"router": "gateway-api"}})
    status = api.parse_status(case.status)
    built = children.build_children(
        owner=OWNER,
        spec=spec,
        image="canaryml:test",
        plan=rollout.plan_tracks(spec=spec, status=status, now=NOW),
    )
    route = next(m for m in built if m["kind"] == "HTTPRoute")
    rule = route["spec"]["rules"][0]
    weights = {ref["name"]: ref["weight"] for ref in rule["backendRefs"]}
    assert weights.pop(service_name(OWNER.name, "stable")) + sum(weights.values()) == 100
    mirrors = [f["requestMirror"]["percent"] for f in rule.get("filters", [])]
    return weights.get(service_name(OWNER.name, "canary"), 0), sum(mirrors)


def _demo(case: Case) -> tuple[int, int]:
    """What the demo's local cluster is told to give its router: one turn of the rollout loop
    with no live tracks and no analysis, as the demo drives it (nothing in these cases moves
    the weight: no canary becomes available, nothing is measured). The cases are about
    weights, not digests: their models may be unpinned."""
    spec = api.parse_spec({**case.spec, "allowUnpinnedModels": True})
    cluster = LocalCluster(
        name=OWNER.name,
        spec=spec,
        canary_env={},
        group=ProcessGroup(log_dir=Path("unused")),
        record=DemoRecord(
            name=OWNER.name, scenario="good", metrics="scrape", started_at=NOW, spec=spec
        ),
    )
    loop.turn(
        spec=spec,
        invalid=None,
        previous=api.parse_status(case.status),
        tracks=cluster,
        measurements=None,
        now=NOW,
        generation=1,
    )
    assert cluster.wanted is not None
    _, routing = cluster.wanted
    return routing.canary_weight, routing.shadow_percent


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_router_http_route_and_demo_route_alike(case: Case) -> None:
    expected = (case.canary_weight, case.shadow_percent)
    assert _router(case) == expected
    assert _http_route(case) == expected
    assert _demo(case) == expected
