"""Real processes: `canaryml serve` and Prometheus on free loopback ports, always stopped."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from tests.tools import unavailable

from .prometheus import RunningPrometheus, Target, prometheus_binary, start_prometheus

READY_TIMEOUT_S = 60.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def serve_command(model: str | Path, port: int, *args: str, pin: bool = True) -> list[str]:
    """`canaryml serve`, pinned to the artifact's digest when `model` is a local artifact
    folder (the server refuses an unpinned model by default) unless `pin` is False."""
    manifest = Path(model) / "manifest.json"
    if pin and "--sha256" not in args and manifest.is_file():
        args = (*args, "--sha256", hashlib.sha256(manifest.read_bytes()).hexdigest())
    return [
        sys.executable, "-m", "canaryml_cli", "serve", str(model),
        "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip


def router_command(port: int, *args: str) -> list[str]:
    return [
        sys.executable, "-m", "canaryml_cli", "router",
        "--host", "127.0.0.1", "--port", str(port), *args,
    ]  # fmt: skip


def wait_ready(
    process: subprocess.Popen[bytes],
    url: str,
    *,
    path: str = "/v2/health/ready",
    what: str = "server",
) -> None:
    """Poll `url + path` until it answers 200; fail with the process's output if it exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            output = process.stdout.read().decode() if process.stdout else ""
            raise AssertionError(f"{what} exited with {process.returncode}:\n{output}")
        try:
            if httpx.get(f"{url}{path}", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{what} at {url} not ready within {READY_TIMEOUT_S} s")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    if process.stdout:
        process.stdout.close()


@pytest.fixture
def start_server() -> Iterator[Callable[..., str]]:
    """start_server(model, *cli_args, env={...}) -> base URL of a ready server."""
    processes: list[subprocess.Popen[bytes]] = []

    def start(model: str | Path, *args: str, env: dict[str, str] | None = None) -> str:
        port = free_port()
        process = subprocess.Popen(
            serve_command(model, port, *args),
            env={**os.environ, **(env or {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        processes.append(process)
        url = f"http://127.0.0.1:{port}"
        wait_ready(process, url)
        return url

    yield start
    for process in processes:
        stop(process)


@pytest.fixture
def prometheus_bin() -> str:
    """The prometheus binary; skipped where it is missing, but a failure in CI (CI=true)."""
    binary = prometheus_binary()
    if binary is None:
        unavailable(
            "prometheus is not installed (apt-get install prometheus; scripts/test.sh does)"
        )
    return binary


@pytest.fixture
def prometheus(tmp_path: Path, prometheus_bin: str) -> Iterator[Callable[..., RunningPrometheus]]:
    """prometheus(targets, basic_auth=False) -> a ready Prometheus scraping them every second.

    Each call starts one more instance (own port, own data directory); all are stopped at
    teardown, also those a test stopped and started again.
    """
    running: list[RunningPrometheus] = []

    def start(targets: Sequence[Target], *, basic_auth: bool = False) -> RunningPrometheus:
        root = tmp_path / f"prometheus-{len(running)}"
        instance = start_prometheus(root, targets, binary=prometheus_bin, basic_auth=basic_auth)
        running.append(instance)
        return instance

    yield start
    for instance in running:
        instance.stop()
