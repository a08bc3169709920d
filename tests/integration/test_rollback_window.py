"""The instant rollback, measured with real processes: the stable and canary model servers and
the builtin router (`canaryml router --follow`) as processes, the operator in this process
against the API emulator, `canaryml rollback` as a user runs it.

A promotion with `spec.rollbackWindow` leaves the stable's server untouched while the promoted
canary takes all traffic; `canaryml rollback NAME` inside the window must put every request back
on the previous version through the real router within seconds, with no failed request. The
time from the command to the last canary answer is printed (run with -s to see it).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_cli.main import app
from canaryml_testing.cluster import Cluster, eventually, running_emulator, running_operator
from typer.testing import CliRunner

from tests.integration.conftest import free_port
from tests.integration.rollout_harness import Kubelet, Processes, background

pytestmark = pytest.mark.integration

NS = "default"  # the CLI's namespace when the kubeconfig context names none
NAME = "iris"
SWITCH_LIMIT_SECONDS = 5.0  # the router follows the status within about a second
SETTLED = 60  # consecutive answers from the previous version that count as "all traffic"


def model_ref(folder: Path) -> dict[str, str]:
    manifest = (folder / "manifest.json").read_bytes()
    version = str(json.loads(manifest)["version"])
    return {
        "uri": f"file://{folder}",
        "version": version,
        "sha256": hashlib.sha256(manifest).hexdigest(),
    }


async def canaryml(*args: str) -> str:
    """The `canaryml` CLI, in a thread: the emulator answers from this test's event loop."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
async def cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[tuple[Cluster, Path]]:
    async with running_emulator(tmp_path, monkeypatch) as (emulator, kubeconfig):
        import canaryml_operator.main  # noqa: F401  (registers the handlers)

        async with running_operator():
            yield Cluster(emulator), kubeconfig


async def answered_by(client: httpx.AsyncClient, url: str, record: dict[str, Any]) -> str:
    response = await client.post(f"{url}/predict", json=record)
    assert response.status_code == 200, response.text  # no failed request, ever
    return str(response.json()["track"])


async def test_a_rollback_within_the_window_switches_all_traffic_back_in_seconds(
    cluster: tuple[Cluster, Path],
    example_models: dict[str, Path],
    test_rows: pd.DataFrame,
) -> None:
    api, kubeconfig = cluster
    processes = Processes()
    try:
        served = await asyncio.gather(
            *(
                asyncio.to_thread(processes.serve, example_models[track], track=track, name=NAME)
                for track in ("stable", "canary")
            )
        )
        upstreams = {"stable": served[0][0], "canary": served[1][0]}
        stable_server = served[0][1]
        spec = {
            "model": model_ref(example_models["stable"]),
            "canary": {
                "model": model_ref(example_models["canary"]),
                "steps": [20, 50],
                "stepInterval": "1h",
            },
            # No analysis decides here: the promotion and the rollback are commands.
            "analysis": {"prometheus": {"url": "http://127.0.0.1:9", "timeout": "1s"}},
            "serving": {"replicas": 2},
            "rollbackWindow": "1h",
        }
        await api.apply(NS, NAME, spec)
        port = free_port()
        router = await asyncio.to_thread(
            processes.router,
            name=NAME,
            namespace=NS,
            kubeconfig=kubeconfig,
            upstreams=upstreams,
            port=port,
        )
        records = list(test_rows.to_dict(orient="records"))

        async def status() -> dict[str, Any]:
            found = await api.get("ModelDeployment", NS, NAME)
            return dict((found or {}).get("status") or {})

        async with (
            background(Kubelet(api, NS).run()),
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            await eventually(status, until=lambda s: s.get("canaryWeight") == 20, within=30)
            await canaryml("promote", NAME)
            await eventually(
                status, until=lambda s: s.get("canaryWeight") == 100, within=30, what="100%"
            )

            async def all_on(track: str) -> bool:
                answers = [await answered_by(client, router, r) for r in records[:20]]
                return set(answers) == {track}

            # The router follows: every answer from the promoted canary's server.
            await eventually(lambda: all_on("canary"), within=10, what="all traffic on canary")

            # The command, then requests one after another until SETTLED answers in a row come
            # from the previous version: the switch time is when the last canary answer was.
            started = time.monotonic()
            output = await canaryml("rollback", NAME)
            assert "rollback" in output
            last_canary = started
            in_a_row = index = 0
            while in_a_row < SETTLED:
                record = records[index % len(records)]
                index += 1
                sent = time.monotonic()
                track = await answered_by(client, router, record)
                if track == "canary":
                    last_canary, in_a_row = sent, 0
                else:
                    assert track == "stable"
                    in_a_row += 1
                assert sent - started < 30, "the traffic never went back to the previous stable"
            switch = last_canary - started
            print(
                f"\ninstant rollback: {switch:.2f} s from `canaryml rollback` to all traffic on "
                f"the previous version ({index} requests through the router, none failed)"
            )
            assert switch < SWITCH_LIMIT_SECONDS

            back = await status()
            assert back["stableModel"]["version"] == spec["model"]["version"]  # type: ignore[index]
            # The previous version's server kept running all along: nothing was rolled.
            assert stable_server.poll() is None
            events = [
                e["message"] for e in await api.events(NS, NAME) if e["reason"] == "RolledBack"
            ]
            assert any("within the rollback window" in message for message in events), events
    finally:
        await asyncio.to_thread(processes.stop_all)
