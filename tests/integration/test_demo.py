"""`canaryml demo` end to end: the real command, its processes, Prometheus, and its report.

The scenarios run with a faster policy than the bundled one (two steps of at least 3 s, 1 s
analyses, 100 requests a second; the sequential checks still hold each step until the canary's
own requests decide), written as a `--spec` file over the example models; one runs the
bundled spec itself, without Prometheus (direct scrapes), then runs the ModelDeployment it kept
again with the command it printed. Each asserts on `summary.json`.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from canaryml_cli.demo import scenarios
from canaryml_cli.demo.example_models import ensure_trained
from canaryml_server.artifact import MANIFEST_FILE, sha256_file

pytestmark = pytest.mark.integration

DEMO_TIMEOUT_S = 120.0
RUN_AGAIN = "edit it and run it again: "
ERROR_CHECKS = {"errorRate", "errorRateVsStable"}


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example models, as `canaryml demo` caches them."""
    out = tmp_path_factory.mktemp("demo-models")
    ensure_trained(out)
    return out


def fast_spec(models: Path, *, scenario: str, path: Path, folder_paths: bool = False) -> Path:
    """The bundled example's ModelDeployment with a policy that ends in seconds; with
    `folder_paths`, its models are plain paths relative to `path`'s folder (where the demo will
    run), as `canaryml serve` takes them."""
    roles = {role: models / role for role in scenarios.ROLES}
    digests = {role: sha256_file(folder / MANIFEST_FILE) for role, folder in roles.items()}
    manifest = scenarios.example_spec(models=roles, digests=digests, scenario=scenario)
    spec = manifest["spec"]
    spec["canary"].update(steps=[20, 50], stepInterval="3s")
    spec["analysis"].update(interval="1s", window="5s", minRequests=10)
    if folder_paths:
        relative = {role: os.path.relpath(folder, path.parent) for role, folder in roles.items()}
        spec["model"]["uri"] = relative["stable"]
        spec["canary"]["model"]["uri"] = relative["canary"]
        spec["shadow"]["model"]["uri"] = relative["canary"]
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run_demo(
    *args: str, cwd: Path, report: str = "report"
) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    """`canaryml demo --report REPORT ARGS` in `cwd` (REPORT relative to it, as typed)."""
    command = [sys.executable, "-m", "canaryml_cli", "demo", "--report", report, *args]
    result = subprocess.run(
        command,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT_S,
        env={**os.environ, "COLUMNS": "120"},
        check=False,
    )
    assert result.returncode == 0, f"demo failed:\n{result.stdout}\n{result.stderr}"
    summary = json.loads((cwd / report / "summary.json").read_text())
    assert (cwd / report / "rollout.png").read_bytes().startswith(b"\x89PNG")
    return result, summary


def failed_checks(summary: dict[str, Any]) -> set[str]:
    return {
        check["name"]
        for analysis in summary["analyses"]
        for check in analysis["checks"]
        if check["verdict"] == "Failed"
    }


def test_good_canary_is_promoted_with_no_failed_request(
    demo_models: Path, tmp_path: Path, prometheus_bin: str
) -> None:
    spec = fast_spec(demo_models, scenario="good", path=tmp_path / "md.yaml")
    traffic = demo_models / "test.csv"
    result, summary = run_demo(
        "--spec", str(spec), "--traffic", str(traffic), "--rate", "100", cwd=tmp_path
    )
    assert summary["phase"] == "Promoted", result.stdout
    assert summary["metrics"] == "prometheus"
    assert not summary["timedOut"]
    promoted = [entry for entry in summary["history"] if entry["event"] == "promoted"]
    assert [entry["version"] for entry in promoted] == ["1.1.0"]
    assert summary["status"]["stableModel"]["version"] == "1.1.0"
    # Every step, then the promoted canary's weight back to 0 once the new stable serves.
    assert [w["weight"] for w in summary["weights"]] == [20, 50, 0]
    assert not failed_checks(summary), summary["analyses"]
    passed = [a for a in summary["analyses"] if a["verdict"] == "Successful"]
    assert passed and all(a["errorRate"] <= 0.05 for a in passed)
    # No client saw an error while the stable server was replaced.
    assert set(summary["codes"]) == {"200"}, summary["codes"]
    assert summary["requests"]["canary"] > 0 and summary["requests"]["stable"] > 0
    # The labels sent back reached the servers, and the canary earned its promotion on them.
    assert set(summary["labels"]) == {"200"} and summary["labels"]["200"] > 200
    accuracy = verdicts_of(summary, "accuracy")
    assert accuracy[-1] == "Successful" and "Failed" not in accuracy
    assert "Successful" in verdicts_of(summary, "accuracyVsStable")
    assert "Promoted" in result.stdout
    assert RUN_AGAIN not in result.stdout  # the user's own spec: no copy of it to tell of


