"""`canaryml package`, and `serve`: what `canaryml serve` runs with its settings.

The `serve` command's options are made from `ServerSettings` by the CLI package
(`canaryml_cli.options`); this module only loads the model and serves it.
"""

from __future__ import annotations

import contextlib
import gc
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

if TYPE_CHECKING:
    from canaryml_server.settings import ServerSettings


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
    evaluate: Annotated[
        Path | None,
        typer.Option(
            "--evaluate",
            help="Held-out data as CSV (features and the --target column): its metrics, "
            "measured through the served predictor, go into the manifest.",
        ),
    ] = None,
    require: Annotated[
        list[str] | None,
        typer.Option(
            "--require",
            help="A gate on a held-out metric, e.g. 'accuracy>=0.95' or 'rmse<3' (>=, >, <=, "
            "<, ==); repeatable. When one fails: exit 1 and nothing is written.",
        ),
    ] = None,
) -> None:
    """Package a model with its schema, reference profile and manifest (and ONNX form).

    The same inputs give the same digest; set SOURCE_DATE_EPOCH to record a creation time.
    """
    from rich.console import Console
    from rich.table import Table

    from canaryml_server.artifact import ArtifactError, package_model
    from canaryml_server.evaluation import (
        RequirementError,
        RequirementsNotMetError,
        parse_requirement,
    )

    if runtime not in ("auto", "onnx", "sklearn"):
        raise _fail(f"--runtime must be auto, onnx or sklearn, not {runtime!r}")
    # Malformed requirements and unknown metric names fail here, before the model is loaded;
    # whether this model records the metric is known once it has been evaluated.
    try:
        requirements = [parse_requirement(text) for text in require or ()]
    except RequirementError as error:
        raise _fail(str(error)) from error
    if requirements and evaluate is None:
        raise _fail("--require needs --evaluate: the held-out data to measure")
    if evaluate is not None and target is None:
        raise _fail("--evaluate needs --target: the label column of the held-out data")
    if evaluate is not None and not evaluate.is_file():
        raise _fail(f"no such held-out file: {evaluate}")
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
            evaluate_path=evaluate,
            requirements=requirements,
        )
    except RequirementsNotMetError as failed:
        console = Console(stderr=True)
        console.print(_requirements_table(failed.results, rows=failed.evaluation.rows))
        typer.secho(
            f"error: {failed} (on {failed.evaluation.rows} held-out rows); "
            f"nothing was written to {out}",
            fg=typer.colors.RED,
            err=True,
        )
        raise typer.Exit(code=1) from failed
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
    if manifest.evaluation is not None:
        evaluation = manifest.evaluation
        figures = ", ".join(f"{name} {value:.4g}" for name, value in evaluation.metrics.items())
        table.add_row("held out", f"{evaluation.rows} rows ({evaluation.runtime}): {figures}")
        for name, why in evaluation.skipped.items():
            table.add_row("", f"{name} skipped: {why}")
    table.add_row("sha256", result.digest)
    console = Console(stderr=True)
    console.print(table)
    if requirements and manifest.evaluation is not None:
        from canaryml_server.evaluation import check_requirements

        results = check_requirements(requirements, manifest.evaluation)
        console.print(_requirements_table(results, rows=manifest.evaluation.rows))
    _warn_about_the_reference(console, result.path)
    # The server refuses an unpinned model by default: show what to paste into the spec. On
    # stderr, so that stdout stays the digest alone for scripts.
    console.print(
        pin_snippet(result.digest, version=manifest.version), markup=False, soft_wrap=True
    )
    typer.echo(result.digest)


def _requirements_table(results: Any, *, rows: int) -> Any:
    """Each `--require`, the measured figure and whether it passed."""
    from rich.table import Table

    table = Table(title=f"requirements on {rows} held-out rows")
    table.add_column("requirement")
    table.add_column("measured", justify="right")
    table.add_column("result")
    for result in results:
        table.add_row(
            result.requirement.text,
            f"{result.value:.6g}",
            "pass" if result.passed else "FAIL",
        )
    return table


def _warn_about_the_reference(console: Any, folder: Path) -> None:
    """Features the drift test cannot judge at the default window with this reference: said
    now, not discovered in production (docs/judgment.md, "A calibrated drift gate")."""
    from canaryml_server.artifact import PROFILE_FILE
    from canaryml_server.drift_test import reference_problems
    from canaryml_server.profile import ReferenceProfile
    from canaryml_server.settings import ServerSettings

    profile = ReferenceProfile.model_validate_json((folder / PROFILE_FILE).read_text())
    window = ServerSettings.model_fields["drift_window"].default
    problems = reference_problems(profile, window=window)
    if not problems:
        return
    console.print(
        f"warning: with {profile.rows} reference rows and a {window}-row drift window, "
        f"{len(problems)} of {len(profile.features)} features cannot be judged at full "
        "resolution:",
        markup=False,
        soft_wrap=True,
    )
    shown = 5  # the first few say what is wrong; thirty lines of the same would not
    for problem in problems[:shown]:
        console.print(f"  {problem}", markup=False, soft_wrap=True)
    if len(problems) > shown:
        console.print(f"  and {len(problems) - shown} more", markup=False)


def pin_snippet(digest: str, *, version: str) -> str:
    """The digest line and the model block to paste (spec.model or spec.canary.model)."""
    return (
        f"sha256:{digest}\n"
        "Pin it in the ModelDeployment (spec.model, or spec.canary.model), with the URI this\n"
        "folder is published at; `canaryml serve DIR --sha256 DIGEST` checks it too:\n"
        "  model:\n"
        "    uri: s3://BUCKET/PATH  # where this folder is published\n"
        f'    version: "{version}"\n'
        f"    sha256: {digest}"
    )


def serve(settings: ServerSettings) -> None:
    """Serve a packaged model over HTTP (/predict, Open Inference Protocol v2, /metrics).

    Every option can also be set by environment variable (CANARYML_*); see docs/serving.md.
    """
    import uvicorn
    from canaryml_httpd.protocol import LimitedHttpToolsProtocol, limited

    from canaryml_server.app import create_app
    from canaryml_server.artifact import ArtifactError, load_artifact
    from canaryml_server.storage import ArtifactLimits, fetch_model

    try:
        folder = fetch_model(
            settings.model_uri,
            cache_dir=settings.model_cache_dir,
            trusted_sources=settings.trusted_sources,
            limits=ArtifactLimits(
                trusted_sources=settings.trusted_sources,
                max_bytes=settings.max_artifact_bytes,
                max_files=settings.max_artifact_files,
            ),
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
    limits = settings.connection_limits()
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=False,
        server_header=False,
        # Header size, header and body timeouts, body size and budget (docs/serving.md).
        http=limited(LimitedHttpToolsProtocol, limits),
        limit_concurrency=settings.max_concurrency,
        timeout_keep_alive=settings.keep_alive_timeout,
        h11_max_incomplete_event_size=limits.max_header_bytes,
    )


def register(app: typer.Typer) -> None:
    """`canaryml package`; `canaryml serve` is made from ServerSettings by the CLI package."""
    app.command()(package)
