"""The builtin traffic router: a reverse proxy in front of one ModelDeployment's model servers.

`create_router_app` builds a plain ASGI app (no framework: its per-request cost would be paid on
every proxied request) that sends each request to the stable or canary track by weight or by a
sticky header's hash, mirrors a share of prediction requests to the shadow after the client has
its answer, compares the shadow's answer with the live one, and counts all of it in Prometheus
metrics at its own /metrics. Its routing table comes from a weight source (the ModelDeployment's
status through a watch, see `router_follow`) or is set at start and, with `admin`, through
`PUT /router/weights`.

Rules a user sees: an answer carries `x-canaryml-track` (who answered); an unreachable track is
a 502 and one too slow a 504, both JSON naming the track, never a 500. Only POST prediction
requests (`/predict`, `/v2/models/.../infer`) whose live answer was a 2xx are mirrored: there is
nothing to compare otherwise. The shadow's own answers are counted as track="shadow" in
canaryml_requests_total and canaryml_request_duration_seconds (its error rate and latency), the
comparisons by the live track they were compared with. At most `max_mirrors` mirrors are in
flight; beyond that a mirror is skipped and counted as such, so a slow shadow can never pile up
memory or connections in the router.

The decisions themselves are pure functions in `router_core`; the upstream connections are the
small pooled client of `router_upstream`; `router_server` runs it under uvicorn.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from canaryml_server.router_core import (
    TRACKS,
    RoutingTable,
    choose_track,
    compare_answers,
    should_mirror,
)
from canaryml_server.router_metrics import RouterMetrics
from canaryml_server.router_upstream import (
    Headers,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
    url_problem,
)

log = logging.getLogger("canaryml.router")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ApplyTable = Callable[[RoutingTable], None]
WeightSource = Callable[[ApplyTable], Awaitable[None]]
"""Runs for the router's lifetime and calls its argument with each new routing table."""

VERSION_HEADER = b"x-canaryml-model-version"
TRACK_HEADER = b"x-canaryml-track"
MAX_BODY_BYTES = 64 * 1024 * 1024
# Meaningful for one connection only (RFC 9110 7.6.1), or set by the server that answers.
_HOP_BY_HOP = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-authenticate", b"proxy-authorization",
        b"proxy-connection", b"te", b"trailer", b"trailers", b"transfer-encoding", b"upgrade",
        b"host", b"content-length", b"expect",
    }
)  # fmt: skip
# uvicorn adds its own date header; the length is that of the body the router sends.
_DROPPED_ANSWER_HEADERS = _HOP_BY_HOP | {b"date"}
_NO_BODY = frozenset({204, 304})
_JSON_HEADERS = [(b"content-type", b"application/json")]
_OWN_PATHS = frozenset({"/metrics", "/router/healthz", "/router/readyz", "/router/weights"})


def _known_tracks(value: dict[str, str], what: str) -> None:
    unknown = sorted(set(value) - set(TRACKS))
    if unknown:
        raise ValueError(f"unknown track(s) {unknown} in {what}: use stable, canary or shadow")