def test_a_less_accurate_canary_is_rolled_back_on_the_labels_sent_back(
    demo_models: Path, tmp_path: Path, prometheus_bin: str
) -> None:
    """The accuracy scenario's spec (the worse model as the canary), run as a user's spec: the
    traffic file's target column goes back through the router as feedback, the servers count
    it, Prometheus scrapes it, and the accuracy checks roll the canary back on it."""
    spec = fast_spec(demo_models, scenario="accuracy", path=tmp_path / "md.yaml")
    traffic = demo_models / "test.csv"
    result, summary = run_demo(
        "--spec", str(spec), "--traffic", str(traffic), "--rate", "100", cwd=tmp_path
    )  # fmt: skip
    assert summary["phase"] == "RolledBack", result.stdout
    assert summary["metrics"] == "prometheus"
    # Only the labels tell: no error, no slow request, no drift, full shadow agreement.
    assert failed_checks(summary) <= {"accuracy", "accuracyVsStable"}, summary["decision"]
    assert summary["decision"].startswith("canary 1.3.0 rolled back"), summary["decision"]
    assert "accuracy" in summary["decision"] and "labels correct" in summary["decision"]
    assert set(summary["codes"]) == {"200"}
    assert set(summary["labels"]) == {"200"} and summary["labels"]["200"] >= 100
    failed = [a for a in summary["analyses"] if a["verdict"] == "Failed"][-1]
    (check,) = [c for c in failed["checks"] if c["name"] in failed_checks(summary)][:1]
    assert check["value"] < 0.9 or check["name"] == "accuracyVsStable"
    assert summary["status"]["stableModel"]["version"] == "1.0.0"


def verdicts_of(summary: dict[str, Any], name: str) -> list[str]:
    """The verdicts of check `name`, analysis after analysis."""
    return [
        check["verdict"]
        for analysis in summary["analyses"]
        for check in analysis["checks"]
        if check["name"] == name
    ]


def test_failing_canary_is_rolled_back_by_its_error_rate_without_prometheus(
    demo_models: Path, tmp_path: Path
) -> None:
    """The bundled spec as it ships (no --spec), metrics scraped directly."""
    started = time.monotonic()
    result, summary = run_demo(
        "--scenario", "errors", "--prometheus", "off", "--models-dir", str(demo_models),
        cwd=tmp_path,
    )  # fmt: skip
    took = time.monotonic() - started
    assert summary["phase"] == "RolledBack", result.stdout
    assert summary["metrics"] == "scrape"
    assert "errorRate" in summary["decision"]
    assert "a sequential decision" in summary["decision"]
    # Against its bound, against the stable track, or both at the same look.
    assert failed_checks(summary) & ERROR_CHECKS and failed_checks(summary) <= ERROR_CHECKS
    # A sequential Failed rolls back at once: failureLimit would only add looks.
    failing = [a["errorRate"] for a in summary["analyses"] if a["verdict"] == "Failed"]
    assert len(failing) == 1
    assert all(0.05 < rate < 0.6 for rate in failing), failing  # 20 % injected
    assert summary["weights"][-1]["weight"] == 0
    assert summary["status"]["stableModel"]["version"] == "1.0.0"
    assert took < 60, f"the bundled errors scenario took {took:.0f} s"

    # The ModelDeployment it ran outlives it, in the report, and names models that still exist.
    kept = yaml.safe_load((tmp_path / "report" / "modeldeployment.yaml").read_text())
    assert kept["spec"]["model"]["uri"] == (demo_models / "stable").resolve().as_uri()
    assert summary["specFile"] == str(Path("report") / "modeldeployment.yaml")
    # The command it printed runs it again as it is, from the same folder.
    (printed,) = [
        line.removeprefix(RUN_AGAIN)
        for line in result.stdout.splitlines()
        if line.startswith(RUN_AGAIN)
    ]
    canaryml, demo, *again = shlex.split(printed)
    assert (canaryml, demo) == ("canaryml", "demo")
    assert again == [
        "--spec", summary["specFile"], "--traffic", str(demo_models / "test.csv"),
        "--scenario", "errors",
    ]  # fmt: skip
    rerun, second = run_demo(*again, "--prometheus", "off", cwd=tmp_path, report="again")
    assert second["phase"] == "RolledBack", rerun.stdout
    assert failed_checks(second) & ERROR_CHECKS and failed_checks(second) <= ERROR_CHECKS
    assert second["spec"] == summary["spec"]
    assert second["specFile"] == summary["specFile"]


