"""The rollout core: from (spec, status, measurements, now) to the next status, and why.

Pure functions, no kopf, HTTP or Kubernetes client (an import-linter contract holds it). The
rollout loop (`loop.turn`, which the operator and the local demo both drive) gathers the inputs
and applies the Decision. Everything the next decision needs is in the returned status, so a
restarted operator resumes at the same step with the same failure count.

The rollout core writes the rollout state: the weight, step, models, history, last analysis
and counters, and the Progressing, RolledBack and (from analyses) Stalled conditions; the
reconciler adds what the children say and derives the phase (`reconcile.phase_of`).

The rollout of one canary (identified by its model's uri, version and sha256):

    waiting (weight 0) --canary available--> steps[0] --pass for stepInterval--> steps[1] ...
      ... last step passes --> Promoted (stable becomes the canary model; the canary keeps its
      weight until the new stable has rolled out, then weight 0, then the track is removed)
    any step: failureLimit Failed analyses in a row --> RolledBack (weight 0 at once, canary
      scaled to 0; the stable model keeps serving)

Analyses that are Inconclusive (too few requests, no data) or Error (metrics unreachable) hold
the weight; a streak of HELD_STREAK_LIMIT of them sets the Stalled condition, with the reason.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from canaryml_api import resource as api
from canaryml_api.routing import is_current_canary, plan_routing
from canaryml_api.tracks import Track

from canaryml_operator import measurements as m
from canaryml_operator.state import (
    DeploymentState,
    Event,
    TrackPlan,
    rollout_phase,
    set_condition,
)
from canaryml_operator.verdicts import build_record, judge

Command = Literal["promote", "abort", "rollback", "pause"]

# Annotations a person (or `canaryml promote|abort|rollback|pause`) sets on the resource.
COMMAND_ANNOTATIONS: Mapping[Command, str] = {
    "promote": f"{api.GROUP}/promote",
    "abort": f"{api.GROUP}/abort",
    "rollback": f"{api.GROUP}/rollback",
    "pause": f"{api.GROUP}/paused",  # kept while set to "true"; the others act once
}

HELD_STREAK_LIMIT = 5  # analyses in a row that neither pass nor fail before Stalled is set
# Seconds a canary keeps its pods after its weight went to 0, so that routers (which follow
# the status within about a second) stop sending to it before it goes: no dropped request.
DRAIN_SECONDS = 5.0
HISTORY_LIMIT = 20


def commands_from(annotations: Mapping[str, str] | None) -> frozenset[Command]:
    """The commands the resource's annotations ask for."""
    found: set[Command] = set()
    for command, key in COMMAND_ANNOTATIONS.items():
        value = (annotations or {}).get(key)
        if value is None:
            continue
        answer = value.strip().lower()
        if command == "pause":
            if answer in ("true", "1", "yes"):
                found.add(command)
        elif answer not in ("false", "0", "no"):  # "promote: false" asks for nothing
            found.add(command)
    return frozenset(found)


# ---------------------------------------------------------------------------------------------
# Decisions


Action = Literal[
    "none",  # nothing changed
    "start",  # a new canary: waiting for it to become available
    "stepUp",  # to the next step (or the first one, once the canary is available)
    "hold",  # analysis inconclusive or erroring: weight held
    "failed",  # one Failed analysis, below failureLimit
    "pass",  # a successful analysis, step interval not over yet
    "promote",  # the canary became the stable model
    "promoted",  # promotion finished: the new stable rolled out, canary weight 0
    "rollback",  # canary weight 0 after failed analyses, or aborted
    "rollbackStable",  # the stable model returned to the previous one (manual rollback)
    "paused",
]


@dataclass(frozen=True)
class Decision:
    status: api.ModelDeploymentStatus
    action: Action = "none"
    events: list[Event] = field(default_factory=list)
    consumed: frozenset[Command] = frozenset()  # one-shot commands to remove from annotations


def identity(model: api.ModelRef) -> api.ModelIdentity:
    return api.ModelIdentity.of(model)


