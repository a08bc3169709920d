"""The router's follower (`canaryml_router.follow`) notices a watch that went silent.

A network partition or an API server that stopped answering leaves the watch's connection open
and silent: no error, no end. The follower must drop it by itself and list again, or a weight
written later (a rollback to 0) would not reach the router until the connection times out.
Run in-process against the API emulator, with a short watch timeout; the router process and
the other watch faults are in test_router_watch_faults.py.
"""

from __future__ import annotations

import asyncio
import time

from canaryml_router.core import RoutingTable
from canaryml_router.follow import ModelDeploymentFollower, load_configuration
from canaryml_testing.cluster import eventually, spare_tests
from canaryml_testing.kube_emulator import Fault

from tests.faults.conftest import CANARY, NS, STABLE, World

WATCH_TIMEOUT = 2  # seconds; the default is a minute


async def test_a_silent_watch_is_dropped_and_the_weight_followed(world: World) -> None:
    await world.cluster.apply(NS, "iris", {"model": STABLE, "canary": {"model": CANARY}})
    await world.set_weight("iris", 100)
    weights: list[int] = []

    def apply(table: RoutingTable) -> None:
        weights.append(table.canary_weight)

    follower = ModelDeploymentFollower(
        name="iris", namespace=NS, configuration=load_configuration(), watch_timeout=WATCH_TIMEOUT
    )
    task = asyncio.create_task(follower.run(apply))
    try:
        await eventually(lambda: asyncio.sleep(0, weights[-1:] == [100]), what="weight 100")
        # The open watch goes silent for good; new connections are answered again at once.
        await world.emulator.inject(Fault(mode="blackhole", spare=spare_tests))
        world.emulator.heal()
        await world.set_weight("iris", 0)
        written = time.monotonic()
        await eventually(
            lambda: asyncio.sleep(0, weights[-1:] == [0]), within=20, what="weight 0 followed"
        )
        took = time.monotonic() - written
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    # A stream the server would have ended after WATCH_TIMEOUT, silent as long again: dropped.
    assert took < 2 * WATCH_TIMEOUT + 2, f"the weight reached the router after {took:.1f} s"
    print(f"\nsilent watch dropped, weight followed {took:.1f} s after it was written")
