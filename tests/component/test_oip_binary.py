"""The Open Inference Protocol's binary tensor extension through the model server's app (httpx's
ASGI transport): requests with tensors after a JSON header, binary answers when asked, and a
400 naming whatever does not add up. The real clients (KServe's, MLServer's codecs) are tried
against real processes in tests/integration/test_oip_clients.py."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import orjson
import pandas as pd
import pytest
from canaryml_server.app import create_app
from canaryml_server.artifact import LoadedModel, load_artifact
from canaryml_server.settings import ServerSettings

from tests.mixed_models import package_number_and_colour

MODEL = "breast-cancer"
URL = f"/v2/models/{MODEL}/infer"
HEADER = "Inference-Header-Content-Length"


async def _client(model: LoadedModel, **overrides: Any) -> httpx.AsyncClient:
    settings = ServerSettings(
        **{"model_uri": "unused", "model_deployment": "bc", "track": "canary", **overrides}
    )
    app = create_app(model=model, settings=settings)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


def _package_size_and_colour(tmp_path: Path) -> tuple[Any, Path]:
    """A pipeline over a numeric `size` and a categorical `colour`, packaged as `shapes`."""
    rng = np.random.default_rng(1)
    sizes = rng.normal(0, 1, 300)
    return package_number_and_colour(tmp_path, "size", sizes, threshold=0, name="shapes", rng=rng)


@pytest.fixture(scope="module")
def canary(example_models: dict[str, Path]) -> LoadedModel:
    return load_artifact(example_models["canary"])


@pytest.fixture
async def client(canary: LoadedModel) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(canary) as c:
        yield c


def binary_body(
    inputs: list[tuple[str, str, np.ndarray | list[str]]], **extra: Any
) -> tuple[bytes, dict[str, str]]:
    """A request in the binary extension, written here independently of the server's code."""
    tensors, tails = [], []
    for name, datatype, values in inputs:
        if datatype == "BYTES":
            items = [str(v).encode() for v in values]
            raw = b"".join(struct.pack("<I", len(i)) + i for i in items)
            shape = [len(items)]
        else:
            array = np.asarray(values)
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            shape = list(array.shape)
        tails.append(raw)
        tensors.append(
            {"name": name, "shape": shape, "datatype": datatype,
             "parameters": {"binary_data_size": len(raw)}}
        )  # fmt: skip
    header = orjson.dumps({"inputs": tensors, **extra})
    headers = {"content-type": "application/octet-stream", HEADER: str(len(header))}
    return header + b"".join(tails), headers


def read_binary_answer(response: httpx.Response) -> dict[str, Any]:
    """The answer's JSON header with each binary output's data decoded into it."""
    length = int(response.headers[HEADER])
    document: dict[str, Any] = orjson.loads(response.content[:length])
    offset = length
    dtypes = {"INT64": "<i8", "FP32": "<f4", "FP64": "<f8", "BOOL": "?"}
    for output in document["outputs"]:
        size = output.get("parameters", {}).get("binary_data_size")
        if size is None:
            continue
        chunk = response.content[offset : offset + size]
        offset += size
        output["data"] = np.frombuffer(chunk, dtype=dtypes[output["datatype"]]).tolist()
    assert offset == len(response.content)
    return document


