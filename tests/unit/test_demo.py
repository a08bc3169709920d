"""The demo's pure parts: scenarios, the example spec, input files, the end of a run, the view."""

from __future__ import annotations

import io
import json
import shlex
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_api import resource as api
from canaryml_cli.demo import scenarios
from canaryml_cli.demo.command import kept_spec_path, rerun_command
from canaryml_cli.demo.processes import DemoError
from canaryml_cli.demo.record import DemoRecord, TimedEvent
from canaryml_cli.demo.report import build_summary, plot, write_report
from canaryml_cli.demo.runner import finished, load_spec_file
from canaryml_cli.demo.traffic import drift_shift, read_labels, read_rows
from canaryml_cli.demo.values import bound_text
from canaryml_cli.demo.view import DemoView, analysis_line, render
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Measurements, Sample, value_text
from canaryml_operator.state import TrackPlan
from rich.console import Console

DIGEST = "a" * 64
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


ROLES = scenarios.ROLES


def example(scenario: str = "good", *, models: Path = Path("/models")) -> dict[str, Any]:
    folders = {role: models / role for role in ROLES}
    digests = dict.fromkeys(folders, DIGEST)
    return scenarios.example_spec(models=folders, digests=digests, scenario=scenario)


@pytest.fixture
def models(tmp_path: Path) -> Path:
    """A folder per bundled model's role (the spec's checks need them to exist, no more)."""
    for role in ROLES:
        (tmp_path / "models" / role).mkdir(parents=True)
    return tmp_path / "models"


@pytest.mark.parametrize("scenario", scenarios.SCENARIOS)
def test_every_scenario_has_a_plan_and_a_valid_example_spec(scenario: str) -> None:
    manifest = example(scenario)
    spec = api.parse_spec(manifest["spec"])
    assert spec.canary is not None and spec.shadow is not None
    assert manifest["metadata"] == {"name": scenarios.NAME, "namespace": scenarios.NAMESPACE}
    assert spec.model.uri == "file:///models/stable"
    assert spec.routing.sticky_header == scenarios.STICKY_HEADER
    assert scenarios.PLANS[scenario].description


def test_shadow_disagree_shadows_the_bad_model_and_the_others_the_canary() -> None:
    disagree = api.parse_spec(example("shadow-disagree")["spec"])
    assert disagree.shadow is not None and disagree.shadow.model.version == "1.2.0"
    for scenario in scenarios.SCENARIOS:
        spec = api.parse_spec(example(scenario)["spec"])
        expected = "1.3.0" if scenario == "accuracy" else "1.1.0"
        assert spec.canary is not None and spec.canary.model.version == expected
        if scenario != "shadow-disagree":
            assert spec.shadow is not None and spec.shadow.model == spec.canary.model


def test_accuracy_rolls_out_the_worse_model_judged_on_the_labels_sent_back() -> None:
    spec = api.parse_spec(example("accuracy")["spec"])
    assert spec.canary is not None
    assert spec.canary.model.uri == "file:///models/worse"
    plan = scenarios.PLANS["accuracy"]
    assert plan.swaps_models and not plan.fault_outside_spec  # the fault is the model itself
    # Every scenario's spec judges accuracy: the good canary must earn its promotion on labels.
    for scenario in scenarios.SCENARIOS:
        analysis = api.parse_spec(example(scenario)["spec"]).analysis
        assert analysis.thresholds.min_accuracy == 0.9
        assert analysis.baseline is not None and analysis.baseline.max_accuracy_drop == 0.1
        delay = api.parse_duration(analysis.label_rules.delay)
        assert delay > scenarios.LABEL_DELAY_S  # the labels the traffic sends are in time


def test_only_the_fault_scenarios_inject_faults_into_the_canary() -> None:
    assert scenarios.PLANS["errors"].canary_env == {"CANARYML_INJECT_ERRORS": "0.2"}
    assert "CANARYML_INJECT_LATENCY" in scenarios.PLANS["latency"].canary_env
    assert not scenarios.PLANS["good"].canary_env
    assert scenarios.PLANS["drift"].shift_canary_inputs
    assert not scenarios.PLANS["good"].shift_canary_inputs


