"""`canaryml operator` and `canaryml crd`, registered on the one `canaryml` command."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer


def operator(
    namespace: Annotated[
        list[str] | None,
        typer.Option(
            "--namespace",
            "-n",
            help="Watch this namespace (repeat for more; globs like 'ml-*' work).",
        ),
    ] = None,
    all_namespaces: Annotated[
        bool, typer.Option("--all-namespaces", "-A", help="Watch the whole cluster.")
    ] = False,
    peering: Annotated[
        str | None,
        typer.Option(help="kopf peering name, so that only one of several replicas acts."),
    ] = None,
    standalone: Annotated[
        bool, typer.Option(help="Run without peering (one replica only).")
    ] = False,
    liveness: Annotated[
        str | None,
        typer.Option(help="Serve a liveness probe, e.g. http://0.0.0.0:8081/healthz."),
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log at debug level.")] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="Log warnings and errors only.")
    ] = False,
    log_format: Annotated[str, typer.Option(help="plain, full or json.")] = "full",
) -> None:
    """Run the operator: reconcile ModelDeployments into serving Deployments and Services."""
    import kopf

    if all_namespaces == bool(namespace):
        raise typer.BadParameter("give --all-namespaces or at least one --namespace")
    formats = {fmt.name.lower(): fmt for fmt in kopf.LogFormat}
    if log_format not in formats:
        raise typer.BadParameter(f"--log-format must be one of {', '.join(formats)}")
    if verbose and quiet:
        raise typer.BadParameter("give --verbose or --quiet, not both")
    kopf.configure(verbose=verbose, quiet=quiet, log_format=formats[log_format])

    import canaryml_operator.main  # noqa: F401  (registers the handlers)

    kopf.run(
        clusterwide=all_namespaces,
        namespaces=namespace or (),
        standalone=standalone,
        peering_name=peering,
        liveness_endpoint=liveness,
    )


def crd(
    out: Annotated[
        Path | None,
        typer.Option(help="Folder to write the CRD file into (default: print it)."),
    ] = None,
) -> None:
    """Print or write the CustomResourceDefinitions (ModelDeployment, AnalysisTemplate,
    ClusterAnalysisTemplate), generated from the models."""
    from canaryml_operator.crd import render_all

    rendered = render_all()
    if out is None:
        typer.echo("---\n".join(rendered.values()), nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered.items():
        (out / name).write_text(text, encoding="utf-8")
        typer.echo(str(out / name), err=True)


NamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--namespace", "-n", help="Namespace (default: the kubeconfig context's, or default)."
    ),
]
NameArgument = Annotated[str, typer.Argument(help="The ModelDeployment's name.")]


def _evidence_cells(check: Any) -> list[str]:
    """A sequential check's interval, evidence and requests (and how many more a decision
    needs); `-` for a check that is not sequential. (`check`: an api.CheckRecord; the CLI
    imports the API lazily.)"""
    from canaryml_operator.measurements import value_text

    if check.samples is None:
        return ["-", "-", "-"]
    interval = (
        "-"
        if check.low is None
        else f"{value_text(check.name, check.low)} - "
        + ("inf" if check.high is None else value_text(check.name, check.high))
    )
    evidence = "-" if check.evidence is None else f"{check.evidence:.3g}"
    needed = "" if check.requests_needed is None else f" (+{check.requests_needed})"
    return [interval, evidence, f"{check.samples:.0f}{needed}"]


def _offline_table(last: Any) -> Any:
    """The tracks' held-out figures (`canaryml package --evaluate`) next to the live accuracy
    on labels since the step began, when the analysis judged it. (`last`: an
    api.AnalysisRecord with figures.)"""
    from rich.table import Table

    from canaryml_operator.measurements import ACCURACY, ACCURACY_VS_STABLE, value_text

    by_track = {figures.track: figures for figures in last.offline}
    tracks = [track for track in ("canary", "stable") if track in by_track]
    live = {check.name: check.value for check in last.checks}
    live_accuracy: dict[str, float | None] = {"canary": live.get(ACCURACY)}
    canary_live, difference = live.get(ACCURACY), live.get(ACCURACY_VS_STABLE)
    if canary_live is not None and difference is not None:
        live_accuracy["stable"] = canary_live - difference
    table = Table(title="held-out figures (canaryml package --evaluate) and live accuracy")
    table.add_column("figure")
    for track in tracks:
        table.add_column(f"{track} {by_track[track].version}")
    table.add_row(
        "held-out rows",
        *(f"{by_track[t].rows:,}" if by_track[t].rows else "none recorded" for t in tracks),
    )
    table.add_row(
        "held-out data",
        *((by_track[t].heldout_sha256 or "-")[:12] for t in tracks),
    )
    names = sorted({name for t in tracks for name in by_track[t].metrics})
    for name in names:
        cells = []
        for track in tracks:
            value = by_track[track].metrics.get(name)
            if name == ACCURACY:  # read as the live accuracy is: in %
                cells.append(value_text(ACCURACY, value))
            else:
                cells.append("-" if value is None else f"{value:.4f}")
        table.add_row(name, *cells)
    if any(live_accuracy.get(t) is not None for t in tracks):
        table.add_row(
            "accuracy, live (labels since the step began)",
            *(value_text(ACCURACY, live_accuracy.get(t)) for t in tracks),
        )
    return table


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=1)


def _current_namespace() -> str:
    from kubernetes import config as k8s_config

    try:
        _, active = k8s_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
        return str(active.get("context", {}).get("namespace") or "default")
    except (k8s_config.ConfigException, OSError, TypeError):
        return "default"


def _client_and_object(name: str, namespace: str | None) -> tuple[Any, str, dict[str, Any]]:
    from canaryml_api import resource as api

    from canaryml_operator.kube import KubeError, load_client

    namespace = namespace or _current_namespace()
    try:
        client = load_client()
        found = client.get(api.KIND, namespace, name)
    except KubeError as error:
        raise _fail(f"cannot reach the Kubernetes API: {error}") from error
    except Exception as error:  # kubeconfig missing or unreadable
        raise _fail(f"no Kubernetes configuration: {error}") from error
    if found is None:
        raise _fail(f"ModelDeployment {namespace}/{name} not found")
    return client, namespace, found


def _annotate(
    name: str,
    namespace: str | None,
    annotations: dict[str, str | None],
    *,
    client: Any = None,
) -> str:
    from canaryml_api import resource as api

    from canaryml_operator.kube import KubeError

    if client is None:
        client, namespace, _ = _client_and_object(name, namespace)
    assert namespace is not None
    try:
        client.patch(api.KIND, namespace, name, {"metadata": {"annotations": annotations}})
    except KubeError as error:
        raise _fail(f"cannot annotate ModelDeployment {namespace}/{name}: {error}") from error
    return namespace


def command_value(command: str, found: dict[str, Any]) -> str:
    """The value of a command's annotation for the object as read: the version it acts on
    (the canary's for promote and abort, the stable's for rollback), with "@" and the time
    added when that plain value was handled already (the same command again)."""
    from datetime import UTC, datetime

    from canaryml_api import resource as api

    from canaryml_operator.rollout import COMMAND_ANNOTATIONS

    status = api.parse_status(found.get("status"))
    if command == "rollback":
        target = status.stable_model.version if status.stable_model else None
        if target is None:
            raise _fail("the status names no stable model yet: nothing to roll back")
    else:
        canary = (found.get("spec") or {}).get("canary") or {}
        target = (canary.get("model") or {}).get("version")
        if not target:
            raise _fail("the spec has no canary")
    key = COMMAND_ANNOTATIONS[command]  # type: ignore[index]
    if status.handled_commands.get(key) == target:
        return f"{target}@{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    return str(target)


def _command(command: str, name: str, namespace: str | None, done: str) -> None:
    from canaryml_operator.rollout import COMMAND_ANNOTATIONS

    key = COMMAND_ANNOTATIONS[command]  # type: ignore[index]
    client, namespace, found = _client_and_object(name, namespace)
    value = command_value(command, found)
    namespace = _annotate(name, namespace, {key: value}, client=client)
    typer.echo(
        f'{namespace}/{name}: {done} ({key}: "{value}"; the operator acts on it once and '
        "records it in status.handledCommands)"
    )


def promote(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Promote the canary now, skipping the remaining steps and their analysis (once its pods
    are available)."""
    _command("promote", name, namespace, "promotion requested")


