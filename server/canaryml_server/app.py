"""The model server's app: a route table over endpoint handlers, built around one loaded model.

`create_app` assembles the pieces: the data plane (`dataplane`: validation, prediction, drift,
no HTTP), the prediction pipeline (`pipeline`: body limit, fault injection, timing, metrics,
version header), the handlers (`endpoints`) and the OpenAPI document (`openapi`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from canaryml_server.artifact import LoadedModel
from canaryml_server.dataplane import DataPlane, ModelIdentity
from canaryml_server.endpoints import Endpoints
from canaryml_server.faults import Faults
from canaryml_server.metrics import ServerMetrics
from canaryml_server.openapi import (
    INFERENCE_TAG,
    MONITORING_TAG,
    build_document,
    feedback_docs,
    infer_docs,
    predict_docs,
)
from canaryml_server.pipeline import PredictionPipeline
from canaryml_server.settings import ServerSettings

log = logging.getLogger("canaryml.server")

Endpoint = Callable[..., Awaitable[Response]]


@dataclass(frozen=True, slots=True)
class ServedRoute:
    """One line of the route table: a path and method, its handler, and how it is documented."""

    path: str
    method: str
    endpoint: Endpoint
    docs: Mapping[str, Any] = field(default_factory=dict)
    # Prediction routes are answered by a plain Starlette route placed first (see `mount`).
    prediction: bool = False
    # Answered by a plain Starlette route too, without being a prediction (feedback).
    direct: bool = False


class ServerApp(FastAPI):
    """FastAPI, with the inference request's schemas in its OpenAPI document."""

    def openapi(self) -> dict[str, Any]:
        if self.openapi_schema is None:
            self.openapi_schema = build_document(self)
        return self.openapi_schema


def create_app(*, model: LoadedModel, settings: ServerSettings) -> FastAPI:
    plane = DataPlane(model, settings)
    identity = plane.identity
    faults = _fault_injection(settings, identity)
    registry = CollectorRegistry(auto_describe=True)
    pipeline = PredictionPipeline(
        version=identity.version,
        body_limit=settings.max_body_bytes,
        faults=faults,
        metrics=_server_metrics(settings, plane, registry),
    )
    app = ServerApp(
        title=f"canaryml: {identity.name} {identity.version} ({identity.track})",
        version=identity.version,
        description=(
            f"Serves `{identity.name}` version `{identity.version}` ({model.manifest.estimator}, "
            f"runtime `{model.predictor.runtime}`) on the `{identity.track}` track of "
            f"`{identity.deployment}`."
        ),
    )
    mount(app, route_table(Endpoints(plane, pipeline, registry), plane))
    return app


def route_table(endpoints: Endpoints, plane: DataPlane) -> tuple[ServedRoute, ...]:
    """Every route of the server, in the order the OpenAPI document lists them."""
    e = endpoints
    v2 = {"tags": [INFERENCE_TAG]}
    infer = infer_docs()
    versioned = "/v2/models/{model_name}/versions/{model_version}"
    return (
        ServedRoute(
            "/predict",
            "POST",
            e.predict,
            predict_docs(plane.model.schema, plane.predictor.max_magnitude),
            prediction=True,
        ),
        ServedRoute(
            "/v2/models/{model_name}/infer", "POST", e.infer_latest, infer, prediction=True
        ),
        ServedRoute(f"{versioned}/infer", "POST", e.infer_version, infer, prediction=True),
        ServedRoute(
            "/v2/models/{model_name}/feedback", "POST", e.feedback, feedback_docs(), direct=True
        ),
        ServedRoute("/v2", "GET", e.server_metadata, v2),
        ServedRoute("/v2/health/live", "GET", e.live, v2),
        ServedRoute("/v2/health/ready", "GET", e.ready, v2),
        ServedRoute("/v2/models/{model_name}", "GET", e.model_metadata, v2),
        ServedRoute(versioned, "GET", e.model_version_metadata, v2),
        ServedRoute("/v2/models/{model_name}/ready", "GET", e.model_ready, v2),
        ServedRoute(f"{versioned}/ready", "GET", e.model_version_ready, v2),
        ServedRoute(
            "/metrics",
            "GET",
            e.prometheus_metrics,
            {"tags": [MONITORING_TAG], "summary": "Prometheus metrics"},
        ),
        ServedRoute(
            "/drift",
            "GET",
            e.drift,
            {"tags": [MONITORING_TAG], "summary": "Drift of the recent window, per feature"},
        ),
    )


def mount(app: FastAPI, routes: Iterable[ServedRoute]) -> None:
    """Add the routes to the app; FastAPI documents them all.

    Prediction routes are answered by plain Starlette routes placed first: their handlers take
    the raw Request and parse it themselves, so FastAPI's per-request dependency solving only
    costs time (about 50 us, a third of the in-process cost of a one-row request to a compiled
    model). The feedback route (`direct`) is answered the same way, for the same reason.
    """
    for route in routes:
        app.add_api_route(route.path, route.endpoint, methods=[route.method], **route.docs)
        if route.prediction or route.direct:
            direct = Route(route.path, _with_path_params(route.endpoint), methods=[route.method])
            app.router.routes.insert(0, direct)


def _with_path_params(endpoint: Endpoint) -> Callable[[Request], Awaitable[Response]]:
    async def direct(request: Request) -> Response:
        return await endpoint(request, **request.path_params)

    return direct


def _fault_injection(settings: ServerSettings, identity: ModelIdentity) -> Faults | None:
    faults = Faults.from_settings(settings)
    if faults is not None:
        # Loud once: a server that fails on purpose must never be mistaken for a real one.
        log.warning(
            "fault injection is on for %s %s (%s): prediction requests fail or slow down on "
            "purpose; never run this in production",
            identity.name,
            identity.version,
            faults.describe(),
        )
    return faults


def _server_metrics(
    settings: ServerSettings, plane: DataPlane, registry: CollectorRegistry
) -> ServerMetrics | None:
    if not settings.metrics_enabled:
        return None
    identity = plane.identity
    metrics = ServerMetrics(
        registry=registry,
        model_deployment=identity.deployment,
        track=identity.track,
        version=identity.version,
        model_name=identity.name,
        runtime=plane.predictor.runtime,
    )
    metrics.offline_evaluation(plane.model.manifest.evaluation)
    if plane.tally is not None:
        metrics.count_predictions(plane.tally)
    if plane.monitor is not None:
        metrics.watch_drift(plane.monitor, min_rows=settings.drift_min_rows)
    if plane.feedback is not None:
        metrics.count_feedback(regression=plane.feedback.regression)
    return metrics