class WeightsUpdate(BaseModel):
    """The body of `PUT /router/weights`: any part of what GET shows that an admin may change.

    `upstreams` and `versions` are merged into the table per track, so one PUT can point the
    stable track at a newly started server and relabel it (a local promotion).
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=False)

    canary_weight: StrictInt | None = Field(default=None, ge=0, le=100, alias="canaryWeight")
    shadow_percent: StrictInt | None = Field(default=None, ge=0, le=100, alias="shadowPercent")
    upstreams: dict[str, StrictStr] | None = None
    versions: dict[str, StrictStr] | None = None

    @field_validator("upstreams")
    @classmethod
    def _http_urls(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        _known_tracks(value, "upstreams")
        for track, url in value.items():
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(f"upstream of {track} {url!r}: {problem}")
        return value

    @field_validator("versions")
    @classmethod
    def _nonempty_versions(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        _known_tracks(value, "versions")
        empty = sorted(track for track, version in value.items() if not version.strip())
        if empty:
            raise ValueError(f"empty version for {empty}: a version labels the metrics")
        return value

    @model_validator(mode="after")
    def _something(self) -> WeightsUpdate:
        if (
            self.canary_weight is None
            and self.shadow_percent is None
            and not self.upstreams
            and not self.versions
        ):
            raise ValueError(
                "nothing to change: send canaryWeight, shadowPercent or both, "
                "and/or upstreams or versions"
            )
        return self


class _ClientGoneError(Exception):
    """The client went away before its request was complete."""


class _BodyTooLargeError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class _Routing:
    """A table with what the hot path needs from it precomputed; swapped as one object."""

    table: RoutingTable
    pools: dict[str, UpstreamPool]
    sticky: bytes | None
    shadow: UpstreamPool | None


def _json(status: int, body: Any) -> tuple[int, Headers, bytes]:
    return status, _JSON_HEADERS, orjson.dumps(body)


async def _respond(send: Send, status: int, headers: Headers, body: bytes) -> None:
    if status not in _NO_BODY:
        headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_body(receive: Receive) -> bytes:
    message = await receive()
    if message["type"] == "http.disconnect":
        raise _ClientGoneError
    body: bytes = message.get("body", b"")
    if not message.get("more_body"):
        return body
    chunks, size = [body], len(body)
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _ClientGoneError
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY_BYTES:
            raise _BodyTooLargeError
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


def _request_headers(
    raw: Iterable[tuple[bytes, bytes]], *, sticky: bytes | None, client: Any
) -> tuple[Headers, str | None]:
    """The headers to forward (hop-by-hop ones dropped, X-Forwarded-For extended) and the
    sticky header's value, in one pass."""
    forward: Headers = []
    sticky_value: str | None = None
    connection_tokens: bytes | None = None
    forwarded_for: bytes | None = None
    for name, value in raw:
        if name in _HOP_BY_HOP:
            if name == b"connection":
                connection_tokens = value
            continue
        if name == sticky:
            sticky_value = value.decode("latin-1")
        if name == b"x-forwarded-for":
            forwarded_for = value
            continue
        forward.append((name, value))
    if connection_tokens is not None:
        named = {token.strip().lower() for token in connection_tokens.split(b",")}
        forward = [(name, value) for name, value in forward if name not in named]
    if client:
        peer = str(client[0]).encode("latin-1")
        forward.append(
            (b"x-forwarded-for", forwarded_for + b", " + peer if forwarded_for else peer)
        )
    elif forwarded_for is not None:
        forward.append((b"x-forwarded-for", forwarded_for))
    return forward, sticky_value


def _answer_headers(raw: Headers, track: bytes) -> tuple[Headers, bytes | None]:
    """The upstream's answer headers to pass on, with the track added, and its model version."""
    headers: Headers = [(TRACK_HEADER, track)]
    version: bytes | None = None
    for name, value in raw:
        if name in _DROPPED_ANSWER_HEADERS:
            continue
        if name == VERSION_HEADER:
            version = value
        headers.append((name, value))
    return headers, version


