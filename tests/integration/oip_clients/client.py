"""Requests made by the Open Inference Protocol clients users already have, run with the
interpreter of the client's own environment (see scripts/oip-clients.sh):

    python client.py kserve|mlserver CASES_JSON

CASES_JSON is a file of cases (written by tests/integration/test_oip_clients.py): each names
the base URL, the model, its input rows (a list of rows, or {column: values}), how to send
them (datatype, binary or JSON, the codec) and which outputs to ask for. The script prints
one JSON document: per case, the answer as the client decoded it (its outputs as lists, its
id), or the error.
Nothing here decides whether an answer is right: the test compares it with scikit-learn.
"""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

DTYPES = {
    "FP64": "float64", "FP32": "float32", "FP16": "float16", "INT64": "int64",
    "INT32": "int32", "INT16": "int16", "INT8": "int8", "UINT64": "uint64",
    "UINT32": "uint32", "UINT16": "uint16", "UINT8": "uint8", "BOOL": "bool",
}  # fmt: skip


def _array(values: Any, datatype: str) -> np.ndarray:
    if datatype == "BYTES":
        return np.array([str(v).encode() for v in values], dtype=np.object_)
    return np.asarray(values).astype(DTYPES[datatype])


async def kserve_cases(cases: list[dict[str, Any]]) -> dict[str, Any]:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig
    from kserve.protocol.infer_type import RequestedOutput

    client = InferenceRESTClient(RESTConfig(protocol="v2", timeout=30))
    results: dict[str, Any] = {}
    for case in cases:
        inputs = []
        columns = case["rows"] if isinstance(case["rows"], dict) else {"input-0": case["rows"]}
        for name, values in columns.items():
            datatype = case["datatypes"].get(name, case["datatypes"].get("*", "FP64"))
            array = _array(values, datatype)
            tensor = InferInput(name=name, shape=list(array.shape), datatype=datatype)
            if case["binary"]:
                tensor.set_data_from_numpy(array)  # the default: the binary extension
            else:
                tensor.set_data_from_numpy(array, binary_data=False)
            inputs.append(tensor)
        outputs = [
            RequestedOutput(name, {"binary_data": True} if case.get("binary_outputs") else None)
            for name in case.get("outputs", [])
        ]
        request = InferRequest(
            model_name=case["model"],
            infer_inputs=inputs,
            request_id=case.get("id"),
            request_outputs=outputs or None,
            parameters={"binary_data_output": True} if case.get("binary_all") else None,
        )
        headers: dict[str, str] = {}
        try:
            response = await client.infer(
                case["url"], request, model_name=case["model"], response_headers=headers
            )
        except Exception as error:  # reported, and the test says which case failed
            results[case["name"]] = {"error": f"{type(error).__name__}: {error}"}
            continue
        results[case["name"]] = {
            "id": response.id,
            "binary_answer": "inference-header-content-length" in headers,
            "outputs": {o.name: o.as_numpy().tolist() for o in response.outputs},
        }
    await client.close()
    return results


def mlserver_cases(cases: list[dict[str, Any]]) -> dict[str, Any]:
    import pandas as pd
    from mlserver.codecs import NumpyCodec, NumpyRequestCodec, PandasCodec
    from mlserver.types import InferenceResponse, RequestOutput

    results: dict[str, Any] = {}
    for case in cases:
        if case["codec"] == "numpy":
            datatype = case["datatypes"].get("*", "FP64")
            request = NumpyRequestCodec.encode_request(_array(case["rows"], datatype))
        else:
            frame = pd.DataFrame(case["rows"])
            # mlserver 1.7.1 knows no pandas 3 `str` columns (KeyError 'O'): object ones, as
            # pandas 2 made them.
            frame = frame.astype({c: object for c in frame if frame[c].dtype.kind not in "biuf"})
            request = PandasCodec.encode_request(frame, use_bytes=case.get("use_bytes", True))
        request.id = case.get("id")
        if case.get("outputs"):
            request.outputs = [RequestOutput(name=name) for name in case["outputs"]]
        body = request.model_dump_json(exclude_none=True).encode()
        http = urllib.request.Request(
            f"{case['url']}/v2/models/{case['model']}/infer",
            data=body,
            headers={"content-type": "application/json"},
        )
        try:
            with urllib.request.urlopen(http, timeout=30) as answer:
                response = InferenceResponse.model_validate_json(answer.read())
        except Exception as error:
            detail = error.read().decode() if hasattr(error, "read") else ""
            results[case["name"]] = {"error": f"{type(error).__name__}: {error} {detail}"}
            continue
        results[case["name"]] = {
            "id": response.id,
            "binary_answer": False,
            "outputs": {o.name: NumpyCodec.decode_output(o).tolist() for o in response.outputs},
        }
    return results


def main() -> None:
    which, path = sys.argv[1:3]
    cases = json.loads(Path(path).read_text())
    kserve = which == "kserve"
    results = asyncio.run(kserve_cases(cases)) if kserve else mlserver_cases(cases)
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
