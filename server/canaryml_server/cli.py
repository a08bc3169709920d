"""`canaryml package` and `canaryml serve`."""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import typer

if TYPE_CHECKING:
    from pydantic import ValidationError


def _fail(message: str) -> typer.Exit:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    return typer.Exit(code=2)


def _source_date() -> datetime | None:
    """SOURCE_DATE_EPOCH (reproducible-builds.org): the creation time to record, if any."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip()
    if not raw:
        return None
    if raw.isdigit():
        with contextlib.suppress(OverflowError, OSError, ValueError):  # beyond datetime's years
            return datetime.fromtimestamp(int(raw), UTC)
    raise _fail(f"SOURCE_DATE_EPOCH must be whole seconds since 1970, not {raw!r}")


def package(
    model: Annotated[
        Path, typer.Argument(help="A fitted estimator or Pipeline saved with joblib.")
    ],
    reference: Annotated[
        Path, typer.Option("--reference", "-r", help="Training data as CSV (the reference).")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder to write the artifact to.")],
    name: Annotated[str | None, typer.Option(help="Model name (default: the file's stem).")] = None,
    version: Annotated[str, typer.Option(help="Model version.")] = "0.1.0",
    target: Annotated[
        str | None, typer.Option(help="Label column of the reference CSV, left out of features.")
    ] = None,
    runtime: Annotated[
        str, typer.Option(help="auto (ONNX when verified), onnx (or fail) or sklearn.")
    ] = "auto",
    force: Annotated[bool, typer.Option(help="Replace a non-empty --out folder.")] = False,
) -> None:
    """Package a model with its schema, reference profile and manifest (and ONNX form).

    The same inputs give the same digest; set SOURCE_DATE_EPOCH to record a creation time.
    """
    from rich.console import Console
    from rich.table import Table

    from canaryml_server.artifact import ArtifactError, package_model

    if runtime not in ("auto", "onnx", "sklearn"):
        raise _fail(f"--runtime must be auto, onnx or sklearn, not {runtime!r}")
    requested: Literal["auto", "onnx", "sklearn"] = runtime  # type: ignore[assignment]
    if not model.is_file():
        raise _fail(f"no such model file: {model}")
    if not reference.is_file():
        raise _fail(f"no such reference file: {reference}")
    created = _source_date()
    try:
        result = package_model(
            model_path=model,
            reference_path=reference,
            out_dir=out,
            name=name,
            version=version,
            target=target,
            runtime=requested,
            overwrite=force,
            created=created,
        )
    except ArtifactError as error:
        raise _fail(str(error)) from error
    manifest = result.manifest
    choice = manifest.runtime
    table = Table(title=f"packaged {manifest.name} {manifest.version}", show_header=False)
    table.add_row("folder", str(result.path))
    table.add_row("estimator", manifest.estimator)
    table.add_row("task", manifest.task + (f" {manifest.classes}" if manifest.classes else ""))
    kinds = [f.kind.value for f in result.schema.features]
    numeric, categorical = kinds.count("numeric"), kinds.count("categorical")
    table.add_row("features", f"{len(kinds)} ({numeric} numeric, {categorical} categorical)")
    table.add_row("runtime", f"{choice.runtime}: {choice.reason}")
    if result.sklearn_us_per_row and result.onnx_us_per_row:
        table.add_row(
            "one row",
            f"sklearn {result.sklearn_us_per_row:.0f} us, onnx {result.onnx_us_per_row:.0f} us "
            f"({result.sklearn_us_per_row / result.onnx_us_per_row:.0f}x)",
        )
    table.add_row("sha256", result.digest)
    Console(stderr=True).print(table)
    typer.echo(result.digest)


def serve(
    model: Annotated[
        str | None,
        typer.Argument(help="Artifact folder or URI (default: $CANARYML_MODEL_URI)."),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [0.0.0.0].")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [8080].")] = None,
    track: Annotated[str | None, typer.Option(help="stable, canary or shadow.")] = None,
    model_deployment: Annotated[
        str | None, typer.Option(help="ModelDeployment name for the metrics labels.")
    ] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected artifact digest (sha256 of manifest.json).")
    ] = None,
) -> None:
    """Serve a packaged model over HTTP (/predict, Open Inference Protocol v2, /metrics).

    Every option can also be set by environment variable (CANARYML_*); see docs/serving.md.
    """
    import uvicorn
    from pydantic import ValidationError

    from canaryml_server.app import create_app
    from canaryml_server.artifact import ArtifactError, load_artifact
    from canaryml_server.settings import ServerSettings
    from canaryml_server.storage import fetch_model

    overrides = {
        "model_uri": model,
        "host": host,
        "port": port,
        "track": track,
        "model_deployment": model_deployment,
        "model_sha256": sha256,
    }
    try:
        settings = ServerSettings.model_validate(
            {k: v for k, v in overrides.items() if v is not None}
        )
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
        )
        raise _fail(f"invalid settings: {problems}") from error
    try:
        folder = fetch_model(
            settings.model_uri,
            cache_dir=settings.model_cache_dir,
            trusted_sources=settings.trusted_sources,
        )
        loaded = load_artifact(
            folder,
            expected_sha256=settings.model_sha256,
            runtime=settings.runtime,
            onnx_threads=settings.onnx_threads,
            require_sha256=settings.require_sha256,
        )
    except ArtifactError as error:
        raise _fail(str(error)) from error
    app = create_app(model=loaded, settings=settings)
    # Everything loaded so far (libraries, the model) lives as long as the process: keep it out
    # of the garbage collector's full passes, whose pauses would otherwise show in p99 latency.
    gc.collect()
    gc.freeze()
    typer.secho(
        f"serving {loaded.manifest.name} {loaded.manifest.version} "
        f"({loaded.predictor.runtime}, {settings.track}) on {settings.host}:{settings.port}",
        err=True,
    )
    sys.stdout.flush()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
    )


def router(
    model_deployment: Annotated[
        str | None,
        typer.Option(help="ModelDeployment name: followed with --follow, and the metrics label."),
    ] = None,
    follow: Annotated[
        bool | None,
        typer.Option(
            "--follow/--no-follow",
            help="Follow the ModelDeployment's weights through a Kubernetes watch "
            "(default: static weights).",
        ),
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(
            help="Its namespace [$CANARYML_NAMESPACE, else the pod's, else the "
            "kubeconfig context's]."
        ),
    ] = None,
    upstream: Annotated[
        list[str] | None,
        typer.Option(
            help="TRACK=URL of a track's model servers (repeatable); with --follow it "
            "overrides the default http://NAME-TRACK."
        ),
    ] = None,
    canary_weight: Annotated[
        int | None, typer.Option(help="Static mode: percent of traffic to the canary [0].")
    ] = None,
    shadow_percent: Annotated[
        int | None,
        typer.Option(help="Static mode: percent of prediction requests mirrored [0]."),
    ] = None,
    sticky_header: Annotated[
        str | None,
        typer.Option(
            help="Static mode: requests with the same value of this header stay on one track."
        ),
    ] = None,
    version: Annotated[
        list[str] | None,
        typer.Option(
            help="Static mode: TRACK=VERSION for the metrics of upstreams that do "
            "not send x-canaryml-model-version (repeatable)."
        ),
    ] = None,
    probability_tolerance: Annotated[
        float | None,
        typer.Option(help="Static mode: shadow and live probabilities agree within this [0.05]."),
    ] = None,
    admin: Annotated[
        bool | None,
        typer.Option(
            "--admin/--no-admin",
            help="Static mode: accept PUT /router/weights {canaryWeight, shadowPercent}.",
        ),
    ] = None,
    host: Annotated[str | None, typer.Option(help="Listen address [0.0.0.0].")] = None,
    port: Annotated[int | None, typer.Option(help="Listen port [8080].")] = None,
    upstream_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for a track's answer, then 504 [30].")
    ] = None,
    shadow_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for the shadow's answer [5].")
    ] = None,
    max_mirrors: Annotated[
        int | None, typer.Option(help="Mirrors in flight at most; more are skipped [64].")
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="critical, error, warning, info (default) or debug.")
    ] = None,
) -> None:
    """Route a ModelDeployment's traffic: weighted or sticky split between stable and canary,
    mirroring to the shadow, shadow comparison, Prometheus metrics at /metrics.

    Every option can also be set by environment variable (CANARYML_ROUTER_*, and
    CANARYML_MODEL_DEPLOYMENT, CANARYML_NAMESPACE); see docs/operator.md ("The router").
    """
    import logging

    from pydantic import ValidationError

    from canaryml_server.router import create_router_app
    from canaryml_server.router_server import run_router
    from canaryml_server.router_settings import RouterSettings

    overrides = {
        "model_deployment": model_deployment,
        "follow": follow,
        "namespace": namespace,
        "upstreams": upstream or None,
        "canary_weight": canary_weight,
        "shadow_percent": shadow_percent,
        "sticky_header": sticky_header,
        "versions": version or None,
        "probability_tolerance": probability_tolerance,
        "admin": admin,
        "host": host,
        "port": port,
        "upstream_timeout": upstream_timeout,
        "shadow_timeout": shadow_timeout,
        "max_mirrors": max_mirrors,
        "log_level": log_level,
    }
    try:
        settings = RouterSettings.model_validate(
            {k: v for k, v in overrides.items() if v is not None}
        )
    except ValidationError as error:
        raise _fail(f"invalid settings: {_problems(error)}") from error
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if settings.follow:
        from canaryml_server.router_follow import ModelDeploymentFollower, default_namespace

        follower = ModelDeploymentFollower(
            name=settings.model_deployment,
            namespace=settings.namespace or default_namespace(),
            upstreams=settings.upstreams,
        )
        app = create_router_app(
            model_deployment=settings.model_deployment,
            weight_source=follower.run,
            upstream_timeout=settings.upstream_timeout,
            shadow_timeout=settings.shadow_timeout,
            max_mirrors=settings.max_mirrors,
        )
        what = f"following {follower.namespace}/{follower.name}"
    else:
        try:
            table = settings.static_table()
        except ValueError as error:
            raise _fail(str(error)) from error
        app = create_router_app(
            model_deployment=settings.model_deployment,
            table=table,
            admin=settings.admin,
            upstream_timeout=settings.upstream_timeout,
            shadow_timeout=settings.shadow_timeout,
            max_mirrors=settings.max_mirrors,
        )
        what = f"canary {table.canary_weight}%, shadow {table.shadow_percent}%" + (
            ", admin" if settings.admin else ""
        )
    gc.collect()
    gc.freeze()  # as in serve: keep long-lived objects out of the collector's full passes
    typer.secho(
        f"routing {settings.model_deployment} ({what}) on {settings.host}:{settings.port}",
        err=True,
    )
    sys.stdout.flush()
    run_router(app, host=settings.host, port=settings.port, log_level=settings.log_level)


def _problems(error: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, e['loc'])) or 'settings'}: {e['msg']}" for e in error.errors()
    )


def register(app: typer.Typer) -> None:
    app.command()(package)
    app.command()(serve)
    app.command()(router)
