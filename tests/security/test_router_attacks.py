"""Attacks on a real `canaryml router` process through its upstreams and its traffic port (issue
16 items 3, 4 and 10): junk traffic diluting a canary's error rate, endless upstream and shadow
answers, a connection flood towards an upstream, an impossible status, the admin endpoints, and
clients that hang up. Upstreams are raw asyncio servers (tests/security/raw_upstream.py) in a
thread of the test process.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import free_port, router_command
from tests.security.conftest import Spawned
from tests.security.probes import LivenessProbe, rss_mb
from tests.security.raw_upstream import (
    PREDICTION,
    ThreadedUpstream,
    answer,
    endless_body,
    read_request,
)

pytestmark = pytest.mark.integration

NAME = "iris"
MiB = 1024 * 1024


def _start_router(spawn: Callable[..., Spawned], *args: str) -> tuple[Spawned, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    command = router_command(port, "--model-deployment", NAME, "--log-level", "warning", *args)
    return spawn(command, f"{url}/router/readyz"), url


def _total(url: str, name: str = "canaryml_requests_total", **labels: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


def _eventually(probe: Callable[[], Any], *, within: float = 10.0) -> None:
    deadline = time.monotonic() + within
    while not probe():
        assert time.monotonic() < deadline, "not within the time"
        time.sleep(0.05)


class OneInFiveFails:
    """A model server whose every fifth prediction is a 500; other paths are its 404."""

    def __init__(self) -> None:
        self.predictions = 0
        self.upstream = ThreadedUpstream(self.handle)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.upstream.upstream.heads[-1].startswith(b"POST /predict "):
            await answer(status=b"404 Not Found", body=b"{}")(reader, writer)
            return
        self.predictions += 1
        status = b"500 Internal Server Error" if self.predictions % 5 == 0 else b"200 OK"
        await answer(status=status)(reader, writer)


def test_junk_paths_do_not_dilute_a_failing_canary(
    spawn: Callable[..., Spawned],
) -> None:
    with ThreadedUpstream(answer()) as stable, OneInFiveFails().upstream as canary:
        _, url = _start_router(
            spawn,
            "--upstream", f"stable={stable.url}", "--upstream", f"canary={canary.url}",
            "--version", "stable=1.0.0", "--version", "canary=1.1.0", "--canary-weight", "100",
        )  # fmt: skip
        with httpx.Client(base_url=url, timeout=10) as client:
            for _ in range(20):
                client.post("/predict", json={})
            for i in range(200):
                client.get(f"/anything/{i}")
        canary_series = {"track": "canary", "version": "1.1.0", "source": "router"}
        errors = _total(url, code="500", **canary_series)
        assert (errors, _total(url, **canary_series)) == (4, 20)  # 20 %, not 4/220


def test_an_endless_upstream_answer_is_a_502_with_bounded_memory(
    spawn: Callable[..., Spawned],
) -> None:
    with ThreadedUpstream(endless_body) as endless:
        router, url = _start_router(spawn, "--upstream", f"stable={endless.url}")
        before = rss_mb(router.pid)
        with LivenessProbe(f"{url}/router/healthz") as probe, httpx.Client(timeout=30) as client:
            for _ in range(3):
                response = client.post(f"{url}/predict", json={})
                assert response.status_code == 502
                assert "over 16777216 bytes" in response.json()["error"]
            time.sleep(0.6)  # a few probes after the last one
        grown = rss_mb(router.pid) - before
        probe.assert_live()
    assert grown < 100, f"the router grew by {grown:.0f} MiB"  # was 3.6 GB
    assert "Traceback" not in router.output()


def test_an_endless_shadow_answer_is_a_shadow_error_with_bounded_memory(
    spawn: Callable[..., Spawned],
) -> None:
    with ThreadedUpstream(answer()) as stable, ThreadedUpstream(endless_body) as shadow:
        router, url = _start_router(
            spawn,
            "--upstream", f"stable={stable.url}", "--upstream", f"shadow={shadow.url}",
            "--version", "stable=1.0.0", "--shadow-percent", "100",
        )  # fmt: skip
        before = rss_mb(router.pid)
        with LivenessProbe(f"{url}/router/healthz") as probe, httpx.Client(timeout=30) as client:
            for _ in range(3):
                response = client.post(f"{url}/predict", json={})
                assert (response.status_code, response.content) == (200, PREDICTION)
            _eventually(lambda: _total(url, "canaryml_shadow_comparisons_total") == 3)
            time.sleep(0.6)
        grown = rss_mb(router.pid) - before
        probe.assert_live()
        errors = _total(url, "canaryml_shadow_comparisons_total", result="error", version="1.0.0")
        assert errors == 3
        assert _total(url, track="shadow", code="502") == 3
    assert grown < 100, f"the router grew by {grown:.0f} MiB"  # was 2.4 GB


def test_concurrent_requests_open_at_most_the_cap_of_upstream_connections(
    spawn: Callable[..., Spawned],
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.3)
        await answer()(reader, writer)

    with ThreadedUpstream(slow) as upstream:
        _, url = _start_router(spawn, "--upstream", f"stable={upstream.url}")

        async def flood() -> list[int]:
            limits = httpx.Limits(max_connections=300)
            async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
                answers = await asyncio.gather(
                    *(client.post("/predict", json={}) for _ in range(300))
                )
            return [a.status_code for a in answers]

        codes = asyncio.run(flood())
        assert codes == [200] * 300
        assert 0 < upstream.accepted <= 100, upstream.accepted  # was 300


def test_an_upstream_status_999_is_a_502(
    spawn: Callable[..., Spawned],
) -> None:
    with ThreadedUpstream(answer(status=b"999 Nonsense")) as weird:
        _, url = _start_router(spawn, "--upstream", f"stable={weird.url}")
        response = httpx.post(f"{url}/predict", json={}, timeout=10)  # was: connection dropped
        assert response.status_code == 502
        assert "outside 100..599" in response.json()["error"]


def test_weights_are_unreachable_from_the_traffic_port(
    spawn: Callable[..., Spawned],
) -> None:
    with ThreadedUpstream(answer(status=b"404 Not Found", body=b"{}")) as stable:
        admin_port = free_port()
        _, url = _start_router(
            spawn,
            "--upstream", f"stable={stable.url}", "--upstream", f"canary={stable.url}",
            "--admin", "--admin-port", str(admin_port),
        )  # fmt: skip
        with httpx.Client(base_url=url, timeout=10) as traffic:
            for path in ("/router/weights", "/router%2fweights", "/router%2Fweights"):
                assert traffic.get(path).status_code == 404, path
                put = traffic.put(path, json={"canaryWeight": 100})
                assert put.status_code == 404, path
            assert "canaryml_router_canary_weight" in traffic.get("/metrics").text
        with httpx.Client(base_url=f"http://127.0.0.1:{admin_port}", timeout=10) as admin:
            assert admin.get("/router/weights").json()["canaryWeight"] == 0  # untouched
            repoint = admin.put("/router/weights", json={"upstreams": {"stable": "http://evil"}})
            assert repoint.status_code == 403
            assert admin.put("/router/weights", json={"canaryWeight": 5}).status_code == 200


def test_clients_that_hang_up_are_499_without_a_traceback(
    spawn: Callable[..., Spawned],
) -> None:
    async def slow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.5)
        await answer()(reader, writer)

    with ThreadedUpstream(slow) as upstream:
        router, url = _start_router(
            spawn,
            "--upstream", f"stable={upstream.url}", "--version", "stable=1.0.0",
        )  # fmt: skip
        port = int(url.rsplit(":", 1)[1])
        head = b"POST /predict HTTP/1.1\r\nhost: r\r\ncontent-type: application/json\r\n"
        for body, sent in ((b"{}", b"{}"), (b"{" + b" " * 98 + b"}", b"{ ")):
            # Mid-body (sent is short of content-length), then while the model is working.
            with socket.create_connection(("127.0.0.1", port)) as client:
                client.sendall(head + b"content-length: %d\r\n\r\n" % len(body) + sent)
                time.sleep(0.15)
        _eventually(lambda: _total(url, code="499", track="stable", version="1.0.0") == 2)
        time.sleep(0.5)  # the slow answer came in after the hang-up: still a 499
        assert _total(url, code="499") == 2
        assert _total(url, code="500") == _total(url, code="200") == 0
    assert "Traceback" not in router.output()


def test_read_request_helper_reads_one_request() -> None:
    """The raw upstreams' own request reader: a body is consumed, not taken as the next head."""

    async def run() -> bytes:
        reader = asyncio.StreamReader()
        reader.feed_data(b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}NEXT")
        reader.feed_eof()
        assert await read_request(reader) == b"POST / HTTP/1.1\r\ncontent-length: 2\r\n\r\n"
        return await reader.read()

    assert asyncio.run(run()) == b"NEXT"
