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
from canaryml_api import resource as api
from canaryml_cli.demo.record import DemoRecord, TimedEvent, WeightChange
from canaryml_cli.demo.report import (
    DPI,
    MARKER_AREA,
    NEEDS_MATPLOTLIB,
    PANEL_HEIGHT,
    VERDICT_COLORS,
    ReportError,
    build_figure,
    build_summary,
    plot,
    write_report,
    write_summary,
)
from matplotlib.axes import Axes
from matplotlib.collections import PathCollection
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from tests.unit.specs import CANARY_MODEL, MINIMAL

T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
ROLLBACK = "canary 1.1.0 rolled back at 25%: errorRate 20.0 % > max 5.0 % (2 failed analyses)"
SUMMARY_KEYS = {
    "name", "scenario", "metrics", "phase", "timedOut", "startedAt", "finishedAt",
    "durationSeconds", "decision", "history", "analyses", "events", "weights", "requests",
    "codes", "labels", "specFile", "trafficFile", "thresholds", "spec", "status", "approval",
}  # fmt: skip


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_spec(*, analysis: dict[str, Any] | None = None, **extra: Any) -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate(
        {
            **MINIMAL,
            "canary": {"model": CANARY_MODEL, "steps": [10, 25, 50], "stepInterval": "10s"},
            "analysis": {
                "interval": "10s",
                "minRequests": 10,
                "failureLimit": 2,
                **(analysis or {}),
            },
            **extra,
        }
    )


# The status fields of the built-in checks, as the rollout core fills them in.
FIELDS = {
    "requests": "requests",
    "errorRate": "error_rate",
    "latencyP99": "latency_p99",
    "drift": "drift",
    "predictionDrift": "prediction_drift",
    "shadowAgreement": "shadow_agreement",
}


def analysis(
    seconds: float, verdict: str, *, weight: int, **checks: tuple[float | None, str]
) -> api.AnalysisRecord:
    """An analysis with the given checks, each (value, its own verdict)."""
    records = [
        api.CheckRecord(name=name, verdict=check_verdict, value=value)
        for name, (value, check_verdict) in checks.items()
    ]
    return api.AnalysisRecord(
        time=at(seconds),
        verdict=verdict,
        step=[10, 25, 50].index(weight),
        weight=weight,
        checks=records,
        **{FIELDS[name]: value for name, (value, _) in checks.items() if name in FIELDS},
    )


OK = "Successful"


def rolled_back() -> DemoRecord:
    """Two steps up, a good analysis, two failed ones, and the rollback they caused."""
    record = DemoRecord(
        name="breast-cancer", scenario="errors", metrics="scrape", started_at=T0, spec=make_spec()
    )
    record.analyses += [
        analysis(
            10, OK, weight=10, requests=(120.0, OK), errorRate=(0.01, OK),
            latencyP99=(0.004, OK), drift=(0.02, OK), predictionDrift=(None, "Inconclusive"),
        ),
        analysis(
            20, "Failed", weight=25, requests=(120.0, OK), errorRate=(0.2, "Failed"),
            latencyP99=(0.006, OK), drift=(None, "Error"), predictionDrift=(0.1, OK),
        ),
        analysis(
            30, "Failed", weight=25, requests=(120.0, OK), errorRate=(0.21, "Failed"),
            latencyP99=(0.3, "Failed"), drift=(0.5, "Failed"), predictionDrift=(None, "Error"),
        ),
    ]  # fmt: skip
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
    assert summary["approval"] is None  # no approval gate in this spec
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
    assert analyses[1]["checks"][1] == {
        "name": "errorRate", "verdict": "Failed", "value": 0.2, "message": ""
    }  # fmt: skip
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


def with_shadow(**analysis: Any) -> api.ModelDeploymentSpec:
    shadow = {"model": {"uri": "s3://models/iris/9.0.0", "version": "9.0.0"}, "percent": 100}
    return make_spec(shadow=shadow, analysis=analysis)


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG") and len(data) > 10_000
    width, height = struct.unpack(">II", data[16:24])  # IHDR
    return width, height


def test_the_plot_is_a_png_1000_wide_and_one_panel_taller_per_check(tmp_path: Path) -> None:
    record = rolled_back()
    width, height = png_size(plot(record=record, path=tmp_path / "rollout.png"))
    record.spec = with_shadow()
    wider = png_size(plot(record=record, path=tmp_path / "shadow.png"))
    assert width == 1000
    assert wider == (width, height + round(PANEL_HEIGHT * DPI))


