"""The rollout core: from (spec, status, measurements, now) to the next status, and why.

Pure functions, no kopf, HTTP or Kubernetes client (an import-linter contract holds it). The
rollout loop (`loop.turn`, which the operator and the local demo both drive) gathers the inputs
and applies the Decision. Everything the next decision needs is in the returned status, so a
restarted operator resumes at the same step with the same failure count.

The rollout core writes the rollout state: the weight, step, models, history, last analysis
and counters, and the Progressing, RolledBack, CanaryAvailable and (from analyses) Stalled
conditions; the reconciler adds what the children say and derives the phase
(`reconcile.phase_of`).

The rollout of one canary (identified by its model's uri, version and sha256):

    waiting (weight 0) --canary available--> steps[0] --pass for stepInterval--> steps[1] ...
      (with analysis.offlineGate, "available" is followed by the gate's analyses at weight 0:
      the canary's held-out figure against stable's; worse than maxDrop allows: RolledBack
      before any traffic; not known yet: held; not comparable: held, Stalled at once)
      ... last step passes --> Promoted (stable becomes the canary model; the canary keeps its
      weight until the new stable has rolled out, then weight 0, then the track is removed;
      with spec.rollbackWindow the stable keeps the replaced model for the window while the
      canary, grown to full size, takes 100%: see "The rollback window" below)
      (with spec.canary.approval.required, the last step passing holds instead: condition
      Approved=False AwaitingApproval, analyses going on, until the promote command)
      (with spec.canary.blueGreen, one step at 0%: the preview, analysed for analysisSteps x
      analysis.interval, then promoted and switched to 100% at once: see "Blue-green" below)
    any step: failureLimit Failed analyses in a row --> RolledBack (weight 0 at once, canary
      scaled to 0; the stable model keeps serving)
    (with spec.canary.experiment, an A/B experiment: one step at the experiment's fixed weight,
      never left by itself: every analysis updates status.experiment (`experiments`), passing
      ones hold, failing ones roll back as above, and only the promote command promotes)

Analyses that are Inconclusive (too few requests, no data) or Error (metrics unreachable) hold
the weight, with the reason in Progressing. Only a real stall sets Stalled: HELD_STREAK_LIMIT
Error analyses in a row (the metrics cannot be read: a person must act), or Inconclusive ones for
longer than spec.progressDeadline (a warming drift window is not a stall; no data for 10 minutes
is).

A canary that is not available (pods not ready, or canary.replicas 0) for spec.progressDeadline,
while waiting for it or during the rollout, is rolled back (ProgressDeadlineExceeded). A gap
between analyses longer than `analysis_gap_limit` (the operator was down) restarts the step's
clock: time nobody judged is not time the checks passed.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from types import MappingProxyType
from typing import Literal

from canaryml_api import resource as api
from canaryml_api.routing import is_current_canary, plan_routing
from canaryml_api.tracks import Track

from canaryml_operator import experiments, hooks, offline
from canaryml_operator import measurements as m
from canaryml_operator.state import (
    APPROVED,
    AWAITING_APPROVAL,
    ROLLBACK_WINDOW,
    SCALING_UP_CANARY,
    DeploymentState,
    Event,
    TrackPlan,
    awaiting_approval,
    blue_green,
    keeps_previous_stable,
    rollout_phase,
    set_condition,
    step_seconds,
    step_weights,
)
from canaryml_operator.verdicts import build_record, judge

Command = Literal["promote", "abort", "rollback", "pause"]
OneShot = Literal["promote", "abort", "rollback"]

# Annotations a person (or `canaryml promote|abort|rollback|pause`) sets on the resource.
# `paused` is a level, kept while "true". The others name their target: the canary version to
# promote or abort, the stable version to roll back from, optionally followed by "@" and
# anything new, to give the same command for the same version again. Each value acts once:
# it is recorded in status.handledCommands and the same value again (a GitOps tool applying
# the annotation again, or one left in Git) does nothing. The annotations are never removed:
# removing them would fight the GitOps tool that put them there.
COMMAND_ANNOTATIONS: Mapping[Command, str] = {
    "promote": f"{api.GROUP}/promote",
    "abort": f"{api.GROUP}/abort",
    "rollback": f"{api.GROUP}/rollback",
    "pause": f"{api.GROUP}/paused",
}
COMMAND_FORM = '"<version>", or "<version>@<anything new>" to repeat a command'
NO_COMMANDS: Mapping[Command, str] = MappingProxyType({})
_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")  # a model's version (api.ModelRef)
# A longer value names no version (63 characters at most) and is recorded by its digest: an
# annotation may hold 256 KiB, the status should not.
COMMAND_VALUE_MAX = 128

HELD_STREAK_LIMIT = 5  # Error analyses in a row (metrics unreadable) before Stalled is set
# A gap between analyses longer than this many analysis intervals restarts the step clock.
# Three: one or two analyses lost to a slow Prometheus answer or a write conflict are noise,
# more is an outage (the operator down, the API server unreachable).
ANALYSIS_GAP_INTERVALS = 3
CANARY_AVAILABLE = "CanaryAvailable"  # condition: the canary's pods are all available, since when
# Seconds a canary keeps its pods after its weight went to 0, so that routers (which follow
# the status within about a second) stop sending to it before it goes: no dropped request.
DRAIN_SECONDS = 5.0
HISTORY_LIMIT = 20


def commands_from(annotations: Mapping[str, str] | None) -> dict[Command, str]:
    """The commands the resource's annotations ask for, each with its value (stripped;
    "true" for pause)."""
    found: dict[Command, str] = {}
    for command, key in COMMAND_ANNOTATIONS.items():
        value = (annotations or {}).get(key)
        if value is None:
            continue
        answer = value.strip()
        if command == "pause":
            if answer.lower() in ("true", "1", "yes"):
                found[command] = "true"
        elif answer.lower() not in ("false", "0", "no"):  # "promote: false" asks for nothing
            found[command] = answer
    return found


def command_target(value: str) -> str | None:
    """The version a one-shot command's value names; None when it names none (the earlier
    form: "true", or the time `canaryml promote` wrote)."""
    target = value.split("@", 1)[0].strip()
    if len(value) > COMMAND_VALUE_MAX or target.lower() in ("true", "yes"):
        return None
    return target if _VERSION.match(target) else None


def _shown(value: str) -> str:
    return value if len(value) <= COMMAND_VALUE_MAX else value[:40] + "..."


def _recorded(value: str) -> str:
    """How a value is kept in status.handledCommands."""
    if len(value) <= COMMAND_VALUE_MAX:
        return value
    return "sha256:" + hashlib.sha256(value.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Decisions


Action = Literal[
    "none",  # nothing changed
    "start",  # a new canary: waiting for it to become available
    "stepUp",  # to the next step (or the first one, once the canary is available)
    "hold",  # analysis inconclusive or erroring: weight held
    "failed",  # one Failed analysis, below failureLimit
    "pass",  # a successful analysis, step interval not over yet
    "awaitApproval",  # every step passed; the promotion waits for approval (spec.canary.approval)
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


def identity(model: api.ModelRef) -> api.ModelIdentity:
    return api.ModelIdentity.of(model)


def next_analysis_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until the next analysis is due (0: now), or None when no rollout is running
    (or it waits for the canary's pods, with no offline gate to judge meanwhile)."""
    if not in_rollout(spec=spec, status=status):
        return None
    if status.current_step is None and not awaits_offline_gate(spec=spec, status=status):
        return None
    last = status.last_analysis
    interval = api.parse_duration(spec.analysis.interval)
    if last is None or last.weight != status.canary_weight:
        return 0.0
    return max(0.0, interval - (now - last.time).total_seconds())


