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
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
from canaryml_cli.demo.prometheus import (
    LOG_TAIL,
    LocalPrometheus,
    PrometheusError,
    Target,
    config,
    free_port,
    prometheus_binary,
)

POLL_S = 0.2

Predicate = Callable[[float | None], bool]

# `basic_auth=True` protects the HTTP API with this user (bcrypt cost 4: fast to check).
BASIC_AUTH = ("canaryml", "not-a-secret")
_BASIC_AUTH_BCRYPT = "$2b$04$NF5L0hEOYQD7nD8DJp/V3uZvHyva4CxuG7.P8MuAFxTOIcunbHO.G"

__all__ = [
    "BASIC_AUTH",
    "RunningPrometheus",
    "Target",
    "config",
    "free_port",
    "prometheus_binary",
    "start_prometheus",
]


def has_value(value: float | None) -> bool:
    return value is not None


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


class RunningPrometheus(LocalPrometheus):
    """The package's LocalPrometheus, plus what tests ask of it: queries and waiting for data.

    Failures are AssertionErrors, so that pytest shows them as test failures with the log.
    """

    def __init__(
        self, *, root: Path, targets: Sequence[Target], binary: str, basic_auth: bool = False
    ) -> None:
        super().__init__(
            root=root,
            targets=targets,
            binary=binary,
            web_config={"basic_auth_users": {BASIC_AUTH[0]: _BASIC_AUTH_BCRYPT}}
            if basic_auth
            else None,
            auth=BASIC_AUTH if basic_auth else None,
        )

    def start(self) -> RunningPrometheus:
        try:
            super().start()
        except PrometheusError as error:
            raise AssertionError(str(error)) from None
        return self

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
