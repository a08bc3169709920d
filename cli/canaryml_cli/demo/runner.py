"""One demo run: real processes, real metrics, and the operator's rollout core deciding.

The loop is the operator's own (`canaryml_operator.loop`) with the cluster replaced by local
processes:

    every 0.25 s: measure when an analysis is due (loop.measure_if_due), then loop.turn:
                  decide -> plan the tracks -> apply to the processes (LocalCluster) -> status

State is the status `loop.turn` returns, the one the operator would write in the resource's
`.status`; `LocalCluster` (demo.cluster) plays the cluster's part.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, Protocol

import yaml
from canaryml_api import resource as api
from canaryml_operator import loop
from canaryml_operator.children import unpinned_problem
from canaryml_operator.state import Owner, TrackPlan
from canaryml_server.artifact import MANIFEST_FILE, sha256_file
from canaryml_server.storage import local_path, scheme_of

from canaryml_cli.demo import scenarios
from canaryml_cli.demo.approval import DEFAULT_APPROVE_AFTER_S, DemoCommands
from canaryml_cli.demo.cluster import LocalCluster
from canaryml_cli.demo.example_models import TARGET, ensure_trained
from canaryml_cli.demo.measure import Measurer, PrometheusMeasurer, ScrapeMeasurer
from canaryml_cli.demo.processes import DemoError, ProcessGroup
from canaryml_cli.demo.prometheus import LocalPrometheus, PrometheusError, Target, prometheus_binary
from canaryml_cli.demo.record import DemoRecord, TimedEvent
from canaryml_cli.demo.traffic import (
    Row,
    Shift,
    Traffic,
    drift_shift,
    read_labels,
    read_rows,
)

TICK_S: Final = 0.25
LOCAL_SCHEMES: Final = ("file://", "http://", "https://", "s3://", "gs://", "models:/")
RELATIVE_PATH_RULE: Final = (
    "a relative path is read from the current folder, as `canaryml serve` reads it"
)


@dataclass(frozen=True)
class DemoOptions:
    scenario: str = scenarios.DEFAULT_SCENARIO
    spec_path: Path | None = None
    traffic_path: Path | None = None
    duration: float = 300.0
    prometheus: str = "auto"  # auto | off | URL
    rate: float = 50.0  # requests per second
    work_dir: Path | None = None  # None: a temporary folder, removed at the end
    models_dir: Path | None = None  # the bundled models' cache; None: under the work folder
    # Where the example's ModelDeployment is written (no --spec); None: into the work folder.
    spec_out: Path | None = None
    # An awaited approval (spec.canary.approval) nobody gave: the demo gives it after this long.
    approve_after: float = DEFAULT_APPROVE_AFTER_S


@dataclass(frozen=True)
class Setup:
    """What the run is about: the resource, its rows, and the scenario's changes."""

    name: str
    namespace: str
    spec: api.ModelDeploymentSpec
    rows: list[Row]
    plan: scenarios.ScenarioPlan
    spec_file: Path  # the ModelDeployment's file: the user's, or the example's as written
    traffic_file: Path
    shift: Shift | None = None  # drift: what happens to the requests the canary answers
    # The rows' true labels (the CSV's target column), sent back as feedback; None: none.
    labels: list[Any] | None = None


# -- inputs ---------------------------------------------------------------------------------


