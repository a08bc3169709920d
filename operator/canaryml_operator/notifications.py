"""Notifications of rollout events (spec.notifications, else the operator's default): which
events one turn of the rollout makes, the messages they give, and the rate limit. Pure: the
operator's `delivery` sends the messages, after the status that records them was written.

Events: `promoted` and `rolledBack` (the Events Promoted and RolledBack: a canary's or a manual
rollback of the stable), `stepAdvanced` (StepUp), `held` (the weight became held: an analysis
inconclusive or erroring, a gating webhook waiting; told when the hold begins, not at each
analysis it lasts), `failed` (a failed analysis below failureLimit; the one that rolls back is
told as `rolledBack`).

Rate limit: at most `limit` messages per resource per `window` seconds; status.notifications
(written here only) keeps the times of those sent within the window and counts the dropped.
Delivery is at most once: a message that cannot be delivered is logged, never retried, and
never holds a rollout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from canaryml_api import resource as api

from canaryml_operator import experiments, hooks, rollout
from canaryml_operator.state import Event, Owner

PAYLOAD_API_VERSION: Final = "canaryml.dev/notification/v1"
DEFAULT_LIMIT: Final = 10
DEFAULT_WINDOW_SECONDS: Final = 600.0
KEPT_TIMES: Final = 100  # status.notifications.sent holds at most this many
HELD_REASONS: Final = (*rollout.HELD_REASONS, *hooks.HOLD_REASONS)
_EVENT_REASONS: Final[dict[str, api.NotificationEvent]] = {
    "Promoted": "promoted",
    "RolledBack": "rolledBack",
    "StepUp": "stepAdvanced",
    experiments.DECIDED_REASON: "experimentDecided",
}
_TITLES: Final[dict[str, str]] = {
    "promoted": "promoted",
    "rolledBack": "rolled back",
    "stepAdvanced": "step advanced",
    "held": "held",
    "failed": "analysis failed",
    "experimentDecided": "A/B experiment decided",
}


@dataclass(frozen=True)
class Notice:
    event: api.NotificationEvent
    message: str


@dataclass(frozen=True)
class Message:
    """One POST to make: where (`target`), and the body in its format."""

    target: api.NotificationSpec
    event: api.NotificationEvent
    body: dict[str, Any]


def _progressing(status: api.ModelDeploymentStatus) -> api.Condition | None:
    return next((c for c in status.conditions if c.type == "Progressing"), None)


def notices(
    *,
    previous: api.ModelDeploymentStatus,
    status: api.ModelDeploymentStatus,
    events: Sequence[Event],
) -> list[Notice]:
    """The notification events of one turn, from its Events and the status before and after."""
    found = [
        Notice(_EVENT_REASONS[e.reason], e.message) for e in events if e.reason in _EVENT_REASONS
    ]
    if status.failed_checks > previous.failed_checks and status.phase != "RolledBack":
        reasons = status.last_analysis.reasons if status.last_analysis else []
        found.append(Notice("failed", "; ".join(reasons) or "an analysis failed"))
    now, before = _progressing(status), _progressing(previous)
    if (
        now is not None
        and now.status == "True"
        and now.reason in HELD_REASONS
        and (before is None or before.reason not in HELD_REASONS)
    ):
        found.append(Notice("held", now.message))
    return found


def plan(
    *,
    targets: Sequence[api.NotificationSpec],
    owner: Owner,
    previous: api.ModelDeploymentStatus,
    status: api.ModelDeploymentStatus,
    events: Sequence[Event],
    now: datetime,
    limit: int = DEFAULT_LIMIT,
    window: float = DEFAULT_WINDOW_SECONDS,
) -> tuple[api.ModelDeploymentStatus, list[Message]]:
    """The messages to send for this turn, within the rate limit, and the status recording
    them (unchanged when there is nothing to send or drop)."""
    if not targets:
        return status, []
    found = notices(previous=previous, status=status, events=events)
    if not found:
        return status, []
    kept = status.notifications or api.NotificationRecord()
    since = now - timedelta(seconds=window)
    sent = [at for at in kept.sent if at > since]
    dropped = kept.dropped
    messages = []
    for notice in found:
        for target in targets:
            if notice.event not in target.events:
                continue
            if len(sent) >= limit:
                dropped += 1
                continue
            sent.append(now)
            messages.append(
                Message(
                    target, notice.event, body(target, notice, owner=owner, status=status, now=now)
                )
            )
    record = api.NotificationRecord(sent=sent[-KEPT_TIMES:], dropped=dropped)
    if record == kept:
        return status, messages
    return status.model_copy(update={"notifications": record}), messages


def body(
    target: api.NotificationSpec,
    notice: Notice,
    *,
    owner: Owner,
    status: api.ModelDeploymentStatus,
    now: datetime,
) -> dict[str, Any]:
    """The JSON body: canaryml's own (versioned) or Slack's incoming-webhook format."""
    title = f"{owner.namespace}/{owner.name}: {_TITLES[notice.event]}"
    if target.format == "slack":
        return {
            "text": f"canaryml {title}: {notice.message}",
            "blocks": [
                {"type": "header", "text": {"type": "plain_text", "text": f"canaryml {title}"}},
                {"type": "section", "text": {"type": "mrkdwn", "text": notice.message}},
            ],
        }
    return {
        "apiVersion": PAYLOAD_API_VERSION,
        "event": notice.event,
        "name": owner.name,
        "namespace": owner.namespace,
        "message": notice.message,
        "phase": status.phase,
        "weight": status.canary_weight,
        "step": None if status.current_step is None else status.current_step + 1,
        "canaryVersion": status.canary_version,
        "stableVersion": status.stable_model.version if status.stable_model else None,
        "time": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
