"""`canaryml package` and `canaryml serve` as real processes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, serve_command

pytestmark = pytest.mark.integration

CONTRACT = {
    "canaryml_requests_total",
    "canaryml_request_duration_seconds",
    "canaryml_feature_drift",
    "canaryml_prediction_drift",
}


@pytest.mark.parametrize(("role", "runtime"), [("stable", "onnx"), ("canary", "sklearn")])
def test_served_predictions_match_sklearn(
    start_server: Callable[..., str],
    example_models: dict[str, Path],
    test_rows: pd.DataFrame,
    role: str,
    runtime: str,
) -> None:
    url = start_server(
        example_models[role],
        "--track", "canary", "--model-deployment", "bc",
        env={"CANARYML_RUNTIME": "sklearn" if runtime == "sklearn" else "auto",
             "CANARYML_DRIFT_MIN_ROWS": "10"},
    )  # fmt: skip
    model = joblib.load(example_models["root"] / f"{role}.joblib")
    features = test_rows.to_numpy()
    expected = model.predict(features).tolist()
    with httpx.Client(base_url=url, timeout=30) as client:
        metadata = client.get("/v2/models/breast-cancer").json()
        assert metadata["parameters"]["runtime"] == runtime
        body = client.post("/predict", json=test_rows.to_dict(orient="records")).json()
        assert body["predictions"] == expected
        np.testing.assert_allclose(body["probabilities"], model.predict_proba(features), atol=1e-5)
        single = [
            client.post("/predict", json=row).json()["predictions"][0]
            for row in test_rows.iloc[:20].to_dict(orient="records")
        ]
        assert single == expected[:20]
        infer = client.post(
            "/v2/models/breast-cancer/infer",
            json={"inputs": [{"name": "input-0", "shape": list(features.shape),
                              "datatype": "FP64", "data": features.ravel().tolist()}]},
        ).json()  # fmt: skip
        assert infer["outputs"][0]["data"] == expected
        assert client.post("/predict", json={"bad": 1}).status_code == 422
        families = {f.name: f for f in text_string_to_metric_families(client.get("/metrics").text)}
    # prometheus_client drops the _total suffix from counter family names.
    names = {f"{n}_total" if f.type == "counter" else n for n, f in families.items()}
    assert names >= CONTRACT
    requests = {
        s.labels["code"]: s.value
        for s in families["canaryml_requests"].samples
        if s.name == "canaryml_requests_total"
    }
    # The 500 series exists from the start, at 0, so that a first error shows in increase().
    assert requests == {"200": 22.0, "422": 1.0, "500": 0.0}
    for family in families.values():
        for sample in family.samples:
            if family.name.startswith("canaryml_") and family.name != "canaryml_model_info":
                assert sample.labels["model_deployment"] == "bc"
                assert sample.labels["track"] == "canary"
    versions = {s.labels["version"] for s in families["canaryml_feature_drift"].samples}
    assert versions == {"1.0.0" if role == "stable" else "1.1.0"}


def test_settings_from_environment(
    start_server: Callable[..., str], example_models: dict[str, Path]
) -> None:
    url = start_server(
        example_models["stable"],
        env={"CANARYML_TRACK": "shadow", "CANARYML_MODEL_DEPLOYMENT": "iris",
             "CANARYML_MODEL_NAME": "cancer", "CANARYML_MODEL_VERSION": "7"},
    )  # fmt: skip
    metadata = httpx.get(f"{url}/v2/models/cancer").json()
    assert metadata["versions"] == ["7"]
    assert metadata["parameters"]["track"] == "shadow"
    assert metadata["parameters"]["model_deployment"] == "iris"


def _run_serve(model: str | Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        serve_command(model, free_port(), *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_wrong_digest_exits_with_a_clear_message(example_models: dict[str, Path]) -> None:
    result = _run_serve(example_models["canary"], "--sha256", "ab" * 32)
    assert result.returncode == 2
    assert "refusing to load" in result.stderr
    assert "ab" * 32 in result.stderr


def test_bad_settings_and_missing_models_exit_cleanly(tmp_path: Path) -> None:
    missing = _run_serve(tmp_path / "nothing")
    assert missing.returncode == 2
    assert "no such model folder" in missing.stderr
    bad_track = _run_serve(tmp_path, "--track", "blue")
    assert bad_track.returncode == 2
    assert "track" in bad_track.stderr
    assert "Traceback" not in bad_track.stderr + missing.stderr


def test_package_command(example_models: dict[str, Path], tmp_path: Path) -> None:
    root = example_models["root"]
    command = [
        sys.executable, "-m", "canaryml_cli", "package", str(root / "canary.joblib"),
        "--reference", str(root / "train.csv"), "--target", "target",
        "--out", str(tmp_path / "pkg"), "--name", "bc", "--version", "2.0.0",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    digest = done.stdout.strip()
    assert len(digest) == 64
    assert "runtime" in done.stderr and "onnx" in done.stderr
    again = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert again.returncode == 2
    assert "not empty (pass --force" in again.stderr
    no_target = subprocess.run(
        [*command[:7], "--out", str(tmp_path / "other")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert no_target.returncode == 2
    assert "--target" in no_target.stderr


def test_serves_a_gs_model_from_an_offline_gcs(
    start_server: Callable[..., str], example_models: dict[str, Path], test_rows: pd.DataFrame
) -> None:
    """gs:// through `canaryml serve`: gcp-storage-emulator on loopback, reached the way a user
    reaches one (STORAGE_EMULATOR_HOST, anonymous, gcsfs's JSON API; docs/serving.md)."""
    emulator = pytest.importorskip("gcp_storage_emulator.server")
    pytest.importorskip("gcsfs")
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = emulator.create_server("127.0.0.1", port, in_memory=True, default_bucket="models")
    server.start()
    env = {
        "STORAGE_EMULATOR_HOST": endpoint,
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "NO_GCE_CHECK": "true",
    }
    try:
        for file in sorted(example_models["canary"].iterdir()):
            httpx.post(
                f"{endpoint}/upload/storage/v1/b/models/o",
                params={"uploadType": "media", "name": f"bc/1.1.0/{file.name}"},
                content=file.read_bytes(),
                timeout=10,
            ).raise_for_status()
        digest = hashlib.sha256((example_models["canary"] / "manifest.json").read_bytes())
        url = start_server("gs://models/bc/1.1.0", "--sha256", digest.hexdigest(), env=env)
        missing = subprocess.run(
            serve_command("gs://models/bc/9", free_port(), "--sha256", digest.hexdigest()),
            env={**os.environ, **env}, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    finally:
        server.stop()
    model = joblib.load(example_models["root"] / "canary.joblib")
    body = httpx.post(f"{url}/predict", json=test_rows.to_dict(orient="records"), timeout=30)
    assert body.json()["predictions"] == model.predict(test_rows.to_numpy()).tolist()
    assert body.json()["version"] == "1.1.0"
    assert missing.returncode == 2
    assert "cannot fetch gs://models/bc/9/manifest.json" in missing.stderr
    assert "Traceback" not in missing.stderr
