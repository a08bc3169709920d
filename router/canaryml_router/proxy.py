"""Proxying: each request forwarded to the track `core.choose_track` picks, its answer passed
back with the track named, then handed to the mirror.

Rules a user sees: an answer carries the track header (who answered); an unreachable track is
a 502 and one too slow a 504, both JSON naming the track, never a 500. Only POST prediction
requests whose live answer was a 2xx are mirrored: there is nothing to compare otherwise.

Only prediction requests (`core.is_prediction`) are counted in the request metrics: other paths
are proxied to the chosen track but say nothing about a model's health (200 junk requests would
otherwise dilute a failing canary's error rate). A prediction whose client went away before its
answer is counted as 499 (nginx's "client closed request"): the client's doing, not the track's.

Before a track is chosen: a client over its rate limit (`ratelimit`) gets 429 with Retry-After,
counted in ROUTER_RATE_LIMITED and never as a track's request; a request pinned to a version
(the path /v2/models/NAME/versions/VERSION/..., or the version header) goes to the track serving
that version, or gets a 404 naming the versions served; a request in an A/B segment goes to the
canary whatever its weight (`core.choose_track`).

This is the router's hot path: one pass over the headers each way, no allocation it can avoid.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from canaryml_api.telemetry import CLIENT_CLOSED, TRACK_HEADER, VERSION_HEADER
from canaryml_api.tracks import LiveTrack

from canaryml_router.asgi import (
    MAX_BODY_BYTES,
    BodyTooLargeError,
    ClientGoneError,
    Receive,
    Scope,
    Send,
    json_answer,
    read_body,
    respond,
)
from canaryml_router.core import (
    choose_track,
    in_segment,
    is_prediction,
    path_version,
    pinned_track,
    should_mirror,
)
from canaryml_router.metrics import RouterMetrics
from canaryml_router.mirror import Mirror
from canaryml_router.ratelimit import ClientLimiter, client_key
from canaryml_router.routes import Routes
from canaryml_router.upstream import (
    Headers,
    UpstreamBusyError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
)

log = logging.getLogger("canaryml.router")

_VERSION_HEADER = VERSION_HEADER.encode("latin-1")
_TRACK_HEADER = TRACK_HEADER.encode("latin-1")
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


def request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    *,
    sticky: bytes | None,
    client: Any,
    wanted: frozenset[bytes] = frozenset(),
    picked: dict[bytes, list[bytes]] | None = None,
) -> tuple[Headers, str | None]:
    """The headers to forward (hop-by-hop ones dropped, X-Forwarded-For extended) and the
    sticky header's value, in one pass; the values of the `wanted` headers go into `picked`."""
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
        if name in wanted and picked is not None:
            picked.setdefault(name, []).append(value)
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


def answer_headers(raw: Headers, track: bytes) -> tuple[Headers, bytes | None]:
    """The upstream's answer headers to pass on, with the track added, and its model version."""
    headers: Headers = [(_TRACK_HEADER, track)]
    version: bytes | None = None
    for name, value in raw:
        if name in _DROPPED_ANSWER_HEADERS:
            continue
        if name == _VERSION_HEADER:
            version = value
        headers.append((name, value))
    return headers, version


def client_gone(receive: Receive) -> bool:
    """Whether the client closed its connection before its answer could be sent.

    ASGI only says so through `receive()`, which blocks while the client is connected; racing
    it against every upstream call would cost a task per request on the hot path. uvicorn's
    request cycles (both its protocols) keep a `disconnected` flag on the object `receive` is a
    method of: read it where present, else assume the client is there.
    """
    return getattr(getattr(receive, "__self__", None), "disconnected", False) is True


