"""A real MLflow tracking server: canaryml artifacts logged to runs, registered as two versions
of a model with an alias, and loaded by `canaryml serve` (a real process) through `models:/`
and `runs:/` URIs; a registry that is down, and a version it does not have, stop the server
with a message that says so. Then spec.registry: the operator's write-back (alias, stage, tag)
against the same server, directly and under kopf against the API emulator, and a canary whose
version the registry does not have refused with the stable track untouched. About 60 s, a
third of it the server's start (once per module)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import joblib
import pandas as pd
import pytest
from canaryml_api import resource as api
from canaryml_cli.main import app
from canaryml_operator import writeback
from canaryml_operator.registry import write_back
from canaryml_testing.cluster import Cluster, eventually, running_emulator, running_operator
from typer.testing import CliRunner

from tests.tools import unavailable

from .conftest import free_port, serve_command
from .mlflow_server import MlflowServer, mlflow_binary

pytestmark = pytest.mark.integration

MODEL = "breast-cancer"
# MLflow's client retries a refused connection for minutes by default; a test wants the answer.
FAIL_FAST = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


@dataclass(frozen=True)
class Registry:
    server: MlflowServer
    runs: dict[str, str]  # role -> run id
    digests: dict[str, str]  # role -> sha256 of the artifact's manifest.json

    def env(self) -> dict[str, str]:
        return {"MLFLOW_TRACKING_URI": self.server.url, **FAIL_FAST}


def _digest(folder: Path) -> str:
    return hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def registry(
    tmp_path_factory: pytest.TempPathFactory, example_models: dict[str, Path]
) -> Iterator[Registry]:
    """stable -> version 1, canary -> version 2 of MODEL, the alias `champion` on version 2."""
    binary = mlflow_binary()
    if binary is None:
        unavailable("mlflow is not installed (the dev extra installs it)")
    assert binary is not None
    pytest.importorskip("mlflow")
    import mlflow
    from mlflow import MlflowClient

    with MlflowServer(tmp_path_factory.mktemp("mlflow"), binary=binary) as server:
        server.start()
        mlflow.set_tracking_uri(server.url)
        client = MlflowClient(tracking_uri=server.url, registry_uri=server.url)
        client.create_registered_model(MODEL)
        runs: dict[str, str] = {}
        for role in ("stable", "canary"):
            with mlflow.start_run() as run:
                mlflow.log_artifacts(str(example_models[role]), artifact_path="model")
            runs[role] = run.info.run_id
            client.create_model_version(
                MODEL, source=f"runs:/{run.info.run_id}/model", run_id=run.info.run_id
            )
        client.set_registered_model_alias(MODEL, "champion", "2")
        yield Registry(
            server=server,
            runs=runs,
            digests={role: _digest(example_models[role]) for role in runs},
        )


def _served_digest(url: str) -> str:
    metadata = httpx.get(f"{url}/v2/models/{MODEL}", timeout=10).json()
    digest: str = metadata["parameters"]["sha256"]
    return digest


@pytest.mark.parametrize(
    ("uri", "role"),
    [
        (f"models:/{MODEL}/1", "stable"),
        (f"models:/{MODEL}@champion", "canary"),
        ("runs:/{stable}/model", "stable"),
    ],
)
def test_canaryml_serve_loads_from_the_registry(
    registry: Registry,
    start_server: Callable[..., str],
    tmp_path: Path,
    example_models: dict[str, Path],
    test_rows: pd.DataFrame,
    uri: str,
    role: str,
) -> None:
    uri = uri.format(**registry.runs)
    url = start_server(
        uri,
        "--sha256", registry.digests[role],
        env={**registry.env(), "CANARYML_MODEL_CACHE_DIR": str(tmp_path)},
    )  # fmt: skip
    assert _served_digest(url) == registry.digests[role]
    rows = test_rows.iloc[:20]
    answer = httpx.post(f"{url}/predict", json=rows.to_dict(orient="records"), timeout=10)
    assert answer.status_code == 200, answer.text
    model = joblib.load(example_models["root"] / f"{role}.joblib")
    assert answer.json()["predictions"] == model.predict(rows.to_numpy()).tolist()


def _serve_fails(uri: str, env: dict[str, str]) -> str:
    """Run `canaryml serve URI`: it must exit (non-zero) before listening; return its output."""
    run = subprocess.run(
        serve_command(uri, free_port(), "--sha256", "0" * 64),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    return run.stdout + run.stderr


def test_a_version_the_registry_does_not_have_stops_the_server(registry: Registry) -> None:
    output = _serve_fails(f"models:/{MODEL}/9", registry.env())
    assert f"cannot download models:/{MODEL}/9 from MLflow" in output
    assert "RESOURCE_DOES_NOT_EXIST" in output


def test_an_alias_the_registry_does_not_have_stops_the_server(registry: Registry) -> None:
    output = _serve_fails(f"models:/{MODEL}@nobody", registry.env())
    assert f"cannot download models:/{MODEL}@nobody from MLflow" in output


def test_a_registry_that_is_down_stops_the_server(registry: Registry) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    output = _serve_fails(f"models:/{MODEL}/1", {**registry.env(), "MLFLOW_TRACKING_URI": down})
    assert f"cannot download models:/{MODEL}/1 from MLflow" in output


# -- the operator's write-back (spec.registry), against the same server ------------------------

T0 = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)


def _spec(tracking_uri: str, **registry: Any) -> api.ModelDeploymentSpec:
    return api.ModelDeploymentSpec.model_validate(
        {
            "model": {"uri": f"models:/{MODEL}/1", "version": "1"},
            "registry": {"mlflow": {"trackingUri": tracking_uri}, **registry},
        }
    )


def _status(*entries: tuple[str, str, str]) -> api.ModelDeploymentStatus:
    """History entries (event, uri, reason), a minute apart."""
    return api.ModelDeploymentStatus(
        history=[
            api.HistoryEntry(
                version=uri.rsplit("/", 1)[-1], uri=uri, event=event,  # type: ignore[arg-type]
                time=T0 + timedelta(minutes=i), reason=reason,
            )
            for i, (event, uri, reason) in enumerate(entries)
        ]
    )  # fmt: skip


def _client(registry: Registry) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=registry.server.url, registry_uri=registry.server.url)


def test_a_promotion_sets_the_alias_on_the_promoted_version(registry: Registry) -> None:
    spec = _spec(registry.server.url, onPromote={"alias": "production"})
    status = _status(("promoted", f"models:/{MODEL}/1", ""))
    after = asyncio.run(write_back(spec, status, now=T0))
    [record] = after.registry_writes
    assert (record.done, record.action, record.registry_version) == (True, "alias production", "1")
    assert _client(registry).get_model_version_by_alias(MODEL, "production").version == "1"
    assert writeback.due(spec, after) == []  # written once: nothing due at the next turn


def test_a_promotion_of_an_alias_uri_moves_the_stage_of_the_version_it_names(
    registry: Registry,
) -> None:
    spec = _spec(registry.server.url, onPromote={"stage": "Production"})
    status = _status(("promoted", f"models:/{MODEL}@champion", ""))
    after = asyncio.run(write_back(spec, status, now=T0))
    assert after.registry_writes[0].registry_version == "2"
    assert _client(registry).get_model_version(MODEL, "2").current_stage == "Production"


def test_a_rollback_tags_the_version_with_its_reason(registry: Registry) -> None:
    spec = _spec(registry.server.url, onRollback={})
    reason = "check error-rate failed 3 times: 0.12 > 0.05"
    status = _status(
        ("promoted", f"models:/{MODEL}/1", ""), ("rolledBack", f"models:/{MODEL}/2", reason)
    )
    after = asyncio.run(write_back(spec, status, now=T0))
    # The first time, only the latest outcome is due: the earlier promotion is the past.
    assert [record.action for record in after.registry_writes] == ["tag canaryml.rollback"]
    assert after.registry_writes[0].done
    assert _client(registry).get_model_version(MODEL, "2").tags["canaryml.rollback"] == reason


def test_a_registry_that_is_down_is_recorded_and_tried_again_at_the_next_turn(
    registry: Registry,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    status = _status(("rolledBack", f"models:/{MODEL}/1", "latency"))
    first = asyncio.run(write_back(_spec(down, onRollback={}), status, now=T0))
    [failed] = first.registry_writes
    assert (failed.done, failed.attempts) == (False, 1)
    assert f"MLflow at {down} is unreachable" in failed.last_result
    # The registry is back (here: the spec names the running one): the next turn writes it.
    second = asyncio.run(write_back(_spec(registry.server.url, onRollback={}), first, now=T0))
    [written] = second.registry_writes
    assert (written.done, written.attempts) == (True, 2)
    assert _client(registry).get_model_version(MODEL, "1").tags["canaryml.rollback"] == "latency"


def test_a_version_the_registry_does_not_have_is_a_clear_failed_record(registry: Registry) -> None:
    spec = _spec(registry.server.url, onPromote={"alias": "production"})
    after = asyncio.run(write_back(spec, _status(("promoted", f"models:/{MODEL}/9", "")), now=T0))
    [record] = after.registry_writes
    assert not record.done
    assert "HTTP 404 RESOURCE_DOES_NOT_EXIST" in record.last_result


def test_a_runs_uri_names_no_registry_version_and_is_skipped(registry: Registry) -> None:
    spec = _spec(registry.server.url, onPromote={"alias": "production"})
    uri = f"runs:/{registry.runs['canary']}/model"
    after = asyncio.run(write_back(spec, _status(("promoted", uri, "")), now=T0))
    [record] = after.registry_writes
    assert record.done and record.last_result.startswith("skipped: ")


# -- a ModelDeployment: the operator under kopf against the API emulator, the real registry ----

NS = "default"  # the CLI's namespace when the kubeconfig context names none


@pytest.fixture
async def cluster(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Cluster]:
    """As tests/component/conftest.py: an emulated cluster with the operator running."""
    async with running_emulator(tmp_path, monkeypatch) as (emulator, _):
        import canaryml_operator.main  # noqa: F401  (registers the handlers)

        async with running_operator():
            yield Cluster(emulator)


def _deployment_spec(registry: Registry, tracking_uri: str) -> dict[str, Any]:
    return {
        "model": {
            "uri": f"models:/{MODEL}/1",
            "version": "1",
            "sha256": registry.digests["stable"],
        },
        "canary": {
            "model": {
                "uri": f"models:/{MODEL}@champion",
                "version": "2",
                "sha256": registry.digests["canary"],
            },
            "steps": [10, 50],
            "stepInterval": "1h",
        },
        "analysis": {
            "prometheus": {"url": "http://127.0.0.1:9", "timeout": "1s"},
            "interval": "1h",
        },
        "registry": {
            "mlflow": {"trackingUri": tracking_uri},
            "onPromote": {"alias": "serving"},
            "onRollback": {},
        },
    }


async def _canaryml(*args: str) -> str:
    """The `canaryml` CLI, in a thread: the emulator answers from this test's event loop."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


