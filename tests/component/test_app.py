"""The model server through httpx's ASGI transport: endpoints, validation, metrics."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from canaryml_server.app import create_app
from canaryml_server.artifact import LoadedModel, load_artifact
from canaryml_server.drift import SAMPLE_ROWS
from canaryml_server.runtime import Prediction
from canaryml_server.schema import MAX_PROBLEMS, Batch
from canaryml_server.settings import ServerSettings
from prometheus_client.parser import text_string_to_metric_families

from tests.mixed_models import package_number_and_colour

MODEL = "breast-cancer"


def _settings(**overrides: Any) -> ServerSettings:
    values: dict[str, Any] = {"model_uri": "unused", "model_deployment": "bc", "track": "canary"}
    values.update(overrides)
    return ServerSettings(**values)


async def _client(model: LoadedModel, **overrides: Any) -> httpx.AsyncClient:
    app = create_app(model=model, settings=_settings(**overrides))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


@pytest.fixture(scope="module")
def canary(example_models: dict[str, Path]) -> LoadedModel:
    return load_artifact(example_models["canary"])


@pytest.fixture
async def client(canary: LoadedModel) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client(canary, drift_min_rows=10) as c:
        yield c


def _records(rows: pd.DataFrame) -> list[dict[str, Any]]:
    return rows.to_dict(orient="records")  # type: ignore[return-value]


def _metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict[Any, float], name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= set(ls))


async def test_predict_one_and_many(
    client: httpx.AsyncClient, test_rows: pd.DataFrame, example_models: dict[str, Path]
) -> None:
    sklearn_model = joblib.load(example_models["root"] / "canary.joblib")
    one = await client.post("/predict", json=_records(test_rows.iloc[:1])[0])
    assert one.status_code == 200
    body = one.json()
    assert body["model"] == MODEL
    assert body["version"] == "1.1.0"
    assert body["track"] == "canary"
    assert body["classes"] == [0, 1]
    assert body["predictions"] == sklearn_model.predict(test_rows.iloc[:1].to_numpy()).tolist()
    many = await client.post("/predict", json=_records(test_rows))
    assert many.status_code == 200
    body = many.json()
    assert body["predictions"] == sklearn_model.predict(test_rows.to_numpy()).tolist()
    np.testing.assert_allclose(
        body["probabilities"], sklearn_model.predict_proba(test_rows.to_numpy()), atol=1e-5
    )
    no_proba = await client.post("/predict?probabilities=false", json=_records(test_rows.iloc[:2]))
    assert "probabilities" not in no_proba.json()


async def test_open_inference_protocol(
    client: httpx.AsyncClient, test_rows: pd.DataFrame, example_models: dict[str, Path]
) -> None:
    sklearn_model = joblib.load(example_models["root"] / "canary.joblib")
    rows = test_rows.iloc[:5]
    expected = sklearn_model.predict(rows.to_numpy()).tolist()
    tensor = {
        "id": "req-1",
        "inputs": [
            {"name": "input-0", "shape": [5, 30], "datatype": "FP64",
             "data": rows.to_numpy().ravel().tolist()}
        ],
    }  # fmt: skip
    response = await client.post(f"/v2/models/{MODEL}/infer", json=tensor)
    assert response.status_code == 200
    body = response.json()
    assert body["model_name"] == MODEL
    assert body["model_version"] == "1.1.0"
    assert body["id"] == "req-1"
    assert body["outputs"] == [
        {"name": "predict", "shape": [5], "datatype": "INT64", "data": expected}
    ]
    # Nested data, both outputs, the versioned path.
    tensor["inputs"][0]["data"] = rows.to_numpy().tolist()
    tensor["outputs"] = [{"name": "predict"}, {"name": "predict_proba"}]
    response = await client.post(f"/v2/models/{MODEL}/versions/1.1.0/infer", json=tensor)
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    assert outputs["predict"]["data"] == expected
    assert outputs["predict_proba"]["shape"] == [5, 2]
    np.testing.assert_allclose(
        np.reshape(outputs["predict_proba"]["data"], (5, 2)),
        sklearn_model.predict_proba(rows.to_numpy()),
        atol=1e-5,
    )
    # One input per feature, as MLServer's pandas codec sends.
    columnar = {
        "inputs": [
            {"name": name, "shape": [5], "datatype": "FP64", "data": rows[name].tolist()}
            for name in rows.columns
        ]
    }
    response = await client.post(f"/v2/models/{MODEL}/infer", json=columnar)
    assert response.json()["outputs"][0]["data"] == expected


async def test_health_and_metadata(client: httpx.AsyncClient, canary: LoadedModel) -> None:
    assert (await client.get("/v2/health/live")).json() == {"live": True}
    assert (await client.get("/v2/health/ready")).json() == {"ready": True}
    assert (await client.get(f"/v2/models/{MODEL}/ready")).json()["ready"] is True
    assert (await client.get("/v2")).json()["name"] == "canaryml"
    metadata = (await client.get(f"/v2/models/{MODEL}")).json()
    assert metadata["name"] == MODEL
    assert metadata["versions"] == ["1.1.0"]
    assert metadata["platform"] == "onnxruntime"
    assert len(metadata["inputs"]) == 30
    assert [o["name"] for o in metadata["outputs"]] == ["predict", "predict_proba"]
    assert metadata["parameters"]["runtime"] == "onnx"
    assert metadata["parameters"]["sha256"] == canary.digest
    assert metadata["parameters"]["model_deployment"] == "bc"
    missing = await client.get("/v2/models/other")
    assert missing.status_code == 404
    assert "not found" in missing.json()["error"]
    wrong_version = await client.get(f"/v2/models/{MODEL}/versions/9.9/ready")
    assert wrong_version.status_code == 404
    openapi = (await client.get("/openapi.json")).json()
    assert "/predict" in openapi["paths"]
    assert "InferenceRequest" in openapi["components"]["schemas"]
    record = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert "mean radius" in record["schema"]["anyOf"][0]["properties"]


@pytest.mark.parametrize(
    ("mutate", "status", "loc", "message"),
    [
        (lambda r: r.update({"extra": 1}), 422, [0, "extra"], "unknown feature"),
        (lambda r: r.pop("mean radius"), 422, [0, "mean radius"], "missing feature"),
        (lambda r: r.update({"mean radius": "big"}), 422, [0, "mean radius"], "expected a number"),
        (lambda r: r.update({"mean radius": True}), 422, [0, "mean radius"], "expected a number"),
        (lambda r: r.update({"mean radius": None}), 422, [0, "mean radius"], "missing value"),
    ],
)
async def test_bad_rows_are_4xx_naming_the_field(
    client: httpx.AsyncClient,
    test_rows: pd.DataFrame,
    mutate: Any,
    status: int,
    loc: list[Any],
    message: str,
) -> None:
    row = _records(test_rows.iloc[:1])[0]
    mutate(row)
    response = await client.post("/predict", json=[row])
    assert response.status_code == status
    problems = response.json()["detail"]
    assert any(p["loc"] == loc and message in p["msg"] for p in problems), problems


@pytest.mark.parametrize(
    ("content", "headers", "status", "message"),
    [
        (b"", {"content-type": "application/json"}, 400, "empty body"),
        (b"{nope", {"content-type": "application/json"}, 400, "invalid JSON"),
        (b"[1, 2", {"content-type": "application/json"}, 400, "invalid JSON"),
        (b'{"a": NaN}', {"content-type": "application/json"}, 400, "invalid JSON"),
        (b'[{"mean radius": 1e999}]', {"content-type": "application/json"}, 400, "infinity"),
        (b"[]", {"content-type": "application/json"}, 422, "empty batch"),
        (b'"text"', {"content-type": "application/json"}, 422, "got a string"),
        (b"[1]", {"content-type": "application/json"}, 422, "expected an object of features"),
        (b"a=1", {"content-type": "application/x-www-form-urlencoded"}, 415, "application/json"),
        (b"<a/>", {"content-type": "text/xml"}, 415, "expected application/json"),
    ],
)  # fmt: skip
async def test_bad_bodies(
    client: httpx.AsyncClient, content: bytes, headers: dict[str, str], status: int, message: str
) -> None:
    response = await client.post("/predict", content=content, headers=headers)
    assert response.status_code == status
    assert message in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({}, "inputs: expected a non-empty list"),
        ({"inputs": []}, "inputs: expected a non-empty list"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64"}]}, "inputs.0.data"),
        ({"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [1, 2, 3]}]},
         "expected [rows, 30]"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [1] * 29}]},
         "holds 29 values"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "BYTES", "data": ["a"] * 30}]},
         "expected a numeric datatype"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": ["a"] * 30}]},
         "0.mean radius: expected a number, got str 'a'"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [None] * 30}]},
         "0.mean radius: missing value (null)"),
        ({"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64", "data": [1] * 30}],
          "outputs": [{"name": "explain"}]}, "unknown output 'explain'"),
        ({"inputs": [{"name": "mean radius", "shape": [1], "datatype": "FP64", "data": [1]}]},
         "missing feature"),
        ({"inputs": [{"name": "x", "shape": [0, 30], "datatype": "FP64", "data": []}]},
         "empty batch"),
    ],
)  # fmt: skip
async def test_bad_inference_requests(client: httpx.AsyncClient, body: Any, message: str) -> None:
    response = await client.post(f"/v2/models/{MODEL}/infer", json=body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]


async def test_size_limits(canary: LoadedModel, test_rows: pd.DataFrame) -> None:
    async with await _client(canary, max_body_bytes=4096, max_batch_rows=3) as client:
        big = await client.post("/predict", json=_records(test_rows.iloc[:20]))
        assert big.status_code == 413
        assert "over the limit of 4096 bytes" in big.json()["detail"][0]["msg"]

        async def chunks() -> AsyncIterator[bytes]:  # no content-length: checked while reading
            for _ in range(10):
                yield b" " * 1000

        streamed = await client.post(
            "/predict", content=chunks(), headers={"content-type": "application/json"}
        )
        assert streamed.status_code == 413
        rows = await client.post("/predict", json=_records(test_rows.iloc[:4]))
        assert rows.status_code == 413
        assert "4 rows is over the limit of 3" in rows.json()["detail"][0]["msg"]


async def test_metrics_follow_the_contract(
    client: httpx.AsyncClient, test_rows: pd.DataFrame
) -> None:
    await client.post("/predict", json=_records(test_rows.iloc[:20]))
    await client.post("/predict", json={"nope": 1})
    samples = _metrics((await client.get("/metrics")).text)
    labels = {"model_deployment": "bc", "track": "canary", "version": "1.1.0"}
    assert _value(samples, "canaryml_requests_total", code="200", **labels) == 1
    assert _value(samples, "canaryml_requests_total", code="422", **labels) == 1
    assert _value(samples, "canaryml_request_duration_seconds_count", **labels) == 2
    # 20 rows seen, a sample of SAMPLE_ROWS binned
    assert _value(samples, "canaryml_drift_window_rows", **labels) == SAMPLE_ROWS < 20
    drift = {
        dict(ls)["feature"]: v
        for (n, ls), v in samples.items()
        if n == "canaryml_feature_drift" and set(labels.items()) <= set(ls)
    }
    assert len(drift) == 30
    assert all(v >= 0 for v in drift.values())
    assert _value(samples, "canaryml_prediction_drift", **labels) >= 0
    assert _value(samples, "canaryml_model_info", runtime="onnx", **labels) == 1


async def test_no_drift_series_before_min_rows(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    async with await _client(canary, drift_min_rows=20) as client:
        await client.post("/predict", json=_records(test_rows.iloc[:10]))
        text = (await client.get("/metrics")).text
        assert "canaryml_drift_window_rows" in text
        assert "canaryml_feature_drift{" not in text
        await client.post("/predict", json=_records(test_rows.iloc[:40]))
        assert "canaryml_feature_drift{" in (await client.get("/metrics")).text
        report = (await client.get("/drift")).json()
        # the 10-row request binned whole, a sample of the 40-row one
        assert report["rows"] == 10 + SAMPLE_ROWS
        assert report["sampling"] == {
            "sample_rows": SAMPLE_ROWS,
            "rows_seen": 50,
            "rows_binned": 10 + SAMPLE_ROWS,
            "fraction_binned": (10 + SAMPLE_ROWS) / 50,
        }
        assert set(report["features"]["mean radius"]) == {"psi", "js_distance"}


async def test_every_row_is_binned_without_sampling(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    async with await _client(canary, drift_sample_rows=0) as client:
        await client.post("/predict", json=_records(test_rows.iloc[:40]))
        report = (await client.get("/drift")).json()
        assert report["rows"] == 40
        assert report["sampling"]["rows_seen"] == report["sampling"]["rows_binned"] == 40


async def test_metrics_and_drift_can_be_off(canary: LoadedModel, test_rows: pd.DataFrame) -> None:
    async with await _client(canary, metrics_enabled=False, drift_enabled=False) as client:
        assert (await client.post("/predict", json=_records(test_rows.iloc[:3]))).status_code == 200
        assert "canaryml_requests_total" not in (await client.get("/metrics")).text
        assert (await client.get("/drift")).json() == {"enabled": False}


class ExplodingPredictor:
    runtime = "sklearn"
    has_probabilities = False
    max_magnitude: dict[str, float] = {}  # noqa: RUF012 - never changed

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        raise RuntimeError("boom: secret internal detail")


async def test_model_exception_is_a_counted_500(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    broken = dataclasses.replace(canary, predictor=ExplodingPredictor())
    async with await _client(broken) as client:
        response = await client.post("/predict", json=_records(test_rows.iloc[:1]))
        assert response.status_code == 500
        message = response.json()["detail"][0]["msg"]
        assert "the model failed on this input (RuntimeError)" in message
        assert "secret" not in message
        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": [1, 30], "datatype": "FP64",
                              "data": test_rows.iloc[0].tolist()}]},
        )  # fmt: skip
        assert infer.status_code == 500
        samples = _metrics((await client.get("/metrics")).text)
        assert _value(samples, "canaryml_requests_total", code="500") == 2


async def test_categorical_model_over_http(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    size = rng.normal(0, 1, 300)
    model, folder = package_number_and_colour(tmp_path, "size", size, threshold=0, name="shapes")
    loaded = load_artifact(folder)
    rows = [{"size": 1.5, "colour": "red"}, {"size": -1.0, "colour": "blue"}]
    async with await _client(loaded) as client:
        response = await client.post("/predict", json=rows)
        assert response.json()["predictions"] == model.predict(pd.DataFrame(rows)).tolist()
        unknown = await client.post("/predict", json=[{"size": 1.0, "colour": "green"}])
        assert unknown.status_code == 422
        assert "unknown category 'green'" in unknown.json()["detail"][0]["msg"]
        tensor = await client.post(
            "/v2/models/shapes/infer",
            json={"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]},
        )
        assert "send one input per feature" in tensor.json()["error"]
        columnar = await client.post(
            "/v2/models/shapes/infer",
            json={"inputs": [
                {"name": "size", "shape": [2], "datatype": "FP64", "data": [1.5, -1.0]},
                {"name": "colour", "shape": [2], "datatype": "BYTES", "data": ["red", "blue"]},
            ]},
        )  # fmt: skip
        assert columnar.json()["outputs"][0]["data"] == response.json()["predictions"]
    async with await _client(loaded, unknown_categories="allow") as client:
        allowed = await client.post("/predict", json=[{"size": 1.0, "colour": "green"}])
        assert allowed.status_code == 200


class BrokenOutputPredictor:
    """Answers with something that is not a prediction: a bug, not bad input."""

    runtime = "sklearn"
    has_probabilities = False
    max_magnitude: dict[str, float] = {}  # noqa: RUF012 - never changed

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        return Prediction(labels=None, probabilities=None)  # type: ignore[arg-type]


async def test_unexpected_errors_are_a_json_500_and_counted(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    broken = dataclasses.replace(canary, predictor=BrokenOutputPredictor())
    async with await _client(broken) as client:
        response = await client.post("/predict", json=_records(test_rows.iloc[:1]))
        assert response.status_code == 500
        assert response.json()["detail"][0]["msg"] == "internal error: see the server log"
        samples = _metrics((await client.get("/metrics")).text)
        assert _value(samples, "canaryml_requests_total", code="500") == 1
        assert (await client.get("/v2/health/live")).status_code == 200


# ----------------------------------------------------------------------------------------------
# numbers beyond what the runtime represents

SERVED = [("stable", "auto"), ("stable", "sklearn"), ("canary", "auto"), ("canary", "sklearn")]
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _served(example_models: dict[str, Path], role: str, runtime: Any) -> LoadedModel:
    loaded = load_artifact(example_models[role], runtime=runtime)
    assert loaded.predictor.runtime == ("onnx" if runtime == "auto" else "sklearn")
    return loaded


def _out_of_range(problems: list[dict[str, Any]]) -> list[list[Any]]:
    assert all(p["type"] == "out_of_range" for p in problems), problems
    return [p["loc"] for p in problems]


@pytest.mark.parametrize(("role", "runtime"), SERVED)
async def test_numbers_beyond_float32_are_422_naming_row_and_feature(
    example_models: dict[str, Path], test_rows: pd.DataFrame, role: str, runtime: str
) -> None:
    rows = _records(test_rows.iloc[:3])
    names = list(rows[0])
    async with await _client(_served(example_models, role, runtime)) as client:
        one = await client.post("/predict", json={**rows[0], "mean radius": 1e308})
        assert one.status_code == 422
        assert _out_of_range(one.json()["detail"]) == [[0, "mean radius"]]
        assert "out of range" in one.json()["detail"][0]["msg"]
        batch = [rows[0], {**rows[1], "worst area": -1e308}, rows[2]]
        response = await client.post("/predict", json=batch)
        assert _out_of_range(response.json()["detail"]) == [[1, "worst area"]]
        # Every feature at 1e308 (the sklearn runtime used to raise: a 500)
        every = await client.post("/predict", json=dict.fromkeys(names, 1e308))
        assert every.status_code == 422
        assert _out_of_range(every.json()["detail"]) == [[0, n] for n in names[:MAX_PROBLEMS]]

        tensor = [rows[0][n] for n in names] + [
            1e308 if n == "mean texture" else rows[1][n] for n in names
        ]
        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": [2, 30], "datatype": "FP64", "data": tensor}]},
        )
        assert infer.status_code == 422
        assert infer.json()["error"].startswith("1.mean texture: out of range")
        by_feature = [
            {
                "name": n,
                "shape": [2],
                "datatype": "FP64",
                "data": [rows[0][n], -1e308 if n == "worst radius" else rows[1][n]],
            }
            for n in names
        ]
        infer = await client.post(f"/v2/models/{MODEL}/infer", json={"inputs": by_feature})
        assert infer.status_code == 422
        assert infer.json()["error"].startswith("1.worst radius: out of range")
        samples = _metrics((await client.get("/metrics")).text)
        assert _value(samples, "canaryml_requests_total", code="422") == 5
        assert _value(samples, "canaryml_requests_total", code="500") == 0
        assert _value(samples, "canaryml_drift_window_rows") == 0  # nothing reached the model


@pytest.mark.parametrize(("role", "runtime"), SERVED)
async def test_float32_max_is_accepted_and_answered_like_sklearn(
    example_models: dict[str, Path], test_rows: pd.DataFrame, role: str, runtime: str
) -> None:
    sklearn_model = joblib.load(example_models["root"] / f"{role}.joblib")
    row = _records(test_rows.iloc[:1])[0]
    # float32's maximum exactly, as usually printed (it rounds to the same float32), negated
    edges = [FLOAT32_MAX, 3.4028235e38, -FLOAT32_MAX]
    rows = [{**row, "mean radius": edge} for edge in edges]
    expected = sklearn_model.predict(pd.DataFrame(rows).to_numpy()).tolist()
    async with await _client(_served(example_models, role, runtime)) as client:
        response = await client.post("/predict", json=rows)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == expected
        tensor = [value for r in rows for value in r.values()]
        infer = await client.post(
            f"/v2/models/{MODEL}/infer",
            json={"inputs": [{"name": "x", "shape": [3, 30], "datatype": "FP64", "data": tensor}]},
        )
        assert infer.status_code == 200, infer.text
        assert infer.json()["outputs"][0]["data"] == expected
        # The next number up that JSON can carry overflows float32: refused.
        beyond = 3.4028236e38
        with np.errstate(over="ignore"):
            assert np.isinf(np.float32(beyond))
        refused = await client.post("/predict", json={**row, "mean radius": beyond})
        assert refused.status_code == 422
        assert _out_of_range(refused.json()["detail"]) == [[0, "mean radius"]]
        # The API docs state the exact range that is enforced.
        openapi = (await client.get("/openapi.json")).json()
        body = openapi["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
        documented = body["schema"]["anyOf"][0]["properties"]["mean radius"]
        top = documented["maximum"]
        assert documented["minimum"] == -top and FLOAT32_MAX <= top < beyond
        at_top = await client.post("/predict", json={**row, "mean radius": top})
        assert at_top.status_code == 200
        over = await client.post("/predict", json={**row, "mean radius": np.nextafter(top, beyond)})
        assert over.status_code == 422


def _package_age_and_colour(tmp_path: Path) -> tuple[Any, Path]:
    """A model whose ONNX form takes `age` as an int64 tensor of its own."""
    ages = np.random.default_rng(1).integers(18, 90, 300)
    model, folder = package_number_and_colour(tmp_path, "age", ages, threshold=50, name="ages")
    assert load_artifact(folder).manifest.runtime.runtime == "onnx"
    return model, folder


async def test_an_int64_input_takes_int64_range(tmp_path: Path) -> None:
    model, folder = _package_age_and_colour(tmp_path)
    inside = [{"age": 9e18, "colour": "red"}, {"age": -9e18, "colour": "red"}]
    async with await _client(load_artifact(folder)) as client:
        response = await client.post("/predict", json=inside)
        assert response.status_code == 200, response.text
        assert response.json()["predictions"] == model.predict(pd.DataFrame(inside)).tolist()
        # 1e19 is within float32 but beyond int64: the cast would give garbage
        refused = await client.post("/predict", json=[{"age": 1e19, "colour": "red"}])
        assert refused.status_code == 422
        assert _out_of_range(refused.json()["detail"]) == [[0, "age"]]
    async with await _client(load_artifact(folder, runtime="sklearn")) as client:
        response = await client.post("/predict", json=[{"age": 1e19, "colour": "red"}])
        assert (
            response.json()["predictions"]
            == model.predict(pd.DataFrame([{"age": 1e19, "colour": "red"}])).tolist()
        )


async def test_an_estimator_raising_on_valid_numbers_is_a_500(tmp_path: Path) -> None:
    """In range, but outside what the estimator can take: the model's defect, not the input's."""
    from canaryml_server.artifact import package_model
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"dose": rng.uniform(1, 100, 200)})
    label = (frame["dose"] > 50).astype(int)
    model = make_pipeline(FunctionTransformer(np.log), LogisticRegression()).fit(frame, label)
    joblib.dump(model, tmp_path / "m.joblib")
    frame.assign(label=label).to_csv(tmp_path / "train.csv", index=False)
    package_model(
        model_path=tmp_path / "m.joblib", reference_path=tmp_path / "train.csv",
        out_dir=tmp_path / "a", name="doses", target="label", runtime="sklearn",
    )  # fmt: skip
    async with await _client(load_artifact(tmp_path / "a")) as client:
        assert (await client.post("/predict", json={"dose": 60.0})).status_code == 200
        with pytest.warns(RuntimeWarning, match="invalid value encountered in log"):
            response = await client.post("/predict", json={"dose": -1.0})
        assert response.status_code == 500
        assert response.json()["detail"][0]["msg"] == "the model failed on this input (ValueError)"
        samples = _metrics((await client.get("/metrics")).text)
        assert _value(samples, "canaryml_requests_total", code="500") == 1


async def test_calibrated_p_values_flag_a_shifted_feature_and_not_held_out_rows(
    canary: LoadedModel, test_rows: pd.DataFrame
) -> None:
    labels = {"model_deployment": "bc", "track": "canary", "version": "1.1.0"}

    def p_values(text: str) -> dict[str, float]:
        return {
            dict(ls)["feature"]: v
            for (n, ls), v in _metrics(text).items()
            if n == "canaryml_feature_drift_p_value" and set(labels.items()) <= set(ls)
        }

    async def send(client: httpx.AsyncClient, rows: pd.DataFrame) -> None:
        """In requests of SAMPLE_ROWS rows: every row binned."""
        for start in range(0, len(rows), SAMPLE_ROWS):
            await client.post("/predict", json=_records(rows.iloc[start : start + SAMPLE_ROWS]))

    async with await _client(canary, drift_min_rows=50) as client:
        await send(client, test_rows)  # held out: like the reference
        text = (await client.get("/metrics")).text
        held_out = p_values(text)
        assert len(held_out) == 30 and min(held_out.values()) > 0.01
        assert _value(_metrics(text), "canaryml_prediction_drift_p_value", **labels) > 0.01
    shifted = test_rows.copy()
    shifted["mean radius"] = shifted["mean radius"] * 1.5
    async with await _client(canary, drift_min_rows=50) as client:
        await send(client, shifted)
        drifted = p_values((await client.get("/metrics")).text)
        assert min(drifted, key=drifted.__getitem__) == "mean radius"
        assert drifted["mean radius"] < 1e-6
