"""Dry-run checks (analysis.metrics[].dryRun, Argo Rollouts' dryRun): measured, judged and
recorded in status.lastAnalysis.checks like the others, marked dryRun, and never failing or
holding a rollout; the same check without dryRun gates as before."""

from __future__ import annotations

from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import checks, verdicts
from canaryml_operator import measurements as m
from canaryml_operator.measurements import Sample

from tests.unit.specs import changed
from tests.unit.test_rollout import (
    CANARY_UP,
    T0,
    Run,
    condition,
    measured,
    raw_spec,
    roundtrip,
)

KPI: dict[str, Any] = {"name": "conversion", "query": "sum(rate(orders_total[1m]))", "min": 0.1}


def spec_with(*metrics: dict[str, Any], **fields: Any) -> api.ModelDeploymentSpec:
    return api.parse_spec(changed(raw_spec(**fields), "analysis.metrics", list(metrics)))


def dry(metric: dict[str, Any]) -> dict[str, Any]:
    return {**metric, "dryRun": True}


def by_name(results: list[verdicts.CheckResult]) -> dict[str, verdicts.CheckResult]:
    return {result.name: result for result in results}


def test_dry_run_defaults_to_false_and_reads_camel_case() -> None:
    assert not spec_with(KPI).analysis.metrics[0].dry_run
    assert spec_with(dry(KPI)).analysis.metrics[0].dry_run


@pytest.mark.parametrize(
    ("value", "verdict"),
    [(0.5, "Successful"), (0.01, "Failed"), (None, "Inconclusive"), (-1.0, "Failed")],
)
def test_a_dry_run_check_keeps_its_own_verdict_and_counts_for_nothing(
    value: float | None, verdict: str
) -> None:
    spec = spec_with(dry(KPI))
    results = verdicts.judge(spec=spec, measurements=measured(T0, {"conversion": value}))
    kpi = by_name(results)["conversion"]
    assert (kpi.verdict, kpi.dry_run) == (verdict, True)
    assert verdicts.overall(results) == "Successful"
    record = verdicts.build_record(results=results, time=T0, step=0, weight=5)
    assert record.verdict == "Successful"
    assert record.reasons == []  # nothing holds the weight
    (checked,) = [c for c in record.checks if c.name == "conversion"]
    assert (checked.verdict, checked.dry_run) == (verdict, True)
    if verdict != "Successful":
        assert checked.message.startswith("dry run (not counted): conversion")
    # The marker survives the status's round trip; the other checks carry none.
    again = roundtrip(api.ModelDeploymentStatus(last_analysis=record))
    assert again.last_analysis is not None
    marks = {c.name: c.dry_run for c in again.last_analysis.checks}
    assert marks["conversion"] is True
    assert {mark for name, mark in marks.items() if name != "conversion"} == {None}


def test_an_error_of_a_dry_run_query_holds_nothing() -> None:
    spec = spec_with(dry(KPI))
    results = verdicts.judge(
        spec=spec, measurements=measured(T0, {"conversion": Sample.failed("bad query")})
    )
    assert by_name(results)["conversion"].verdict == "Error"
    assert verdicts.overall(results) == "Successful"


def test_the_other_checks_still_decide_next_to_a_dry_run_one() -> None:
    spec = spec_with(dry(KPI), {"name": "cost", "query": "q", "max": 3})
    results = verdicts.judge(
        spec=spec, measurements=measured(T0, {"conversion": 0.01, "cost": 4.0})
    )
    assert verdicts.overall(results) == "Failed"
    record = verdicts.build_record(results=results, time=T0, step=0, weight=5)
    assert record.reasons == ["cost 4.000 > max 3.000"]


def test_a_dry_run_metric_is_queried_like_the_others() -> None:
    spec = spec_with(dry(KPI))
    queries = checks.build_queries(spec=spec, name="iris", namespace="ml", source="router")
    assert queries["conversion"] == KPI["query"]


def test_a_rollout_with_a_failing_dry_run_check_is_promoted() -> None:
    """Every analysis has the dry-run check Failed: the steps go on and the canary is
    promoted, the last analysis still showing what the check would have said."""
    run = Run(spec_with(dry(KPI), failure_limit=1))
    run.to_step(0)
    for _ in range(2):
        decision = run.analyse({"conversion": 0.01}, after=30, tracks=CANARY_UP)
        assert decision.action == "stepUp"
    decision = run.analyse({"conversion": 0.01}, after=30, tracks=CANARY_UP)
    assert decision.action == "promote"
    last = decision.status.last_analysis
    assert last is not None and last.verdict == "Successful"
    (kpi,) = [c for c in last.checks if c.name == "conversion"]
    assert (kpi.verdict, kpi.dry_run) == ("Failed", True)
    assert decision.status.failed_checks == 0


def test_the_same_check_without_dry_run_rolls_back() -> None:
    run = Run(spec_with(KPI, failure_limit=1))
    run.to_step(0)
    decision = run.analyse({"conversion": 0.01}, after=30, tracks=CANARY_UP)
    assert decision.action == "rollback"
    rolled_back = condition(decision.status, "RolledBack")
    assert rolled_back is not None and "conversion 0.010 < min 0.100" in rolled_back.message


def test_a_dry_run_check_without_data_does_not_hold_the_step() -> None:
    run = Run(spec_with(dry(KPI)))
    run.to_step(0)
    decision = run.analyse({"conversion": None}, after=30, tracks=CANARY_UP)
    assert decision.action == "stepUp"
    assert decision.status.held_analyses == 0
    assert m.REQUESTS in {c.name for c in decision.status.last_analysis.checks}  # type: ignore[union-attr]


def test_canaryml_status_marks_a_dry_run_check() -> None:
    import io

    from canaryml_operator.cli import render_status
    from rich.console import Console

    results = verdicts.judge(
        spec=spec_with(dry(KPI)), measurements=measured(T0, {"conversion": 0.01})
    )
    record = verdicts.build_record(results=results, time=T0, step=0, weight=5)
    found = {
        "metadata": {"namespace": "ml", "name": "iris"},
        "spec": {"canary": {"steps": [5, 25, 50]}},
        "status": api.ModelDeploymentStatus(phase="Progressing", last_analysis=record).model_dump(
            by_alias=True, mode="json", exclude_none=True
        ),
    }
    console = Console(file=io.StringIO(), width=300, color_system=None)
    for renderable in render_status(found):
        console.print(renderable)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "Failed (dry run)" in text
    assert "last analysis 2024-05-01 12:00:00: Successful" in text
