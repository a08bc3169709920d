"""The demo's report: `summary.json` (what happened, with every analysis's values) and a plot.

The plot needs matplotlib (`pip install 'canaryml[demo]'`); the summary needs nothing more,
so matplotlib is imported only where the plot is drawn.
"""

from __future__ import annotations

import json
import textwrap
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from canaryml_api import resource as api
from canaryml_operator import measurements as m
from canaryml_operator import verdicts
from canaryml_operator.measurements import P_VALUES, Measurements, notation, value_text
from pydantic import BaseModel

from canaryml_cli.demo.approval import APPROVAL_HOWTO, APPROVED_BY_DEMO
from canaryml_cli.demo.record import DemoRecord
from canaryml_cli.demo.values import axis_label

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SUMMARY: Final = "summary.json"
PLOT: Final = "rollout.png"
NEEDS_MATPLOTLIB: Final = "the plot needs matplotlib: pip install 'canaryml[demo]'"
# Inches: 10 wide; the title, the traffic panel and one panel per check high. At DPI, pixels.
FIG_WIDTH: Final = 10.0
TITLE_HEIGHT: Final = 0.8
WEIGHT_HEIGHT: Final = 1.8
PANEL_HEIGHT: Final = 1.3
DPI: Final = 100
# Each point in its own check's verdict's colour (the rollout core's four verdicts).
VERDICT_COLORS: Final = {
    "Successful": "tab:green",
    "Failed": "tab:red",
    "Inconclusive": "tab:gray",
    "Error": "tab:purple",
}
# A check shown next to those that judge, never judged itself (PSI beside the drift test).
SHOWN: Final = "shown, not judged"
POINT_COLORS: Final = {**VERDICT_COLORS, SHOWN: "tab:cyan"}
LINE_COLOR: Final = "tab:blue"
STABLE_COLOR: Final = "tab:orange"  # the stable track's own line, where a panel has one
MARKER_AREA: Final = 30.0  # points squared
# Of the values' span: below the lowest, so that a marker at 0 is not cut; above, the legend.
MARGIN_BELOW: Final = 0.15
MARGIN_ABOVE: Final = 0.35
# Panels' ids (Axes.get_gid), for whoever reads the Figure (tests): the traffic, and each check.
TRAFFIC_GID: Final = "traffic"
CHECK_GID: Final = "check:"  # + the check's name
PROMOTION_COMPLETE: Final = "PromotionComplete"
# Events drawn as vertical lines across every panel: (color, line width).
EVENT_LINES: Final = {
    "StepUp": ("tab:gray", 0.8),
    "Promoted": ("tab:green", 1.6),
    PROMOTION_COMPLETE: ("tab:green", 0.8),
    "RolledBack": ("tab:red", 1.6),
}
SUBTITLE_WIDTH: Final = 120  # characters of the deciding message under the title
# The smallest p-value drawn: smaller ones (1e-80 is common under real drift) sit on it.
P_VALUE_FLOOR: Final = 1e-12


class ReportError(RuntimeError):
    """The report could not be written in full (summary.json is written first regardless)."""


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def decision(record: DemoRecord) -> str | None:
    """Why the rollout ended: the RolledBack condition's message, or the last Promoted Event's."""
    if record.outcome == "RolledBack":
        for condition in record.status.conditions:
            if condition.type == "RolledBack":
                return condition.message or None
    elif record.outcome == "Promoted":
        for event in reversed(record.events):
            if event.reason == "Promoted":
                return event.message or None
    return None


def approval(record: DemoRecord) -> dict[str, Any] | None:
    """The approval gate's story (spec.canary.approval): when the promotion began to wait,
    how to approve it, and when and by whom it was approved; None when nothing awaited one."""

    def first(reason: str) -> Any:
        return next((event for event in record.events if event.reason == reason), None)

    awaited = first("AwaitingApproval")
    if awaited is None:
        return None
    howto, by_demo, promoted = first(APPROVAL_HOWTO), first(APPROVED_BY_DEMO), first("Promoted")
    return {
        "awaitedSeconds": _seconds(record, awaited.time),
        "awaited": awaited.message,
        "howTo": howto.message if howto else None,
        "approvedSeconds": _seconds(record, promoted.time) if promoted else None,
        "approvedBy": None if promoted is None else ("demo" if by_demo else "annotation"),
    }


