from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from canaryml_cli.demo.example_models import TRAIN_ROWS
from canaryml_server.artifact import (
    MANIFEST_FILE,
    MODEL_FILE,
    ArtifactError,
    batch_from_frame,
    load_artifact,
    package_model,
    sha256_file,
)
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_diabetes
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler


class PickleBomb:
    """Unpickling it creates `marker`: proof that a file was (or was not) unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def _copy(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / "artifact"
    shutil.copytree(folder, target)
    return target


def _plant_bomb(folder: Path, marker: Path, *, update_manifest: bool) -> None:
    joblib.dump(PickleBomb(marker), folder / MODEL_FILE)
    if update_manifest:
        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        manifest["files"][MODEL_FILE] = sha256_file(folder / MODEL_FILE)
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))


def test_package_writes_a_verifiable_artifact(example_models: dict[str, Path]) -> None:
    folder = example_models["canary"]
    manifest = json.loads((folder / MANIFEST_FILE).read_text())
    assert manifest["name"] == "breast-cancer"
    assert manifest["version"] == "1.1.0"
    assert manifest["task"] == "classification"
    assert manifest["classes"] == [0, 1]
    assert manifest["target"] == "target"
    assert set(manifest["files"]) == {"model.joblib", "model.onnx", "schema.json", "profile.json"}
    for name, digest in manifest["files"].items():
        assert sha256_file(folder / name) == digest
    assert {"scikit-learn", "numpy", "onnxruntime", "python"} <= set(manifest["libraries"])
    schema = json.loads((folder / "schema.json").read_text())
    assert len(schema["features"]) == 30
    assert "target" not in [f["name"] for f in schema["features"]]
    profile = json.loads((folder / "profile.json").read_text())
    radius = profile["features"]["mean radius"]
    assert radius["kind"] == "numeric"
    assert len(radius["edges"]) == 9  # deciles
    assert sum(radius["proportions"]) == pytest.approx(1.0)
    assert profile["prediction"]["categories"] == [0, 1]


@pytest.mark.parametrize("role", ["stable", "canary"])
def test_onnx_form_is_kept_only_with_evidence(example_models: dict[str, Path], role: str) -> None:
    runtime = json.loads((example_models[role] / MANIFEST_FILE).read_text())["runtime"]
    assert runtime["runtime"] == "onnx"
    assert runtime["labels_identical"] is True
    assert runtime["max_abs_difference"] <= 1e-5
    assert runtime["rows_compared"] == TRAIN_ROWS


def test_loaded_model_predicts_like_sklearn(
    example_models: dict[str, Path], test_rows: pd.DataFrame
) -> None:
    sklearn_model = joblib.load(example_models["root"] / "canary.joblib")
    loaded = load_artifact(example_models["canary"])
    assert loaded.predictor.runtime == "onnx"
    batch = batch_from_frame(loaded.schema, test_rows)
    prediction = loaded.predictor.predict(batch, probabilities=True)
    features = test_rows.to_numpy()
    assert np.array_equal(prediction.labels, sklearn_model.predict(features))
    assert prediction.probabilities is not None
    np.testing.assert_allclose(
        prediction.probabilities, sklearn_model.predict_proba(features), atol=1e-5
    )
    forced = load_artifact(example_models["canary"], runtime="sklearn")
    assert forced.predictor.runtime == "sklearn"
    assert np.array_equal(
        forced.predictor.predict(batch, probabilities=False).labels, prediction.labels
    )


def test_digest_mismatch_refuses_before_unpickling(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(example_models["stable"], tmp_path)
    marker = tmp_path / "unpickled"
    _plant_bomb(folder, marker, update_manifest=True)
    with pytest.raises(ArtifactError, match=r"refusing to load .* digest .* expected"):
        load_artifact(folder, expected_sha256="0" * 64, runtime="sklearn")
    assert not marker.exists()


def test_tampered_file_is_refused_before_unpickling(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(example_models["stable"], tmp_path)
    marker = tmp_path / "unpickled"
    _plant_bomb(folder, marker, update_manifest=False)
    with pytest.raises(ArtifactError, match=r"model\.joblib has sha256 .* the manifest says"):
        load_artifact(folder, runtime="sklearn")
    assert not marker.exists()


def test_onnx_artifact_loads_without_unpickling(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    folder = _copy(example_models["stable"], tmp_path)
    marker = tmp_path / "unpickled"
    _plant_bomb(folder, marker, update_manifest=True)
    loaded = load_artifact(folder)
    assert loaded.predictor.runtime == "onnx"
    assert not marker.exists()
    # Forcing scikit-learn does unpickle, which is why digests and trusted sources matter.
    load_artifact(folder, runtime="sklearn")
    assert marker.exists()


def test_require_sha256_refuses_unpickling_without_a_digest(
    example_models: dict[str, Path],
) -> None:
    folder = example_models["stable"]
    with pytest.raises(ArtifactError, match="without a configured sha256"):
        load_artifact(folder, runtime="sklearn", require_sha256=True)
    digest = sha256_file(folder / MANIFEST_FILE)
    loaded = load_artifact(folder, runtime="sklearn", require_sha256=True, expected_sha256=digest)
    assert loaded.digest == digest


def test_not_an_artifact(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not a canaryml artifact"):
        load_artifact(tmp_path)


def _fit_and_save(model: Any, frame: pd.DataFrame, target: pd.Series, tmp_path: Path) -> Path:
    model.fit(frame, target)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    frame.assign(label=target).to_csv(tmp_path / "train.csv", index=False)
    return path


def test_unconvertible_model_falls_back_to_sklearn(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True)
    frame = data.data.abs()
    target = (data.target > data.target.median()).astype(int)
    model = make_pipeline(FunctionTransformer(np.log1p), LogisticRegression(max_iter=500))
    path = _fit_and_save(model, frame, target, tmp_path)
    result = package_model(
        model_path=path, reference_path=tmp_path / "train.csv", out_dir=tmp_path / "out",
        target="label",
    )  # fmt: skip
    assert result.manifest.runtime.runtime == "sklearn"
    assert "ONNX form refused" in result.manifest.runtime.reason
    loaded = load_artifact(result.path)
    batch = batch_from_frame(loaded.schema, frame)
    labels = loaded.predictor.predict(batch, probabilities=False).labels
    assert np.array_equal(labels, model.predict(frame))
    with pytest.raises(ArtifactError, match="--runtime onnx, but the ONNX form was refused"):
        package_model(
            model_path=path, reference_path=tmp_path / "train.csv", out_dir=tmp_path / "o2",
            target="label", runtime="onnx",
        )  # fmt: skip


def test_mixed_numeric_and_categorical_pipeline(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    frame = pd.DataFrame(
        {
            "age": rng.integers(18, 90, 400),
            "income": rng.lognormal(10, 1, 400),
            "city": rng.choice(["paris", "lyon", "nice"], 400),
        }
    )
    target = ((frame["age"] > 50) ^ (frame["city"] == "nice")).astype(int)
    model = make_pipeline(
        ColumnTransformer(
            [
                ("cat", OneHotEncoder(handle_unknown="ignore"), ["city"]),
                ("num", StandardScaler(), ["age", "income"]),
            ]
        ),
        LogisticRegression(max_iter=500),
    )
    path = _fit_and_save(model, frame, target, tmp_path)
    result = package_model(
        model_path=path, reference_path=tmp_path / "train.csv", out_dir=tmp_path / "out",
        target="label",
    )  # fmt: skip
    kinds = {f.name: (f.kind.value, f.dtype) for f in result.schema.features}
    assert kinds == {
        "age": ("numeric", "int"),
        "income": ("numeric", "float"),
        "city": ("categorical", "string"),
    }
    loaded = load_artifact(result.path)
    batch = batch_from_frame(loaded.schema, frame)
    prediction = loaded.predictor.predict(batch, probabilities=True)
    assert np.array_equal(prediction.labels, model.predict(frame))
    assert prediction.probabilities is not None
    np.testing.assert_allclose(prediction.probabilities, model.predict_proba(frame), atol=1e-5)


def test_regressor(tmp_path: Path) -> None:
    data = load_diabetes(as_frame=True)
    model = Ridge()
    path = _fit_and_save(model, data.data, data.target, tmp_path)
    result = package_model(
        model_path=path, reference_path=tmp_path / "train.csv", out_dir=tmp_path / "out",
        target="label",
    )  # fmt: skip
    assert result.manifest.task == "regression"
    assert result.manifest.classes is None
    loaded = load_artifact(result.path)
    labels = loaded.predictor.predict(
        batch_from_frame(loaded.schema, data.data), probabilities=True
    ).labels
    np.testing.assert_allclose(labels, model.predict(data.data), rtol=1e-4)


def test_feature_count_mismatch_hints_at_target(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    root = example_models["root"]
    with pytest.raises(ArtifactError, match=r"expects 30 features.*31 columns.*--target"):
        package_model(
            model_path=root / "stable.joblib", reference_path=root / "train.csv",
            out_dir=tmp_path / "out",
        )  # fmt: skip


def test_refuses_to_overwrite_without_force(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    root = example_models["root"]
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not empty"):
        package_model(
            model_path=root / "stable.joblib", reference_path=root / "train.csv",
            out_dir=tmp_path / "out", target="target",
        )  # fmt: skip
    assert (tmp_path / "out" / "keep.txt").read_text() == "mine"


def test_model_that_cannot_predict_on_reference(tmp_path: Path) -> None:
    frame = pd.DataFrame({"a": [1.0, 2.0, 3.0], "b": [0.5, 0.1, 0.2], "label": [0, 1, 0]})
    frame.to_csv(tmp_path / "train.csv", index=False)
    model = LogisticRegression().fit(frame[["a", "b"]].to_numpy(), frame["label"])
    joblib.dump(model, tmp_path / "m.joblib")
    other = pd.DataFrame({"a": ["x", "y", "z"], "b": [1.0, 2.0, 3.0]})
    other.to_csv(tmp_path / "other.csv", index=False)
    with pytest.raises(ArtifactError, match="failed to predict on the reference rows"):
        package_model(
            model_path=tmp_path / "m.joblib", reference_path=tmp_path / "other.csv",
            out_dir=tmp_path / "out",
        )  # fmt: skip
