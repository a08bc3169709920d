"""The operator's own Prometheus metrics: each resource's rollout, as its status says.

Gauges mirror the status written last (weight, phase, Stalled, held analyses); counters count
what a status change shows happened (an analysis taken, a promotion or rollback recorded in
history). They are read off the status, never kept as state: a restarted operator starts its
counters at 0 again, which `increase()` and `rate()` handle as a counter reset.

Series carry `namespace` and `model_deployment`; scrape them with `honor_labels` (the Helm
chart's ServiceMonitor does) so that the resource's namespace wins over the operator pod's.
"""

from __future__ import annotations

import collections
import contextlib
import functools
from collections.abc import Callable
from typing import Final, get_args

from canaryml_api import resource as api
from canaryml_api import telemetry as t
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server

PHASES: Final[tuple[str, ...]] = get_args(api.Phase)
VERDICTS: Final[tuple[str, ...]] = get_args(api.Verdict)
RESULTS: Final[tuple[str, ...]] = ("promoted", "rolledBack")
WEBHOOK_RESULTS: Final[tuple[str, ...]] = ("passed", "failed")
NOTIFICATION_RESULTS: Final[tuple[str, ...]] = ("sent", "dropped")
LABELS: Final = (t.NAMESPACE_LABEL, t.MODEL_DEPLOYMENT_LABEL)

REGISTRY = CollectorRegistry(auto_describe=True)
_gauge = functools.partial(Gauge, registry=REGISTRY)
_counter = functools.partial(Counter, registry=REGISTRY)
CANARY_WEIGHT = _gauge(
    t.OPERATOR_CANARY_WEIGHT,
    "Percent of traffic the canary gets, as the resource's status says",
    LABELS,
)
PHASE = _gauge(
    t.OPERATOR_PHASE,
    "1 for the resource's current phase, 0 for the others",
    [*LABELS, t.PHASE_LABEL],
)
STALLED = _gauge(
    t.OPERATOR_STALLED,
    "1 while the Stalled condition is True (invalid spec, or analyses held for long)",
    LABELS,
)
HELD_ANALYSES = _gauge(
    t.OPERATOR_HELD_ANALYSES,
    "Inconclusive or Error analyses in a row (the weight is held meanwhile)",
    LABELS,
)
ANALYSES = _counter(
    t.OPERATOR_ANALYSES, "Canary analyses by overall verdict", [*LABELS, t.VERDICT_LABEL]
)
ROLLOUTS = _counter(
    t.OPERATOR_ROLLOUTS,
    "Rollouts ended, by result: promoted or rolledBack",
    [*LABELS, t.RESULT_LABEL],
)
WEBHOOK_ATTEMPTS = _counter(
    t.OPERATOR_WEBHOOK_ATTEMPTS,
    "Lifecycle webhook attempts, by result: passed (2xx) or failed",
    [*LABELS, t.RESULT_LABEL],
)
NOTIFICATIONS = _counter(
    t.OPERATOR_NOTIFICATIONS,
    "Notifications of rollout events, by result: sent, or dropped by the rate limit",
    [*LABELS, t.RESULT_LABEL],
)