def abort(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Roll the canary back now: weight 0, canary scaled to 0, stable keeps serving."""
    _command("abort", name, namespace, "abort requested")


def rollback(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Return the stable track to the model it had before the last promotion."""
    _command("rollback", name, namespace, "rollback to the previous stable model requested")


def pause(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Hold the canary at its weight: no step, promotion or rollback until resumed."""
    from canaryml_operator.rollout import COMMAND_ANNOTATIONS

    namespace = _annotate(name, namespace, {COMMAND_ANNOTATIONS["pause"]: "true"})
    typer.echo(f"{namespace}/{name}: paused")


def resume(name: NameArgument, namespace: NamespaceOption = None) -> None:
    """Undo `canaryml pause` (spec.paused, if set in the spec, still holds)."""
    from canaryml_operator.rollout import COMMAND_ANNOTATIONS

    _, namespace, found = _client_and_object(name, namespace)
    namespace = _annotate(name, namespace, {COMMAND_ANNOTATIONS["pause"]: None})
    held = (found.get("spec") or {}).get("paused")
    typer.echo(
        f"{namespace}/{name}: resumed"
        + (" (but spec.paused is true: the rollout stays paused)" if held else "")
    )


# `status --watch`: the server ends each watch after this many seconds; it is then started
# again from the last resourceVersion seen (after one read, in case an event fell in between).
WATCH_SECONDS = 60


def status(
    name: NameArgument,
    namespace: NamespaceOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
    watch: Annotated[
        bool,
        typer.Option(
            "--watch",
            "-w",
            help="Redraw on every change (the watch API), until Ctrl-C or the resource is "
            "deleted; with -o json, one JSON line per change.",
        ),
    ] = False,
    interval: Annotated[
        float,
        typer.Option(
            min=0.5,
            help="With --watch: seconds between reads where the watch API is refused or its "
            "stream breaks.",
        ),
    ] = 5.0,
) -> None:
    """Show a ModelDeployment's rollout: phase, weight, step, each check against its bound."""
    import json
    import time

    from rich.console import Console

    if output not in ("table", "json"):
        raise typer.BadParameter("--output must be table or json")
    client, namespace, found = _client_and_object(name, namespace)
    if not watch:
        if output == "json":
            typer.echo(json.dumps(found.get("status") or {}, indent=2))
            return
        Console().print(*render_status(found))
        return
    updates = status_updates(client, namespace, name, found, interval=interval, sleep=time.sleep)
    try:
        if output == "json":
            typer.echo(json.dumps(found.get("status") or {}, separators=(",", ":")))
            for current in updates:
                if current is None:
                    break
                typer.echo(json.dumps(current.get("status") or {}, separators=(",", ":")))
        else:
            show_updates(Console(), found, updates)
    except KeyboardInterrupt:  # Ctrl-C: the way a watch ends
        return
    typer.echo(f"ModelDeployment {namespace}/{name} was deleted", err=True)


def status_updates(
    client: Any,
    namespace: str,
    name: str,
    found: dict[str, Any],
    *,
    interval: float,
    sleep: Callable[[float], None],
    watch_seconds: int = WATCH_SECONDS,
) -> Iterator[dict[str, Any] | None]:
    """The ModelDeployment each time it changes after `found` (as read), then None and the end
    once it is deleted; endless otherwise (the caller stops on Ctrl-C).

    Follows the watch API from `found`'s resourceVersion; where a stream ends empty, breaks or
    is refused (a 403 on `watch`, a 410 Gone), sleeps `interval`, reads the object once, and
    watches again. (`client`: a kube.KubeClient.)"""
    from canaryml_api import resource as api

    from canaryml_operator.kube import KubeError

    version = (found.get("metadata") or {}).get("resourceVersion")
    while True:
        quiet = True
        try:
            for event in client.watch(
                api.KIND,
                namespace,
                name=name,
                resource_version=version,
                timeout_seconds=watch_seconds,
            ):
                obj = event.get("object") or {}
                if event.get("type") == "ERROR":  # e.g. 410 Gone: too old a resourceVersion
                    raise KubeError(int(obj.get("code") or 0), str(obj.get("message")))
                if event.get("type") == "DELETED":
                    yield None
                    return
                seen = (obj.get("metadata") or {}).get("resourceVersion")
                if event.get("type") in ("ADDED", "MODIFIED") and seen != version:
                    quiet, version = False, seen
                    yield obj
        except KubeError:
            quiet = True
        if quiet:
            sleep(interval)
        try:
            current = client.get(api.KIND, namespace, name)
        except KubeError:
            continue  # unreachable for now: try again
        if current is None:
            yield None
            return
        seen = (current.get("metadata") or {}).get("resourceVersion")
        if seen != version:
            version = seen
            yield current


def show_updates(
    console: Any, found: dict[str, Any], updates: Iterable[dict[str, Any] | None]
) -> None:
    """`canaryml status --watch`: on a terminal, one view redrawn in place on every change (as
    `kubectl argo rollouts get rollout --watch`); elsewhere (a pipe, a file), each version
    printed after the last. Returns when `updates` ends. (`console`: a rich Console.)"""
    from rich.console import Group
    from rich.live import Live

    def view(obj: dict[str, Any]) -> Any:
        return Group(*render_status(obj))

    if console.is_terminal:
        with Live(view(found), console=console, auto_refresh=False) as live:
            for current in updates:
                if current is None:
                    return
                live.update(view(current), refresh=True)
        return
    console.print(view(found))
    for current in updates:
        if current is None:
            return
        version = (current.get("metadata") or {}).get("resourceVersion")
        console.rule(f"resourceVersion {version}")
        console.print(view(current))


def render_status(found: dict[str, Any]) -> list[Any]:
    """The rich renderables of `canaryml status` (a summary, the last analysis, conditions,
    history), from the object as the API returns it."""
    from canaryml_api import resource as api
    from rich.table import Table

    from canaryml_operator.measurements import value_text

    meta, raw = found.get("metadata", {}), found.get("status") or {}
    status = api.parse_status(raw)
    spec = found.get("spec") or {}
    steps = (spec.get("canary") or {}).get("steps") or []
    if (spec.get("canary") or {}).get("blueGreen") is not None:
        steps = [0]  # blue-green: one preview step at 0%, then all traffic at once
    found_experiment = (spec.get("canary") or {}).get("experiment")
    if found_experiment is not None:
        steps = [found_experiment.get("weight", 50)]  # an A/B experiment: one fixed weight
    summary = Table(title=f"{meta.get('namespace')}/{meta.get('name')}", show_header=False)
    step = status.current_step
    summary.add_row("phase", str(status.phase or "-"))
    summary.add_row("stable", str(status.stable_version or "-"))
    summary.add_row("canary", str(status.canary_version or "-"))
    summary.add_row("weight", f"{status.canary_weight}%")
    for label, text in _strategy_rows(found, status):
        summary.add_row(label, text)
    summary.add_row("step", f"{step + 1} of {len(steps)}" if step is not None else "-")
    summary.add_row("failed analyses in a row", str(status.failed_checks))
    summary.add_row("held analyses in a row", str(status.held_analyses))
    approval = _approval_text(found, status)
    if approval is not None:
        summary.add_row("approval", approval)
    out: list[Any] = [summary]
    if status.experiment is not None:
        out.append(_experiment_table(status.experiment))
    last = status.last_analysis
    if last is not None:
        checks = Table(title=f"last analysis {last.time:%Y-%m-%d %H:%M:%S}: {last.verdict}")
        # Sequential checks (analysis.sequential, .baseline) add what their decision rests on.
        sequential = any(check.samples is not None for check in last.checks)
        columns = ["check", "value", "min", "max", "verdict"]
        if sequential:
            columns += ["interval", "evidence", "requests (more needed)"]
        for column in [*columns, "why"]:
            checks.add_column(column)
        for check in last.checks:
            cells = [
                check.name,
                value_text(check.name, check.value),
                value_text(check.name, check.min),
                value_text(check.name, check.max),
                # analysis.metrics[].dryRun: what it would have said, counted for nothing
                f"{check.verdict} (dry run)" if check.dry_run else check.verdict,
            ]
            if sequential:
                cells += _evidence_cells(check)
            checks.add_row(*cells, check.message)
        out.append(checks)
        if last.offline:
            out.append(_offline_table(last))
    if status.webhooks:
        out.append(_webhooks_table(status))
    if status.conditions:
        conditions = Table(title="conditions")
        for column in ("type", "status", "reason", "message"):
            conditions.add_column(column)
        for condition in status.conditions:
            conditions.add_row(
                condition.type, condition.status, condition.reason, condition.message
            )
        out.append(conditions)
    if status.history:
        history = Table(title="history")
        for column in ("time", "event", "version", "reason"):
            history.add_column(column)
        for entry in status.history[-10:]:
            history.add_row(
                f"{entry.time:%Y-%m-%d %H:%M:%S}", entry.event, entry.version, entry.reason
            )
        out.append(history)
    return out


def _webhooks_table(status: Any) -> Any:
    """status.webhooks: each hook's occasion, attempts and last answer (`status`: an
    api.ModelDeploymentStatus)."""
    from rich.table import Table

    table = Table(title="webhooks")
    for column in ("name", "type", "occasion", "attempts", "passed", "last result", "next"):
        table.add_column(column)
    for record in status.webhooks:
        table.add_row(
            record.name,
            record.type,
            record.occasion,
            str(record.attempts),
            "yes" if record.passed else "no",
            record.last_result,
            f"{record.next_attempt_at:%H:%M:%S}" if record.next_attempt_at else "-",
        )
    return table


def _experiment_table(record: Any) -> Any:
    """status.experiment: the winner, the effect and its interval, each track's counts
    (`record`: an api.ExperimentRecord)."""
    from rich.table import Table

    def rate(successes: float, samples: float) -> str:
        share = f"{successes / samples * 100:.2f} %" if samples > 0 else "-"
        return f"{share} ({successes:.0f} of {samples:.0f})"

    def points(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:+.2f} points"

    table = Table(title=f"A/B experiment on {record.metric}", show_header=False)
    table.add_row("winner", record.winner)
    table.add_row("effect (canary - stable)", points(record.effect))
    table.add_row("interval", f"{points(record.low)} to {points(record.high)}")
    table.add_row("canary", rate(record.canary_successes, record.canary_samples))
    table.add_row("stable", rate(record.stable_successes, record.stable_samples))
    table.add_row("started", f"{record.started_at:%Y-%m-%d %H:%M:%S}")
    decided = f"{record.decided_at:%Y-%m-%d %H:%M:%S}" if record.decided_at else "-"
    table.add_row("decided", decided)
    if record.false_winner_rate is not None:
        table.add_row("false winner rate", f"{record.false_winner_rate:g}")
    table.add_row("message", record.message)
    return table


def _strategy_rows(found: dict[str, Any], status: Any) -> list[tuple[str, str]]:
    """The rollout's strategy (canary steps, or spec.canary.blueGreen) and, for blue-green,
    where its preview is reached. (`status`: an api.ModelDeploymentStatus.)"""
    from canaryml_api.routing import SERVING_PHASES
    from canaryml_api.telemetry import VERSION_HEADER
    from canaryml_api.tracks import service_name

    spec = found.get("spec") or {}
    canary = spec.get("canary") or {}
    if not canary:
        return []
    experiment = canary.get("experiment")
    if experiment is not None:
        text = (
            f"A/B experiment on {experiment.get('metric', 'accuracy')} at "
            f"{experiment.get('weight', 50)}% (no steps; promoted only by `canaryml promote`)"
        )
        return [("strategy", text)]
    found_bg = canary.get("blueGreen")
    if found_bg is None:
        weights = ", ".join(f"{w}%" for w in canary.get("steps") or [])
        return [("strategy", f"canary (steps {weights or 'default'})")]
    analysis = spec.get("analysis") or {}
    runs = f"{found_bg.get('analysisSteps', 5)} x {analysis.get('interval', 'analysis.interval')}"
    rows = [("strategy", f"blueGreen (preview analysed for {runs}, then 100% at once)")]
    name = found.get("metadata", {}).get("name", "NAME")
    version = (canary.get("model") or {}).get("version") or status.canary_version or "-"
    if status.canary_weight == 100:
        state = "switched: it takes all traffic"
    elif status.phase in SERVING_PHASES and status.canary_version == version:
        state = "no live traffic"
    else:
        state = "not serving"
    rows.append(
        (
            "preview",
            f"{version} ({state}): Service {service_name(name, 'canary')}, or through the "
            f"router with {VERSION_HEADER}: {version} or /v2/models/MODEL/versions/{version}/infer",
        )
    )
    return rows


def _approval_text(found: dict[str, Any], status: Any) -> str | None:
    """The approval gate (spec.canary.approval.required): awaited since when and how to give
    it, given, or still ahead; None without the gate. (`status`: an api.ModelDeploymentStatus.)"""
    from canaryml_operator.rollout import COMMAND_ANNOTATIONS
    from canaryml_operator.state import APPROVED, awaiting_approval, condition

    meta = found.get("metadata", {})
    canary = (found.get("spec") or {}).get("canary") or {}
    given = condition(status, APPROVED)
    waiting = awaiting_approval(status)
    if waiting is not None:
        name, namespace = meta.get("name"), meta.get("namespace")
        version = status.canary_version or "<canary version>"
        return (
            f"AWAITED since {waiting.last_transition_time:%Y-%m-%d %H:%M:%S}: every step passed; "
            f"approve with `canaryml promote {name} -n {namespace}` (or the annotation "
            f'{COMMAND_ANNOTATIONS["promote"]}: "{version}")'
        )
    if given is not None and given.status == "True":
        return f"given: {given.message}"
    if (canary.get("approval") or {}).get("required"):
        return "required before the final promotion (not awaited yet)"
    return None


# The commands on one ModelDeployment: `canaryml COMMAND` and `kubectl canaryml COMMAND`.
ROLLOUT_COMMANDS = (status, promote, abort, pause, resume, rollback)


def register(app: typer.Typer) -> None:
    app.command()(operator)
    app.command()(crd)
    for command in ROLLOUT_COMMANDS:
        app.command()(command)


def plugin_app() -> typer.Typer:
    """`kubectl canaryml`: the rollout commands of `canaryml`, as a kubectl plugin (kubectl
    runs `kubectl-canaryml` from the PATH for `kubectl canaryml ...`)."""
    app = typer.Typer(
        name="kubectl canaryml",
        help="Watch and steer canaryml rollouts: status [--watch], promote, abort, rollback, "
        "pause, resume.",
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=False,
    )
    for command in ROLLOUT_COMMANDS:
        app.command()(command)
    return app


def kubectl_plugin() -> None:
    """The `kubectl-canaryml` console script."""
    plugin_app()(prog_name="kubectl canaryml")
