"""The Open Inference Protocol clients users already have, against a real `canaryml serve` and
through a real `canaryml router` (with a shadow mirroring every request): KServe's Python
client (kserve 0.21, `InferenceRESTClient`) in binary (its default) and in JSON, binary answers
asked per output and per request, and MLServer's NumpyCodec and PandasCodec (mlserver 1.7.1);
single rows, 64-row batches and every datatype the server reads.

Each client runs in its own virtual environment (scripts/oip-clients.sh makes them; neither
installs beside canaryml's pins), driven by oip_clients/client.py; the answers it decodes are
compared here with scikit-learn's own predictions. About 15 s on 2 CPUs.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.mixed_models import package_number_and_colour
from tests.tools import unavailable

from .conftest import free_port, router_command, stop, wait_ready

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).parent / "oip_clients" / "client.py"
MODEL = "breast-cancer"
INTEGER_TYPES = ("INT64", "INT32", "INT16", "INT8", "UINT64", "UINT32", "UINT16", "UINT8")
NUMERIC_TYPES = ("FP64", "FP32", "FP16", *INTEGER_TYPES)


def client_python(which: str) -> Path:
    """The interpreter of a client's environment (scripts/test.sh makes them)."""
    folder = Path(os.environ.get("CANARYML_OIP_CLIENTS", ROOT / "build" / "oip-clients"))
    python = folder / which / "bin" / "python"
    if not python.exists():
        unavailable(f"no {which} client environment in {folder} (bash scripts/oip-clients.sh)")
    return python


