"""A/B experiments with real processes: the two model servers, the builtin router following its
ModelDeployment, a real Prometheus, clients sending predictions through the router and their
true labels back later (POST /v2/models/{name}/feedback through the router, with the ids the
answers carried), and the operator (against the API emulator) whose analysis reads each track's
labels since the experiment began and writes status.experiment.

- The bundled `worse` model (held-out accuracy about 0.74) against the stable (about 0.955): the
  stable is named the winner, an ExperimentDecided Event is posted, and nothing is promoted.
- The same model on both tracks: no winner within the test's time, with the labels counted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_api.telemetry import TRACK_HEADER
from canaryml_testing.cluster import running_emulator, running_operator

from tests.integration.conftest import free_port
from tests.integration.prometheus import Target
from tests.integration.rollout_harness import Kubelet, Processes, background
from tests.integration.test_rollout import LABELS, NS, rollout_spec

pytestmark = pytest.mark.integration

FEEDBACK_KEY = "e" * 32
ROWS = 2000


@dataclass
class LabelledTraffic:
    """Single-row predictions through the router at a steady rate; each answer's true label
    sent back through the router half a second later, in batches."""

    url: str
    rows: list[dict[str, Any]]
    truth: list[Any]
    per_second: float = 60.0
    tracks: Counter[str] = field(default_factory=Counter)
    codes: Counter[int] = field(default_factory=Counter)
    feedback: Counter[int] = field(default_factory=Counter)
    due: list[tuple[float, str, dict[str, Any]]] = field(default_factory=list)

    async def run(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            sender = asyncio.get_running_loop().create_task(self._send_labels(client))
            pending: set[asyncio.Task[None]] = set()
            try:
                index, next_at = 0, time.monotonic()
                while True:
                    position = index % len(self.rows)
                    task = asyncio.get_running_loop().create_task(
                        self._predict(client, self.rows[position], self.truth[position])
                    )
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    index += 1
                    next_at += 1.0 / self.per_second
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                sender.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await sender
                if pending:
                    await asyncio.wait(pending, timeout=5.0)

    async def _predict(self, client: httpx.AsyncClient, row: dict[str, Any], label: Any) -> None:
        try:
            response = await client.post(f"{self.url}/predict", json=row)
        except httpx.TransportError:
            self.codes[0] += 1
            return
        self.codes[response.status_code] += 1
        if response.status_code != 200:
            return
        self.tracks[response.headers.get(TRACK_HEADER, "?")] += 1
        body = response.json()
        self.due.append(
            (time.monotonic() + 0.5, body["model"], {"id": body["ids"][0], "label": label})
        )

    async def _send_labels(self, client: httpx.AsyncClient) -> None:
        while True:
            await asyncio.sleep(0.25)
            now = time.monotonic()
            ready = [item for item in self.due if item[0] <= now]
            self.due = [item for item in self.due if item[0] > now]
            batches: dict[str, list[dict[str, Any]]] = {}
            for _, model, item in ready:
                batches.setdefault(model, []).append(item)
            for model, items in batches.items():
                for start in range(0, len(items), 500):
                    batch = items[start : start + 500]
                    try:
                        reply = await client.post(
                            f"{self.url}/v2/models/{model}/feedback", json={"feedback": batch}
                        )
                        self.feedback[reply.status_code] += len(batch)
                    except httpx.TransportError:
                        self.feedback[0] += len(batch)


@dataclass
class Experiment:
    cluster: Any
    kubeconfig: Path
    processes: Processes
    models: dict[str, Path]
    prometheus: Any
    tmp: Path

    def same_as_stable(self) -> Path:
        """The stable's packaged folder under another version (1.0.1): the same model, told
        apart by the rollout and by the servers' version label."""
        folder = self.tmp / "same-as-stable"
        shutil.copytree(self.models["stable"], folder)
        manifest = json.loads((folder / "manifest.json").read_text())
        manifest["version"] = "1.0.1"
        (folder / "manifest.json").write_text(json.dumps(manifest))
        return folder

    async def run(self, name: str, *, canary: str, within: float, until: Any) -> tuple[Any, Any]:
        """Servers (the stable model, and `canary` on the canary track), Prometheus, the
        router, labelled traffic; returns (the status once `until` holds or at `within`, the
        traffic)."""
        env = {"CANARYML_FEEDBACK_KEY": FEEDBACK_KEY}
        folders = {"stable": self.models["stable"]}
        folders["canary"] = self.same_as_stable() if canary == "stable" else self.models[canary]
        served = await asyncio.gather(
            *(
                asyncio.to_thread(self.processes.serve, folder, track=track, name=name, env=env)
                for track, folder in folders.items()
            )
        )
        upstreams = {"stable": served[0][0], "canary": served[1][0]}
        port = free_port()
        router = f"http://127.0.0.1:{port}"
        targets = [Target(url, LABELS) for url in (router, *upstreams.values())]
        prometheus = await asyncio.to_thread(self.prometheus, targets)
        spec = rollout_spec(
            stable=folders["stable"], canary=folders["canary"], prometheus=prometheus.url
        )
        spec["canary"]["experiment"] = {"metric": "accuracy", "weight": 50, "minSamples": 50}
        await self.cluster.apply(NS, name, spec)
        await asyncio.to_thread(
            self.processes.router,
            name=name,
            namespace=NS,
            kubeconfig=self.kubeconfig,
            upstreams=upstreams,
            port=port,
        )
        heldout = pd.read_csv(self.models["root"] / "test.csv", nrows=ROWS)
        truth = heldout.pop("target").tolist()
        rows = [
            {str(key): value for key, value in record.items()}
            for record in heldout.to_dict(orient="records")
        ]
        traffic = LabelledTraffic(router, rows, truth)

        async def status() -> dict[str, Any]:
            found = await self.cluster.get("ModelDeployment", NS, name)
            return dict((found or {}).get("status") or {})

        deadline = time.monotonic() + within
        async with background(Kubelet(self.cluster, NS).run(), traffic.run()):
            found = await status()
            while time.monotonic() < deadline and not until(found):
                await asyncio.sleep(0.5)
                found = await status()
        events = [
            (event["reason"], event["message"]) for event in await self.cluster.events(NS, name)
        ]
        return found, (traffic, events)


