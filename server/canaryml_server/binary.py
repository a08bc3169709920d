"""The Open Inference Protocol's binary tensor data extension, on the wire.

Triton's extension, which KServe's and MLServer's clients speak (KServe's Python client by
default): the body is a JSON header of `Inference-Header-Content-Length` bytes, then the raw
tensors, one after another, of the inputs whose `parameters.binary_data_size` says how many
bytes each takes: fixed-size types little-endian in row-major order (BOOL one byte each),
BYTES as items each prefixed by its 4-byte little-endian length. `decode_binary_request`
turns such a body into the JSON form protocol.py parses; an output asked in binary
(`parameters.binary_data` on it, or `parameters.binary_data_output` on the request) is
answered the same way by `encode_response`, its header length in the response's
`Inference-Header-Content-Length`.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np
import orjson
from canaryml_api.telemetry import INFERENCE_HEADER_LENGTH_HEADER

from canaryml_server.schema import InvalidInput, Problem

BINARY_HEADER = INFERENCE_HEADER_LENGTH_HEADER  # the JSON header's length, in bytes
BINARY_SIZE_PARAMETER = "binary_data_size"  # an input's or output's bytes after the header
BINARY_OUTPUT_PARAMETER = "binary_data"  # on an output: answer it in binary
BINARY_OUTPUTS_PARAMETER = "binary_data_output"  # on the request: every output in binary
BYTES_DATATYPE = "BYTES"
_DTYPES: dict[str, np.dtype[Any]] = {
    name: np.dtype(code)
    for name, code in (
        ("BOOL", "?"), ("UINT8", "u1"), ("UINT16", "<u2"), ("UINT32", "<u4"),
        ("UINT64", "<u8"), ("INT8", "i1"), ("INT16", "<i2"), ("INT32", "<i4"),
        ("INT64", "<i8"), ("FP16", "<f2"), ("FP32", "<f4"), ("FP64", "<f8"),
    )
}  # fmt: skip
_LENGTH = struct.Struct("<I")


def _problem(loc: tuple[str | int, ...], msg: str, kind: str = "value_error") -> InvalidInput:
    """A body that cannot be read as the extension says: 400 (422 is for readable values)."""
    return InvalidInput([Problem(loc, msg, kind)], status_code=400)


def _header_problem(msg: str) -> InvalidInput:
    return _problem(("header", "Inference-Header-Content-Length"), msg)


def decode_binary_request(body: bytes, header_length: str) -> Any:
    """The request of a body in the binary extension, in its JSON form: each binary input's
    tensor decoded into its `data` (a flat read-only numpy array; BYTES items as a list of
    text), `binary_data_size` removed.

    Raises InvalidInput (400) naming what does not add up: the header length, a size, the
    bytes left over or missing, a tensor whose size does not fit its shape and datatype.
    """
    raw = header_length.strip()
    if not raw.isdigit():
        raise _header_problem(f"expected the JSON header's length in bytes, got {raw!r}")
    length = int(raw)
    if length == 0 or length > len(body):
        raise _header_problem(f"says {length} bytes, but the body has {len(body)}")
    try:
        payload = orjson.loads(body[:length])
    except orjson.JSONDecodeError as error:
        msg = f"the first {length} bytes are not a JSON header: {error}"
        raise _problem(("body",), msg, "json_invalid") from error
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        return payload  # the parser says what is wrong with it
    offset = length
    for index, item in enumerate(payload["inputs"]):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        if not isinstance(parameters, dict) or BINARY_SIZE_PARAMETER not in parameters:
            continue
        loc = ("inputs", index, "parameters", BINARY_SIZE_PARAMETER)
        size = parameters.pop(BINARY_SIZE_PARAMETER)
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise _problem(loc, f"expected a number of bytes, got {size!r}")
        if "data" in item:
            raise _problem(("inputs", index, "data"), "sent both as data and as binary data")
        if offset + size > len(body):
            msg = (
                f"says {size} bytes from byte {offset}, but the body ends at byte {len(body)} "
                "(check every input's binary_data_size and the Inference-Header-Content-Length)"
            )
            raise _problem(loc, msg)
        item["data"] = _decode_tensor(index, item, body[offset : offset + size])
        offset += size
    if offset != len(body):
        msg = (
            f"{len(body) - offset} bytes after the header and the binary inputs "
            f"({length} + the binary_data_size of each): they add up to {offset}, "
            f"the body has {len(body)}"
        )
        raise _problem(("body",), msg)
    return payload


def _decode_tensor(index: int, item: dict[str, Any], raw: bytes) -> list[Any] | np.ndarray:
    datatype, shape = item.get("datatype"), item.get("shape")
    if not isinstance(datatype, str) or not isinstance(shape, list):
        return []  # the parser names the missing field
    count = math.prod(d for d in shape if isinstance(d, int))
    loc = ("inputs", index, "parameters", BINARY_SIZE_PARAMETER)
    if datatype.upper() == BYTES_DATATYPE:
        return _decode_bytes(loc, raw, count)
    dtype = _DTYPES.get(datatype.upper())
    if dtype is None:
        raise _problem(("inputs", index, "datatype"), f"unknown datatype {datatype!r}")
    if len(raw) != count * dtype.itemsize:
        msg = (
            f"is {len(raw)} bytes, but shape {shape} of {datatype} takes "
            f"{count} x {dtype.itemsize} = {count * dtype.itemsize}"
        )
        raise _problem(loc, msg)
    # Flat, in the wire's order: the parser reads it by the shape, as it reads JSON data.
    return np.frombuffer(raw, dtype=dtype)


def _decode_bytes(loc: tuple[str | int, ...], raw: bytes, count: int) -> list[Any]:
    items: list[Any] = []
    offset = 0
    while offset < len(raw):
        if offset + 4 > len(raw):
            raise _problem(loc, f"item {len(items)} has a truncated 4-byte length prefix")
        (size,) = _LENGTH.unpack_from(raw, offset)
        offset += 4
        if offset + size > len(raw):
            msg = f"item {len(items)} says {size} bytes, only {len(raw) - offset} are left"
            raise _problem(loc, msg)
        chunk = raw[offset : offset + size]
        offset += size
        try:
            items.append(chunk.decode("utf-8"))
        except UnicodeDecodeError:
            raise _problem(loc, f"item {len(items)} is not UTF-8 text") from None
    if len(items) != count:
        raise _problem(loc, f"holds {len(items)} BYTES items, the shape needs {count}")
    return items


def binary_outputs(payload: Any) -> frozenset[str] | None:
    """The outputs the request asks in binary (`None`: every one); empty for none."""
    if not isinstance(payload, dict):
        return frozenset()
    everything = False
    parameters = payload.get("parameters")
    if isinstance(parameters, dict) and BINARY_OUTPUTS_PARAMETER in parameters:
        everything = _flag(("parameters", BINARY_OUTPUTS_PARAMETER), parameters)
    outputs = payload.get("outputs")
    if not isinstance(outputs, list):
        return None if everything else frozenset()
    names: set[str] = set()
    for index, item in enumerate(outputs):
        parameters = item.get("parameters") if isinstance(item, dict) else None
        loc = ("outputs", index, "parameters", BINARY_OUTPUT_PARAMETER)
        if isinstance(parameters, dict) and BINARY_OUTPUT_PARAMETER in parameters:
            wanted = _flag(loc, parameters, key=BINARY_OUTPUT_PARAMETER)
        else:
            wanted = everything
        if wanted and isinstance(item, dict):
            names.add(item.get("name"))  # type: ignore[arg-type]
    return frozenset(names)


def _flag(
    loc: tuple[str | int, ...], parameters: dict[str, Any], key: str = BINARY_OUTPUTS_PARAMETER
) -> bool:
    value = parameters[key]
    if not isinstance(value, bool):
        raise _problem(loc, f"expected true or false, got {value!r}")
    return value


def encode_response(
    response: dict[str, Any], binary: frozenset[str] | None
) -> tuple[bytes, int | None]:
    """The response's body and, when an output goes in binary (`binary`: their names, `None`
    for all), the length of its JSON header (for `Inference-Header-Content-Length`)."""
    options = orjson.OPT_SERIALIZE_NUMPY
    if binary is not None and not binary:
        return orjson.dumps(response, option=options), None
    tails: list[bytes] = []
    outputs = []
    for tensor in response["outputs"]:
        if binary is not None and tensor["name"] not in binary:
            outputs.append(tensor)
            continue
        raw = _encode_tensor(tensor["datatype"], tensor["data"])
        tails.append(raw)
        outputs.append(
            {**{k: v for k, v in tensor.items() if k != "data"},
             "parameters": {BINARY_SIZE_PARAMETER: len(raw)}}
        )  # fmt: skip
    if not tails:
        return orjson.dumps(response, option=options), None
    header = orjson.dumps({**response, "outputs": outputs}, option=options)
    return header + b"".join(tails), len(header)


def _encode_tensor(datatype: str, data: Any) -> bytes:
    if datatype == BYTES_DATATYPE:
        items = [str(v).encode("utf-8") for v in np.asarray(data, dtype=object).ravel()]
        return b"".join(_LENGTH.pack(len(item)) + item for item in items)
    if isinstance(data, list):  # JSON's nulls for NaN and infinities are NaN in binary
        data = [math.nan if v is None else v for v in data]
    return np.ascontiguousarray(data, dtype=_DTYPES[datatype]).tobytes()
