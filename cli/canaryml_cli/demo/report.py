"""The demo's report: `summary.json` (what happened, with every analysis's values) and a plot.

The plot needs matplotlib (`pip install 'canaryml[demo]'`); the summary needs nothing more,
so matplotlib is imported only where the plot is drawn.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from canaryml_operator import api
from pydantic import BaseModel

from canaryml_cli.demo.record import DemoRecord

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

SUMMARY: Final = "summary.json"
PLOT: Final = "rollout.png"
NEEDS_MATPLOTLIB: Final = "the plot needs matplotlib: pip install 'canaryml[demo]'"
FIGSIZE: Final = (10.0, 9.0)  # inches; at DPI a 1000 x 900 PNG
DPI: Final = 100
VERDICT_COLORS: Final = {"Successful": "tab:green", "Failed": "tab:red"}
OTHER_VERDICT_COLOR: Final = "tab:gray"  # Inconclusive, Error
# Events drawn as vertical lines across every panel: (color, line width).
EVENT_LINES: Final = {
    "StepUp": ("tab:gray", 0.8),
    "Promoted": ("tab:green", 1.6),
    "RolledBack": ("tab:red", 1.6),
}
SUBTITLE_WIDTH: Final = 120  # characters of the deciding message under the title


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


@dataclass(frozen=True)
class _Series:
    """One analysis value drawn in a metric panel, with the threshold it is held against."""

    label: str
    value: Callable[[api.AnalysisRecord], float | None]
    bound: float
    color: str
    marker: str


@dataclass(frozen=True)
class _Panel:
    ylabel: str
    scale: float  # from the analysis's unit to the axis's (a fraction to %, seconds to ms)
    unit: str  # after a threshold's value in its label
    series: tuple[_Series, ...]


def _panels(record: DemoRecord) -> tuple[_Panel, ...]:
    limits = record.spec.analysis.thresholds
    return (
        _Panel(
            "error rate (%)",
            100.0,
            " %",
            (_Series("error rate", _error_rate, limits.max_error_rate, "tab:blue", "o"),),
        ),
        _Panel(
            "p99 latency (ms)",
            1000.0,
            " ms",
            (
                _Series(
                    "p99 latency",
                    _latency_p99,
                    api.parse_duration(limits.max_latency_p99),
                    "tab:blue",
                    "o",
                ),
            ),
        ),
        _Panel(
            "drift",
            1.0,
            "",
            (
                _Series("feature drift", _drift, limits.max_drift, "tab:blue", "o"),
                _Series(
                    "prediction drift",
                    _prediction_drift,
                    limits.max_prediction_drift,
                    "tab:orange",
                    "s",
                ),
            ),
        ),
    )


# Named functions rather than lambdas: mypy infers their `float | None` without help.
def _error_rate(analysis: api.AnalysisRecord) -> float | None:
    return analysis.error_rate


def _latency_p99(analysis: api.AnalysisRecord) -> float | None:
    return analysis.latency_p99


def _drift(analysis: api.AnalysisRecord) -> float | None:
    return analysis.drift


def _prediction_drift(analysis: api.AnalysisRecord) -> float | None:
    return analysis.prediction_drift


def build_figure(record: DemoRecord) -> Figure:
    """Canary weight, error rate, p99 latency and drift over time, with thresholds and Events.

    A Figure with an Agg canvas of its own: no pyplot, so no global backend or figure state.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    figure = Figure(figsize=FIGSIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    grid = figure.subplots(4, 1, sharex=True, squeeze=False)
    axes: list[Axes] = [row[0] for row in grid]
    end = _end(record)

    weight_axes = axes[0]
    times = [0.0, *(record.seconds(change.time) for change in record.weights)]
    weights = [0, *(change.weight for change in record.weights)]
    # Repeat the last weight at the end so the step reaches the right edge.
    weight_axes.step([*times, end], [*weights, weights[-1]], where="post", color="tab:blue")
    weight_axes.set_ylabel("canary weight (%)")
    weight_axes.set_ylim(-5, 105)
    weight_axes.set_yticks([0, 25, 50, 75, 100])

    for ax, panel in zip(axes[1:], _panels(record), strict=True):
        _draw_panel(ax, record=record, panel=panel)

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

    verdicts = [
        Line2D([], [], ls="", marker="o", color=color, label=verdict)
        for verdict, color in (*VERDICT_COLORS.items(), ("other verdict", OTHER_VERDICT_COLOR))
    ]
    handles, _ = weight_axes.get_legend_handles_labels()
    weight_axes.legend(handles=[*handles, *verdicts], loc="upper left", fontsize=8, ncols=3)

    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlim(0.0, end + max(1.0, 0.02 * end))  # a margin for the last points
    axes[-1].set_xlabel("seconds since start")
    figure.suptitle(f"{record.name}: {record.outcome} ({record.scenario})")
    weight_axes.set_title(_subtitle(record), fontsize=9)
    return figure


def _draw_panel(ax: Axes, *, record: DemoRecord, panel: _Panel) -> None:
    for series in panel.series:
        points = [
            (record.seconds(analysis.time), value * panel.scale, analysis.verdict)
            for analysis in record.analyses
            if (value := series.value(analysis)) is not None
        ]
        xs = [x for x, _, _ in points]
        ys = [y for _, y, _ in points]
        # Hollow markers in the series's color carry its shape into the legend; the filled
        # points drawn over them say each analysis's verdict.
        ax.plot(
            xs, ys, color=series.color, lw=1, marker=series.marker, mfc="none", label=series.label
        )
        ax.scatter(
            xs,
            ys,
            c=[VERDICT_COLORS.get(verdict, OTHER_VERDICT_COLOR) for _, _, verdict in points],
            marker=series.marker,
            edgecolors=series.color,
            linewidths=0.8,
            s=30,
            zorder=3,
        )
    # One black line when every series shares its bound, else one line per series in its color.
    if len({series.bound for series in panel.series}) == 1:
        lines = [(panel.series[0].bound, "black", "")]
    else:
        lines = [(series.bound, series.color, f" ({series.label})") for series in panel.series]
    for bound, color, suffix in lines:
        value = bound * panel.scale
        label = f"max {value:g}{panel.unit}{suffix}"
        ax.axhline(value, color=color, ls="--", lw=1, label=label)
    # Values are never negative: start at 0; and leave room above the threshold lines, which
    # autoscaling would put on the top edge of a panel without values.
    top = max(ax.get_ylim()[1], 1.15 * max(bound * panel.scale for bound, _, _ in lines))
    ax.set_ylim(0.0, top if top > 0 else 1.0)
    ax.set_ylabel(panel.ylabel)
    ax.legend(loc="upper left", fontsize=8)


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
