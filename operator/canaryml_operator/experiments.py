"""A/B experiments (spec.canary.experiment): the comparison of one metric between the canary and
the stable track, decided with anytime-valid statistics (pure).

An experiment holds the canary at a fixed weight, with no steps and no automatic promotion, and
reads at every analysis each track's successes out of its samples since the experiment began:
for `accuracy`, the correct predictions among the labels sent back; for a business metric, its
two queries. The effect is canary rate - stable rate. Its interval is the difference of the two
rates' confidence sequences (`evidence.confidence_bounds`, each at level alpha / 2, so that both
hold at every look at once with probability 1 - alpha): [low_c - high_s, high_c - low_s]. It is
itself a confidence sequence for the difference, so it may be read at every analysis, and it is
kept as the running intersection of all the analyses' intervals (an intersection of confidence
sequences is one, and it never widens).

The decision (`winner`):
- `canary` when the interval lies above 0, `stable` when below: with equal rates the interval
  holds 0 at every look with probability 1 - alpha, so a winner is named between equal tracks
  with probability at most alpha (the false winner rate), however long the experiment runs.
- `none` (with spec minEffect) when the interval lies within (-minEffect, +minEffect): no
  difference as large as minEffect, wrong with probability at most alpha as well.
- `undecided` otherwise, and always while a track has fewer than minSamples samples.
A decision is kept once made (status.experiment.decidedAt); the counts, effect and interval go on
being updated while the experiment runs. alpha is analysis.sequential.falseRollbackRate (0.01
by default). docs/operator.md ("A/B experiments") and docs/judgment.md have the figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime
from typing import Final, Literal

import numpy as np
from canaryml_api import resource as api
from numpy.typing import ArrayLike

from canaryml_operator import evidence as ev
from canaryml_operator import measurements as m
from canaryml_operator.state import Event

DECIDED_REASON: Final = "ExperimentDecided"
RUNNING_REASON: Final = "ExperimentRunning"

# Decision codes of the vectorised form.
STABLE: Final = np.int8(-1)
UNDECIDED: Final = np.int8(0)
CANARY: Final = np.int8(1)
NONE: Final = np.int8(2)
_WINNERS: Final[dict[int, api.ExperimentWinner]] = {
    int(STABLE): "stable",
    int(UNDECIDED): "undecided",
    int(CANARY): "canary",
    int(NONE): "none",
}


def false_winner_rate(spec: api.ModelDeploymentSpec) -> float:
    """alpha: analysis.sequential.falseRollbackRate, or the sequential default."""
    rates = spec.analysis.sequential_rates
    return rates.false_rollback_rate if rates is not None else ev.ALPHA


def difference_bounds(
    canary_successes: ArrayLike,
    canary_samples: ArrayLike,
    stable_successes: ArrayLike,
    stable_samples: ArrayLike,
    alpha: float,
) -> tuple[ev.Array, ev.Array]:
    """The confidence sequence of canary rate - stable rate at level alpha: each rate's at
    alpha / 2. [-1, 1] before any sample."""
    c_low, c_high = ev.confidence_bounds(canary_successes, canary_samples, alpha / 2)
    s_low, s_high = ev.confidence_bounds(stable_successes, stable_samples, alpha / 2)
    return c_low - s_high, c_high - s_low


def winner_codes(low: ArrayLike, high: ArrayLike, *, min_effect: float | None = None) -> ev.Codes:
    """CANARY, STABLE, NONE or UNDECIDED for each interval of the difference."""
    lo, hi = np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64)
    codes = np.where(lo > 0, CANARY, np.where(hi < 0, STABLE, UNDECIDED))
    if min_effect is not None:
        within = (lo > -min_effect) & (hi < min_effect) & (codes == UNDECIDED)
        codes = np.where(within, NONE, codes)
    return codes.astype(np.int8)


def decide_winner(
    low: float, high: float, *, min_effect: float | None = None
) -> api.ExperimentWinner:
    return _WINNERS[int(winner_codes(low, high, min_effect=min_effect))]


def start(spec: api.ModelDeploymentSpec, now: datetime) -> api.ExperimentRecord:
    """The record of an experiment that begins now (the canary got its fixed weight)."""
    assert spec.canary is not None and spec.canary.experiment is not None
    return api.ExperimentRecord(
        metric=spec.canary.experiment.metric,
        canary_version=spec.canary.model.version,
        started_at=now,
        false_winner_rate=false_winner_rate(spec),
        message="started: no counts yet",
    )


def current(
    spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus
) -> api.ExperimentRecord | None:
    """status.experiment when it is the experiment of the spec's canary (its version and
    metric); None otherwise."""
    experiment = spec.canary.experiment if spec.canary is not None else None
    record = status.experiment
    if experiment is None or record is None or spec.canary is None:
        return None
    if record.canary_version != spec.canary.model.version or record.metric != experiment.metric:
        return None
    return record


@dataclass(frozen=True)
class _TrackCounts:
    track: Literal["canary", "stable"]
    successes: float
    samples: float

    @property
    def rate(self) -> float | None:
        return self.successes / self.samples if self.samples > 0 else None


def _counts(measurements: m.Measurements, track: Literal["canary", "stable"]) -> _TrackCounts | str:
    """One track's counts since the experiment began, or why there are none."""
    values: dict[str, float] = {}
    for kind in m.EXPERIMENT_KINDS:
        sample = measurements.get(m.experiment_name(track, kind))
        what = f"{track} {kind} since the experiment began"
        if sample.error is not None:
            return f"{what}: {sample.error}"
        if sample.value is None or math.isnan(sample.value):
            return f"no {what} yet"
        if math.isinf(sample.value) or sample.value < 0:
            return f"{what}: {sample.value:g} is not a count"
        values[kind] = sample.value
    samples = values["samples"]
    return _TrackCounts(track, min(values["successes"], samples), samples)


