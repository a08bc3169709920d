"""Numbers a runtime cannot represent are the client's fault: a 422 naming them, on both
runtimes and both protocols, never a 200 with null probabilities (ONNX) or a 500 that counts
against the track (scikit-learn). Issue 16, items 3 and 10."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_server.app import create_app
from canaryml_server.artifact import load_artifact
from canaryml_server.settings import ServerSettings

MODEL = "breast-cancer"


@pytest.mark.parametrize(
    ("role", "runtime", "served"),
    [("stable", "auto", "onnx"), ("canary", "auto", "onnx"), ("canary", "sklearn", "sklearn")],
)
@pytest.mark.parametrize("value", [1e308, -1e308, 3.5e38])
async def test_out_of_range_features_are_422(
    example_models: dict[str, Path],
    test_rows: pd.DataFrame,
    role: str,
    runtime: Any,
    served: str,
    value: float,
) -> None:
    loaded = load_artifact(example_models[role], runtime=runtime)
    assert loaded.predictor.runtime == served
    settings = ServerSettings(model_uri="unused", model_deployment="bc", track="canary")
    app = create_app(model=loaded, settings=settings)
    row = {name: value for name in test_rows.columns}  # every feature, as in the issue
    features = len(test_rows.columns)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://test"
    ) as client:
        answer = await client.post("/predict", json=row)
        assert answer.status_code == 422, answer.text
        assert "out_of_range" in answer.text
        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={
                "inputs": [
                    {
                        "name": "input-0",
                        "shape": [1, features],
                        "datatype": "FP64",
                        "data": [value] * features,
                    }
                ]
            },
        )
        assert infer.status_code == 422, infer.text
        metrics = (await client.get("/metrics")).text
    errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("canaryml_requests_total") and 'code="500"' in line
    ]
    assert errors and all(line.endswith(" 0.0") for line in errors), errors
