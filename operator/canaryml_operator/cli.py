"""`canaryml operator` and `canaryml crd`, registered on the one `canaryml` command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

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
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
    log_format: Annotated[str, typer.Option(help="plain, full or json.")] = "full",
) -> None:
    """Run the operator: reconcile ModelDeployments into serving Deployments and Services."""
    import kopf

    if all_namespaces == bool(namespace):
        raise typer.BadParameter("give --all-namespaces or at least one --namespace")
    formats = {fmt.name.lower(): fmt for fmt in kopf.LogFormat}
    if log_format not in formats:
        raise typer.BadParameter(f"--log-format must be one of {', '.join(formats)}")
    kopf.configure(verbose=verbose, log_format=formats[log_format])

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
    """Print or write the ModelDeployment CustomResourceDefinition, generated from the models."""
    from canaryml_operator.crd import CRD_FILE, render_crd

    text = render_crd()
    if out is None:
        typer.echo(text, nl=False)
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / CRD_FILE).write_text(text, encoding="utf-8")
    typer.echo(str(out / CRD_FILE), err=True)


def register(app: typer.Typer) -> None:
    app.command()(operator)
    app.command()(crd)
