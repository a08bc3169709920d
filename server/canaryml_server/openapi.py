"""The server's OpenAPI document: the bodies the prediction handlers parse by hand, documented.

/predict's body is the model's own record schema (feature names, types, categories, the
runtime's number range); the inference routes refer to the Open Inference Protocol's request
model, added to the document's components.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from canaryml_server.feedback import FeedbackBatch
from canaryml_server.pipeline import JSON
from canaryml_server.protocol import InferenceRequest, InferenceResponse
from canaryml_server.schema import FeatureKind, FeatureSchema

PREDICT_TAG = "predict"
INFERENCE_TAG = "open inference protocol v2"
MONITORING_TAG = "monitoring"
FEEDBACK_TAG = "feedback"


def records_body_schema(
    schema: FeatureSchema, max_magnitude: Mapping[str, float]
) -> dict[str, Any]:
    """JSON Schema of /predict's body: one record, or a non-empty list of them."""
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


def predict_docs(schema: FeatureSchema, max_magnitude: Mapping[str, float]) -> dict[str, Any]:
    """The route options that document /predict."""
    return {
        "tags": [PREDICT_TAG],
        "summary": "Predict one row (an object) or a batch (a list of objects)",
        "openapi_extra": _json_body(records_body_schema(schema, max_magnitude)),
    }


def infer_docs() -> dict[str, Any]:
    """The route options that document an inference route."""
    return {
        "tags": [INFERENCE_TAG],
        "openapi_extra": _inference_body(),
        "responses": {200: {"model": InferenceResponse}},
    }


def feedback_docs() -> dict[str, Any]:
    """The route options that document the feedback route."""
    return {
        "tags": [FEEDBACK_TAG],
        "summary": "True labels (or values) of earlier predictions, by their prediction ids",
        "openapi_extra": _json_body(
            {
                "oneOf": [
                    {"$ref": "#/components/schemas/FeedbackItem"},
                    {"$ref": "#/components/schemas/FeedbackBatch"},
                ]
            }
        ),
    }


def _json_body(schema: dict[str, Any]) -> dict[str, Any]:
    # Documented by hand: the handlers take the raw Request, so FastAPI sees no body parameter.
    return {"requestBody": {"required": True, "content": {JSON: {"schema": schema}}}}


def _inference_body() -> dict[str, Any]:
    body = _json_body({"$ref": "#/components/schemas/InferenceRequest"})
    body["requestBody"]["content"]["application/octet-stream"] = {
        "schema": {
            "type": "string",
            "format": "binary",
            "description": (
                "The binary tensor data extension: a JSON InferenceRequest of "
                "Inference-Header-Content-Length bytes (a header of the request), then the raw "
                "tensors of the inputs with parameters.binary_data_size, in order"
            ),
        }
    }
    return body


def build_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, with the inference request's schemas among its components."""
    document = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    definitions = InferenceRequest.model_json_schema(ref_template="#/components/schemas/{model}")
    components = document.setdefault("components", {}).setdefault("schemas", {})
    components.update(definitions.pop("$defs", {}))
    components["InferenceRequest"] = definitions
    batch = FeedbackBatch.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(batch.pop("$defs", {}))
    components["FeedbackBatch"] = batch
    return document