def observe_status(
    *,
    namespace: str,
    name: str,
    previous: api.ModelDeploymentStatus,
    status: api.ModelDeploymentStatus,
) -> None:
    """Record a status just written over `previous`."""
    labels = {t.NAMESPACE_LABEL: namespace, t.MODEL_DEPLOYMENT_LABEL: name}
    # Counters start at 0: Prometheus takes a new series' first sample as its baseline, so a
    # series born at 1 would hide the first rollback from increase() (and from the alert).
    for verdict in VERDICTS:
        ANALYSES.labels(**labels, **{t.VERDICT_LABEL: verdict})
    for result in RESULTS:
        ROLLOUTS.labels(**labels, **{t.RESULT_LABEL: result})
    for result in WEBHOOK_RESULTS:
        WEBHOOK_ATTEMPTS.labels(**labels, **{t.RESULT_LABEL: result})
    for result in NOTIFICATION_RESULTS:
        NOTIFICATIONS.labels(**labels, **{t.RESULT_LABEL: result})
    CANARY_WEIGHT.labels(**labels).set(status.canary_weight)
    for phase in PHASES:
        PHASE.labels(**labels, **{t.PHASE_LABEL: phase}).set(1 if status.phase == phase else 0)
    stalled = any(c.type == "Stalled" and c.status == "True" for c in status.conditions)
    STALLED.labels(**labels).set(1 if stalled else 0)
    HELD_ANALYSES.labels(**labels).set(status.held_analyses)
    last = status.last_analysis
    before = previous.last_analysis
    if last is not None and (before is None or before.time != last.time):
        ANALYSES.labels(**labels, **{t.VERDICT_LABEL: last.verdict}).inc()
    seen = {(entry.event, entry.version, entry.time) for entry in previous.history}
    for entry in status.history:
        if (entry.event, entry.version, entry.time) not in seen:
            ROLLOUTS.labels(**labels, **{t.RESULT_LABEL: entry.event}).inc()
    _observe_hooks(labels, previous=previous, status=status)


def _observe_hooks(
    labels: dict[str, str],
    *,
    previous: api.ModelDeploymentStatus,
    status: api.ModelDeploymentStatus,
) -> None:
    """Webhook attempts and notifications recorded since `previous`."""
    before = {(r.name, r.occasion, r.spec_digest): r.attempts for r in previous.webhooks}
    for record in status.webhooks:
        seen = before.get((record.name, record.occasion, record.spec_digest), 0)
        if record.attempts > seen and record.last_attempt_at is not None:
            # One new attempt a turn (a turn records one result per hook); its result is the
            # last one, any earlier new ones failed.
            new = record.attempts - seen
            result = "passed" if record.passed else "failed"
            WEBHOOK_ATTEMPTS.labels(**labels, **{t.RESULT_LABEL: result}).inc()
            if new > 1:
                WEBHOOK_ATTEMPTS.labels(**labels, **{t.RESULT_LABEL: "failed"}).inc(new - 1)
    told, was = status.notifications, previous.notifications
    if told is None:
        return
    # The times sent, as multisets: the new ones are added, the old ones only ever pruned.
    sent = sum(
        (collections.Counter(told.sent) - collections.Counter(was.sent if was else [])).values()
    )
    dropped = told.dropped - (was.dropped if was else 0)
    if sent:
        NOTIFICATIONS.labels(**labels, **{t.RESULT_LABEL: "sent"}).inc(sent)
    if dropped > 0:
        NOTIFICATIONS.labels(**labels, **{t.RESULT_LABEL: "dropped"}).inc(dropped)


def forget(*, namespace: str, name: str) -> None:
    """Drop a deleted resource's series."""
    labels = (namespace, name)
    for gauge in (CANARY_WEIGHT, STALLED, HELD_ANALYSES):
        _remove(gauge, labels)
    for phase in PHASES:
        _remove(PHASE, (*labels, phase))
    for verdict in VERDICTS:
        _remove(ANALYSES, (*labels, verdict))
    for result in RESULTS:
        _remove(ROLLOUTS, (*labels, result))
    for result in WEBHOOK_RESULTS:
        _remove(WEBHOOK_ATTEMPTS, (*labels, result))
    for result in NOTIFICATION_RESULTS:
        _remove(NOTIFICATIONS, (*labels, result))


def _remove(metric: Gauge | Counter, labels: tuple[str, ...]) -> None:
    with contextlib.suppress(KeyError):  # never observed
        metric.remove(*labels)


def serve(*, port: int, address: str = "0.0.0.0") -> Callable[[], None]:
    """Serve /metrics on a background thread (prometheus-client's own server); return the
    function that stops it."""
    server, thread = start_http_server(port, addr=address, registry=REGISTRY)

    def stop() -> None:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

    return stop