def build_summary(record: DemoRecord) -> dict[str, Any]:
    """Everything the run decided and measured, ready for `json.dumps`."""
    finished = record.finished_at
    return {
        "name": record.name,
        "scenario": record.scenario,
        "metrics": record.metrics,
        "phase": record.outcome,
        "timedOut": record.timed_out,
        "startedAt": record.started_at.isoformat(),
        "finishedAt": finished.isoformat() if finished else None,
        "durationSeconds": _seconds(record, finished) if finished else None,
        "decision": decision(record),
        "approval": approval(record),
        "history": [_dump(entry) for entry in record.status.history],
        "analyses": [
            {**_dump(analysis), "seconds": _seconds(record, analysis.time)}
            for analysis in record.analyses
        ],
        "events": [
            {
                "time": event.time.isoformat(),
                "seconds": _seconds(record, event.time),
                "type": event.type,
                "reason": event.reason,
                "message": event.message,
            }
            for event in record.events
        ],
        "weights": [
            {"seconds": _seconds(record, change.time), "weight": change.weight}
            for change in record.weights
        ],
        "requests": dict(sorted(record.requests.items())),
        # JSON keys are strings; sorted numerically first so 500 follows 200, not "0".
        "codes": {str(code): count for code, count in sorted(record.codes.items())},
        # Labels sent back as feedback, by the status of the answer (0: none).
        "labels": {str(code): count for code, count in sorted(record.labels.items())},
        "specFile": str(record.spec_file) if record.spec_file else None,
        "trafficFile": str(record.traffic_file) if record.traffic_file else None,
        "thresholds": _dump(record.spec.analysis.thresholds),
        "spec": _dump(record.spec),
        "status": _dump(record.status),
    }


def _seconds(record: DemoRecord, time: datetime) -> float:
    # Milliseconds are all a reader (or a plot) of the summary needs.
    return round(record.seconds(time), 3)


def write_summary(*, record: DemoRecord, path: Path) -> Path:
    """`build_summary` as indented JSON with a trailing newline."""
    path.write_text(json.dumps(build_summary(record), indent=2) + "\n", encoding="utf-8")
    return path


def spec_checks(spec: api.ModelDeploymentSpec) -> list[verdicts.CheckResult]:
    """Every check of `spec`'s analyses with its bounds, in the rollout core's order.

    Asked of the rollout core itself (it judges an analysis that measured nothing), so that the
    plot has a panel for exactly the checks the operator judges: requests, the built-ins, the
    shadow agreement when a shadow gets traffic, and the custom metrics.
    """
    nothing = Measurements(time=datetime.fromtimestamp(0, UTC))
    return verdicts.judge(spec=spec, measurements=nothing)


@dataclass(frozen=True)
class _Points:
    """One check's values over the analyses, each with the check's own verdict."""

    xs: list[float]
    ys: list[float]  # in the shown unit (measurements.notation)
    verdicts: list[str]


def _points(record: DemoRecord, check: str) -> _Points:
    points = _Points([], [], [])
    scale = notation(check).scale
    for analysis in record.analyses:
        # A check without a value (no data, or the query failed) has no point: drawn anywhere,
        # it would read as a value.
        found = next((c for c in analysis.checks if c.name == check), None)
        if found is not None and found.value is not None:
            points.xs.append(record.seconds(analysis.time))
            points.ys.append(found.value * scale)
            points.verdicts.append(found.verdict)
    return points