def test_drifting_canary_inputs_roll_back(
    demo_models: Path, tmp_path: Path, prometheus_bin: str
) -> None:
    """With a spec whose models are plain folder paths, relative to where the demo runs."""
    spec = fast_spec(demo_models, scenario="drift", path=tmp_path / "md.yaml", folder_paths=True)
    traffic = demo_models / "test.csv"
    result, summary = run_demo(
        "--spec", str(spec), "--traffic", str(traffic), "--scenario", "drift", "--rate", "100",
        cwd=tmp_path,
    )  # fmt: skip
    assert summary["phase"] == "RolledBack", result.stdout
    # The calibrated gate (driftSignificance), not PSI over a hand-set maxDrift, decided.
    assert failed_checks(summary) == {"driftPValue"}
    significance = summary["thresholds"]["driftSignificance"]
    for analysis in summary["analyses"]:
        if analysis["verdict"] == "Failed":
            (p_value,) = [c["value"] for c in analysis["checks"] if c["name"] == "driftPValue"]
            assert p_value < significance
    # The verdict and the analysis lines name the feature that was moved.
    assert f"({scenarios.DRIFT_FEATURE} " in summary["decision"], summary["decision"]
    assert f"({scenarios.DRIFT_FEATURE})" in result.stdout, result.stdout
    # Only the canary's inputs moved: the stable kept serving and nothing failed.
    assert set(summary["codes"]) == {"200"}
    assert summary["spec"]["model"]["uri"] == (demo_models / "stable").resolve().as_uri()


def test_interrupt_stops_every_process(demo_models: Path, tmp_path: Path) -> None:
    """Ctrl-C (SIGINT) in the middle of a rollout: exit 130, no process left behind."""
    command = [
        sys.executable, "-m", "canaryml_cli", "demo", "--prometheus", "off",
        "--models-dir", str(demo_models), "--work-dir", str(tmp_path / "work"), "--no-live",
    ]  # fmt: skip
    demo = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        parent = psutil.Process(demo.pid)
        deadline = time.monotonic() + 60
        children: list[psutil.Process] = []
        while time.monotonic() < deadline:  # the router is the last process started
            children = parent.children(recursive=True)
            if (tmp_path / "work" / "logs" / "router.log").exists() and len(children) >= 4:
                break
            time.sleep(0.2)
        else:
            pytest.fail(f"the demo did not start its processes; children: {children}")
        time.sleep(1.0)  # into the rollout loop
        demo.send_signal(signal.SIGINT)
        output, _ = demo.communicate(timeout=60)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert demo.returncode == 130, output
    assert "interrupted" in output
    _, alive = psutil.wait_procs(children, timeout=5)
    assert not alive, f"left running: {[p.cmdline() for p in alive]}"