def run_client(which: str, cases: list[dict[str, Any]], tmp: Path) -> dict[str, Any]:
    """The client's answers to `cases` (each with its `url`), by case name: one process."""
    path = tmp / f"{which}-cases.json"
    path.write_text(json.dumps(cases))
    done = subprocess.run(
        [str(client_python(which)), str(CLIENT), which, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    results: dict[str, Any] = json.loads(done.stdout)
    return results


def typed_rows(rows: np.ndarray, datatype: str) -> np.ndarray:
    """The rows as a client would cast them to `datatype` (integers rounded, 8-bit clipped)."""
    if datatype in INTEGER_TYPES:
        rows = np.abs(np.round(rows))
        if datatype.endswith("INT8"):
            rows = np.clip(rows, 0, 127)
    dtype = {"FP64": "f8", "FP32": "f4", "FP16": "f2"}.get(datatype) or datatype.lower()
    return rows.astype(dtype)


@pytest.fixture(scope="module")
def shapes_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path]:
    """A pipeline over a numeric `size` and a categorical `colour`, packaged as `shapes`."""
    rng = np.random.default_rng(1)
    sizes = rng.normal(0, 1, 300)
    tmp = tmp_path_factory.mktemp("shapes")
    return package_number_and_colour(tmp, "size", sizes, threshold=0, name="shapes", rng=rng)


@pytest.fixture
def start_router() -> Iterator[Callable[..., str]]:
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str) -> str:
        port = free_port()
        process = subprocess.Popen(
            router_command(port, *args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, path="/router/readyz", what="router")
        return url

    yield start
    for process in processes:
        stop(process)


def _bc_cases(rows: np.ndarray) -> list[dict[str, Any]]:
    """KServe's client on the breast-cancer model: binary (default) and JSON, each datatype."""
    one, batch = rows[:1].tolist(), rows[:64].tolist()
    cases: list[dict[str, Any]] = [
        {"name": "one-binary", "rows": one, "binary": True, "id": "one-b"},
        {"name": "batch-binary", "rows": batch, "binary": True, "id": "batch-b"},
        {"name": "one-json", "rows": one, "binary": False, "id": "one-j"},
        {"name": "batch-json", "rows": batch, "binary": False, "id": "batch-j"},
        {"name": "binary-outputs", "rows": batch, "binary": True,
         "outputs": ["predict", "predict_proba"], "binary_outputs": True},
        {"name": "binary-all", "rows": batch, "binary": False, "binary_all": True},
        {"name": "bool-binary", "rows": (rows[:2] > 1).tolist(), "binary": True,
         "datatypes": {"*": "BOOL"}},
    ]  # fmt: skip
    for datatype in NUMERIC_TYPES:
        typed = typed_rows(rows[:8], datatype).tolist()
        cases.append(
            {"name": f"{datatype}-binary", "rows": typed, "binary": True,
             "datatypes": {"*": datatype}}
        )  # fmt: skip
        if datatype != "FP16":  # KServe's client refuses FP16 in JSON (its own rule)
            cases.append(
                {"name": f"{datatype}-json", "rows": typed, "binary": False,
                 "datatypes": {"*": datatype}}
            )  # fmt: skip
    for case in cases:
        case.setdefault("datatypes", {})
        case["model"] = MODEL
    return cases


def _shapes_rows() -> dict[str, list[Any]]:
    return {"size": [1.5, -1.0, 2.0, 0.3], "colour": ["red", "blue", "red", "red"]}


def _check_bc(results: dict[str, Any], cases: list[dict[str, Any]], model: Any) -> None:
    for case in cases:
        name, answer = case["name"], results[case["name"]]
        if name == "bool-binary":
            # BOOL is read, and refused for numeric features as it is in JSON: a 422 naming it.
            assert "422" in answer["error"] and "got bool" in answer["error"], answer
            continue
        assert "error" not in answer, (name, answer)
        datatype = case["datatypes"].get("*", "FP64")
        sent = typed_rows(np.asarray(case["rows"], dtype=float), datatype).astype(float)
        if datatype == "FP64":
            sent = np.asarray(case["rows"])
        outputs = answer["outputs"]
        assert np.ravel(outputs["predict"]).tolist() == model.predict(sent).tolist(), name
        if "id" in case:
            assert answer["id"] == case["id"]  # echoed, as the protocol says
        if name == "binary-outputs":
            assert answer["binary_answer"] is True
            np.testing.assert_allclose(
                np.reshape(outputs["predict_proba"], (64, 2)), model.predict_proba(sent), atol=1e-5
            )
        else:
            assert answer["binary_answer"] is (name == "binary-all"), name


def _mlserver_cases(rows: np.ndarray, frame: pd.DataFrame) -> list[dict[str, Any]]:
    cases: list[dict[str, Any]] = [
        {"name": "numpy-one", "codec": "numpy", "rows": rows[:1].tolist(), "id": "np-1"},
        {"name": "numpy-batch", "codec": "numpy", "rows": rows[:64].tolist(),
         "outputs": ["predict", "predict_proba"]},
        {"name": "pandas-one", "codec": "pandas",
         "rows": frame.iloc[:1].to_dict(orient="list"), "id": "pd-1"},
        {"name": "pandas-batch", "codec": "pandas", "rows": frame.iloc[:64].to_dict(orient="list")},
    ]  # fmt: skip
    for datatype in NUMERIC_TYPES:
        cases.append(
            {"name": f"numpy-{datatype}", "codec": "numpy",
             "rows": typed_rows(rows[:8], datatype).tolist(), "datatypes": {"*": datatype}}
        )  # fmt: skip
    for case in cases:
        case.setdefault("datatypes", {})
        case["model"] = MODEL
    for use_bytes in (True, False):
        cases.append(
            {"name": f"pandas-categories-{use_bytes}", "codec": "pandas", "model": "shapes",
             "rows": _shapes_rows(), "use_bytes": use_bytes, "datatypes": {}}
        )  # fmt: skip
    return cases


def test_kserve_and_mlserver_clients(
    start_server: Callable[..., str],
    start_router: Callable[..., str],
    example_models: dict[str, Path],
    shapes_model: tuple[Any, Path],
    test_rows: pd.DataFrame,
    tmp_path: Path,
) -> None:
    bc = joblib.load(example_models["root"] / "canary.joblib")
    shapes, shapes_folder = shapes_model
    bc_url = start_server(example_models["canary"], "--model-deployment", "bc")
    shadow_url = start_server(example_models["canary"], "--track", "shadow")
    shapes_url = start_server(shapes_folder, "--model-deployment", "shapes")
    bc_router = start_router(
        "--model-deployment", "bc", "--shadow-percent", "100", "--max-mirrors", "1000",
        f"--upstream=stable={bc_url}", f"--upstream=shadow={shadow_url}",
    )  # fmt: skip
    shapes_router = start_router("--model-deployment", "shapes", f"--upstream=stable={shapes_url}")
    rows = test_rows.to_numpy()
    kserve_bc = _bc_cases(rows)
    kserve_shapes: list[dict[str, Any]] = [
        {"name": f"columns-{mode}", "model": "shapes", "rows": _shapes_rows(),
         "binary": mode == "binary", "datatypes": {"size": "FP64", "colour": "BYTES"},
         "id": f"shapes-{mode}"}
        for mode in ("binary", "json")
    ]  # fmt: skip
    mlserver = _mlserver_cases(rows, test_rows)
    expected_shapes = shapes.predict(pd.DataFrame(_shapes_rows())).tolist()
    targets = {"serve": (bc_url, shapes_url), "router": (bc_router, shapes_router)}

    def at_each_target(cases: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [
            {**case, "name": f"{target}/{case['name']}",
             "url": urls[0] if case["model"] == MODEL else urls[1]}
            for target, urls in targets.items()
            for case in cases
        ]  # fmt: skip

    kserve_answers = run_client("kserve", at_each_target(kserve_bc + kserve_shapes), tmp_path)
    mlserver_answers = run_client("mlserver", at_each_target(mlserver), tmp_path)
    for target in targets:
        mine = {name.split("/", 1)[1]: a for name, a in kserve_answers.items()
                if name.startswith(f"{target}/")}  # fmt: skip
        _check_bc(mine, kserve_bc, bc)
        for case in kserve_shapes:
            answer = mine[case["name"]]
            assert answer.get("outputs", {}).get("predict") == expected_shapes, answer
            assert answer["id"] == case["id"]
        for case in mlserver:
            answer = mlserver_answers[f"{target}/{case['name']}"]
            assert "error" not in answer, (target, case["name"], answer)
            predicted = np.ravel(answer["outputs"]["predict"]).tolist()
            if case["model"] == "shapes":
                assert predicted == expected_shapes, case["name"]
                continue
            sent = pd.DataFrame(case["rows"]).to_numpy(dtype=float)
            assert predicted == bc.predict(sent).tolist(), case["name"]
            if "id" in case:
                assert answer["id"] == case["id"]
    # The bc router mirrored every request it answered with a 2xx to the shadow (the same
    # model), binary requests and binary answers included: each comparison agrees.
    answered = sum(
        "error" not in a
        for name, a in (kserve_answers | mlserver_answers).items()
        if name.startswith("router/") and "categories" not in name and "columns" not in name
    )
    assert answered == len(kserve_bc) - 1 + len(mlserver) - 2  # all but BOOL and shapes'

    def comparisons() -> dict[str, float]:
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(
            httpx.get(f"{bc_router}/metrics", timeout=10).text
        ):
            for sample in family.samples:
                if sample.name == "canaryml_shadow_comparisons_total":
                    result = sample.labels["result"]
                    found[result] = found.get(result, 0) + sample.value
        return found

    deadline = time.monotonic() + 30
    while sum(comparisons().values()) < answered and time.monotonic() < deadline:
        time.sleep(0.1)
    assert {result: n for result, n in comparisons().items() if n} == {"agree": answered}