def track_accuracy(record: DemoRecord, track: Literal["canary", "stable"]) -> _Points:
    """A track's accuracy on the labels that arrived since the step began, at each analysis
    that counted them (the counts the accuracy checks judge; stable's only when the spec
    compares the canary with it), as fractions."""
    points = _Points([], [], [])
    for analysis in record.analyses:
        measured = record.measured.get(analysis.time)
        if measured is None:
            continue
        labelled = measured.get(m.count_name(track, "labelled")).value
        correct = measured.get(m.count_name(track, "correct")).value
        if labelled and correct is not None and labelled > 0:
            points.xs.append(record.seconds(analysis.time))
            points.ys.append(min(correct / labelled, 1.0))
            points.verdicts.append(SHOWN)
    return points


def canary_model_share(record: DemoRecord) -> tuple[list[float], list[int]]:
    """(seconds, % of the traffic) the canary's model gets: its canary weight, and 100 % once
    a promotion completed, when the stable track serves it: the canary weight's drop to 0
    then is no rollback."""
    completed = next((e.time for e in record.events if e.reason == PROMOTION_COMPLETE), None)
    times, shares = [0.0], [0]
    for change in record.weights:
        times.append(record.seconds(change.time))
        # The same decision's time: the Event and the weight it set.
        promoted = completed is not None and change.time >= completed
        shares.append(100 if promoted else change.weight)
    return times, shares


def build_figure(record: DemoRecord) -> Figure:
    """The canary model's share of the traffic, then one panel per check of the spec, each
    point coloured by that check's own verdict, with its bounds and the Events.

    A Figure with an Agg canvas of its own: no pyplot, so no global backend or figure state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    checks = spec_checks(record.spec)
    height = TITLE_HEIGHT + WEIGHT_HEIGHT + PANEL_HEIGHT * len(checks)
    figure = Figure(figsize=(FIG_WIDTH, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(
        1 + len(checks),
        1,
        sharex=True,
        squeeze=False,
        gridspec_kw={"height_ratios": [WEIGHT_HEIGHT] + [PANEL_HEIGHT] * len(checks)},
    )
    axes: list[Axes] = [row[0] for row in grid]
    end = _end(record)

    weight_axes = axes[0]
    weight_axes.set_gid(TRAFFIC_GID)
    times, shares = canary_model_share(record)
    # Repeat the last share at the end so the step reaches the right edge.
    weight_axes.step([*times, end], [*shares, shares[-1]], where="post", color=LINE_COLOR)
    version = record.spec.canary.model.version if record.spec.canary else "the canary"
    weight_axes.set_ylabel(f"traffic to {version} (%)")
    weight_axes.set_ylim(-5, 105)
    weight_axes.set_yticks([0, 25, 50, 75, 100])

    verdicts: set[str] = set()
    for ax, check in zip(axes[1:], checks, strict=True):
        verdicts.update(_draw_check(ax, record=record, check=check).verdicts)

    drawn: set[str] = set()
    for event in record.events:
        style = EVENT_LINES.get(event.reason)
        if style is None:
            continue
        color, width = style
        for ax in axes:
            # Labelled once, in the weight panel only, so its legend explains the lines.
            label = event.reason if ax is weight_axes and event.reason not in drawn else None
            ax.axvline(
                record.seconds(event.time),
                color=color,
                lw=width,
                alpha=0.8,
                zorder=1,
                label=label,
                gid=f"event:{event.reason}",
            )
        drawn.add(event.reason)
    _legend(weight_axes, verdicts=verdicts)

    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlim(0.0, end + max(1.0, 0.02 * end))  # a margin for the last points
    axes[-1].set_xlabel("seconds since start")
    figure.suptitle(f"{record.name}: {record.outcome} ({record.label})")
    weight_axes.set_title(_subtitle(record), fontsize=9)
    return figure


def _draw_check(ax: Axes, *, record: DemoRecord, check: verdicts.CheckResult) -> _Points:
    ax.set_gid(f"{CHECK_GID}{check.name}")
    points = _points(record, check.name)
    scale = notation(check.name).scale
    p_values = check.name in P_VALUES
    if check.informational:
        points.verdicts[:] = [SHOWN] * len(points.verdicts)
    if p_values:
        points.ys[:] = [max(y, P_VALUE_FLOOR) for y in points.ys]
    if points.xs:
        # The accuracy panel has both tracks: the canary's line is the one judged.
        track = "canary" if check.name == m.ACCURACY else None
        ax.plot(points.xs, points.ys, color=LINE_COLOR, lw=0.8, alpha=0.6, zorder=2, label=track)
        ax.scatter(
            points.xs,
            points.ys,
            c=[POINT_COLORS[verdict] for verdict in points.verdicts],
            s=MARKER_AREA,
            zorder=3,
        )
    elif any(c.name == check.name for analysis in record.analyses for c in analysis.checks):
        # Judged, never with a value to draw: a ratio to a stable track with no such event.
        ax.text(0.5, 0.5, "judged, no value to draw (see summary.json)", ha="center",
                va="center", transform=ax.transAxes, fontsize=8, color="tab:gray")  # fmt: skip
    stable = track_accuracy(record, "stable") if check.name == m.ACCURACY else _Points([], [], [])
    if stable.xs:
        ax.plot(stable.xs, [y * scale for y in stable.ys], color=STABLE_COLOR,
                lw=1.2, zorder=2, label="stable", gid="track:stable")  # fmt: skip
    bounds = [(side, b) for side, b in (("min", check.min), ("max", check.max)) if b is not None]
    for side, bound in bounds:
        label = f"{side} {value_text(check.name, bound)}"
        ax.axhline(bound * scale, color="black", ls="--", lw=1, label=label)
    if bounds or stable.xs:
        # Below both tracks' lines on the accuracy panel (accuracies sit near the top).
        ax.legend(loc="lower right" if stable.xs else "upper right", fontsize=8, ncols=3)
    if p_values:
        ax.set_yscale("log")
        ax.set_ylim(P_VALUE_FLOOR / 10, 10.0)
    else:
        # Room below 0 so that a point at 0 shows whole, and above for the legend.
        shown = [0.0, *points.ys, *(y * scale for y in stable.ys)]
        shown += [bound * scale for _, bound in bounds]
        low, high = min(shown), max(shown)
        span = (high - low) or 1.0
        ax.set_ylim(low - MARGIN_BELOW * span, high + MARGIN_ABOVE * span)
    ax.set_ylabel(axis_label(check.name), fontsize=9)
    return points


def _legend(ax: Axes, *, verdicts: set[str]) -> None:
    """The Events' lines, then each verdict that occurs, by its name."""
    from matplotlib.lines import Line2D

    handles, _ = ax.get_legend_handles_labels()
    for verdict, color in POINT_COLORS.items():
        if verdict in verdicts:
            handles.append(Line2D([], [], ls="", marker="o", color=color, label=verdict))
    if handles:
        ax.legend(handles=handles, loc="upper left", fontsize=8, ncols=4)


