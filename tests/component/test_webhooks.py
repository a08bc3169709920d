"""Lifecycle webhooks and notifications under the real operator, against the API emulator, with
a real HTTP receiver: a pre-rollout hook that refuses, then accepts (signed with a Secret's
key); one that gives up and holds; notifications and a rollback hook on an abort."""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from canaryml_api.telemetry import WEBHOOK_SIGNATURE_HEADER
from canaryml_testing.cluster import Cluster, eventually

from tests.component.test_rollout_operator import (
    NS,
    canaryml,
    condition,
    reasons,
    rollout_spec,
    short_drain,  # noqa: F401  (autouse fixture)
    wait_status,
)
from tests.webhook_receiver import receiving

KEY = "hook-signing-key"


async def signing_secret(cluster: Cluster) -> None:
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": "hook-key",
            "namespace": NS,
            "labels": {"canaryml.dev/webhook-credentials": "true"},
        },
        "data": {"key": base64.b64encode(KEY.encode()).decode()},
    }
    await cluster.call("POST", f"/api/v1/namespaces/{NS}/secrets", secret)


async def available(cluster: Cluster, name: str, spec: dict[str, Any]) -> None:
    await cluster.apply(NS, name, spec)
    await eventually(lambda: cluster.get("Deployment", NS, f"{name}-canary"), what="the canary")
    await cluster.roll_out(NS, f"{name}-stable")
    await cluster.roll_out(NS, f"{name}-canary")


async def test_a_pre_rollout_hook_refusing_then_accepting_holds_then_lets_the_canary_in(
    cluster: Cluster,
) -> None:
    await signing_secret(cluster)
    with receiving() as receiver:
        receiver.answer("/smoke", 503)
        hook = {
            "name": "smoke",
            "type": "pre-rollout",
            "url": f"{receiver.url}/smoke",
            "retryInterval": "1s",
            "metadata": {"suite": "smoke"},
            "secretRef": {"name": "hook-key", "key": "key"},
        }
        await available(cluster, "iris", rollout_spec(webhooks=[hook]))
        first = await wait_status(
            cluster, "iris", "step 1 after the hook said yes", lambda s: s.get("canaryWeight") == 10
        )
        calls = receiver.on("/smoke")
        assert len(calls) == 2  # refused once, then accepted: asked no more
        for call in calls:
            expected = hmac.new(KEY.encode(), call.raw, hashlib.sha256).hexdigest()
            assert call.headers[WEBHOOK_SIGNATURE_HEADER] == f"sha256={expected}"
        refused, accepted = (call.body for call in calls)
        assert refused["apiVersion"] == "canaryml.dev/webhook/v1"
        assert (refused["type"], refused["name"], refused["namespace"]) == (
            "pre-rollout",
            "iris",
            NS,
        )
        assert (refused["weight"], refused["attempt"], accepted["attempt"]) == (0, 1, 2)
        assert refused["metadata"] == {"suite": "smoke"}
        assert accepted["canary"]["version"] == "1.1.0"
        assert "attempt 1 of 10 got HTTP 503" in accepted["message"]  # the hold, as it said
        (record,) = first["webhooks"]
        assert (record["name"], record["attempts"], record["passed"]) == ("smoke", 2, True)
        assert record["lastResult"] == "HTTP 200"


async def test_a_pre_rollout_hook_out_of_attempts_holds_and_says_so(cluster: Cluster) -> None:
    with receiving() as receiver:
        receiver.answer("/smoke", 500, 500)
        hook = {
            "name": "smoke",
            "type": "pre-rollout",
            "url": f"{receiver.url}/smoke",
            "maxAttempts": 2,
            "retryInterval": "1s",
        }
        await available(cluster, "iris", rollout_spec(webhooks=[hook]))
        held = await wait_status(
            cluster,
            "iris",
            "the hook given up",
            lambda s: condition(s, "Progressing").get("reason") == "WebhookGaveUp",
        )
        assert held["canaryWeight"] == 0
        assert "did not say yes in 2 attempts" in condition(held, "Progressing")["message"]
        await eventually(
            lambda: reasons(cluster, "iris"),
            until=lambda found: "WebhookGaveUp" in found,
            what="the WebhookGaveUp Warning",
        )
        assert len(receiver.on("/smoke")) == 2  # asked no more


async def test_an_abort_is_told_and_a_failing_rollback_hook_blocks_nothing(
    cluster: Cluster,
) -> None:
    with receiving() as receiver:
        receiver.answer("/rollback", 500, 500, 500)
        spec = rollout_spec(
            webhooks=[
                {
                    "name": "tell",
                    "type": "rollback",
                    "url": f"{receiver.url}/rollback",
                    "retryInterval": "1s",
                    "maxAttempts": 3,
                }
            ],
            notifications=[{"url": f"{receiver.url}/notify"}],
        )
        await available(cluster, "iris", spec)
        await wait_status(cluster, "iris", "step 1", lambda s: s.get("canaryWeight") == 10)
        await canaryml("abort", "iris")
        rolled = await wait_status(
            cluster, "iris", "the rollback", lambda s: s.get("phase") == "RolledBack"
        )
        assert rolled["canaryWeight"] == 0  # at once, whatever the rollback hook says
        await eventually(
            lambda: _async(len(receiver.on("/rollback"))), until=lambda n: n == 3, what="3 tries"
        )
        told = await eventually(
            lambda: _async([r.body["event"] for r in receiver.on("/notify")]),
            until=lambda events: "rolledBack" in events,
            what="the rolledBack notification",
        )
        # The step's first analysis (Prometheus refuses) may hold, and say so, before the abort.
        assert [event for event in told if event != "held"] == ["stepAdvanced", "rolledBack"]
        found = await wait_status(
            cluster, "iris", "3 attempts", lambda s: s["webhooks"][0]["attempts"] == 3
        )
        assert found["webhooks"][0]["passed"] is False
        assert found["notifications"]["sent"] and found["notifications"]["dropped"] == 0


async def _async(value: Any) -> Any:
    return value