def panels(figure: Figure) -> dict[str, Axes]:
    return {str(ax.get_gid()): ax for ax in figure.axes}


def points(ax: Axes) -> tuple[list[float], list[tuple[float, ...]]]:
    """The y values and face colours of a check panel's points."""
    scatters = [c for c in ax.collections if isinstance(c, PathCollection)]
    if not scatters:
        return [], []
    (scatter,) = scatters
    offsets = np.asarray(scatter.get_offsets())
    return [float(y) for y in offsets[:, 1]], [tuple(c) for c in scatter.get_facecolor()]


COLOR = {verdict: to_rgba(color) for verdict, color in VERDICT_COLORS.items()}


def test_every_check_of_the_spec_has_a_panel_with_its_bounds_in_its_unit() -> None:
    record = rolled_back()
    assert list(panels(build_figure(record))) == [
        "traffic", "check:requests", "check:errorRate", "check:latencyP99", "check:drift",
        "check:predictionDrift",
    ]  # fmt: skip
    custom = {"name": "orders", "query": "sum(rate(orders_total[1m]))", "min": 0.1, "max": 10}
    record.spec = with_shadow(metrics=[custom])
    figure = build_figure(record)
    found = panels(figure)
    assert list(found)[-2:] == ["check:shadowAgreement", "check:orders"]
    legends = {gid: ax.get_legend_handles_labels()[1] for gid, ax in found.items()}
    assert legends["check:requests"] == ["min 10"]
    assert legends["check:errorRate"] == ["max 5.0 %"]
    assert legends["check:latencyP99"] == ["max 250.0 ms"]
    assert legends["check:drift"] == ["max 0.250"]
    assert legends["check:shadowAgreement"] == ["min 90.0 %"]
    assert legends["check:orders"] == ["min 0.100", "max 10.000"]
    labels = {gid: ax.get_ylabel() for gid, ax in found.items()}
    assert labels["check:errorRate"] == "error rate (%)"
    assert labels["check:latencyP99"] == "p99 latency (ms)"
    assert labels["check:shadowAgreement"] == "shadow agreement (%)"
    assert labels["check:orders"] == "orders"


def test_each_point_has_the_colour_of_its_own_checks_verdict() -> None:
    found = panels(build_figure(rolled_back()))
    ok, failed = COLOR["Successful"], COLOR["Failed"]
    values, colors = points(found["check:errorRate"])
    assert values == pytest.approx([1.0, 20.0, 21.0])  # percent
    assert colors == [ok, failed, failed]
    values, colors = points(found["check:latencyP99"])
    assert values == pytest.approx([4.0, 6.0, 300.0])  # milliseconds
    assert colors == [ok, ok, failed]
    # Checks without a value (no data, a failed query) have no point.
    assert points(found["check:drift"]) == ([0.02, 0.5], [ok, failed])
    assert points(found["check:predictionDrift"]) == ([0.1], [ok])


def shadow_disagree() -> DemoRecord:
    """The shadow-disagree scenario as it runs: too few canary requests for the request
    checks, no drift data yet, and a shadow agreement far below its bound."""
    record = DemoRecord(
        name="breast-cancer",
        scenario="shadow-disagree",
        metrics="scrape",
        started_at=T0,
        spec=with_shadow(minRequests=20),
    )
    held = "Inconclusive"
    for seconds, requests, agreement in ((7.4, 9.0, 0.214), (9.4, 17.0, 0.18)):
        record.analyses.append(
            analysis(
                seconds,
                "Failed",
                weight=10,
                requests=(requests, held),
                errorRate=(0.0, held),
                latencyP99=(0.0096, held),
                drift=(None, held),
                predictionDrift=(None, held),
                shadowAgreement=(agreement, "Failed"),
            )
        )
    record.events += [
        TimedEvent(at(5), "Normal", "StepUp", "to 10%"),
        TimedEvent(at(9.4), "Warning", "RolledBack", "shadowAgreement 18.0 % < min 90.0 %"),
    ]
    record.weights += [WeightChange(at(5), 10), WeightChange(at(9.4), 0)]
    record.status = api.ModelDeploymentStatus(phase="RolledBack")
    record.finished_at = at(15)
    return record


