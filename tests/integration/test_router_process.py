"""`canaryml router` as a real process in front of real `canaryml serve` processes."""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import free_port, router_command, serve_command, stop, wait_ready

pytestmark = pytest.mark.integration

DEPLOYMENT = "bc"


@pytest.fixture
def start_router() -> Iterator[Callable[..., str]]:
    """start_router(*cli_args, env={...}) -> base URL of a ready router."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(*args: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        process = subprocess.Popen(
            router_command(port, *args),
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, path="/router/readyz", what="router")
        return url

    yield start
    for process in processes:
        stop(process)


def samples(url: str) -> list[tuple[str, dict[str, str], float]]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return [
        (sample.name, sample.labels, sample.value)
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    ]


def total(url: str, name: str, **labels: str) -> float:
    return sum(
        value for n, have, value in samples(url) if n == name and labels.items() <= have.items()
    )


def eventually(probe: Callable[[], Any], until: Callable[[Any], bool], *, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if until(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s; last value {value!r}")
        time.sleep(0.05)


@pytest.fixture
def tracks(example_models: dict[str, Path]) -> Iterator[dict[str, subprocess.Popen[bytes]]]:
    """stable (the pipeline), canary (the forest) and a shadow (the forest) serving `bc`, as
    {track: process}: the test stops one of them (`url_of` gives a process' base URL)."""
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for track, role in (("stable", "stable"), ("canary", "canary"), ("shadow", "canary")):
            port = free_port()
            processes[track] = subprocess.Popen(
                serve_command(
                    example_models[role], port, "--track", track,
                    "--model-deployment", DEPLOYMENT,
                ),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        for process in processes.values():
            wait_ready(process, url_of(process))
        yield processes
    finally:
        for process in processes.values():
            stop(process)


def url_of(process: subprocess.Popen[bytes]) -> str:
    """The base URL of a `canaryml serve` process started by serve_command."""
    args = list(process.args)  # type: ignore[arg-type]
    return f"http://127.0.0.1:{args[args.index('--port') + 1]}"


def test_split_shadow_comparisons_and_failures(
    start_router: Callable[..., str],
    tracks: dict[str, subprocess.Popen[bytes]],
    test_rows: pd.DataFrame,
) -> None:
    urls = {track: url_of(process) for track, process in tracks.items()}
    admin_port = free_port()
    admin = httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=30)
    router = start_router(
        "--model-deployment", DEPLOYMENT, "--admin", "--admin-port", str(admin_port),
        "--canary-weight", "30", "--shadow-percent", "100",
        # Every mirror compared even when the shadow falls behind on a loaded machine: this is
        # about comparisons; the cap on mirrors in flight has its own tests (test_router_parts).
        "--max-mirrors", "1000",
        *(f"--upstream={track}={url}" for track, url in urls.items()),
    )  # fmt: skip
    rows: list[dict[str, Any]] = test_rows.to_dict(orient="records")  # type: ignore[assignment]
    n = 600
    seen: dict[str, int] = {"stable": 0, "canary": 0}
    with httpx.Client(base_url=router, timeout=30) as client:
        for i in range(n):
            response = client.post("/predict", json=rows[i % len(rows)])
            assert response.status_code == 200
            body = response.json()
            track = response.headers["x-canaryml-track"]
            assert body["track"] == track  # the answer is the live track's, never the shadow's
            assert body["version"] == {"stable": "1.0.0", "canary": "1.1.0"}[track]
            seen[track] += 1
        sd = math.sqrt(n * 0.3 * 0.7)
        assert abs(seen["canary"] - n * 0.3) <= 5 * sd, seen

        # Every mirror is compared; the forest and the pipeline disagree on some rows' classes
        # or probabilities, and agree on others.
        def compared() -> float:
            return total(router, "canaryml_shadow_comparisons_total")

        eventually(compared, lambda c: c == n, within=30)
        by_result = {
            result: total(router, "canaryml_shadow_comparisons_total", result=result)
            for result in ("agree", "disagree", "error", "skipped")
        }
        assert by_result["error"] == by_result["skipped"] == 0, by_result
        assert by_result["agree"] > 0 and by_result["disagree"] > 0, by_result
        # The canary's mirrors run the same model as the shadow: they all agree.
        assert total(
            router, "canaryml_shadow_comparisons_total", track="canary", result="agree"
        ) == seen["canary"]  # fmt: skip

        # The router's series, labelled with the version the servers reported.
        for track, version in (("stable", "1.0.0"), ("canary", "1.1.0"), ("shadow", "1.1.0")):
            count = total(
                router, "canaryml_requests_total",
                model_deployment=DEPLOYMENT, track=track, version=version, code="200",
                source="router",
            )  # fmt: skip
            assert count == (seen[track] if track != "shadow" else n), track
        # The servers count the same requests as source="server": no double counting.
        assert total(urls["shadow"], "canaryml_requests_total", source="server") == n
        assert total(urls["shadow"], "canaryml_requests_total", source="router") == 0

        # Open Inference Protocol v2 through the router, compared as well.
        features = test_rows.iloc[:5].to_numpy()
        infer = client.post(
            "/v2/models/breast-cancer/infer",
            json={"inputs": [{"name": "input-0", "shape": list(features.shape),
                              "datatype": "FP64", "data": features.ravel().tolist()}],
                  "outputs": [{"name": "predict"}, {"name": "predict_proba"}]},
        )  # fmt: skip
        assert infer.status_code == 200
        assert [o["name"] for o in infer.json()["outputs"]] == ["predict", "predict_proba"]
        eventually(compared, lambda c: c == n + 1, within=30)
        assert total(router, "canaryml_shadow_comparisons_total", result="error") == 0

        # Bad input is the model server's 422, passed through, not mirrored.
        assert client.post("/predict", json={"bad": 1}).status_code == 422

        # An upstream that is down: 502 naming the track, counted against it.
        stop(tracks["canary"])
        moved = admin.put("/router/weights", json={"canaryWeight": 100, "shadowPercent": 0})
        assert moved.status_code == 200 and moved.json()["canaryWeight"] == 100
        down = client.post("/predict", json=rows[0])
        assert down.status_code == 502
        assert "canary" in down.json()["error"]
        assert total(router, "canaryml_requests_total", track="canary", code="502") == 1
        # ... and weight 0 sends everything back to the stable track.
        assert admin.put("/router/weights", json={"canaryWeight": 0}).status_code == 200
        assert client.post("/predict", json=rows[0]).headers["x-canaryml-track"] == "stable"
        assert total(router, "canaryml_router_canary_weight") == 0


def test_bad_admin_input_and_environment_settings(
    start_router: Callable[..., str],
    start_server: Callable[..., str],
    example_models: dict[str, Path],
) -> None:
    stable = start_server(example_models["stable"])
    router = start_router(
        env={
            "CANARYML_MODEL_DEPLOYMENT": "iris",
            "CANARYML_ROUTER_UPSTREAMS": f"stable={stable}",
            "CANARYML_ROUTER_ADMIN": "true",
            "CANARYML_ROUTER_ADMIN_PORT": str(admin_port := free_port()),
            "CANARYML_ROUTER_STICKY_HEADER": "x-user-id",
        }
    )
    with (
        httpx.Client(base_url=router, timeout=30) as traffic,
        httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=30) as client,
    ):
        assert traffic.get("/router/weights").status_code == 404  # the admin listener's only
        weights = client.get("/router/weights").json()
        assert weights["modelDeployment"] == "iris"
        assert weights["stickyHeader"] == "x-user-id"
        for body in ({"canaryWeight": 150}, {"canaryWeight": "ten"}, {"nope": 1}, []):
            response = client.put("/router/weights", json=body)
            assert response.status_code == 422, body
            assert response.json()["error"].startswith("invalid weights"), response.json()
        no_canary = client.put("/router/weights", json={"canaryWeight": 10})
        assert no_canary.status_code == 422 and "canary upstream" in no_canary.json()["error"]
        assert client.get("/router/weights").json()["canaryWeight"] == 0
        assert traffic.get("/v2/health/ready").json() == {"ready": True}  # proxied
        # A health check through the router is no prediction: not counted under a track.
        metrics = traffic.get("/metrics").text
        assert "canaryml_requests_total" in metrics and 'source="router"' not in metrics


def _run_router(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        router_command(free_port(), *args),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={k: v for k, v in os.environ.items() if not k.startswith("CANARYML_")},
    )


def test_help_and_bad_settings_exit_cleanly() -> None:
    shown = _run_router("--help")
    assert shown.returncode == 0 and "--follow" in shown.stdout and "--admin" in shown.stdout
    no_name = _run_router("--upstream", "stable=http://127.0.0.1:1")
    assert no_name.returncode == 2 and "--model-deployment NAME" in no_name.stderr
    both = _run_router("--model-deployment", "x", "--follow", "--admin")
    assert both.returncode == 2 and "--admin" in both.stderr
    no_stable = _run_router("--model-deployment", "x", "--upstream", "canary=http://h")
    assert no_stable.returncode == 2 and "--upstream stable=URL" in no_stable.stderr
    assert "Traceback" not in no_name.stderr + both.stderr + no_stable.stderr