def awaits_offline_gate(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus
) -> bool:
    """Whether the canary's pods are available and it waits, at weight 0, for the offline gate
    (analysis.offlineGate): its analyses, every analysis.interval, read the held-out figures."""
    if spec.analysis.offline_gate is None or status.current_step is not None:
        return False
    if not is_current_canary(spec, status) or status.phase != "Progressing":
        return False
    available = next((c for c in status.conditions if c.type == CANARY_AVAILABLE), None)
    return available is not None and available.status == "True"


def drain_ends_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until a rolled-back or promoted canary's drain is over (0: it is), or None
    when no canary is draining."""
    if not is_current_canary(spec, status):
        return None
    if status.phase not in ("RolledBack", "Promoted") or status.canary_weight != 0:
        return None
    if keeps_previous_stable(status):
        return None  # a blue-green preview growing before its switch: nothing drains
    if status.step_started_at is None:
        return None
    return max(0.0, DRAIN_SECONDS - (now - status.step_started_at).total_seconds())


def progress_deadline_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until the progress deadline of a canary whose pods are not available (0: it
    has passed), or None when they are, or no rollout runs (none runs while paused)."""
    if not is_current_canary(spec, status) or status.phase != "Progressing":
        return None
    found = next((c for c in status.conditions if c.type == CANARY_AVAILABLE), None)
    if found is None or found.status == "True":
        return None
    waited = (now - found.last_transition_time).total_seconds()
    return max(0.0, api.parse_duration(spec.progress_deadline) - waited)


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

    def __init__(
        self,
        status: api.ModelDeploymentStatus,
        *,
        now: datetime,
        generation: int | None,
        commands: Mapping[Command, str] = NO_COMMANDS,
    ):
        self.before = status
        self.status = status
        self.now = now
        self.generation = generation
        self.commands = commands
        self.events: list[Event] = []
        self.action: Action = "none"

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
        _left_over_commands(self)
        return Decision(self.status, self.action, self.events)


def decide(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    measurements: m.Measurements | None,
    now: datetime,
    tracks: Mapping[Track, DeploymentState] | None = None,
    commands: Mapping[Command, str] = NO_COMMANDS,
    generation: int | None = None,
) -> Decision:
    """The next rollout state of one ModelDeployment.

    `measurements` is None when no analysis was taken this time (a reconcile started by an
    event): then only what needs no metrics happens (a new rollout, the canary becoming
    available, a finished promotion, commands). `tracks` is what the live Deployments say;
    `commands` come from the resource's annotations (see `commands_from`).
    """
    tracks = tracks or {}
    b = _Builder(status, now=now, generation=generation, commands=commands)
    _follow_spec_model(b, spec)
    _rollback_command(b, spec)
    canary = spec.canary
    if canary is None:
        _no_canary(b)
        return b.decision()

    if not is_current_canary(spec, b.status):
        _start(b, spec)
    else:
        b.update(phase=rollout_phase(b.status))
    phase = b.status.phase
    if phase == "Promoted":
        _rollback_window_turn(b, spec, tracks)
        _finish_promotion(b, tracks)
    ended = phase in ("Promoted", "RolledBack")
    if _canary_commands(b, spec, tracks, ended=ended) or ended:
        return b.decision()

    paused = spec.paused or "pause" in commands
    if paused != (b.status.phase == "Paused"):
        b.update(phase="Paused" if paused else "Progressing")
        if not paused and b.status.current_step is not None:
            # A resumed step earns its whole interval again: nothing was judged while paused.
            b.update(step_started_at=b.now)
        if not paused:
            _forget_canary_availability(b)  # no progress deadline runs while paused
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
        _wait_for_canary(b, spec, tracks.get("canary", DeploymentState()), measurements)
        if "canary" in tracks:
            _watch_canary(b, spec, tracks["canary"])
        if b.status.current_step is None or spec.analysis.offline_gate is not None:
            # The offline gate's measurements, taken before any traffic, judge no live check:
            # the first step's analysis comes at once, on its own traffic.
            return b.decision()
    elif not paused and "canary" in tracks and _watch_canary(b, spec, tracks["canary"]):
        return b.decision()  # rolled back: its pods stayed unavailable past the deadline
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


# ---------------------------------------------------------------------------------------------
# Commands


def _fresh(b: _Builder, command: OneShot) -> str | None:
    """The command's value when the annotations ask for it with a value not handled yet."""
    value = b.commands.get(command)
    recorded = b.status.handled_commands.get(COMMAND_ANNOTATIONS[command])
    if value is None or recorded == _recorded(value):
        return None
    return value