class Proxy:
    """Forwards requests by the current routes, counts them, and passes predictions on to the
    mirror. `random` draws the split and the mirror share (uniform in [0, 1))."""

    def __init__(
        self,
        *,
        routes: Routes,
        metrics: RouterMetrics,
        mirror: Mirror,
        upstream_timeout: float,
        random: Callable[[], float],
        limiter: ClientLimiter | None = None,
    ) -> None:
        self._limiter = limiter or ClientLimiter()
        self._routes = routes
        self._metrics = metrics
        self._mirror = mirror
        self._upstream_timeout = upstream_timeout
        self._random = random

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        start = time.perf_counter()
        routing = self._routes.current
        if routing is None:
            await respond(send, *json_answer(503, {"error": "no routing table yet"}))
            return
        table = routing.table
        method: str = scope["method"]
        counted = is_prediction(method, scope["path"])
        # The track is chosen from the head alone, so a client gone mid-body is counted on it.
        picked: dict[bytes, list[bytes]] = {}
        headers, sticky_value = request_headers(
            scope["headers"],
            sticky=routing.sticky,
            client=scope.get("client"),
            wanted=routing.wanted,
            picked=picked,
        )
        limit = routing.rate_limit
        if limit is not None:
            named = picked.get(routing.client_header) if routing.client_header else None
            key = client_key(named[0] if named else None, scope.get("client"))
            wait = self._limiter.check(key, limit)
            if wait is not None:
                await self._refuse(send, limit.requests_per_second, limit.burst, wait)
                return
        draw = self._random()
        pinned_by_path = path_version(scope["path"])
        pin = pinned_by_path
        if pin is None and (asked := picked.get(_VERSION_HEADER)):
            pin = asked[0].decode("latin-1")
        if pin is not None:
            pinned = pinned_track(table, pin)
            if pinned is None:
                await self._unserved(send, pin, table.served_versions())
                return
            track = pinned
        else:
            segment = bool(table.segments) and in_segment(table.segments, picked)
            track = choose_track(table, sticky_value=sticky_value, draw=draw, segment=segment)
        try:
            body = await read_body(receive)
        except ClientGoneError:
            if counted:
                self._metrics.observe_request(
                    track=track,
                    version=table.version(track),
                    code=CLIENT_CLOSED,
                    seconds=time.perf_counter() - start,
                )
            return
        except BodyTooLargeError:
            await respond(send, *json_answer(413, {"error": f"body over {MAX_BODY_BYTES} bytes"}))
            return
        target: bytes = scope.get("raw_path") or scope["path"].encode()
        if scope["query_string"]:
            # ASGI's raw_path has no query; some servers (httpx's test transport) include it.
            target = target.partition(b"?")[0] + b"?" + scope["query_string"]
        status, headers_out, answer, version, response, busy = await self._forward(
            routing.pools[track], track, method.encode(), target, headers, body
        )
        mirrored = False
        try:
            await respond(send, status, headers_out, answer)
            if not counted or busy:  # the router's load says nothing about the track
                return
            if client_gone(receive):
                status = CLIENT_CLOSED
            version = version or table.version(track)
            self._metrics.observe_request(
                track=track, version=version, code=status, seconds=time.perf_counter() - start
            )
            # After the client has its answer: the mirror never delays or changes it.
            shadow = routing.shadow
            if (
                shadow is not None
                and pinned_by_path is None  # the shadow serves another version: it would 404
                and response is not None
                and 200 <= status < 300
                and should_mirror(percent=table.shadow_percent, draw=self._random())
            ):
                mirrored = self._mirror.send(
                    shadow, table, track, version, method.encode(), target, headers, body, response
                )
            # Blue-green's preview mirror: the stable's live requests (not pinned: the preview
            # serves another version) also go to the preview at 0%, counted as its own.
            preview = routing.preview
            if preview is not None and pin is None and track == "stable" and 200 <= status < 300:
                self._mirror.send_preview(preview, table, method.encode(), target, headers, body)
        finally:
            if response is not None and not mirrored:  # else the mirror releases it
                response.release()

    async def _refuse(self, send: Send, rate: float, burst: int, wait: float) -> None:
        """429 for a client over its limit, counted as the router's, never as a track's."""
        self._metrics.observe_rate_limited()
        seconds = max(1, math.ceil(wait))
        status, head, text = json_answer(
            429,
            {
                "error": f"rate limit: this client is over {rate:g} requests per second "
                f"(burst {burst}); retry after {seconds} s",
                "requestsPerSecond": rate,
                "burst": burst,
                "retryAfterSeconds": seconds,
            },
        )
        await respond(send, status, [*head, (b"retry-after", str(seconds).encode())], text)

    async def _unserved(self, send: Send, version: str, served: Mapping[LiveTrack, str]) -> None:
        """404 in the Open Inference Protocol's error shape, naming the versions served."""
        listed = ", ".join(f"{v} ({track})" for track, v in served.items())
        await respond(
            send,
            *json_answer(
                404,
                {"error": f"model version {version!r} is not served here; served: {listed}"},
            ),
        )

    async def _forward(
        self,
        pool: UpstreamPool,
        track: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> _Forwarded:
        """The upstream's answer, or a 502/504 saying which track failed, or a 503 when the
        router holds its budget of answers already; never raises."""
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
            return _Forwarded(*json_answer(504, {"error": message}))
        except UpstreamBusyError as error:
            log.warning("an answer of the %s track was refused: %s", track, error)
            status, head, text = json_answer(503, {"error": str(error)})
            return _Forwarded(status, [*head, (b"retry-after", b"1")], text, busy=True)
        except UpstreamError as error:
            log.warning("the %s track (%s) is unreachable: %s", track, pool.url, error)
            return _Forwarded(
                *json_answer(502, {"error": f"the {track} track is unreachable: {error}"})
            )
        except Exception:
            log.exception("forwarding to the %s track failed", track)
            return _Forwarded(
                *json_answer(502, {"error": f"forwarding to the {track} track failed"})
            )
        headers_out, version = answer_headers(response.headers, track.encode())
        return _Forwarded(
            response.status,
            headers_out,
            response.body,
            version.decode("latin-1") if version else None,
            response,
        )


class _Forwarded(NamedTuple):
    """What the client is answered, and the track's own answer behind it if there was one."""

    status: int
    headers: Headers
    body: bytes
    version: str | None = None
    response: UpstreamResponse | None = None  # released once sent on (or by the mirror)
    busy: bool = False  # refused by the router's answer budget: not the track's doing
