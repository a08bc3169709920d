"""Lifecycle webhooks and notifications in a whole rollout with real processes: model servers,
the builtin router, a real Prometheus, traffic, the operator against the emulator, and a real
HTTP receiver (tests/webhook_receiver.py) for the hooks and the notifications.

- a confirm-promotion hook that refuses twice, then accepts: the canary waits at its last
  step while refused and is promoted only after the yes;
- the notifications of a promotion and of a rollback: exactly the events the rollout made (one
  stepAdvanced per StepUp Event, then promoted or rolledBack), in canaryml's JSON and in
  Slack's format from a URL kept in a Secret.
"""

from __future__ import annotations

import asyncio
import base64
import time
from datetime import datetime
from typing import Any

import pytest
from canaryml_testing.cluster import eventually

from tests.integration import test_rollout
from tests.integration.rollout_harness import Kubelet, Traffic, background
from tests.integration.test_rollout import NS, STEPS, World, steps_taken
from tests.webhook_receiver import Receiver, receiving

pytestmark = pytest.mark.integration
world = test_rollout.world  # the fixture: operator, emulator, servers, Prometheus

TOLD = ["promoted", "rolledBack", "stepAdvanced"]  # not held: how often it holds is timing


async def received(receiver: Receiver, path: str, until: Any, what: str) -> list[Any]:
    async def bodies() -> list[Any]:
        return [r.body for r in receiver.on(path)]

    found: list[Any] = await eventually(bodies, until=until, within=10, what=what)
    return found


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_a_confirm_promotion_hook_refuses_then_accepts_the_promotion(world: World) -> None:
    running = await world.start("confirmed")
    traffic = Traffic(running.router, world.rows)
    with receiving() as receiver:
        receiver.answer("/confirm", 403, 403)
        spec = running.spec()
        spec["webhooks"] = [
            {
                "name": "release-manager",
                "type": "confirm-promotion",
                "url": f"{receiver.url}/confirm",
                "retryInterval": "1s",
                "metadata": {"ticket": "ML-42"},
            }
        ]
        spec["notifications"] = [{"url": f"{receiver.url}/notify", "events": TOLD}]
        await running.apply(spec)
        async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
            held = await running.wait(
                "the hook's refusal held",
                lambda s: any(
                    c["type"] == "Progressing" and "got HTTP 403" in c["message"]
                    for c in s.get("conditions", [])
                ),
                within=90,
            )
            assert (held["phase"], held["canaryWeight"]) == ("Progressing", STEPS[-1])
            done = await running.wait(
                "promotion finished",
                lambda s: s.get("phase") == "Promoted" and not s["canaryWeight"],
                within=60,
            )
        calls = [r.body for r in receiver.on("/confirm")]
        told = await received(
            receiver, "/notify", lambda b: "promoted" in [x["event"] for x in b], "promoted"
        )

    assert len(calls) == 3  # two refusals, one yes: asked no more after it
    assert [c["attempt"] for c in calls] == [1, 2, 3]
    assert all(c["type"] == "confirm-promotion" and c["weight"] == STEPS[-1] for c in calls)
    assert calls[0]["metadata"] == {"ticket": "ML-42"}
    promoted_at = _time(done["history"][-1]["time"])
    assert promoted_at >= _time(calls[-1]["time"])  # only after the yes
    assert done["webhooks"][0]["passed"] is True and done["webhooks"][0]["attempts"] == 3
    steps = steps_taken(await running.events())
    assert len(steps) == len(STEPS)
    assert [b["event"] for b in told] == ["stepAdvanced"] * len(STEPS) + ["promoted"]
    assert told[-1]["stableVersion"] == "1.1.0"
    assert set(traffic.codes) == {200}, traffic.codes


async def test_the_notifications_of_a_rollback(world: World) -> None:
    running = await world.start("told")
    traffic = Traffic(running.router, world.rows)
    with receiving() as receiver:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": "slack",
                "namespace": NS,
                "labels": {"canaryml.dev/webhook-credentials": "true"},
            },
            "data": {"url": base64.b64encode(f"{receiver.url}/slack".encode()).decode()},
        }
        await world.cluster.call("POST", f"/api/v1/namespaces/{NS}/secrets", secret)
        spec = running.spec()
        spec["webhooks"] = [
            {"name": "cleanup", "type": "rollback", "url": f"{receiver.url}/rolled-back"}
        ]
        spec["notifications"] = [
            {"url": f"{receiver.url}/notify", "events": TOLD},
            {
                "urlSecretRef": {"name": "slack", "key": "url"},
                "format": "slack",
                "events": ["promoted", "rolledBack"],
            },
        ]
        await running.apply(spec)
        async with background(Kubelet(world.cluster, NS).run(), traffic.run()):
            await running.wait(
                "the second step", lambda s: s.get("canaryWeight") == STEPS[1], within=60
            )
            running.servers["canary"].kill()  # the router answers its share with 502s
            killed = time.monotonic()
            rolled = await running.wait(
                "the rollback", lambda s: s.get("phase") == "RolledBack", within=30
            )
            told = await received(
                receiver, "/notify", lambda b: "rolledBack" in [x["event"] for x in b], "told"
            )
            told_after = time.monotonic() - killed
            slack = await received(receiver, "/slack", lambda b: len(b) == 1, "slack")
            hook = await received(receiver, "/rolled-back", lambda b: len(b) == 1, "the hook")
        await asyncio.sleep(1.0)  # nothing more comes
        assert len(receiver.on("/notify")) == len(told)
        assert len(receiver.on("/rolled-back")) == 1

    steps = steps_taken(await running.events())
    assert [b["event"] for b in told] == ["stepAdvanced"] * len(steps) + ["rolledBack"]
    assert told[-1]["canaryVersion"] == "1.1.0" and told[-1]["weight"] == 0
    assert "errorRate" in told[-1]["message"]
    assert slack[0]["text"].startswith(f"canaryml {NS}/told: rolled back: canary 1.1.0")
    assert hook[0]["type"] == "rollback" and hook[0]["phase"] == "RolledBack"
    assert rolled["canaryWeight"] == 0
    recorded = await running.wait(
        "the hook recorded", lambda s: (s.get("webhooks") or [{}])[0].get("passed"), within=5
    )
    assert recorded["webhooks"][0]["occasion"].endswith("/rolledBack")
    print(f"\nrolledBack notification {told_after:.2f} s after the canary died")
