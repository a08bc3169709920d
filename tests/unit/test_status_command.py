"""`canaryml status`: the last analysis's numbers read as the Events and the demo write them;
`--watch` against scripted watch streams (a new version redrawn, deletion ending it, the
fallback to reads every interval, a 410 Gone resumed, Ctrl-C)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import measurements as m
from canaryml_operator import verdicts
from canaryml_operator.cli import plugin_app, render_status, show_updates, status_updates
from canaryml_operator.kube import KubeError
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


# --- status --watch -------------------------------------------------------------------------


def md(version: int, weight: int) -> dict[str, Any]:
    return {
        "metadata": {"namespace": "ml", "name": "iris", "resourceVersion": str(version)},
        "spec": {"canary": {"steps": [10, 50]}},
        "status": {"phase": "Progressing", "canaryWeight": weight},
    }


class FakeClient:
    """A KubeClient whose watches and reads are scripted: each watch() pops its events (a
    KubeError among them is raised), each get() pops its answer."""

    def __init__(self, watches: list[list[Any]], reads: list[dict[str, Any] | None]) -> None:
        self.watches, self.reads = watches, reads
        self.watched_from: list[str | None] = []

    def watch(self, kind: str, namespace: str, **options: Any) -> Iterator[dict[str, Any]]:
        assert kind == api.KIND and namespace == "ml" and options["name"] == "iris"
        self.watched_from.append(options["resource_version"])
        for event in self.watches.pop(0):
            if isinstance(event, BaseException):
                raise event
            yield event

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        return self.reads.pop(0)


def updates(client: FakeClient, slept: list[float]) -> list[dict[str, Any] | None]:
    found = status_updates(client, "ml", "iris", md(1, 10), interval=2.5, sleep=slept.append)
    return list(found)


def test_watch_yields_each_new_version_and_ends_when_deleted() -> None:
    client = FakeClient(
        watches=[
            [
                {"type": "MODIFIED", "object": md(2, 50)},
                {"type": "MODIFIED", "object": md(2, 50)},  # the same version again: no redraw
                {"type": "MODIFIED", "object": md(3, 100)},
            ],  # the server ends the stream: one read, then watch again from there
            [{"type": "DELETED", "object": md(4, 100)}],
        ],
        reads=[md(3, 100)],
    )
    slept: list[float] = []
    seen = updates(client, slept)
    assert [None if o is None else o["metadata"]["resourceVersion"] for o in seen] == [
        "2",
        "3",
        None,
    ]
    assert client.watched_from == ["1", "3"]
    assert slept == []  # the stream had events: no wait before watching again


def test_watch_falls_back_to_reading_every_interval() -> None:
    refused = KubeError(403, 'cannot watch resource "modeldeployments"')
    client = FakeClient(
        watches=[[refused], [refused], [refused], [refused]],
        reads=[md(1, 10), md(2, 50), md(2, 50), None],
    )
    slept: list[float] = []
    seen = updates(client, slept)
    assert [None if o is None else o["status"]["canaryWeight"] for o in seen] == [50, None]
    assert slept == [2.5, 2.5, 2.5, 2.5]  # one read per interval, never a busy loop


def test_a_gone_watch_is_read_again_and_resumed() -> None:
    gone = {"type": "ERROR", "object": {"kind": "Status", "code": 410, "message": "too old"}}
    client = FakeClient(
        watches=[[gone], [{"type": "DELETED", "object": md(5, 0)}]],
        reads=[md(4, 50)],
    )
    slept: list[float] = []
    seen = updates(client, slept)
    assert [None if o is None else o["metadata"]["resourceVersion"] for o in seen] == ["4", None]
    assert client.watched_from == ["1", "4"]


def test_a_terminal_redraws_one_view_in_place() -> None:
    console = Console(file=io.StringIO(), width=120, force_terminal=True, color_system=None)
    show_updates(console, md(1, 10), iter([md(2, 50), None]))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert "10%" in text and "50%" in text
    assert "\x1b[" in text  # cursor movements: redrawn, not appended
    assert "resourceVersion" not in text


def test_the_watch_ends_quietly_on_ctrl_c(monkeypatch: pytest.MonkeyPatch) -> None:
    from canaryml_operator import kube
    from typer.testing import CliRunner

    interrupted = KeyboardInterrupt()
    client = FakeClient(
        watches=[[{"type": "MODIFIED", "object": md(2, 50)}, interrupted]], reads=[]
    )
    client.get = lambda kind, namespace, name: md(1, 10)  # type: ignore[method-assign]
    monkeypatch.setattr(kube, "load_client", lambda: client)
    result = CliRunner().invoke(
        plugin_app(), ["status", "iris", "-n", "ml", "--watch"], prog_name="kubectl canaryml"
    )
    assert result.exit_code == 0, result.output
    assert "10%" in result.output and "50%" in result.output
    assert "was deleted" not in result.output
