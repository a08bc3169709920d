"""kstatus (what Flux, `kubectl wait`-style tools and cli-utils read) over the operator's statuses.

kstatus is a Go library (sigs.k8s.io/cli-utils/pkg/kstatus) with no Python implementation to
install, so `kstatus` below is its documented rule for a custom resource it has no special
reader for (cli-utils `status.Compute` -> `checkGenericProperties`), not the library:

1. `metadata.deletionTimestamp` set: Terminating.
2. `status.observedGeneration` present and not `metadata.generation`: InProgress.
3. the first condition, in order, that is `Reconciling=True` (InProgress) or `Stalled=True`
   (Failed).
4. otherwise: Current (`Ready` is not read).

The statuses are the ones tests/unit/test_argocd_health.py builds through the operator's own
pure core, one per situation; docs/gitops.md lists the same table.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from tests.unit.test_argocd_health import SITUATIONS


def kstatus(body: Mapping[str, Any]) -> str:
    meta = body.get("metadata") or {}
    if meta.get("deletionTimestamp"):
        return "Terminating"
    status = body.get("status") or {}
    observed = status.get("observedGeneration")
    generation = meta.get("generation")
    if observed is not None and generation is not None and observed != generation:
        return "InProgress"
    for condition in status.get("conditions") or []:
        if condition.get("status") != "True":
            continue
        if condition.get("type") == "Reconciling":
            return "InProgress"
        if condition.get("type") == "Stalled":
            return "Failed"
    return "Current"


# What each situation must read as. A rollout in flight, a canary waiting for its pods and a
# promotion finishing are InProgress (Flux waits for the outcome); a rolled-back canary and a
# real stall are Failed; a pause and a deliberate scale to zero are Current (nothing to wait for).
EXPECTED: dict[str, str] = {
    # No status yet: kstatus has nothing to compare (see docs/gitops.md, a documented limit).
    "just-created": "Current",
    "first-reconcile": "InProgress",
    "stable-starting": "InProgress",
    "stable-serving": "Current",
    "spec-not-yet-observed": "InProgress",
    "invalid-spec": "Failed",
    "waiting-for-the-canary": "InProgress",
    "canary-at-20": "InProgress",
    "drift-window-warming": "InProgress",
    "inconclusive-past-the-deadline": "Failed",
    "metrics-unavailable": "Failed",
    "paused": "Current",
    # A promotion awaiting approval is a pause too: nothing moves until a person acts.
    "awaiting-approval": "Current",
    "awaiting-approval-analysis-held": "Current",
    "awaiting-approval-check-failed": "InProgress",
    "approved": "InProgress",
    "promoting": "InProgress",
    "promoted": "Current",
    "rolled-back": "Failed",
    "new-canary-after-a-rollback": "InProgress",
    "scaled-to-zero": "Current",
    "canary-never-available": "Failed",
    "stable-pod-lost": "InProgress",
    "manual-rollback-rolling": "InProgress",
    "manual-rollback-done": "Current",
}


def test_every_situation_has_an_expected_kstatus() -> None:
    assert EXPECTED.keys() == SITUATIONS.keys()


@pytest.mark.parametrize("name", EXPECTED)
def test_each_situation_reads_right_to_kstatus(name: str) -> None:
    make, _, _ = SITUATIONS[name]
    assert kstatus(make().body()) == EXPECTED[name]


def test_the_rule_reads_terminating_and_a_stale_generation() -> None:
    assert kstatus({"metadata": {"deletionTimestamp": "2024-05-01T00:00:00Z"}}) == "Terminating"
    stale = {"metadata": {"generation": 3}, "status": {"observedGeneration": 2}}
    assert kstatus(stale) == "InProgress"
