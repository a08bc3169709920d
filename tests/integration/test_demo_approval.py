"""`canaryml demo --scenario approval` end to end: the real command, its processes, Prometheus.

The approval scenario's spec (spec.canary.approval.required) with the fast policy of
test_demo.py: the good canary climbs its steps, holds at the last one and says how to approve;
the test, standing in for the person, then adds `canaryml.dev/promote: "1.1.0"` to the
ModelDeployment file's annotations (as `canaryml promote` annotates the resource in a
cluster), and the demo promotes. The demo's own approval (`--approve-after`) is set far
beyond the run, so only the annotation can have approved it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from canaryml_cli.demo.example_models import ensure_trained

from tests.integration.test_demo import DEMO_TIMEOUT_S, failed_checks, fast_spec

pytestmark = pytest.mark.integration

HOWTO = "ApprovalHowTo: "


@pytest.fixture(scope="module")
def demo_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled example models, as `canaryml demo` caches them."""
    out = tmp_path_factory.mktemp("demo-models")
    ensure_trained(out)
    return out


def test_the_canary_waits_at_its_last_step_until_the_annotation_approves_it(
    demo_models: Path, tmp_path: Path, prometheus_bin: str
) -> None:
    spec = fast_spec(demo_models, scenario="approval", path=tmp_path / "md.yaml")
    # One step: the gate is what this test is about, the climb has its own tests (test_demo).
    one_step = yaml.safe_load(spec.read_text())
    one_step["spec"]["canary"]["steps"] = [50]
    spec.write_text(yaml.safe_dump(one_step, sort_keys=False))
    command = [
        sys.executable, "-m", "canaryml_cli", "demo", "--report", "report",
        "--spec", str(spec), "--traffic", str(demo_models / "test.csv"), "--rate", "100",
        "--approve-after", "600", "--no-live",
    ]  # fmt: skip
    demo = subprocess.Popen(
        command,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "120"},
    )
    lines: list[str] = []
    try:
        assert demo.stdout is not None
        deadline = time.monotonic() + DEMO_TIMEOUT_S
        for line in demo.stdout:  # the plain lines (no terminal): one per Event and analysis
            lines.append(line)
            if HOWTO in line:
                break
            assert time.monotonic() < deadline, "".join(lines)
        else:
            pytest.fail("the demo ended without awaiting approval:\n" + "".join(lines))
        howto = lines[-1]
        assert "`canaryml promote breast-cancer -n demo`" in howto, howto
        assert 'canaryml.dev/promote: "1.1.0"' in howto and str(spec) in howto, howto
        waiting = time.monotonic()
        time.sleep(2.0)  # the wait is visible: the analyses go on, nothing is promoted
        manifest = yaml.safe_load(spec.read_text())
        manifest["metadata"]["annotations"] = {"canaryml.dev/promote": "1.1.0"}
        spec.write_text(yaml.safe_dump(manifest, sort_keys=False))
        output, _ = demo.communicate(timeout=DEMO_TIMEOUT_S)
        approved_after = time.monotonic() - waiting
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.communicate()
    lines.append(output)
    stdout = "".join(lines)
    assert demo.returncode == 0, stdout
    summary = json.loads((tmp_path / "report" / "summary.json").read_text())
    assert summary["phase"] == "Promoted", stdout
    assert summary["metrics"] == "prometheus"
    assert not failed_checks(summary), summary["analyses"]
    assert summary["status"]["stableModel"]["version"] == "1.1.0"
    assert summary["status"]["handledCommands"] == {"canaryml.dev/promote": "1.1.0"}
    assert [entry["reason"] for entry in summary["history"]] == [
        'promoted by canaryml.dev/promote: "1.1.0"'
    ]
    gate = summary["approval"]
    assert gate["approvedBy"] == "annotation"
    waited = gate["approvedSeconds"] - gate["awaitedSeconds"]
    assert 2.0 <= waited <= approved_after + 1.0, gate
    # The analyses went on during the wait, at the last step's weight, every one passing.
    during = [
        a
        for a in summary["analyses"]
        if gate["awaitedSeconds"] < a["seconds"] < gate["approvedSeconds"]
    ]
    assert len(during) >= 1 and all(a["weight"] == 50 for a in during), during
    assert [w["weight"] for w in summary["weights"]] == [50, 0]
    assert set(summary["codes"]) == {"200"}, summary["codes"]
    assert "AwaitingApproval" in stdout and "approval: awaited from" in stdout
    assert "approved by annotation" in stdout
