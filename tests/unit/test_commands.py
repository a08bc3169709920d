"""Commands that survive GitOps: a command annotation names its target, acts once per value
(recorded in status.handledCommands) and stays where it was put; replayed, left in Git or in
the earlier form, it does nothing and says so once."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_api.tracks import Track
from canaryml_operator import rollout
from canaryml_operator.cli import command_value
from canaryml_operator.rollout import Command
from canaryml_operator.state import DeploymentState, Event

from tests.unit.test_rollout import (
    CANARY_ID,
    CANARY_UP,
    NEXT_ID,
    NEXT_MODEL,
    PROMOTE,
    STABLE_ID,
    Run,
    deployment,
    make_spec,
    reasons,
)

NEXT_UP: dict[Track, DeploymentState] = {"canary": deployment("1.2.0")}


def promoted_by_command() -> Run:
    """1.1.0 promoted by `promote: "1.1.0"`, and the stable rolled out to it."""
    run = Run()
    run.start()
    assert run.decide(after=1, tracks=CANARY_UP, commands=PROMOTE).action == "promote"
    done = run.decide(after=10, tracks={"stable": deployment("1.1.0")}, commands=PROMOTE)
    assert done.action == "promoted"
    return run


def test_a_replayed_promote_does_nothing() -> None:
    run = promoted_by_command()
    before = run.status
    # The same annotation again (a GitOps sync, or the one left in place): no action, no Event.
    for _ in range(3):
        decision = run.decide(after=60, tracks={"stable": deployment("1.1.0")}, commands=PROMOTE)
        assert (decision.action, decision.events) == ("none", [])
        assert decision.status.history == before.history
    assert run.status.handled_commands == {"canaryml.dev/promote": "1.1.0"}


def test_a_promote_left_in_git_for_1_1_0_does_not_promote_1_2_0() -> None:
    run = promoted_by_command()
    run.spec = make_spec(canary_model=NEXT_MODEL)
    # Started and available at once: its first step, not a promotion.
    started = run.decide(after=60, tracks=NEXT_UP, commands=PROMOTE)
    assert started.action == "stepUp"
    assert "RolloutStarted" in reasons(started)
    message = (
        'canaryml.dev/promote: "1.1.0" was handled before and does nothing for the canary '
        "1.2.0 (each value acts once: " + rollout.COMMAND_FORM + ")"
    )
    assert Event("Normal", "CommandAlreadyHandled", message) in started.events
    # Never promoted without its analysis; said once only.
    for _ in range(3):
        decision = run.decide(after=1, tracks=NEXT_UP, commands=PROMOTE)
        assert (decision.action, decision.events) == ("none", [])
    assert (run.status.phase, run.status.stable_model) == ("Progressing", CANARY_ID)


def test_a_stale_promote_never_handled_names_the_other_canary_once() -> None:
    run = Run(make_spec(canary_model=NEXT_MODEL))
    run.decide(tracks=NEXT_UP)
    run.decide(after=1, tracks=NEXT_UP)
    decision = run.decide(after=1, tracks=NEXT_UP, commands=PROMOTE)  # names 1.1.0
    message = 'canaryml.dev/promote: "1.1.0": it names canary 1.1.0, but the canary is 1.2.0: '
    assert decision.events == [Event("Normal", "CommandIgnored", message + "nothing done")]
    assert decision.status.stable_model == STABLE_ID
    assert run.decide(after=1, tracks=NEXT_UP, commands=PROMOTE).events == []


@pytest.mark.parametrize("legacy", ["true", "", "2024-05-01T12:00:00Z"])
@pytest.mark.parametrize("command", ["promote", "abort"])
def test_the_earlier_form_is_refused_with_the_new_one(command: Command, legacy: str) -> None:
    run = Run()
    run.start()
    decision = run.decide(after=1, tracks=CANARY_UP, commands={command: legacy})
    assert decision.action == "none"
    assert decision.status.phase == "Progressing"
    assert [(e.type, e.reason) for e in decision.events] == [("Warning", "CommandRefused")]
    assert f'set canaryml.dev/{command}: "1.1.0"' in decision.events[0].message
    assert run.decide(after=1, tracks=CANARY_UP, commands={command: legacy}).events == []


def stable_1_2_0() -> Run:
    """1.0.0 -> 1.1.0 -> 1.2.0, each promoted, the stable rolled out to 1.2.0."""
    run = promoted_by_command()
    run.spec = make_spec(canary_model=NEXT_MODEL)
    run.decide(after=1, tracks=NEXT_UP)
    run.decide(after=1, tracks=NEXT_UP)
    assert run.decide(after=1, tracks=NEXT_UP, commands={"promote": "1.2.0"}).action == "promote"
    run.decide(after=10, tracks={"stable": deployment("1.2.0")})
    assert run.status.stable_model == NEXT_ID
    return run


def test_a_replayed_rollback_does_not_walk_back_through_history() -> None:
    run = stable_1_2_0()
    rollback: dict[Command, str] = {"rollback": "1.2.0"}
    first = run.decide(after=60, commands=rollback)
    assert (first.action, first.status.stable_model) == ("rollbackStable", CANARY_ID)
    # Replayed: nothing, however often.
    for _ in range(3):
        again = run.decide(after=60, commands=rollback)
        assert (again.action, again.events) == ("none", [])
        assert again.status.stable_model == CANARY_ID
    # Even with the record lost (a status written by hand): 1.2.0 is no longer the stable.
    run.status = run.status.model_copy(update={"handled_commands": {}})
    lost = run.decide(after=60, commands=rollback)
    assert lost.status.stable_model == CANARY_ID
    assert reasons(lost) == ["CommandIgnored"]
    # Naming the stable now walks one step further, on purpose.
    further = run.decide(after=60, commands={"rollback": "1.1.0"})
    assert further.status.stable_model == STABLE_ID


def test_a_legacy_rollback_is_refused() -> None:
    run = stable_1_2_0()
    decision = run.decide(after=60, commands={"rollback": "true"})
    assert decision.status.stable_model == NEXT_ID
    assert reasons(decision) == ["CommandRefused"]
    assert 'set canaryml.dev/rollback: "1.2.0"' in decision.events[0].message


def test_a_new_value_repeats_a_command_for_the_same_version() -> None:
    run = Run()
    run.start()
    assert run.decide(after=1, commands={"abort": "1.1.0"}).action == "rollback"
    # The same canary again (removed, then added back): the left-over abort does nothing...
    run.spec = make_spec(canary=None)
    run.decide(after=10, commands={"abort": "1.1.0"})
    run.spec = make_spec()
    step = run.decide(after=1, tracks=CANARY_UP, commands={"abort": "1.1.0"})
    assert (step.action, run.status.phase) == ("stepUp", "Progressing")
    assert run.decide(after=1, tracks=CANARY_UP, commands={"abort": "1.1.0"}).action == "none"
    # ...and a new value for it does.
    again = run.decide(after=1, tracks=CANARY_UP, commands={"abort": "1.1.0@2"})
    assert (again.action, again.status.phase) == ("rollback", "RolledBack")


def found(status: api.ModelDeploymentStatus, **spec: Any) -> dict[str, Any]:
    return {"spec": spec, "status": status.model_dump(by_alias=True, mode="json")}


def test_the_cli_writes_the_version_it_acts_on() -> None:
    run = promoted_by_command()
    run.spec = make_spec(canary_model=NEXT_MODEL)
    run.decide(after=1, tracks=NEXT_UP)
    obj = found(run.status, canary={"model": NEXT_MODEL})
    assert command_value("promote", obj) == "1.2.0"
    assert command_value("abort", obj) == "1.2.0"
    assert command_value("rollback", obj) == "1.1.0"
    # A value handled already: the same command again gets a new value.
    handled = run.status.model_copy(update={"handled_commands": {"canaryml.dev/abort": "1.2.0"}})
    value = command_value("abort", found(handled, canary={"model": NEXT_MODEL}))
    assert value.startswith("1.2.0@") and rollout.command_target(value) == "1.2.0"


def test_a_huge_value_is_refused_and_recorded_by_its_digest() -> None:
    run = Run()
    run.start()
    huge = "1.1.0@" + "x" * 100_000
    decision = run.decide(after=1, tracks=CANARY_UP, commands={"promote": huge})
    assert decision.action == "none"
    assert reasons(decision) == ["CommandRefused"]
    assert len(decision.events[0].message) < 500
    recorded = decision.status.handled_commands["canaryml.dev/promote"]
    assert recorded.startswith("sha256:") and len(recorded) == 71
    assert run.decide(after=1, tracks=CANARY_UP, commands={"promote": huge}).events == []
