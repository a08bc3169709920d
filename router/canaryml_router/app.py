"""The builtin traffic router as an ASGI app: a reverse proxy in front of one ModelDeployment's
model servers.

`create_router_app` builds a plain ASGI app (no framework: its per-request cost would be paid on
every proxied request) composed of four parts, each usable alone: `Routes` (the current table
and its upstream pools), `Proxy` (each request to the stable or canary track by weight or by a
sticky header's hash), `Mirror` (a share of prediction requests to the shadow after the client
has its answer, compared with the live answer) and `AdminEndpoints` (/metrics and /router/*).
The app itself is what the traffic port serves; `admin_app` is the admin listener's app (the
only one with /router/weights).
This module adds the lifecycle: the routing table comes from a weight source (the
ModelDeployment's status through a watch, see `follow`) started with the app, or is set at start
and, with `admin`, through `PUT /router/weights`.

The decisions themselves are pure functions in `core`; the upstream connections are the small
pooled client of `upstream`; `server` runs the app under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from types import TracebackType

from prometheus_client import CollectorRegistry

from canaryml_router.admin import (
    PREFIX,
    PUBLIC_PATHS,
    RAW_PREFIX,
    RAW_PUBLIC_PATHS,
    AdminEndpoints,
    raw_path,
)
from canaryml_router.asgi import Receive, Scope, Send
from canaryml_router.core import RateLimit, RoutingTable, WeightSource
from canaryml_router.metrics import RouterMetrics
from canaryml_router.mirror import Mirror
from canaryml_router.proxy import Proxy
from canaryml_router.ratelimit import DEFAULT_MAX_CLIENTS, ClientLimiter
from canaryml_router.routes import Routes
from canaryml_router.upstream import (
    ANSWER_BUDGET_BYTES,
    MAX_ANSWER_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
)

log = logging.getLogger("canaryml.router")


class RouterApp:
    """The router as an ASGI app. Use it with uvicorn, or `async with` it in tests: entering
    starts the weight source, leaving stops it and closes the upstream connections."""

    def __init__(
        self,
        *,
        model_deployment: str,
        table: RoutingTable | None,
        weight_source: WeightSource | None,
        admin: bool,
        upstream_timeout: float,
        shadow_timeout: float,
        max_mirrors: int,
        admin_upstreams: bool = False,
        max_connections: int = MAX_CONNECTIONS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_head_bytes: int = MAX_HEAD_BYTES,
        answer_budget_bytes: int = ANSWER_BUDGET_BYTES,
        rate_limit: RateLimit | None = None,
        rate_limit_max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if admin and weight_source is not None:
            raise ValueError("PUT /router/weights would fight the weight source: not both")
        self.model_deployment = model_deployment
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RouterMetrics(registry=self.registry, model_deployment=model_deployment)
        self.routes = Routes(
            model_deployment=model_deployment,
            metrics=self.metrics,
            max_connections=max_connections,
            max_answer_bytes=max_answer_bytes,
            max_head_bytes=max_head_bytes,
            answer_budget_bytes=answer_budget_bytes,
            default_rate_limit=rate_limit,
        )
        self.limiter = ClientLimiter(max_clients=rate_limit_max_clients)
        self.mirror = Mirror(
            model_deployment=model_deployment,
            metrics=self.metrics,
            shadow_timeout=shadow_timeout,
            max_mirrors=max_mirrors,
        )
        self.proxy = Proxy(
            routes=self.routes,
            metrics=self.metrics,
            mirror=self.mirror,
            upstream_timeout=upstream_timeout,
            random=random.random,
            limiter=self.limiter,
        )
        self.admin = AdminEndpoints(
            model_deployment=model_deployment,
            routes=self.routes,
            registry=self.registry,
            source="follow" if weight_source is not None else "static",
            admin=admin,
            admin_upstreams=admin_upstreams,
        )
        self.admin_app = self.admin.handle_admin
        # Bound once: the dispatch below is on every request's path.
        self._handle_proxied = self.proxy.handle
        self._handle_own = self.admin.handle
        self._weight_source = weight_source
        self._source_task: asyncio.Task[None] | None = None
        if table is not None:
            self.set_table(table)

    @property
    def table(self) -> RoutingTable | None:
        return self.routes.table

    def set_table(self, table: RoutingTable) -> None:
        """Route every request from now on by `table`; requests in flight finish as they were."""
        self.routes.set_table(table)

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._weight_source is not None and self._source_task is None:
            self._source_task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        assert self._weight_source is not None
        try:
            await self._weight_source(self.routes.set_table)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The source retries on its own; reaching this is a bug. Keep serving the last table.
            log.exception("the weight source of %s stopped", self.model_deployment)

    async def close(self) -> None:
        """Stop the weight source, let mirrors in flight finish briefly, close connections."""
        if self._source_task is not None:
            self._source_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._source_task
            self._source_task = None
        await self.mirror.drain(within=1.0)
        self.routes.close()

    async def __aenter__(self) -> RouterApp:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()

    # --- ASGI --------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            # Decided on the raw path (`/router%2fweights` is the upstream's, never the router's
            # own); a decoded path outside the router's cannot be inside it raw, so a prediction
            # skips the raw check.
            path: str = scope["path"]
            if (path in PUBLIC_PATHS or path.startswith(PREFIX)) and (
                (raw := raw_path(scope)) in RAW_PUBLIC_PATHS or raw.startswith(RAW_PREFIX)
            ):
                await self._handle_own(scope, receive, send)
            else:
                await self._handle_proxied(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await self.start()
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.close()
                await send({"type": "lifespan.shutdown.complete"})
                return


def create_router_app(
    *,
    model_deployment: str,
    table: RoutingTable | None = None,
    weight_source: WeightSource | None = None,
    admin: bool = False,
    upstream_timeout: float = 30.0,
    shadow_timeout: float = 5.0,
    max_mirrors: int = 64,
    admin_upstreams: bool = False,
    max_connections: int = MAX_CONNECTIONS,
    max_answer_bytes: int = MAX_ANSWER_BYTES,
    max_head_bytes: int = MAX_HEAD_BYTES,
    answer_budget_bytes: int = ANSWER_BUDGET_BYTES,
    rate_limit: RateLimit | None = None,
    rate_limit_max_clients: int = DEFAULT_MAX_CLIENTS,
) -> RouterApp:
    """The router for one ModelDeployment.

    Give it a `table` (static weights; with `admin`, changeable through PUT /router/weights), a
    `weight_source` (started with the app: the ModelDeployment watch), or both (the table
    serves until the source delivers one). Without a table it answers 503 until one arrives.
    `rate_limit` is the per-client limit of tables that have none of their own (a followed
    ModelDeployment's `spec.routing.rateLimit` wins); `rate_limit_max_clients` bounds the
    clients whose buckets are kept.
    """
    if table is None and weight_source is None:
        raise ValueError("give the router a routing table, a weight source, or both")
    if admin and table is None:
        raise ValueError("the admin endpoint changes a table: give one to start from")
    if upstream_timeout <= 0 or shadow_timeout <= 0:
        raise ValueError("timeouts must be positive")
    if max_mirrors < 0:
        raise ValueError("max_mirrors must be zero or more")
    if admin_upstreams and not admin:
        raise ValueError("admin_upstreams is a kind of admin: give admin too")
    if answer_budget_bytes < max_answer_bytes:
        raise ValueError("the answer budget must hold at least one answer of the largest size")
    if rate_limit_max_clients < 1:
        raise ValueError("rate_limit_max_clients must be at least 1")
    return RouterApp(
        model_deployment=model_deployment,
        table=table,
        weight_source=weight_source,
        admin=admin,
        upstream_timeout=upstream_timeout,
        shadow_timeout=shadow_timeout,
        max_mirrors=max_mirrors,
        admin_upstreams=admin_upstreams,
        max_connections=max_connections,
        max_answer_bytes=max_answer_bytes,
        max_head_bytes=max_head_bytes,
        answer_budget_bytes=answer_budget_bytes,
        rate_limit=rate_limit,
        rate_limit_max_clients=rate_limit_max_clients,
    )
