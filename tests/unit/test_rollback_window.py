"""The rollback window (spec.rollbackWindow) in the rollout core: after a promotion the stable
Deployment keeps the replaced model while the promoted canary, grown to the stable's size, takes
all traffic; a rollback within the window is a routing change only; after it the stable rolls to
the promoted model and the promotion finishes as without a window."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.routing import plan_routing
from canaryml_operator import children, reconcile, rollout
from canaryml_operator.state import DeploymentState, Event, Owner

from tests.unit.test_rollout import (
    CANARY_ID,
    STABLE_ID,
    Run,
    condition,
    deployment,
    make_spec,
    reasons,
    roundtrip,
)

WINDOW = 600.0


def window_spec(**fields: Any) -> api.ModelDeploymentSpec:
    fields.setdefault("serving", {"replicas": 3})
    return make_spec(rollbackWindow="10m", **fields)


def canary_at(replicas: int, *, available: int | None = None) -> DeploymentState:
    found = deployment("1.1.0", replicas=replicas)
    if available is None:
        return found
    return DeploymentState(
        exists=True,
        desired=replicas,
        available=available,
        updated=replicas,
        current=True,
        version="1.1.0",
    )


def tracks(canary: DeploymentState, stable: str = "1.0.0") -> dict[Any, DeploymentState]:
    return {"stable": deployment(stable, replicas=3), "canary": canary}


def progressing(run: Run) -> tuple[str, str]:
    found = condition(run.status, "Progressing")
    assert found is not None
    return found.status, found.reason


def plan(run: Run) -> Any:
    return rollout.plan_tracks(spec=run.spec, status=run.status, now=run.now)


def opened(run: Run) -> None:
    """Promoted with the window open: the canary at full size took all traffic."""
    run.promote()
    decision = run.decide(after=5, tracks=tracks(canary_at(3)))
    assert reasons(decision) == ["RollbackWindowOpen"]


# --- the spec -------------------------------------------------------------------------------------


def test_the_default_is_no_window_and_the_stable_rolls_at_once() -> None:
    run = Run()
    assert run.spec.rollback_window == "0s"
    run.promote()
    assert progressing(run) == ("True", "Promoting")
    assert plan(run).stable_model == CANARY_ID.as_ref()
    assert rollout.rollback_window_ends_in(spec=run.spec, status=run.status, now=run.now) is None


@pytest.mark.parametrize("text", ["soon", "-1m", "10"])
def test_a_window_that_is_no_duration_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match=r"spec\.rollbackWindow"):
        make_spec(rollbackWindow=text)


# --- the window -------------------------------------------------------------------------------


def test_a_promotion_keeps_the_stable_and_grows_the_canary_to_the_stables_size() -> None:
    run = Run(window_spec())
    decision = run.promote()
    assert decision.status.stable_model == CANARY_ID  # promoted: the stable model is the canary
    assert progressing(run) == ("True", rollout.SCALING_UP_CANARY)
    planned = plan(run)
    assert planned.stable_model == STABLE_ID.as_ref()  # the stable Deployment is not touched
    assert (planned.canary_replicas, planned.canary_weight) == (3, 50)  # grows, keeps 50%

    # Not available at full size yet: nothing moves.
    for canary in (canary_at(1), canary_at(3, available=2)):
        held = run.decide(after=5, tracks=tracks(canary))
        assert (held.action, held.status.canary_weight, held.events) == ("none", 50, [])


def test_the_canary_at_full_size_takes_all_traffic_for_the_window() -> None:
    run = Run(window_spec())
    run.promote()
    decision = run.decide(after=5, tracks=tracks(canary_at(3)))
    status = decision.status
    assert (status.phase, status.canary_weight) == ("Promoted", 100)
    assert status.rollback_window_ends_at == run.now + timedelta(seconds=WINDOW)
    assert progressing(run) == ("True", rollout.ROLLBACK_WINDOW)
    (event,) = decision.events
    assert event.reason == "RollbackWindowOpen" and "stable 1.0.0 keeps its pods" in event.message
    assert plan_routing(run.spec, status).canary_weight == 100  # the router and the HTTPRoute
    planned = plan(run)
    assert planned.stable_model == STABLE_ID.as_ref()
    assert (planned.canary_replicas, planned.canary_weight) == (3, 100)
    assert rollout.rollback_window_ends_in(spec=run.spec, status=status, now=run.now) == WINDOW
    # A restarted operator reads the same window back.
    assert roundtrip(status) == status


def test_a_rollback_within_the_window_only_switches_the_traffic_back() -> None:
    run = Run(window_spec())
    opened(run)
    stable_before = plan(run).stable_model
    decision = run.decide(after=30, commands={"rollback": "1.1.0"})
    status = decision.status
    assert decision.action == "rollbackStable"
    assert (status.stable_model, status.canary_weight) == (STABLE_ID, 0)
    assert status.rollback_window_ends_at is None
    assert plan_routing(run.spec, status).canary_weight == 0  # every request on the stable
    # No pod rollout: the stable Deployment's model is the one it had all along.
    assert plan(run).stable_model == stable_before == STABLE_ID.as_ref()
    (event,) = decision.events
    assert event.reason == "RolledBack" and "within the rollback window" in event.message
    assert "no pod rollout" in event.message
    # After the drain the canary goes; the stable never changes.
    later = run.decide(after=rollout.DRAIN_SECONDS, tracks=tracks(canary_at(3)))
    assert later.status.canary_weight == 0
    assert (plan(run).stable_model, plan(run).canary_replicas) == (STABLE_ID.as_ref(), None)


def test_a_rollback_while_the_canary_grows_is_instant_too() -> None:
    run = Run(window_spec())
    run.promote()
    decision = run.decide(after=5, commands={"rollback": "1.1.0"}, tracks=tracks(canary_at(1)))
    assert (decision.status.stable_model, decision.status.canary_weight) == (STABLE_ID, 0)
    assert plan(run).stable_model == STABLE_ID.as_ref()
    assert "within the rollback window" in decision.events[-1].message


def test_after_the_window_the_stable_rolls_out_and_the_promotion_finishes() -> None:
    run = Run(window_spec())
    opened(run)
    # Just before the end: nothing.
    quiet = run.decide(after=WINDOW - 1, tracks=tracks(canary_at(3)))
    assert (quiet.action, quiet.events) == ("none", [])
    assert rollout.rollback_window_ends_in(spec=run.spec, status=run.status, now=run.now) == 1.0
    closed = run.decide(after=1, tracks=tracks(canary_at(3)))
    assert reasons(closed) == ["RollbackWindowClosed"]
    assert closed.status.rollback_window_ends_at is None
    assert progressing(run) == ("True", "Promoting")
    assert closed.status.canary_weight == 100  # until the stable serves the promoted model
    planned = plan(run)
    assert planned.stable_model == CANARY_ID.as_ref()  # the stable rolls now
    assert planned.canary_replicas == 3  # the canary keeps its size while it has all traffic
    assert rollout.rollback_window_ends_in(spec=run.spec, status=run.status, now=run.now) is None

    done = run.decide(after=30, tracks=tracks(canary_at(3), stable="1.1.0"))
    assert done.action == "promoted"
    assert done.events == [
        Event(
            "Normal",
            "PromotionComplete",
            "stable model 1.1.0 rolled out: canary weight 100% -> 0%",
        )
    ]
    run.decide(after=rollout.DRAIN_SECONDS)
    assert plan(run).canary_replicas is None  # drained: the canary track is removed

    # A rollback now rolls the stable's pods back, as without a window.
    back = run.decide(after=60, commands={"rollback": "1.1.0"})
    assert "within the rollback window" not in back.events[-1].message
    assert plan(run).stable_model == STABLE_ID.as_ref()


def test_an_autoscaled_canary_grows_to_the_stables_bounds() -> None:
    autoscaling = {"minReplicas": 4, "maxReplicas": 20}
    run = Run(window_spec(serving={"autoscaling": autoscaling}))
    run.promote()
    planned = plan(run)
    assert planned.canary_scale == 100
    owner = Owner(name="iris", namespace="ml", uid="u")
    built = children.build_children(owner=owner, spec=run.spec, image="img", plan=planned)
    hpa = next(
        m
        for m in built
        if m["kind"] == "HorizontalPodAutoscaler" and m["metadata"]["name"] == "iris-canary"
    )
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (4, 20)
    # Full size is the stable's minReplicas available.
    held = run.decide(after=5, tracks=tracks(canary_at(3)))
    assert held.status.canary_weight == 50
    switched = run.decide(after=5, tracks=tracks(canary_at(4)))
    assert switched.status.canary_weight == 100


def test_growing_is_a_rollout_in_progress_and_the_open_window_is_not() -> None:
    run = Run(window_spec())
    run.promote()
    live = {"stable": deployment("1.0.0", replicas=3), "canary": deployment("1.1.0")}

    def reconciling() -> str:
        status = reconcile.build_status(
            spec=run.spec,
            invalid=None,
            previous=run.status.model_copy(update={"stable_version": "1.0.0"}),
            tracks=live,
            generation=1,
            now=run.now,
        )
        found = condition(status, "Reconciling")
        assert found is not None
        return f"{found.status} {found.reason}"

    assert reconciling() == "True RolloutInProgress"
    run.decide(after=5, tracks=tracks(canary_at(3)))
    live["canary"] = canary_at(3)
    assert reconciling() == "False AsExpected"
