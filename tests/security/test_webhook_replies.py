"""A webhook or notification URL in a spec points wherever its author likes: the same rules as
for Prometheus (one shared module, `outbound`) hold for a hostile receiver on loopback. A
redirect is a failed attempt, never followed; an endless or dripping reply ends at the size
limit or the timeout; the reply's text is never recorded; a Secret not opted in is not used."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import delivery, hooks, notifications
from canaryml_operator.kube import KubeClient

from tests.local_http import serving
from tests.security.test_prometheus_replies import MARK, Sent, endless, handler, replying

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


class NoSecrets(KubeClient):
    """A client that must not be asked: these hooks name no Secret."""

    def __init__(self) -> None:
        pass

    def get(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no Secret read expected")


def call(url: str, **fields: Any) -> hooks.Call:
    hook = api.WebhookSpec.model_validate(
        {"name": "h", "type": "confirm-promotion", "url": url, **fields}
    )
    return hooks.Call(hook, "1.1.0/promotion", 1, {"apiVersion": hooks.PAYLOAD_API_VERSION})


async def ask(url: str, **fields: Any) -> hooks.Result:
    (result,) = await delivery.call_hooks(
        [call(url, **fields)], kube=NoSecrets(), namespace="ns", now=NOW
    )
    return result


async def test_a_redirect_is_a_no_and_never_followed() -> None:
    elsewhere = Sent()
    with serving(handler(replying(200, b"{}"), elsewhere)) as target:

        def redirect(h: BaseHTTPRequestHandler, sent: Sent) -> None:
            h.send_response(307)
            h.send_header("Location", f"{target}/yes")
            h.send_header("Content-Length", "0")
            h.end_headers()

        with serving(handler(redirect, Sent())) as url:
            result = await ask(url)
    assert not result.ok
    assert "HTTP 307, a redirect: redirects are not followed" in result.detail
    assert target not in result.detail
    assert elsewhere.requests == []


@pytest.mark.parametrize("announced", [True, False], ids=["content-length", "streamed"])
async def test_an_endless_reply_is_read_up_to_the_limit(announced: bool) -> None:
    sent = Sent()
    with serving(handler(endless(announced), sent)) as url:
        result = await ask(url, timeout="5s")
    assert not result.ok
    assert "answered more than 64 KiB" in result.detail
    assert sent.bytes < 10 * 1024 * 1024  # stopped long before the 200 MB


async def test_a_dripping_reply_ends_at_the_timeout() -> None:
    def drip(h: BaseHTTPRequestHandler, sent: Sent) -> None:
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        for _ in range(1000):
            h.wfile.write(b"x")
            h.wfile.flush()
            time.sleep(0.05)

    with serving(handler(drip, Sent())) as url:
        started = time.monotonic()
        result = await ask(url, timeout="1s")
    assert time.monotonic() - started < 3.0
    assert not result.ok and "did not answer within 1 s" in result.detail


async def test_only_the_status_is_recorded_and_a_signature_is_sent_with_a_key() -> None:
    sent = Sent()
    with serving(handler(replying(418, MARK.encode()), sent)) as url:
        result = await ask(url)
    assert (result.ok, result.detail) == (False, "HTTP 418")
    (headers,) = sent.requests
    assert "x-canaryml-signature" not in {key.lower() for key in headers}
    assert headers["Content-Type"] == "application/json"


async def test_a_notification_that_cannot_be_delivered_is_told_never_raised() -> None:
    target = api.NotificationSpec(url="http://127.0.0.1:9/")  # refused at once
    message = notifications.Message(target, "rolledBack", {"event": "rolledBack"})
    (outcome,) = await delivery.send([message], kube=NoSecrets(), namespace="ns")
    assert "unreachable" in outcome
