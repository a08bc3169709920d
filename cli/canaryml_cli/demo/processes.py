"""The demo's child processes: `canaryml serve` and `canaryml router`, each on a free port.

They run the same code as the pods in a cluster (`python -m canaryml_cli serve|router`), log to
files in the work folder, and are all stopped at the end, also when the demo fails or is
interrupted. Each runs in its own session, so a Ctrl-C in the terminal reaches the demo only,
and the demo stops them in order instead of every process dying at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import httpx

from canaryml_cli.demo.prometheus import free_port

READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
LOG_TAIL: Final = 3000


class DemoError(RuntimeError):
    """The demo itself could not run (not the rollout failing: that is an outcome)."""


def canaryml_command(*args: str) -> list[str]:
    """`canaryml ARGS` with this interpreter: the same installation, whatever PATH says."""
    return [sys.executable, "-m", "canaryml_cli", *args]


@dataclass
class LocalProcess:
    """One started process with a base URL."""

    name: str
    url: str
    log_path: Path
    popen: subprocess.Popen[bytes]

    @property
    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return ""

    async def wait_ready(self, *, path: str, within: float = READY_TIMEOUT_S) -> None:
        """Until `GET url+path` answers 200; DemoError with the process's log when it exits
        or takes too long."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(timeout=1.0) as client:
            while time.monotonic() < deadline:
                if not self.alive:
                    raise DemoError(
                        f"{self.name} exited with code {self.popen.returncode}:\n{self.log_tail()}"
                    )
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get(f"{self.url}{path}")).status_code == 200:
                        return
                await asyncio.sleep(0.05)
        raise DemoError(f"{self.name} not ready within {within:g} s:\n{self.log_tail()}")

    def stop(self) -> None:
        """SIGTERM (uvicorn finishes the requests in flight), SIGKILL if it hangs."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()


@dataclass
class ProcessGroup:
    """Every process the demo started; `stop_all` stops the ones still running."""

    log_dir: Path
    processes: list[LocalProcess] = field(default_factory=list)

    def start(
        self, *, name: str, args: Sequence[str], env: Mapping[str, str] | None = None
    ) -> LocalProcess:
        """Start `canaryml ARGS --host 127.0.0.1 --port FREE`; `name` names its log file."""
        port = free_port()
        self.log_dir.mkdir(parents=True, exist_ok=True)
        log_path = self.log_dir / f"{name.replace(' ', '-')}.log"
        command = canaryml_command(*args, "--host", "127.0.0.1", "--port", str(port))
        with log_path.open("ab") as log:
            popen = subprocess.Popen(
                command,
                env={**os.environ, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        process = LocalProcess(name, f"http://127.0.0.1:{port}", log_path, popen)
        self.processes.append(process)
        return process

    def stop_all(self) -> None:
        """Newest first: the router goes before the servers it sends to."""
        for process in reversed(self.processes):
            process.stop()
