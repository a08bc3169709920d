"""The one rule from a ModelDeployment's (spec, status) to the traffic each track gets.

The operator's HTTPRoute builder, the builtin router (which follows the resource) and the local
demo all take their weights from `plan_routing`, so they can never disagree.

The canary gets `status.canaryWeight` only while the status is about the spec's canary
(`status.canaryModel` is `spec.canary.model`): after an edit of `spec.canary.model` and until the
operator has started the new rollout, the weight written for the old canary does not go to the
new one. A rolled-back canary has weight 0; a promoted one keeps its weight until the new stable
has rolled out (the rollout core writes it back to 0 then).

A/B segments (`spec.routing.canaryMatch`) and version pins reach the canary whatever its weight,
but only while its rollout runs (`canary_serving`: the status is about the spec's canary, in
phase Pending, Progressing or Paused, or Promoted while it keeps its weight).

A blue-green preview with `spec.canary.blueGreen.mirror` is also sent the stable's live
prediction requests by the builtin router (`canary_mirror`), only while it is analysed at
weight 0 (available, at its step).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from canaryml_api import resource
from canaryml_api.tracks import Track


@dataclass(frozen=True)
class RoutingPlan:
    """Where one ModelDeployment's requests go."""

    tracks: tuple[Track, ...] = ("stable",)  # the tracks the spec has (stable always)
    canary_weight: int = 0  # percent of live requests the canary answers
    shadow_percent: int = 0  # percent of requests also mirrored to the shadow
    sticky_header: str | None = None
    probability_tolerance: float = resource.DEFAULT_PROBABILITY_TOLERANCE
    versions: Mapping[Track, str] = field(default_factory=dict)  # model version per track
    # The canary's rollout runs (the status is about the spec's canary, not rolled back, and not
    # promoted with the stable serving its model): only then do A/B segments (`canary_match`)
    # and version pins reach it.
    canary_serving: bool = False
    canary_match: tuple[resource.CanaryMatch, ...] = ()
    rate_limit: resource.RateLimitSpec | None = None  # the builtin router's per-client limit
    # Blue-green with mirror (spec.canary.blueGreen.mirror): the builtin router also sends the
    # stable's live prediction requests to the preview, while it runs at weight 0.
    canary_mirror: bool = False

    def __post_init__(self) -> None:
        # The one place the bounds are checked: every consumer gets a plan from here.
        if not 0 <= self.canary_weight <= 100:
            raise ValueError(f"canary weight must be 0..100, got {self.canary_weight}")
        if not 0 <= self.shadow_percent <= 100:
            raise ValueError(f"shadow percent must be 0..100, got {self.shadow_percent}")


# Phases in which the canary's pods run a rollout that A/B segments and version pins may reach:
# not RolledBack (a bad canary), nor Failed or Stable (nothing runs); Promoted only while the
# canary keeps its weight (until the stable serves its model: its pods then go).
SERVING_PHASES: tuple[str | None, ...] = ("Pending", "Progressing", "Paused")


def is_current_canary(
    spec: resource.ModelDeploymentSpec, status: resource.ModelDeploymentStatus
) -> bool:
    """Whether the status is about the spec's canary (the same uri, version and sha256)."""
    return spec.canary is not None and status.canary_model == resource.ModelIdentity.of(
        spec.canary.model
    )


def plan_routing(
    spec: resource.ModelDeploymentSpec, status: resource.ModelDeploymentStatus
) -> RoutingPlan:
    tracks: list[Track] = ["stable"]
    versions: dict[Track, str] = {"stable": status.stable_version or spec.model.version}
    canary_weight = shadow_percent = 0
    canary_serving = canary_mirror = False
    if spec.canary is not None:
        tracks.append("canary")
        versions["canary"] = spec.canary.model.version
        if is_current_canary(spec, status) and status.phase != "RolledBack":
            canary_weight = status.canary_weight
            # Promoted: until the stable has rolled out (the weight then goes to 0).
            canary_serving = status.phase in SERVING_PHASES or (
                status.phase == "Promoted" and status.canary_weight > 0
            )
        # Once the preview is available and analysed (at its step): not to pods still starting.
        preview = spec.canary.blue_green
        canary_mirror = (
            preview is not None
            and preview.mirror
            and canary_serving
            and canary_weight == 0
            and status.current_step is not None
        )
    tolerance = resource.DEFAULT_PROBABILITY_TOLERANCE
    if spec.shadow is not None:
        tracks.append("shadow")
        versions["shadow"] = spec.shadow.model.version
        shadow_percent = spec.shadow.percent
        tolerance = spec.shadow.probability_tolerance
    return RoutingPlan(
        tracks=tuple(tracks),
        canary_weight=canary_weight,
        shadow_percent=shadow_percent,
        sticky_header=spec.routing.sticky_header,
        probability_tolerance=tolerance,
        versions=versions,
        canary_serving=canary_serving,
        canary_match=tuple(spec.routing.canary_match),
        rate_limit=spec.routing.rate_limit,
        canary_mirror=canary_mirror,
    )
