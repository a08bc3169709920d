"""`canaryml demo`: the command line of the local demo (the work is in `runner`)."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shlex
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from canaryml_cli.demo import scenarios

if TYPE_CHECKING:  # imported by the command itself: `canaryml --help` stays fast
    from canaryml_cli.demo.record import DemoRecord
    from canaryml_cli.demo.runner import DemoOptions

EXIT_CANNOT_RUN = 2
EXIT_INTERRUPTED = 130


def default_models_dir() -> Path:
    """Where the bundled example models are trained once and reused."""
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "canaryml" / "example-models"


def kept_spec_path(*, report: Path | None, work_dir: Path | None, models_dir: Path) -> Path:
    """Where the example's ModelDeployment outlives the run: in the report, in the work folder,
    or else beside the example models it names (their cache)."""
    return (report or work_dir or models_dir) / scenarios.SPEC_FILE


def rerun_command(record: DemoRecord) -> str | None:
    """The command that runs the example's ModelDeployment of this run again, as the user's
    spec (None for a run of the user's spec): with the scenario when the spec cannot carry its
    fault."""
    if record.own_spec or record.spec_file is None or record.traffic_file is None:
        return None
    args = ["canaryml", "demo", "--spec", str(record.spec_file)]
    args += ["--traffic", str(record.traffic_file)]
    if scenarios.PLANS[record.scenario].fault_outside_spec:
        args += ["--scenario", record.scenario]
    return shlex.join(args)


_SCENARIO_HELP = "; ".join(f"{name}: {plan.description}" for name, plan in scenarios.PLANS.items())


def demo(
    scenario: Annotated[
        str,
        typer.Option(help=f"What goes wrong in the rollout. {_SCENARIO_HELP}."),
    ] = scenarios.DEFAULT_SCENARIO,
    spec: Annotated[
        Path | None,
        typer.Option(
            help="Your ModelDeployment YAML instead of the bundled example; needs --traffic. "
            "Model URIs: a folder path (a relative one is read from the current folder, as "
            "`canaryml serve` reads it), file://, http(s)://, s3://, gs:// or models:/."
        ),
    ] = None,
    traffic: Annotated[
        Path | None,
        typer.Option(help="CSV of rows to send (a `target` column is dropped)."),
    ] = None,
    duration: Annotated[
        float, typer.Option(min=1.0, help="Stop after this many seconds if still rolling out.")
    ] = 300.0,
    report: Annotated[
        Path | None,
        typer.Option(
            help="Write summary.json, rollout.png (a plot) and, without --spec, the run's "
            "modeldeployment.yaml into this folder."
        ),
    ] = None,
    prometheus: Annotated[
        str,
        typer.Option(
            help="auto: start Prometheus if installed, else scrape /metrics directly; "
            "off: scrape directly; or the URL of a Prometheus that scrapes the demo."
        ),
    ] = "auto",
    rate: Annotated[
        float, typer.Option(min=1.0, max=2000.0, help="Requests per second sent to the router.")
    ] = 50.0,
    work_dir: Annotated[
        Path | None,
        typer.Option(
            help="Keep logs and Prometheus's data here (default: a temporary folder, removed at "
            "the end). Without --spec, the run's modeldeployment.yaml is kept in --report, else "
            "here, else beside the example models."
        ),
    ] = None,
    models_dir: Annotated[
        Path | None,
        typer.Option(help="Cache of the bundled example models [~/.cache/canaryml/...]."),
    ] = None,
    live: Annotated[
        bool | None,
        typer.Option(help="Live panel (default: when the output is a terminal) or plain lines."),
    ] = None,
    approve_after: Annotated[
        float,
        typer.Option(
            min=0.0,
            max=3600.0,
            help="With spec.canary.approval (--scenario approval): approve an awaited promotion "
            "after this many seconds if nobody did (add the annotation canaryml.dev/promote: "
            "<canary version> to the run's ModelDeployment file to approve it sooner).",
        ),
    ] = 20.0,
) -> None:
    """Watch a whole canary rollout on this machine: real model servers, the real router, real
    metrics, and the operator's own rollout core deciding. No cluster needed.

    Exits 0 whatever the rollout's outcome (Promoted or RolledBack); non-zero only when the
    demo itself could not run.
    """
    from canaryml_cli.demo.processes import DemoError
    from canaryml_cli.demo.runner import DemoOptions

    console = Console(highlight=False)
    if report is not None and importlib.util.find_spec("matplotlib") is None:
        _fail("--report draws a plot with matplotlib: pip install 'canaryml[demo]'")
    if prometheus not in ("auto", "off") and not prometheus.startswith(("http://", "https://")):
        _fail(f"--prometheus {prometheus!r}: use auto, off, or the http(s):// URL of a Prometheus")
    models_dir = models_dir or default_models_dir()
    options = DemoOptions(
        scenario=scenario,
        spec_path=spec,
        traffic_path=traffic,
        duration=duration,
        prometheus=prometheus,
        rate=rate,
        work_dir=work_dir,
        models_dir=models_dir,
        spec_out=kept_spec_path(report=report, work_dir=work_dir, models_dir=models_dir),
        approve_after=approve_after,
    )
    try:
        record = asyncio.run(_run(options, console=console, live=live))
    except DemoError as error:
        _fail(str(error))
    except KeyboardInterrupt:
        console.print("interrupted: every process the demo started is stopped")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _conclude(record, console=console, report=report)


async def _run(options: DemoOptions, *, console: Console, live: bool | None) -> DemoRecord:
    from canaryml_cli.demo.runner import run_demo
    from canaryml_cli.demo.view import DemoView

    # SIGTERM (a CI job cancelled, `kill`) stops the processes too, as Ctrl-C does.
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        with DemoView(console, live=live) as view:
            return await run_demo(options, echo=view.echo, observe=view.update)
    except asyncio.CancelledError:
        raise KeyboardInterrupt from None
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def _conclude(record: DemoRecord, *, console: Console, report: Path | None) -> None:
    from canaryml_cli.demo.report import ReportError, build_summary, write_report

    summary = build_summary(record)
    style = {"Promoted": "bold green", "RolledBack": "bold red"}.get(record.outcome, "bold")
    took = summary.get("durationSeconds")
    console.print(f"\n[{style}]{record.outcome}[/] after {took:.0f} s" if took else record.outcome)
    if summary.get("decision"):
        console.print(summary["decision"], markup=False)
    gate = summary.get("approval")
    if gate is not None:
        approved = (
            f"approved by {gate['approvedBy']} at {gate['approvedSeconds']:.0f} s"
            if gate["approvedBy"]
            else "not approved"
        )
        console.print(
            f"approval: awaited from {gate['awaitedSeconds']:.0f} s, {approved}", markup=False
        )
    if record.timed_out:
        console.print(f"the rollout had not ended when --duration ran out ({record.outcome})")
    answered = ", ".join(f"{track} {n}" for track, n in sorted(record.requests.items()))
    console.print(f"requests answered: {answered or 'none'}", markup=False)
    rerun = rerun_command(record)
    if rerun is not None:
        # soft_wrap: a long command stays one line, to copy whole.
        console.print(f"the ModelDeployment of this run: {record.spec_file}", markup=False)
        console.print(f"the traffic it was sent: {record.traffic_file}", markup=False)
        console.print(f"edit it and run it again: {rerun}", markup=False, soft_wrap=True)
    if report is not None:
        try:
            summary_path, plot_path = write_report(record=record, directory=report)
        except ReportError as error:
            _fail(str(error))
        console.print(f"report: {summary_path} and {plot_path}", markup=False)


def _fail(message: str) -> NoReturn:
    Console(stderr=True, highlight=False).print(f"canaryml demo: {message}", markup=False)
    raise typer.Exit(EXIT_CANNOT_RUN)


def register(app: typer.Typer) -> None:
    app.command()(demo)
