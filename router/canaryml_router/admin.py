"""The router's own endpoints: /metrics, /router/healthz, /router/readyz and /router/weights.

On the traffic port only the first three, read-only (Prometheus and the kubelet reach them
there); every other path under /router/ is a 404. /router/weights is served on the admin
listener only (`--admin-port`, loopback by default): `GET` shows the table, `PUT` changes it,
only with `admin` (static weights; with a weight source the ModelDeployment's status sets them)
and only its weights and shadow percent unless `admin_upstreams` (repointing a track is sending
its traffic, bodies included, elsewhere). Paths are matched on the raw path as the client sent
it, so `/router%2fweights` is not `/router/weights`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

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

from canaryml_router import asgi
from canaryml_router.core import TRACKS
from canaryml_router.routes import Routes
from canaryml_router.upstream import url_problem

WEIGHTS = "/router/weights"
PUBLIC_PATHS = frozenset({"/metrics", "/router/healthz", "/router/readyz"})
PATHS = PUBLIC_PATHS | {WEIGHTS}
PREFIX = "/router/"  # every path under it is the router's, known or not
RAW_PUBLIC_PATHS = frozenset(path.encode() for path in PUBLIC_PATHS)
RAW_PREFIX = PREFIX.encode()


def raw_path(scope: asgi.Scope) -> bytes:
    """The path as the client sent it (percent-escapes kept), without a query."""
    raw: bytes | None = scope.get("raw_path")
    if raw is None:
        return str(scope["path"]).encode("utf-8")
    # ASGI's raw_path has no query; some servers (httpx's test transport) include it.
    return raw.partition(b"?")[0]


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


def _invalid(error: ValidationError) -> asgi.Answer:
    problems = [
        {"loc": ["body", *item["loc"]], "msg": item["msg"], "type": item["type"]}
        for item in error.errors(include_url=False)
    ]
    message = "; ".join(
        f"{'.'.join(map(str, p['loc'][1:])) or 'body'}: {p['msg']}" for p in problems
    )
    return asgi.json_answer(422, {"error": f"invalid weights: {message}", "detail": problems})


class AdminEndpoints:
    """Answers the router's own paths (PATHS, and 404 for others under PREFIX).

    `source` says where the weights come from: "follow" (a weight source) or "static".
    """

    def __init__(
        self,
        *,
        model_deployment: str,
        routes: Routes,
        registry: CollectorRegistry,
        source: Literal["follow", "static"],
        admin: bool,
        admin_upstreams: bool = False,
    ) -> None:
        self.model_deployment = model_deployment
        self._routes = routes
        self._registry = registry
        self._source = source
        self._admin = admin
        self._admin_upstreams = admin_upstreams

    async def handle(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        """The traffic port's share: PUBLIC_PATHS, read-only."""
        await self._serve(scope, receive, send, PUBLIC_PATHS)

    async def handle_admin(self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send) -> None:
        """The admin listener: every path of PATHS (and nothing else: it proxies nothing)."""
        if scope["type"] == "http":
            await self._serve(scope, receive, send, PATHS)

    async def _serve(
        self, scope: asgi.Scope, receive: asgi.Receive, send: asgi.Send, paths: frozenset[str]
    ) -> None:
        path, method = raw_path(scope).decode("latin-1"), scope["method"]
        allowed = ("GET", "HEAD", "PUT") if path == WEIGHTS else ("GET", "HEAD")
        if path not in paths:
            where = " (it is on the admin listener, --admin-port)" if path == WEIGHTS else ""
            answer = asgi.json_answer(404, {"error": f"no router endpoint {path}{where}"})
        elif method not in allowed:
            status, headers, body = asgi.json_answer(
                405, {"error": f"{method} is not allowed on {path}"}
            )
            answer = (status, [*headers, (b"allow", ", ".join(allowed).encode())], body)
        elif method == "PUT":
            try:
                payload = await asgi.read_body(receive)
            except asgi.ClientGoneError:
                return
            except asgi.BodyTooLargeError:
                payload = b"?"
            answer = self.put_weights(payload)
        else:
            answer = self._get(path)
        status, headers, body = answer
        await asgi.respond(send, status, headers, b"" if method == "HEAD" else body)

    def _get(self, path: str) -> asgi.Answer:
        if path == "/metrics":
            return (
                200,
                [(b"content-type", CONTENT_TYPE_LATEST.encode())],
                generate_latest(self._registry),
            )
        if path == "/router/healthz":
            return asgi.json_answer(200, {"live": True})
        if path == "/router/readyz":
            if self._routes.current is not None:
                return asgi.json_answer(200, {"ready": True})
            return asgi.json_answer(503, {"ready": False, "reason": "no routing table yet"})
        return self.get_weights()

    def get_weights(self) -> asgi.Answer:
        table = self._routes.table
        if table is None:
            return asgi.json_answer(503, {"error": "no routing table yet"})
        return asgi.json_answer(
            200,
            {
                "modelDeployment": self.model_deployment,
                "source": self._source,
                "admin": self._admin,
                "adminUpstreams": self._admin_upstreams,
                **table.as_json(),
            },
        )

    def put_weights(self, payload: bytes) -> asgi.Answer:
        if not self._admin:
            reason = (
                "the weights follow the ModelDeployment: change its status instead"
                if self._source == "follow"
                else "the weights are read-only: start the router with --admin to change them"
            )
            return asgi.json_answer(403, {"error": reason})
        try:
            update = WeightsUpdate.model_validate_json(payload)
        except ValidationError as error:
            return _invalid(error)
        if update.upstreams and not self._admin_upstreams:
            message = (
                "the upstreams are fixed at start: PUT changes canaryWeight, shadowPercent and "
                "versions (start the router with --admin-upstreams to let it repoint tracks)"
            )
            return asgi.json_answer(403, {"error": message})
        table = self._routes.table
        assert table is not None  # admin mode always starts with a table
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
                return asgi.json_answer(422, {"error": message})
            changes[field] = share
        self._routes.set_table(replace(table, **changes))
        return self.get_weights()
