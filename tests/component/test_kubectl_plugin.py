"""`kubectl canaryml`: the plugin found and run by a real kubectl, against the API emulator.

kubectl runs `kubectl-canaryml` (the package's console script) from the PATH; the commands are
`canaryml`'s own. Here they run as processes, so that the emulator keeps answering from this
test's event loop: promote, abort, rollback, pause and resume set their annotations, and
`status --watch` follows the resource through the watch API, printing each change (stdout is
a pipe: no in-place redraw), until the resource is deleted or Ctrl-C. No operator runs: the
test writes the status the operator would. Each test takes 2-4 s, most of it kubectl and
Python starting.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator.rollout import COMMAND_ANNOTATIONS
from canaryml_testing.cluster import Cluster, eventually, running_emulator

from tests.chart import ROOT
from tests.tools import unavailable

NS = "ml"
STABLE = {"uri": "s3://models/iris/1.0.0", "version": "1.0.0", "sha256": "a" * 64}
CANARY = {"uri": "s3://models/iris/1.1.0", "version": "1.1.0", "sha256": "b" * 64}
KUBECTL = ROOT / "build" / "tools" / "kubectl"
PLUGIN = Path(sys.executable).with_name("kubectl-canaryml")


class Emulated:
    def __init__(self, cluster: Cluster, env: dict[str, str]) -> None:
        self.cluster, self.env = cluster, env

    async def start(self, *args: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            str(KUBECTL),
            "canaryml",
            *args,
            env=self.env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, *args: str, code: int = 0) -> str:
        process = await self.start(*args)
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        text = out.decode() + err.decode()
        assert process.returncode == code, text
        return text

    async def set_status(self, name: str, **status: Any) -> None:
        path = self.cluster.path(api.KIND, NS, name, "status")
        await self.cluster.call("PATCH", path, {"status": status})

    async def annotations(self, name: str) -> dict[str, str]:
        found = await self.cluster.get(api.KIND, NS, name)
        assert found is not None
        return dict(found["metadata"].get("annotations") or {})


@pytest.fixture
async def emulated(tmp_path: Path) -> AsyncIterator[Emulated]:
    if not KUBECTL.is_file():
        unavailable("kubectl is missing: run scripts/install-tools.sh")
    if not PLUGIN.is_file():
        pytest.fail(f"{PLUGIN} is missing: install the package (pip install -e .)")
    async with running_emulator(tmp_path) as (emulator, kubeconfig):
        env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            # kubectl finds plugins on the PATH: the package's console scripts first.
            "PATH": f"{PLUGIN.parent}{os.pathsep}{os.environ.get('PATH', '')}",
            "COLUMNS": "200",
        }
        cluster = Cluster(emulator)
        await cluster.call(
            "POST",
            cluster.path(api.KIND, NS),
            {
                "apiVersion": api.API_VERSION,
                "kind": api.KIND,
                "metadata": {"name": "iris", "namespace": NS},
                "spec": {"model": STABLE, "canary": {"model": CANARY, "steps": [10, 50]}},
            },
        )
        yield Emulated(cluster, env)


async def test_kubectl_finds_the_plugin_and_its_commands(emulated: Emulated) -> None:
    listed = await emulated.run("--help")
    for command in ("status", "promote", "abort", "rollback", "pause", "resume"):
        assert command in listed
    assert "kubectl canaryml" in listed
    missing = await emulated.run("status", "nothing", "-n", NS, code=1)
    assert f"ModelDeployment {NS}/nothing not found" in missing


async def test_the_commands_set_their_annotations(emulated: Emulated) -> None:
    await emulated.set_status(
        "iris",
        phase="Progressing",
        canaryWeight=10,
        stableModel={"uri": STABLE["uri"], "version": "1.0.0"},
    )
    output = await emulated.run("promote", "iris", "-n", NS)
    assert f'{COMMAND_ANNOTATIONS["promote"]}: "1.1.0"' in output
    await emulated.run("abort", "iris", "-n", NS)
    await emulated.run("rollback", "iris", "-n", NS)
    await emulated.run("pause", "iris", "-n", NS)
    annotations = await emulated.annotations("iris")
    assert annotations[COMMAND_ANNOTATIONS["promote"]] == "1.1.0"
    assert annotations[COMMAND_ANNOTATIONS["abort"]] == "1.1.0"  # the canary it aborts
    assert annotations[COMMAND_ANNOTATIONS["rollback"]] == "1.0.0"  # the stable it undoes
    assert annotations[COMMAND_ANNOTATIONS["pause"]] == "true"
    assert "resumed" in await emulated.run("resume", "iris", "-n", NS)
    assert COMMAND_ANNOTATIONS["pause"] not in await emulated.annotations("iris")


async def read_until(stream: asyncio.StreamReader, seen: list[str], text: str) -> None:
    async def grow() -> str:
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(stream.readline(), timeout=0.2)
            seen.append(line.decode())
        return "".join(seen)

    await eventually(grow, until=lambda out: text in out, within=30, what=repr(text))


async def test_status_watch_prints_each_change_until_the_resource_is_deleted(
    emulated: Emulated,
) -> None:
    await emulated.set_status("iris", phase="Progressing", canaryWeight=10, currentStep=0)
    process = await emulated.start("status", "iris", "-n", NS, "--watch")
    assert process.stdout is not None and process.stderr is not None
    seen: list[str] = []
    try:
        await read_until(process.stdout, seen, "1 of 2")
        assert "10%" in "".join(seen) and "Progressing" in "".join(seen)
        await emulated.set_status("iris", canaryWeight=50, currentStep=1)
        await read_until(process.stdout, seen, "2 of 2")
        await emulated.set_status("iris", phase="Promoted", canaryWeight=0)
        await read_until(process.stdout, seen, "Promoted")
        await emulated.cluster.delete(api.KIND, NS, "iris")
        await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert f"ModelDeployment {NS}/iris was deleted" in (await process.stderr.read()).decode()
    seen.append((await process.stdout.read()).decode())
    # Two changes, two views after the first, each under its resourceVersion.
    assert "".join(seen).count("resourceVersion") == 2
    # Through the watch API, not by reading again and again.
    watches = [
        r
        for r in emulated.cluster.requests("GET", api.PLURAL)
        if r.params.get("watch") == "true" and r.params.get("fieldSelector") == "metadata.name=iris"
    ]
    assert len(watches) == 1


async def test_status_watch_ends_on_ctrl_c_and_json_prints_a_line_per_change(
    emulated: Emulated,
) -> None:
    await emulated.set_status("iris", phase="Progressing", canaryWeight=10)
    process = await emulated.start("status", "iris", "-n", NS, "-w", "-o", "json")
    assert process.stdout is not None
    seen: list[str] = []
    try:
        await read_until(process.stdout, seen, '"canaryWeight":10')
        await emulated.set_status("iris", canaryWeight=50)
        await read_until(process.stdout, seen, '"canaryWeight":50')
        # kubectl passes the signal on to its plugin (it execs it: the same process).
        process.send_signal(signal.SIGINT)
        await asyncio.wait_for(process.wait(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0
    assert [line.strip()[:1] for line in seen if line.strip()] == ["{", "{"]