@pytest.fixture
async def experiment(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prometheus: Any,
    example_models: dict[str, Path],
) -> Any:
    processes = Processes()
    try:
        async with running_emulator(tmp_path, monkeypatch) as (emulator, kubeconfig):
            import canaryml_operator.main  # noqa: F401  (registers the handlers)
            from canaryml_testing.cluster import Cluster

            async with running_operator():
                yield Experiment(
                    Cluster(emulator), kubeconfig, processes, example_models, prometheus, tmp_path
                )
    finally:
        await asyncio.to_thread(processes.stop_all)


def decided(status: dict[str, Any]) -> bool:
    return (status.get("experiment") or {}).get("winner", "undecided") != "undecided"


async def test_a_less_accurate_canary_loses_the_experiment(experiment: Experiment) -> None:
    began = time.monotonic()
    status, (traffic, events) = await experiment.run(
        "ab-worse", canary="worse", within=120, until=decided
    )
    took = time.monotonic() - began
    record = status.get("experiment")
    assert record is not None, status
    assert record["winner"] == "stable", record
    assert record["high"] < 0 and record["effect"] < -0.1, record
    assert record["canarySamples"] >= 50 and record["stableSamples"] >= 50
    assert record["decidedAt"]
    # Nothing promoted, the split held at the experiment's weight.
    assert status["phase"] == "Progressing" and status["canaryWeight"] == 50
    assert status["stableModel"]["version"] == "1.0.0"
    assert [reason for reason, _ in events].count("ExperimentDecided") == 1
    assert traffic.tracks["canary"] > 0 and traffic.tracks["stable"] > 0
    assert set(traffic.codes) == {200}, traffic.codes
    assert set(traffic.feedback) == {200}, traffic.feedback
    print(
        f"\nA/B worse vs stable: winner {record['winner']} after {took:.0f} s "
        f"(effect {record['effect']:+.3f}, interval {record['low']:+.3f} to "
        f"{record['high']:+.3f}; {record['canarySamples']:.0f} / "
        f"{record['stableSamples']:.0f} labels)"
    )


async def test_the_same_model_on_both_tracks_names_no_winner(experiment: Experiment) -> None:
    def counted(status: dict[str, Any]) -> bool:
        record = status.get("experiment") or {}
        return (
            decided(status)
            or min(record.get("canarySamples", 0), record.get("stableSamples", 0)) >= 400
        )

    status, (traffic, events) = await experiment.run(
        "ab-same", canary="stable", within=90, until=counted
    )
    record = status.get("experiment")
    assert record is not None, status
    assert record["winner"] == "undecided", record
    assert record["low"] < 0 < record["high"], record
    assert min(record["canarySamples"], record["stableSamples"]) >= 300, record
    assert "ExperimentDecided" not in [reason for reason, _ in events]
    assert status["canaryWeight"] == 50 and status["phase"] == "Progressing"
    assert set(traffic.feedback) == {200}, traffic.feedback
    print(
        f"\nA/B same model: undecided with {record['canarySamples']:.0f} / "
        f"{record['stableSamples']:.0f} labels (interval {record['low']:+.3f} to "
        f"{record['high']:+.3f})"
    )
