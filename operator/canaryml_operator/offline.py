"""The offline gate: the canary's held-out figure against the stable model's, before any traffic.

Pure, no I/O: functions of (spec, status, measurements), below the rollout core, which acts on
the outcome. The figures are those `canaryml package --evaluate` recorded in each artifact's
manifest; the operator never reads artifacts (it has no storage credentials), so it reads them
where the servers export them (`checks` queries them per track, `measurements.offline_name`).

At every analysis the figures read are kept in the analysis's record (`figures`), to be shown
next to the live checks. With `analysis.offlineGate`, the canary's first analysis (its pods
available, no step yet, weight 0) is the gate's (`judge_gate`), one of four outcomes:

- **pass**: both figures known, on the same held-out data, the canary's at most maxDrop worse
  (canary >= stable - maxDrop; canary <= stable + maxDrop for an error such as rmse): the first
  step begins.
- **fail**: worse by more than maxDrop: the rollout ends as RolledBack before any traffic.
- **wait**: not known yet (no series scraped, replicas that disagree during their rollout, a
  query that failed): the weight stays 0 and the hold is an ordinary Inconclusive or Error
  analysis (Stalled after progressDeadline, or five errors in a row).
- **blocked**: known, and no amount of waiting changes it, since an artifact is pinned by its
  digest: a manifest that records no evaluation, a figure one of them lacks, or figures on
  different held-out data. Not evidence against the canary, so nothing is rolled back: the
  weight stays 0 and Stalled is set at once, with what to do. Both remedies then work: a new
  artifact (a new rollout) or a relaxed or removed gate (this canary goes on at once).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Final, Literal

from canaryml_api import resource as api
from canaryml_api import telemetry as t

from canaryml_operator import measurements as m
from canaryml_operator.checks import stable_version
from canaryml_operator.verdicts import CheckResult

Outcome = Literal["pass", "fail", "wait", "blocked"]
GateTrack = Literal["canary", "stable"]
GATE_TRACKS: Final[tuple[GateTrack, GateTrack]] = ("canary", "stable")
# Rounding slack, relative to the figures: 0.95 against 0.96 - 0.01 is no failure.
TOLERANCE: Final = 1e-9
SHOWN_DIGEST: Final = 12  # characters of a held-out data's sha256 in a message
SHA256: Final = re.compile(r"[0-9a-f]{64}")
KNOWN_FIGURES: Final = frozenset(t.OFFLINE_HIGHER_IS_BETTER + t.OFFLINE_LOWER_IS_BETTER)


@dataclass(frozen=True)
class TrackRead:
    """What one track's servers say of their held-out evaluation: its figures (rows 0: none
    recorded), or why not known: `error` (a query failed) or `unknown` (not scraped yet, or
    replicas that disagree)."""

    figures: api.OfflineFigures | None = None
    error: str | None = None
    unknown: str | None = None


def read_track(measurements: m.Measurements, *, track: GateTrack, version: str) -> TrackRead:
    rows = measurements.get(m.offline_name(track, "rows"))
    figures = measurements.get(m.offline_name(track, "figures"))
    failed = rows.error or figures.error
    if failed is not None:
        return TrackRead(error=failed)
    if not all(_exported(digest, count) for digest, count in rows.features):
        return TrackRead(
            error=f"the {t.OFFLINE_EVALUATION_ROWS} series of {track} {version} are no held-out "
            "evaluation a server exports (rows that are not a whole number, or a digest that "
            "is not a sha256)"
        )
    if not rows.features:
        return TrackRead(
            unknown=f"the held-out figures of {track} {version} are not scraped yet (no "
            f"{t.OFFLINE_EVALUATION_ROWS} series of its servers: are its pods scraped, and do "
            "they run a canaryml that exports them?)"
        )
    if len(rows.features) > 1:
        digests = ", ".join(_digest(digest) for digest, _ in rows.features)
        return TrackRead(
            unknown=f"the replicas of {track} {version} export different held-out evaluations "
            f"({digests}): waiting for its Deployment to roll out"
        )
    digest, count = rows.features[0]
    return TrackRead(
        figures=api.OfflineFigures(
            track=track,
            version=version,
            rows=round(count),
            heldout_sha256=digest or None,
            # Known figures only, finite only: the status keeps what a server can export.
            metrics={
                name: value
                for name, value in figures.features
                if name in KNOWN_FIGURES and math.isfinite(value)
            }
            if count > 0
            else {},
        )
    )


def _exported(digest: str, rows: float) -> bool:
    """Whether a rows series is one a server exports: whole rows, and a sha256 (or none)."""
    whole = math.isfinite(rows) and rows >= 0 and rows == round(rows)
    return whole and (digest == "" or SHA256.fullmatch(digest) is not None)


def figures(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    measurements: m.Measurements,
) -> list[api.OfflineFigures]:
    """Each track's held-out figures as this analysis read them (status.lastAnalysis.offline);
    a track not known (not scraped, a failed query) is left out."""
    return [
        read.figures
        for read in _reads(spec, status, measurements).values()
        if read.figures is not None
    ]


@dataclass(frozen=True)
class GateResult:
    outcome: Outcome
    check: CheckResult  # offlineVsStable: canary - stable, against -maxDrop (+maxDrop)
    figures: list[api.OfflineFigures]


def judge_gate(
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    measurements: m.Measurements,
) -> GateResult:
    """The offline gate's outcome on one analysis (see the module's docstring)."""
    gate = spec.analysis.offline_gate
    if gate is None or spec.canary is None:
        raise ValueError("judge_gate needs spec.canary and analysis.offlineGate")
    metric, drop = gate.metric, gate.max_drop
    error_metric = metric in t.OFFLINE_LOWER_IS_BETTER
    reads = _reads(spec, status, measurements)
    known = [read.figures for read in reads.values() if read.figures is not None]
    canary_version, stable_version_ = spec.canary.model.version, stable_version(spec, status)
    name = m.OFFLINE_VS_STABLE

    def result(
        outcome: Outcome, verdict: api.Verdict, text: str, value: float | None = None
    ) -> GateResult:
        check = CheckResult(
            name,
            verdict,
            value,
            min=None if error_metric else -drop,
            max=drop if error_metric else None,
            message=f"{name}: {text}",
        )
        return GateResult(outcome, check, known)

    for read in reads.values():
        if read.error is not None:
            return result("wait", "Error", read.error)
    for read in reads.values():
        if read.unknown is not None:
            return result("wait", "Inconclusive", read.unknown)
    canary, stable = reads["canary"].figures, reads["stable"].figures
    assert canary is not None and stable is not None
    if canary.rows == 0:
        return result(
            "blocked",
            "Inconclusive",
            f"canary {canary_version}'s artifact records no held-out evaluation: package it "
            f"with `canaryml package --evaluate HELDOUT.csv` (the held-out data stable "
            f"{stable_version_} was evaluated on) and roll that artifact out as the canary, or "
            "remove analysis.offlineGate",
        )
    if stable.rows == 0:
        return result(
            "blocked",
            "Inconclusive",
            f"stable {stable_version_}'s artifact records no held-out evaluation, so the "
            f"canary's {metric} has nothing to be compared with: package the stable model with "
            f"`canaryml package --evaluate` on the canary's held-out data "
            f"({_digest(canary.heldout_sha256)}) and set spec.model to that artifact, or remove "
            "analysis.offlineGate",
        )
    for figures_ in (canary, stable):
        if metric not in figures_.metrics:
            recorded = ", ".join(sorted(figures_.metrics)) or "nothing"
            return result(
                "blocked",
                "Inconclusive",
                f"{figures_.track} {figures_.version}'s held-out evaluation records no {metric} "
                f"(it records {recorded}): set analysis.offlineGate.metric to a figure both "
                "models record",
            )
    if canary.heldout_sha256 is None or canary.heldout_sha256 != stable.heldout_sha256:
        return result(
            "blocked",
            "Inconclusive",
            f"canary {canary_version} was evaluated on other held-out data than stable "
            f"{stable_version_} ({canary.rows:,} rows of {_digest(canary.heldout_sha256)}, "
            f"against {stable.rows:,} rows of {_digest(stable.heldout_sha256)}): figures on "
            "different rows are not comparable; package both with the same `--evaluate` file, "
            "or remove analysis.offlineGate",
        )
    ours, theirs = canary.metrics[metric], stable.metrics[metric]
    difference = ours - theirs
    slack = TOLERANCE * max(1.0, abs(ours), abs(theirs))
    if error_metric:  # smaller is better: canary <= stable + maxDrop
        bound, sign, worse = theirs + drop, "+", difference > drop + slack
        compared = ">" if worse else "<="
    else:  # canary >= stable - maxDrop
        bound, sign, worse = theirs - drop, "-", difference < -drop - slack
        compared = "<" if worse else ">="
    text = (
        f"canary {canary_version}'s held-out {metric} {_figure(ours)} {compared} stable "
        f"{stable_version_}'s {_figure(theirs)} {sign} maxDrop {_figure(drop)} "
        f"(= {_figure(bound)}), on the same {canary.rows:,} held-out rows"
    )
    if worse:
        return result("fail", "Failed", text, difference)
    return result("pass", "Successful", text, difference)


def _reads(
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    measurements: m.Measurements,
) -> dict[GateTrack, TrackRead]:
    if spec.canary is None:
        return {}
    versions = {"canary": spec.canary.model.version, "stable": stable_version(spec, status)}
    return {
        track: read_track(measurements, track=track, version=versions[track])
        for track in GATE_TRACKS
    }


def _figure(value: float) -> str:
    return f"{value:.6g}"


def _digest(digest: str | None) -> str:
    return f"sha256 {digest[:SHOWN_DIGEST]}..." if digest else "unknown data (no digest)"
