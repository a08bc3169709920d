"""What every prediction request passes through, around its handler.

In order: the timer starts; the body is read as JSON within the size limit (415, 413, 400),
or for the inference endpoints in the binary tensor extension too (protocol.py);
fault injection, when on, may slow the request or fail it; the handler answers; errors become
JSON bodies in the endpoint's own format (InvalidInput its status, ModelFailure and anything
unexpected 500; a client gone mid-body 499, with no traceback); the request is counted and
timed; the answering model version is added as a header. Non-prediction endpoints (health,
metadata, metrics) skip all of it.

Handlers read and parse the body themselves (orjson, the size limit enforced while reading)
rather than through FastAPI's body models: that keeps per-request overhead small enough for a
compiled model's microseconds to matter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

import orjson
from canaryml_api.telemetry import CLIENT_CLOSED, VERSION_HEADER
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response

from canaryml_server.binary import BINARY_HEADER, decode_binary_request
from canaryml_server.dataplane import ModelFailure
from canaryml_server.faults import Faults
from canaryml_server.metrics import ServerMetrics
from canaryml_server.schema import InvalidInput, Problem

log = logging.getLogger("canaryml.server")

JSON = "application/json"
OCTET_STREAM = "application/octet-stream"

Handler = Callable[[Request, Any], Response]
"""Answers a prediction request from its parsed JSON body (the request for its query)."""
ErrorBody = Callable[[InvalidInput], Any]
"""The JSON body that tells the client what went wrong, in the endpoint's format."""


def json_response(body: Any, status_code: int = 200) -> Response:
    return Response(
        content=orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY),
        status_code=status_code,
        media_type=JSON,
    )


def records_error(error: InvalidInput) -> Any:
    """/predict's error body: FastAPI's `detail` list of problems."""
    return {"detail": [p.as_dict() for p in error.problems]}


def inference_error(error: InvalidInput) -> Any:
    """The Open Inference Protocol's error body."""
    return {"error": str(error)}


def _too_large(limit: int) -> InvalidInput:
    problem = Problem(("body",), f"body is over the limit of {limit} bytes", "too_large")
    return InvalidInput([problem], status_code=413)


def _media_type(request: Request) -> str | None:
    content_type = request.headers.get("content-type")
    return None if content_type is None else content_type.split(";", 1)[0].strip().lower()


def _is_json(media_type: str | None) -> bool:
    return media_type is None or media_type == JSON or media_type.endswith("+json")


async def _read_body(request: Request, *, limit: int) -> bytes:
    """The whole body, within `limit` bytes (413 beyond, before reading when declared)."""
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
    return body


def _parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as error:
        raise InvalidInput(
            [Problem(("body",), f"invalid JSON: {error}", "json_invalid")], status_code=400
        ) from error


async def read_json(request: Request, *, limit: int) -> Any:
    """The request body as JSON, or InvalidInput with 400, 413 or 415 saying what is wrong."""
    media_type = _media_type(request)
    if not _is_json(media_type):
        raise InvalidInput(
            [Problem(("header", "content-type"), f"expected {JSON}, got {media_type!r}")],
            status_code=415,
        )
    return _parse_json(await _read_body(request, limit=limit))


async def read_inference(request: Request, *, limit: int) -> Any:
    """An inference request, as JSON or in the binary tensor extension (a JSON header of
    `Inference-Header-Content-Length` bytes, then the tensors; `application/octet-stream`
    or JSON's media type), in the JSON form either way; 400, 413 or 415 saying what is wrong.
    The size limit is the whole body's, header and tensors together."""
    media_type = _media_type(request)
    header_length = request.headers.get(BINARY_HEADER)
    binary_type = media_type == OCTET_STREAM
    if not (_is_json(media_type) or binary_type):
        expected = f"{JSON} or, with the {BINARY_HEADER} header, {OCTET_STREAM}"
        raise InvalidInput(
            [Problem(("header", "content-type"), f"expected {expected}, got {media_type!r}")],
            status_code=415,
        )
    if binary_type and header_length is None:
        msg = (
            f"a {OCTET_STREAM} body needs the Inference-Header-Content-Length header "
            "(the length of its JSON header in bytes)"
        )
        problem = Problem(("header", "Inference-Header-Content-Length"), msg, "missing")
        raise InvalidInput([problem], status_code=400)
    body = await _read_body(request, limit=limit)
    if header_length is None:
        return _parse_json(body)
    return decode_binary_request(body, header_length)


class PredictionPipeline:
    """The steps around every prediction handler; built once per app, shared by its endpoints."""

    __slots__ = ("body_limit", "faults", "metrics", "version_header")

    def __init__(
        self,
        *,
        version: str,
        body_limit: int,
        faults: Faults | None = None,
        metrics: ServerMetrics | None = None,
    ) -> None:
        self.body_limit = body_limit
        self.faults = faults
        self.metrics = metrics
        # The router labels its series with the version that answered (a constant: cheap).
        self.version_header = (VERSION_HEADER.encode("latin-1"), version.encode("latin-1"))

    async def answer(
        self, request: Request, handle: Handler, error_body: ErrorBody, *, binary: bool = False
    ) -> Response:
        """`binary`: the endpoint also reads the binary tensor extension (inference ones)."""
        start = time.perf_counter()
        code = 500
        read = read_inference if binary else read_json
        try:
            payload = await read(request, limit=self.body_limit)
            # Inside the timing, so the metrics see injected faults as they would real ones.
            if self.faults is not None and await self.faults.apply():
                raise ModelFailure(self.faults.error_message)
            response = handle(request, payload)
            code = response.status_code
        except InvalidInput as error:
            code = error.status_code
            response = json_response(error_body(error), code)
        except ModelFailure as error:
            response = json_response(error_body(InvalidInput([Problem((), str(error))])), 500)
        except ClientDisconnect:
            code = CLIENT_CLOSED
            response = Response(status_code=code)  # uvicorn drops it: the client is gone
        except Exception:
            log.exception("unexpected error answering %s", request.url.path)
            problem = Problem((), "internal error: see the server log", "internal")
            response = json_response(error_body(InvalidInput([problem])), 500)
        finally:
            if self.metrics is not None:
                self.metrics.observe_request(code=code, seconds=time.perf_counter() - start)
        response.raw_headers.append(self.version_header)
        return response
