"""Real processes for a whole rollout: model servers, the builtin router following its
ModelDeployment, a real Prometheus, generated traffic, and the operator against the emulator.

The emulator stands in for the API server and `Kubelet` for what a cluster's controllers do
with Deployments (mark them rolled out). The model servers run from the start, one process per
track, so the operator's child Deployments only tell the kubelet what to report: this harness
checks the rollout's decisions and traffic, not pod scheduling.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
from canaryml_testing.cluster import ApiError, Cluster

from tests.integration.conftest import free_port, router_command, serve_command, stop, wait_ready


def start_process(command: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        command,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


@dataclass
class Processes:
    """Every process started for one test; all stopped at the end, also on failure."""

    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def serve(
        self, model: Path, *, track: str, name: str, env: dict[str, str] | None = None
    ) -> tuple[str, subprocess.Popen[bytes]]:
        port = free_port()
        process = start_process(
            serve_command(model, port, "--track", track, "--model-deployment", name),
            env={"CANARYML_DRIFT_MIN_ROWS": "20", **(env or {})},
        )
        self.running.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url)
        return url, process

    def router(
        self, *, name: str, namespace: str, kubeconfig: Path, upstreams: dict[str, str], port: int
    ) -> str:
        """`canaryml router --follow`: ready once it has read its ModelDeployment."""
        args = [f"--upstream={track}={url}" for track, url in upstreams.items()]
        process = start_process(
            router_command(
                port, "--follow", "--model-deployment", name, "--namespace", namespace, *args
            ),
            env={"KUBECONFIG": str(kubeconfig)},
        )
        self.running.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url, path="/router/readyz", what="router")
        return url

    def stop_all(self) -> None:
        for process in self.running:
            stop(process)


class Kubelet:
    """What the Deployment controller and kubelets would do: report every Deployment of the
    cluster rolled out once its spec changed (the processes already run)."""

    def __init__(self, cluster: Cluster, namespace: str) -> None:
        self.cluster = cluster
        self.namespace = namespace

    async def run(self) -> None:
        while True:
            for deployment in await self.cluster.list("Deployment", self.namespace):
                meta, status = deployment["metadata"], deployment.get("status") or {}
                if status.get("observedGeneration") != meta.get("generation"):
                    with contextlib.suppress(ApiError):
                        await self.cluster.roll_out(self.namespace, meta["name"])
            await asyncio.sleep(0.1)


@dataclass
class Traffic:
    """Requests at a steady rate through the router, as clients would send them."""

    url: str
    rows: pd.DataFrame
    per_second: float = 40.0
    shift: Callable[[pd.DataFrame], pd.DataFrame] | None = None
    codes: Counter[int] = field(default_factory=Counter)
    tracks: Counter[str] = field(default_factory=Counter)

    async def run(self) -> None:
        records = self._records()
        pending: set[asyncio.Task[None]] = set()
        async with httpx.AsyncClient(timeout=5.0) as client:
            try:
                index = 0
                period = 1.0 / self.per_second
                next_at = time.monotonic()
                while True:
                    body = records[index % len(records)]
                    index += 1
                    task = asyncio.get_running_loop().create_task(self._send(client, body))
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    next_at += period
                    await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            finally:
                # Let the requests in flight finish: a client closed under them is no answer.
                if pending:
                    await asyncio.wait(pending, timeout=5.0)

    def set_shift(self, shift: Callable[[pd.DataFrame], pd.DataFrame] | None) -> None:
        self.shift = shift

    def _records(self) -> list[Any]:
        return list(self.rows.to_dict(orient="records"))

    async def _send(self, client: httpx.AsyncClient, record: dict[str, Any]) -> None:
        if self.shift is not None:
            record = self.shift(pd.DataFrame([record])).to_dict(orient="records")[0]
        try:
            response = await client.post(f"{self.url}/predict", json=record)
        except httpx.TransportError:
            self.codes[0] += 1
            return
        self.codes[response.status_code] += 1
        if response.status_code == 200:
            self.tracks[str(response.json().get("track"))] += 1


@contextlib.asynccontextmanager
async def background(*coroutines: Any) -> AsyncIterator[None]:
    """Run the coroutines as tasks for the duration of the block; cancel them after."""
    tasks = [asyncio.create_task(coroutine) for coroutine in coroutines]
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
