"""The model server's pieces alone: the data plane without HTTP, the prediction pipeline's steps
(body, faults, errors, metrics, version header) on bare Starlette requests, the route table."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import orjson
import pandas as pd
import pytest
from canaryml_api.telemetry import REQUEST_DURATION, REQUESTS_TOTAL, SOURCE_SERVER, VERSION_HEADER
from canaryml_server.app import create_app, route_table
from canaryml_server.artifact import LoadedModel, Manifest, RuntimeChoice
from canaryml_server.dataplane import DataPlane, ModelFailure
from canaryml_server.endpoints import Endpoints, probabilities_asked
from canaryml_server.faults import Faults
from canaryml_server.metrics import ServerMetrics
from canaryml_server.pipeline import (
    PredictionPipeline,
    inference_error,
    json_response,
    records_error,
)
from canaryml_server.profile import build_profile
from canaryml_server.runtime import Prediction
from canaryml_server.schema import Batch, InvalidInput, Problem, infer_schema
from canaryml_server.settings import ServerSettings
from prometheus_client import CollectorRegistry
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

REFERENCE = pd.DataFrame(
    {"size": [0.5, 1.5, 2.5, 3.5] * 5, "color": ["red", "blue", "red", "green"] * 5}
)
LABELS = {"model_deployment": "shop", "track": "canary", "version": "2"}


class ThresholdPredictor:
    """Class 1 when size > 1; probabilities to match. Counts its calls."""

    runtime = "sklearn"
    max_magnitude: dict[str, float] = {}  # noqa: RUF012 - never changed

    def __init__(self, *, has_probabilities: bool = True, fail: bool = False) -> None:
        self.has_probabilities = has_probabilities
        self.fail = fail
        self.calls = 0

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        self.calls += 1
        if self.fail:
            raise ValueError("the estimator's own defect")
        labels = (np.asarray(batch.columns["size"], dtype=np.float64) > 1).astype(np.int64)
        proba = np.column_stack([1 - labels, labels]).astype(np.float64) if probabilities else None
        return Prediction(labels=labels, probabilities=proba)


def _model(predictor: Any = None) -> LoadedModel:
    predictor = predictor or ThresholdPredictor()
    schema = infer_schema(REFERENCE)
    profile = build_profile(
        REFERENCE,
        (REFERENCE["size"] > 1).astype(int).to_numpy(),
        categorical={"color"},
        classification=True,
    )
    manifest = Manifest(
        name="shop-model",
        version="1.0.0",
        task="classification",
        classes=[0, 1],
        estimator="Threshold",
        runtime=RuntimeChoice(runtime="sklearn", requested="sklearn", reason="a test"),
        libraries={},
        files={},
    )
    return LoadedModel(
        path=None,  # type: ignore[arg-type] - never read
        digest="0" * 64,
        manifest=manifest,
        schema=schema,
        profile=profile,
        predictor=predictor,
    )


def _settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {
        "model_uri": "unused",
        "model_deployment": "shop",
        "track": "canary",
        "model_version": "2",
        "drift_window": 10,
        "drift_min_rows": 2,
    }
    return ServerSettings(**(values | overrides))


def _plane(predictor: Any = None, **overrides: Any) -> DataPlane:
    return DataPlane(_model(predictor), _settings(**overrides))


# ----------------------------------------------------------------------------------------------
# the data plane: parsed JSON in, bodies out, no HTTP


def test_identity_takes_the_settings_over_the_manifest() -> None:
    identity = _plane().identity
    assert (identity.name, identity.version, identity.track, identity.deployment) == (
        "shop-model",
        "2",
        "canary",
        "shop",
    )
    default = DataPlane(_model(), ServerSettings(model_uri="unused")).identity
    assert (default.version, default.track, default.deployment) == ("1.0.0", "stable", "shop-model")


def test_predict_records_answers_one_record_or_many() -> None:
    plane = _plane()
    one = plane.predict_records({"size": 2.0, "color": "red"}, probabilities=True)
    assert one["model"] == "shop-model"
    assert (one["version"], one["track"]) == ("2", "canary")
    assert list(one["predictions"]) == [1]
    assert one["classes"] == [0, 1]
    np.testing.assert_array_equal(one["probabilities"], [[0.0, 1.0]])
    many = plane.predict_records(
        [{"size": 0.1, "color": "blue"}, {"size": 3.0, "color": "green"}], probabilities=False
    )
    assert list(many["predictions"]) == [0, 1]
    assert "probabilities" not in many and "classes" not in many


def test_probabilities_only_from_a_model_that_has_them() -> None:
    plane = _plane(ThresholdPredictor(has_probabilities=False))
    body = plane.predict_records({"size": 2.0, "color": "red"}, probabilities=True)
    assert "probabilities" not in body


def test_invalid_records_never_reach_the_model() -> None:
    predictor = ThresholdPredictor()
    with pytest.raises(InvalidInput) as raised:
        _plane(predictor).predict_records({"size": "big", "color": "red"}, probabilities=True)
    assert raised.value.status_code == 422
    assert raised.value.problems[0].loc == (0, "size")
    assert predictor.calls == 0


def test_infer_answers_the_open_inference_protocol() -> None:
    payload = {
        "id": "r-1",
        "inputs": [
            {"name": "size", "shape": [2], "datatype": "FP64", "data": [0.5, 2.0]},
            {"name": "color", "shape": [2], "datatype": "BYTES", "data": ["red", "blue"]},
        ],
        "outputs": [{"name": "predict"}, {"name": "predict_proba"}],
    }
    body = orjson.loads(orjson.dumps(_plane().infer(payload), option=orjson.OPT_SERIALIZE_NUMPY))
    assert (body["model_name"], body["model_version"], body["id"]) == ("shop-model", "2", "r-1")
    outputs = {o["name"]: o for o in body["outputs"]}
    assert outputs["predict"]["data"] == [0, 1]
    assert outputs["predict_proba"]["shape"] == [2, 2]


def test_a_model_that_raises_is_a_model_failure_and_no_drift_row(
    caplog: pytest.LogCaptureFixture,
) -> None:
    plane = _plane(ThresholdPredictor(fail=True))
    with pytest.raises(ModelFailure, match=r"the model failed on this input \(ValueError\)"):
        plane.predict_records({"size": 2.0, "color": "red"}, probabilities=False)
    assert "failed on a validated batch" in caplog.text
    assert plane.monitor is not None and plane.monitor.rows == 0


def test_predictions_feed_the_drift_window() -> None:
    plane = _plane()
    assert plane.drift_summary()["rows"] == 0
    for _ in range(3):
        plane.predict_records({"size": 2.0, "color": "red"}, probabilities=False)
    summary = plane.drift_summary()
    assert (summary["enabled"], summary["rows"], summary["window"], summary["min_rows"]) == (
        True,
        3,
        10,
        2,
    )
    assert set(summary["features"]) == {"size", "color"}
    assert summary["worst_feature"]["name"] in {"size", "color"}
    assert _plane(drift_enabled=False).drift_summary() == {"enabled": False}


def test_not_served_names_the_model_or_version_it_is_not() -> None:
    plane = _plane()
    assert plane.not_served("shop-model") is None
    assert plane.not_served("shop-model", "2") is None
    assert plane.not_served("other") == "model 'other' not found; this is 'shop-model'"
    assert plane.not_served("shop-model", "1.0.0") == (
        "version '1.0.0' of 'shop-model' not found; this is '2'"
    )


def test_metadata_describes_inputs_outputs_and_the_deployment() -> None:
    metadata = _plane().metadata
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        "shop-model",
        ["2"],
        "scikit-learn",
    )
    assert [(i["name"], i["datatype"]) for i in metadata["inputs"]] == [
        ("size", "FP64"),
        ("color", "BYTES"),
    ]
    assert metadata["outputs"][1] == {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 2]}
    assert metadata["parameters"]["model_deployment"] == "shop"
    without = _plane(ThresholdPredictor(has_probabilities=False)).metadata
    assert [o["name"] for o in without["outputs"]] == ["predict"]


# ----------------------------------------------------------------------------------------------
# the prediction pipeline on bare Starlette requests


def _request(
    body: bytes, *, content_type: str | None = "application/json", query: bytes = b""
) -> Request:
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.append((b"content-type", content_type.encode()))
    scope = {
        "type": "http",
        "method": "POST",
        "scheme": "http",
        "server": ("test", 80),
        "path": "/predict",
        "root_path": "",
        "query_string": query,
        "headers": headers,
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    return Request(scope, receive)


class Recorder:
    """A handler that records its payloads and answers with a fixed response or error."""

    def __init__(self, answer: Response | Exception | None = None) -> None:
        self.answer = answer if answer is not None else json_response({"ok": True})
        self.payloads: list[Any] = []

    def __call__(self, request: Request, payload: Any) -> Response:
        self.payloads.append(payload)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _pipeline(
    faults: Faults | None = None, *, body_limit: int = 1024
) -> tuple[PredictionPipeline, CollectorRegistry]:
    registry = CollectorRegistry()
    metrics = ServerMetrics(
        registry=registry,
        model_deployment="shop",
        track="canary",
        version="2",
        model_name="shop-model",
        runtime="sklearn",
    )
    pipeline = PredictionPipeline(
        version="2", body_limit=body_limit, faults=faults, metrics=metrics
    )
    return pipeline, registry


def _count(registry: CollectorRegistry, code: int) -> float | None:
    labels = {**LABELS, "source": SOURCE_SERVER, "code": str(code)}
    return registry.get_sample_value(REQUESTS_TOTAL, labels)


def _duration(registry: CollectorRegistry, suffix: str) -> float | None:
    labels = {**LABELS, "source": SOURCE_SERVER}
    return registry.get_sample_value(f"{REQUEST_DURATION}_{suffix}", labels)


async def test_an_answer_is_counted_timed_and_carries_the_version() -> None:
    pipeline, registry = _pipeline()
    handler = Recorder()
    response = await pipeline.answer(_request(b'{"a": [1, 2]}'), handler, records_error)
    assert response.status_code == 200
    assert handler.payloads == [{"a": [1, 2]}]
    assert response.headers[VERSION_HEADER] == "2"
    assert (_count(registry, 200), _count(registry, 500)) == (1, 0)
    assert _duration(registry, "count") == 1


@pytest.mark.parametrize(
    ("body", "content_type", "status", "loc"),
    [
        (b"x" * 2000, "application/json", 413, ["body"]),
        (b"{}", "text/plain", 415, ["header", "content-type"]),
        (b"", "application/json", 400, ["body"]),
        (b"{", "application/json", 400, ["body"]),
    ],
)
async def test_bad_bodies_stop_before_the_handler_and_are_counted(
    body: bytes, content_type: str, status: int, loc: list[str]
) -> None:
    pipeline, registry = _pipeline()
    handler = Recorder()
    response = await pipeline.answer(
        _request(body, content_type=content_type), handler, records_error
    )
    assert response.status_code == status
    assert [p["loc"] for p in orjson.loads(response.body)["detail"]] == [loc]
    assert handler.payloads == []
    assert _count(registry, status) == 1
    assert response.headers[VERSION_HEADER] == "2"


async def test_injected_errors_are_counted_500s_that_skip_the_handler() -> None:
    faults = Faults(error_fraction=1.0, latency=0.0, latency_fraction=1.0)
    pipeline, registry = _pipeline(faults)
    handler = Recorder()
    response = await pipeline.answer(_request(b"{}"), handler, inference_error)
    assert response.status_code == 500
    assert orjson.loads(response.body) == {"error": "injected fault: CANARYML_INJECT_ERRORS=1"}
    assert handler.payloads == []
    assert _count(registry, 500) == 1


async def test_injected_latency_is_inside_the_timing() -> None:
    draws = iter([0.1, 0.9])  # latency drawn (0.1 < 0.5), error not (0.9 > 0.5)
    faults = Faults(
        error_fraction=0.5, latency=0.05, latency_fraction=0.5, draw=lambda: next(draws)
    )
    pipeline, registry = _pipeline(faults)
    response = await pipeline.answer(_request(b"{}"), Recorder(), records_error)
    assert response.status_code == 200
    assert (_duration(registry, "sum") or 0) >= 0.05


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (InvalidInput([Problem(("x",), "too big")], status_code=413), 413, "x: too big"),
        (ModelFailure("the model failed on this input (ValueError)"), 500, "the model failed"),
        (RuntimeError("a bug"), 500, "internal error: see the server log"),
    ],
)
async def test_handler_errors_become_the_endpoints_error_body(
    error: Exception, status: int, message: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="canaryml.server")
    pipeline, registry = _pipeline()
    response = await pipeline.answer(_request(b"{}"), Recorder(error), inference_error)
    assert response.status_code == status
    assert message in orjson.loads(response.body)["error"]
    assert _count(registry, status) == 1
    assert response.headers[VERSION_HEADER] == "2"
    logged = "unexpected error answering /predict" in caplog.text
    assert logged == isinstance(error, RuntimeError)


async def test_without_metrics_the_pipeline_still_answers() -> None:
    pipeline = PredictionPipeline(version="2", body_limit=1024)
    response = await pipeline.answer(_request(b"{}"), Recorder(), records_error)
    assert response.status_code == 200


# ----------------------------------------------------------------------------------------------
# the handlers and the route table


@pytest.mark.parametrize(
    ("query", "asked"),
    [(b"", True), (b"probabilities=false", False), (b"probabilities=YES", True)],
)
def test_the_probabilities_flag(query: bytes, asked: bool) -> None:
    assert probabilities_asked(_request(b"", query=query)) is asked


def test_a_probabilities_flag_that_is_no_boolean_is_a_422() -> None:
    with pytest.raises(InvalidInput) as raised:
        probabilities_asked(_request(b"", query=b"probabilities=maybe"))
    assert raised.value.status_code == 422


async def test_endpoints_answer_without_an_app() -> None:
    plane = _plane()
    pipeline, registry = _pipeline()
    endpoints = Endpoints(plane, pipeline, registry)
    answered = await endpoints.predict(_request(b'{"size": 2.0, "color": "red"}'))
    assert orjson.loads(answered.body)["predictions"] == [1]
    missing = await endpoints.infer_latest(_request(b"{}"), "other")
    assert missing.status_code == 404
    assert VERSION_HEADER not in missing.headers  # not a prediction: the pipeline never saw it
    assert _count(registry, 404) is None
    ready = await endpoints.model_version_ready("shop-model", "2")
    assert orjson.loads(ready.body) == {"name": "shop-model", "ready": True}
    assert (await endpoints.model_metadata("nope")).status_code == 404
    assert b"canaryml_requests_total" in (await endpoints.prometheus_metrics()).body


def test_the_route_table_lists_each_route_once_and_marks_the_predictions() -> None:
    plane = _plane()
    pipeline, registry = _pipeline()
    table = route_table(Endpoints(plane, pipeline, registry), plane)
    assert len({(r.path, r.method) for r in table}) == len(table)
    assert {r.path for r in table if r.prediction} == {
        "/predict",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
    }


def test_prediction_routes_come_first_as_plain_starlette_routes() -> None:
    app = create_app(model=_model(), settings=_settings())
    first = app.router.routes[:4]
    assert all(type(route) is Route for route in first)
    assert {route.path for route in first if isinstance(route, Route)} == {
        "/predict",
        "/v2/models/{model_name}/infer",
        "/v2/models/{model_name}/versions/{model_version}/infer",
        "/v2/models/{model_name}/feedback",  # no prediction, but answered the same way
    }
