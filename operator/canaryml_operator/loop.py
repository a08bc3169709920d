"""One turn of a ModelDeployment's rollout loop, for the operator and the local demo alike.

    analysis due? -> measure -> decide -> plan the tracks -> apply -> status from the children

The turn is pure but for two small ports: `Measure` (the metrics of one analysis) and `Tracks`
(what the track Deployments say, and making them follow a plan). The operator (`main`) drives
it with the Kubernetes API and Prometheus; `canaryml demo` with local processes and direct
scrapes or a local Prometheus. Both so write the same status for the same inputs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from canaryml_api import resource as api
from canaryml_api.tracks import Track

from canaryml_operator import children, reconcile, rollout
from canaryml_operator.measurements import Measurements
from canaryml_operator.state import DeploymentState, Event, Owner, TrackPlan


class Measure(Protocol):
    """Takes one analysis of the spec's canary: every check's sample at `now` (`status` says
    since when the step runs and which version the stable track serves)."""

    async def __call__(
        self,
        *,
        spec: api.ModelDeploymentSpec,
        owner: Owner,
        status: api.ModelDeploymentStatus,
        now: datetime,
    ) -> Measurements: ...


class Tracks(Protocol):
    """The track Deployments (and the traffic split) of one ModelDeployment."""

    def live(self) -> Mapping[Track, DeploymentState]:
        """What each track's Deployment says now."""
        ...

    def apply(
        self, *, spec: api.ModelDeploymentSpec, plan: TrackPlan
    ) -> Mapping[Track, DeploymentState]:
        """Have the tracks and their traffic follow `plan` (its weight is the routing plan's);
        what they say then (a change may take effect later, as a Deployment rolls out after its
        update)."""
        ...


async def measure_if_due(
    *,
    spec: api.ModelDeploymentSpec,
    owner: Owner,
    status: api.ModelDeploymentStatus,
    now: datetime,
    measure: Measure,
) -> Measurements | None:
    """An analysis when one is due (`rollout.next_analysis_in`), else None."""
    if rollout.next_analysis_in(spec=spec, status=status, now=now) != 0.0:
        return None
    return await measure(spec=spec, owner=owner, status=status, now=now)


@dataclass(frozen=True)
class Turn:
    """What one turn decided: the status to write (commands handled included), the rollout's
    Events, and the plan the tracks were given (None with an invalid spec: nothing changes)."""

    status: api.ModelDeploymentStatus
    events: list[Event] = field(default_factory=list)
    plan: TrackPlan | None = None


def turn(
    *,
    spec: api.ModelDeploymentSpec | None,
    invalid: str | None,
    previous: api.ModelDeploymentStatus,
    tracks: Tracks,
    measurements: Measurements | None,
    now: datetime,
    generation: int | None,
    commands: Mapping[rollout.Command, str] = rollout.NO_COMMANDS,
    invalid_reason: str = "InvalidSpec",
) -> Turn:
    """One turn: the rollout core decides on the live tracks (and `measurements`, when an
    analysis was taken), the tracks follow its plan, and the status is the rollout state with
    the observed state of the tracks after that and the phase of both. An `invalid` spec is
    shown with `invalid_reason` (InvalidSpec, or templating.TEMPLATE_NOT_FOUND)."""
    live = tracks.live()
    decided, events, plan = previous, [], None
    after = live
    if spec is not None and invalid is None:
        unpinned = children.unpinned_problem(spec)
        if unpinned is not None:
            # Nothing is created or changed: the tracks keep what they served.
            spec, invalid, invalid_reason = None, unpinned, children.UNPINNED_MODEL
    if spec is not None:
        decision = rollout.decide(
            spec=spec,
            status=previous,
            measurements=measurements,
            now=now,
            tracks=live,
            commands=commands,
            generation=generation,
        )
        decided, events = decision.status, decision.events
        plan = rollout.plan_tracks(spec=spec, status=decided, now=now)
        after = tracks.apply(spec=spec, plan=plan)
    status = reconcile.build_status(
        spec=spec,
        invalid=invalid,
        previous=decided,
        tracks=after,
        generation=generation,
        now=now,
        invalid_reason=invalid_reason,
    )
    return Turn(status, events, plan)