def _handled(b: _Builder, command: OneShot, value: str) -> None:
    key = COMMAND_ANNOTATIONS[command]
    b.update(handled_commands={**b.status.handled_commands, key: _recorded(value)})


def _not_applied(b: _Builder, command: OneShot, value: str, *, why: str, example: str) -> None:
    """A command that does not apply: recorded (so said once) and explained."""
    _handled(b, command, value)
    key = COMMAND_ANNOTATIONS[command]
    if command_target(value) is None:
        b.event(
            "Warning",
            "CommandRefused",
            f'{key}: "{_shown(value)}" names no version. A command names its target, so that '
            f'a replayed one does nothing: set {key}: "{example}" ({COMMAND_FORM})',
        )
    else:
        b.event("Normal", "CommandIgnored", f'{key}: "{value}": {why}')


def _rollback_command(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    """`rollback: "<stable version>"` returns that stable to the one it replaced, only while
    it is the stable: replayed, it cannot walk further back through the history."""
    value = _fresh(b, "rollback")
    if value is None:
        return
    current = b.status.stable_model
    stable = current.version if current is not None else "-"
    if command_target(value) != stable:
        why = f"it rolls back {command_target(value)}, but the stable is {stable}: nothing done"
        _not_applied(b, "rollback", value, why=why, example=stable)
        return
    _handled(b, "rollback", value)
    _rollback_stable(b, spec)


def _canary_commands(
    b: _Builder,
    spec: api.ModelDeploymentSpec,
    tracks: Mapping[Track, DeploymentState],
    *,
    ended: bool,
) -> bool:
    """`abort` and `promote` act only on the canary they name, abort first; a promote waits
    until the canary's pods are available. True when one acted."""
    assert spec.canary is not None
    version = spec.canary.model.version
    for command in ("abort", "promote"):
        value = _fresh(b, command)
        if value is None:
            continue
        target = command_target(value)
        if target != version:
            why = f"it names canary {target}, but the canary is {version}: nothing done"
            _not_applied(b, command, value, why=why, example=version)
        elif ended:
            why = f"the rollout of canary {version} already ended ({b.status.phase})"
            _not_applied(b, command, value, why=why, example=version)
    if ended:
        return False
    value = _fresh(b, "abort")
    if value is not None:
        _handled(b, "abort", value)
        message = f'aborted by {COMMAND_ANNOTATIONS["abort"]}: "{value}"'
        _roll_back(b, spec, reason="Aborted", message=message)
        return True
    value = _fresh(b, "promote")
    if value is not None and _canary_ready(b, spec, tracks):
        _handled(b, "promote", value)
        _promote(b, spec, reason=f'promoted by {COMMAND_ANNOTATIONS["promote"]}: "{value}"')
        return True
    return False  # a promote of a canary not available yet waits, unrecorded


def _canary_ready(
    b: _Builder, spec: api.ModelDeploymentSpec, tracks: Mapping[Track, DeploymentState]
) -> bool:
    """Whether the rollout saw the canary available (it is at a step) and its pods are all
    available now: a promote never makes a model stable before its pods served."""
    assert spec.canary is not None
    model = spec.canary.model
    live = tracks.get("canary", DeploymentState())
    return (
        b.status.current_step is not None
        and live.desired > 0
        and live.serves(uri=model.uri, version=model.version, sha256=model.sha256)
    )


def _left_over_commands(b: _Builder) -> None:
    """A command handled before and still in the annotations (left in Git) is told once, when
    what it was about changes: it does nothing for the new canary, or the new stable."""
    before, after = b.before, b.status
    new_canary = after.canary_model is not None and after.canary_model != before.canary_model
    new_stable = after.stable_model is not None and after.stable_model != before.stable_model
    changes: list[tuple[OneShot, str | None]] = [
        ("promote", after.canary_version if new_canary else None),
        ("abort", after.canary_version if new_canary else None),
        ("rollback", after.stable_model.version if new_stable and after.stable_model else None),
    ]
    for command, now_about in changes:
        key = COMMAND_ANNOTATIONS[command]
        value = b.commands.get(command)
        if (
            now_about is None
            or value is None
            or before.handled_commands.get(key) != _recorded(value)
        ):
            continue
        what = "canary" if command != "rollback" else "stable"
        b.event(
            "Normal",
            "CommandAlreadyHandled",
            f'{key}: "{_shown(value)}" was handled before and does nothing for the {what} '
            f"{now_about} (each value acts once: {COMMAND_FORM})",
        )


def _rollback_stable(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    target = previous_stable(b.status)
    current = b.status.stable_model
    if target is None or current is None:
        b.event(
            "Warning",
            "RollbackRefused",
            "rollback: status.history has no model the current stable replaced",
        )
        return
    instant = keeps_previous_stable(b.status)  # the previous stable still has its pods
    if spec.canary is not None and in_rollout(spec=spec, status=b.status):
        _roll_back(b, spec, reason="Aborted", message="aborted by a rollback of the stable model")
    elif b.status.phase == "Promoted" and (b.status.canary_weight or instant):
        # A promotion still finishing (or a blue-green preview growing before its switch, at
        # 0%): the canary's share ends now, with the stable's change.
        b.update(canary_weight=0, step_started_at=b.now, rollback_window_ends_at=None)
        b.condition("Progressing", "False", "RolledBack", "promotion undone by a rollback")
    message = f"stable model rolled back from {current.version} to {target.version} by request"
    if instant:
        message += (
            " within the rollback window: all traffic back on the previous stable's pods, "
            "which kept running (no pod rollout)"
        )
    b.update(
        stable_model=target,
        history=_history(b.status, _entry(current, event="rolledBack", time=b.now, reason=message)),
    )
    b.condition("RolledBack", "True", "ManualRollback", message)
    b.event("Warning", "RolledBack", message)
    b.action = "rollbackStable"


def _no_canary(b: _Builder) -> None:
    for command in ("promote", "abort"):
        value = _fresh(b, command)
        if value is not None:
            why = "there is no canary in the spec"
            _not_applied(b, command, value, why=why, example="<canary version>")
    if b.status.canary_weight or b.status.current_step is not None:
        b.update(canary_weight=0, current_step=None, step_started_at=None)
    # Forgetting the canary makes the same one, added again, a new rollout from the start.
    b.update(canary_version=None, canary_model=None, failed_checks=0, held_analyses=0)
    _forget_canary_availability(b)
    b.update(conditions=[c for c in b.status.conditions if c.type != APPROVED])
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
        experiment=None,
    )
    steps = ", ".join(f"{weight}%" for weight in canary.steps)
    message = (
        f"canary {canary.model.version} rollout started "
        f"(steps {steps}, each for {canary.step_interval})"
    )
    if blue_green(spec):
        message = _blue_green_started(spec)
    b.condition("Progressing", "True", "WaitingForCanary", message + "; waiting for the canary")
    b.condition("RolledBack", "False", "NewRollout", message)
    _clear_stalled(b)
    _forget_canary_availability(b)  # the progress deadline runs from this rollout's start
    b.update(conditions=[c for c in b.status.conditions if c.type != APPROVED])
    b.event("Normal", "RolloutStarted", message)
    b.action = "start"


def _wait_for_canary(
    b: _Builder,
    spec: api.ModelDeploymentSpec,
    canary: DeploymentState,
    measurements: m.Measurements | None,
) -> None:
    """The first step, once the canary's pods are available (and, with analysis.offlineGate,
    once the gate lets it in)."""
    assert spec.canary is not None
    model = spec.canary.model
    version = model.version
    if not (
        canary.desired > 0
        and canary.serves(uri=model.uri, version=model.version, sha256=model.sha256)
    ):
        return
    if _webhook_hold(b, spec, "start"):
        return  # confirm-rollout, pre-rollout: no traffic before they said yes
    gate = ""
    if spec.analysis.offline_gate is not None:
        passed = _offline_gate(b, spec, measurements)
        if passed is None:
            return
        gate = f"; offline gate passed: {passed}"
    first = step_weights(spec)[0]
    b.update(current_step=0, canary_weight=first, step_started_at=b.now, held_analyses=0)
    _clear_stalled(b)  # a gate that could not judge, then relaxed or removed
    message = (
        f"canary {version} available: weight 0% -> {first}% (step 1 of {len(spec.canary.steps)})"
        + gate
    )
    if blue_green(spec):
        message = _preview_message(spec) + gate
    if spec.canary.experiment is not None:
        b.update(experiment=experiments.start(spec, b.now))
        message = _experiment_started(spec) + gate
    b.condition("Progressing", "True", "CanaryAnalysis", message)
    b.event("Normal", "StepUp", message)
    b.action = "stepUp"


def _webhook_hold(b: _Builder, spec: api.ModelDeploymentSpec, point: hooks.Point) -> bool:
    """Whether the gating webhooks of `point` hold the rollout (`hooks.hold`): Progressing
    says which and why. One that gave up is a real stall (a person must act): Stalled, and a
    Warning, once."""
    held = hooks.hold(spec=spec, status=b.status, point=point)
    if held is None:
        return False
    before = next((c for c in b.before.conditions if c.type == "Progressing"), None)
    b.condition("Progressing", "True", held.reason, held.message)
    stalled = next((c for c in b.before.conditions if c.type == "Stalled"), None)
    gave_up_before = (
        stalled is not None and stalled.status == "True" and stalled.reason == hooks.WEBHOOK_GAVE_UP
    )
    if held.reason == hooks.WEBHOOK_GAVE_UP:
        if gave_up_before and stalled is not None and stalled.message == held.message:
            # As it was: an analysis that cleared it on its way here changes nothing.
            kept = [stalled if c.type == "Stalled" else c for c in b.status.conditions]
            b.update(conditions=kept)
        else:
            b.condition("Stalled", "True", held.reason, held.message)
        if before is None or before.reason != held.reason:
            b.event("Warning", hooks.WEBHOOK_GAVE_UP, held.message)
    elif gave_up_before:
        _clear_stalled(b)  # the hook was edited: asked again
    b.action = "hold"
    return True


WAITING_FOR_OFFLINE_GATE = "WaitingForOfflineGate"  # Progressing: available, not judged yet
OFFLINE_GATE_BLOCKED = "OfflineGateBlocked"  # Progressing, Stalled, Event: cannot be judged
OFFLINE_GATE_FAILED = "OfflineGateFailed"  # RolledBack: worse offline than maxDrop allows


def _offline_gate(
    b: _Builder, spec: api.ModelDeploymentSpec, measurements: m.Measurements | None
) -> str | None:
    """The offline gate on the available canary, before any traffic (`offline.judge_gate`): what
    it passed on, or None when it holds the canary at weight 0 or refuses it (rolled back).

    Its analysis is recorded as status.lastAnalysis (weight 0, no step, the one check
    offlineVsStable and the figures): Events, conditions and the operator's analyses counter
    read it like any other. Without measurements (a reconcile no analysis came with) it only
    says what it waits for."""
    assert spec.canary is not None and spec.analysis.offline_gate is not None
    version = spec.canary.model.version
    if measurements is None:
        progressing = next((c for c in b.status.conditions if c.type == "Progressing"), None)
        # The gate's own analyses said more: keep what they said until the next one.
        if progressing is None or progressing.reason not in (*HELD_REASONS, OFFLINE_GATE_BLOCKED):
            metric = spec.analysis.offline_gate.metric
            b.condition(
                "Progressing",
                "True",
                WAITING_FOR_OFFLINE_GATE,
                f"canary {version} available; weight 0% until analysis.offlineGate has compared "
                f"its held-out {metric} with stable's (at the next analysis)",
            )
        return None
    result = offline.judge_gate(spec=spec, status=b.status, measurements=measurements)
    record = build_record(
        results=[result.check], time=measurements.time, step=None, weight=0
    ).model_copy(update={"offline": result.figures})
    b.update(last_analysis=record)
    if result.outcome == "pass":
        b.update(failed_checks=0, held_analyses=0)
        _clear_stalled(b)
        return result.check.message.removeprefix(f"{result.check.name}: ")
    if result.outcome == "fail":
        b.update(failed_checks=b.status.failed_checks + 1)
        message = f"canary {version} rolled back before any traffic: {result.check.message}"
        _roll_back(b, spec, reason=OFFLINE_GATE_FAILED, message=message)
        return None
    held = b.status.held_analyses + 1
    b.update(held_analyses=held)
    b.action = "hold"
    stalled = next((c for c in b.status.conditions if c.type == "Stalled"), None)
    blocked_before = (
        stalled is not None and stalled.status == "True" and stalled.reason == OFFLINE_GATE_BLOCKED
    )
    if result.outcome == "wait":
        if blocked_before:
            _clear_stalled(b)  # what blocked it is gone (a spec change): waiting is no stall
        _hold(b, spec, record, held=held)
        return None
    # Blocked: the artifacts are pinned, so no later analysis can say otherwise. A person acts;
    # the Warning says it once per problem.
    message = f"weight held at 0%: {result.check.message}"
    b.condition("Progressing", "True", OFFLINE_GATE_BLOCKED, message)
    b.condition("Stalled", "True", OFFLINE_GATE_BLOCKED, message)
    if not (blocked_before and stalled is not None and stalled.message == message):
        b.event("Warning", OFFLINE_GATE_BLOCKED, message)
    return None


def _forget_canary_availability(b: _Builder) -> None:
    kept = [c for c in b.status.conditions if c.type != CANARY_AVAILABLE]
    if len(kept) != len(b.status.conditions):
        b.update(conditions=kept)


def _watch_canary(b: _Builder, spec: api.ModelDeploymentSpec, canary: DeploymentState) -> bool:
    """Say whether the canary's pods are available (condition CanaryAvailable, whose
    lastTransitionTime is when that last changed) and roll the canary back once they have not
    been for spec.progressDeadline, while waiting for them or during the rollout. True when
    rolled back."""
    assert spec.canary is not None
    model = spec.canary.model
    if canary.desired > 0 and canary.serves(
        uri=model.uri, version=model.version, sha256=model.sha256
    ):
        text = f"{canary.available}/{canary.desired} canary pods available"
        b.condition(CANARY_AVAILABLE, "True", "PodsAvailable", text)
        return False
    deadline = spec.progress_deadline
    if spec.canary.replicas == 0:
        reason = "ScaledToZero"
        text = "canary.replicas is 0: the canary has no pods to take its traffic"
    else:
        reason = "PodsNotAvailable"
        text = (
            f"waiting for {spec.canary.replicas} canary pod(s) of {model.version}: "
            f"{canary.available if canary.exists else 0}/{spec.canary.replicas} available"
        )
    b.condition(CANARY_AVAILABLE, "False", reason, f"{text} (progressDeadline {deadline})")
    if b.status.current_step is None:
        b.condition(
            "Progressing",
            "True",
            "WaitingForCanary",
            f"canary {model.version} rollout started; {text}; rolled back if not available "
            f"within progressDeadline {deadline}",
        )
    since = next(c for c in b.status.conditions if c.type == CANARY_AVAILABLE)
    waited = (b.now - since.last_transition_time).total_seconds()
    if waited < api.parse_duration(deadline):
        return False
    message = (
        f"canary {model.version} rolled back: not available for progressDeadline {deadline} "
        f"({text})"
    )
    _roll_back(b, spec, reason="ProgressDeadlineExceeded", message=message)
    return True


def analysis_gap_limit(spec: api.ModelDeploymentSpec) -> float:
    """Seconds without an analysis after which a step's time no longer counts: more than
    ANALYSIS_GAP_INTERVALS analysis intervals, and more than the analysis window (while the
    window is longer than the gap, the next analysis still judges every request of it)."""
    analysis = spec.analysis
    return max(
        ANALYSIS_GAP_INTERVALS * api.parse_duration(analysis.interval),
        api.parse_duration(analysis.window),
    )


def _restart_clock_after_gap(b: _Builder, spec: api.ModelDeploymentSpec) -> None:
    """After an outage, the step earns its whole interval again from now."""
    assert spec.canary is not None
    status = b.status
    seen = [
        t for t in (status.step_started_at, status.last_analysis and status.last_analysis.time) if t
    ]
    if not seen:
        return
    gap = (b.now - max(seen)).total_seconds()
    limit = analysis_gap_limit(spec)
    if gap <= limit:
        return
    b.update(step_started_at=b.now)
    b.event(
        "Warning",
        "StepClockRestarted",
        f"no analysis for {_seconds_text(gap)} (more than {_seconds_text(limit)}: "
        f"{ANALYSIS_GAP_INTERVALS} analysis intervals of {spec.analysis.interval}, or the "
        f"window {spec.analysis.window}); the operator or its metrics were unreachable, so "
        f"step {(status.current_step or 0) + 1} at {status.canary_weight}% must pass for "
        f"{spec.canary.step_interval} again from now",
    )


def _seconds_text(seconds: float) -> str:
    whole = round(seconds)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    text = (f"{hours}h" if hours else "") + (f"{minutes}m" if minutes else "")
    return text + (f"{secs}s" if secs or not text else "")


def _analyse(
    b: _Builder, spec: api.ModelDeploymentSpec, measurements: m.Measurements, *, paused: bool
) -> None:
    assert spec.canary is not None
    canary, analysis = spec.canary, spec.analysis
    status = b.status
    results = judge(spec=spec, measurements=measurements, step_started_at=status.step_started_at)
    results += hooks.rollout_checks(spec=spec, status=status, at=measurements.time)
    record = build_record(
        results=results,
        time=measurements.time,
        step=status.current_step,
        weight=status.canary_weight,
    ).model_copy(
        update={"offline": offline.figures(spec=spec, status=status, measurements=measurements)}
    )
    if not paused:
        _restart_clock_after_gap(b, spec)
    b.update(last_analysis=record)
    if canary.experiment is not None:
        _experiment_turn(b, spec, measurements)
    if paused:
        b.action = "paused"
        return
    verdict = record.verdict
    if verdict == "Failed":
        failed = status.failed_checks + 1
        # A failed step must earn its whole interval again.
        b.update(failed_checks=failed, held_analyses=0, step_started_at=b.now)
        _clear_stalled(b)
        _forget_approval(b)  # the last step must pass again before approval is awaited again
        failing = [r for r in results if r.verdict == "Failed" and not r.dry_run]
        detail = "; ".join(r.message for r in failing)
        if any(r.sequential for r in failing):
            # A sequential failure is already a decision with its error rate held over every
            # look: waiting for failureLimit would only add looks it has accounted for.
            rates = analysis.sequential_rates
            assert rates is not None
            message = (
                f"canary {canary.model.version} rolled back at {status.canary_weight}%: {detail} "
                f"(a sequential decision: false rollback rate {rates.false_rollback_rate:g})"
            )
            _roll_back(b, spec, reason="AnalysisFailed", message=message)
        elif failed >= analysis.failure_limit:
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
        collecting = all(
            r.collecting for r in results if r.verdict != "Successful" and not r.dry_run
        )
        _hold(b, spec, record, held=held, collecting=collecting)
        return
    b.update(failed_checks=0, held_analyses=0)
    _clear_stalled(b)
    progressing = next((c for c in b.status.conditions if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason in HELD_REASONS:
        b.condition(
            "Progressing",
            "True",
            "CanaryAnalysis",
            f"canary {canary.model.version} at {status.canary_weight}% (step "
            f"{(status.current_step or 0) + 1} of {len(step_weights(spec))}): the checks pass "
            "again",
        )
    if canary.experiment is not None:
        _experiment_holds(b)  # never a step up, never a promotion: a person decides
        return
    started = b.status.step_started_at or b.now
    interval = step_seconds(spec)
    if (b.now - started) < timedelta(seconds=interval):
        b.action = "pass"
        return
    step = status.current_step or 0
    summary = ", ".join(
        f"{r.name} {m.value_text(r.name, r.value)}" for r in results if r.value is not None
    )
    if step + 1 < len(step_weights(spec)):
        if _webhook_hold(b, spec, "increase"):
            return  # confirm-traffic-increase
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
    if _webhook_hold(b, spec, "promotion"):
        return  # confirm-promotion
    if approval_required(spec):
        _await_approval(b, spec, summary=summary)
        return
    _promote(
        b,
        spec,
        reason=f"every step passed; last analysis: {summary}",
    )


# ---------------------------------------------------------------------------------------------
# A/B experiments (spec.canary.experiment): the canary at one fixed weight; every analysis
# updates status.experiment (`experiments.update`); the safety checks still roll back, and a
# passing analysis holds: promoting is the promote command's, never the experiment's.


def _experiment_started(spec: api.ModelDeploymentSpec) -> str:
    assert spec.canary is not None and spec.canary.experiment is not None
    experiment = spec.canary.experiment
    return (
        f"canary {spec.canary.model.version} available: A/B experiment on {experiment.metric} "
        f"started at weight {experiment.weight}% (no steps, no automatic promotion)"
    )


def _experiment_turn(
    b: _Builder, spec: api.ModelDeploymentSpec, measurements: m.Measurements
) -> None:
    """One analysis of the experiment: its record updated (started now when the status has
    none for this canary and metric), the weight kept at the spec's, an Event when decided."""
    assert spec.canary is not None and spec.canary.experiment is not None
    weight = spec.canary.experiment.weight
    if b.status.current_step is not None and b.status.canary_weight != weight:
        b.update(current_step=0, canary_weight=weight)  # the spec's split (edited, or new)
    record = experiments.current(spec, b.status)
    if record is None:
        b.update(experiment=experiments.start(spec, b.now))
        return  # counted from now on: nothing before it is the experiment's
    updated, event = experiments.update(spec=spec, record=record, measurements=measurements)
    b.update(experiment=updated)
    if event is not None:
        b.event(event.type, event.reason, event.message)


def _experiment_holds(b: _Builder) -> None:
    """A passing analysis of an experiment: Progressing says where the comparison stands."""
    record = b.status.experiment
    decided = record is not None and record.winner != "undecided"
    reason = experiments.DECIDED_REASON if decided else experiments.RUNNING_REASON
    message = f"A/B experiment at {b.status.canary_weight}%: " + (
        record.message if record is not None else "started"
    )
    b.condition("Progressing", "True", reason, message)
    b.action = "pass"


# ---------------------------------------------------------------------------------------------
# The manual approval gate (spec.canary.approval.required): a hold before the final promotion,
# released by the promote command (`canaryml promote`, the canaryml.dev/promote annotation).


def approval_required(spec: api.ModelDeploymentSpec) -> bool:
    """Whether the final promotion waits for a person's approval."""
    approval = spec.canary.approval if spec.canary is not None else None
    return approval is not None and approval.required


def approval_message(spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus) -> str:
    """What the Approved condition (and the Event) says is awaited, and how to give it."""
    assert spec.canary is not None
    version = spec.canary.model.version
    key = COMMAND_ANNOTATIONS["promote"]
    return (
        f"canary {version} passed every step and holds {status.canary_weight}% until its "
        f'promotion is approved: `canaryml promote NAME` (annotation {key}: "{version}"); '
        "the analyses go on, and a failing check still rolls it back"
    )


def _await_approval(b: _Builder, spec: api.ModelDeploymentSpec, *, summary: str) -> None:
    """The last step passed, the promotion waits: Approved=False (AwaitingApproval) and
    Progressing say so, with a Normal Event when the wait begins (once per wait)."""
    message = approval_message(spec, b.status)
    waiting = awaiting_approval(b.status) is not None
    b.condition(APPROVED, "False", AWAITING_APPROVAL, message)
    b.condition("Progressing", "True", AWAITING_APPROVAL, message)
    if not waiting:
        b.event("Normal", AWAITING_APPROVAL, f"{message} (last analysis: {summary})")
    b.action = "awaitApproval"


def _forget_approval(b: _Builder) -> None:
    """No approval is awaited any more (a failed analysis, a rollback, a new canary)."""
    kept = [c for c in b.status.conditions if c.type != APPROVED or c.status == "True"]
    if len(kept) != len(b.status.conditions):
        b.update(conditions=kept)
    progressing = next((c for c in b.status.conditions if c.type == "Progressing"), None)
    if progressing is not None and progressing.reason == AWAITING_APPROVAL:
        status = b.status
        b.condition(
            "Progressing",
            "True",
            "CanaryAnalysis",
            f"canary {status.canary_version} at {status.canary_weight}% (step "
            f"{(status.current_step or 0) + 1}): an analysis failed; the step must pass for its "
            "interval again before the promotion awaits approval",
        )


HELD_REASONS = ("AnalysisInconclusive", "MetricsUnavailable", "CollectingEvidence")


def _hold(
    b: _Builder,
    spec: api.ModelDeploymentSpec,
    record: api.AnalysisRecord,
    *,
    held: int,
    collecting: bool = False,
) -> None:
    """The weight is held: Progressing says why; Stalled (and a Warning, once) only for a real
    stall: HELD_STREAK_LIMIT Error analyses in a row, or Inconclusive ones (a drift window
    warming up, too few requests) for longer than spec.progressDeadline. Sequential checks
    that are only not sure yet (`collecting`: requests arrive, a decision needs more) never
    stall: low traffic is a longer step, and the message says how many more requests."""
    weight = b.status.canary_weight
    why = "; ".join(record.reasons)
    if collecting:
        message = f"weight held at {weight}% while evidence is collected: {why}"
        b.condition("Progressing", "True", "CollectingEvidence", message)
        _clear_stalled(b)
        return
    if record.verdict == "Error":
        reason = "MetricsUnavailable"
        stalled = held >= HELD_STREAK_LIMIT
    else:
        reason = "AnalysisInconclusive"
        held_for = held * api.parse_duration(spec.analysis.interval)
        stalled = held_for >= api.parse_duration(spec.progress_deadline)
    if not stalled:
        message = f"weight held at {weight}% ({held} analyses in a row): {why}"
        b.condition("Progressing", "True", reason, message)
        return
    message = f"weight held at {weight}% for {held} analyses in a row: {why}"
    if reason == "AnalysisInconclusive":
        message += f" (longer than progressDeadline {spec.progress_deadline})"
    was = _stalled(b.status)
    b.condition("Stalled", "True", reason, message)
    if not was:
        b.event("Warning", reason, message)


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
    if awaiting_approval(b.status) is not None:
        b.condition(APPROVED, "True", "Approved", message)
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
    if switches_at_once(spec):
        _scale_up_for_window(b, spec, previous)


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
    _forget_approval(b)
    b.event("Warning", "RolledBack", message)
    b.action = "rollback"


# ---------------------------------------------------------------------------------------------
# What the children need to know of the rollout


# ---------------------------------------------------------------------------------------------
# The rollback window (spec.rollbackWindow): after a promotion the stable Deployment keeps the
# model the promotion replaced, at its size, while the canary, grown to the stable's size, takes
# all traffic. A rollback then is the routing change `_rollback_stable` already makes for a
# promotion still finishing (the canary's weight to 0): nothing rolls, the previous stable's
# pods answer at once. After the window the stable rolls to the promoted model and the promotion
# finishes as without a window (the canary keeps its traffic until then, then is removed).
#
#   Promoted, Progressing ScalingUpCanary (the canary keeps its weight, grows to full size)
#     --canary available at full size--> RollbackWindow (weight 100%, rollbackWindowEndsAt)
#     --the window is over--> Promoting (the stable rolls out the promoted model)
#     --the stable serves it--> Promoted (weight 0, the canary drained then removed)


def rollback_window(spec: api.ModelDeploymentSpec) -> float:
    """spec.rollbackWindow in seconds (0: none)."""
    return api.parse_duration(spec.rollback_window)


def full_size(spec: api.ModelDeploymentSpec) -> int:
    """The pods the canary must have available before it takes all traffic: the stable's
    (serving.replicas, or serving.autoscaling.minReplicas)."""
    autoscaling = spec.serving.autoscaling
    return autoscaling.min_replicas if autoscaling is not None else spec.serving.replicas


def rollback_window_ends_in(
    *, spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus, now: datetime
) -> float | None:
    """Seconds until a promotion's rollback window is over (0: it is), or None when none is
    open."""
    ends = status.rollback_window_ends_at
    if ends is None or not keeps_previous_stable(status) or not is_current_canary(spec, status):
        return None
    return max(0.0, (ends - now).total_seconds())


def _scale_up_for_window(
    b: _Builder, spec: api.ModelDeploymentSpec, previous: api.ModelIdentity | None
) -> None:
    """A promotion with a rollback window: the stable Deployment keeps `previous`; the canary
    grows to the stable's size before it takes all traffic."""
    assert spec.canary is not None
    kept = previous.version if previous is not None else "the previous stable"
    message = (
        f"canary {spec.canary.model.version} promoted: growing to the stable's size "
        f"({full_size(spec)} pods available) before it takes all traffic; meanwhile it keeps "
        f"{b.status.canary_weight}% and stable {kept} keeps its pods for rollbackWindow "
        f"{spec.rollback_window}"
    )
    if blue_green(spec):
        message = _blue_green_scaling(spec, kept)
    b.condition("Progressing", "True", SCALING_UP_CANARY, message)


def _rollback_window_turn(
    b: _Builder, spec: api.ModelDeploymentSpec, tracks: Mapping[Track, DeploymentState]
) -> None:
    """The promoted canary takes all traffic once it is available at full size; once the
    window is over, the stable rolls to it (`_finish_promotion` takes over)."""
    if not keeps_previous_stable(b.status) or not is_current_canary(spec, b.status):
        return
    assert spec.canary is not None
    model = spec.canary.model
    progressing = next(c for c in b.status.conditions if c.type == "Progressing")
    kept = previous_stable(b.status)
    kept_text = kept.version if kept is not None else "the previous stable"
    if progressing.reason == SCALING_UP_CANARY:
        canary = tracks.get("canary", DeploymentState())
        if not (
            canary.serves(uri=model.uri, version=model.version, sha256=model.sha256)
            and canary.available >= full_size(spec)
        ):
            return
        ends = b.now + timedelta(seconds=rollback_window(spec))
        message = (
            f"canary {model.version} takes all traffic ({canary.available} pods); stable "
            f"{kept_text} keeps its pods until {ends:%Y-%m-%dT%H:%M:%SZ} (rollbackWindow "
            f"{spec.rollback_window}): `canaryml rollback NAME` before then switches the "
            "traffic back at once"
        )
        reason = "RollbackWindowOpen"
        if blue_green(spec):
            reason, message = BLUE_GREEN_SWITCH, _blue_green_switch(spec, b.status, canary, ends)
        b.update(canary_weight=100, step_started_at=b.now, rollback_window_ends_at=ends)
        b.condition("Progressing", "True", ROLLBACK_WINDOW, message)
        b.event("Normal", reason, message)
        b.action = "promote"
        return
    ends_at = b.status.rollback_window_ends_at
    if ends_at is not None and b.now < ends_at:
        return
    message = (
        f"rollback window over: the stable track rolls out {model.version} (stable "
        f"{kept_text}'s pods are replaced); the canary keeps 100% until it has rolled out"
    )
    b.update(rollback_window_ends_at=None)
    if rollback_window(spec) == 0:  # blue-green without a window: no window to tell of
        message = (
            f"blue-green switch done: the stable track rolls out {model.version} (stable "
            f"{kept_text}'s pods, which take no traffic, are replaced); the canary keeps 100% "
            "until it has rolled out"
        )
        b.condition("Progressing", "True", "Promoting", message)
        b.action = "promote"
        return
    b.condition("Progressing", "True", "Promoting", message)
    b.event("Normal", "RollbackWindowClosed", message)
    b.action = "promote"


# ---------------------------------------------------------------------------------------------
# Blue-green (spec.canary.blueGreen): the canary is a preview at weight 0, reachable through
# its Service NAME-canary, A/B segments (spec.routing.canaryMatch) and version pins, analysed
# as one step at 0% on its own traffic for analysisSteps x analysis.interval (too few requests
# holds, as at any step); then the promotion gates (confirm-promotion hooks, the approval) and
# the switch: the promotion path of the rollback window, with the window as long as
# spec.rollbackWindow (0s: none):
#
#   Progressing, step 1 at 0% (the preview) --passes for analysisSteps x interval-->
#   Promoted, ScalingUpCanary (the preview grows to the stable's size; 0%)
#     --available at full size--> RollbackWindow: weight 0% -> 100% at once (BlueGreenSwitch)
#     --the window is over (at once without one)--> Promoting (the stable, which takes no
#       traffic, rolls to the new model) --it serves it--> Promoted (weight 0, canary removed)
#
# A switch back is a rollback: before the switch the preview had no traffic (abort, or a
# failed analysis: RolledBack); after it, `canaryml rollback` within the window (or while the
# stable has not rolled yet) puts the weight back to 0% on the previous stable's pods.

BLUE_GREEN_SWITCH = "BlueGreenSwitch"  # Event: the preview took all traffic at once


def switches_at_once(spec: api.ModelDeploymentSpec) -> bool:
    """Whether a promotion keeps the stable Deployment on the replaced model while the canary
    grows to full size and takes all traffic at once (a rollback window, or blue-green)."""
    return rollback_window(spec) > 0 or blue_green(spec)


def _blue_green_started(spec: api.ModelDeploymentSpec) -> str:
    assert spec.canary is not None and spec.canary.blue_green is not None
    return (
        f"canary {spec.canary.model.version} blue-green rollout started (a preview at 0%, "
        f"analysed for {spec.canary.blue_green.analysis_steps} x {spec.analysis.interval}, "
        "then all traffic at once)"
    )


def _preview_message(spec: api.ModelDeploymentSpec) -> str:
    assert spec.canary is not None and spec.canary.blue_green is not None
    return (
        f"preview {spec.canary.model.version} available at 0% (blue-green): analysed on its "
        f"own traffic (Service NAME-canary, A/B segments, version pins) for "
        f"{spec.canary.blue_green.analysis_steps} x {spec.analysis.interval} before it takes "
        "all traffic at once"
    )


def _blue_green_scaling(spec: api.ModelDeploymentSpec, kept: str) -> str:
    assert spec.canary is not None
    return (
        f"preview {spec.canary.model.version} promoted (blue-green): growing to the stable's "
        f"size ({full_size(spec)} pods available) before it takes all traffic at once; "
        f"meanwhile stable {kept} keeps all traffic"
    )


def _blue_green_switch(
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    canary: DeploymentState,
    ends: datetime,
) -> str:
    assert spec.canary is not None
    kept = previous_stable(status)
    kept_text = kept.version if kept is not None else "the previous stable"
    message = (
        f"blue-green switch: preview {spec.canary.model.version} takes all traffic at once "
        f"({status.canary_weight}% -> 100%, {canary.available} pods)"
    )
    if rollback_window(spec) == 0:
        return message + "; the stable track, which has no traffic now, rolls out next"
    return message + (
        f"; stable {kept_text} keeps its pods until {ends:%Y-%m-%dT%H:%M:%SZ} (rollbackWindow "
        f"{spec.rollback_window}): `canaryml rollback NAME` before then switches the traffic "
        "back at once"
    )


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
    routing = plan_routing(spec, status)
    weight = routing.canary_weight
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
    if current and status.phase == "Promoted" and drained and not keeps_previous_stable(status):
        return TrackPlan(stable, None, weight)
    if current and status.phase == "Promoted" and switches_at_once(spec):
        kept = previous_stable(status)
        if keeps_previous_stable(status) and kept is not None:
            stable = kept.as_ref()  # the rollback window: the stable Deployment is not touched
        if keeps_previous_stable(status) or status.canary_weight == 100:
            # At the stable's size: it takes, or is about to take, all traffic.
            replicas = max(canary.replicas, spec.serving.replicas)
            return TrackPlan(stable, replicas, weight, routing.canary_serving, canary_scale=100)
    return TrackPlan(stable, canary.replicas, weight, routing.canary_serving)
