"""spec.registry.mlflow.trackingUri points wherever its author likes: the operator's write-back
keeps the rules of every call to such a URL (`outbound`) against a hostile "MLflow" on
loopback. A redirect is a failed write, never followed; a huge reply ends at the size limit;
the reply's text never reaches the status; and the rollout's status is returned, never an
exception."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler

import pytest
from canaryml_api import resource as api
from canaryml_operator import registry

from tests.local_http import serving
from tests.security.test_prometheus_replies import MARK, Sent, endless, handler, replying

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)


def spec(url: str) -> api.ModelDeploymentSpec:
    return api.parse_spec(
        {
            "model": {"uri": "models:/iris/1", "version": "1"},
            "registry": {"mlflow": {"trackingUri": url}, "onRollback": {}},
        }
    )


ROLLED_BACK = api.ModelDeploymentStatus(
    history=[
        api.HistoryEntry(
            version="2", uri="models:/iris/2", event="rolledBack", time=NOW, reason="bad"
        )
    ]
)


async def write(url: str) -> api.RegistryWrite:
    status = await registry.write_back(spec(url), ROLLED_BACK, now=NOW, token="tkn")
    [record] = status.registry_writes
    assert not record.done
    return record


async def test_a_redirect_is_a_failed_write_and_never_followed() -> None:
    elsewhere = Sent()
    with serving(handler(replying(200, b"{}"), elsewhere)) as target:

        def redirect(h: BaseHTTPRequestHandler, sent: Sent) -> None:
            h.send_response(307)
            h.send_header("Location", f"{target}/api/2.0/mlflow/model-versions/set-tag")
            h.send_header("Content-Length", "0")
            h.end_headers()

        asked = Sent()
        with serving(handler(redirect, asked)) as url:
            record = await write(url)
    assert "a redirect: redirects are not followed" in record.last_result
    assert elsewhere.requests == []  # nor the token with it
    assert asked.requests[0]["Authorization"] == "Bearer tkn"


async def test_a_huge_reply_ends_at_the_cap() -> None:
    sent = Sent()
    with serving(handler(endless(False), sent)) as url:
        record = await write(url)
    assert "answered more than 64 KiB" in record.last_result
    assert sent.bytes < 50 * 1024 * 1024


async def test_the_reply_text_never_reaches_the_status() -> None:
    body = json.dumps({"error_code": "RESOURCE_DOES_NOT_EXIST", "message": MARK}).encode()
    with serving(handler(replying(404, body), Sent())) as url:
        record = await write(url)
    assert record.last_result.endswith("answered HTTP 404 RESOURCE_DOES_NOT_EXIST")
    assert MARK not in record.model_dump_json()
    hostile = json.dumps({"error_code": MARK + " x"}).encode()
    with serving(handler(replying(500, hostile), Sent())) as url:
        record = await write(url)
    assert record.last_result.endswith("answered HTTP 500")
