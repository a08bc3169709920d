"""A Prometheus of our own: started on loopback with its own config and data folder.

    prometheus = LocalPrometheus(root=work / "prometheus", targets=[Target(url, labels)])
    prometheus.start()   # returns once /-/ready answers; PrometheusError says why not
    ...
    prometheus.stop()    # SIGTERM, then SIGKILL if it hangs

Used by `canaryml demo` (when the `prometheus` binary is installed, e.g. Debian's package) and
by the integration tests. Its system service, if a package started one, is never touched: each
instance has a free port and its own data folder. Targets are scraped every second, and every
target carries its own labels (the demo adds the `namespace` a cluster's Prometheus would).
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import yaml

SCRAPE_INTERVAL: Final = "1s"
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 10.0
LOG_TAIL: Final = 4000


class PrometheusError(RuntimeError):
    """Prometheus could not be started, or is not installed."""


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@dataclass(frozen=True)
class Target:
    """A `/metrics` endpoint to scrape (`url` is its base URL) and extra labels."""

    url: str
    labels: Mapping[str, str] = field(default_factory=dict)
    metrics_path: str = "/metrics"

    @property
    def address(self) -> str:
        return urlsplit(self.url).netloc


def config(targets: Sequence[Target]) -> dict[str, Any]:
    """prometheus.yml: one job per metrics path, each target with its own labels."""
    jobs: dict[str, list[dict[str, Any]]] = {}
    for target in targets:
        jobs.setdefault(target.metrics_path, []).append(
            {"targets": [target.address], "labels": dict(target.labels)}
        )
    return {
        "global": {
            "scrape_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL,
            "evaluation_interval": SCRAPE_INTERVAL,
        },
        "scrape_configs": [
            {"job_name": f"canaryml-{index}", "metrics_path": path, "static_configs": statics}
            for index, (path, statics) in enumerate(sorted(jobs.items()))
        ],
    }


class LocalPrometheus:
    """One Prometheus process; `stop()` and `start()` again keep the port and the data."""

    def __init__(
        self,
        *,
        root: Path,
        targets: Sequence[Target],
        binary: str | None = None,
        web_config: Mapping[str, Any] | None = None,
        auth: tuple[str, str] | None = None,
    ) -> None:
        path = binary or prometheus_binary()
        if path is None:
            raise PrometheusError(
                "prometheus is not installed (Debian/Ubuntu: apt-get install prometheus)"
            )
        self.root = root
        self.binary = path
        self.auth = auth  # what clients send when web_config asks for basic auth
        self.config_path = root / "prometheus.yml"
        self.web_config_path = root / "web.yml" if web_config is not None else None
        self.data_dir = root / "data"
        self.log_path = root / "prometheus.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config(targets)
        if self.web_config_path is not None:
            self.web_config_path.write_text(yaml.safe_dump(dict(web_config or {})))

    def start(self) -> LocalPrometheus:
        """Start (again) and wait until `/-/ready`; PrometheusError with its log if it fails."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                self._command(), stdout=log, stderr=log, stdin=subprocess.DEVNULL
            )
        self._wait_ready()
        return self

    def stop(self) -> None:
        """Stop gracefully (a clean WAL for the next start); kill when it hangs."""
        process, self._process = self._process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log(self) -> str:
        """The end of Prometheus's own log, for error messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL:]

    def __enter__(self) -> LocalPrometheus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self) -> list[str]:
        web = [f"--web.config.file={self.web_config_path}"] if self.web_config_path else []
        return [
            self.binary,
            *web,
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.data_dir}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--web.enable-lifecycle",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]

    def _write_config(self, targets: Sequence[Target]) -> None:
        self.config_path.write_text(yaml.safe_dump(config(targets), sort_keys=False))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            process = self._process
            if process is None or process.poll() is not None:
                code = process.returncode if process else None
                raise PrometheusError(f"prometheus exited with {code}:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.url}/-/ready", auth=self.auth, timeout=1.0)
                if ready.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise PrometheusError(f"prometheus not ready within {READY_TIMEOUT_S:g} s:\n{self.log()}")