async def _resource_status(cluster: Cluster, name: str) -> dict[str, Any]:
    found = await cluster.get("ModelDeployment", NS, name)
    return dict((found or {}).get("status") or {})


async def _at_first_step(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    await cluster.apply(NS, name, spec)
    await eventually(lambda: cluster.get("Deployment", NS, f"{name}-canary"), what="the canary")
    await cluster.roll_out(NS, f"{name}-stable")
    await cluster.roll_out(NS, f"{name}-canary")
    await eventually(
        lambda: _resource_status(cluster, name),
        until=lambda s: s.get("canaryWeight") == 10,
        what="the first step",
    )


async def _written(cluster: Cluster, name: str, action: str) -> dict[str, Any]:
    status = await eventually(
        lambda: _resource_status(cluster, name),
        until=lambda s: any(w["action"] == action for w in s.get("registryWrites", [])),
        what=f"the write-back {action}",
    )
    record: dict[str, Any] = next(w for w in status["registryWrites"] if w["action"] == action)
    return record


async def test_a_promoted_model_deployment_sets_the_alias_in_the_registry(
    registry: Registry, cluster: Cluster
) -> None:
    await _at_first_step(cluster, "bc", _deployment_spec(registry, registry.server.url))
    stable = await cluster.get("Deployment", NS, "bc-stable")
    assert stable is not None
    env = {
        e["name"]: e.get("value")
        for e in stable["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["MLFLOW_TRACKING_URI"] == registry.server.url
    assert env["CANARYML_MODEL_URI"] == f"models:/{MODEL}/1"

    await _canaryml("promote", "bc")
    record = await _written(cluster, "bc", "alias serving")
    assert record["done"], record
    assert (record["event"], record["uri"]) == ("promoted", f"models:/{MODEL}@champion")
    assert record["registryVersion"] == "2"  # the version @champion named when written
    assert _client(registry).get_model_version_by_alias(MODEL, "serving").version == "2"


async def test_a_registry_that_is_down_never_holds_a_rollback(
    registry: Registry, cluster: Cluster
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    await _at_first_step(cluster, "bc", _deployment_spec(registry, down))

    await _canaryml("abort", "bc")
    record = await _written(cluster, "bc", "tag canaryml.rollback")
    status = await _resource_status(cluster, "bc")
    assert status["phase"] == "RolledBack"  # rolled back whatever the registry says
    assert status["history"][-1]["event"] == "rolledBack"
    assert not record["done"]
    assert f"MLflow at {down} is unreachable" in record["lastResult"]


async def test_a_canary_version_the_registry_does_not_have_is_refused_and_the_stable_kept(
    registry: Registry, cluster: Cluster
) -> None:
    spec = _deployment_spec(registry, registry.server.url)
    del spec["canary"]
    await cluster.apply(NS, "bc", spec)
    await eventually(lambda: cluster.get("Deployment", NS, "bc-stable"), what="the stable")
    await cluster.roll_out(NS, "bc-stable")
    await eventually(
        lambda: _resource_status(cluster, "bc"),
        until=lambda s: s.get("phase") == "Stable",
        what="the stable serving",
    )

    missing = {"uri": f"models:/{MODEL}/9", "version": "9", "sha256": "9" * 64}
    await cluster.apply(NS, "bc", {**spec, "canary": {"model": missing, "steps": [10]}})
    status = await eventually(
        lambda: _resource_status(cluster, "bc"),
        until=lambda s: any(
            c["type"] == "Stalled" and c["reason"] == "ModelNotInRegistry"
            for c in s.get("conditions", [])
        ),
        what="the condition ModelNotInRegistry",
    )
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["message"].startswith(f"spec.canary.model.uri models:/{MODEL}/9: ")
    assert "HTTP 404 RESOURCE_DOES_NOT_EXIST" in stalled["message"]
    assert await cluster.get("Deployment", NS, "bc-canary") is None  # nothing created
    stable = await cluster.get("Deployment", NS, "bc-stable")
    assert stable is not None
    env = {
        e["name"]: e.get("value")
        for e in stable["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["CANARYML_MODEL_URI"] == f"models:/{MODEL}/1"  # the stable track untouched
    reasons = [event["reason"] for event in await cluster.events(NS, "bc")]
    assert "ModelNotInRegistry" in reasons