def next_analysis_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until the next analysis is due (0: now), or None when no rollout is running."""
    if not in_rollout(spec=spec, status=status) or status.current_step is None:
        return None
    last = status.last_analysis
    interval = api.parse_duration(spec.analysis.interval)
    if last is None or last.weight != status.canary_weight:
        return 0.0
    return max(0.0, interval - (now - last.time).total_seconds())


def drain_ends_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until a rolled-back or promoted canary's drain is over (0: it is), or None
    when no canary is draining."""
    if not is_current_canary(spec, status):
        return None
    if status.phase not in ("RolledBack", "Promoted") or status.canary_weight != 0:
        return None
    if status.step_started_at is None:
        return None
    return max(0.0, DRAIN_SECONDS - (now - status.step_started_at).total_seconds())


def in_rollout(*, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus) -> bool:
    return is_current_canary(spec, status) and status.phase in ("Progressing", "Paused")


def _history(status: api.ModelDeploymentStatus, entry: api.HistoryEntry) -> list[api.HistoryEntry]:
    return [*status.history, entry][-HISTORY_LIMIT:]


def _entry(
    model: api.ModelRef | api.ModelIdentity,
    *,
    event: Literal["promoted", "rolledBack"],
    time: datetime,
    reason: str,
    replaced: api.ModelIdentity | None = None,
) -> api.HistoryEntry:
    return api.HistoryEntry(
        version=model.version,
        uri=model.uri,
        sha256=model.sha256,
        event=event,
        time=time,
        reason=reason,
        replaced=replaced,
    )


def previous_stable(status: api.ModelDeploymentStatus) -> api.ModelIdentity | None:
    """What `rollback` returns to: the model the current stable replaced when promoted."""
    current = status.stable_model
    for entry in reversed(status.history):
        if (
            entry.event == "promoted"
            and current is not None
            and (entry.uri, entry.version) == (current.uri, current.version)
        ):
            return entry.replaced
    return None


class _Builder:
    """Accumulates one decision: the status as it changes, the Events, the action."""

    def __init__(self, status: api.ModelDeploymentStatus, *, now: datetime, generation: int | None):
        self.status = status
        self.now = now
        self.generation = generation
        self.events: list[Event] = []
        self.action: Action = "none"
        self.consumed: set[Command] = set()

    def update(self, **fields: object) -> None:
        self.status = self.status.model_copy(update=fields)

    def condition(
        self, type: str, status: Literal["True", "False", "Unknown"], reason: str, message: str
    ) -> None:
        conditions = set_condition(
            self.status.conditions,
            type=type,
            status=status,
            reason=reason,
            message=message,
            generation=self.generation,
            now=self.now,
        )
        self.update(conditions=conditions)

    def event(self, type: Literal["Normal", "Warning"], reason: str, message: str) -> None:
        self.events.append(Event(type, reason, message))

    def decision(self) -> Decision:
        return Decision(self.status, self.action, self.events, frozenset(self.consumed))