def load_spec_file(
    path: Path, *, base: Path | None = None
) -> tuple[str, str, api.ModelDeploymentSpec]:
    """(name, namespace, spec) of the ModelDeployment in a YAML file; DemoError says why not.

    A model's plain folder path, which `canaryml serve` reads but the API does not admit,
    becomes a file:// URI; a relative one is read from `base` (the current folder by default),
    as `canaryml serve` reads it. Every local model must exist.
    """
    base = Path.cwd() if base is None else base
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as error:
        raise DemoError(f"cannot read {path}: {error}") from None
    found = [d for d in documents if isinstance(d, dict) and d.get("kind") == api.KIND]
    if not found:
        raise DemoError(f"{path} holds no document with kind: {api.KIND}")
    document = found[0]
    raw, given = _folder_paths_as_uris(document.get("spec"), base=base)
    try:
        spec = api.parse_spec(raw)
    except ValueError as error:
        raise DemoError(f"{path}: invalid spec: {error}") from None
    if spec.canary is None:
        raise DemoError(f"{path}: the demo rolls out spec.canary, and this spec has none")
    for where, model in _models(spec).items():
        uri = given.get(where, model.uri)
        if not model.uri.startswith(LOCAL_SCHEMES):
            raise DemoError(
                f"{path}: {where}.uri {uri!r} cannot be read outside a cluster: use a folder "
                "path, a file:// URI, or an http(s)://, s3://, gs:// or models:/ URI"
            )
        if model.uri.startswith("file://"):
            local = local_path(model.uri)
            if not local.exists():
                hint = f" ({RELATIVE_PATH_RULE}: {base})" if where in given else ""
                raise DemoError(f"{path}: {where}.uri {uri!r}: no such folder {local}{hint}")
    unpinned = unpinned_problem(spec)
    if unpinned is not None:  # the operator would create no track either
        raise DemoError(f"{path}: {unpinned}")
    metadata = document.get("metadata") or {}
    return str(metadata.get("name") or "demo"), str(metadata.get("namespace") or "default"), spec


def _folder_paths_as_uris(spec: Any, *, base: Path) -> tuple[Any, dict[str, str]]:
    """The raw spec with every model's plain path (`build/models/stable`, `/srv/m`) made a
    file:// URI, and the paths as given, keyed by where they are (`spec.model`)."""
    if not isinstance(spec, dict):
        return spec, {}
    spec = copy.deepcopy(spec)
    given = {}
    for where, holder in (
        ("spec.model", spec),
        ("spec.canary.model", spec.get("canary")),
        ("spec.shadow.model", spec.get("shadow")),
    ):
        model = holder.get("model") if isinstance(holder, dict) else None
        uri = model.get("uri") if isinstance(model, dict) else None
        if isinstance(model, dict) and isinstance(uri, str) and uri and not scheme_of(uri):
            given[where] = uri
            model["uri"] = (base / Path(uri).expanduser()).resolve().as_uri()
    return spec, given


def _models(spec: api.ModelDeploymentSpec) -> dict[str, api.ModelRef]:
    found = {"spec.model": spec.model}
    if spec.canary is not None:
        found["spec.canary.model"] = spec.canary.model
    if spec.shadow is not None:
        found["spec.shadow.model"] = spec.shadow.model
    return found


def prepare(options: DemoOptions, *, work: Path, echo: Callable[[str], None]) -> Setup:
    """The spec and traffic of this run: the user's, or the bundled example's."""
    if options.scenario not in scenarios.PLANS:
        raise DemoError(
            f"unknown scenario {options.scenario!r}: use one of {', '.join(scenarios.SCENARIOS)}"
        )
    plan = scenarios.PLANS[options.scenario]
    if options.spec_path is not None:
        name, namespace, spec = load_spec_file(options.spec_path)
        if plan.swaps_models:
            raise DemoError(
                f"--scenario {options.scenario} swaps in another bundled model "
                f"({_swapped(plan)}); with --spec, point your spec at the models to roll out "
                "instead"
            )
        if options.traffic_path is None:
            raise DemoError(
                "--spec needs --traffic CSV: rows of your model's features to send (a test "
                "set; a `target` column is dropped)"
            )
        spec_file, traffic_file = options.spec_path, options.traffic_path
        rows = read_rows(traffic_file)
        labels = read_labels(traffic_file)
        preferred = None
    else:
        models_dir = options.models_dir or work / "models"
        models = ensure_trained(models_dir, echo=True)
        manifest = scenarios.example_spec(
            models=models,
            digests={role: sha256_file(folder / MANIFEST_FILE) for role, folder in models.items()},
            scenario=options.scenario,
        )
        spec_file = options.spec_out or work / scenarios.SPEC_FILE
        spec_file.parent.mkdir(parents=True, exist_ok=True)
        spec_file.write_text(yaml.safe_dump(manifest, sort_keys=False))
        echo(f"scenario {options.scenario}: {plan.description}")
        echo(f"the ModelDeployment of this run: {spec_file}")
        name, namespace = scenarios.NAME, scenarios.NAMESPACE
        spec = api.parse_spec(manifest["spec"])
        traffic_file = options.traffic_path or models_dir / "test.csv"
        rows = read_rows(traffic_file, drop=(TARGET,))
        labels = read_labels(traffic_file, column=TARGET)
        preferred = scenarios.DRIFT_FEATURE
    shift = None
    if plan.shift_canary_inputs:
        _, shift = drift_shift(rows, preferred=preferred)
    return Setup(name, namespace, spec, rows, plan, spec_file, traffic_file, shift, labels)


