"""Lifecycle webhooks (spec.webhooks): which are due now, what they are told, what their
answers mean. Pure: no HTTP (the operator's `delivery` makes the calls), no kopf.

Each hook is asked about one occasion at a time, named by the canary and the point of the
rollout (`occasion`): `confirm-rollout` and `pre-rollout` once the canary's pods are available,
before its first traffic; `confirm-traffic-increase` when a step's interval is over, before the
next step; `confirm-promotion` when the last step's is, before the promotion; `rollout` at each
analysis; `post-rollout` once promoted; `rollback` once rolled back; `event` at each change of
the rollout's phase, step or weight. What each hook answered at its occasion lives in
status.webhooks (`record` is its one writer): the attempts, the last result, when to try next
(exponential backoff from retryInterval, at most MAX_BACKOFF_SECONDS), and whether it passed.
An edit of the hook, or a new occasion, starts its attempts over.

The gating hooks hold the rollout (`hold`: the weight is held, Progressing says which hook and
why) until they answer 2xx; one that used all its attempts keeps holding (WEBHOOK_GAVE_UP) until
a person acts. A `rollout` hook's failure is a failed check of its analysis (`rollout_checks`).
The other hooks (post-rollout, rollback, event) are told and retried, and hold nothing.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final, Literal

from canaryml_api import resource as api
from canaryml_api.routing import is_current_canary

from canaryml_operator.state import Owner, step_seconds, step_weights
from canaryml_operator.verdicts import CheckResult

PAYLOAD_API_VERSION: Final = "canaryml.dev/webhook/v1"
MAX_BACKOFF_SECONDS: Final = 300.0
WAITING_FOR_WEBHOOK: Final = "WaitingForWebhook"  # Progressing: a gating hook has not said yes
WEBHOOK_GAVE_UP: Final = "WebhookGaveUp"  # Progressing: ... and used all its attempts
HOLD_REASONS: Final = (WAITING_FOR_WEBHOOK, WEBHOOK_GAVE_UP)
CANARY_AVAILABLE: Final = "CanaryAvailable"  # rollout's condition (it imports this module)

Point = Literal["start", "increase", "promotion"]
POINT_TYPES: Final[dict[Point, tuple[api.WebhookType, ...]]] = {
    "start": ("confirm-rollout", "pre-rollout"),
    "increase": ("confirm-traffic-increase",),
    "promotion": ("confirm-promotion",),
}


@dataclass(frozen=True)
class Call:
    """One attempt due now: the hook, what it is asked about, and the payload to POST."""

    hook: api.WebhookSpec
    occasion: str
    attempt: int
    payload: dict[str, Any]


@dataclass(frozen=True)
class Result:
    """What one attempt got: `ok` for a 2xx; `detail` says what (an HTTP status, a timeout)."""

    name: str
    occasion: str
    ok: bool
    detail: str
    at: datetime


@dataclass(frozen=True)
class Hold:
    reason: str
    message: str


def _tag(status: api.ModelDeploymentStatus) -> str:
    model = status.canary_model
    if model is None:
        return "-"
    return model.version + (f"@{model.sha256[:12]}" if model.sha256 else "")


def _available(status: api.ModelDeploymentStatus) -> bool:
    found = next((c for c in status.conditions if c.type == CANARY_AVAILABLE), None)
    return found is not None and found.status == "True"


def _step_over(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> bool:
    assert spec.canary is not None
    started = status.step_started_at
    interval = timedelta(seconds=step_seconds(spec))
    return started is not None and now - started >= interval


def point_occasion(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, point: Point
) -> str:
    """The occasion the gating hooks of `point` are asked about for the current canary."""
    tag = _tag(status)
    if point == "start":
        return f"{tag}/start"
    if point == "increase":
        return f"{tag}/step-{(status.current_step or 0) + 2}"
    return f"{tag}/promotion"


def analysis_occasion(status: api.ModelDeploymentStatus, at: datetime) -> str:
    return f"{_tag(status)}/analysis/{at.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def occasion(
    hook: api.WebhookSpec,
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    now: datetime,
) -> str | None:
    """What `hook` is to be asked about now; None when nothing (a `rollout` hook is asked at
    each analysis: `analysis_calls`)."""
    if spec.canary is None or not is_current_canary(spec, status):
        return None
    phase, step, tag = status.phase, status.current_step, _tag(status)
    last = len(step_weights(spec)) - 1
    kind = hook.type
    if kind in ("confirm-rollout", "pre-rollout"):
        ready = phase == "Progressing" and step is None and _available(status)
        return point_occasion(spec, status, "start") if ready else None
    if kind in ("confirm-traffic-increase", "confirm-promotion"):
        if phase != "Progressing" or step is None or not _step_over(spec, status, now):
            return None
        if spec.canary.experiment is not None:
            return None  # an A/B experiment neither steps up nor promotes by itself
        if kind == "confirm-traffic-increase" and step < last:
            return point_occasion(spec, status, "increase")
        if kind == "confirm-promotion" and step == last:
            return point_occasion(spec, status, "promotion")
        return None
    if kind == "post-rollout":
        return f"{tag}/promoted" if phase == "Promoted" else None
    if kind == "rollback":
        return f"{tag}/rolledBack" if phase == "RolledBack" else None
    if kind == "event":
        if phase not in ("Progressing", "Paused", "Promoted", "RolledBack"):
            return None
        return f"{tag}/{phase}/{'-' if step is None else step + 1}/{status.canary_weight}"
    return None


def digest(hook: api.WebhookSpec) -> str:
    text = json.dumps(hook.model_dump(mode="json", by_alias=True), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _current(
    status: api.ModelDeploymentStatus, hook: api.WebhookSpec, at: str
) -> api.WebhookRecord | None:
    """The hook's record for occasion `at`, unless the hook was edited since."""
    found = next((r for r in status.webhooks if r.name == hook.name), None)
    if found is None or found.occasion != at or found.spec_digest != digest(hook):
        return None
    return found


