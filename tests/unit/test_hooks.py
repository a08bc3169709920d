"""Lifecycle webhooks in the rollout core: which hooks are due, what they are told, and what
their answers do to `decide()` (gating hooks hold, a `rollout` hook's failure is a failed check,
notification hooks hold nothing), driven with a clock as the operator drives them."""

from __future__ import annotations

import hashlib
import hmac
import json
from datetime import timedelta
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import hooks
from canaryml_operator.delivery import encode, secret_text, signature
from canaryml_operator.state import Owner

from tests.unit.test_rollout import BAD_ERRORS, CANARY_UP, Run, condition, make_spec, reasons

OWNER = Owner(name="iris", namespace="models", uid="u-1")


def hook(name: str, type: str, **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": type, "url": f"http://hooks.example/{name}", **fields}


def run_with(*webhooks: dict[str, Any], **fields: Any) -> Run:
    return Run(make_spec(webhooks=list(webhooks), **fields))


def due(run: Run) -> list[hooks.Call]:
    return hooks.due(spec=run.spec, status=run.status, owner=OWNER, now=run.now)


def answer(run: Run, ok: bool, *, detail: str | None = None) -> list[hooks.Call]:
    """Every call due now answered `ok`, recorded as the operator records it."""
    calls = due(run)
    results = [
        hooks.Result(
            c.hook.name, c.occasion, ok, detail or ("HTTP 200" if ok else "HTTP 503"), run.now
        )
        for c in calls
    ]
    run.status = hooks.record(spec=run.spec, status=run.status, results=results, now=run.now)
    return calls


def available(run: Run) -> None:
    """The canary started and its pods became available (no step yet while a hook holds)."""
    run.decide()
    run.decide(after=10, tracks=CANARY_UP)


def test_webhooks_read_camel_case_with_defaults_and_refuse_bad_ones() -> None:
    spec = make_spec(webhooks=[hook("smoke", "pre-rollout", maxAttempts=3, metadata={"a": "b"})])
    (smoke,) = spec.webhooks
    assert (smoke.timeout, smoke.retry_interval, smoke.max_attempts) == ("10s", "5s", 3)
    with pytest.raises(ValueError, match="webhook names must be unique, repeated: smoke"):
        make_spec(webhooks=[hook("smoke", "pre-rollout"), hook("smoke", "rollback")])
    with pytest.raises(ValueError, match="at most 60s"):
        make_spec(webhooks=[hook("slow", "rollout", timeout="2m")])
    with pytest.raises(ValueError, match="type"):
        make_spec(webhooks=[hook("x", "pre-promotion")])
    with pytest.raises(ValueError, match="url or urlSecretRef"):
        make_spec(notifications=[{"format": "slack"}])
    with pytest.raises(ValueError, match="url or urlSecretRef"):
        make_spec(notifications=[{"url": "http://a", "urlSecretRef": {"name": "s", "key": "url"}}])


def test_a_pre_rollout_hook_holds_the_first_step_until_it_answers_2xx() -> None:
    run = run_with(hook("smoke", "pre-rollout", retryInterval="10s"))
    available(run)
    assert (run.status.current_step, run.status.canary_weight) == (None, 0)
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == hooks.WAITING_FOR_WEBHOOK
    assert "waiting for webhook smoke (pre-rollout)" in progressing.message

    (call,) = answer(run, ok=False)
    assert (call.occasion, call.attempt) == ("1.1.0/start", 1)
    (record,) = run.status.webhooks
    assert (record.attempts, record.passed, record.last_result) == (1, False, "HTTP 503")
    assert record.next_attempt_at == run.now + timedelta(seconds=10)
    assert run.decide(after=1, tracks=CANARY_UP).action == "hold"
    progressing = condition(run.status, "Progressing")
    assert progressing is not None
    assert "attempt 1 of 10 got HTTP 503; next attempt at" in progressing.message
    assert due(run) == []  # backing off
    assert hooks.next_in(spec=run.spec, status=run.status, now=run.now) == 9.0

    run.now += timedelta(seconds=9)
    (again,) = answer(run, ok=True)
    assert again.attempt == 2
    decision = run.decide(tracks=CANARY_UP)
    assert decision.action == "stepUp"
    assert run.status.canary_weight == 5
    assert due(run) == [] and hooks.next_in(spec=run.spec, status=run.status, now=run.now) is None


def test_backoff_doubles_from_the_retry_interval_up_to_five_minutes() -> None:
    (smoke,) = make_spec(webhooks=[hook("smoke", "pre-rollout", retryInterval="5s")]).webhooks
    assert [hooks.backoff(smoke, n) for n in (1, 2, 3, 4, 7, 20)] == [5, 10, 20, 40, 300, 300]


def test_a_gating_hook_that_used_its_attempts_holds_until_edited() -> None:
    run = run_with(hook("smoke", "pre-rollout", maxAttempts=2, retryInterval="1s"))
    available(run)
    answer(run, ok=False)
    run.now += timedelta(seconds=1)
    answer(run, ok=False, detail="webhook smoke at http://x did not answer within 10 s")
    decision = run.decide(tracks=CANARY_UP)
    assert decision.action == "hold"
    assert reasons(decision) == [hooks.WEBHOOK_GAVE_UP]  # a Warning, once
    progressing = condition(run.status, "Progressing")
    assert progressing is not None and progressing.reason == hooks.WEBHOOK_GAVE_UP
    assert "did not say yes in 2 attempts" in progressing.message
    assert "edit the hook" in progressing.message
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and (stalled.status, stalled.reason) == ("True", "WebhookGaveUp")
    assert run.decide(after=600, tracks=CANARY_UP).events == []  # said once; never proceeds
    assert run.status.canary_weight == 0
    assert condition(run.status, "Stalled") == stalled  # since when it stalled
    assert due(run) == [] and hooks.next_in(spec=run.spec, status=run.status, now=run.now) is None

    edited = make_spec(
        webhooks=[hook("smoke", "pre-rollout", maxAttempts=2, metadata={"retry": "1"})]
    )
    run.spec = edited  # any edit of the hook starts its attempts over
    assert run.decide(tracks=CANARY_UP).action == "hold"  # asked again: no stall any more
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and stalled.status == "False"
    (call,) = answer(run, ok=True)
    assert call.attempt == 1
    assert run.decide(tracks=CANARY_UP).action == "stepUp"


def test_a_confirm_promotion_hook_that_gave_up_stays_stalled_through_the_analyses() -> None:
    run = run_with(hook("go", "confirm-promotion", maxAttempts=1))
    run.to_step(2)
    run.analyse(after=30, tracks=CANARY_UP)
    answer(run, ok=False, detail="HTTP 403")
    gave_up = run.analyse(after=15, tracks=CANARY_UP)
    assert reasons(gave_up) == [hooks.WEBHOOK_GAVE_UP]
    stalled = condition(run.status, "Stalled")
    assert stalled is not None and (stalled.status, stalled.reason) == ("True", "WebhookGaveUp")
    for _ in range(3):
        decision = run.analyse(after=15, tracks=CANARY_UP)  # passing analyses, held all along
        assert decision.action == "hold" and decision.events == []
    assert condition(run.status, "Stalled") == stalled
    assert run.analyse(BAD_ERRORS, after=15, tracks=CANARY_UP).action == "failed"  # still judged


def test_confirm_promotion_holds_the_promotion_not_the_steps() -> None:
    run = run_with(hook("go", "confirm-promotion"))
    run.to_step(2)  # the steps go on: only the promotion is gated
    assert due(run) == []  # asked once the last step's interval is over
    decision = run.analyse(after=30, tracks=CANARY_UP)
    assert decision.action == "hold"
    assert run.status.phase == "Progressing" and run.status.canary_weight == 50
    (call,) = answer(run, ok=False, detail="HTTP 403")
    assert call.occasion == "1.1.0/promotion"
    assert call.payload["type"] == "confirm-promotion"
    assert run.analyse(after=15, tracks=CANARY_UP).action == "hold"
    run.now += timedelta(seconds=5)
    answer(run, ok=True)
    decision = run.analyse(after=10, tracks=CANARY_UP)
    assert decision.action == "promote"
    assert run.status.phase == "Promoted"


def test_confirm_traffic_increase_holds_each_step_up() -> None:
    run = run_with(hook("more", "confirm-traffic-increase"))
    run.start()
    assert run.analyse(after=30, tracks=CANARY_UP).action == "hold"
    (call,) = answer(run, ok=True)
    assert call.occasion == "1.1.0/step-2"
    assert run.analyse(after=1, tracks=CANARY_UP).action == "stepUp"
    assert run.analyse(after=30, tracks=CANARY_UP).action == "hold"  # step 3 is asked again
    (call,) = answer(run, ok=True)
    assert call.occasion == "1.1.0/step-3"


def test_a_failing_rollout_hook_is_a_failed_check_of_its_analysis() -> None:
    run = run_with(hook("load", "rollout"), failure_limit=2)
    run.start()
    run.now += timedelta(seconds=15)
    calls = hooks.analysis_calls(spec=run.spec, status=run.status, owner=OWNER, at=run.now)
    assert [c.occasion for c in calls] == ["1.1.0/analysis/2024-05-01T12:00:25Z"]
    assert due(run) == []  # asked at analyses only
    results = [hooks.Result("load", calls[0].occasion, False, "HTTP 500", run.now)]
    run.status = hooks.record(spec=run.spec, status=run.status, results=results, now=run.now)
    assert run.status.webhooks[0].next_attempt_at is None  # the next analysis asks again
    decision = run.analyse(tracks=CANARY_UP)
    assert decision.action == "failed"
    last = run.status.last_analysis
    assert last is not None and last.verdict == "Failed"
    assert any("webhook:load: rollout webhook answered HTTP 500" in r for r in last.reasons)


def test_notification_hooks_never_hold_a_rollback() -> None:
    run = run_with(hook("tell", "rollback"), hook("log", "event"), failure_limit=1)
    run.start()
    (event,) = answer(run, ok=False)  # the event hook is down: nothing waits for it
    assert event.hook.name == "log"
    decision = run.analyse(BAD_ERRORS, after=15, tracks=CANARY_UP)
    assert decision.action == "rollback"
    calls = due(run)
    assert sorted((c.hook.name, c.occasion) for c in calls) == [
        ("log", "1.1.0/RolledBack/-/0"),
        ("tell", "1.1.0/rolledBack"),
    ]
    assert calls[0].payload["phase"] == "RolledBack"


def test_the_payload_is_versioned_and_says_where_the_rollout_is() -> None:
    run = run_with(hook("go", "confirm-promotion", metadata={"team": "ml"}))
    run.to_step(2)
    run.analyse(after=30, tracks=CANARY_UP)
    (call,) = due(run)
    payload = json.loads(encode(call.payload))
    assert payload == {
        "apiVersion": "canaryml.dev/webhook/v1",
        "type": "confirm-promotion",
        "webhook": "go",
        "occasion": "1.1.0/promotion",
        "attempt": 1,
        "name": "iris",
        "namespace": "models",
        "phase": "Progressing",
        "weight": 50,
        "step": 3,
        "steps": 3,
        "canary": {"version": "1.1.0", "uri": "s3://models/iris/1.1.0", "sha256": None},
        "stable": {"version": "1.0.0", "uri": "s3://models/iris/1.0.0", "sha256": None},
        "metadata": {"team": "ml"},
        "message": payload["message"],
        "analysis": payload["analysis"],
        "time": run.now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    assert "waiting for webhook go (confirm-promotion)" in payload["message"]
    assert payload["analysis"]["verdict"] == "Successful"


def test_records_follow_the_spec_and_survive_a_status_roundtrip() -> None:
    run = run_with(hook("smoke", "pre-rollout"))
    available(run)
    answer(run, ok=False)
    raw = run.status.model_dump(by_alias=True, mode="json")
    assert raw["webhooks"][0]["occasion"] == "1.1.0/start"
    assert api.parse_status(raw).webhooks == run.status.webhooks
    run.spec = make_spec()  # the hook removed: its record goes, and nothing holds
    run.status = hooks.record(spec=run.spec, status=run.status, results=[], now=run.now)
    assert run.status.webhooks == []
    assert run.decide(tracks=CANARY_UP).action == "stepUp"


def test_the_signature_is_hmac_sha256_of_the_body() -> None:
    body = encode({"b": 1, "a": "x"})
    assert body == b'{"a":"x","b":1}'
    expected = hmac.new(b"key", body, hashlib.sha256).hexdigest()
    assert signature(b"key", body) == f"sha256={expected}"


def test_a_secret_is_used_only_when_labelled() -> None:
    secret: dict[str, Any] = {
        "metadata": {"name": "k", "namespace": "models"},
        "data": {"key": "c2VjcmV0Cg=="},  # "secret\n"
    }
    with pytest.raises(ValueError, match=r"not labelled canaryml\.dev/webhook-credentials=true"):
        secret_text(secret, key="key", what="webhook x secretRef")
    secret["metadata"]["labels"] = {"canaryml.dev/webhook-credentials": "true"}
    assert secret_text(secret, key="key", what="webhook x secretRef") == "secret"
    with pytest.raises(ValueError, match="has no key 'other'"):
        secret_text(secret, key="other", what="webhook x secretRef")


def test_canaryml_status_shows_each_hooks_attempts() -> None:
    import io

    from canaryml_operator.cli import render_status
    from rich.console import Console

    run = run_with(hook("smoke", "pre-rollout"))
    available(run)
    answer(run, ok=False, detail="HTTP 503")
    found = {
        "metadata": {"namespace": "models", "name": "iris"},
        "spec": {"canary": {"steps": [5, 25, 50]}},
        "status": run.status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    row = next(line for line in text.splitlines() if "smoke" in line and "pre-rollout" in line)
    for shown in ("1.1.0/start", "HTTP 503", " no ", "12:00:15"):
        assert shown in row, (shown, row)


def test_the_operator_counts_webhook_attempts_and_notifications_from_the_status() -> None:
    from canaryml_operator import metrics

    def value(name: str, result: str) -> float:
        labels = {"namespace": "models", "model_deployment": "counted", "result": result}
        found = metrics.REGISTRY.get_sample_value(f"{name}_total", labels)
        return found or 0.0

    metrics.forget(namespace="models", name="counted")
    run = run_with(hook("smoke", "pre-rollout"))
    available(run)
    before = run.status
    answer(run, ok=False)
    metrics.observe_status(namespace="models", name="counted", previous=before, status=run.status)
    assert (
        value("canaryml_operator_webhook_attempts", "failed"),
        value("canaryml_operator_webhook_attempts", "passed"),
    ) == (1, 0)
    before = run.status
    run.now += timedelta(seconds=5)
    answer(run, ok=True)
    sent = api.NotificationRecord(sent=[run.now, run.now], dropped=3)
    after = run.status.model_copy(update={"notifications": sent})
    metrics.observe_status(namespace="models", name="counted", previous=before, status=after)
    metrics.observe_status(namespace="models", name="counted", previous=after, status=after)
    assert value("canaryml_operator_webhook_attempts", "passed") == 1
    assert value("canaryml_operator_notifications", "sent") == 2
    assert value("canaryml_operator_notifications", "dropped") == 3
    metrics.forget(namespace="models", name="counted")
