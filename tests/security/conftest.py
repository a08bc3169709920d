"""Attack tests run against real `canaryml serve` and `canaryml router` processes.

`spawn(command, ready_url)` starts a process whose output goes to a file (an attack can make a
process log a lot; a pipe nobody reads would block it), waits until `ready_url` answers 200 and
returns it; every process is stopped at the end of the test.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from tests.integration.conftest import (  # noqa: F401 - fixtures shared with this tier
    free_port,
    prometheus,
    prometheus_bin,
    router_command,
    serve_command,
    start_server,
)

pytestmark = pytest.mark.integration


class Spawned:
    def __init__(self, process: subprocess.Popen[bytes], log: Path) -> None:
        self.process = process
        self.log = log

    @property
    def pid(self) -> int:
        return self.process.pid

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Spawned]]:
    spawned: list[Spawned] = []

    def start(command: list[str], ready_url: str, *, env: dict[str, str] | None = None) -> Spawned:
        log = tmp_path / f"process-{len(spawned)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                command, env={**os.environ, **(env or {})}, stdout=out, stderr=subprocess.STDOUT
            )
        running = Spawned(process, log)
        spawned.append(running)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise AssertionError(f"exited with {process.returncode}:\n{running.output()}")
            try:
                if httpx.get(ready_url, timeout=1.0).status_code == 200:
                    return running
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{ready_url} not ready within 60 s:\n{running.output()}")

    yield start
    for running in spawned:
        if running.process.poll() is None:
            running.process.terminate()
            try:
                running.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                running.process.kill()
                running.process.wait()
