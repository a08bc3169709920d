"""The demo's report: summary.json's content and the plot, drawn from a hand-built record."""

from __future__ import annotations

import builtins
import json
import struct
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from canaryml_cli.demo.record import DemoRecord, TimedEvent, WeightChange
from canaryml_cli.demo.report import (
    NEEDS_MATPLOTLIB,
    ReportError,
    build_figure,
    build_summary,
    plot,
    write_report,
    write_summary,
)
from canaryml_operator import api
from matplotlib.colors import to_rgba
from matplotlib.lines import Line2D

from tests.unit.specs import CANARY_MODEL, MINIMAL

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ROLLBACK = "canary 1.1.0 rolled back at 25%: errorRate 0.2 > max 0.05 (2 failed analyses)"
SUMMARY_KEYS = {
    "name", "scenario", "metrics", "phase", "timedOut", "startedAt", "finishedAt",
    "durationSeconds", "decision", "history", "analyses", "events", "weights", "requests",
    "codes", "thresholds", "spec", "status",
}  # fmt: skip


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_spec() -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate(
        {
            **MINIMAL,
            "canary": {"model": CANARY_MODEL, "steps": [10, 25, 50], "stepInterval": "10s"},
            "analysis": {"interval": "10s", "minRequests": 10, "failureLimit": 2},
        }
    )


def analysis(
    seconds: float, verdict: str, *, weight: int, error_rate: float | None, **values: Any
) -> api.AnalysisRecord:
    check = api.CheckRecord(
        name="errorRate",
        verdict="Failed" if verdict == "Failed" else "Successful",
        value=error_rate,
        max=0.05,
    )
    return api.AnalysisRecord(
        time=at(seconds),
        verdict=verdict,
        step=[10, 25, 50].index(weight),
        weight=weight,
        error_rate=error_rate,
        requests=120.0,
        checks=[check],
        **values,
    )


def rolled_back() -> DemoRecord:
    """Two steps up, a good analysis, two failed ones, and the rollback they caused."""
    record = DemoRecord(
        name="breast-cancer", scenario="errors", metrics="scrape", started_at=T0, spec=make_spec()
    )
    record.analyses += [
        analysis(10, "Successful", weight=10, error_rate=0.01, latency_p99=0.004, drift=0.02),
        analysis(20, "Failed", weight=25, error_rate=0.2, latency_p99=0.006, prediction_drift=0.1),
        analysis(30, "Failed", weight=25, error_rate=0.21, latency_p99=0.3, drift=0.5),
    ]
    record.events += [
        TimedEvent(at(1), "Normal", "StepUp", "to 10%"),
        TimedEvent(at(12), "Normal", "StepUp", "to 25%"),
        TimedEvent(at(30.5), "Warning", "RolledBack", ROLLBACK),
    ]
    record.weights += [
        WeightChange(at(1), 10),
        WeightChange(at(12), 25),
        WeightChange(at(30.5), 0),
    ]
    record.requests.update({"stable": 900, "canary": 100})
    record.codes.update({500: 20, 200: 980})
    record.status = api.ModelDeploymentStatus(
        phase="RolledBack",
        canary_weight=0,
        failed_checks=2,
        last_analysis=record.analyses[-1],
        history=[
            api.HistoryEntry(
                version="1.1.0", uri=CANARY_MODEL["uri"], event="rolledBack", time=at(30.5)
            )
        ],
        conditions=[
            api.Condition(
                type="RolledBack",
                status="True",
                reason="AnalysisFailed",
                message=ROLLBACK,
                last_transition_time=at(30.5),
            )
        ],
    )
    record.finished_at = at(32.25)
    return record


def xs(line: Line2D) -> list[float]:
    return [float(x) for x in np.asarray(line.get_xdata())]


def ys(line: Line2D) -> list[float]:
    return [float(y) for y in np.asarray(line.get_ydata())]


def empty() -> DemoRecord:
    return DemoRecord(name="x", scenario="good", metrics="scrape", started_at=T0, spec=make_spec())


