"""A real MLflow tracking server for the tests: `mlflow server` on loopback, a SQLite backend
and a local artifact folder it serves itself (clients fetch artifacts over HTTP, as in a
cluster), started in its own process group and stopped with it (the server starts uvicorn
workers as children). Readiness is polled on /health, never a fixed sleep.

    with MlflowServer(tmp_path) as mlflow_server:
        mlflow_server.url                   # http://127.0.0.1:PORT, the MLFLOW_TRACKING_URI
        mlflow_server.stop(); mlflow_server.start()   # the same port and database again

The server's job runner (huey consumers, which nothing here needs) is turned off.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import TracebackType

import httpx

from .conftest import free_port

READY_TIMEOUT_S = 120.0  # the first start creates the database (migrations): ~10-35 s


def mlflow_binary() -> str | None:
    """The `mlflow` command of the test environment (the dev extra installs it)."""
    beside = Path(sys.executable).with_name("mlflow")
    return str(beside) if beside.is_file() else shutil.which("mlflow")


class MlflowServer:
    def __init__(self, root: Path, *, binary: str) -> None:
        self.root = root
        self.binary = binary
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self._log = root / "mlflow.log"

    def start(self) -> MlflowServer:
        command = [
            self.binary, "server",
            "--backend-store-uri", f"sqlite:///{self.root / 'mlflow.db'}",
            "--artifacts-destination", str(self.root / "artifacts"),
            "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
        ]  # fmt: skip
        env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
        with self._log.open("ab") as log:
            self.process = subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
            )
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"mlflow server exited: {self.log()}")
            try:
                if httpx.get(f"{self.url}/health", timeout=1.0).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError(f"mlflow server not ready within {READY_TIMEOUT_S} s: {self.log()}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        try:
            os.killpg(process.pid, signal.SIGTERM)  # the server and the workers it started
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()

    def log(self) -> str:
        return self._log.read_text(errors="replace")[-4000:]

    def __enter__(self) -> MlflowServer:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()
