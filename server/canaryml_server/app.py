"""The model server: `create_app` builds a FastAPI app around one loaded, verified model.

Prediction handlers read and parse the body themselves (orjson, size limit enforced while
reading) rather than through FastAPI's body models: that keeps per-request overhead small
enough for a compiled model's microseconds to matter. OpenAPI still documents the bodies.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any

import orjson
from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.routing import Route

from canaryml_server.artifact import LoadedModel
from canaryml_server.drift import DriftMonitor
from canaryml_server.faults import Faults
from canaryml_server.metrics import ServerMetrics
from canaryml_server.protocol import (
    PREDICT_OUTPUT,
    PROBA_OUTPUT,
    InferenceRequest,
    InferenceResponse,
    build_inference_response,
    json_values,
    parse_inference_request,
)
from canaryml_server.runtime import Prediction
from canaryml_server.schema import (
    Batch,
    FeatureKind,
    FeatureSchema,
    InvalidInput,
    Problem,
    ValidationPolicy,
    validate_records,
)
from canaryml_server.settings import ServerSettings

log = logging.getLogger("canaryml.server")

JSON = "application/json"
VERSION_HEADER = b"x-canaryml-model-version"
PREDICTION_PATHS = frozenset(
    {
        "/predict",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    }
)
_TRUE = {"true", "1", "yes"}
_FALSE = {"false", "0", "no"}
_BOOLEANS = _TRUE | _FALSE


class ModelFailure(Exception):  # noqa: N818 - names the situation, like InvalidInput
    """The model raised on validated input: a server-side error (500), counted as such.

    Never a 4xx: validation already refused what the artifact's contract refuses (schema, and
    numbers beyond what the runtime represents), and estimators raise the same ValueError for
    their own defects as for odd numbers, so a 4xx would hide a broken canary from its 5xx rate.
    """


def _json_response(body: Any, status_code: int = 200) -> Response:
    return Response(
        content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type=JSON,
    )


def _too_large(limit: int) -> InvalidInput:
    problem = Problem(("body",), f"body is over the limit of {limit} bytes", "too_large")
    return InvalidInput([problem], status_code=413)


async def read_json(request: Request, *, limit: int) -> Any:
    """The request body as JSON, or InvalidInput with 400, 413 or 415 saying what is wrong."""
    content_type = request.headers.get("content-type")
    if content_type is not None:
        media_type = content_type.split(";", 1)[0].strip().lower()
        if media_type != JSON and not media_type.endswith("+json"):
            raise InvalidInput(
                [Problem(("header", "content-type"), f"expected {JSON}, got {media_type!r}")],
                status_code=415,
            )
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise _too_large(limit)
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise InvalidInput(
            [Problem(("body",), "empty body: send JSON", "missing")], status_code=400
        )
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(
            [Problem(("body",), f"invalid JSON: {error}", "json_invalid")], status_code=400
        ) from error


def _records_body_schema(
    schema: FeatureSchema, max_magnitude: Mapping[str, float]
) -> dict[str, Any]:
    properties: dict[str, Any] = {}
    for feature in schema.features:
        if feature.kind is FeatureKind.NUMERIC:
            prop: dict[str, Any] = {"type": "number"}
            if feature.name in max_magnitude:
                limit = max_magnitude[feature.name]
                prop |= {"minimum": -limit, "maximum": limit}
        elif feature.dtype == "bool":
            prop = {"type": "boolean"}
        else:
            prop = {"type": "string", "enum": feature.categories}
        if feature.nullable:
            prop = {"anyOf": [prop, {"type": "null"}]}
        properties[feature.name] = prop
    record = {
        "type": "object",
        "properties": properties,
        "required": schema.names,
        "additionalProperties": False,
    }
    return {"anyOf": [record, {"type": "array", "items": record, "minItems": 1}]}


def create_app(*, model: LoadedModel, settings: ServerSettings) -> FastAPI:
    manifest = model.manifest
    schema = model.schema
    predictor = model.predictor
    name = settings.model_name or manifest.name
    version = settings.model_version or manifest.version
    track = settings.track
    deployment = settings.model_deployment or name
    policy = ValidationPolicy(
        allow_unknown_categories=settings.unknown_categories == "allow",
        max_rows=settings.max_batch_rows,
        max_magnitude=predictor.max_magnitude,
    )
    limit = settings.max_body_bytes
    version_header = (VERSION_HEADER, version.encode("latin-1"))
    faults = Faults.from_settings(settings)
    if faults is not None:
        # Loud once: a server that fails on purpose must never be mistaken for a real one.
        log.warning(
            "fault injection is on for %s %s (%s): prediction requests fail or slow down on "
            "purpose; never run this in production",
            name,
            version,
            faults.describe(),
        )

    registry = CollectorRegistry(auto_describe=True)
    metrics: ServerMetrics | None = None
    if settings.metrics_enabled:
        metrics = ServerMetrics(
            registry=registry,
            model_deployment=deployment,
            track=track,
            version=version,
            model_name=name,
            runtime=predictor.runtime,
        )
    monitor: DriftMonitor | None = None
    if settings.drift_enabled:
        monitor = DriftMonitor(
            model.profile, feature_names=schema.names, window=settings.drift_window
        )
        if metrics is not None:
            metrics.watch_drift(monitor, min_rows=settings.drift_min_rows)

    app = FastAPI(
        title=f"canaryml: {name} {version} ({track})",
        version=version,
        description=(
            f"Serves `{name}` version `{version}` ({manifest.estimator}, runtime "
            f"`{predictor.runtime}`) on the `{track}` track of `{deployment}`."
        ),
    )

    def run(batch: Batch, *, probabilities: bool) -> Prediction:
        try:
            prediction = predictor.predict(batch, probabilities=probabilities)
        except Exception as error:
            log.exception("model %s %s failed on a validated batch", name, version)
            raise ModelFailure(
                f"the model failed on this input ({type(error).__name__})"
            ) from error
        if monitor is not None:
            monitor.observe(batch, prediction.labels)
        return prediction

    async def measured(
        request: Request,
        handle: Callable[[Any], Response],
        error_body: Callable[[InvalidInput], Any],
    ) -> Response:
        start = time.perf_counter()
        code = 500
        try:
            payload = await read_json(request, limit=limit)
            # Inside the timing, so the metrics see injected faults as they would real ones.
            if faults is not None and await faults.apply():
                raise ModelFailure(faults.error_message)
            response = handle(payload)
            code = response.status_code
        except InvalidInput as error:
            code = error.status_code
            response = _json_response(error_body(error), code)
        except ModelFailure as error:
            response = _json_response(error_body(InvalidInput([Problem((), str(error))])), 500)
        except Exception:
            log.exception("unexpected error answering %s", request.url.path)
            problem = Problem((), "internal error: see the server log", "internal")
            response = _json_response(error_body(InvalidInput([problem])), 500)
        finally:
            if metrics is not None:
                metrics.observe_request(code=code, seconds=time.perf_counter() - start)
        # The router labels its series with the version that answered (a constant: cheap).
        response.raw_headers.append(version_header)
        return response

    def wants_probabilities(request: Request) -> bool:
        raw = request.query_params.get("probabilities", "true").lower()
        if raw not in _BOOLEANS:
            raise InvalidInput(
                [Problem(("query", "probabilities"), f"expected true or false, got {raw!r}")]
            )
        return raw in _TRUE and predictor.has_probabilities

    @app.post(
        "/predict",
        tags=["predict"],
        summary="Predict one row (an object) or a batch (a list of objects)",
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    JSON: {"schema": _records_body_schema(schema, predictor.max_magnitude)}
                },
            }
        },
    )
    async def predict(request: Request) -> Response:
        def handle(payload: Any) -> Response:
            probabilities = wants_probabilities(request)
            batch = validate_records(schema, payload, policy=policy)
            prediction = run(batch, probabilities=probabilities)
            body: dict[str, Any] = {
                "model": name,
                "version": version,
                "track": track,
                "predictions": json_values(prediction.labels),
            }
            if prediction.probabilities is not None:
                body["probabilities"] = prediction.probabilities
                body["classes"] = manifest.classes
            return _json_response(body)

        return await measured(
            request, handle, lambda error: {"detail": [p.as_dict() for p in error.problems]}
        )

    def check_model(model_name: str, model_version: str | None = None) -> Response | None:
        if model_name != name:
            return _json_response(
                {"error": f"model {model_name!r} not found; this is {name!r}"}, 404
            )
        if model_version is not None and model_version != version:
            return _json_response(
                {"error": f"version {model_version!r} of {name!r} not found; this is {version!r}"},
                404,
            )
        return None

    async def infer(request: Request, model_name: str, model_version: str | None) -> Response:
        missing = check_model(model_name, model_version)
        if missing is not None:
            return missing

        def handle(payload: Any) -> Response:
            parsed = parse_inference_request(
                payload, schema=schema, policy=policy, has_probabilities=predictor.has_probabilities
            )
            prediction = run(parsed.batch, probabilities=PROBA_OUTPUT in parsed.outputs)
            return _json_response(
                build_inference_response(
                    prediction=prediction,
                    outputs=parsed.outputs,
                    model_name=name,
                    model_version=version,
                    request_id=parsed.request_id,
                )
            )

        return await measured(request, handle, lambda error: {"error": str(error)})

    infer_docs: dict[str, Any] = {
        "tags": ["open inference protocol v2"],
        "openapi_extra": {
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": {"$ref": "#/components/schemas/InferenceRequest"}}},
            }
        },
        "responses": {200: {"model": InferenceResponse}},
    }

    @app.post("/v2/models/{model_name}/infer", **infer_docs)
    async def infer_latest(request: Request, model_name: str) -> Response:
        return await infer(request, model_name, None)

    @app.post("/v2/models/{model_name}/versions/{model_version}/infer", **infer_docs)
    async def infer_version(request: Request, model_name: str, model_version: str) -> Response:
        return await infer(request, model_name, model_version)

    v2: list[str | Enum] = ["open inference protocol v2"]

    @app.get("/v2", tags=v2)
    async def server_metadata() -> Response:
        return _json_response({"name": "canaryml", "version": _package_version(), "extensions": []})

    @app.get("/v2/health/live", tags=v2)
    async def live() -> Response:
        return _json_response({"live": True})

    @app.get("/v2/health/ready", tags=v2)
    async def ready() -> Response:
        # The model is loaded and verified before the app exists, so serving means ready.
        return _json_response({"ready": True})

    metadata = {
        "name": name,
        "versions": [version],
        "platform": "onnxruntime" if predictor.runtime == "onnx" else "scikit-learn",
        "inputs": [
            {
                "name": f.name,
                "datatype": "FP64" if f.kind is FeatureKind.NUMERIC else
                ("BOOL" if f.dtype == "bool" else "BYTES"),
                "shape": [-1],
            }
            for f in schema.features
        ],
        "outputs": [{"name": PREDICT_OUTPUT, "shape": [-1]}]
        + (
            [{"name": PROBA_OUTPUT, "datatype": "FP64", "shape": [-1, len(manifest.classes or [])]}]
            if predictor.has_probabilities
            else []
        ),
        "parameters": {
            "runtime": predictor.runtime,
            "runtime_choice": manifest.runtime.model_dump(mode="json"),
            "estimator": manifest.estimator,
            "task": manifest.task,
            "classes": manifest.classes,
            "track": track,
            "model_deployment": deployment,
            "sha256": model.digest,
        },
    }  # fmt: skip

    @app.get("/v2/models/{model_name}", tags=v2)
    async def model_metadata(model_name: str) -> Response:
        return check_model(model_name) or _json_response(metadata)

    @app.get("/v2/models/{model_name}/versions/{model_version}", tags=v2)
    async def model_version_metadata(model_name: str, model_version: str) -> Response:
        return check_model(model_name, model_version) or _json_response(metadata)

    @app.get("/v2/models/{model_name}/ready", tags=v2)
    async def model_ready(model_name: str) -> Response:
        return check_model(model_name) or _json_response({"name": name, "ready": True})

    @app.get("/v2/models/{model_name}/versions/{model_version}/ready", tags=v2)
    async def model_version_ready(model_name: str, model_version: str) -> Response:
        return check_model(model_name, model_version) or _json_response(
            {"name": name, "ready": True}
        )

    @app.get("/metrics", tags=["monitoring"], summary="Prometheus metrics")
    async def prometheus_metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/drift", tags=["monitoring"], summary="Drift of the recent window, per feature")
    async def drift() -> Response:
        if monitor is None:
            return _json_response({"enabled": False})
        report = monitor.report()
        worst = report.worst_feature
        return _json_response(
            {
                "enabled": True,
                "rows": report.rows,
                "window": report.window,
                "min_rows": settings.drift_min_rows,
                "worst_feature": {"name": worst[0], "psi": worst[1]} if worst else None,
                "prediction": {"psi": report.prediction_psi, "js_distance": report.prediction_js},
                "features": {
                    f: {"psi": report.feature_psi[f], "js_distance": report.feature_js[f]}
                    for f in report.feature_psi
                },
            }
        )

    _answer_directly(app, paths=PREDICTION_PATHS)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            definitions = InferenceRequest.model_json_schema(
                ref_template="#/components/schemas/{model}"
            )
            components = document.setdefault("components", {}).setdefault("schemas", {})
            components.update(definitions.pop("$defs", {}))
            components["InferenceRequest"] = definitions
            app.openapi_schema = document
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
    return app


def _answer_directly(app: FastAPI, *, paths: frozenset[str]) -> None:
    """Answer these routes with plain Starlette routes placed first; FastAPI still documents them.

    The prediction handlers take the raw Request and parse it themselves, so FastAPI's
    per-request dependency solving only costs time: about 50 us, a third of the in-process
    cost of a one-row request to a compiled model.
    """
    for route in list(app.router.routes):
        if isinstance(route, APIRoute) and route.path in paths:
            endpoint = route.endpoint

            async def direct(request: Request, endpoint: Any = endpoint) -> Response:
                response: Response = await endpoint(request, **request.path_params)
                return response

            app.router.routes.insert(
                0, Route(route.path, direct, methods=list(route.methods or ()))
            )


def _package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("canaryml")
    except PackageNotFoundError:
        return "0+unknown"
