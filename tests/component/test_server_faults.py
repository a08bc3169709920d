"""Fault injection (CANARYML_INJECT_*) in the model server, through httpx's ASGI transport."""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_server.app import create_app
from canaryml_server.artifact import LoadedModel, load_artifact
from canaryml_server.faults import Faults
from canaryml_server.runtime import Prediction
from canaryml_server.schema import Batch
from canaryml_server.settings import ServerSettings
from prometheus_client.parser import text_string_to_metric_families
from pydantic import ValidationError

MODEL = "breast-cancer"


def _settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"model_uri": "unused", "model_deployment": "bc", "track": "canary"}
    values.update(overrides)
    return ServerSettings(**values)


def _client(model: LoadedModel, **overrides: Any) -> httpx.AsyncClient:
    app = create_app(model=model, settings=_settings(**overrides))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


class CountingPredictor:
    """The real predictor, counting its calls: injected errors must not reach the model."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.runtime = inner.runtime
        self.has_probabilities = inner.has_probabilities
        self.max_magnitude = inner.max_magnitude
        self.calls = 0

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        self.calls += 1
        prediction: Prediction = self.inner.predict(batch, probabilities=probabilities)
        return prediction


@pytest.fixture(scope="module")
def canary(example_models: dict[str, Path]) -> LoadedModel:
    return load_artifact(example_models["canary"])


@pytest.fixture
def row(test_rows: pd.DataFrame) -> dict[str, Any]:
    return {str(name): value for name, value in test_rows.iloc[0].items()}


def _metric(text: str, name: str, **labels: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def test_injected_errors_are_counted_500s_without_the_model(
    canary: LoadedModel, row: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    predictor = CountingPredictor(canary.predictor)
    model = dataclasses.replace(canary, predictor=predictor)
    caplog.set_level(logging.WARNING, logger="canaryml.server")
    async with _client(model, inject_errors=1.0) as client:
        [warning] = [r for r in caplog.records if "fault injection" in r.getMessage()]
        assert warning.levelno == logging.WARNING
        assert "CANARYML_INJECT_ERRORS=1" in warning.getMessage()
        for _ in range(3):
            response = await client.post("/predict", json=row)
            assert response.status_code == 500
            [problem] = response.json()["detail"]
            assert problem["msg"] == "injected fault: CANARYML_INJECT_ERRORS=1"
        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64",
                              "data": list(row.values())}]},
        )  # fmt: skip
        assert infer.status_code == 500
        assert "injected fault" in infer.json()["error"]
        assert predictor.calls == 0
        # Not a prediction request: untouched.
        assert (await client.get("/v2/health/ready")).status_code == 200
        text = (await client.get("/metrics")).text
        assert _metric(text, "canaryml_requests_total", code="500", source="server") == 4
        assert _metric(text, "canaryml_requests_total", code="200") == 0


async def test_no_faults_by_default(
    canary: LoadedModel, row: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="canaryml.server")
    assert Faults.from_settings(_settings()) is None
    # A latency that applies to no request is no fault either.
    assert Faults.from_settings(_settings(inject_latency=5, inject_latency_fraction=0)) is None
    async with _client(canary) as client:
        assert (await client.post("/predict", json=row)).status_code == 200
    assert not [r for r in caplog.records if "fault injection" in r.getMessage()]


async def test_injected_latency_is_measured(canary: LoadedModel, row: dict[str, Any]) -> None:
    async with _client(canary, inject_latency=0.2, inject_latency_fraction=1.0) as client:
        start = time.perf_counter()
        response = await client.post("/predict", json=row)
        assert time.perf_counter() - start >= 0.2
        assert response.status_code == 200
        text = (await client.get("/metrics")).text
    histogram = "canaryml_request_duration_seconds"
    total = _metric(text, f"{histogram}_count")
    fast = _metric(text, f"{histogram}_bucket", le="0.1")
    assert (total, fast) == (1, 0)  # its one sample is above 0.1 s


async def test_partial_faults_follow_the_draw() -> None:
    draws = iter([0.3, 0.7, 0.9, 0.1])
    faults = Faults(
        error_fraction=0.5, latency=0.001, latency_fraction=0.5, draw=lambda: next(draws)
    )
    assert not await faults.apply()  # slept (0.3 < 0.5), no error (0.7)
    assert await faults.apply()  # no sleep (0.9), error (0.1 < 0.5)


@pytest.mark.parametrize(
    "overrides",
    [
        {"inject_errors": 1.5},
        {"inject_errors": -0.1},
        {"inject_latency": -1},
        {"inject_latency": float("inf")},
        {"inject_latency_fraction": 2},
    ],
)
def test_out_of_range_values_are_refused(overrides: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _settings(**overrides)


def test_settings_read_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CANARYML_INJECT_ERRORS", "0.25")
    monkeypatch.setenv("CANARYML_INJECT_LATENCY", "0.5")
    monkeypatch.setenv("CANARYML_INJECT_LATENCY_FRACTION", "0.1")
    settings = ServerSettings(model_uri="unused")
    assert (
        settings.inject_errors,
        settings.inject_latency,
        settings.inject_latency_fraction,
    ) == (0.25, 0.5, 0.1)