def backoff(hook: api.WebhookSpec, attempts: int) -> float:
    """Seconds to wait after `attempts` failed attempts: retryInterval, doubled each time."""
    first = api.parse_duration(hook.retry_interval)
    return float(min(MAX_BACKOFF_SECONDS, first * 2 ** max(0, attempts - 1)))


def due(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    owner: Owner,
    now: datetime,
) -> list[Call]:
    """The attempts due now (not the `rollout` hooks: `analysis_calls`)."""
    calls = []
    for hook in spec.webhooks:
        at = occasion(hook, spec=spec, status=status, now=now)
        if at is None:
            continue
        record = _current(status, hook, at)
        if record is not None and (record.passed or record.attempts >= hook.max_attempts):
            continue
        if record is not None and record.next_attempt_at and now < record.next_attempt_at:
            continue
        attempt = (record.attempts if record else 0) + 1
        calls.append(
            Call(
                hook,
                at,
                attempt,
                payload(
                    hook,
                    spec=spec,
                    status=status,
                    owner=owner,
                    occasion=at,
                    attempt=attempt,
                    now=now,
                ),
            )
        )
    return calls


def analysis_calls(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    owner: Owner,
    at: datetime,
) -> list[Call]:
    """The `rollout` hooks, asked once at the analysis of time `at` (during the steps)."""
    if not is_current_canary(spec, status) or status.current_step is None:
        return []
    if status.phase != "Progressing":
        return []
    name = analysis_occasion(status, at)
    return [
        Call(
            hook,
            name,
            1,
            payload(hook, spec=spec, status=status, owner=owner, occasion=name, attempt=1, now=at),
        )
        for hook in spec.webhooks
        if hook.type == "rollout"
    ]