def _end(record: DemoRecord) -> float:
    """Seconds to the end of the run, or to the last thing it saw if it has not finished."""
    times = [
        *(analysis.time for analysis in record.analyses),
        *(event.time for event in record.events),
        *(change.time for change in record.weights),
    ]
    if record.finished_at is not None:
        times.append(record.finished_at)
    return max([0.0, *(record.seconds(time) for time in times)])


def _subtitle(record: DemoRecord) -> str:
    reason = decision(record)
    if reason is None and record.timed_out:
        reason = "--duration ran out before the rollout ended"
    return textwrap.shorten(reason or "", width=SUBTITLE_WIDTH, placeholder=" ...")


def plot(*, record: DemoRecord, path: Path) -> Path:
    """`build_figure` saved as a PNG at `path`."""
    build_figure(record).savefig(path, format="png")
    return path


def write_report(*, record: DemoRecord, directory: Path) -> tuple[Path, Path]:
    """summary.json and rollout.png in `directory` (created if missing).

    Raises ReportError when matplotlib is missing, after summary.json is written, so a run
    without the plot still leaves its data behind.
    """
    directory.mkdir(parents=True, exist_ok=True)
    summary = write_summary(record=record, path=directory / SUMMARY)
    try:
        image = plot(record=record, path=directory / PLOT)
    except ImportError as error:
        raise ReportError(NEEDS_MATPLOTLIB) from error
    return summary, image