def update(
    *,
    spec: api.ModelDeploymentSpec,
    record: api.ExperimentRecord,
    measurements: m.Measurements,
) -> tuple[api.ExperimentRecord, Event | None]:
    """The experiment's record after one analysis, and the Event when it was decided in it."""
    assert spec.canary is not None and spec.canary.experiment is not None
    experiment = spec.canary.experiment
    alpha = false_winner_rate(spec)
    tracks = [_counts(measurements, "canary"), _counts(measurements, "stable")]
    problems = [t for t in tracks if isinstance(t, str)]
    if problems:
        message = f"{record.metric}: " + "; ".join(problems)
        return record.model_copy(update={"message": message}), None
    canary, stable = (t for t in tracks if isinstance(t, _TrackCounts))
    lows, highs = difference_bounds(
        canary.successes, canary.samples, stable.successes, stable.samples, alpha
    )
    low, high = float(lows), float(highs)
    # The running intersection; an empty one (the sequence missed) keeps the last.
    if (
        record.low is not None
        and record.high is not None
        and max(low, record.low) <= min(high, record.high)
    ):
        low, high = max(low, record.low), min(high, record.high)
    effect = (
        canary.rate - stable.rate if canary.rate is not None and stable.rate is not None else None
    )
    short = [t for t in (canary, stable) if t.samples < experiment.min_samples]
    winner = record.winner
    decided_at = record.decided_at
    event = None
    if winner == "undecided" and not short:
        winner = decide_winner(low, high, min_effect=experiment.min_effect)
        if winner != "undecided":
            decided_at = measurements.time
    updated = record.model_copy(
        update={
            "winner": winner,
            "effect": effect,
            "low": low,
            "high": high,
            "canary_samples": canary.samples,
            "stable_samples": stable.samples,
            "canary_successes": canary.successes,
            "stable_successes": stable.successes,
            "false_winner_rate": alpha,
            "decided_at": decided_at,
        }
    )
    text = describe(updated, min_samples=experiment.min_samples, min_effect=experiment.min_effect)
    updated = updated.model_copy(update={"message": text})
    if record.winner == "undecided" and winner != "undecided":
        event = Event("Normal", DECIDED_REASON, f"canary {record.canary_version}: {text}")
    return updated, event


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f} %"


def _points(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:+.2f} points"


def describe(
    record: api.ExperimentRecord, *, min_samples: int | None = None, min_effect: float | None = None
) -> str:
    """One line on the experiment: the decision, the effect and its interval, the counts."""
    canary_rate = (
        record.canary_successes / record.canary_samples if record.canary_samples > 0 else None
    )
    stable_rate = (
        record.stable_successes / record.stable_samples if record.stable_samples > 0 else None
    )
    counts = (
        f"canary {_percent(canary_rate)} ({record.canary_successes:.0f} of "
        f"{record.canary_samples:.0f}) vs stable {_percent(stable_rate)} "
        f"({record.stable_successes:.0f} of {record.stable_samples:.0f})"
    )
    interval = (
        f"interval {_points(record.low)} to {_points(record.high)}"
        if record.low is not None and record.high is not None
        else "no interval yet"
    )
    effect = f"{record.metric} difference {_points(record.effect)} ({interval}; {counts})"
    alpha = f"false winner rate {record.false_winner_rate:g}" if record.false_winner_rate else ""
    if record.winner == "canary":
        head = "the canary wins"
    elif record.winner == "stable":
        head = "the stable wins"
    elif record.winner == "none":
        margin = f" of {min_effect * 100:g} points" if min_effect is not None else ""
        head = f"no difference{margin} or more"
    else:
        short = (
            min_samples is not None
            and min(record.canary_samples, record.stable_samples) < min_samples
        )
        head = f"not decided yet{f' (minSamples {min_samples} per track)' if short else ''}"
    tail = f"; {alpha}" if alpha else ""
    if record.winner != "undecided":
        tail += "; promote with `canaryml promote` or end it with `canaryml abort`"
    return f"{head}: {effect}{tail}"
