"""Connection-level attacks on a real `canaryml serve` and a real `canaryml router` (issue 16,
items 1, 3 and 4): a header line that never ends, a 20 MB header, heads never finished, partial
bodies from many connections, a Content-Length larger than the body, over-limit bodies, and a
client that hangs up mid-body. Both programs share the limits (canaryml_httpd); each attack runs
against each. The header and body timeouts are set to 1 s through the environment so that the
tests are fast; every other limit is at its default.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import free_port, router_command, serve_command
from tests.security.probes import LivenessProbe, rss_mb

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
MAX_BODY = 8 * MiB  # the default of both programs (docs/serving.md)
TIMEOUT_S = 1.0  # header and body timeouts of these tests
SHORT_TIMEOUTS = {"HEADER_TIMEOUT": str(TIMEOUT_S), "BODY_TIMEOUT": str(TIMEOUT_S)}


@dataclass
class Target:
    name: str
    url: str
    live: str
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _start(
    command: list[str], ready: str, env: dict[str, str], log: Path
) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"exited with {process.returncode}:\n{log.read_text()}")
        try:
            if httpx.get(ready, timeout=1.0).status_code == 200:
                return process
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"{ready} not ready:\n{log.read_text()}")


@pytest.fixture(scope="module")
def targets(
    example_models: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Target]]:
    """A model server and a static router in front of it, both with 1 s timeouts."""
    folder = tmp_path_factory.mktemp("connections")
    started: list[subprocess.Popen[bytes]] = []
    try:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {f"CANARYML_{k}": v for k, v in SHORT_TIMEOUTS.items()}
        log = folder / "server.log"
        process = _start(
            serve_command(example_models["stable"], port, "--model-deployment", "x"),
            f"{url}/v2/health/ready",
            env,
            log,
        )
        started.append(process)
        server = Target("server", url, f"{url}/v2/health/live", process, log)
        port = free_port()
        router_url = f"http://127.0.0.1:{port}"
        env = {f"CANARYML_ROUTER_{k}": v for k, v in SHORT_TIMEOUTS.items()}
        log = folder / "router.log"
        command = router_command(
            port, "--model-deployment", "x", "--upstream", f"stable={url}",
            "--log-level", "warning",
        )  # fmt: skip
        process = _start(command, f"{router_url}/router/readyz", env, log)
        started.append(process)
        router = Target("router", router_url, f"{router_url}/router/healthz", process, log)
        yield {"server": server, "router": router}
    finally:
        for process in started:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


@pytest.fixture(params=["server", "router"])
def target(request: pytest.FixtureRequest, targets: dict[str, Target]) -> Target:
    return targets[request.param]


def _connect(target: Target) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", target.port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _head(target: Target, *extra: str, length: int | None = None) -> bytes:
    lines = ["POST /predict HTTP/1.1", f"host: {target.name}", "content-type: application/json"]
    if length is not None:
        lines.append(f"content-length: {length}")
    return ("\r\n".join([*lines, *extra]) + "\r\n\r\n").encode()


def _answer(sock: socket.socket, within: float) -> bytes:
    """What the peer sent until it closed, or all it sent within `within` seconds; a reset
    after an answer keeps the answer."""
    received = b""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        if not select.select([sock], [], [], left)[0]:
            break
        try:
            data = sock.recv(65536)
        except ConnectionError:
            break
        if not data:
            break
        received += data
    return received


def _stream_until_answer(sock: socket.socket, first: bytes, chunk: bytes, seconds: float) -> bytes:
    """Send `first`, then `chunk` over and over for up to `seconds`, until the peer answers or
    stops reading; then what it answered."""
    deadline = time.monotonic() + seconds
    sock.sendall(first)
    sock.settimeout(0.5)
    while time.monotonic() < deadline:
        if select.select([sock], [], [], 0)[0]:
            break
        try:
            sock.sendall(chunk)
        except TimeoutError:  # the peer stopped reading
            break
        except ConnectionError:
            return b""
    return _answer(sock, within=2.0)


def _status(answer: bytes) -> int | None:
    if not answer.startswith(b"HTTP/1.1 "):
        return None
    return int(answer[9:12])


def test_a_header_line_that_never_ends_is_refused_and_the_loop_stays_live(
    target: Target,
) -> None:
    """It was: 5 of 6 liveness probes timed out (the parser concatenating a 100 MB value)."""
    with LivenessProbe(target.live) as probe, _connect(target) as sock:
        started = time.monotonic()
        answer = _stream_until_answer(
            sock, b"GET / HTTP/1.1\r\nhost: x\r\nx-long: ", b"a" * 65536, seconds=4.0
        )
        elapsed = time.monotonic() - started
        time.sleep(0.6)  # a few probes after the attack too
    assert _status(answer) in (431, None), answer[:200]
    assert elapsed < 3.5, f"the connection was still read after {elapsed:.1f} s"
    probe.assert_live()


def test_a_20_mb_header_gets_431(target: Target) -> None:
    """It was: a 200."""
    header = b"GET /v2/health/live HTTP/1.1\r\nhost: x\r\nx-big: "
    rest = b"a" * (20 * MiB) + b"\r\n\r\n"
    with _connect(target) as sock:
        sock.sendall(header)
        sock.settimeout(0.5)
        try:
            for start in range(0, len(rest), 256 * 1024):
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(rest[start : start + 256 * 1024])
        except (TimeoutError, ConnectionError):
            pass
        answer = _answer(sock, within=3.0)
    assert _status(answer) == 431, answer[:200]
    assert b"request head over 32768 bytes" in answer


def test_too_many_headers_get_431(target: Target) -> None:
    extra = [f"x-h{i}: v" for i in range(150)]
    with _connect(target) as sock:
        sock.sendall(_head(target, *extra, length=2) + b"{}")
        answer = _answer(sock, within=3.0)
    assert _status(answer) == 431, answer[:200]
    assert b"more than 100 header fields" in answer


def test_heads_never_finished_are_closed_after_the_header_timeout(target: Target) -> None:
    """It was: 1,000 such connections were never closed."""
    socks = [_connect(target) for _ in range(200)]
    try:
        for sock in socks:
            sock.sendall(b"POST /predict HTTP/1.1\r\nhost: x\r\ncontent-")
        idle = _connect(target)  # connected, never sends a byte
        socks.append(idle)
        started = time.monotonic()
        answers = {sock: b"" for sock in socks}
        open_ = set(socks)
        while open_ and time.monotonic() - started < TIMEOUT_S + 5:
            for sock in select.select(list(open_), [], [], 0.5)[0]:
                try:
                    data = sock.recv(65536)
                except ConnectionError:
                    data = b""
                if data:
                    answers[sock] += data
                else:
                    open_.discard(sock)
        elapsed = time.monotonic() - started
        assert not open_, f"{len(open_)} of {len(socks)} connections still open"
        assert elapsed >= TIMEOUT_S * 0.8, "closed before the header timeout"
        statuses = {_status(answers[sock]) for sock in socks[:-1]}
        assert statuses == {408}, statuses
        assert answers[idle] == b""  # nothing was asked: closed without an answer
        probe = httpx.get(target.live, timeout=1.0)
        assert probe.status_code == 200
    finally:
        for sock in socks:
            sock.close()


def test_a_content_length_larger_than_the_body_ends_in_408(target: Target) -> None:
    """It was: the request hung forever."""
    with _connect(target) as sock:
        sock.sendall(_head(target, length=100) + b'{"x": 1')
        started = time.monotonic()
        answer = _answer(sock, within=TIMEOUT_S + 4)
        elapsed = time.monotonic() - started
    assert _status(answer) == 408, answer[:200]
    assert TIMEOUT_S * 0.8 <= elapsed < TIMEOUT_S + 3


def test_an_over_limit_body_gets_413_before_it_is_sent(target: Target) -> None:
    """The same default on both (it was 64 MB on the router, 8 MiB on the server); refused from
    the Content-Length, without reading the body."""
    with _connect(target) as sock:
        sock.sendall(_head(target, length=MAX_BODY + 1))
        answer = _answer(sock, within=3.0)
    assert _status(answer) == 413, answer[:200]
    assert f"body over {MAX_BODY} bytes".encode() in answer


def test_a_client_that_sends_an_over_limit_body_at_once_reads_the_413(target: Target) -> None:
    """A client that does not wait (httpx sends the body at once) still gets the answer, not a
    reset: the refusal drops the rest of the body before closing."""
    answer = httpx.post(
        f"{target.url}/predict",
        content=b" " * (MAX_BODY + 1024),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code == 413
    assert answer.json() == {"error": f"body over {MAX_BODY} bytes"}


def test_an_over_limit_chunked_body_gets_413(target: Target) -> None:
    """Refused by the program itself while the body arrives (the router's was 64 MB)."""
    chunk = b"%x\r\n%s\r\n" % (MiB, b" " * MiB)
    with _connect(target) as sock:
        sock.sendall(_head(target, "transfer-encoding: chunked"))
        sock.settimeout(0.5)
        try:
            for _ in range(MAX_BODY // MiB + 1):
                if select.select([sock], [], [], 0)[0]:
                    break
                sock.sendall(chunk)
            sock.sendall(b"0\r\n\r\n")
        except (TimeoutError, ConnectionError):
            pass
        answer = _answer(sock, within=3.0)
    assert _status(answer) == 413, answer[:200]
    assert f'"error":"body over {MAX_BODY} bytes"'.encode() in answer


def test_a_body_of_the_limit_is_served(target: Target) -> None:
    """The limits leave a legitimate large request alone (the model answers it or says what is
    wrong with it, never 413)."""
    body = b'{"instances": [' + b" " * (MAX_BODY - 100) + b"]}"
    answer = httpx.post(
        f"{target.url}/predict",
        content=body,
        headers={"content-type": "application/json"},
        timeout=10,
    )
    assert answer.status_code not in (408, 413, 431, 503), answer.text[:200]


def test_partial_bodies_from_many_connections_stay_within_the_body_budget(
    target: Target,
) -> None:
    """It was: partial 8 MB bodies took a server from 188 to 1,257 MB and partial 63 MB bodies
    the router to 602 MB. Now at most the budget (64 MiB by default) of bodies is taken in; a
    request beyond it gets 503 with Retry-After at once."""
    connections, sent = 40, 7 * MiB
    before = rss_mb(target.process.pid)
    socks = [_connect(target) for _ in range(connections)]
    try:
        with LivenessProbe(target.live) as probe:
            for sock in socks:
                sock.sendall(_head(target, length=MAX_BODY))
            time.sleep(0.5)
            refused = [sock for sock in socks if select.select([sock], [], [], 0)[0]]
            admitted = [sock for sock in socks if sock not in refused]
            for sock in admitted:
                sock.sendall(b" " * sent)
            time.sleep(0.5)
            after = rss_mb(target.process.pid)
        answers = [_answer(sock, within=1.0) for sock in refused]
    finally:
        for sock in socks:
            sock.close()
    print(f"{target.name}: RSS {before:.0f} -> {after:.0f} MiB, {len(refused)} refused")
    assert 1 <= len(admitted) <= 64 * MiB // MAX_BODY
    assert all(_status(answer) == 503 for answer in answers), answers[:1]
    assert all(b"retry-after: 1" in answer for answer in answers)
    assert after - before < 150, f"RSS {before:.0f} -> {after:.0f} MiB"
    probe.assert_live()


def _counted(url: str, code: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "canaryml_requests_total" and sample.labels.get("code") == code
    )


def test_a_client_gone_mid_body_is_a_499_on_the_server_not_a_500(
    targets: dict[str, Target],
) -> None:
    """It was: each counted as a 500 with a traceback in the log (1,202 recorded, none sent)."""
    server = targets["server"]
    errors_before = _counted(server.url, "500")
    gone_before = _counted(server.url, "499")
    for _ in range(3):
        with _connect(server) as sock:
            sock.sendall(_head(server, length=1000) + b'{"instances": [')
            time.sleep(0.1)
    deadline = time.monotonic() + 5
    while _counted(server.url, "499") < gone_before + 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _counted(server.url, "499") == gone_before + 3
    assert _counted(server.url, "500") == errors_before
    # Nor anywhere else in these tests: no refusal or timeout above left a traceback.
    assert "Traceback" not in server.output()
    assert "Traceback" not in targets["router"].output()
