"""The router's current routing table and the upstream pools it points at.

A new table replaces the old one as a whole (`Routes.set_table`): a request reads one
consistent `Routing` snapshot even while a watch swaps in the next, and pools whose URL is
no longer in the table are closed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from canaryml_api.telemetry import VERSION_HEADER
from canaryml_httpd.limits import BodyBudget

from canaryml_router.core import RateLimit, RoutingTable
from canaryml_router.metrics import RouterMetrics
from canaryml_router.upstream import (
    ANSWER_BUDGET_BYTES,
    MAX_ANSWER_BYTES,
    MAX_CONNECTIONS,
    MAX_HEAD_BYTES,
    UpstreamPool,
)

log = logging.getLogger("canaryml.router")


@dataclass(frozen=True, slots=True)
class Routing:
    """A table with what the hot path needs from it precomputed; swapped as one object."""

    table: RoutingTable
    pools: dict[str, UpstreamPool]
    sticky: bytes | None
    shadow: UpstreamPool | None
    preview: UpstreamPool | None = None  # the canary's pool while the table mirrors to it
    # The request headers the proxy picks out (segment rules', the version pin, the client's).
    wanted: frozenset[bytes] = frozenset({VERSION_HEADER.encode("latin-1")})
    rate_limit: RateLimit | None = None  # the table's, else the router's default
    client_header: bytes | None = None  # rate_limit's client header


class Routes:
    """Holds the current `Routing` (None until a first table) and one pool per upstream URL;
    reports each table's shares in the router's metrics."""

    def __init__(
        self,
        *,
        model_deployment: str,
        metrics: RouterMetrics,
        max_connections: int = MAX_CONNECTIONS,
        max_answer_bytes: int = MAX_ANSWER_BYTES,
        max_head_bytes: int = MAX_HEAD_BYTES,
        answer_budget_bytes: int = ANSWER_BUDGET_BYTES,
        default_rate_limit: RateLimit | None = None,
    ) -> None:
        self.model_deployment = model_deployment
        self.default_rate_limit = default_rate_limit
        # One budget for every pool, the shadow's included: it bounds the router, not a track.
        self.answer_budget = BodyBudget(answer_budget_bytes)
        self._max_connections = max_connections
        self._max_answer_bytes = max_answer_bytes
        self._max_head_bytes = max_head_bytes
        self.current: Routing | None = None
        self._metrics = metrics
        self._pools: dict[str, UpstreamPool] = {}

    @property
    def table(self) -> RoutingTable | None:
        return None if self.current is None else self.current.table

    def set_table(self, table: RoutingTable) -> None:
        """Route every request from now on by `table`; requests in flight finish as they were."""
        pools = {track: self._pool(url) for track, url in table.upstreams.items()}
        sticky = table.sticky_header.lower().encode("latin-1") if table.sticky_header else None
        shadow = pools.get("shadow") if table.shadow_active else None
        previous = self.current
        limit = table.rate_limit or self.default_rate_limit
        client = (
            limit.client_header.lower().encode("latin-1") if limit and limit.client_header else None
        )
        wanted = {VERSION_HEADER.encode("latin-1"), *(rule.wanted for rule in table.segments)}
        if client is not None:
            wanted.add(client)
        self.current = Routing(
            table=table,
            pools=pools,
            sticky=sticky,
            shadow=shadow,
            preview=pools.get("canary") if table.canary_mirror_active else None,
            wanted=frozenset(wanted),
            rate_limit=limit,
            client_header=client,
        )
        self._metrics.set_weights(
            canary_weight=table.canary_weight if table.canary_active else 0,
            shadow_percent=table.shadow_percent if table.shadow_active else 0,
        )
        if shadow is not None:
            live = ("stable", "canary") if table.canary_active else ("stable",)
            self._metrics.declare_comparisons(versions={t: table.version(t) for t in live})
        for url in set(self._pools) - set(table.upstreams.values()):
            self._pools.pop(url).close()
        if previous is None or previous.table != table:
            log.info(
                "routing %s: canary %d%%%s, shadow %d%%, sticky header %s, %d segment rule(s), "
                "rate limit %s, upstreams %s",
                self.model_deployment,
                table.canary_weight if table.canary_active else 0,
                " (preview, mirrored)" if table.canary_mirror_active else "",
                table.shadow_percent if table.shadow_active else 0,
                table.sticky_header or "none",
                len(table.segments),
                f"{limit.requests_per_second:g}/s burst {limit.burst}" if limit else "none",
                dict(table.upstreams),
            )

    def _pool(self, url: str) -> UpstreamPool:
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = UpstreamPool(
                url,
                max_connections=self._max_connections,
                max_answer_bytes=self._max_answer_bytes,
                max_head_bytes=self._max_head_bytes,
                answer_budget=self.answer_budget,
            )
        return pool

    def close(self) -> None:
        """Close every pool's idle connections."""
        for pool in self._pools.values():
            pool.close()
