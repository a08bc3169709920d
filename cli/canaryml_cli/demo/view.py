"""What the person running the demo sees: a live panel in a terminal, plain lines elsewhere.

The panel shows the phase, the step and weight, each check of the last analysis against its
bound with its verdict (drift with the feature it comes from), the requests each track
answered, and the latest Events. Without a terminal (CI, a pipe) every Event and every analysis
is printed as one line instead, so a log tells the same story.
"""

from __future__ import annotations

from datetime import UTC, datetime
from types import TracebackType
from typing import Final

from canaryml_api import resource as api
from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from canaryml_cli.demo.record import DemoRecord
from canaryml_cli.demo.values import bound_text, check_value_text

VERDICT_STYLE: Final = {
    "Successful": "green",
    "Failed": "bold red",
    "Inconclusive": "yellow",
    "Error": "magenta",
}
SHOWN_EVENTS: Final = 6


def render(record: DemoRecord, *, elapsed: float) -> Panel:
    status, spec = record.status, record.spec
    steps = spec.canary.steps if spec.canary else []
    step = status.current_step
    head = Table.grid(padding=(0, 2))
    head.add_row(
        Text(f"phase {record.outcome}", style="bold"),
        f"step {step + 1}/{len(steps)}" if step is not None else "step -",
        f"canary weight {status.canary_weight} %",
        f"{elapsed:.0f} s",
        f"metrics: {record.metrics or '...'}",
    )
    stable = status.stable_model.version if status.stable_model else spec.model.version
    canary = spec.canary.model.version if spec.canary else "-"
    head.add_row(f"stable {stable}", f"canary {canary}", f"steps {steps}", "", "")
    filled = status.canary_weight // 2  # 50 characters for 100 %
    bar = Text("canary " + "#" * filled + "." * (50 - filled))

    checks = Table(title="last analysis", expand=False)
    for column in ("check", "value", "bound", "verdict"):
        checks.add_column(column)
    last = status.last_analysis
    if last is not None:
        measured = record.measured.get(last.time)
        for check in last.checks:
            checks.add_row(
                check.name,
                check_value_text(check, measured),
                bound_text(check),
                Text(
                    check.verdict + (" (dry run)" if check.dry_run else ""),
                    style=VERDICT_STYLE.get(check.verdict, ""),
                ),
            )
    traffic = Table(title="answered requests", expand=False)
    traffic.add_column("track")
    traffic.add_column("requests", justify="right")
    for track, count in sorted(record.requests.items()):
        traffic.add_row(track, str(count))
    codes = ", ".join(f"{code or 'no answer'}: {n}" for code, n in sorted(record.codes.items()))
    traffic.add_row("codes", codes or "-")

    events = Text()
    for event in record.events[-SHOWN_EVENTS:]:
        style = "red" if event.type == "Warning" else ""
        events.append(f"{record.seconds(event.time):6.1f}s {event.reason}: ", style=style or "bold")
        events.append(event.message + "\n", style=style)
    body = Group(head, bar, Text(""), checks, traffic, events)
    return Panel(body, title=f"canaryml demo: {record.name} ({record.label})")


def analysis_line(record: DemoRecord, analysis: api.AnalysisRecord) -> str:
    measured = record.measured.get(analysis.time)
    values = ", ".join(
        f"{c.name} {check_value_text(c, measured)}" for c in analysis.checks if c.value is not None
    )
    line = (
        f"{record.seconds(analysis.time):6.1f}s analysis at {analysis.weight} %: "
        f"{analysis.verdict} ({values or 'no values'})"
    )
    # Sequential checks not sure yet: how far the step is from a decision.
    needed = [
        c.requests_needed
        for c in analysis.checks
        if c.verdict == "Inconclusive" and c.requests_needed is not None
    ]
    if analysis.verdict == "Inconclusive" and needed:
        line += f": about {max(needed)} more canary requests to decide"
    return line


class DemoView:
    """`update(record)` after every decision; use as a context manager."""

    def __init__(self, console: Console, *, live: bool | None = None) -> None:
        self.console = console
        self.live = console.is_terminal if live is None else live
        self._live: Live | None = None
        self._events = 0
        self._analyses = 0

    def __enter__(self) -> DemoView:
        if self.live:
            self._live = Live(console=self.console, refresh_per_second=4, transient=False)
            self._live.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._live is not None:
            self._live.__exit__(exc_type, exc, traceback)
            self._live = None

    def echo(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def update(self, record: DemoRecord) -> None:
        if self._live is not None:
            elapsed = record.seconds(datetime.now(UTC))
            self._live.update(render(record, elapsed=elapsed))
            return
        for analysis in record.analyses[self._analyses :]:
            self.echo(analysis_line(record, analysis))
        for event in record.events[self._events :]:
            self.echo(f"{record.seconds(event.time):6.1f}s {event.reason}: {event.message}")
        self._analyses, self._events = len(record.analyses), len(record.events)
