"""The manual approval gate (spec.canary.approval.required) in the rollout core: every decision
it changes, driven through `decide()` with a clock as the operator drives it, and what the
reconciler makes of it (Reconciling, the phase)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.tracks import Track
from canaryml_operator import reconcile, rollout, state
from canaryml_operator.state import (
    APPROVED,
    AWAITING_APPROVAL,
    DeploymentState,
    awaiting_approval,
)

from tests.unit.test_rollout import (
    ABORT,
    BAD_ERRORS,
    CANARY_ID,
    CANARY_UP,
    FEW_REQUESTS,
    PROMOTE,
    STABLE_ID,
    Run,
    condition,
    deployment,
    make_spec,
    reasons,
    roundtrip,
)

GATED: dict[str, Any] = {"required": True}


def gated_run(**fields: Any) -> Run:
    spec = make_spec(**fields)
    assert spec.canary is not None
    canary = spec.canary.model_copy(update={"approval": api.ApprovalSpec(required=True)})
    return Run(spec.model_copy(update={"canary": canary}))


def at_the_gate(run: Run) -> rollout.Decision:
    """Every step passed: the analysis that would have promoted."""
    assert run.spec.canary is not None
    run.to_step(len(run.spec.canary.steps) - 1)
    return run.analyse(after=30, tracks=CANARY_UP)


def test_the_approval_spec_reads_camel_case_and_defaults_to_no_gate() -> None:
    spec = api.parse_spec({**make_spec().model_dump(by_alias=True, exclude_none=True)})
    assert spec.canary is not None and spec.canary.approval is None
    assert not rollout.approval_required(spec)
    raw = make_spec().model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["approval"] = {}
    assert not rollout.approval_required(api.parse_spec(raw))  # required defaults to false
    raw["canary"]["approval"] = GATED
    assert rollout.approval_required(api.parse_spec(raw))
    raw["canary"]["approval"] = {"required": True, "who": "me"}
    with pytest.raises(ValueError, match="who"):
        api.parse_spec(raw)


def test_the_last_step_passing_holds_for_approval_instead_of_promoting() -> None:
    run = gated_run()
    decision = at_the_gate(run)
    status = decision.status
    assert decision.action == "awaitApproval"
    assert (status.phase, status.canary_weight, status.current_step) == ("Progressing", 50, 2)
    assert status.stable_model == STABLE_ID  # not promoted
    approved = condition(status, APPROVED)
    assert approved is not None
    assert (approved.status, approved.reason) == ("False", AWAITING_APPROVAL)
    assert approved.last_transition_time == run.now
    assert "canary 1.1.0 passed every step and holds 50%" in approved.message
    assert '`canaryml promote NAME` (annotation canaryml.dev/promote: "1.1.0")' in approved.message
    assert "a failing check still rolls it back" in approved.message
    progressing = condition(status, "Progressing")
    assert progressing is not None
    assert (progressing.status, progressing.reason) == ("True", AWAITING_APPROVAL)
    assert reasons(decision) == [AWAITING_APPROVAL]
    assert decision.events[0].type == "Normal"
    assert "last analysis: requests 120" in decision.events[0].message
    assert awaiting_approval(roundtrip(status)) == approved


def test_the_wait_keeps_analysing_and_says_so_once() -> None:
    run = gated_run()
    at_the_gate(run)
    since = run.now
    for _ in range(5):
        decision = run.analyse(after=15, tracks=CANARY_UP)
        assert decision.action == "awaitApproval"
        assert decision.events == []  # the Event came when the wait began
        assert decision.status.last_analysis is not None
        assert decision.status.last_analysis.time == run.now  # analysed all along
    approved = condition(run.status, APPROVED)
    assert approved is not None and approved.last_transition_time == since
    assert rollout.next_analysis_in(spec=run.spec, status=run.status, now=run.now) == 15.0


def test_a_held_analysis_during_the_wait_neither_promotes_nor_repeats_the_event() -> None:
    run = gated_run()
    at_the_gate(run)
    held = run.analyse(FEW_REQUESTS, after=15, tracks=CANARY_UP)
    assert held.action == "hold"
    assert awaiting_approval(held.status) is not None  # still awaited: a promote would act
    again = run.analyse(after=15, tracks=CANARY_UP)
    assert again.action == "awaitApproval"
    assert AWAITING_APPROVAL not in reasons(again)
    progressing = condition(again.status, "Progressing")
    assert progressing is not None and progressing.reason == AWAITING_APPROVAL


def test_a_failing_check_during_the_wait_still_rolls_back() -> None:
    run = gated_run()  # failureLimit 2
    at_the_gate(run)
    first = run.analyse(BAD_ERRORS, after=15, tracks=CANARY_UP)
    assert first.action == "failed"
    assert condition(first.status, APPROVED) is None  # the last step must pass again first
    progressing = condition(first.status, "Progressing")
    assert progressing is not None and progressing.reason == "CanaryAnalysis"
    assert "an analysis failed" in progressing.message
    second = run.analyse(BAD_ERRORS, after=15, tracks=CANARY_UP)
    assert second.action == "rollback"
    assert second.status.phase == "RolledBack"
    assert condition(second.status, APPROVED) is None
    assert awaiting_approval(second.status) is None


def test_after_a_failed_analysis_the_step_earns_its_interval_before_a_new_wait() -> None:
    run = gated_run()
    at_the_gate(run)
    run.analyse(BAD_ERRORS, after=15, tracks=CANARY_UP)
    assert run.analyse(after=15, tracks=CANARY_UP).action == "pass"
    decision = run.analyse(after=15, tracks=CANARY_UP)
    assert decision.action == "awaitApproval"
    assert reasons(decision) == [AWAITING_APPROVAL]  # a new wait, told again


def test_promote_gives_the_approval_once() -> None:
    run = gated_run()
    at_the_gate(run)
    decision = run.analyse(after=15, tracks=CANARY_UP, commands=PROMOTE)
    status = decision.status
    assert decision.action == "promote"
    assert status.phase == "Promoted"
    assert status.stable_model == CANARY_ID
    assert status.handled_commands == {"canaryml.dev/promote": "1.1.0"}
    approved = condition(status, APPROVED)
    assert approved is not None
    assert (approved.status, approved.reason) == ("True", "Approved")
    assert 'promoted by canaryml.dev/promote: "1.1.0"' in approved.message
    assert awaiting_approval(status) is None
    # The same annotation again (a GitOps tool re-applying it) does nothing more.
    later = run.decide(after=5, tracks={**CANARY_UP, "stable": deployment("1.1.0")})
    assert later.status.handled_commands == status.handled_commands
    assert "Promoted" not in reasons(later)


def test_a_promote_naming_another_version_approves_nothing() -> None:
    run = gated_run()
    at_the_gate(run)
    decision = run.analyse(after=15, tracks=CANARY_UP, commands={"promote": "9.9.9"})
    assert decision.action == "awaitApproval"
    assert "CommandIgnored" in reasons(decision)
    assert awaiting_approval(decision.status) is not None


def test_abort_during_the_wait_rolls_back() -> None:
    run = gated_run()
    at_the_gate(run)
    decision = run.decide(after=1, tracks=CANARY_UP, commands=ABORT)
    assert (decision.action, decision.status.phase) == ("rollback", "RolledBack")
    assert condition(decision.status, APPROVED) is None


def test_the_gate_is_separate_from_pause() -> None:
    """Paused while awaiting: the pause holds (no analysis judged); resumed, the step earns its
    interval again and the wait is still the same one."""
    run = gated_run()
    at_the_gate(run)
    run.spec = run.spec.model_copy(update={"paused": True})
    paused = run.analyse(after=15, tracks=CANARY_UP)
    assert (paused.action, paused.status.phase) == ("paused", "Paused")
    assert awaiting_approval(paused.status) is not None
    run.spec = run.spec.model_copy(update={"paused": False})
    assert run.analyse(after=15, tracks=CANARY_UP).action == "pass"
    resumed = run.analyse(after=30, tracks=CANARY_UP)
    assert resumed.action == "awaitApproval"
    assert AWAITING_APPROVAL not in reasons(resumed)


def test_dropping_the_requirement_promotes_at_the_next_passing_analysis() -> None:
    run = gated_run()
    at_the_gate(run)
    assert run.spec.canary is not None
    run.spec = run.spec.model_copy(
        update={"canary": run.spec.canary.model_copy(update={"approval": None})}
    )
    decision = run.analyse(after=15, tracks=CANARY_UP)
    assert decision.action == "promote"
    approved = condition(decision.status, APPROVED)
    assert approved is not None and approved.status == "True"


def test_a_new_canary_forgets_the_approval_of_the_last_one() -> None:
    run = gated_run()
    at_the_gate(run)
    run.analyse(after=15, tracks=CANARY_UP, commands=PROMOTE)
    raw = run.spec.model_dump(by_alias=True, exclude_none=True)
    raw["canary"]["model"] = {"uri": "s3://models/iris/1.2.0", "version": "1.2.0"}
    run.spec = api.parse_spec(raw)
    decision = run.decide(after=5)
    assert decision.action == "start"
    assert condition(decision.status, APPROVED) is None


def test_without_the_gate_nothing_changes() -> None:
    run = Run(make_spec())
    decision = run.promote()
    assert condition(decision.status, APPROVED) is None


def build(run: Run, tracks: Mapping[Track, DeploymentState]) -> api.ModelDeploymentStatus:
    return reconcile.build_status(
        spec=run.spec,
        invalid=None,
        previous=run.status,
        tracks=tracks,
        generation=1,
        now=run.now,
    )


def test_the_reconciler_shows_the_wait_as_not_reconciling() -> None:
    """As a pause: kstatus Current (Reconciling False, reason AwaitingApproval), phase
    Progressing, Ready as the stable says."""
    run = gated_run()
    at_the_gate(run)
    tracks: dict[Track, DeploymentState] = {"stable": deployment("1.0.0"), **CANARY_UP}
    status = build(run, tracks)
    assert status.phase == "Progressing"
    reconciling = condition(status, "Reconciling")
    assert reconciling is not None
    assert (reconciling.status, reconciling.reason) == ("False", AWAITING_APPROVAL)
    assert "canaryml promote NAME" in reconciling.message
    # Before the gate, the same rollout is in progress.
    early = gated_run()
    early.to_step(1)
    reconciling = condition(build(early, tracks), "Reconciling")
    assert reconciling is not None and reconciling.status == "True"


def test_awaiting_approval_reads_only_a_live_wait() -> None:
    status = api.ModelDeploymentStatus(phase="Progressing")
    assert awaiting_approval(status) is None
    conditions = state.set_condition(
        [],
        type=APPROVED,
        status="False",
        reason=AWAITING_APPROVAL,
        message="m",
        generation=None,
        now=run_time(),
    )
    assert awaiting_approval(status.model_copy(update={"conditions": conditions})) is not None
    ended = status.model_copy(update={"conditions": conditions, "phase": "RolledBack"})
    assert awaiting_approval(ended) is None


def run_time() -> Any:
    return Run().now + timedelta(seconds=1)


def rendered(run: Run) -> str:
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
    return console.file.getvalue()  # type: ignore[attr-defined,no-any-return]


def test_canaryml_status_shows_the_awaited_approval_and_how_to_give_it() -> None:
    run = gated_run()
    run.to_step(2)
    assert "required before the final promotion (not awaited yet)" in rendered(run)
    run.analyse(after=30, tracks=CANARY_UP)
    text = rendered(run)
    assert f"AWAITED since {run.now:%Y-%m-%d %H:%M:%S}" in text
    assert "approve with `canaryml promote iris -n ml`" in text
    assert 'canaryml.dev/promote: "1.1.0"' in text
    run.analyse(after=15, tracks=CANARY_UP, commands=PROMOTE)
    text = rendered(run)
    assert "given: canary 1.1.0 promoted to stable: promoted by canaryml.dev/promote" in text
    assert "AWAITED" not in text
    assert "approval" not in rendered(Run(make_spec()))
