"""A real Prometheus for the tests: started on loopback, scraping given targets every second.

    with start_prometheus(tmp_path, [Target(url, {"namespace": "default"})]) as prometheus:
        prometheus.wait_for('sum(canaryml_requests_total)', lambda v: v == 10)
        prometheus.stop()   # ... Prometheus is down ...
        prometheus.start()  # same port, same data directory: earlier samples are still there

The Debian package `prometheus` provides the binary (scripts/test.sh installs it in CI). Its
system service, if the package started one, is never used: each test runs its own instance on
a free port with its own data directory. Nothing here sleeps a fixed time: the first rate()
needs a few scrapes, so tests poll with `wait_for` until Prometheus has what they need.
"""

from __future__ import annotations

import asyncio
import math
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import yaml

SCRAPE_INTERVAL = "1s"
READY_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
POLL_S = 0.2
LOG_TAIL = 4000

Predicate = Callable[[float | None], bool]

# `basic_auth=True` protects the HTTP API with this user (bcrypt cost 4: fast to check).
BASIC_AUTH = ("canaryml", "not-a-secret")
_BASIC_AUTH_BCRYPT = "$2b$04$NF5L0hEOYQD7nD8DJp/V3uZvHyva4CxuG7.P8MuAFxTOIcunbHO.G"


def free_port() -> int:
    """A loopback port free right now (this module stands alone: conftest imports it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def has_value(value: float | None) -> bool:
    return value is not None


def in_ci() -> bool:
    """CI services set CI=true (GitHub Actions, GitLab): there nothing may be skipped."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def prometheus_binary() -> str | None:
    return shutil.which("prometheus")


@dataclass(frozen=True)
class Target:
    """A `/metrics` endpoint to scrape (`url` as start_server returns it) and extra labels."""

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


def _instant_value(body: Any) -> float | None:
    """The value of a one-series (or scalar) answer; None when empty or NaN."""
    data = body["data"]
    if data["resultType"] == "scalar":
        pair = data["result"]
    elif not data["result"]:
        return None
    else:
        if len(data["result"]) > 1:
            raise AssertionError(f"wait_for needs a query with one series, got {data['result']}")
        pair = data["result"][0]["value"]
    value = float(pair[1])
    return None if math.isnan(value) else value


class RunningPrometheus:
    """One Prometheus process; `stop()` and `start()` again keep the port and the data."""

    def __init__(
        self, *, root: Path, targets: Sequence[Target], binary: str, basic_auth: bool = False
    ) -> None:
        self.root = root
        self.binary = binary
        self.auth = BASIC_AUTH if basic_auth else None
        self.config_path = root / "prometheus.yml"
        self.web_config_path = root / "web.yml"
        self.data_dir = root / "data"
        self.log_path = root / "prometheus.log"
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._process: subprocess.Popen[bytes] | None = None
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._write_config(targets)
        if basic_auth:
            users = {BASIC_AUTH[0]: _BASIC_AUTH_BCRYPT}
            self.web_config_path.write_text(yaml.safe_dump({"basic_auth_users": users}))

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> RunningPrometheus:
        """Start (again) and wait until `/-/ready`; an error says why, with Prometheus's log."""
        if self.running:
            return self
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self._command(), stdout=log, stderr=log)
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

    def set_targets(self, targets: Sequence[Target]) -> None:
        """Scrape these targets from now on (a config reload, no restart)."""
        self._write_config(targets)
        if self.running:
            response = httpx.post(f"{self.url}/-/reload", auth=self.auth, timeout=10.0)
            assert response.status_code == 200, f"reload failed: {response.text}"

    def __enter__(self) -> RunningPrometheus:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- queries -----------------------------------------------------------------------------

    def query(self, promql: str) -> float | None:
        """The value of an instant query now (one series or a scalar); None when empty."""
        response = httpx.get(
            f"{self.url}/api/v1/query", params={"query": promql}, auth=self.auth, timeout=10.0
        )
        assert response.status_code == 200, f"{promql}: {response.text}"
        return _instant_value(response.json())

    def wait_for(
        self, promql: str, predicate: Predicate = has_value, *, within: float = 30.0
    ) -> float | None:
        """Poll `promql` until `predicate(value)` holds; AssertionError with the last value."""
        deadline = time.monotonic() + within
        value = None
        while True:
            value = self.query(promql)
            if predicate(value):
                return value
            if time.monotonic() > deadline:
                raise AssertionError(self._timeout_message(promql, value, within))
            time.sleep(POLL_S)

    async def wait_for_async(
        self, promql: str, predicate: Predicate = has_value, *, within: float = 30.0
    ) -> float | None:
        """`wait_for` for async tests: the event loop keeps running while it polls."""
        deadline = time.monotonic() + within
        async with httpx.AsyncClient(base_url=self.url, auth=self.auth, timeout=10.0) as client:
            while True:
                response = await client.get("/api/v1/query", params={"query": promql})
                assert response.status_code == 200, f"{promql}: {response.text}"
                value = _instant_value(response.json())
                if predicate(value):
                    return value
                if time.monotonic() > deadline:
                    raise AssertionError(self._timeout_message(promql, value, within))
                await asyncio.sleep(POLL_S)

    def log(self) -> str:
        """The end of Prometheus's own log, for failure messages."""
        if not self.log_path.exists():
            return ""
        return self.log_path.read_text(errors="replace")[-LOG_TAIL:]

    # -- internals ---------------------------------------------------------------------------

    def _command(self) -> list[str]:
        web_config = [f"--web.config.file={self.web_config_path}"] if self.auth else []
        return [
            self.binary,
            *web_config,
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
                raise AssertionError(f"prometheus exited with {code}:\n{self.log()}")
            try:
                ready = httpx.get(f"{self.url}/-/ready", auth=self.auth, timeout=1.0)
                if ready.status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise AssertionError(f"prometheus not ready within {READY_TIMEOUT_S} s:\n{self.log()}")

    def _timeout_message(self, promql: str, value: float | None, within: float) -> str:
        targets = ""
        try:
            url = f"{self.url}/api/v1/targets"
            targets = httpx.get(url, auth=self.auth, timeout=5.0).text[:LOG_TAIL]
        except httpx.HTTPError as error:
            targets = f"(targets unavailable: {error})"
        return f"{promql} was {value} after {within} s; targets: {targets}\n{self.log()}"


def start_prometheus(
    root: Path,
    targets: Sequence[Target],
    *,
    binary: str | None = None,
    basic_auth: bool = False,
) -> RunningPrometheus:
    """A started Prometheus with its files under `root`; use it as a context manager.

    `basic_auth=True` requires BASIC_AUTH on every request (`.auth` holds it for httpx).
    """
    path = binary or prometheus_binary()
    if path is None:
        raise RuntimeError("prometheus is not installed (Debian: apt-get install prometheus)")
    running = RunningPrometheus(root=root, targets=targets, binary=path, basic_auth=basic_auth)
    return running.start()
