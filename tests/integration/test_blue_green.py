"""A blue-green switch and a switch back with real processes, and no failed client request.

The stable and preview model servers and the builtin router (`canaryml router --follow`) run as
processes; the operator runs in this process against the API emulator. A client sends requests
through the router continuously (Traffic, 40 a second) while the preview runs at 0% (reachable
only by a version pin, and fed the live requests the router mirrors to it), while
`canaryml promote` switches all traffic to it at once, and while `canaryml rollback` (within
spec.rollbackWindow) switches it back. Every request must be answered 2xx; the two switch
times are printed (run with -s to see them).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from canaryml_api.telemetry import REQUESTS_TOTAL, VERSION_HEADER
from canaryml_testing.cluster import Cluster, eventually
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import free_port
from tests.integration.rollout_harness import Kubelet, Processes, Traffic, background
from tests.integration.test_rollback_window import NAME, NS, canaryml, cluster, model_ref

__all__ = ["cluster"]  # the fixture this module uses

pytestmark = pytest.mark.integration

SWITCH_LIMIT_SECONDS = 5.0  # the router follows the status within about a second
SETTLED = 40  # consecutive answers from one track that count as "all traffic"


async def requests_of(client: httpx.AsyncClient, url: str, track: str) -> float:
    """The router's request counter for one track (its mirrored requests included)."""
    text = (await client.get(f"{url}/metrics")).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == f"{REQUESTS_TOTAL}_total" or sample.name == REQUESTS_TOTAL
        if sample.labels.get("track") == track
    )


async def one_track(client: httpx.AsyncClient, url: str, records: list[Any], track: str) -> bool:
    answers = []
    for record in records[:SETTLED]:
        response = await client.post(f"{url}/predict", json=record)
        assert response.status_code == 200, response.text
        answers.append(response.json()["track"])
    return set(answers) == {track}


async def switched(
    client: httpx.AsyncClient, url: str, records: list[Any], track: str, since: float
) -> float:
    """Requests one after another until SETTLED answers in a row come from `track`: the time
    from `since` to the last answer from the other track."""
    last_other = since
    in_a_row = index = 0
    while in_a_row < SETTLED:
        sent = time.monotonic()
        response = await client.post(f"{url}/predict", json=records[index % len(records)])
        index += 1
        assert response.status_code == 200, response.text
        if response.json()["track"] == track:
            in_a_row += 1
        else:
            last_other, in_a_row = sent, 0
        assert sent - since < 60, f"the traffic never went all to {track}"
    return last_other - since


async def test_a_blue_green_switch_and_switch_back_fail_no_request(
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
                "blueGreen": {"analysisSteps": 1, "mirror": True},
            },
            # No analysis decides here (Prometheus unreachable: the preview's analyses hold);
            # the switch and the switch back are the commands.
            "analysis": {"prometheus": {"url": "http://127.0.0.1:9", "timeout": "1s"}},
            "serving": {"replicas": 2},
            "rollbackWindow": "1h",
        }
        preview_version = spec["canary"]["model"]["version"]  # type: ignore[index]
        await api.apply(NS, NAME, spec)
        router = await asyncio.to_thread(
            processes.router,
            name=NAME,
            namespace=NS,
            kubeconfig=kubeconfig,
            upstreams=upstreams,
            port=free_port(),
        )
        records = list(test_rows.to_dict(orient="records"))
        traffic = Traffic(router, test_rows)

        async def status() -> dict[str, Any]:
            found = await api.get("ModelDeployment", NS, NAME)
            return dict((found or {}).get("status") or {})

        async with (
            background(Kubelet(api, NS).run()),
            httpx.AsyncClient(timeout=5.0) as client,
        ):
            preview = await eventually(
                status, until=lambda s: s.get("currentStep") == 0, within=30, what="the preview"
            )
            assert (preview["phase"], preview["canaryWeight"]) == ("Progressing", 0)
            # The router serves the preview's version to pinned requests only.
            await eventually(
                lambda: client.post(
                    f"{router}/predict",
                    json=records[0],
                    headers={VERSION_HEADER: preview_version},
                ),
                until=lambda r: r.status_code == 200 and r.json()["track"] == "canary",
                what="a pinned request answered by the preview",
            )
            assert await one_track(client, router, records, "stable")

            async with background(traffic.run()):
                # The client is sending before the switch; the preview gets it mirrored.
                mirrored = await eventually(
                    lambda: requests_of(client, router, "canary"),
                    until=lambda n: n >= 20,
                    what="live requests mirrored to the preview",
                )
                assert traffic.tracks["canary"] == 0  # never seen by the client
                started = time.monotonic()
                await canaryml("promote", NAME)
                switch = await switched(client, router, records, "canary", started)
                at_100 = await status()
                assert at_100["canaryWeight"] == 100
                assert at_100["phase"] == "Promoted"
                await asyncio.sleep(1.0)

                started = time.monotonic()
                await canaryml("rollback", NAME)
                back = await switched(client, router, records, "stable", started)
                await asyncio.sleep(1.0)  # the client goes on after the switch back

            print(
                f"\nblue-green: the preview answered {mirrored:.0f} requests at 0% (mirrored "
                f"live ones, and the pinned probe); "
                f"{switch:.2f} s from `canaryml promote` to all traffic on the "
                f"preview (grown to full size first), {back:.2f} s from `canaryml rollback` to "
                f"all traffic back; {sum(traffic.codes.values())} client requests "
                f"({dict(traffic.codes)}), by track {dict(traffic.tracks)}"
            )
            assert sum(traffic.codes.values()) > 40
            failed = {code: n for code, n in traffic.codes.items() if not 200 <= code < 300}
            assert failed == {}, f"failed client requests: {failed}"
            # The continuous client saw both sides of both switches.
            assert traffic.tracks["canary"] > 0 and traffic.tracks["stable"] > 0
            assert back < SWITCH_LIMIT_SECONDS
            final = await status()
            assert final["canaryWeight"] == 0
            assert final["stableModel"]["version"] == spec["model"]["version"]  # type: ignore[index]
            assert stable_server.poll() is None  # never restarted: nothing was rolled
            reasons = [e["reason"] for e in await api.events(NS, NAME)]
            assert "BlueGreenSwitch" in reasons and "RolledBack" in reasons
    finally:
        await asyncio.to_thread(processes.stop_all)
