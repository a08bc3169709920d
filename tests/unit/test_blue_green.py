"""Blue-green (spec.canary.blueGreen) in the rollout core: the canary runs as a preview at 0%,
is analysed there for analysisSteps x analysis.interval, then takes all traffic at once (after
the approval gate and confirm-promotion hooks); a switch back is a rollback.

Each decision is driven with an injected clock, as the operator drives it."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.routing import plan_routing
from canaryml_operator import hooks, rollout
from canaryml_operator.state import DeploymentState, Owner, blue_green, step_seconds, step_weights

from tests.unit.test_hooks import hook
from tests.unit.test_rollout import (
    BAD_ERRORS,
    CANARY_ID,
    CANARY_MODEL,
    CANARY_UP,
    FEW_REQUESTS,
    STABLE_ID,
    Run,
    condition,
    deployment,
    make_spec,
    reasons,
    roundtrip,
)

INTERVAL = 10.0  # analysis.interval
STEPS = 3  # blueGreen.analysisSteps
PREVIEW = INTERVAL * STEPS


def bg_spec(**fields: Any) -> api.ModelDeploymentSpec:
    """Blue-green with 3 stable pods, a one-pod preview, 3 analyses of 10s."""
    fields.setdefault("serving", {"replicas": 3})
    raw = make_spec(**fields).model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["blueGreen"] = {"analysisSteps": STEPS}
    raw["analysis"]["interval"] = "10s"
    return api.parse_spec(raw)


def tracks(canary: DeploymentState, stable: str = "1.0.0") -> dict[Any, DeploymentState]:
    return {"stable": deployment(stable, replicas=3), "canary": canary}


def progressing(run: Run) -> tuple[str, str]:
    found = condition(run.status, "Progressing")
    assert found is not None
    return found.status, found.reason


def plan(run: Run) -> Any:
    return rollout.plan_tracks(spec=run.spec, status=run.status, now=run.now)


def previewing(run: Run) -> None:
    """The preview started and became available: at its one step, 0%."""
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    assert decision.action == "stepUp"


def passed(run: Run) -> rollout.Decision:
    """The preview's analyses pass for analysisSteps x interval: the promotion."""
    previewing(run)
    for _ in range(STEPS - 1):
        assert run.analyse(after=INTERVAL, tracks=CANARY_UP).action == "pass"
    return run.analyse(after=INTERVAL, tracks=CANARY_UP)


# --- the spec ---------------------------------------------------------------------------------


def test_the_strategy_is_canary_unless_blue_green_is_asked_for() -> None:
    canary = make_spec()
    assert not blue_green(canary) and step_weights(canary) == [5, 25, 50]
    assert step_seconds(canary) == 30.0
    raw = make_spec().model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["blueGreen"] = {}
    spec = api.parse_spec(raw)
    assert spec.canary is not None and spec.canary.blue_green is not None
    assert spec.canary.blue_green.analysis_steps == api.DEFAULT_BLUE_GREEN_ANALYSIS_STEPS
    assert blue_green(spec) and step_weights(spec) == [0]
    # analysisSteps x analysis.interval (the default interval), stepInterval unused.
    assert step_seconds(spec) == 5 * api.parse_duration(spec.analysis.interval)


@pytest.mark.parametrize("bad", [0, 101, "x"])
def test_analysis_steps_out_of_range_are_refused(bad: object) -> None:
    raw = make_spec().model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["blueGreen"] = {"analysisSteps": bad}
    with pytest.raises(ValueError, match="analysisSteps"):
        api.parse_spec(raw)


# --- the preview ------------------------------------------------------------------------------