@pytest.mark.parametrize(
    "datatype",
    ["FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8",
     "UINT64", "UINT32", "UINT16", "UINT8"],
)  # fmt: skip
async def test_a_binary_tensor_of_each_numeric_datatype(
    client: httpx.AsyncClient,
    test_rows: pd.DataFrame,
    example_models: dict[str, Path],
    datatype: str,
) -> None:
    """Rows in the given type (rounded to integers for integer types, as a client would cast
    them) predict what the same rows predict sent as JSON."""
    rows = test_rows.iloc[:8].to_numpy()
    dtype = {"FP64": "f8", "FP32": "f4", "FP16": "f2"}.get(datatype)
    if dtype is None:
        dtype = datatype.lower().replace("uint", "u").replace("int", "i")
        dtype = dtype[0] + str(int(dtype[1:]) // 8)
        rows = np.abs(np.round(rows))
        if datatype in ("INT8", "UINT8"):
            rows = np.clip(rows, 0, 127)
    typed = rows.astype(dtype)
    content, headers = binary_body([("input-0", datatype, typed)], id="r-7")
    response = await client.post(URL, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    as_json = await client.post(
        URL,
        json={"inputs": [{"name": "input-0", "shape": list(typed.shape), "datatype": datatype,
                          "data": typed.ravel().tolist()}]},
    )  # fmt: skip
    assert body["outputs"] == as_json.json()["outputs"]
    assert body["id"] == "r-7"
    model = joblib.load(example_models["root"] / "canary.joblib")
    if datatype == "FP64":
        assert body["outputs"][0]["data"] == model.predict(rows).tolist()


async def test_one_row_and_a_binary_answer(
    client: httpx.AsyncClient, test_rows: pd.DataFrame, example_models: dict[str, Path]
) -> None:
    model = joblib.load(example_models["root"] / "canary.joblib")
    rows = test_rows.iloc[:64].to_numpy()
    # Every output in binary, asked on the request.
    content, headers = binary_body(
        [("input-0", "FP64", rows)],
        outputs=[{"name": "predict"}, {"name": "predict_proba"}],
        parameters={"binary_data_output": True},
    )
    response = await client.post(URL, content=content, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/octet-stream"
    document = read_binary_answer(response)
    outputs = {o["name"]: o for o in document["outputs"]}
    assert outputs["predict"]["data"] == model.predict(rows).tolist()
    assert outputs["predict_proba"]["shape"] == [64, 2]
    np.testing.assert_allclose(
        np.reshape(outputs["predict_proba"]["data"], (64, 2)), model.predict_proba(rows), atol=1e-5
    )
    # One output in binary, the other in JSON, for one row sent as a vector.
    content, headers = binary_body(
        [("input-0", "FP64", rows[0])],
        outputs=[{"name": "predict", "parameters": {"binary_data": True}},
                 {"name": "predict_proba"}],
    )  # fmt: skip
    response = await client.post(URL, content=content, headers=headers)
    document = read_binary_answer(response)
    predict, proba = document["outputs"]
    assert predict["data"] == model.predict(rows[:1]).tolist()
    assert "parameters" in predict and "binary_data_size" not in proba.get("parameters", {})
    assert len(proba["data"]) == 2
    # A JSON request may ask for a binary answer too.
    response = await client.post(
        URL,
        json={"inputs": [{"name": "input-0", "shape": [1, 30], "datatype": "FP64",
                          "data": rows[0].tolist()}],
              "parameters": {"binary_data_output": True}},
    )  # fmt: skip
    assert read_binary_answer(response)["outputs"][0]["data"] == model.predict(rows[:1]).tolist()


async def test_binary_columns_with_bytes_categories(tmp_path: Path) -> None:
    model, folder = _package_size_and_colour(tmp_path)
    sizes, colours = np.array([1.5, -1.0, 2.0]), ["red", "blue", "réd"]
    expected = model.predict(pd.DataFrame({"size": sizes, "colour": colours})).tolist()
    async with await _client(load_artifact(folder), unknown_categories="allow") as client:
        content, headers = binary_body([("size", "FP64", sizes), ("colour", "BYTES", colours)])
        response = await client.post("/v2/models/shapes/infer", content=content, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json()["outputs"][0]["data"] == expected
        # Mixed: a category in JSON, a number in binary.
        header = orjson.dumps(
            {"inputs": [
                {"name": "size", "shape": [3], "datatype": "FP64",
                 "parameters": {"binary_data_size": 24}},
                {"name": "colour", "shape": [3], "datatype": "BYTES", "data": colours},
            ]}
        )  # fmt: skip
        response = await client.post(
            "/v2/models/shapes/infer",
            content=header + sizes.astype("<f8").tobytes(),
            headers={HEADER: str(len(header))},  # no content type: the header says enough
        )
        assert response.json()["outputs"][0]["data"] == expected


def _tensor(size: int, *, shape: list[int] | None = None, datatype: str = "FP64") -> bytes:
    return orjson.dumps(
        {"inputs": [{"name": "input-0", "shape": shape or [1, 30], "datatype": datatype,
                     "parameters": {"binary_data_size": size}}]}
    )  # fmt: skip


_ROW = np.zeros(30).tobytes()


@pytest.mark.parametrize(
    ("content", "length", "content_type", "status", "message"),
    [
        (_tensor(240) + _ROW, None, "application/octet-stream", 400,
         "needs the Inference-Header-Content-Length header"),
        (_tensor(240) + _ROW, "abc", "application/octet-stream", 400,
         "header.Inference-Header-Content-Length: expected the JSON header's length"),
        (_tensor(240) + _ROW, "999999", "application/octet-stream", 400,
         "says 999999 bytes, but the body has"),
        (_tensor(240) + _ROW, "0", "application/octet-stream", 400, "says 0 bytes"),
        (b"{nope" + _ROW, "5", "application/octet-stream", 400, "not a JSON header"),
        (_tensor(240) + _ROW[:-8], "len", "application/octet-stream", 400,
         "inputs.0.parameters.binary_data_size: says 240 bytes from byte"),
        (_tensor(232) + _ROW[:-8], "len", "application/octet-stream", 400,
         "is 232 bytes, but shape [1, 30] of FP64 takes 30 x 8 = 240"),
        (_tensor(240) + _ROW + b"extra", "len", "application/octet-stream", 400,
         "5 bytes after the header and the binary inputs"),
        (_tensor(-1) + _ROW, "len", "application/octet-stream", 400,
         "binary_data_size: expected a number of bytes, got -1"),
        (_tensor(240, datatype="FP128") + _ROW, "len", "application/octet-stream", 400,
         "inputs.0.datatype: unknown datatype 'FP128'"),
        (_tensor(8, shape=[2], datatype="BYTES") + b"\x09\0\0\0abcd", "len",
         "application/octet-stream", 400, "item 0 says 9 bytes, only 4 are left"),
        (_tensor(240) + _ROW, "len", "text/plain", 415,
         "expected application/json or, with the inference-header-content-length header"),
    ],
)  # fmt: skip
async def test_binary_bodies_that_do_not_add_up(
    client: httpx.AsyncClient,
    content: bytes,
    length: str | None,
    content_type: str,
    status: int,
    message: str,
) -> None:
    headers = {"content-type": content_type}
    if length is not None:
        header_size = content.index(b"}]}") + 3 if content.startswith(b'{"') else 0
        headers[HEADER] = str(header_size) if length == "len" else length
    response = await client.post(URL, content=content, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"], response.json()["error"]


async def test_binary_limits_and_flags(canary: LoadedModel) -> None:
    async with await _client(canary, max_body_bytes=1024) as client:
        rows = np.zeros((8, 30))  # 1920 bytes of tensor: over the whole body's limit
        content, headers = binary_body([("input-0", "FP64", rows)])
        response = await client.post(URL, content=content, headers=headers)
        assert response.status_code == 413
        content, headers = binary_body(
            [("input-0", "FP64", rows[:1])], parameters={"binary_data_output": "yes"}
        )
        response = await client.post(URL, content=content, headers=headers)
        assert response.status_code == 400
        assert "parameters.binary_data_output: expected true or false" in response.json()["error"]
        # /predict reads JSON only: the binary extension is the inference protocol's.
        response = await client.post("/predict", content=content, headers=headers)
        assert response.status_code == 415


async def test_binary_values_out_of_bounds_are_named(
    client: httpx.AsyncClient, test_rows: pd.DataFrame
) -> None:
    """A NaN or an infinity can only come in binary (JSON has neither): refused like a JSON
    null or an out-of-range number, naming the feature and the row."""
    rows = test_rows.iloc[:3].to_numpy().copy()
    rows[1, 0] = np.nan
    rows[2, 1] = np.inf
    content, headers = binary_body([("input-0", "FP64", rows)])
    response = await client.post(URL, content=content, headers=headers)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "1.mean radius" in error and "2.mean texture" in error, error


async def test_the_openapi_document_names_the_binary_body(client: httpx.AsyncClient) -> None:
    openapi = (await client.get("/openapi.json")).json()
    content = openapi["paths"][URL.replace(MODEL, "{model_name}")]["post"]["requestBody"]["content"]
    assert set(content) == {"application/json", "application/octet-stream"}
    assert (
        "Inference-Header-Content-Length"
        in content["application/octet-stream"]["schema"]["description"]
    )
