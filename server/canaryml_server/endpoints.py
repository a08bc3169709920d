"""The server's HTTP handlers: each turns a request into a call on the data plane.

Prediction handlers (/predict and the Open Inference Protocol v2 infer routes) go through the
prediction pipeline, and add the rows' prediction ids as a header when the server issues them
(the infer routes read and, when asked, answer the binary tensor extension too: binary.py);
the feedback handler reads its body within the same size limit but is no prediction (not
counted, no faults); the others (OIP v2 health and metadata, /metrics, /drift) answer directly.
`app` lists which path and method each one answers.

The handlers carry no docstrings: FastAPI would publish them as the operations' descriptions,
and the OpenAPI document stays as it is.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from canaryml_api.telemetry import (
    CLIENT_CLOSED,
    PREDICTION_IDS_HEADER,
    PREDICTION_IDS_HEADER_MAX_BYTES,
)
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from canaryml_server.binary import BINARY_HEADER, binary_outputs, encode_response
from canaryml_server.dataplane import DataPlane, server_metadata
from canaryml_server.feedback import NO_KEY_MESSAGE, FeedbackRefused, refused
from canaryml_server.pipeline import (
    JSON,
    OCTET_STREAM,
    PredictionPipeline,
    inference_error,
    json_response,
    read_json,
    records_error,
)
from canaryml_server.protocol import PREDICTION_IDS_PARAMETER
from canaryml_server.schema import InvalidInput, Problem

_TRUE = frozenset({"true", "1", "yes"})
_BOOLEANS = _TRUE | {"false", "0", "no"}


_IDS_HEADER = PREDICTION_IDS_HEADER.encode("latin-1")
_BINARY_HEADER = BINARY_HEADER.encode("latin-1")


def with_ids_header(response: Response, ids: list[str] | None) -> Response:
    """The prediction ids, comma-joined, as a header when they fit in its bound (else none: the
    body is authoritative). Their length is added up first, so that a batch's ids over the
    bound are never joined only to be dropped."""
    if not ids:
        return response
    if len(ids) == 1:
        value = ids[0]
    elif sum(map(len, ids)) + len(ids) - 1 <= PREDICTION_IDS_HEADER_MAX_BYTES:
        value = ",".join(ids)
    else:
        return response
    if len(value) <= PREDICTION_IDS_HEADER_MAX_BYTES:
        response.raw_headers.append((_IDS_HEADER, value.encode("ascii")))
    return response


def probabilities_asked(request: Request) -> bool:
    """The `probabilities` query flag of /predict (true unless said otherwise)."""
    raw = request.query_params.get("probabilities", "true").lower()
    if raw not in _BOOLEANS:
        raise InvalidInput(
            [Problem(("query", "probabilities"), f"expected true or false, got {raw!r}")]
        )
    return raw in _TRUE


class Endpoints:
    """The handlers of one app, over its data plane, prediction pipeline and metrics registry."""

    def __init__(
        self, plane: DataPlane, pipeline: PredictionPipeline, registry: CollectorRegistry
    ) -> None:
        self.plane = plane
        self.pipeline = pipeline
        self.registry = registry

    # --- prediction: through the pipeline ------------------------------------------------------

    async def predict(self, request: Request) -> Response:
        return await self.pipeline.answer(request, self._predict_records, records_error)

    async def infer_latest(self, request: Request, model_name: str) -> Response:
        return await self._infer(request, model_name, None)

    async def infer_version(
        self, request: Request, model_name: str, model_version: str
    ) -> Response:
        return await self._infer(request, model_name, model_version)

    async def _infer(self, request: Request, model_name: str, version: str | None) -> Response:
        # Another model's path is a 404 before the pipeline: not a prediction of this model.
        missing = self._not_found(model_name, version)
        if missing is not None:
            return missing
        return await self.pipeline.answer(request, self._infer_body, inference_error, binary=True)

    def _predict_records(self, request: Request, payload: Any) -> Response:
        # The query is read after the body, so a bad body is reported first.
        asked = probabilities_asked(request)
        body = self.plane.predict_records(payload, probabilities=asked)
        return with_ids_header(json_response(body), body.get("ids"))

    def _infer_body(self, request: Request, payload: Any) -> Response:
        binary = binary_outputs(payload)  # a bad flag is a 400 before any prediction
        body = self.plane.infer(payload)
        ids = body["parameters"][PREDICTION_IDS_PARAMETER] if "parameters" in body else None
        content, header_length = encode_response(body, binary)
        if header_length is None:
            response = Response(content=content, media_type=JSON)
        else:
            response = Response(content=content, media_type=OCTET_STREAM)
            response.raw_headers.append((_BINARY_HEADER, str(header_length).encode("ascii")))
        return with_ids_header(response, ids)

    # --- feedback: true outcomes of earlier predictions, by id -----------------------------

    async def feedback(self, request: Request, model_name: str) -> Response:
        missing = self._not_found(model_name)
        if missing is not None:
            return missing
        metrics = self.pipeline.metrics.feedback if self.pipeline.metrics is not None else None
        desk = self.plane.feedback
        try:
            if desk is None:
                raise refused("no_key", NO_KEY_MESSAGE, status_code=409)
            try:
                payload = await read_json(request, limit=self.pipeline.body_limit)
            except InvalidInput as error:
                raise FeedbackRefused(
                    error.problems, status_code=error.status_code, reasons=Counter(body=1)
                ) from None
            receipt = desk.receive(payload, now_ms=time.time_ns() // 1_000_000)
        except FeedbackRefused as error:
            if metrics is not None:
                metrics.rejected(error.reasons)
            return json_response(records_error(error), error.status_code)
        except ClientDisconnect:
            return Response(status_code=CLIENT_CLOSED)
        if metrics is not None:
            metrics.labelled(receipt.labelled)
        return json_response(receipt.as_json())

    # --- Open Inference Protocol v2: health and metadata ---------------------------------------

    async def server_metadata(self) -> Response:
        return json_response(server_metadata())

    async def live(self) -> Response:
        return json_response({"live": True})

    async def ready(self) -> Response:
        # The model is loaded and verified before the app exists, so serving means ready.
        return json_response({"ready": True})

    async def model_metadata(self, model_name: str) -> Response:
        return self._not_found(model_name) or json_response(self.plane.metadata)

    async def model_version_metadata(self, model_name: str, model_version: str) -> Response:
        return self._not_found(model_name, model_version) or json_response(self.plane.metadata)

    async def model_ready(self, model_name: str) -> Response:
        return self._not_found(model_name) or self._model_ready()

    async def model_version_ready(self, model_name: str, model_version: str) -> Response:
        return self._not_found(model_name, model_version) or self._model_ready()

    def _model_ready(self) -> Response:
        return json_response({"name": self.plane.identity.name, "ready": True})

    def _not_found(self, model_name: str, model_version: str | None = None) -> Response | None:
        reason = self.plane.not_served(model_name, model_version)
        return None if reason is None else json_response({"error": reason}, 404)

    # --- monitoring ---------------------------------------------------------------------------

    async def prometheus_metrics(self) -> Response:
        return Response(generate_latest(self.registry), media_type=CONTENT_TYPE_LATEST)

    async def drift(self) -> Response:
        return json_response(self.plane.drift_summary())
