"""`canaryml status`: the last analysis's numbers read as the Events and the demo write them."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from canaryml_api import resource as api
from canaryml_operator import measurements as m
from canaryml_operator import verdicts
from canaryml_operator.cli import render_status
from rich.console import Console


def test_the_last_analysis_reads_in_each_checks_unit() -> None:
    failed = verdicts.judge_value(name=m.ERROR_RATE, sample=m.Sample(0.2308), max=0.05)
    latency = verdicts.judge_value(name=m.LATENCY_P99, sample=m.Sample(0.002491), max=0.2)
    requests = verdicts.judge_value(name=m.REQUESTS, sample=m.Sample(54.44), min=20)
    record = verdicts.build_record(
        results=[requests, failed, latency],
        time=datetime(2024, 5, 1, tzinfo=UTC),
        step=0,
        weight=10,
    )
    status = api.ModelDeploymentStatus(phase="Progressing", last_analysis=record)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [10, 50]}},
        "status": status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=200, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    for shown in ("23.1 %", "5.0 %", "2.5 ms", "200.0 ms", "54", "errorRate 23.1 % > max 5.0 %"):
        assert shown in text, shown
    assert "0.2308" not in text and "54.44" not in text


def test_sequential_checks_show_interval_evidence_and_requests_needed() -> None:
    from tests.unit.test_rollout import Run
    from tests.unit.test_sequential_analysis import counts, sequential_spec

    run = Run(sequential_spec())
    run.start()
    run.analyse(counts(canary=(0, 20)), after=2)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [5, 25, 50]}},
        "status": run.status.model_dump(by_alias=True, mode="json", exclude_none=True),
    }
    console = Console(file=io.StringIO(), width=300, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "interval" in text and "evidence" in text and "requests (more needed)" in text
    assert "20 (+" in text  # 20 requests so far, and how many more
