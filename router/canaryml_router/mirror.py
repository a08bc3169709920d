"""Mirroring: a prediction request sent on to the shadow after the client has its answer, and
the shadow's answer compared with the live one (JSON answers, or answers in the Open Inference
Protocol's binary tensor extension, read with their Inference-Header-Content-Length).

The shadow's own answers are counted as track="shadow" in the request series (its error rate
and latency), the comparisons by the live track and version they were compared with (so a
previous canary's comparisons never count in the next canary's window). A shadow's answer is
capped like any upstream's (`UpstreamPool.max_answer_bytes`): beyond it the mirror is an error.
At most `max_mirrors` mirrors are in flight; beyond that a mirror is skipped and counted as
such, so a slow shadow can never pile up memory or connections in the router. A mirror holds
the live answer until its comparison is done, then releases it and the shadow's answer to the
router's answer budget (`Routes.answer_budget`).

Blue-green's preview mirror (`send_preview`, spec.canary.blueGreen.mirror) sends the stable's
live requests to the preview (the canary track at weight 0) the same way and within the same
bound; its answers are counted as the canary's requests (track="canary": the analysis judges
the preview on them) and are not compared (the comparison series is the shadow's).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any, NamedTuple

from canaryml_api.telemetry import VERSION_HEADER

from canaryml_router.core import Comparison, RoutingTable, compare_answers, json_length
from canaryml_router.metrics import RouterMetrics
from canaryml_router.upstream import (
    Headers,
    UpstreamBusyError,
    UpstreamError,
    UpstreamPool,
    UpstreamResponse,
    UpstreamTimeoutError,
)

log = logging.getLogger("canaryml.router")


def _compare_bodies(
    live: UpstreamResponse, shadow: UpstreamResponse, tolerance: float
) -> Comparison:
    """The two answers compared, either in the binary tensor extension or JSON."""
    try:
        lengths = json_length(live.headers), json_length(shadow.headers)
    except ValueError:
        return "error"
    return compare_answers(
        live=live.body,
        shadow=shadow.body,
        tolerance=tolerance,
        live_json_length=lengths[0],
        shadow_json_length=lengths[1],
    )


class _Mirrored(NamedTuple):
    """One request on its way to the shadow, with the live answer to compare with."""

    shadow: UpstreamPool
    table: RoutingTable
    track: str
    version: str
    method: bytes
    target: bytes
    headers: Headers
    body: bytes
    live: UpstreamResponse


_VERSION_HEADER = VERSION_HEADER.encode("latin-1")


class Mirror:
    """Sends requests to the shadow in tasks of their own and counts what came back."""

    def __init__(
        self,
        *,
        model_deployment: str,
        metrics: RouterMetrics,
        shadow_timeout: float,
        max_mirrors: int,
    ) -> None:
        self.model_deployment = model_deployment
        self._metrics = metrics
        self._shadow_timeout = shadow_timeout
        self._max_mirrors = max_mirrors
        self._in_flight: set[asyncio.Task[None]] = set()

    def send(
        self,
        shadow: UpstreamPool,
        table: RoutingTable,
        track: str,
        version: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
        live: UpstreamResponse,
    ) -> bool:
        """Mirror one request whose `track` (at `version`) answered `live`; returns at once,
        True when the mirror took `live` over (it releases it), False when skipped."""
        if len(self._in_flight) >= self._max_mirrors:
            self._metrics.observe_comparison(track=track, version=version, result="skipped")
            return False
        request = _Mirrored(shadow, table, track, version, method, target, headers, body, live)
        self._start(self._call(request))
        return True

    def _start(self, call: Coroutine[Any, Any, None]) -> None:
        """Run a mirror in a task of its own, counted among those in flight until done."""
        task = asyncio.get_running_loop().create_task(call)
        self._in_flight.add(task)
        task.add_done_callback(self._in_flight.discard)

    async def _call(self, request: _Mirrored) -> None:
        try:
            await self._compare(request)
        finally:  # done or cancelled (drain), the live answer goes back to the budget
            request.live.release()

    async def _compare(self, request: _Mirrored) -> None:
        shadow, table, track, live_version, method, target, headers, body, live = request
        sent = await self._mirror(shadow, table, "shadow", method, target, headers, body)
        if sent is None:  # the router's own load: like too many mirrors in flight
            self._metrics.observe_comparison(track=track, version=live_version, result="skipped")
            return
        response, code = sent
        try:
            if response is None or not 200 <= code < 300:
                result = "error"
            else:
                result = _compare_bodies(live, response, table.probability_tolerance)
            self._metrics.observe_comparison(track=track, version=live_version, result=result)
        finally:
            if response is not None:
                response.release()

    def send_preview(
        self,
        preview: UpstreamPool,
        table: RoutingTable,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> bool:
        """Mirror one live request to the blue-green preview; returns at once, False when
        skipped (too many mirrors in flight)."""
        if len(self._in_flight) >= self._max_mirrors:
            return False
        self._start(self._preview(preview, table, method, target, headers, body))
        return True

    async def _preview(
        self,
        preview: UpstreamPool,
        table: RoutingTable,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> None:
        # The router's own load (None) says nothing about the preview: not counted.
        sent = await self._mirror(preview, table, "canary", method, target, headers, body)
        if sent is not None and sent[0] is not None:
            sent[0].release()

    async def _mirror(
        self,
        pool: UpstreamPool,
        table: RoutingTable,
        counted_as: str,
        method: bytes,
        target: bytes,
        headers: Headers,
        body: bytes,
    ) -> tuple[UpstreamResponse | None, int] | None:
        """Send a mirrored request and count its answer under track `counted_as`: the answer
        (None when there was none: timeout 504, failure 502) and its status, which the caller
        releases; None when the router's own answer budget refused it (not counted)."""
        start = time.perf_counter()
        response: UpstreamResponse | None = None
        try:
            response = await pool.request(
                method=method,
                target=target,
                headers=headers,
                body=body,
                within=self._shadow_timeout,
            )
            code = response.status
        except UpstreamBusyError:
            return None
        except UpstreamTimeoutError:
            code = 504
        except UpstreamError as error:
            log.debug("the %s of %s failed: %s", counted_as, self.model_deployment, error)
            code = 502
        except Exception:
            log.exception("mirroring to the %s track failed", counted_as)
            code = 502
        try:
            version: str | None = None
            if response is not None:
                for name, value in response.headers:
                    if name == _VERSION_HEADER:
                        version = value.decode("latin-1")
            self._metrics.observe_request(
                track=counted_as,
                version=version or table.version(counted_as),
                code=code,
                seconds=time.perf_counter() - start,
            )
        except BaseException:
            if response is not None:
                response.release()
            raise
        return response, code

    async def drain(self, *, within: float = 1.0) -> None:
        """Let the mirrors in flight finish for up to `within` seconds, then cancel the rest."""
        if self._in_flight:
            _, pending = await asyncio.wait(set(self._in_flight), timeout=within)
            for task in pending:
                task.cancel()
