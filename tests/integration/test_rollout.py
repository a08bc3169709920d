"""The whole rollout with real processes: proof that the operator's analysis drives traffic.

Each test starts the stable and canary model servers (and a shadow where it needs one) and the
builtin router as processes, a real Prometheus scraping them every second, traffic through the
router, and the operator (in this process, against the API emulator) whose analysis daemon
reads Prometheus and writes the weights that the router follows through its watch. Nothing is
stubbed: the only stand-in is the emulator for the API server (and `Kubelet` for the cluster's
Deployment controller).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_api.telemetry import ROUTER_CANARY_WEIGHT
from canaryml_testing.cluster import Cluster, eventually, running_emulator, running_operator

from tests.integration.conftest import free_port
from tests.integration.prometheus import RunningPrometheus, Target
from tests.integration.rollout_harness import Kubelet, Processes, Traffic, background

pytestmark = pytest.mark.integration

NS = "default"
LABELS = {"namespace": NS}  # what a cluster's Prometheus adds from the pod's namespace
STEPS = [20, 50, 80]


def rollout_spec(
    *,
    stable: Path,
    canary: Path,
    prometheus: str,
    shadow: Path | None = None,
    **analysis: Any,
) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "model": model_ref(stable, "1.0.0"),
        "canary": {
            "model": model_ref(canary, version_of(canary)),
            "steps": STEPS,
            "stepInterval": "2s",
        },
        "analysis": {
            "prometheus": {"url": prometheus, "timeout": "2s"},
            "interval": "1s",
            "window": "10s",
            "minRequests": 10,
            "failureLimit": 2,
            # Drift over a few dozen rows is noisy: bounds that only a real shift crosses.
            "thresholds": {
                "maxErrorRate": 0.05,
                "maxLatencyP99": "1s",
                "maxDrift": 3.0,
                "maxPredictionDrift": 3.0,
            },
            **{key: value for key, value in analysis.items() if key != "thresholds"},
        },
    }
    spec["analysis"]["thresholds"].update(analysis.get("thresholds", {}))
    if shadow is not None:
        spec["shadow"] = {"model": model_ref(shadow, version_of(shadow))}
    return spec


def model_ref(folder: Path, version: str) -> dict[str, str]:
    """A pinned model: the operator creates no track for one without its digest."""
    digest = hashlib.sha256((folder / "manifest.json").read_bytes()).hexdigest()
    return {"uri": f"file://{folder}", "version": version, "sha256": digest}


def version_of(folder: Path) -> str:
    import json

    return str(json.loads((folder / "manifest.json").read_text())["version"])


@dataclass
class World:
    cluster: Cluster
    kubeconfig: Path
    processes: Processes
    models: dict[str, Path]
    rows: pd.DataFrame
    start_prometheus: Callable[..., RunningPrometheus]

    async def start(
        self, name: str, *, canary: str = "canary", shadow: str | None = None
    ) -> Running:
        """Servers and Prometheus for the ModelDeployment `name`; the router follows once the
        test has applied it (`Running.apply`)."""
        roles = {"stable": "stable", "canary": canary, **({"shadow": shadow} if shadow else {})}
        served = await asyncio.gather(
            *(
                asyncio.to_thread(self.processes.serve, self.models[role], track=track, name=name)
                for track, role in roles.items()
            )
        )
        upstreams = {track: url for track, (url, _) in zip(roles, served, strict=True)}
        servers = {track: process for track, (_, process) in zip(roles, served, strict=True)}
        port = free_port()
        router = f"http://127.0.0.1:{port}"
        targets = [Target(url, LABELS) for url in (router, *upstreams.values())]
        prometheus = await asyncio.to_thread(self.start_prometheus, targets)
        return Running(self, name, router, port, upstreams, servers, prometheus)


@dataclass
class Running:
    world: World
    name: str
    router: str
    router_port: int
    upstreams: dict[str, str]
    servers: dict[str, Any]
    prometheus: RunningPrometheus

    def spec(self, *, canary: str = "canary", shadow: str | None = None, **analysis: Any) -> Any:
        models = self.world.models
        return rollout_spec(
            stable=models["stable"],
            canary=models[canary],
            shadow=models[shadow] if shadow else None,
            prometheus=self.prometheus.url,
            **analysis,
        )

    async def apply(self, spec: dict[str, Any]) -> None:
        """Create the ModelDeployment, then start its router (which follows it)."""
        await self.world.cluster.apply(NS, self.name, spec)
        await asyncio.to_thread(
            self.world.processes.router,
            name=self.name,
            namespace=NS,
            kubeconfig=self.world.kubeconfig,
            upstreams=self.upstreams,
            port=self.router_port,
        )

    async def status(self) -> dict[str, Any]:
        found = await self.world.cluster.get("ModelDeployment", NS, self.name)
        return dict((found or {}).get("status") or {})

    async def wait(self, what: str, check: Callable[[dict[str, Any]], bool], within: float) -> Any:
        return await eventually(self.status, until=check, within=within, what=what)

    async def router_weight(self) -> int:
        # /router/weights is on the admin listener only; the weight gauge is on the traffic port.
        async with httpx.AsyncClient(timeout=2.0) as client:
            text = (await client.get(f"{self.router}/metrics")).text
        [weight] = [
            line.split()[-1] for line in text.splitlines() if line.startswith(ROUTER_CANARY_WEIGHT)
        ]
        return int(float(weight))

    async def events(self) -> list[tuple[str, str]]:
        return [
            (event["reason"], event["message"])
            for event in await self.world.cluster.events(NS, self.name)
        ]


@pytest.fixture
async def world(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    prometheus: Callable[..., RunningPrometheus],
    example_models: dict[str, Path],
    test_rows: pd.DataFrame,
) -> AsyncIterator[World]:
    processes = Processes()
    try:
        async with running_emulator(tmp_path, monkeypatch) as (emulator, kubeconfig):
            import canaryml_operator.main  # noqa: F401  (registers the handlers)

            async with running_operator():
                yield World(
                    Cluster(emulator), kubeconfig, processes, example_models, test_rows, prometheus
                )
    finally:
        await asyncio.to_thread(processes.stop_all)


def steps_taken(events: list[tuple[str, str]]) -> list[str]:
    return [message for reason, message in events if reason == "StepUp"]


async def test_a_good_canary_is_promoted_through_every_step(world: World) -> None:
    running = await world.start("good")
    traffic = Traffic(running.router, world.rows)
    await running.apply(running.spec())
    async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
        done = await running.wait(
            "promotion finished",
            lambda s: s.get("phase") == "Promoted" and not s["canaryWeight"],
            within=90,
        )

    assert done["stableModel"]["version"] == "1.1.0"
    assert done["history"][-1]["event"] == "promoted"
    assert done["lastAnalysis"]["verdict"] == "Successful"
    assert done["lastAnalysis"]["requests"] >= 10
    steps = steps_taken(await running.events())
    # Every step in order, none skipped, each after a passing analysis with its numbers.
    assert all(f"-> {weight}%" in message for message, weight in zip(steps, STEPS, strict=True))
    assert len(steps) == len(STEPS)
    assert all("errorRate 0.0 %" in message for message in steps[1:])
    # The router followed: the canary answered a share of the requests, and none failed.
    assert traffic.tracks["canary"] > 0 and traffic.tracks["stable"] > 0
    assert set(traffic.codes) == {200}, traffic.codes


async def test_a_failing_canary_is_rolled_back_in_time(world: World) -> None:
    running = await world.start("errors")
    traffic = Traffic(running.router, world.rows)
    await running.apply(running.spec())
    async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
        await running.wait(
            "the second step", lambda s: s.get("canaryWeight") == STEPS[1], within=60
        )
        # The canary dies: the router answers its share with 502s.
        running.servers["canary"].kill()
        failing_since = time.monotonic()
        rolled = await running.wait(
            "the rollback", lambda s: s.get("phase") == "RolledBack", within=30
        )
        reaction = time.monotonic() - failing_since
        await eventually(
            running.router_weight, until=lambda w: w == 0, within=2, what="router at 0"
        )
        routed_at = time.monotonic() - failing_since

    # failureLimit x interval + 5 s, the bound (1 s scrapes).
    assert reaction <= 2 * 1.0 + 5.0, f"rolled back {reaction:.1f} s after the canary failed"
    assert routed_at <= 2 * 1.0 + 5.0 + 1.0
    assert rolled["canaryWeight"] == 0
    assert rolled["stableModel"]["version"] == "1.0.0"
    condition = next(c for c in rolled["conditions"] if c["type"] == "RolledBack")
    assert condition["status"] == "True" and condition["reason"] == "AnalysisFailed"
    assert "errorRate" in condition["message"] and "% > max 5.0 %" in condition["message"]
    reasons = [reason for reason, _ in await running.events()]
    assert "RolledBack" in reasons
    print(f"\nrollback reaction: status {reaction:.2f} s, router {routed_at:.2f} s")


async def test_a_canary_whose_inputs_drift_is_rolled_back(world: World) -> None:
    running = await world.start("drift")
    feature = str(world.rows.columns[0])
    spread = float(world.rows[feature].std())

    def shifted(frame: pd.DataFrame) -> pd.DataFrame:
        return frame.assign(**{feature: frame[feature] + 8 * spread})

    traffic = Traffic(running.router, world.rows)
    await running.apply(running.spec())
    async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
        await running.wait("the first step", lambda s: s.get("canaryWeight") == STEPS[0], within=60)
        traffic.set_shift(shifted)
        rolled = await running.wait(
            "the rollback", lambda s: s.get("phase") == "RolledBack", within=60
        )

    condition = next(c for c in rolled["conditions"] if c["type"] == "RolledBack")
    assert "drift" in condition["message"], condition["message"]
    assert f"({feature} " in condition["message"], condition["message"]  # the one moved
    assert rolled["lastAnalysis"]["drift"] > 3.0
    assert rolled["stableModel"]["version"] == "1.0.0"


async def test_a_canary_that_disagrees_with_the_shadow_is_rolled_back(world: World) -> None:
    # The canary is the bad model (shuffled labels), the shadow the good one.
    running = await world.start("disagree", canary="bad", shadow="canary")
    traffic = Traffic(running.router, world.rows)
    await running.apply(
        running.spec(canary="bad", shadow="canary", thresholds={"minShadowAgreement": 0.9}),
    )
    async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
        rolled = await running.wait(
            "the rollback", lambda s: s.get("phase") == "RolledBack", within=90
        )

    condition = next(c for c in rolled["conditions"] if c["type"] == "RolledBack")
    assert "shadowAgreement" in condition["message"], condition["message"]
    assert rolled["lastAnalysis"]["shadowAgreement"] < 0.9


async def test_prometheus_down_holds_the_weight_and_the_rollout_resumes(world: World) -> None:
    running = await world.start("outage")
    traffic = Traffic(running.router, world.rows)
    await running.apply(running.spec())
    async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
        before = await running.wait(
            "the second step", lambda s: s.get("canaryWeight") == STEPS[1], within=60
        )
        await asyncio.to_thread(running.prometheus.stop)
        held = await running.wait(
            "Error analyses",
            lambda s: (s.get("heldAnalyses") or 0) >= 3 and s["lastAnalysis"]["verdict"] == "Error",
            within=30,
        )
        assert held["canaryWeight"] == STEPS[1]  # neither promoted nor rolled back
        assert held["phase"] == "Progressing"
        assert held["failedChecks"] == before["failedChecks"] == 0

        await asyncio.to_thread(running.prometheus.start)
        done = await running.wait(
            "promotion after the outage",
            lambda s: s.get("phase") == "Promoted",
            within=60,
        )

    assert done["history"][-1]["event"] == "promoted"
