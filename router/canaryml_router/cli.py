"""`route`: what `canaryml router` runs with its settings.

The command's options are made from `RouterSettings` by the CLI package
(`canaryml_cli.options`); this module builds the router for the settings and serves it. Heavy
imports happen inside, so that the CLI starts fast.
"""

from __future__ import annotations

import gc
import sys
from typing import TYPE_CHECKING, Any

import typer

if TYPE_CHECKING:
    from canaryml_router.app import RouterApp
    from canaryml_router.settings import RouterSettings


def route(settings: RouterSettings) -> None:
    """Route a ModelDeployment's traffic: weighted or sticky split between stable and canary,
    mirroring to the shadow, shadow comparison, Prometheus metrics at /metrics.

    Every option can also be set by environment variable (CANARYML_ROUTER_*, and
    CANARYML_MODEL_DEPLOYMENT, CANARYML_NAMESPACE); see docs/operator.md ("The router").
    """
    import logging

    from canaryml_router.server import run_router

    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    app, what = _following(settings) if settings.follow else _static(settings)
    gc.collect()
    gc.freeze()  # as in serve: keep long-lived objects out of the collector's full passes
    typer.secho(
        f"routing {settings.model_deployment} ({what}) on {settings.host}:{settings.port}",
        err=True,
    )
    sys.stdout.flush()
    if settings.admin_port is not None:
        typer.secho(f"admin listener on {settings.admin_host}:{settings.admin_port}", err=True)
    run_router(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        admin_host=settings.admin_host,
        admin_port=settings.admin_port,
        limits=settings.connection_limits(),
        max_concurrency=settings.max_concurrency,
        keep_alive_timeout=settings.keep_alive_timeout,
    )


def _upstream_options(settings: RouterSettings) -> dict[str, Any]:
    """How the router talks to its upstreams, the same in both modes."""
    return {
        "upstream_timeout": settings.upstream_timeout,
        "shadow_timeout": settings.shadow_timeout,
        "max_mirrors": settings.max_mirrors,
        "max_connections": settings.max_upstream_connections,
        "max_answer_bytes": settings.max_upstream_answer_bytes,
        "max_head_bytes": settings.max_upstream_head_bytes,
        "answer_budget_bytes": settings.upstream_answer_budget_bytes,
        "rate_limit": settings.rate_limit(),
        "rate_limit_max_clients": settings.rate_limit_max_clients,
    }


def _following(settings: RouterSettings) -> tuple[RouterApp, str]:
    """The router whose weights follow the ModelDeployment, and how to say so."""
    from canaryml_router.app import create_router_app
    from canaryml_router.follow import ModelDeploymentFollower, default_namespace

    follower = ModelDeploymentFollower(
        name=settings.model_deployment,
        namespace=settings.namespace or default_namespace(),
        upstreams=settings.upstreams,
    )
    app = create_router_app(
        model_deployment=settings.model_deployment,
        weight_source=follower.run,
        **_upstream_options(settings),
    )
    return app, f"following {follower.namespace}/{follower.name}"


def _static(settings: RouterSettings) -> tuple[RouterApp, str]:
    """The router with the weights of the settings, and how to say so."""
    from canaryml_router.app import create_router_app

    try:
        table = settings.static_table()
    except ValueError as error:
        typer.secho(f"error: {error}", fg=typer.colors.RED, err=True)
        raise typer.Exit(code=2) from error
    app = create_router_app(
        model_deployment=settings.model_deployment,
        table=table,
        admin=settings.admin,
        admin_upstreams=settings.admin_upstreams,
        **_upstream_options(settings),
    )
    what = f"canary {table.canary_weight}%, shadow {table.shadow_percent}%"
    return app, what + (", admin" if settings.admin else "")