def test_shadow_disagree_fails_in_the_shadow_agreement_panel_only() -> None:
    figure = build_figure(shadow_disagree())
    found = panels(figure)
    failed, held = COLOR["Failed"], COLOR["Inconclusive"]
    with_red = {gid for gid, ax in found.items() if gid != "traffic" and failed in points(ax)[1]}
    assert with_red == {"check:shadowAgreement"}
    assert points(found["check:shadowAgreement"]) == (pytest.approx([21.4, 18.0]), [failed] * 2)
    assert points(found["check:errorRate"])[1] == [held, held]
    assert points(found["check:latencyP99"])[1] == [held, held]
    # The verdicts that occur, by their names, after the Events' lines.
    assert found["traffic"].get_legend_handles_labels()[1] == ["StepUp", "RolledBack"]
    legend = found["traffic"].get_legend()
    assert [text.get_text() for text in legend.get_texts()] == [
        "StepUp", "RolledBack", "Failed", "Inconclusive"
    ]  # fmt: skip
    assert figure.get_suptitle() == "breast-cancer: RolledBack (shadow-disagree)"


def test_a_point_at_zero_shows_whole() -> None:
    figure = build_figure(shadow_disagree())
    figure.canvas.draw()  # the constrained layout places the panels when drawn
    radius = np.sqrt(MARKER_AREA) / 2 * DPI / 72  # pixels
    for gid in ("check:errorRate", "check:drift"):
        ax = panels(figure)[gid]
        foot = ax.get_window_extent().y0
        zero = ax.transData.transform((1.0, 0.0))[1]
        assert zero - foot > radius, gid
    # And an empty panel still shows 0 above its foot.
    assert panels(figure)["check:drift"].get_ylim()[0] < 0


def promoted() -> DemoRecord:
    """Three steps up, the promotion, and the canary weight back to 0 once it completed."""
    record = empty()
    for seconds, weight in ((1, 10), (12, 25), (23, 50)):
        record.events.append(TimedEvent(at(seconds), "Normal", "StepUp", f"to {weight}%"))
        record.weights.append(WeightChange(at(seconds), weight))
    record.events += [
        TimedEvent(at(34), "Normal", "Promoted", "canary 1.1.0 promoted to stable"),
        TimedEvent(at(36.5), "Normal", "PromotionComplete", "canary weight 50% -> 0%"),
    ]
    record.weights.append(WeightChange(at(36.5), 0))
    record.status = api.ModelDeploymentStatus(phase="Promoted")
    record.finished_at = at(40)
    return record


def test_a_promotion_gives_the_canary_model_all_the_traffic_not_none() -> None:
    traffic = panels(build_figure(promoted()))["traffic"]
    step = traffic.lines[0]
    assert xs(step) == [0.0, 1.0, 12.0, 23.0, 36.5, 40.0]
    assert ys(step) == [0, 10, 25, 50, 100, 100]
    assert traffic.get_ylabel() == "traffic to 1.1.0 (%)"
    events = {line.get_gid(): line.get_color() for line in traffic.lines if line.get_gid()}
    assert events == {
        "event:StepUp": "tab:gray",
        "event:Promoted": "tab:green",
        "event:PromotionComplete": "tab:green",
    }
    # A rollback's drop stays a drop, at its red line.
    traffic = panels(build_figure(rolled_back()))["traffic"]
    assert ys(traffic.lines[0]) == [0, 10, 25, 0, 0]
    assert [xs(line)[0] for line in traffic.lines if line.get_gid() == "event:RolledBack"] == [30.5]


def test_events_are_lines_across_every_panel_and_the_subtitle_says_why() -> None:
    figure = build_figure(rolled_back())
    assert figure.get_suptitle() == "breast-cancer: RolledBack (errors)"
    assert figure.axes[0].get_title() == ROLLBACK
    for ax in figure.axes:
        events = [(line.get_gid(), xs(line)[0]) for line in ax.lines if line.get_gid()]
        assert events == [("event:StepUp", 1.0), ("event:StepUp", 12.0), ("event:RolledBack", 30.5)]


@pytest.mark.parametrize(
    ("scenario", "title"),
    [
        ("good", "breast-cancer: RolledBack (--spec mine.yaml)"),
        # A fault the demo injected into the user's canary is said, by its option.
        ("errors", "breast-cancer: RolledBack (--spec mine.yaml --scenario errors)"),
    ],
)
def test_with_spec_the_title_names_the_file_not_the_examples_scenario(
    scenario: str, title: str
) -> None:
    record = rolled_back()
    record.scenario = scenario
    record.own_spec, record.spec_file = True, Path("/work/specs/mine.yaml")
    assert build_figure(record).get_suptitle() == title


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