def test_the_summary_says_what_was_decided_and_measured() -> None:
    record = rolled_back()
    summary = build_summary(record)
    assert set(summary) == SUMMARY_KEYS
    assert summary["phase"] == "RolledBack" and summary["decision"] == ROLLBACK
    assert (summary["name"], summary["scenario"], summary["metrics"]) == (
        "breast-cancer", "errors", "scrape"
    )  # fmt: skip
    assert summary["timedOut"] is False
    assert summary["startedAt"] == "2026-11-23T12:00:00+00:00"
    assert summary["durationSeconds"] == 32.25
    analyses = summary["analyses"]
    assert [a["errorRate"] for a in analyses] == [0.01, 0.2, 0.21]
    assert [a["seconds"] for a in analyses] == [10.0, 20.0, 30.0]
    assert [a["verdict"] for a in analyses] == ["Successful", "Failed", "Failed"]
    assert analyses[0]["latencyP99"] == 0.004  # seconds, as the analysis recorded it
    assert "predictionDrift" not in analyses[0]  # None values are left out
    assert analyses[1]["checks"] == [
        {"name": "errorRate", "verdict": "Failed", "value": 0.2, "max": 0.05, "message": ""}
    ]
    assert [(e["seconds"], e["reason"]) for e in summary["events"]] == [
        (1.0, "StepUp"), (12.0, "StepUp"), (30.5, "RolledBack")
    ]  # fmt: skip
    assert summary["events"][2]["type"] == "Warning"
    assert summary["weights"] == [
        {"seconds": 1.0, "weight": 10},
        {"seconds": 12.0, "weight": 25},
        {"seconds": 30.5, "weight": 0},
    ]
    assert summary["requests"] == {"canary": 100, "stable": 900}
    assert summary["codes"] == {"200": 980, "500": 20}
    assert list(summary["codes"]) == ["200", "500"]
    assert summary["thresholds"] == {
        "maxErrorRate": 0.05,
        "maxLatencyP99": "250ms",
        "maxDrift": 0.25,
        "maxPredictionDrift": 0.25,
        "minShadowAgreement": 0.9,
    }
    assert [(h["event"], h["version"]) for h in summary["history"]] == [("rolledBack", "1.1.0")]
    assert summary["status"]["conditions"][0]["message"] == ROLLBACK
    # The dumped spec and status read back as the same models (camelCase aliases).
    assert api.ModelDeploymentSpec.model_validate(summary["spec"]) == record.spec
    assert api.ModelDeploymentStatus.model_validate(summary["status"]) == record.status


def test_summary_json_round_trips(tmp_path: Path) -> None:
    record = rolled_back()
    path = write_summary(record=record, path=tmp_path / "summary.json")
    text = path.read_text()
    assert text.endswith("}\n") and text.startswith('{\n  "name": "breast-cancer"')
    assert json.loads(text) == build_summary(record)


def test_a_promotion_is_explained_by_its_last_promoted_event() -> None:
    record = empty()
    record.status = api.ModelDeploymentStatus(phase="Promoted")
    record.events += [
        TimedEvent(at(5), "Normal", "Promoted", "first"),
        TimedEvent(at(9), "Normal", "Promoted", "canary 1.1.0 promoted after 3 steps"),
        TimedEvent(at(10), "Normal", "PromotionComplete", "stable serves 1.1.0"),
    ]
    assert build_summary(record)["decision"] == "canary 1.1.0 promoted after 3 steps"


@pytest.mark.parametrize("phase", [None, "Progressing", "RolledBack"])
def test_no_decision_without_an_outcome_or_its_reason(phase: Any) -> None:
    record = empty()
    record.status = api.ModelDeploymentStatus(phase=phase)  # RolledBack with no condition
    record.events.append(TimedEvent(at(1), "Normal", "Promoted", "not this run's outcome"))
    summary = build_summary(record)
    assert summary["decision"] is None
    assert summary["phase"] == (phase or "Pending")
    assert summary["finishedAt"] is None and summary["durationSeconds"] is None


def test_the_plot_is_a_1000_by_900_png(tmp_path: Path) -> None:
    path = plot(record=rolled_back(), path=tmp_path / "rollout.png")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG")
    assert len(data) > 10_000
    assert struct.unpack(">II", data[16:24]) == (1000, 900)  # IHDR: width, height