def _swapped(plan: scenarios.ScenarioPlan) -> str:
    swaps = [
        f"{role} as the {track}"
        for track, role in (("canary", plan.canary_role), ("shadow", plan.shadow_role))
        if role != "canary"
    ]
    return ", ".join(swaps)


# -- metrics --------------------------------------------------------------------------------


@contextlib.asynccontextmanager
async def metrics_source(
    mode: str, *, setup: Setup, cluster: LocalCluster, work: Path, echo: Callable[[str], None]
) -> AsyncIterator[tuple[str, Measurer]]:
    """("prometheus" | "scrape" | URL, the measurer): Prometheus started here when `auto` finds
    it installed, the user's at URL, or direct scrapes."""
    assert cluster.router is not None
    urls = [cluster.router.url, *(t.process.url for t in cluster.tracks.values())]
    labels = {"namespace": setup.namespace}
    if mode == "auto":
        mode = "prometheus" if prometheus_binary() else "off"
        if mode == "off":
            echo("prometheus is not installed: scraping /metrics directly (--prometheus off)")
    if mode == "prometheus":
        server = LocalPrometheus(
            root=work / "prometheus", targets=[Target(u, labels) for u in urls]
        )
        try:
            await asyncio.to_thread(server.start)
        except PrometheusError as error:
            raise DemoError(f"cannot start Prometheus: {error}") from None
        measurer = PrometheusMeasurer(url=server.url)
        try:
            echo(f"Prometheus: {server.url} (scraping every second)")
            yield "prometheus", measurer
        finally:
            await measurer.aclose()
            await asyncio.to_thread(server.stop)
    elif mode == "off":
        window = api.parse_duration(setup.spec.analysis.window)
        scraper = ScrapeMeasurer(targets=urls, window_seconds=window)
        scraper.start()
        try:
            yield "scrape", scraper
        finally:
            await scraper.aclose()
    else:
        if not mode.startswith(("http://", "https://")):
            raise DemoError(f"--prometheus {mode!r}: use auto, off, or an http(s):// URL")
        targets = work / "prometheus-targets.json"
        targets.write_text(
            json.dumps([{"targets": [u.split("//")[1] for u in urls], "labels": labels}])
        )
        echo(
            f"using the Prometheus at {mode}: it must scrape {', '.join(urls)} every few seconds "
            f"with the label namespace={setup.namespace} (file_sd_configs: {targets})"
        )
        measurer = PrometheusMeasurer(url=mode)
        try:
            if not await measurer.is_online():
                raise DemoError(f"the Prometheus at {mode} does not answer queries")
            yield mode, measurer
        finally:
            await measurer.aclose()


# -- the run --------------------------------------------------------------------------------


def finished(status: api.ModelDeploymentStatus, plan: TrackPlan) -> bool:
    """The rollout ended and its canary was drained (scaled to 0, or removed)."""
    if status.phase == "RolledBack":
        return not plan.canary_replicas
    if status.phase == "Promoted":
        return plan.canary_replicas is None
    return False


Observer = Callable[[DemoRecord], None]