def _is_prediction(method: str, path: str) -> bool:
    return method == "POST" and (
        path == "/predict" or (path.startswith("/v2/models/") and path.endswith("/infer"))
    )


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
    ) -> None:
        if admin and weight_source is not None:
            raise ValueError("PUT /router/weights would fight the weight source: not both")
        self.model_deployment = model_deployment
        self.registry = CollectorRegistry(auto_describe=True)
        self.metrics = RouterMetrics(registry=self.registry, model_deployment=model_deployment)
        self._weight_source = weight_source
        self._admin = admin
        self._upstream_timeout = upstream_timeout
        self._shadow_timeout = shadow_timeout
        self._max_mirrors = max_mirrors
        self._pools: dict[str, UpstreamPool] = {}
        self._routing: _Routing | None = None
        self._mirrors: set[asyncio.Task[None]] = set()
        self._source_task: asyncio.Task[None] | None = None
        self._random = random.random
        if table is not None:
            self.set_table(table)

    # --- the table ---------------------------------------------------------------------------

    @property
    def table(self) -> RoutingTable | None:
        return None if self._routing is None else self._routing.table

    def set_table(self, table: RoutingTable) -> None:
        """Route every request from now on by `table`; requests in flight finish as they were."""
        pools = {track: self._pool(url) for track, url in table.upstreams.items()}
        sticky = table.sticky_header.lower().encode("latin-1") if table.sticky_header else None
        shadow = pools.get("shadow") if table.shadow_active else None
        previous = self._routing
        self._routing = _Routing(table=table, pools=pools, sticky=sticky, shadow=shadow)
        self.metrics.set_weights(
            canary_weight=table.canary_weight if table.canary_active else 0,
            shadow_percent=table.shadow_percent if table.shadow_active else 0,
        )
        if shadow is not None:
            live = ("stable", "canary") if table.canary_active else ("stable",)
            self.metrics.declare_comparisons(tracks=live)
        for url in set(self._pools) - set(table.upstreams.values()):
            self._pools.pop(url).close()
        if previous is None or previous.table != table:
            log.info(
                "routing %s: canary %d%%, shadow %d%%, sticky header %s, upstreams %s",
                self.model_deployment,
                table.canary_weight if table.canary_active else 0,
                table.shadow_percent if table.shadow_active else 0,
                table.sticky_header or "none",
                dict(table.upstreams),
            )

    def _pool(self, url: str) -> UpstreamPool:
        pool = self._pools.get(url)
        if pool is None:
            pool = self._pools[url] = UpstreamPool(url)
        return pool

    # --- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        if self._weight_source is not None and self._source_task is None:
            self._source_task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self) -> None:
        assert self._weight_source is not None
        try:
            await self._weight_source(self.set_table)
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
        if self._mirrors:
            _, pending = await asyncio.wait(set(self._mirrors), timeout=1.0)
            for task in pending:
                task.cancel()
        for pool in self._pools.values():
            pool.close()

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
            if scope["path"] in _OWN_PATHS or scope["path"].startswith("/router/"):
                await self._own(scope, receive, send)
            else:
                await self._proxy(scope, receive, send)
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

    # --- proxying ----------------------------------------------------------------------------

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        try:
            body = await _read_body(receive)
        except _ClientGoneError:
            return
        except _BodyTooLargeError:
            await _respond(send, *_json(413, {"error": f"body over {MAX_BODY_BYTES} bytes"}))
            return
        routing = self._routing
        if routing is None:
            await _respond(send, *_json(503, {"error": "no routing table yet"}))
            return
        table = routing.table
        headers, sticky_value = _request_headers(
            scope["headers"], sticky=routing.sticky, client=scope.get("client")
        )
        track = choose_track(table, sticky_value=sticky_value, draw=self._random())
        method: str = scope["method"]
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            # ASGI's raw_path has no query; some servers (httpx's test transport) include it.
            target = target.partition(b"?")[0] + b"?" + scope["query_string"]
        status, answer_headers, answer, version = await self._forward(
            routing.pools[track], track, method.encode(), target, headers, body
        )
        await _respond(send, status, answer_headers, answer)
        self.metrics.observe_request(
            track=track,
            version=version or table.version(track),
            code=status,
            seconds=time.perf_counter() - start,
        )
        # After the client has its answer: the mirror never delays or changes it.
        shadow = routing.shadow
        if (
            shadow is not None
            and 200 <= status < 300
            and _is_prediction(method, scope["path"])
            and should_mirror(percent=table.shadow_percent, draw=self._random())
        ):
            self._mirror(shadow, table, track, method.encode(), target, headers, body, answer)

    async def _forward(
        self,
        pool: UpstreamPool,
        track: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> tuple[int, Headers, bytes, str | None]:
        """The upstream's answer, or a 502/504 saying which track failed; never raises."""
        try:
            response = await pool.request(
                method=method,
                target=target,
                headers=headers,
                body=body,
                within=self._upstream_timeout,
            )
        except UpstreamTimeoutError:
            message = f"the {track} track did not answer within {self._upstream_timeout:g} s"
            return (*_json(504, {"error": message}), None)
        except UpstreamError as error:
            log.warning("the %s track (%s) is unreachable: %s", track, pool.url, error)
            return (*_json(502, {"error": f"the {track} track is unreachable: {error}"}), None)
        except Exception:
            log.exception("forwarding to the %s track failed", track)
            return (*_json(502, {"error": f"forwarding to the {track} track failed"}), None)
        answer_headers, version = _answer_headers(response.headers, track.encode())
        return (
            response.status,
            answer_headers,
            response.body,
            version.decode("latin-1") if version else None,
        )

    # --- mirroring ---------------------------------------------------------------------------

    def _mirror(
        self,
        shadow: UpstreamPool,
        table: RoutingTable,
        track: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        live: bytes,
    ) -> None:
        if len(self._mirrors) >= self._max_mirrors:
            self.metrics.observe_comparison(track=track, result="skipped")
            return
        task = asyncio.get_running_loop().create_task(
            self._shadow_call(shadow, table, track, method, target, headers, body, live)
        )
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow_call(
        self,
        shadow: UpstreamPool,
        table: RoutingTable,
        track: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        live: bytes,
    ) -> None:
        start = time.perf_counter()
        response: UpstreamResponse | None = None
        try:
            response = await shadow.request(
                method=method,
                target=target,
                headers=headers,
                body=body,
                within=self._shadow_timeout,
            )
            code = response.status
        except UpstreamTimeoutError:
            code = 504
        except UpstreamError as error:
            log.debug("the shadow of %s failed: %s", self.model_deployment, error)
            code = 502
        except Exception:
            log.exception("mirroring to the shadow failed")
            code = 502
        version: str | None = None
        if response is not None:
            for name, value in response.headers:
                if name == VERSION_HEADER:
                    version = value.decode("latin-1")
        self.metrics.observe_request(
            track="shadow",
            version=version or table.version("shadow"),
            code=code,
            seconds=time.perf_counter() - start,
        )
        if response is None or not 200 <= code < 300:
            result = "error"
        else:
            result = compare_answers(
                live=live, shadow=response.body, tolerance=table.probability_tolerance
            )
        self.metrics.observe_comparison(track=track, result=result)

    # --- the router's own endpoints ----------------------------------------------------------

    async def _own(self, scope: Scope, receive: Receive, send: Send) -> None:
        path, method = scope["path"], scope["method"]
        allowed = {"/router/weights": ("GET", "HEAD", "PUT")}.get(path, ("GET", "HEAD"))
        if path not in _OWN_PATHS:
            response = _json(404, {"error": f"no router endpoint {path}"})
        elif method not in allowed:
            status, headers, body = _json(405, {"error": f"{method} is not allowed on {path}"})
            response = (status, [*headers, (b"allow", ", ".join(allowed).encode())], body)
        elif method == "PUT":
            try:
                payload = await _read_body(receive)
            except _ClientGoneError:
                return
            except _BodyTooLargeError:
                payload = b"?"
            response = self._put_weights(payload)
        elif path == "/metrics":
            response = (
                200,
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                generate_latest(self.registry),
            )
        elif path == "/router/healthz":
            response = _json(200, {"live": True})
        elif path == "/router/readyz":
            response = (
                _json(200, {"ready": True})
                if self._routing is not None
                else _json(503, {"ready": False, "reason": "no routing table yet"})
            )
        else:
            response = self._get_weights()
        status, headers, body = response
        await _respond(send, status, headers, b"" if method == "HEAD" else body)

    def _get_weights(self) -> tuple[int, Headers, bytes]:
        if self._routing is None:
            return _json(503, {"error": "no routing table yet"})
        return _json(
            200,
            {
                "modelDeployment": self.model_deployment,
                "source": "follow" if self._weight_source is not None else "static",
                "admin": self._admin,
                **self._routing.table.as_json(),
            },
        )

    def _put_weights(self, payload: bytes) -> tuple[int, Headers, bytes]:
        if not self._admin:
            reason = (
                "the weights follow the ModelDeployment: change its status instead"
                if self._weight_source is not None
                else "the weights are read-only: start the router with --admin to change them"
            )
            return _json(403, {"error": reason})
        try:
            update = WeightsUpdate.model_validate_json(payload)
        except ValidationError as error:
            problems = [
                {
                    "loc": ["body", *error_item["loc"]],
                    "msg": error_item["msg"],
                    "type": error_item["type"],
                }
                for error_item in error.errors(include_url=False)
            ]
            message = "; ".join(
                f"{'.'.join(map(str, p['loc'][1:])) or 'body'}: {p['msg']}" for p in problems
            )
            return _json(422, {"error": f"invalid weights: {message}", "detail": problems})
        routing = self._routing
        assert routing is not None  # admin mode always starts with a table
        table = routing.table
        # Merged per track: a PUT names only the tracks it changes.
        upstreams = {**table.upstreams, **(update.upstreams or {})}
        versions = {**table.versions, **(update.versions or {})}
        changes: dict[str, Any] = {"upstreams": upstreams, "versions": versions}
        for share, track, name, field in (
            (update.canary_weight, "canary", "canaryWeight", "canary_weight"),
            (update.shadow_percent, "shadow", "shadowPercent", "shadow_percent"),
        ):
            if share is None:
                continue
            if share > 0 and track not in upstreams:
                message = (
                    f"{name} > 0 needs a {track} upstream "
                    f"(--upstream {track}=URL, or upstreams.{track} in the same PUT)"
                )
                return _json(422, {"error": message})
            changes[field] = share
        self.set_table(replace(table, **changes))
        return self._get_weights()


def create_router_app(
    *,
    model_deployment: str,
    table: RoutingTable | None = None,
    weight_source: WeightSource | None = None,
    admin: bool = False,
    upstream_timeout: float = 30.0,
    shadow_timeout: float = 5.0,
    max_mirrors: int = 64,
) -> RouterApp:
    """The router for one ModelDeployment.

    Give it a `table` (static weights; with `admin`, changeable through PUT /router/weights), a
    `weight_source` (started with the app: the ModelDeployment watch), or both (the table
    serves until the source delivers one). Without a table it answers 503 until one arrives.
    """
    if table is None and weight_source is None:
        raise ValueError("give the router a routing table, a weight source, or both")
    if admin and table is None:
        raise ValueError("the admin endpoint changes a table: give one to start from")
    if upstream_timeout <= 0 or shadow_timeout <= 0:
        raise ValueError("timeouts must be positive")
    if max_mirrors < 0:
        raise ValueError("max_mirrors must be zero or more")
    return RouterApp(
        model_deployment=model_deployment,
        table=table,
        weight_source=weight_source,
        admin=admin,
        upstream_timeout=upstream_timeout,
        shadow_timeout=shadow_timeout,
        max_mirrors=max_mirrors,
    )
