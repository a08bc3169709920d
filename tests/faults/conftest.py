"""Fixtures of the fault suite: the API emulator (with fault injection), a fake Prometheus, and
the operator as a real process (`canaryml operator`), which a test can SIGKILL and start again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_testing.cluster import (
    TEST_USER_AGENT,
    ApiError,
    Cluster,
    eventually,
    running_emulator,
)
from canaryml_testing.kube_emulator import KubeEmulator

from tests.faults.fake_prometheus import FakePrometheus
from tests.integration.conftest import free_port

NS = "default"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
START_TIMEOUT_S = 60.0
OPERATOR_COMMAND = [sys.executable, "-m", "canaryml_cli", "operator", "--all-namespaces"]


def rollout_spec(prometheus: str, *, steps: list[int] | None = None, **analysis: Any) -> Any:
    """A canary in steps of 10 and 50 % held by a 1 h step interval (so only commands and
    failures move it) unless `steps`/`stepInterval` say otherwise; an analysis a second."""
    canary: dict[str, Any] = {"model": CANARY, "steps": steps or [10, 50], "stepInterval": "1h"}
    if "stepInterval" in analysis:
        canary["stepInterval"] = analysis.pop("stepInterval")
    return {
        "model": STABLE,
        "canary": canary,
        "analysis": {
            "prometheus": {"url": prometheus, "timeout": "1s"},
            "interval": "1s",
            "window": "1m",
            "minRequests": 10,
            "failureLimit": 2,
            **analysis,
        },
    }


@dataclass
class World:
    emulator: KubeEmulator
    cluster: Cluster
    kubeconfig: Path
    prometheus: FakePrometheus

    async def status(self, name: str) -> dict[str, Any]:
        found = await self.cluster.get("ModelDeployment", NS, name)
        return dict((found or {}).get("status") or {})

    async def wait(self, name: str, what: str, check: Any, within: float = 15.0) -> Any:
        return await eventually(lambda: self.status(name), until=check, within=within, what=what)

    async def at_first_step(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Apply `spec`, roll its Deployments out: the status at the first step."""
        await self.cluster.apply(NS, name, spec)
        await eventually(
            lambda: self.cluster.get("Deployment", NS, f"{name}-canary"), what="the canary"
        )
        await self.cluster.roll_out(NS, f"{name}-stable")
        await self.cluster.roll_out(NS, f"{name}-canary")
        first: dict[str, Any] = await self.wait(
            name, "the first step", lambda s: s.get("currentStep") == 0
        )
        return first

    async def set_weight(self, name: str, weight: int) -> None:
        """Write the status of a rollout of CANARY at `weight` (as the operator would)."""
        status = {
            "phase": "Progressing",
            "stableModel": STABLE,
            "specModel": STABLE,
            "canaryModel": CANARY,
            "canaryVersion": CANARY["version"],
            "canaryWeight": weight,
            "currentStep": 0,
        }
        path = self.cluster.path("ModelDeployment", NS, name, "status")
        await self.cluster.call("PATCH", path, {"status": status})

    def operator_reads(self, name: str, since: int = 0) -> int:
        """Reads of the resource by anyone but the test since request number `since`: GETs of
        it, and listings of its kind (a resumed operator reconciles from its watch's initial
        listing, with no GET of its own)."""
        paths = (f"/{api.PLURAL}/{name}", f"/{api.PLURAL}")
        return sum(
            1
            for request in list(self.emulator)[since:]
            if str(request.method).upper().endswith("GET")
            and str(request.url.path).endswith(paths)
            and request.params.get("watch") not in ("true", "1")
            and request.headers.get("User-Agent") != TEST_USER_AGENT
        )


@pytest.fixture
async def world(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[World]:
    prometheus = FakePrometheus(port=free_port())
    await prometheus.start()
    try:
        async with running_emulator(tmp_path, monkeypatch) as (emulator, kubeconfig):
            try:
                yield World(emulator, Cluster(emulator), kubeconfig, prometheus)
            finally:
                emulator.release_blackholes()
    finally:
        await prometheus.close()


class OperatorProcess:
    """`canaryml operator` against the emulator: started, SIGKILLed, started again."""

    def __init__(self, world: World, log: Path) -> None:
        self.world = world
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    async def start(self) -> None:
        """Start it and wait until it watches ModelDeployments (its handlers run from then)."""
        assert self.process is None or self.process.poll() is not None
        emulator = self.world.emulator
        since = len(list(emulator))
        self.process = self._spawn()
        self.starts += 1
        deadline = time.monotonic() + START_TIMEOUT_S
        while not any(
            request.params.get("watch") == "true"
            and request.resource is not None
            and request.resource.plural == api.PLURAL
            for request in list(emulator)[since:]
        ):
            if self.process.poll() is not None:
                raise AssertionError(f"the operator exited:\n{self.output()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the operator did not start watching:\n{self.output()}")
            await asyncio.sleep(0.05)

    def _spawn(self) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as sink:
            sink.write(f"\n--- start {self.starts + 1}\n".encode())
            return subprocess.Popen(
                [*OPERATOR_COMMAND, "--standalone", "--log-format", "plain"],
                env={**os.environ, "KUBECONFIG": str(self.world.kubeconfig)},
                stdout=sink,
                stderr=subprocess.STDOUT,
            )

    def kill(self) -> None:
        """SIGKILL: no cleanup, no last write; whatever was in flight is lost."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-20000:]


@pytest.fixture
async def operator(world: World, tmp_path: Path) -> AsyncIterator[OperatorProcess]:
    process = OperatorProcess(world, tmp_path / "operator.log")
    await process.start()
    try:
        yield process
    finally:
        process.stop()
        # Shown by pytest when the test failed.
        lines = process.output().splitlines()
        print("\n".join(line for line in lines if "HTTP Request" not in line))


async def kubelet(cluster: Cluster) -> None:
    """What the Deployment controller and kubelets do: report every Deployment rolled out once
    its spec changed (the test's own calls, so an injected fault spares them)."""
    while True:
        for deployment in await cluster.list("Deployment", NS):
            meta, status = deployment["metadata"], deployment.get("status") or {}
            if status.get("observedGeneration") != meta.get("generation"):
                with contextlib.suppress(ApiError):  # deleted meanwhile
                    await cluster.roll_out(NS, meta["name"])
        await asyncio.sleep(0.1)