def decide(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    measurements: m.Measurements | None,
    now: datetime,
    tracks: Mapping[Track, DeploymentState] | None = None,
    commands: Collection[Command] = frozenset(),
    generation: int | None = None,
) -> Decision:
    """The next rollout state of one ModelDeployment.

    `measurements` is None when no analysis was taken this time (a reconcile started by an
    event): then only what needs no metrics happens (a new rollout, the canary becoming
    available, a finished promotion, commands). `tracks` is what the live Deployments say;
    `commands` come from the resource's annotations (see `commands_from`).
    """
    tracks = tracks or {}
    b = _Builder(status, now=now, generation=generation)
    _follow_spec_model(b, spec)
    if "rollback" in commands:
        _rollback_stable(b, spec)
    canary = spec.canary
    if canary is None:
        _no_canary(b, commands)
        return b.decision()

    if not is_current_canary(spec, b.status):
        _start(b, spec)
    else:
        b.update(phase=rollout_phase(b.status))
    phase = b.status.phase
    if phase == "Promoted":
        _finish_promotion(b, tracks)
    if phase in ("Promoted", "RolledBack"):
        for command in ("promote", "abort"):
            if command in commands:
                b.consumed.add(command)
                b.event(
                    "Normal", "CommandIgnored", f"{command}: the rollout already ended ({phase})"
                )
        return b.decision()

    if "abort" in commands:
        b.consumed.add("abort")
        _roll_back(
            b,
            spec,
            reason="Aborted",
            message=f"aborted by the {COMMAND_ANNOTATIONS['abort']} annotation",
        )
        return b.decision()
    if "promote" in commands:
        b.consumed.add("promote")
        _promote(b, spec, reason=f"promoted by the {COMMAND_ANNOTATIONS['promote']} annotation")
        return b.decision()

    paused = spec.paused or "pause" in commands
    if paused != (b.status.phase == "Paused"):
        b.update(phase="Paused" if paused else "Progressing")
        if not paused and b.status.current_step is not None:
            # A resumed step earns its whole interval again: nothing was judged while paused.
            b.update(step_started_at=b.now)
        b.event("Normal", "Paused" if paused else "Resumed", _weight_text(b.status, paused))
        b.condition(
            "Progressing",
            "True",
            "Paused" if paused else "CanaryAnalysis",
            _weight_text(b.status, paused),
        )
        b.action = "paused" if paused else b.action
    if b.status.current_step is None:
        if paused:
            return b.decision()  # the canary gets no traffic until resumed
        _wait_for_canary(b, spec, tracks.get("canary", DeploymentState()))
        if b.status.current_step is None:
            return b.decision()
    if measurements is None:
        return b.decision()
    _analyse(b, spec, measurements, paused=paused)
    return b.decision()


def _weight_text(status: api.ModelDeploymentStatus, paused: bool) -> str:
    state = "paused" if paused else "resumed"
    return (
        f"rollout {state} at step {(status.current_step or 0) + 1}, weight {status.canary_weight}%"
    )