def test_the_available_preview_is_analysed_at_zero_percent() -> None:
    run = Run(bg_spec())
    started = run.decide()
    assert "blue-green rollout started" in started.events[0].message
    decision = run.decide(after=10, tracks=CANARY_UP)
    status = decision.status
    assert (status.phase, status.current_step, status.canary_weight) == ("Progressing", 0, 0)
    assert "preview 1.1.0 available at 0%" in decision.events[0].message
    routing = plan_routing(run.spec, status)
    # No live traffic, but reachable through segments and version pins while it runs.
    assert routing.canary_weight == 0 and routing.canary_serving
    assert plan(run).canary_replicas == 1  # spec.canary.replicas until the switch
    # An analysis is due at once, every interval after.
    assert rollout.next_analysis_in(spec=run.spec, status=status, now=run.now) == 0.0
    run.analyse(tracks=CANARY_UP)
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == INTERVAL


def test_the_preview_must_pass_for_analysis_steps_intervals() -> None:
    run = Run(bg_spec())
    previewing(run)
    for _ in range(STEPS - 1):
        decision = run.analyse(after=INTERVAL, tracks=CANARY_UP)
        assert (decision.action, decision.status.canary_weight) == ("pass", 0)
    decision = run.analyse(after=INTERVAL, tracks=CANARY_UP)
    assert decision.action == "promote"
    assert decision.status.canary_weight == 0  # not yet: it grows to full size first
    assert decision.status.stable_model == CANARY_ID


def test_too_few_preview_requests_hold_and_do_not_promote() -> None:
    run = Run(bg_spec())
    previewing(run)
    for _ in range(STEPS + 2):
        decision = run.analyse(FEW_REQUESTS, after=INTERVAL, tracks=CANARY_UP)
        assert (decision.action, decision.status.canary_weight) == ("hold", 0)
    assert run.status.phase == "Progressing"
    assert progressing(run)[1] == "AnalysisInconclusive"


def test_a_failing_preview_is_rolled_back_and_never_takes_traffic() -> None:
    run = Run(bg_spec())
    previewing(run)
    assert run.analyse(BAD_ERRORS, after=INTERVAL, tracks=CANARY_UP).action == "failed"
    decision = run.analyse(BAD_ERRORS, after=INTERVAL, tracks=CANARY_UP)
    assert decision.action == "rollback"
    assert (decision.status.phase, decision.status.canary_weight) == ("RolledBack", 0)
    assert decision.status.stable_model == STABLE_ID


# --- the switch -------------------------------------------------------------------------------


