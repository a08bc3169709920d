"""The rollout core's clocks, with an injected clock: the step clock after an outage, and the
progress deadline of a canary that never becomes (or stops being) available."""

from __future__ import annotations

from canaryml_operator import rollout

from tests.unit.test_rollout import (
    CANARY_MODEL,
    CANARY_UP,
    Run,
    condition,
    deployment,
    make_spec,
    reasons,
)

CANARY_DOWN = {"canary": deployment(CANARY_MODEL["version"], ready=False)}


# --- the step clock after a gap between analyses ---------------------------------------------


def test_an_outage_during_a_step_restarts_its_clock() -> None:
    """Operator down 2 h in a 30 m step, then one good analysis: no step up, and an Event
    that says why (not 'every check passed for 30m')."""
    run = Run(make_spec(interval="30m"))  # analysis every 15 s, window 1m
    run.start()
    run.analyse(after=15, tracks=CANARY_UP)
    decision = run.analyse(after=2 * 3600, tracks=CANARY_UP)

    assert decision.action == "pass"
    assert (decision.status.canary_weight, decision.status.current_step) == (5, 0)
    assert decision.status.step_started_at == run.now
    assert reasons(decision) == ["StepClockRestarted"]
    event = decision.events[0]
    assert event.type == "Warning"
    assert event.message.startswith("no analysis for 2h (more than 1m: 3 analysis intervals")
    assert "step 1 at 5% must pass for 30m again from now" in event.message
    # The step then takes its whole interval again, counted from the restart.
    for _ in range(119):
        assert run.analyse(after=15, tracks=CANARY_UP).action == "pass"
    assert run.analyse(after=15, tracks=CANARY_UP).action == "stepUp"


def test_a_gap_within_the_limit_keeps_the_clock() -> None:
    run = Run()  # step 30s; analysis 15s, window 1m: the limit is 60 s
    assert rollout.analysis_gap_limit(run.spec) == 60
    run.start()
    decision = run.analyse(after=60, tracks=CANARY_UP)
    assert decision.action == "stepUp"
    assert "StepClockRestarted" not in reasons(decision)


def test_the_gap_limit_is_three_intervals_when_longer_than_the_window() -> None:
    spec = make_spec()
    longer = spec.model_copy(
        update={"analysis": spec.analysis.model_copy(update={"interval": "5m"})}
    )
    assert rollout.analysis_gap_limit(longer) == 900


def test_a_failed_analysis_after_a_gap_still_counts() -> None:
    run = Run(make_spec(failure_limit=1))
    run.start()
    decision = run.analyse({"errorRate": 0.5}, after=3600, tracks=CANARY_UP)
    assert decision.action == "rollback"
    assert reasons(decision) == ["StepClockRestarted", "RolledBack"]


# --- the progress deadline ---------------------------------------------------------------------


def test_a_canary_that_never_becomes_available_is_rolled_back_after_the_deadline() -> None:
    run = Run()  # progressDeadline 10m by default
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_DOWN)
    waiting = condition(decision.status, rollout.CANARY_AVAILABLE)
    assert waiting is not None
    assert (waiting.status, waiting.reason) == ("False", "PodsNotAvailable")
    assert waiting.message == (
        "waiting for 1 canary pod(s) of 1.1.0: 0/1 available (progressDeadline 10m)"
    )
    progressing = condition(decision.status, "Progressing")
    assert progressing is not None
    assert progressing.reason == "WaitingForCanary"
    assert "waiting for 1 canary pod(s) of 1.1.0: 0/1 available" in progressing.message

    # 10 minutes from when the operator first saw the canary's pods unavailable.
    assert run.decide(after=599, tracks=CANARY_DOWN).action == "none"
    # The analysis daemon wakes for the deadline: no Deployment event may come to mark it.
    deadline_in = rollout.progress_deadline_in(spec=run.spec, status=run.status, now=run.now)
    assert deadline_in == 1.0
    decision = run.decide(after=1, tracks=CANARY_DOWN)
    assert decision.action == "rollback"
    assert (decision.status.phase, decision.status.canary_weight) == ("RolledBack", 0)
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None
    assert rolled_back.reason == "ProgressDeadlineExceeded"
    assert rolled_back.message.startswith(
        "canary 1.1.0 rolled back: not available for progressDeadline 10m"
    )
    assert decision.status.history[-1].event == "rolledBack"
    assert rollout.progress_deadline_in(spec=run.spec, status=run.status, now=run.now) is None


def test_canary_replicas_zero_says_so_and_meets_the_deadline() -> None:
    run = Run(make_spec(progressDeadline="2m"))
    run.spec = run.spec.model_copy(
        update={"canary": run.spec.canary.model_copy(update={"replicas": 0})}  # type: ignore[union-attr]
    )
    run.decide()
    zero = {"canary": deployment(CANARY_MODEL["version"], replicas=0)}
    decision = run.decide(after=1, tracks=zero)
    available = condition(decision.status, rollout.CANARY_AVAILABLE)
    assert available is not None
    assert (available.status, available.reason) == ("False", "ScaledToZero")
    assert available.message.startswith("canary.replicas is 0")
    decision = run.decide(after=120, tracks=zero)
    assert decision.action == "rollback"
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None and rolled_back.reason == "ProgressDeadlineExceeded"


def test_a_canary_that_becomes_available_in_time_is_not_rolled_back() -> None:
    run = Run()
    run.decide()
    run.decide(after=500, tracks=CANARY_DOWN)
    decision = run.decide(after=99, tracks=CANARY_UP)
    assert decision.action == "stepUp"
    available = condition(decision.status, rollout.CANARY_AVAILABLE)
    assert available is not None and available.status == "True"


def test_a_canary_unavailable_during_the_rollout_is_rolled_back_after_the_deadline() -> None:
    run = Run(make_spec(interval="1h"))
    run.start()
    run.analyse(after=15, tracks=CANARY_UP)
    # Its pods go down: the clock starts now, not at the rollout's start.
    lost = run.analyse(after=15, tracks=CANARY_DOWN)
    assert lost.action != "rollback"
    available = condition(lost.status, rollout.CANARY_AVAILABLE)
    assert available is not None and available.status == "False"
    for _ in range(39):  # 9m45s more, analyses every 15 s
        assert run.analyse(after=15, tracks=CANARY_DOWN).action != "rollback"
    decision = run.analyse(after=15, tracks=CANARY_DOWN)
    assert decision.action == "rollback"
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None and rolled_back.reason == "ProgressDeadlineExceeded"


def test_a_paused_rollout_has_no_deadline_and_a_fresh_one_when_resumed() -> None:
    run = Run(make_spec(interval="1h"))
    run.start()
    run.decide(after=1, tracks=CANARY_DOWN)
    run.decide(after=1, tracks=CANARY_DOWN, commands={"pause": "true"})
    assert run.decide(after=3600, tracks=CANARY_DOWN, commands={"pause": "true"}).action != (
        "rollback"
    )
    resumed = run.decide(after=1, tracks=CANARY_DOWN)
    assert resumed.action != "rollback"
    assert run.decide(after=599, tracks=CANARY_DOWN).action != "rollback"
    assert run.decide(after=1, tracks=CANARY_DOWN).action == "rollback"