def _follow_spec_model(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    """A changed spec.model is the user's direct update of the stable model."""
    wanted = identity(spec.model)
    if b.status.spec_model == wanted:
        return
    before = b.status.stable_model
    b.update(spec_model=wanted, stable_model=wanted)
    if before is not None and before != wanted:
        b.event(
            "Normal",
            "StableUpdated",
            f"spec.model changed: the stable track now serves {wanted.version} "
            f"(was {before.version})",
        )


def _rollback_stable(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    b.consumed.add("rollback")
    target = previous_stable(b.status)
    current = b.status.stable_model
    if target is None or current is None:
        b.event(
            "Warning",
            "RollbackRefused",
            "rollback: status.history has no model the current stable replaced",
        )
        return
    if spec.canary is not None and in_rollout(spec=spec, status=b.status):
        _roll_back(b, spec, reason="Aborted", message="aborted by a rollback of the stable model")
    elif b.status.phase == "Promoted" and b.status.canary_weight:
        # A promotion still finishing: the canary's share ends now, with the stable's change.
        b.update(canary_weight=0, step_started_at=b.now)
        b.condition("Progressing", "False", "RolledBack", "promotion undone by a rollback")
    message = f"stable model rolled back from {current.version} to {target.version} by request"
    b.update(
        stable_model=target,
        history=_history(b.status, _entry(current, event="rolledBack", time=b.now, reason=message)),
    )
    b.condition("RolledBack", "True", "ManualRollback", message)
    b.event("Warning", "RolledBack", message)
    b.action = "rollbackStable"


def _no_canary(b: _Builder, commands: Collection[Command]) -> None:
    for command in ("promote", "abort"):
        if command in commands:
            b.consumed.add(command)
            b.event("Normal", "CommandIgnored", f"{command}: there is no canary in the spec")
    if b.status.canary_weight or b.status.current_step is not None:
        b.update(canary_weight=0, current_step=None, step_started_at=None)
    # Forgetting the canary makes the same one, added again, a new rollout from the start.
    b.update(canary_version=None, canary_model=None, failed_checks=0, held_analyses=0)
    if b.status.phase in ("Progressing", "Paused", "Promoted", "RolledBack", None):
        b.update(phase="Stable")
    b.condition("Progressing", "False", "NoCanary", "no canary in the spec")
    _clear_stalled(b)


def _start(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    assert spec.canary is not None
    canary = spec.canary
    b.update(
        canary_model=identity(canary.model),
        canary_version=canary.model.version,
        phase="Progressing",
        canary_weight=0,
        current_step=None,
        step_started_at=b.now,
        failed_checks=0,
        held_analyses=0,
        last_analysis=None,
    )
    steps = ", ".join(f"{weight}%" for weight in canary.steps)
    message = (
        f"canary {canary.model.version} rollout started "
        f"(steps {steps}, each for {canary.step_interval})"
    )
    b.condition("Progressing", "True", "WaitingForCanary", message + "; waiting for the canary")
    b.condition("RolledBack", "False", "NewRollout", message)
    _clear_stalled(b)
    b.event("Normal", "RolloutStarted", message)
    b.action = "start"


def _wait_for_canary(b: _Builder, spec: api.ModelDeploymentSpec, canary: DeploymentState) -> None:
    assert spec.canary is not None
    model = spec.canary.model
    version = model.version
    if not (
        canary.desired > 0
        and canary.serves(uri=model.uri, version=model.version, sha256=model.sha256)
    ):
        return
    first = spec.canary.steps[0]
    b.update(current_step=0, canary_weight=first, step_started_at=b.now)
    message = (
        f"canary {version} available: weight 0% -> {first}% (step 1 of {len(spec.canary.steps)})"
    )
    b.condition("Progressing", "True", "CanaryAnalysis", message)
    b.event("Normal", "StepUp", message)
    b.action = "stepUp"


def _analyse(
    b: _Builder, spec: api.ModelDeploymentSpec, measurements: m.Measurements, *, paused: bool
) -> None:
    assert spec.canary is not None
    canary, analysis = spec.canary, spec.analysis
    status = b.status
    results = judge(spec=spec, measurements=measurements)
    record = build_record(
        results=results,
        time=measurements.time,
        step=status.current_step,
        weight=status.canary_weight,
    )
    b.update(last_analysis=record)
    if paused:
        b.action = "paused"
        return
    verdict = record.verdict
    if verdict == "Failed":
        failed = status.failed_checks + 1
        # A failed step must earn its whole interval again.
        b.update(failed_checks=failed, held_analyses=0, step_started_at=b.now)
        _clear_stalled(b)
        failing = [r for r in results if r.verdict == "Failed"]
        detail = "; ".join(r.message for r in failing)
        if failed >= analysis.failure_limit:
            message = (
                f"canary {canary.model.version} rolled back at {status.canary_weight}%: {detail} "
                f"({failed} failed analyses in a row, failureLimit {analysis.failure_limit})"
            )
            _roll_back(b, spec, reason="AnalysisFailed", message=message)
        else:
            b.action = "failed"
        return
    if verdict in ("Inconclusive", "Error"):
        held = status.held_analyses + 1
        b.update(held_analyses=held)
        b.action = "hold"
        if held >= HELD_STREAK_LIMIT:
            reason = "MetricsUnavailable" if verdict == "Error" else "AnalysisInconclusive"
            message = (
                f"weight held at {status.canary_weight}% for {held} analyses in a row: "
                + "; ".join(record.reasons)
            )
            was = _stalled(b.status)
            b.condition("Stalled", "True", reason, message)
            if not was:
                b.event("Warning", reason, message)
        return
    b.update(failed_checks=0, held_analyses=0)
    _clear_stalled(b)
    started = status.step_started_at or b.now
    interval = api.parse_duration(canary.step_interval)
    if (b.now - started) < timedelta(seconds=interval):
        b.action = "pass"
        return
    step = status.current_step or 0
    summary = ", ".join(
        f"{r.name} {m.value_text(r.name, r.value)}" for r in results if r.value is not None
    )
    if step + 1 < len(canary.steps):
        weight = canary.steps[step + 1]
        message = (
            f"canary weight {status.canary_weight}% -> {weight}% (step {step + 2} of "
            f"{len(canary.steps)}): every check passed for {canary.step_interval} ({summary})"
        )
        b.update(current_step=step + 1, canary_weight=weight, step_started_at=b.now)
        b.condition("Progressing", "True", "CanaryAnalysis", message)
        b.event("Normal", "StepUp", message)
        b.action = "stepUp"
        return
    _promote(
        b,
        spec,
        reason=f"every step passed; last analysis: {summary}",
    )


def _stalled(status: api.ModelDeploymentStatus) -> bool:
    return any(c.type == "Stalled" and c.status == "True" for c in status.conditions)


def _clear_stalled(b: _Builder) -> None:
    current = next((c for c in b.status.conditions if c.type == "Stalled"), None)
    if current is not None and current.status == "True" and current.reason != "InvalidSpec":
        b.condition("Stalled", "False", "AsExpected", "")


def _promote(b: _Builder, spec: api.ModelDeploymentSpec, *, reason: str) -> None:
    assert spec.canary is not None
    model = spec.canary.model
    previous = b.status.stable_model
    message = f"canary {model.version} promoted to stable: {reason}"
    b.update(
        phase="Promoted",
        stable_model=identity(model),
        current_step=None,
        held_analyses=0,
        failed_checks=0,
        history=_history(
            b.status, _entry(model, event="promoted", time=b.now, reason=reason, replaced=previous)
        ),
    )
    b.condition(
        "Progressing",
        "True",
        "Promoting",
        message + f"; the canary keeps {b.status.canary_weight}% until the stable has rolled out",
    )
    _clear_stalled(b)
    b.event("Normal", "Promoted", message)
    b.action = "promote"


def _finish_promotion(b: _Builder, tracks: Mapping[Track, DeploymentState]) -> None:
    """Once the stable Deployment serves the promoted model, the canary's traffic goes to it."""
    stable = tracks.get("stable", DeploymentState())
    model = b.status.stable_model
    progressing = next((c for c in b.status.conditions if c.type == "Progressing"), None)
    if model is None or progressing is None or progressing.reason != "Promoting":
        return
    if not stable.serves(uri=model.uri, version=model.version, sha256=model.sha256):
        return
    message = (
        f"stable model {model.version} rolled out: canary weight {b.status.canary_weight}% -> 0%"
    )
    if b.status.canary_weight:
        b.update(canary_weight=0, step_started_at=b.now)
    b.condition("Progressing", "False", "Promoted", message)
    b.event("Normal", "PromotionComplete", message)
    b.action = "promoted"


def _roll_back(b: _Builder, spec: api.ModelDeploymentSpec, *, reason: str, message: str) -> None:
    assert spec.canary is not None
    model = spec.canary.model
    b.update(
        phase="RolledBack",
        canary_weight=0,
        current_step=None,
        step_started_at=b.now,
        held_analyses=0,
        history=_history(b.status, _entry(model, event="rolledBack", time=b.now, reason=message)),
    )
    b.condition("RolledBack", "True", reason, message)
    b.condition("Progressing", "False", "RolledBack", message)
    _clear_stalled(b)
    b.event("Warning", "RolledBack", message)
    b.action = "rollback"


# ---------------------------------------------------------------------------------------------
# What the children need to know of the rollout


def plan_tracks(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> TrackPlan:
    """The stable model the stable track serves, and whether and how the canary runs; the
    canary's weight is the routing plan's (`plan_routing`: only while the status is about the
    spec's canary, 0 once it rolled back).

    After a rollback or a finished promotion the canary keeps its pods for DRAIN_SECONDS after
    its weight went to 0, then it is scaled to 0 (rolled back: kept for inspection) or removed
    (promoted: the stable track serves it now).
    """
    stable = status.stable_model.as_ref() if status.stable_model else spec.model
    canary = spec.canary
    weight = plan_routing(spec, status).canary_weight
    if canary is None:
        return TrackPlan(stable, None, weight)
    current = is_current_canary(spec, status)
    drained = (
        status.canary_weight == 0
        and status.step_started_at is not None
        and (now - status.step_started_at).total_seconds() >= DRAIN_SECONDS
    )
    if current and status.phase == "RolledBack":
        return TrackPlan(stable, 0 if drained else canary.replicas, weight)
    if current and status.phase == "Promoted" and drained:
        return TrackPlan(stable, None, weight)
    return TrackPlan(stable, canary.replicas, weight)
