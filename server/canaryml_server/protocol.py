"""The Open Inference Protocol v2 (KServe, MLServer, Triton) for tabular models.

A request sends either one (rows, features) tensor in schema order, or one input per feature
named after it (rows values each, BYTES for categories). Outputs are `predict` (labels, the
default) and `predict_proba`, as MLServer's scikit-learn runtime names them.

The binary tensor data extension is the wire's business (binary.py): its requests reach the
parser in this JSON form.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from pydantic import BaseModel, Field

from canaryml_server.runtime import Prediction
from canaryml_server.schema import (
    Batch,
    FeatureKind,
    FeatureSchema,
    InvalidInput,
    Problem,
    ValidationPolicy,
    validate_columns,
    validate_matrix,
)

PREDICT_OUTPUT = "predict"
PROBA_OUTPUT = "predict_proba"
PREDICTION_IDS_PARAMETER = "prediction_ids"  # the response's parameters: one id per row
NUMERIC_DATATYPES = frozenset(
    {"BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
     "FP16", "FP32", "FP64"}
)  # fmt: skip


class RequestInput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    parameters: dict[str, Any] | None = None
    data: list[Any]


class RequestOutput(BaseModel):
    name: str
    parameters: dict[str, Any] | None = None


class InferenceRequest(BaseModel):
    """Documentation of the request body (parsed by hand on the hot path, for speed)."""

    id: str | None = None
    parameters: dict[str, Any] | None = None
    inputs: list[RequestInput] = Field(min_length=1)
    outputs: list[RequestOutput] | None = None


class ResponseOutput(BaseModel):
    name: str
    shape: list[int]
    datatype: str
    data: list[Any]


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str | None = None
    id: str | None = None
    parameters: dict[str, Any] | None = None
    outputs: list[ResponseOutput]


@dataclass(frozen=True)
class ParsedInference:
    batch: Batch
    outputs: list[str]
    request_id: str | None


def _problem(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> InvalidInput:
    return InvalidInput([Problem(loc, msg, kind)])


def _check_input(index: int, item: Any) -> tuple[str, list[int], str, list[Any]]:
    if not isinstance(item, dict):
        raise _problem(("inputs", index), "expected an object with name, shape, datatype, data")
    for key, kind in (("name", str), ("shape", list), ("datatype", str)):
        if not isinstance(item.get(key), kind):
            raise _problem(("inputs", index, key), f"required, as a {kind.__name__}", "missing")
    # data: a list, or an array when the tensor came in binary (binary.py)
    if not isinstance(item.get("data"), list | np.ndarray):
        raise _problem(("inputs", index, "data"), "required, as a list", "missing")
    shape = item["shape"]
    if not shape or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise _problem(("inputs", index, "shape"), "expected a list of non-negative integers")
    return item["name"], shape, item["datatype"].upper(), item["data"]


def parse_inference_request(
    payload: Any, *, schema: FeatureSchema, policy: ValidationPolicy, has_probabilities: bool
) -> ParsedInference:
    if not isinstance(payload, dict):
        raise _problem(("body",), "expected a JSON object with an `inputs` list", "type_error")
    inputs = payload.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise _problem(("inputs",), "expected a non-empty list of input tensors", "missing")
    request_id = payload.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise _problem(("id",), "expected a string")
    outputs = _requested_outputs(payload.get("outputs"), has_probabilities=has_probabilities)
    checked = [_check_input(i, item) for i, item in enumerate(inputs)]
    names = set(schema.names)
    if len(checked) == 1 and checked[0][0] not in names:
        _, shape, datatype, data = checked[0]
        if len(shape) == 1 and shape[0] == len(schema.features):
            shape = [1, shape[0]]  # one row sent as a vector
        if len(shape) != 2 or shape[1] != len(schema.features):
            raise _problem(
                ("inputs", 0, "shape"),
                f"expected [rows, {len(schema.features)}] (features in the order "
                f"{', '.join(schema.names[:5])}{', ...' if len(names) > 5 else ''}), got {shape}",
                "shape",
            )
        if datatype not in NUMERIC_DATATYPES:
            raise _problem(
                ("inputs", 0, "datatype"), f"expected a numeric datatype, got {datatype}"
            )
        batch = validate_matrix(schema, data, rows=shape[0], policy=policy)
        return ParsedInference(batch=batch, outputs=outputs, request_id=request_id)
    return ParsedInference(
        batch=_columnar(checked, schema=schema, policy=policy),
        outputs=outputs,
        request_id=request_id,
    )


def _columnar(
    checked: list[tuple[str, list[int], str, list[Any]]],
    *,
    schema: FeatureSchema,
    policy: ValidationPolicy,
) -> Batch:
    columns: dict[str, Any] = {}
    rows: int | None = None
    for index, (name, shape, datatype, data) in enumerate(checked):
        if name in columns:
            raise _problem(("inputs", index, "name"), f"feature {name!r} sent twice")
        if len(shape) > 2 or (len(shape) == 2 and shape[1] != 1):
            raise _problem(("inputs", index, "shape"), f"expected [rows] or [rows, 1], got {shape}")
        if rows is None:
            rows = shape[0]
        elif shape[0] != rows:
            raise _problem(
                ("inputs", index, "shape"), f"has {shape[0]} rows, the first input has {rows}"
            )
        values: Any = data.tolist() if isinstance(data, np.ndarray) else data
        if len(values) and isinstance(values[0], list):
            values = [v for row in data for v in (row if isinstance(row, list) else [row])]
        numeric = name in schema.names and schema.feature(name).kind is FeatureKind.NUMERIC
        if numeric and datatype not in NUMERIC_DATATYPES:
            raise _problem(
                ("inputs", index, "datatype"),
                f"feature {name!r} is numeric; expected a numeric datatype, got {datatype}",
            )
        columns[name] = values
    return validate_columns(schema, columns, rows=rows or 0, policy=policy)


def _requested_outputs(raw: Any, *, has_probabilities: bool) -> list[str]:
    if raw is None:
        return [PREDICT_OUTPUT]
    if not isinstance(raw, list) or not raw:
        raise _problem(("outputs",), "expected a non-empty list of {name: ...} objects")
    known = [PREDICT_OUTPUT] + ([PROBA_OUTPUT] if has_probabilities else [])
    names = []
    for index, item in enumerate(raw):
        name = item.get("name") if isinstance(item, dict) else None
        if name not in known:
            raise _problem(
                ("outputs", index, "name"),
                f"unknown output {name!r}; this model offers {', '.join(known)}",
            )
        names.append(name)
    return names


def datatype_of(array: np.ndarray) -> str:
    match array.dtype.kind:
        case "b":
            return "BOOL"
        case "i" | "u":
            return "INT64"
        case "f":
            return "FP32" if array.dtype.itemsize == 4 else "FP64"
    return "BYTES"


def json_values(array: np.ndarray) -> Any:
    """Numbers stay numpy (orjson writes them natively); anything else becomes Python values."""
    if array.dtype.kind in "biuf" and array.flags.c_contiguous:
        if array.dtype.kind == "f" and not np.isfinite(array).all():
            return [None if not math.isfinite(v) else v for v in array.tolist()]
        return array
    return array.tolist()


def build_inference_response(
    *,
    prediction: Prediction,
    outputs: list[str],
    model_name: str,
    model_version: str,
    request_id: str | None,
    prediction_ids: list[str] | None = None,
) -> dict[str, Any]:
    """The response; the rows' prediction ids, when issued, in `parameters.prediction_ids`."""
    rows = len(prediction.labels)
    tensors: list[dict[str, Any]] = []
    for name in outputs:
        if name == PREDICT_OUTPUT:
            labels = np.ascontiguousarray(prediction.labels)
            tensors.append(
                {"name": name, "shape": [rows], "datatype": datatype_of(labels),
                 "data": json_values(labels)}
            )  # fmt: skip
        elif prediction.probabilities is not None:
            proba = np.ascontiguousarray(prediction.probabilities)
            tensors.append(
                {"name": name, "shape": list(proba.shape), "datatype": datatype_of(proba),
                 "data": json_values(proba.ravel())}
            )  # fmt: skip
    response: dict[str, Any] = {
        "model_name": model_name,
        "model_version": model_version,
        "outputs": tensors,
    }
    if request_id is not None:
        response["id"] = request_id
    if prediction_ids is not None:
        response["parameters"] = {PREDICTION_IDS_PARAMETER: prediction_ids}
    return response
