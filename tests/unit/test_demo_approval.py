"""The demo's approval scenario, through the demo's own loop (`runner.roll_out`) with a fake
cluster, fake measurements and a fake clock: the canary waits at its last step, the demo says
how to approve, and the promotion follows the annotation added to the run's ModelDeployment
file, or, when nobody adds it, the demo's own approval after `approve_after` seconds."""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from pathlib import Path
from typing import Any

import yaml
from canaryml_api import resource as api
from canaryml_cli.demo import approval, command, report, runner, scenarios
from canaryml_cli.demo.record import DemoRecord

from tests.unit.test_demo_loop import GOOD, T0, Clock, FakeCluster, FakeMeasurer, demo_setup


def spec_file(tmp_path: Path, *, annotations: dict[str, str] | None = None) -> Path:
    manifest = scenarios.example_spec(
        models={role: Path("/models") / role for role in scenarios.ROLES},
        digests=dict.fromkeys(scenarios.ROLES, "a" * 64),
        scenario="approval",
    )
    if annotations:
        manifest["metadata"]["annotations"] = annotations
    path = tmp_path / "modeldeployment.yaml"
    path.write_text(yaml.safe_dump(manifest, sort_keys=False))
    return path


def run(
    path: Path, *, approve_after: float, on_wait: Any = None, duration: float = 300.0
) -> DemoRecord:
    setup = dataclasses.replace(demo_setup("approval"), spec_file=path)
    clock = Clock()
    cluster = FakeCluster(setup.spec, clock)
    record = DemoRecord(
        name=setup.name,
        scenario="approval",
        metrics="fake",
        started_at=T0,
        spec=setup.spec,
        spec_file=path,
        traffic_file=setup.traffic_file,
    )

    def observe(record: DemoRecord) -> None:
        if on_wait is not None and any(e.reason == "AwaitingApproval" for e in record.events):
            on_wait()

    asyncio.run(
        runner.roll_out(
            setup,
            cluster,
            FakeMeasurer(GOOD),
            record,
            observe,
            duration=duration,
            clock=clock,
            sleep=clock.sleep,
            approve_after=approve_after,
        )
    )
    return record


def reasons(record: DemoRecord) -> list[str]:
    return [event.reason for event in record.events]


def at(record: DemoRecord, reason: str) -> float:
    return next(record.seconds(e.time) for e in record.events if e.reason == reason)


def test_only_the_approval_scenario_asks_for_approval() -> None:
    for scenario in scenarios.SCENARIOS:
        spec = demo_setup(scenario).spec
        assert spec.canary is not None
        required = spec.canary.approval is not None and spec.canary.approval.required
        assert required == (scenario == "approval"), scenario
    assert not scenarios.PLANS["approval"].fault_outside_spec  # the spec carries it


def test_nobody_approves_so_the_demo_does_after_its_wait(tmp_path: Path) -> None:
    record = run(spec_file(tmp_path), approve_after=12.0)
    assert record.outcome == "Promoted" and not record.timed_out
    order = [
        r
        for r in reasons(record)
        if r in ("AwaitingApproval", approval.APPROVAL_HOWTO, approval.APPROVED_BY_DEMO, "Promoted")
    ]
    assert order == [
        "AwaitingApproval",
        approval.APPROVAL_HOWTO,
        approval.APPROVED_BY_DEMO,
        "Promoted",
    ]
    waited = at(record, approval.APPROVED_BY_DEMO) - at(record, "AwaitingApproval")
    assert 12.0 <= waited <= 12.0 + runner.TICK_S
    howto = next(e.message for e in record.events if e.reason == approval.APPROVAL_HOWTO)
    assert "`canaryml promote breast-cancer -n demo`" in howto
    assert 'canaryml.dev/promote: "1.1.0"' in howto and str(tmp_path) in howto
    assert record.status.handled_commands == {"canaryml.dev/promote": "1.1.0@demo"}
    assert record.status.history[-1].reason == 'promoted by canaryml.dev/promote: "1.1.0@demo"'
    # The analyses went on during the wait, at the last step's weight.
    began, approved = at(record, "AwaitingApproval"), at(record, approval.APPROVED_BY_DEMO)
    during = [a for a in record.analyses if began < record.seconds(a.time) < approved]
    assert during and all(a.weight == 50 for a in during)
    summary = report.build_summary(record)["approval"]
    assert summary["approvedBy"] == "demo"
    assert summary["approvedSeconds"] >= summary["awaitedSeconds"] + 12.0
    assert summary["howTo"] == howto


def test_the_annotation_added_to_the_file_approves_at_once(tmp_path: Path) -> None:
    path = spec_file(tmp_path)

    def approve() -> None:
        if "annotations" not in path.read_text():
            spec_file(tmp_path, annotations={"canaryml.dev/promote": "1.1.0"})

    record = run(path, approve_after=600.0, on_wait=approve)
    assert record.outcome == "Promoted"
    assert approval.APPROVED_BY_DEMO not in reasons(record)
    assert at(record, "Promoted") - at(record, "AwaitingApproval") <= 2 * runner.TICK_S
    assert record.status.handled_commands == {"canaryml.dev/promote": "1.1.0"}
    assert report.build_summary(record)["approval"]["approvedBy"] == "annotation"


def test_without_an_approval_the_run_times_out_waiting(tmp_path: Path) -> None:
    record = run(spec_file(tmp_path), approve_after=3600.0, duration=100.0)
    assert record.timed_out and record.outcome == "Progressing"
    assert record.status.canary_weight == 50
    gate = report.build_summary(record)["approval"]
    assert gate["approvedBy"] is None and gate["awaitedSeconds"] > 0


def test_file_annotations_read_only_the_model_deployment(tmp_path: Path) -> None:
    path = tmp_path / "md.yaml"
    path.write_text(
        "kind: ConfigMap\nmetadata: {annotations: {a: b}}\n---\n"
        f"kind: {api.KIND}\nmetadata:\n  annotations: {{canaryml.dev/promote: '1.1.0'}}\n"
    )
    assert approval.file_annotations(path) == {"canaryml.dev/promote": "1.1.0"}
    path.write_text(": not yaml : [")
    assert approval.file_annotations(path) == {}
    assert approval.file_annotations(tmp_path / "missing.yaml") == {}


def test_the_commands_default_is_the_runners() -> None:
    default = inspect.signature(command.demo).parameters["approve_after"].default
    assert default == approval.DEFAULT_APPROVE_AFTER_S == runner.DemoOptions().approve_after