def next_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until the next attempt is due (0: now), None when none is waiting."""
    waits = []
    for hook in spec.webhooks:
        at = occasion(hook, spec=spec, status=status, now=now)
        if at is None:
            continue
        record = _current(status, hook, at)
        if record is None or record.next_attempt_at is None:
            if record is None or not (record.passed or record.attempts >= hook.max_attempts):
                waits.append(0.0)
        elif not record.passed and record.attempts < hook.max_attempts:
            waits.append(max(0.0, (record.next_attempt_at - now).total_seconds()))
    return min(waits) if waits else None


def record(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    results: list[Result],
    now: datetime,
) -> api.ModelDeploymentStatus:
    """status.webhooks with `results` counted: one record per hook of the spec, the hooks no
    longer in the spec forgotten."""
    hooks = {hook.name: hook for hook in spec.webhooks}
    records = {r.name: r for r in status.webhooks if r.name in hooks}
    for result in results:
        hook = hooks.get(result.name)
        if hook is None:
            continue
        before = _current(status, hook, result.occasion)
        if before is None and result.name in records:
            current = records[result.name]
            if current.occasion == result.occasion and current.spec_digest == digest(hook):
                before = current  # two results of one turn
        attempts = (before.attempts if before else 0) + 1
        retry = not result.ok and attempts < hook.max_attempts and hook.type != "rollout"
        records[result.name] = api.WebhookRecord(
            name=hook.name,
            type=hook.type,
            occasion=result.occasion,
            attempts=attempts,
            passed=result.ok,
            last_result=result.detail[:1024],
            last_attempt_at=result.at,
            next_attempt_at=result.at + timedelta(seconds=backoff(hook, attempts))
            if retry
            else None,
            spec_digest=digest(hook),
        )
    kept = [records[hook.name] for hook in spec.webhooks if hook.name in records]
    if kept == status.webhooks:
        return status
    return status.model_copy(update={"webhooks": kept})


def hold(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, point: Point
) -> Hold | None:
    """Why the gating hooks of `point` hold the rollout, or None when all said yes (or there
    are none)."""
    at = point_occasion(spec, status, point)
    weight = status.canary_weight
    for hook in spec.webhooks:
        if hook.type not in POINT_TYPES[point]:
            continue
        rec = _current(status, hook, at)
        if rec is not None and rec.passed:
            continue
        what = f"webhook {hook.name} ({hook.type})"
        if rec is None:
            return Hold(WAITING_FOR_WEBHOOK, f"weight held at {weight}%: waiting for {what}")
        if rec.attempts >= hook.max_attempts:
            return Hold(
                WEBHOOK_GAVE_UP,
                f"weight held at {weight}%: {what} did not say yes in {rec.attempts} attempts "
                f"(maxAttempts; last: {rec.last_result}); it is asked no more: edit the hook "
                "(any field, e.g. its metadata) to ask again, or abort the canary",
            )
        when = rec.next_attempt_at.strftime("%H:%M:%SZ") if rec.next_attempt_at else "now"
        return Hold(
            WAITING_FOR_WEBHOOK,
            f"weight held at {weight}%: waiting for {what}: attempt {rec.attempts} of "
            f"{hook.max_attempts} got {rec.last_result}; next attempt at {when}",
        )
    return None


def rollout_checks(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, at: datetime
) -> list[CheckResult]:
    """The `rollout` hooks asked at the analysis of time `at`, as checks of that analysis:
    one that did not answer 2xx is a Failed check (a hook not asked adds nothing)."""
    name = analysis_occasion(status, at)
    found = []
    for hook in spec.webhooks:
        if hook.type != "rollout":
            continue
        rec = _current(status, hook, name)
        if rec is None:
            continue
        verdict: api.Verdict = "Successful" if rec.passed else "Failed"
        message = f"webhook:{hook.name}: rollout webhook answered {rec.last_result}"
        found.append(
            CheckResult(name=f"webhook:{hook.name}", verdict=verdict, value=None, message=message)
        )
    return found


def payload(
    hook: api.WebhookSpec,
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    owner: Owner,
    occasion: str,
    attempt: int,
    now: datetime,
) -> dict[str, Any]:
    """The JSON body of one call (docs/operator.md, "Webhook payload"), versioned by
    PAYLOAD_API_VERSION: fields are only ever added within a version."""
    progressing = next((c for c in status.conditions if c.type == "Progressing"), None)
    last = status.last_analysis
    return {
        "apiVersion": PAYLOAD_API_VERSION,
        "type": hook.type,
        "webhook": hook.name,
        "occasion": occasion,
        "attempt": attempt,
        "name": owner.name,
        "namespace": owner.namespace,
        "phase": status.phase,
        "weight": status.canary_weight,
        "step": None if status.current_step is None else status.current_step + 1,
        "steps": len(step_weights(spec)) if spec.canary else 0,
        "canary": _model(status.canary_model),
        "stable": _model(status.stable_model),
        "metadata": dict(hook.metadata),
        "message": progressing.message if progressing else "",
        "analysis": None
        if last is None
        else {
            "time": _time(last.time),
            "verdict": last.verdict,
            "reasons": list(last.reasons),
            "checks": [
                {"name": c.name, "verdict": c.verdict, "value": c.value} for c in last.checks
            ],
        },
        "time": _time(now),
    }


def _model(model: api.ModelIdentity | None) -> dict[str, Any] | None:
    if model is None:
        return None
    return {"version": model.version, "uri": model.uri, "sha256": model.sha256}


def _time(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")