async def run_demo(
    options: DemoOptions,
    *,
    echo: Callable[[str], None] = print,
    observe: Observer = lambda record: None,
) -> DemoRecord:
    """Run one rollout to its end (or `options.duration`); every process is stopped after."""
    with contextlib.ExitStack() as stack:
        if options.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="canaryml-demo-")))
        else:
            work = options.work_dir
            work.mkdir(parents=True, exist_ok=True)
        setup = await asyncio.to_thread(prepare, options, work=work, echo=echo)
        group = ProcessGroup(log_dir=work / "logs")
        record = DemoRecord(
            name=setup.name,
            scenario=options.scenario,
            metrics="",
            started_at=datetime.now(UTC),
            spec=setup.spec,
            spec_file=setup.spec_file,
            own_spec=options.spec_path is not None,
            traffic_file=setup.traffic_file,
        )
        cluster = LocalCluster(setup.name, setup.spec, setup.plan.canary_env, group, record)
        try:
            echo(f"starting the model servers and the router (logs: {group.log_dir})")
            await cluster.start()
            async with metrics_source(
                options.prometheus, setup=setup, cluster=cluster, work=work, echo=echo
            ) as (source, measurer):
                record.metrics = source
                await _roll_out(options, setup, cluster, measurer, record, observe)
        finally:
            record.finished_at = datetime.now(UTC)
            await cluster.close()
            await asyncio.to_thread(group.stop_all)
        return record


async def _roll_out(
    options: DemoOptions,
    setup: Setup,
    cluster: LocalCluster,
    measurer: Measurer,
    record: DemoRecord,
    observe: Observer,
) -> None:
    assert cluster.router is not None
    spec = setup.spec
    traffic = Traffic(
        url=cluster.router.url,
        rows=setup.rows,
        per_second=options.rate,
        sticky_header=spec.routing.sticky_header or scenarios.STICKY_HEADER,
        weight=lambda: cluster.weight,
        record=record,
        shift=setup.shift,
        labels=setup.labels,
        label_delay=setup.plan.label_delay_s,
    )
    sender = asyncio.get_running_loop().create_task(traffic.run())
    try:
        await roll_out(
            setup,
            cluster,
            measurer,
            record,
            observe,
            duration=options.duration,
            check=cluster.check_alive,
            approve_after=options.approve_after,
        )
    finally:
        sender.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sender


class DemoTracks(loop.Tracks, Protocol):
    """The tracks the demo's loop drives: `loop.Tracks`, and acting on what was applied."""

    async def converge(self, *, now: datetime) -> None: ...


def _now() -> datetime:
    return datetime.now(UTC)


async def roll_out(
    setup: Setup,
    cluster: DemoTracks,
    measurer: Measurer,
    record: DemoRecord,
    observe: Observer,
    *,
    duration: float,
    check: Callable[[], None] = lambda: None,
    clock: Callable[[], datetime] = _now,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    approve_after: float = DEFAULT_APPROVE_AFTER_S,
) -> None:
    """Turn the operator's loop until the rollout ended and its canary was drained, or for
    `duration` seconds (`clock` time). `check` raises when the demo itself broke. The
    commands are the annotations of the ModelDeployment file, and the demo's own approval of
    a promotion nobody approved within `approve_after` seconds (demo.approval)."""
    spec = setup.spec
    owner = Owner(name=setup.name, namespace=setup.namespace, uid="")
    commands = DemoCommands(
        name=setup.name,
        namespace=setup.namespace,
        spec_file=setup.spec_file,
        approve_after=approve_after,
    )
    deadline = clock() + timedelta(seconds=duration)
    status = api.ModelDeploymentStatus()
    while True:
        check()
        now = clock()
        measurements = await loop.measure_if_due(
            spec=spec, owner=owner, status=status, now=now, measure=measurer.measure
        )
        turn = loop.turn(
            spec=spec,
            invalid=None,
            previous=status,
            tracks=cluster,
            measurements=measurements,
            now=now,
            generation=1,
            commands=commands(status=status, now=now, record=record),
        )
        before, status = status, turn.status
        if status.last_analysis is not None and status.last_analysis != before.last_analysis:
            record.analyses.append(status.last_analysis)
            if measurements is not None:
                record.measured[measurements.time] = measurements
        for event in turn.events:
            record.events.append(TimedEvent(now, event.type, event.reason, event.message))
        record.status = status
        await cluster.converge(now=now)
        observe(record)
        if turn.plan is not None and finished(status, turn.plan):
            return
        if clock() >= deadline:
            record.timed_out = True
            return
        await sleep(TICK_S)