def write(path: Path, documents: list[Any]) -> Path:
    path.write_text(yaml.safe_dump_all(documents))
    return path


def test_a_spec_file_gives_name_namespace_and_spec(tmp_path: Path, models: Path) -> None:
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}
    path = write(tmp_path / "md.yaml", [other, example(models=models)])
    name, namespace, spec = load_spec_file(path)
    assert (name, namespace) == (scenarios.NAME, scenarios.NAMESPACE)
    assert spec.canary is not None and spec.canary.steps == [10, 25, 50]
    assert spec.model.uri == (models / "stable").as_uri()


def test_model_folder_paths_are_read_from_the_current_folder(
    tmp_path: Path, models: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As `canaryml serve` reads them: relative to where the command runs, not to the file."""
    manifest = example(models=models)
    manifest["spec"]["model"]["uri"] = "models/stable"
    manifest["spec"]["canary"]["model"]["uri"] = str(models / "canary")  # absolute
    specs = tmp_path / "specs"
    specs.mkdir()
    path = write(specs / "md.yaml", [manifest])
    monkeypatch.chdir(tmp_path)
    _, _, spec = load_spec_file(path)
    assert spec.canary is not None and spec.shadow is not None
    assert spec.model.uri == (models / "stable").as_uri()
    assert spec.canary.model.uri == (models / "canary").as_uri()
    assert spec.shadow.model.uri == (models / "canary").as_uri()  # a file:// URI, as it was
    assert spec.model.sha256 == DIGEST  # the rest of each model reference is kept
    # From another folder, the same relative path names another (missing) folder, and says so.
    monkeypatch.chdir(specs)
    with pytest.raises(DemoError) as raised:
        load_spec_file(path)
    assert str(raised.value) == (
        f"{path}: spec.model.uri 'models/stable': no such folder {specs / 'models' / 'stable'} "
        f"(a relative path is read from the current folder, as `canaryml serve` reads it: "
        f"{specs})"
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(kind="Deployment"), "no document with kind: ModelDeployment"),
        (lambda m: m["spec"].pop("canary"), "has none"),
        (lambda m: m["spec"]["canary"].update(steps=[50, 10]), "strictly increasing"),
        (lambda m: m["spec"]["model"].update(uri="pvc://claim/stable"), "outside a cluster"),
        (lambda m: m["spec"]["model"].update(uri="ftp://host/stable"), "unsupported model URI"),
        (lambda m: m["spec"]["canary"]["model"].update(uri="file:///no/such"), "no such folder"),
        # A folder path is a URI like the others: the canary must still differ from the stable.
        (lambda m: m["spec"]["canary"]["model"].update(uri="stable", version="1.0.0"), "differ"),
    ],
)
def test_a_spec_file_the_demo_cannot_run_says_why(
    tmp_path: Path, models: Path, change: Any, message: str
) -> None:
    manifest = example(models=models)
    manifest["spec"]["model"]["uri"] = "stable"
    change(manifest)
    with pytest.raises(DemoError, match=message):
        load_spec_file(write(tmp_path / "md.yaml", [manifest]), base=models)


def test_unreadable_files_are_demo_errors(tmp_path: Path) -> None:
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(DemoError, match="cannot read"):
        load_spec_file(tmp_path / "bad.yaml")
    with pytest.raises(DemoError, match="cannot read traffic rows"):
        read_rows(tmp_path / "missing.csv")
    (tmp_path / "empty.csv").write_text("target\n1\n")
    with pytest.raises(DemoError, match="no rows"):
        read_rows(tmp_path / "empty.csv")


def test_rows_drop_the_label_and_send_missing_values_as_null(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("a,b,target\n1.5,x,0\n,y,1\n")
    assert read_rows(tmp_path / "rows.csv") == [{"a": 1.5, "b": "x"}, {"a": None, "b": "y"}]


def test_labels_are_the_target_column_in_row_order_or_none(tmp_path: Path) -> None:
    (tmp_path / "rows.csv").write_text("a,target\n1.5,0\n2,\n3,1\n")
    assert read_labels(tmp_path / "rows.csv") == [0, None, 1]
    (tmp_path / "names.csv").write_text("a,target\n1,setosa\n2,virginica\n")
    assert read_labels(tmp_path / "names.csv") == ["setosa", "virginica"]
    (tmp_path / "unlabelled.csv").write_text("a,b\n1,2\n")
    assert read_labels(tmp_path / "unlabelled.csv") is None


def test_drift_moves_one_numeric_feature_beyond_its_range() -> None:
    rows = [{"name": "x", "a": 1.0, "b": 10.0}, {"name": "y", "a": 3.0, "b": 20.0}]
    feature, shift = drift_shift(rows, preferred="b")
    assert feature == "b"
    moved = shift(rows[0])
    assert moved["b"] > 20.0 + 2 * (20.0 - 10.0) and moved["a"] == 1.0 and rows[0]["b"] == 10.0
    assert drift_shift(rows, preferred="missing")[0] == "a"
    assert shift({"b": None})["b"] is None
    with pytest.raises(DemoError, match="numeric"):
        drift_shift([{"name": "x"}])


def stable() -> api.ModelRef:
    return api.ModelRef(uri="file:///m/stable", version="1.0.0")


@pytest.mark.parametrize(
    ("phase", "replicas", "done"),
    [
        ("Progressing", 1, False),
        ("RolledBack", 1, False),  # draining
        ("RolledBack", 0, True),
        ("Promoted", 1, False),  # the new stable is rolling out, or draining
        ("Promoted", None, True),
        (None, None, False),
    ],
)
def test_a_run_ends_once_the_canary_is_drained(
    phase: Any, replicas: int | None, done: bool
) -> None:
    status = api.ModelDeploymentStatus(phase=phase)
    assert finished(status, TrackPlan(stable(), replicas, 0)) is done


def record_with_analysis() -> DemoRecord:
    spec = api.parse_spec(example("errors")["spec"])
    failed = api.CheckRecord(name="errorRate", verdict="Failed", value=0.2, max=0.05)
    ok = api.CheckRecord(name="latencyP99", verdict="Successful", value=0.0042, max=0.2)
    analysis = api.AnalysisRecord(
        time=T0 + timedelta(seconds=7),
        verdict="Failed",
        step=0,
        weight=10,
        error_rate=0.2,
        checks=[failed, ok],
    )
    record = DemoRecord(
        name="breast-cancer", scenario="errors", metrics="scrape", started_at=T0, spec=spec
    )
    record.status = api.ModelDeploymentStatus(
        phase="Progressing", canary_weight=10, current_step=0, last_analysis=analysis
    )
    record.analyses.append(analysis)
    record.events.append(TimedEvent(T0 + timedelta(seconds=3), "Normal", "StepUp", "to 10%"))
    record.requests.update({"stable": 90, "canary": 10})
    record.codes.update({200: 98, 500: 2})
    return record


def with_checks(record: DemoRecord, checks: list[api.CheckRecord]) -> api.AnalysisRecord:
    """The record's one analysis, and its status's last analysis, with these checks instead."""
    analysis = record.analyses[0].model_copy(update={"checks": checks})
    record.analyses[0] = analysis
    record.status = record.status.model_copy(update={"last_analysis": analysis})
    return analysis


def panel_text(record: DemoRecord, *, elapsed: float = 12.0) -> str:
    """The live panel as plain text."""
    console = Console(file=io.StringIO(), width=140, color_system=None)
    console.print(render(record, elapsed=elapsed))
    return console.file.getvalue()  # type: ignore[no-any-return, attr-defined]


def test_values_read_as_people_read_them() -> None:
    assert value_text("errorRate", 0.0512) == "5.1 %"
    assert value_text("shadowAgreement", 0.04348) == "4.3 %"
    assert value_text("latencyP99", 0.0042) == "4.2 ms"
    assert value_text("requests", 41.0) == "41"
    assert value_text("requests", 54.44) == "54"  # Prometheus's increases are fractional
    assert value_text("drift", 0.1234) == "0.123"
    assert value_text("predictionDrift", 7.852e-05) == "0.000"
    assert value_text("orders", 12.3456) == "12.346"  # a custom check: a plain number
    assert value_text("drift", None) == "-"
    check = api.CheckRecord(name="shadowAgreement", verdict="Failed", value=0.2, min=0.85)
    assert bound_text(check) == ">= 85.0 %"
    ranged = api.CheckRecord(name="orders", verdict="Successful", value=1.0, min=0.5, max=2)
    assert bound_text(ranged) == ">= 0.500, <= 2.000"


def test_one_format_per_quantity_in_the_lines_and_the_live_panel() -> None:
    record = record_with_analysis()
    checks = [
        api.CheckRecord(name="requests", verdict="Successful", value=54.44, min=20),
        api.CheckRecord(name="errorRate", verdict="Failed", value=0.2308, max=0.05),
        api.CheckRecord(name="latencyP99", verdict="Successful", value=0.002491, max=0.2),
        api.CheckRecord(name="shadowAgreement", verdict="Successful", value=1.0, min=0.85),
    ]
    analysis = with_checks(record, checks)
    line = analysis_line(record, analysis)
    panel = panel_text(record)
    for shown in (
        "requests 54,",
        "errorRate 23.1 %",
        "latencyP99 2.5 ms",
        "shadowAgreement 100.0 %",
    ):
        assert shown in line, shown
        assert shown.split(" ", 1)[1].rstrip(",") in panel, shown
    assert "54.44" not in line + panel
    for bound in (">= 20", "<= 5.0 %", "<= 200.0 ms", ">= 85.0 %"):
        assert bound in panel, bound


def test_a_drift_value_shows_the_feature_it_comes_from() -> None:
    record = record_with_analysis()
    drift = api.CheckRecord(name=m.DRIFT, verdict="Failed", value=8.274, max=0.25)
    analysis = with_checks(record, [drift])
    worst = Sample.worst_of({"mean radius": 8.274, "worst area": 2.31})
    record.measured[analysis.time] = Measurements(time=analysis.time, samples={m.DRIFT: worst})
    assert "(drift 8.274 (mean radius))" in analysis_line(record, analysis)
    assert "8.274 (mean radius)" in panel_text(record)
    # Without the analysis's samples (or with no feature to name), the value alone.
    record.measured.clear()
    assert "(drift 8.274)" in analysis_line(record, analysis)


def test_the_live_panel_shows_step_weight_checks_and_traffic() -> None:
    text = panel_text(record_with_analysis())
    for expected in (
        "step 1/3",
        "canary weight 10 %",
        "errorRate",
        "20.0 %",
        "<= 5.0 %",
        "Failed",
        "4.2 ms",
        "StepUp",
        "500: 2",
    ):
        assert expected in text, expected


def test_without_a_terminal_every_analysis_and_event_is_one_line_once() -> None:
    output = io.StringIO()
    record = record_with_analysis()
    with DemoView(Console(file=output, width=200), live=False) as view:
        view.update(record)
        view.update(record)  # nothing new: nothing printed again
    lines = output.getvalue().splitlines()
    assert lines == [analysis_line(record, record.analyses[0]), "   3.0s StepUp: to 10%"]
    assert "analysis at 10 %: Failed (errorRate 20.0 %, latencyP99 4.2 ms)" in lines[0]


def test_the_report_has_the_outcome_every_analysis_and_a_plot(tmp_path: Path) -> None:
    record = record_with_analysis()
    message = "canary 1.1.0 rolled back at 10%: errorRate 20.0 % > max 5.0 %"
    record.status = record.status.model_copy(
        update={
            "phase": "RolledBack",
            "conditions": [
                api.Condition(
                    type="RolledBack",
                    status="True",
                    reason="AnalysisFailed",
                    message=message,
                    last_transition_time=T0,
                )
            ],
        }
    )
    record.finished_at = T0 + timedelta(seconds=20)
    summary_path, plot_path = write_report(record=record, directory=tmp_path / "report")
    summary = json.loads(summary_path.read_text())
    assert summary["phase"] == "RolledBack" and summary["decision"] == message
    assert summary["durationSeconds"] == 20.0
    assert [a["errorRate"] for a in summary["analyses"]] == [0.2]
    assert summary["analyses"][0]["seconds"] == 7.0
    assert summary["analyses"][0]["checks"][0] == {
        "name": "errorRate", "verdict": "Failed", "value": 0.2, "max": 0.05, "message": ""
    }  # fmt: skip
    assert summary["codes"] == {"200": 98, "500": 2}
    assert summary["thresholds"]["maxErrorRate"] == 0.05
    assert plot_path.read_bytes().startswith(b"\x89PNG") and plot_path.stat().st_size > 10_000


def test_a_run_with_no_analysis_still_plots(tmp_path: Path) -> None:
    spec = api.parse_spec(example()["spec"])
    record = DemoRecord(name="x", scenario="good", metrics="scrape", started_at=T0, spec=spec)
    assert build_summary(record)["decision"] is None
    assert plot(record=record, path=tmp_path / "empty.png").stat().st_size > 0


def test_the_examples_spec_is_kept_in_the_report_or_the_work_folder_or_beside_the_models(
    tmp_path: Path,
) -> None:
    report, work, models = tmp_path / "report", tmp_path / "work", tmp_path / "models"
    kept = kept_spec_path(report=report, work_dir=work, models_dir=models)
    assert kept == report / "modeldeployment.yaml"
    assert kept_spec_path(report=None, work_dir=work, models_dir=models) == (
        work / "modeldeployment.yaml"
    )
    assert kept_spec_path(report=None, work_dir=None, models_dir=models) == (
        models / "modeldeployment.yaml"
    )


def example_run(scenario: str, *, spec_file: Path, traffic_file: Path) -> DemoRecord:
    spec = api.parse_spec(example(scenario)["spec"])
    record = DemoRecord(
        name=scenarios.NAME, scenario=scenario, metrics="scrape", started_at=T0, spec=spec
    )
    record.spec_file, record.traffic_file = spec_file, traffic_file
    return record


@pytest.mark.parametrize(
    ("scenario", "again"),
    [
        ("good", []),
        # The spec holds the bad shadow; with --spec the scenario is refused, and not needed.
        ("shadow-disagree", []),
        # Faults the demo injects or sends, which no spec holds.
        ("errors", ["--scenario", "errors"]),
        ("latency", ["--scenario", "latency"]),
        ("drift", ["--scenario", "drift"]),
    ],
)
def test_the_run_again_command_reproduces_the_scenario_with_the_kept_files(
    scenario: str, again: list[str]
) -> None:
    record = example_run(
        scenario, spec_file=Path("my report/modeldeployment.yaml"), traffic_file=Path("/c/test.csv")
    )
    command = rerun_command(record)
    assert command is not None
    assert shlex.split(command) == [
        "canaryml", "demo", "--spec", "my report/modeldeployment.yaml",
        "--traffic", "/c/test.csv", *again,
    ]  # fmt: skip
    record.own_spec = True  # the user's own spec: nothing to tell
    assert rerun_command(record) is None


def test_with_spec_the_live_panel_names_the_file_not_the_examples_scenario() -> None:
    record = example_run("good", spec_file=Path("/x/mine.yaml"), traffic_file=Path("/x/t.csv"))
    record.own_spec = True
    title = panel_text(record, elapsed=1.0).splitlines()[0]
    assert "canaryml demo: breast-cancer (--spec mine.yaml)" in title
    assert "good" not in title


def test_shadow_disagree_is_told_as_a_bad_shadow_that_rolls_a_good_canary_back() -> None:
    description = scenarios.PLANS["shadow-disagree"].description
    assert "bad shadow" in description and "good canary" in description
    assert description.endswith("rolled back")
    assert not scenarios.PLANS["shadow-disagree"].fault_outside_spec  # the spec holds the shadow


def test_a_held_analysis_line_says_how_many_more_requests_decide() -> None:
    record = record_with_analysis()
    checks = [
        api.CheckRecord(
            name=m.ERROR_RATE, verdict="Inconclusive", value=0.0, max=0.05, requests_needed=104
        ),
        api.CheckRecord(
            name=m.SLOW_REQUESTS, verdict="Inconclusive", value=0.0, max=0.01, requests_needed=489
        ),
    ]
    analysis = with_checks(record, checks).model_copy(update={"verdict": "Inconclusive"})
    assert analysis_line(record, analysis).endswith(": about 489 more canary requests to decide")
    decided = analysis.model_copy(update={"verdict": "Failed"})
    assert "more canary requests" not in analysis_line(record, decided)
