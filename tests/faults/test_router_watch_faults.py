"""The builtin router losing its watch keeps its last routing table and recovers.

`canaryml router --follow` runs as a process against the API emulator, in front of two tiny
upstreams that answer with their track's name; the test writes the ModelDeployment's status
(weight 0 or 100, so that every answer says which table is in use). The watch stream is then
closed, ended by an ERROR event, and the API server drops, fails or hangs every request of the
router: requests keep flowing by the last table throughout, and a weight written meanwhile is
picked up once the API server answers again.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
import httpx
import pytest
from canaryml_testing.cluster import eventually, spare_tests
from canaryml_testing.kube_emulator import Fault

from tests.faults.conftest import CANARY, NS, STABLE, World
from tests.integration.conftest import free_port, router_command, stop, wait_ready

pytestmark = pytest.mark.integration

REQUESTS = 20  # per look at the table: all to one track, so any other answer shows
OUTAGE_SECONDS = 3.0  # longer than the follower's retry backoff (capped at 4 s) gets to


async def upstream(track: str) -> tuple[aiohttp.web.AppRunner, str]:
    async def answer(_: aiohttp.web.Request) -> aiohttp.web.Response:
        return aiohttp.web.json_response({"track": track})

    app = aiohttp.web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await aiohttp.web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


def start_router(
    port: int, upstreams: dict[str, str], kubeconfig: Path, log: Path
) -> subprocess.Popen[bytes]:
    """`canaryml router --follow` of `iris`, with these upstreams, its output into `log` (a
    pipe nobody reads would block it)."""
    options = ["--follow", "--model-deployment", "iris", "--namespace", NS]
    options += [f"--upstream={track}={url}" for track, url in upstreams.items()]
    with log.open("wb") as sink:
        return subprocess.Popen(
            router_command(port, *options),
            env={**os.environ, "KUBECONFIG": str(kubeconfig)},
            stdout=sink,
            stderr=subprocess.STDOUT,
        )


@pytest.fixture
async def router(world: World, tmp_path: Path) -> AsyncIterator[str]:
    """The ModelDeployment `iris` at weight 0 and its router, following it: the router's URL."""
    spec = {"model": STABLE, "canary": {"model": CANARY, "steps": [100]}}
    await world.cluster.apply(NS, "iris", spec)
    await world.set_weight("iris", 0)
    upstreams = [await upstream(track) for track in ("stable", "canary")]
    port = free_port()
    urls = {"stable": upstreams[0][1], "canary": upstreams[1][1]}
    log = tmp_path / "router.log"
    process = start_router(port, urls, world.kubeconfig, log)
    url = f"http://127.0.0.1:{port}"
    try:
        await asyncio.to_thread(wait_ready, process, url, path="/router/readyz", what="router")
        yield url
    finally:
        await asyncio.to_thread(stop, process)
        print(log.read_text(errors="replace")[-10000:])  # shown by pytest when the test failed
        for runner, _ in upstreams:
            await runner.cleanup()


async def tracks(url: str) -> Counter[str]:
    """Which track answered each of REQUESTS requests (every one must be answered)."""
    async with httpx.AsyncClient(timeout=5.0) as client:
        answers = await asyncio.gather(
            *(client.post(f"{url}/predict", json={"x": 1}) for _ in range(REQUESTS))
        )
    assert all(answer.status_code == 200 for answer in answers), [a.text for a in answers]
    return Counter(str(answer.json()["track"]) for answer in answers)


async def routes_to(url: str, track: str, what: str, within: float = 10.0) -> None:
    await eventually(
        lambda: tracks(url), until=lambda seen: seen == {track: REQUESTS}, within=within, what=what
    )


async def keeps_routing(url: str, track: str, seconds: float) -> None:
    """Every request answered by `track` for `seconds`: the last table holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        assert await tracks(url) == {track: REQUESTS}
        await asyncio.sleep(0.2)


async def test_the_router_keeps_its_table_and_recovers(world: World, router: str) -> None:
    emulator = world.emulator
    await routes_to(router, "stable", "weight 0 at start")
    await world.set_weight("iris", 100)
    await routes_to(router, "canary", "weight 100 followed")

    # The stream ends (as at the server's timeout), or ends with an ERROR event (not a 410).
    await emulator.break_watches("close")
    await world.set_weight("iris", 0)
    await routes_to(router, "stable", "weight 0 after the stream closed")
    await emulator.break_watches("error")
    await world.set_weight("iris", 100)
    await routes_to(router, "canary", "weight 100 after an ERROR event")

    # The API server unreachable (connections dropped), failing (500) or hanging: the router
    # keeps routing by its last table, and the weight written meanwhile comes once it heals.
    weight: dict[str, Any] = {"canary": 100}
    for fault in (
        Fault(mode="drop", spare=spare_tests),
        Fault(mode="error", status=500, spare=spare_tests),
        Fault(mode="hang", spare=spare_tests),
    ):
        before = "canary" if weight["canary"] == 100 else "stable"
        after = "stable" if before == "canary" else "canary"
        faulted = sum(emulator.faulted.values())
        await emulator.inject(fault)
        await world.set_weight("iris", 0 if after == "stable" else 100)
        await keeps_routing(router, before, OUTAGE_SECONDS)
        if fault.mode != "hang":  # a hang stalls the open watch: no new request meets it
            assert sum(emulator.faulted.values()) > faulted, f"the router met the {fault.mode}"
        emulator.heal()
        await routes_to(router, after, f"the weight written during the {fault.mode}")
        weight["canary"] = 100 if after == "canary" else 0
