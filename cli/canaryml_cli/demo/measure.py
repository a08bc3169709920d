"""Where the demo's analyses get their numbers: the same checks as the operator's, two ways.

- `PrometheusMeasurer`: the operator's own PromQL (`checks.build_queries`) against a Prometheus
  (one the demo started, or the user's `--prometheus URL`), through the operator's provider.
- `ScrapeMeasurer`: no Prometheus; the demo scrapes every process's `/metrics` each second and
  computes the same checks from the samples (`scrape.measure_scraped`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Protocol

import httpx
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_operator import checks, providers
from canaryml_operator.measurements import Measurements
from canaryml_operator.state import Owner

from canaryml_cli.demo.scrape import ScrapeHistory, measure_scraped, parse_exposition

SCRAPE_INTERVAL_S: Final = 1.0
QUERY_TIMEOUT_S: Final = 2.0
# Scrapes kept for the counts since a step began: the demo's steps are seconds long; a longer
# one counts from the oldest kept scrape.
SINCE_STEP_KEEP_SECONDS: Final = 600.0


class Measurer(Protocol):
    """Where the analyses get their numbers; `measure` is the loop's `Measure` port."""

    async def measure(
        self,
        *,
        spec: api.ModelDeploymentSpec,
        owner: Owner,
        status: api.ModelDeploymentStatus,
        now: datetime,
    ) -> Measurements: ...

    async def aclose(self) -> None: ...


class PrometheusMeasurer:
    """The operator's queries against Prometheus at `url`, whose targets carry the owner's
    namespace (as a cluster's Prometheus adds it)."""

    def __init__(self, *, url: str) -> None:
        self._provider = providers.PrometheusProvider(url=url, timeout=QUERY_TIMEOUT_S)

    async def measure(
        self,
        *,
        spec: api.ModelDeploymentSpec,
        owner: Owner,
        status: api.ModelDeploymentStatus,
        now: datetime,
    ) -> Measurements:
        queries = checks.build_queries(
            spec=spec,
            name=owner.name,
            namespace=owner.namespace,
            status=status,
            at=now,
            source=telemetry.SOURCE_ROUTER,
        )
        return await providers.measure(provider=self._provider, queries=queries, at=now)

    async def is_online(self) -> bool:
        return await self._provider.is_online()

    async def aclose(self) -> None:
        await self._provider.aclose()


class ScrapeMeasurer:
    """Scrapes `targets` (base URLs) every second into a window of history."""

    def __init__(self, *, targets: Sequence[str], window_seconds: float) -> None:
        self.targets = list(targets)
        # The window, and the scrapes a step's counts since it began read (sequential checks).
        self.keep_seconds = max(window_seconds, SINCE_STEP_KEEP_SECONDS) + 5 * SCRAPE_INTERVAL_S
        self.history = ScrapeHistory()
        self._client = httpx.AsyncClient(timeout=SCRAPE_INTERVAL_S)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def measure(
        self,
        *,
        spec: api.ModelDeploymentSpec,
        owner: Owner,
        status: api.ModelDeploymentStatus,
        now: datetime,
    ) -> Measurements:
        # Direct scrapes carry no namespace label: the scope has none.
        return measure_scraped(
            history=self.history, spec=spec, name=owner.name, at=now, status=status
        )

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._client.aclose()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            await asyncio.gather(*(self._scrape(target) for target in self.targets))
            now = datetime.now(UTC)
            self.history.prune(before=now - timedelta(seconds=self.keep_seconds))
            next_at += SCRAPE_INTERVAL_S
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    async def _scrape(self, target: str) -> None:
        # A target that does not answer (stopped, starting) simply has no sample this time,
        # as in Prometheus.
        try:
            response = await self._client.get(f"{target}/metrics")
        except httpx.HTTPError:
            return
        if response.status_code != 200:
            return
        with contextlib.suppress(ValueError):
            samples = parse_exposition(response.text)
            self.history.add(target=target, time=datetime.now(UTC), samples=samples)
