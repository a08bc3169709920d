"""Notifications of rollout events: which events a turn makes, their bodies (canaryml's JSON,
Slack's incoming-webhook format), the targets' event filters, and the rate limit."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from canaryml_api import resource as api
from canaryml_operator import hooks, notifications
from canaryml_operator.notifications import Message

from tests.unit.test_hooks import OWNER, hook
from tests.unit.test_rollout import BAD_ERRORS, CANARY_UP, FEW_REQUESTS, Run, make_spec

JSON = api.NotificationSpec(url="http://hooks.example/all")


def target(**fields: Any) -> api.NotificationSpec:
    return api.NotificationSpec.model_validate({"url": "http://hooks.example/n", **fields})


class Told:
    """A Run whose every turn is planned as the operator plans it; what it sent, in order."""

    def __init__(self, run: Run, *targets: api.NotificationSpec, limit: int = 10) -> None:
        self.run, self.targets, self.limit = run, targets or (JSON,), limit
        self.sent: list[Message] = []

    def turn(self, measured: dict[str, Any] | None = None, *, after: float = 0.0) -> None:
        before = self.run.status
        if measured is None:
            decision = self.run.decide(after=after, tracks=CANARY_UP)
        else:
            decision = self.run.analyse(measured, after=after, tracks=CANARY_UP)
        status, messages = notifications.plan(
            targets=self.targets,
            owner=OWNER,
            previous=before,
            status=decision.status,
            events=decision.events,
            now=self.run.now,
            limit=self.limit,
        )
        self.run.status = status
        self.sent += messages

    def events(self) -> list[str]:
        return [m.event for m in self.sent]


def test_a_promotion_tells_each_step_and_the_promotion() -> None:
    told = Told(Run(make_spec()))
    told.turn()
    told.turn(after=10)  # available: step 1
    for _ in range(3):
        told.turn({}, after=30)
    assert told.events() == ["stepAdvanced", "stepAdvanced", "stepAdvanced", "promoted"]
    body = told.sent[-1].body
    assert body["apiVersion"] == "canaryml.dev/notification/v1"
    assert (body["event"], body["name"], body["namespace"]) == ("promoted", "iris", "models")
    assert "canary 1.1.0 promoted to stable" in body["message"]
    assert told.run.status.notifications is not None
    assert len(told.run.status.notifications.sent) == 4


def test_a_rollback_tells_the_failure_then_the_rollback_not_the_failure_twice() -> None:
    told = Told(Run(make_spec(failure_limit=2)))
    told.turn()
    told.turn(after=10)
    told.turn(BAD_ERRORS, after=15)
    told.turn(BAD_ERRORS, after=15)
    assert told.events() == ["stepAdvanced", "failed", "rolledBack"]
    assert "errorRate" in told.sent[1].body["message"]


def test_held_is_told_when_the_hold_begins_only() -> None:
    told = Told(Run(make_spec()))
    told.turn()  # the canary is up at once: step 1
    for _ in range(3):
        told.turn(FEW_REQUESTS, after=5)  # one hold, three analyses
    told.turn({}, after=5)  # passes again, within the step's 30s
    told.turn(FEW_REQUESTS, after=5)  # a new hold
    assert told.events() == ["stepAdvanced", "held", "held"]


def test_a_webhook_hold_is_a_hold() -> None:
    told = Told(Run(make_spec(webhooks=[hook("smoke", "pre-rollout")])))
    told.turn()
    told.turn(after=10)
    assert told.events() == ["held"]
    assert "waiting for webhook smoke" in told.sent[0].body["message"]
    assert told.sent[0].body["weight"] == 0


def test_each_target_gets_the_events_it_names_in_its_format() -> None:
    slack = target(format="slack", events=["promoted", "rolledBack"])
    told = Told(Run(make_spec(failure_limit=1)), JSON, slack)
    told.turn()
    told.turn(after=10)
    told.turn(BAD_ERRORS, after=15)
    assert [(m.target.format, m.event) for m in told.sent] == [
        ("json", "stepAdvanced"),
        ("json", "rolledBack"),
        ("slack", "rolledBack"),
    ]
    body = told.sent[-1].body
    assert body["text"].startswith("canaryml models/iris: rolled back: canary 1.1.0 rolled back")
    assert body["blocks"][0]["text"]["text"] == "canaryml models/iris: rolled back"


def test_a_flapping_rollout_is_rate_limited_per_window() -> None:
    told = Told(Run(make_spec()), limit=2)
    told.turn()
    told.turn(after=10)  # stepAdvanced: 1
    told.turn(FEW_REQUESTS, after=5)  # held: 2
    told.turn({}, after=5)
    told.turn(FEW_REQUESTS, after=5)  # held: dropped
    told.turn({}, after=30)  # stepAdvanced: dropped
    assert told.events() == ["stepAdvanced", "held"]
    record = told.run.status.notifications
    assert record is not None and record.dropped == 2 and len(record.sent) == 2
    told.run.now += timedelta(seconds=notifications.DEFAULT_WINDOW_SECONDS)
    told.turn(FEW_REQUESTS, after=15)  # a new window
    assert told.events() == ["stepAdvanced", "held", "held"]


def test_without_targets_nothing_is_planned_nor_written() -> None:
    run = Run(make_spec())
    run.decide()
    decision = run.decide(after=10, tracks=CANARY_UP)
    status, messages = notifications.plan(
        targets=[],
        owner=OWNER,
        previous=api.ModelDeploymentStatus(),
        status=decision.status,
        events=decision.events,
        now=run.now,
    )
    assert messages == [] and status is decision.status


def test_the_held_reasons_include_the_webhook_holds() -> None:
    assert set(hooks.HOLD_REASONS) <= set(notifications.HELD_REASONS)
