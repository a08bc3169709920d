"""Specs shared by the unit tests of the API models and of the CRD generated from them."""

from __future__ import annotations

import copy
from typing import Any

SHA_STABLE = "a" * 64
SHA_CANARY = "b" * 64

# The example of ../shared/docs/DESIGN.md, with its elided values filled in.
DESIGN_EXAMPLE: dict[str, Any] = {
    "model": {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": SHA_STABLE},
    "canary": {
        "model": {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": SHA_CANARY},
        "steps": [5, 10, 25, 50],
        "stepInterval": "30s",
    },
    "shadow": {"model": {"uri": "gs://models/iris/2.0.0", "version": "2.0.0"}, "percent": 100},
    "analysis": {
        "prometheus": {"url": "http://prometheus.monitoring:9090"},
        "interval": "15s",
        "window": "1m",
        "minRequests": 50,
        "failureLimit": 2,
        "thresholds": {
            "maxErrorRate": 0.05,
            "maxLatencyP99": "250ms",
            "maxDrift": 0.25,
            "maxPredictionDrift": 0.25,
            "minShadowAgreement": 0.9,
        },
        "metrics": [
            {
                "name": "business-kpi",
                "query": 'sum(rate(orders_total{track="canary"}[1m]))',
                "min": 0.1,
                "max": 10,
            }
        ],
    },
    "routing": {"router": "builtin", "stickyHeader": "x-user-id"},
    "serving": {
        "replicas": 2,
        "image": "ghcr.io/canaryml/canaryml:0.1.0",
        "resources": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "1Gi"}},
    },
    "paused": False,
}

MINIMAL: dict[str, Any] = {"model": {"uri": "s3://models/iris/1.0.0", "version": "1.0.0"}}
CANARY_MODEL: dict[str, Any] = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0"}


def changed(base: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    """A deep copy of `base` with the dotted path set to `value`; `...` deletes it."""
    result = copy.deepcopy(base)
    *parents, last = dotted.split(".")
    node: Any = result
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node.setdefault(part, {})
    if value is ...:
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return result