def test_the_switch_is_zero_to_a_hundred_at_once_then_the_stable_rolls() -> None:
    run = Run(bg_spec())
    passed(run)
    assert progressing(run) == ("True", rollout.SCALING_UP_CANARY)
    planned = plan(run)
    # The stable Deployment keeps the replaced model, with all traffic; the preview grows.
    assert planned.stable_model == STABLE_ID.as_ref()
    assert (planned.canary_replicas, planned.canary_weight) == (3, 0)
    small = run.decide(after=5, tracks=tracks(deployment("1.1.0", replicas=1)))
    assert (small.action, small.status.canary_weight) == ("none", 0)

    switch = run.decide(after=5, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert reasons(switch) == [rollout.BLUE_GREEN_SWITCH]
    assert "0% -> 100%" in switch.events[0].message
    assert switch.status.canary_weight == 100  # in one decision
    assert plan_routing(run.spec, switch.status).canary_weight == 100
    assert plan(run).stable_model == STABLE_ID.as_ref()  # not rolled while it had traffic
    assert roundtrip(switch.status) == switch.status
    # No rollback window: it is over at once; the daemon is due now.
    assert rollout.rollback_window_ends_in(spec=run.spec, status=run.status, now=run.now) == 0

    rolls = run.decide(after=1, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert progressing(run) == ("True", "Promoting") and rolls.events == []
    assert rolls.status.canary_weight == 100
    assert plan(run).stable_model == CANARY_ID.as_ref()  # now the stable, without traffic, rolls
    done = run.decide(
        after=20,
        tracks=tracks(deployment("1.1.0", replicas=3, uri=CANARY_MODEL["uri"]), stable="1.1.0"),
    )
    assert reasons(done) == ["PromotionComplete"]
    assert (done.status.phase, done.status.canary_weight) == ("Promoted", 0)


def test_the_approval_gate_holds_the_preview_at_zero_until_promote() -> None:
    raw = bg_spec().model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["approval"] = {"required": True}
    run = Run(api.parse_spec(raw))
    held = passed(run)
    assert held.action == "awaitApproval" and held.status.canary_weight == 0
    assert "holds 0%" in held.events[0].message
    decision = run.decide(after=5, tracks=CANARY_UP, commands={"promote": "1.1.0"})
    assert decision.action == "promote"
    assert progressing(run) == ("True", rollout.SCALING_UP_CANARY)


def test_a_confirm_promotion_hook_holds_the_switch() -> None:
    spec = bg_spec(webhooks=[hook("go", "confirm-promotion")])
    run = Run(spec)
    held = passed(run)
    assert held.action == "hold" and held.status.canary_weight == 0
    owner = Owner(name="iris", namespace="models", uid="u")
    (call,) = hooks.due(spec=run.spec, status=run.status, owner=owner, now=run.now)
    assert call.occasion == "1.1.0/promotion" and call.payload["steps"] == 1


# --- switching back ---------------------------------------------------------------------------


def test_a_rollback_after_the_switch_within_the_window_is_a_routing_change() -> None:
    run = Run(bg_spec(rollbackWindow="10m"))
    passed(run)
    switch = run.decide(after=5, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert switch.status.canary_weight == 100
    assert "stable 1.0.0 keeps its pods until" in switch.events[0].message
    later = run.decide(after=60, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert later.status.canary_weight == 100 and progressing(run)[1] == rollout.ROLLBACK_WINDOW
    back = run.decide(after=1, commands={"rollback": "1.1.0"})
    assert back.action == "rollbackStable"
    assert (back.status.stable_model, back.status.canary_weight) == (STABLE_ID, 0)
    assert plan(run).stable_model == STABLE_ID.as_ref()  # no pod rollout


def test_an_abort_of_the_preview_leaves_all_traffic_where_it_was() -> None:
    run = Run(bg_spec())
    previewing(run)
    decision = run.decide(after=5, tracks=CANARY_UP, commands={"abort": "1.1.0"})
    assert (decision.status.phase, decision.status.canary_weight) == ("RolledBack", 0)
    assert not plan_routing(run.spec, decision.status).canary_serving
    assert run.decide(after=rollout.DRAIN_SECONDS, tracks=CANARY_UP).status.canary_weight == 0
    assert plan(run).canary_replicas == 0


def test_a_promote_command_switches_the_preview_before_its_analyses_end() -> None:
    run = Run(bg_spec())
    previewing(run)
    decision = run.decide(after=1, tracks=CANARY_UP, commands={"promote": "1.1.0"})
    assert decision.action == "promote"
    assert progressing(run) == ("True", rollout.SCALING_UP_CANARY)
    switched = run.decide(after=1, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert switched.status.canary_weight == 100


def test_the_preview_step_time_restarts_after_a_failed_analysis() -> None:
    run = Run(bg_spec(failure_limit=3))
    previewing(run)
    run.analyse(after=INTERVAL, tracks=CANARY_UP)
    assert run.analyse(BAD_ERRORS, after=INTERVAL, tracks=CANARY_UP).action == "failed"
    for _ in range(STEPS - 1):
        assert run.analyse(after=INTERVAL, tracks=CANARY_UP).action == "pass"
    # The failure restarted the preview's clock: a whole PREVIEW from it.
    assert run.status.step_started_at is not None
    assert run.now - run.status.step_started_at < timedelta(seconds=PREVIEW)
    assert run.analyse(after=INTERVAL, tracks=CANARY_UP).action == "promote"


def test_a_rollback_while_the_preview_grows_cancels_the_switch() -> None:
    run = Run(bg_spec())
    passed(run)
    back = run.decide(after=1, commands={"rollback": "1.1.0"}, tracks=tracks(CANARY_UP["canary"]))
    assert back.action == "rollbackStable" and back.status.canary_weight == 0
    assert progressing(run) == ("False", "RolledBack")
    # The preview at full size later does not take the traffic: the switch is off.
    later = run.decide(after=1, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert later.status.canary_weight == 0 and later.events == []
    assert plan(run).stable_model == STABLE_ID.as_ref()


# --- canaryml status --------------------------------------------------------------------------


def shown(run: Run) -> str:
    import io

    from canaryml_operator.cli import render_status
    from rich.console import Console

    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": run.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
        "status": run.status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=400, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    return console.file.getvalue()  # type: ignore[attr-defined]


def test_status_shows_the_strategy_and_the_preview() -> None:
    run = Run(bg_spec())
    previewing(run)
    text = shown(run)
    assert "blueGreen (preview analysed for 3 x 10s, then 100% at once)" in text
    assert "1.1.0 (no live traffic): Service iris-canary" in text
    assert "x-canaryml-model-version: 1.1.0" in text
    assert "1 of 1" in text  # one preview step
    for _ in range(STEPS):
        run.analyse(after=INTERVAL, tracks=CANARY_UP)
    run.decide(after=5, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert "1.1.0 (switched: it takes all traffic)" in shown(run)
    assert "canary (steps 5%, 25%, 50%)" in shown(Run())


# --- the preview mirror (spec.canary.blueGreen.mirror) ---------------------------------------


def mirror_spec(**fields: Any) -> api.ModelDeploymentSpec:
    raw = bg_spec(**fields).model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["blueGreen"]["mirror"] = True
    return api.parse_spec(raw)


def test_the_mirror_is_the_builtin_routers() -> None:
    assert mirror_spec().canary.blue_green.mirror  # type: ignore[union-attr]
    for router in ("gateway-api", "none"):
        with pytest.raises(ValueError, match=r"canary\.blueGreen\.mirror is the builtin router's"):
            mirror_spec(routing={"router": router})


def test_the_preview_is_mirrored_to_only_while_it_runs_at_zero() -> None:
    run = Run(mirror_spec())
    run.decide()
    # Waiting for its pods: reachable by pins, but nothing is mirrored to pods still starting.
    assert plan_routing(run.spec, run.status).canary_serving
    assert not plan_routing(run.spec, run.status).canary_mirror
    run.status = api.ModelDeploymentStatus()
    previewing(run)
    assert plan_routing(run.spec, run.status).canary_mirror
    for _ in range(STEPS):
        run.analyse(after=INTERVAL, tracks=CANARY_UP)
    assert run.status.phase == "Promoted"  # growing before the switch: no mirror
    assert not plan_routing(run.spec, run.status).canary_mirror
    run.decide(after=5, tracks=tracks(deployment("1.1.0", replicas=3)))
    assert run.status.canary_weight == 100
    assert not plan_routing(run.spec, run.status).canary_mirror
    # Without mirror, or rolled back: none.
    assert not plan_routing(bg_spec(), run.status).canary_mirror
    aborted = Run(mirror_spec())
    previewing(aborted)
    aborted.decide(after=1, tracks=CANARY_UP, commands={"abort": "1.1.0"})
    assert not plan_routing(aborted.spec, aborted.status).canary_mirror


def test_the_router_table_of_a_mirrored_preview() -> None:
    from canaryml_router.core import table_from_model_deployment

    run = Run(mirror_spec())
    previewing(run)
    obj = {
        "metadata": {"name": "iris"},
        "spec": run.spec.model_dump(by_alias=True, mode="json", exclude_none=True),
        "status": run.status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    table = table_from_model_deployment(obj)
    assert table.canary_mirror_active and table.canary_weight == 0
    assert table.as_json()["canaryMirror"] is True


def test_blue_green_and_an_experiment_are_two_strategies() -> None:
    raw = bg_spec().model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["experiment"] = {"metric": api.EXPERIMENT_ACCURACY}
    with pytest.raises(ValueError, match="two strategies: set one"):
        api.parse_spec(raw)
