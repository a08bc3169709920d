"""The demo's report: `summary.json` (what happened, with every analysis's values) and a plot.

The plot needs matplotlib (`pip install 'canaryml[demo]'`); the summary needs nothing more.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

from canaryml_operator import api

from canaryml_cli.demo.record import DemoRecord

SUMMARY: Final = "summary.json"
PLOT: Final = "rollout.png"
VERDICT_COLOR: Final = {"Failed": "tab:red", "Successful": "tab:green"}
EVENT_LINES: Final = {"StepUp": ("grey", 0.8), "Promoted": ("tab:green", 1.5),
                      "RolledBack": ("tab:red", 1.5)}  # fmt: skip


class ReportError(RuntimeError):
    """The report could not be written in full."""


def _dump(model: Any) -> Any:
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)


def decision(record: DemoRecord) -> str | None:
    """Why the rollout ended: the RolledBack condition's message, or the Promoted Event's."""
    if record.outcome == "RolledBack":
        for condition in record.status.conditions:
            if condition.type == "RolledBack":
                return condition.message
    if record.outcome == "Promoted":
        for event in reversed(record.events):
            if event.reason == "Promoted":
                return event.message
    return None


def build_summary(record: DemoRecord) -> dict[str, Any]:
    finished = record.finished_at
    return {
        "name": record.name,
        "scenario": record.scenario,
        "metrics": record.metrics,
        "phase": record.outcome,
        "timedOut": record.timed_out,
        "startedAt": record.started_at.isoformat(),
        "finishedAt": finished.isoformat() if finished else None,
        "durationSeconds": record.seconds(finished) if finished else None,
        "decision": decision(record),
        "history": [_dump(entry) for entry in record.status.history],
        "analyses": [
            {**_dump(a), "seconds": round(record.seconds(a.time), 3)} for a in record.analyses
        ],
        "events": [
            {
                "time": e.time.isoformat(),
                "seconds": round(record.seconds(e.time), 3),
                "type": e.type,
                "reason": e.reason,
                "message": e.message,
            }
            for e in record.events
        ],
        "weights": [
            {"seconds": round(record.seconds(w.time), 3), "weight": w.weight}
            for w in record.weights
        ],
        "requests": dict(record.requests),
        "codes": {str(code): n for code, n in sorted(record.codes.items())},
        "thresholds": _dump(record.spec.analysis.thresholds),
        "spec": _dump(record.spec),
        "status": _dump(record.status),
    }


def write_summary(*, record: DemoRecord, path: Path) -> Path:
    path.write_text(json.dumps(build_summary(record), indent=2) + "\n")
    return path


def plot(*, record: DemoRecord, path: Path) -> Path:
    """Weight, error rate, p99 latency and drift over time, with thresholds and Events."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    limits = record.spec.analysis.thresholds
    figure = Figure(figsize=(10, 9), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(4, 1, sharex=True)
    end = record.seconds(record.finished_at) if record.finished_at else 0.0
    times = [0.0] + [record.seconds(w.time) for w in record.weights] + [end]
    weights = [0] + [w.weight for w in record.weights]
    axes[0].step(times, [*weights, weights[-1]], where="post", color="tab:blue")
    axes[0].set_ylabel("canary weight %")
    axes[0].set_ylim(-5, 105)
    panels: list[tuple[Any, str, str, float, float | None, str]] = [
        (axes[1], "error_rate", "error rate %", 100.0, limits.max_error_rate, "max"),
        (
            axes[2],
            "latency_p99",
            "p99 latency ms",
            1000.0,
            api.parse_duration(limits.max_latency_p99),
            "max",
        ),
        (axes[3], "drift", "drift (PSI)", 1.0, limits.max_drift, "max"),
    ]
    for ax, field, label, scale, bound, kind in panels:
        _series(ax, record, field, scale=scale, label=field.replace("_", " "))
        if field == "drift":
            _series(
                ax,
                record,
                "prediction_drift",
                scale=1.0,
                label="prediction drift",
                color="tab:orange",
            )
            if limits.max_prediction_drift is not None:
                ax.axhline(limits.max_prediction_drift, color="tab:orange", ls=":", lw=1)
        if bound is not None:
            text = f"{kind} {bound * scale:g}"
            ax.axhline(bound * scale, color="black", ls="--", lw=1, label=text)
        ax.set_ylabel(label)
        ax.legend(loc="upper left", fontsize=8)
    for event in record.events:
        style = EVENT_LINES.get(event.reason)
        if style is not None:
            for ax in axes:
                ax.axvline(record.seconds(event.time), color=style[0], lw=style[1], alpha=0.7)
    axes[-1].set_xlabel("seconds since start")
    figure.suptitle(f"{record.name}: {record.outcome} ({record.scenario})")
    reason = decision(record) or ""
    axes[0].set_title(reason if len(reason) < 110 else reason[:107] + "...", fontsize=8)
    figure.tight_layout()
    figure.savefig(path, format="png")
    return path


def _series(
    ax: Any, record: DemoRecord, field: str, *, scale: float, label: str, color: str = "tab:blue"
) -> None:
    points = [
        (record.seconds(a.time), getattr(a, field) * scale, a.verdict)
        for a in record.analyses
        if getattr(a, field) is not None
    ]
    if not points:
        return
    ax.plot([p[0] for p in points], [p[1] for p in points], color=color, lw=1, label=label)
    ax.scatter(
        [p[0] for p in points],
        [p[1] for p in points],
        c=[VERDICT_COLOR.get(p[2], "grey") for p in points],
        s=14,
        zorder=3,
    )


def write_report(*, record: DemoRecord, directory: Path) -> tuple[Path, Path]:
    """summary.json, then the plot; ReportError when matplotlib is missing (the summary is
    written all the same)."""
    directory.mkdir(parents=True, exist_ok=True)
    summary = write_summary(record=record, path=directory / SUMMARY)
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise ReportError(
            f"wrote {summary}; the plot needs matplotlib: pip install 'canaryml[demo]'"
        ) from None
    return summary, plot(record=record, path=directory / PLOT)