def test_the_figure_has_four_panels_thresholds_verdicts_and_events() -> None:
    record = rolled_back()
    figure = build_figure(record)
    weight, errors, latency, drift = figure.axes
    assert figure.get_suptitle() == "breast-cancer: RolledBack (errors)"
    assert weight.get_title() == ROLLBACK
    # The weight steps from 0 through every change and holds the last one to the end.
    step = weight.lines[0]
    assert xs(step) == [0.0, 1.0, 12.0, 30.5, 32.25]
    assert ys(step) == [0, 10, 25, 0, 0]
    assert errors.get_legend_handles_labels()[1] == ["error rate", "max 5 %"]
    assert latency.get_legend_handles_labels()[1] == ["p99 latency", "max 250 ms"]
    # Both drift thresholds are 0.25: one line for both.
    assert drift.get_legend_handles_labels()[1] == ["feature drift", "prediction drift", "max 0.25"]
    assert ys(errors.lines[0]) == pytest.approx([1.0, 20.0, 21.0])
    assert ys(latency.lines[0]) == pytest.approx([4.0, 6.0, 300.0])
    # None values are skipped: feature drift at 10 s and 30 s, prediction drift at 20 s.
    assert xs(drift.lines[0]) == [10.0, 30.0]
    assert xs(drift.lines[1]) == [20.0]
    red, green = to_rgba("tab:red"), to_rgba("tab:green")
    assert [tuple(c) for c in np.asarray(errors.collections[0].get_facecolor())] == [
        green,
        red,
        red,
    ]
    for ax in figure.axes:
        events = [(line.get_gid(), xs(line)[0]) for line in ax.lines if line.get_gid()]
        assert events == [("event:StepUp", 1.0), ("event:StepUp", 12.0), ("event:RolledBack", 30.5)]


def test_a_different_prediction_drift_bound_gets_its_own_line() -> None:
    record = rolled_back()
    spec = record.spec.model_dump(by_alias=True, exclude_none=True)
    spec["analysis"]["thresholds"] = {"maxPredictionDrift": 0.4}
    record.spec = api.ModelDeploymentSpec.model_validate(spec)
    labels = build_figure(record).axes[3].get_legend_handles_labels()[1]
    assert labels[2:] == ["max 0.25 (feature drift)", "max 0.4 (prediction drift)"]


def test_an_empty_run_or_one_without_values_plots_without_a_warning(tmp_path: Path) -> None:
    no_values = empty()
    no_values.analyses += [
        api.AnalysisRecord(time=at(5), verdict="Inconclusive"),
        api.AnalysisRecord(time=at(10), verdict="Error"),
    ]
    no_values.timed_out = True
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # e.g. an empty legend or identical axis limits
        for name, record in (("empty", empty()), ("none", no_values)):
            path = plot(record=record, path=tmp_path / f"{name}.png")
            assert path.read_bytes().startswith(b"\x89PNG")
    # Garbage collection may finalise another test's leftovers meanwhile: not the plot's.
    unrelated = (ResourceWarning, pytest.PytestUnraisableExceptionWarning)
    assert [str(w.message) for w in caught if not issubclass(w.category, unrelated)] == []
    assert build_figure(no_values).axes[0].get_title() == (
        "--duration ran out before the rollout ended"
    )


def test_a_long_decision_is_shortened_in_the_subtitle() -> None:
    record = rolled_back()
    long = "errorRate too high; " * 20
    record.status = record.status.model_copy(
        update={"conditions": [record.status.conditions[0].model_copy(update={"message": long})]}
    )
    title = build_figure(record).axes[0].get_title()
    assert title.endswith(" ...") and len(title) <= 120
    assert build_summary(record)["decision"] == long  # the summary keeps it whole


def test_write_report_creates_the_directory_and_writes_both(tmp_path: Path) -> None:
    directory = tmp_path / "out" / "report"
    summary, image = write_report(record=rolled_back(), directory=directory)
    assert (summary, image) == (directory / "summary.json", directory / "rollout.png")
    assert json.loads(summary.read_text())["phase"] == "RolledBack"
    assert image.read_bytes().startswith(b"\x89PNG")


def test_without_matplotlib_the_summary_is_written_and_then_report_error_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = builtins.__import__

    def no_matplotlib(name: str, *args: Any, **kwargs: Any) -> Any:
        # Even when matplotlib is already loaded, as it is once another test has plotted.
        if name.partition(".")[0] == "matplotlib":
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ReportError) as raised:
        write_report(record=rolled_back(), directory=tmp_path)
    assert str(raised.value) == NEEDS_MATPLOTLIB
    assert str(raised.value) == "the plot needs matplotlib: pip install 'canaryml[demo]'"
    assert isinstance(raised.value, RuntimeError)
    assert json.loads((tmp_path / "summary.json").read_text())["decision"] == ROLLBACK
    assert not (tmp_path / "rollout.png").exists()
