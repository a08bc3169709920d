"""Metric providers: where the operator's analysis reads its numbers (the I/O side of checks).

Like Flagger's metric providers, each provider answers one PromQL-like query with one number,
or, for a check measured per feature (`checks.SERIES_LABEL`), with one number per feature.
`measure` runs every check of an analysis and turns each answer into a `Sample`: a value (and
the worst features), no data (None), or an error that says why not. A provider failure is a
measurement (the rollout core turns it into an Error verdict that holds the weight), never an
exception of the handler.

A reply is data from wherever the spec's URL points, so none of it is written into the status:
errors say the HTTP status and a fixed description (Prometheus's own error text goes to the
operator's log). The rules of every call to a URL a spec names (`outbound`): replies read
streamed up to MAX_REPLY_BYTES, uncompressed, within the query timeout as a whole, and redirects
refused, never followed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final, Protocol

import httpx
from canaryml_api import resource as api

from canaryml_operator import checks, outbound
from canaryml_operator.measurements import Measurements, Sample

log = logging.getLogger(__name__)

NO_HEADERS: Final[Mapping[str, str]] = MappingProxyType({})
USER_AGENT: Final = outbound.USER_AGENT  # names the operator in Prometheus's query log
# An instant query answers one number (or one per feature): a few KiB. A larger reply is not
# an answer to a check, and reading it whole would take the operator's memory (limit 512 MiB).
MAX_REPLY_BYTES: Final = 1024 * 1024
_LOGGED_EXCERPT: Final = 300  # of a refused query's error text, in the operator's log only
# The errorType values of Prometheus's API: anything else is not repeated.
_ERROR_TYPES: Final = frozenset(
    {"timeout", "canceled", "execution", "bad_data", "internal", "unavailable", "not_found",
     "not_acceptable"}
)  # fmt: skip
_RESULT_TYPES: Final = frozenset({"matrix", "vector", "scalar", "string"})
_LABEL_NAME: Final = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")
_SHOWN_LABEL_VALUE: Final = 63


class MetricError(Exception):
    """A query that could not be answered: unreachable, slow, refused, or ambiguous."""


class MetricProvider(Protocol):
    """One source of metrics (Prometheus, or anything that speaks its query API)."""

    async def query(self, promql: str, *, at: datetime) -> float | None:
        """The single value of an instant query at `at`; None when there is no data.

        Raises MetricError when the answer cannot be had or is not one number.
        """
        ...

    async def query_by(self, promql: str, *, label: str, at: datetime) -> dict[str, float]:
        """Each series' value of an instant query at `at`, keyed by its `label`; NaN values
        left out, {} for an empty result.

        Raises MetricError when the answer cannot be had or is not one series per value of
        `label`.
        """
        ...

    async def is_online(self) -> bool:
        """Whether the provider answers queries right now."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...


class PrometheusProvider:
    """Instant queries against Prometheus's HTTP API (`/api/v1/query`).

    Queries are POSTed as a form so that long custom queries never hit URL length limits; the
    same API is served by Thanos, Mimir, VictoriaMetrics and Grafana's proxies, with or
    without a path prefix in `url`.
    """

    def __init__(
        self,
        *,
        url: str,
        timeout: float,
        headers: Mapping[str, str] = NO_HEADERS,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        # A redirect would send the credentials and the query where the spec did not say.
        self._client = outbound.client(
            base_url=self.url, timeout=timeout, headers=headers, transport=transport
        )

    async def query(self, promql: str, *, at: datetime) -> float | None:
        return _scalar(await self._instant(promql, at=at), promql=promql)

    async def query_by(self, promql: str, *, label: str, at: datetime) -> dict[str, float]:
        return _by_label(await self._instant(promql, at=at), label=label, promql=promql)

    async def _instant(self, promql: str, *, at: datetime) -> Any:
        if at.tzinfo is None:
            raise ValueError("query time must be timezone-aware (use datetime.now(UTC))")
        form = {
            "query": promql,
            "time": f"{at.timestamp():.3f}",
            # Prometheus gives up too, instead of evaluating for nobody.
            "timeout": f"{self.timeout:g}",
        }
        return await self._post("/api/v1/query", form=form)

    async def is_online(self) -> bool:
        """True when a trivial query answers: works where `/-/ready` is not exposed (proxies)."""
        try:
            return await self.query("vector(1)", at=datetime.now(UTC)) == 1.0
        except MetricError:
            return False

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _post(self, path: str, *, form: Mapping[str, str]) -> Any:
        try:
            reply = await outbound.post(
                self._client,
                path,
                what=f"Prometheus at {self.url}",
                timeout=self.timeout,
                max_bytes=MAX_REPLY_BYTES,
                redirect_hint="set analysis.prometheus.url to the final URL",
                too_large_hint="not the reply to one check's query",
                data=form,
            )
        except outbound.OutboundError as error:
            raise MetricError(str(error)) from None
        return _payload(reply.status, reply.body, url=self.url)


def _payload(status: int, raw: bytes, *, url: str) -> Any:
    """The `data` of a successful answer; else a MetricError with the HTTP status and a fixed
    description (Prometheus's own error text is logged, not repeated)."""
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # deep nesting ([[[...]]]) exhausts json's stack
        body = None
    if isinstance(body, dict) and body.get("status") == "error":
        kind = body.get("errorType")
        log.warning(
            "Prometheus at %s refused a query (HTTP %s): %r",
            url,
            status,
            str(body.get("error", ""))[:_LOGGED_EXCERPT],
        )
        shown = f"{kind}, " if isinstance(kind, str) and kind in _ERROR_TYPES else ""
        raise MetricError(
            f"Prometheus refused the query ({shown}HTTP {status}); "
            "its error text is in the operator's log"
        )
    if status != 200:
        raise MetricError(f"Prometheus at {url} answered HTTP {status}")
    if not isinstance(body, dict):
        raise MetricError(f"Prometheus at {url} answered HTTP 200 with a body that is not JSON")
    if body.get("status") != "success":
        raise MetricError(
            f"Prometheus at {url} answered HTTP 200 without the status of a query API reply"
        )
    return body.get("data")


def _scalar(data: Any, *, promql: str) -> float | None:
    """One number from an instant query's result; None for an empty result or NaN."""
    kind = _result_type(data)
    if kind == "scalar":
        return _number(data.get("result"))
    if kind != "vector":
        raise MetricError(f"query returned a {kind}, not an instant vector or a scalar: {promql}")
    result = _series(data)
    if not result:
        return None
    if len(result) > 1:
        raise MetricError(
            f"query returned {len(result)} series, a check needs one "
            f"(aggregate it, e.g. with sum or max; labels: {_label_names(result)}): {promql}"
        )
    return _number(result[0].get("value") if isinstance(result[0], dict) else None)


def _by_label(data: Any, *, label: str, promql: str) -> dict[str, float]:
    """Each series' number from an instant vector, keyed by its `label` (a series without it
    is keyed "", as PromQL reads a missing label); NaN values are left out."""
    kind = _result_type(data)
    if kind != "vector":
        raise MetricError(f"query returned a {kind}, not an instant vector by {label}: {promql}")
    values: dict[str, float] = {}
    seen: set[str] = set()
    for item in _series(data):
        metric = item.get("metric") if isinstance(item, dict) else None
        key = str((metric if isinstance(metric, dict) else {}).get(label, ""))
        if key in seen:
            shown = key[:_SHOWN_LABEL_VALUE]
            raise MetricError(
                f"query returned several series with {label}={shown!r}, a check needs one "
                f"per {label} (aggregate it, e.g. with max by ({label})): {promql}"
            )
        seen.add(key)
        value = _number(item.get("value") if isinstance(item, dict) else None)
        if value is not None:
            values[key] = value
    return values


def _result_type(data: Any) -> str:
    if not isinstance(data, dict):
        raise MetricError("unexpected query result: `data` is not an object")
    kind = data.get("resultType")
    return kind if isinstance(kind, str) and kind in _RESULT_TYPES else "result of an unknown type"


def _series(data: dict[str, Any]) -> list[Any]:
    result = data.get("result")
    if not isinstance(result, list):
        raise MetricError("unexpected query result: `result` is not a list")
    return result


def _number(pair: Any) -> float | None:
    """The value of a [timestamp, "value"] pair; Prometheus writes NaN and ±Inf as strings."""
    try:
        value = float(pair[1])
    except (TypeError, ValueError, IndexError, KeyError):
        raise MetricError("unexpected sample in query result: not a [time, number] pair") from None
    return None if math.isnan(value) else value


def _label_names(result: list[Any]) -> str:
    """The label names of the first series (names only: values are the reply's data)."""
    metric = result[0].get("metric") if isinstance(result[0], dict) else None
    names = sorted(k for k in (metric if isinstance(metric, dict) else {}) if _LABEL_NAME.match(k))
    return ", ".join(names[:10]) or "none"


# A Secret is read for analysis.prometheus only when it carries this label, set to "true":
# without it, any ModelDeployment author could send any Secret of the namespace to a URL of
# their choosing (the Authorization header goes wherever analysis.prometheus.url points).
CREDENTIALS_LABEL: Final = f"{api.GROUP}/prometheus-credentials"


def secret_value(secret: Mapping[str, Any], *, key: str, what: str) -> str:
    """One key of a Secret read for analysis.prometheus (`what`: which field names it),
    decoded; ValueError when the Secret has not opted in (CREDENTIALS_LABEL) or lacks the key.
    """
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '')}/{meta.get('name', '')}"
    labels = meta.get("labels") or {}
    if labels.get(CREDENTIALS_LABEL) != "true":
        raise ValueError(
            f"analysis.prometheus.{what}: {where} is not labelled {CREDENTIALS_LABEL}=true, "
            "which a Secret needs to be sent to Prometheus"
        )
    data = (secret.get("data") or {}).get(key)
    if not isinstance(data, str):
        raise ValueError(f"analysis.prometheus.{what}: {where} has no key {key!r}")
    try:
        return base64.b64decode(data, validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(
            f"analysis.prometheus.{what}: {where} key {key!r} is not base64 UTF-8 text"
        ) from None


def auth_headers(*, bearer_token: str | None, authorization: str | None) -> dict[str, str]:
    """The Authorization header from the Secret values the operator read (None: not set).

    Secrets made with `echo ... | kubectl create secret` end in a newline: values are stripped.
    Both at once is ambiguous and an empty or multi-line value is a broken Secret: ValueError.
    """
    if bearer_token is not None and authorization is not None:
        raise ValueError(
            "analysis.prometheus: set bearerTokenSecretRef or authorizationSecretRef, not both"
        )
    if authorization is not None:
        return {"Authorization": _header_value(authorization, what="authorizationSecretRef")}
    if bearer_token is not None:
        return {
            "Authorization": "Bearer " + _header_value(bearer_token, what="bearerTokenSecretRef")
        }
    return {}


def _header_value(value: str, *, what: str) -> str:
    stripped = value.strip()
    if not stripped:
        raise ValueError(f"analysis.prometheus.{what}: the Secret value is empty")
    if "\n" in stripped or "\r" in stripped:
        raise ValueError(f"analysis.prometheus.{what}: the Secret value spans several lines")
    return stripped


DEFAULT_PROMETHEUS_URL = "http://prometheus.monitoring:9090"


def build_provider(
    *,
    analysis: api.AnalysisSpec,
    headers: Mapping[str, str],
    default_url: str = DEFAULT_PROMETHEUS_URL,
) -> MetricProvider:
    """The provider an analysis reads from (`analysis.prometheus`, the only kind so far);
    `headers` carry credentials from its Secrets, and `default_url` serves analyses that name
    no URL (the operator's setting)."""
    ref = analysis.prometheus
    return PrometheusProvider(
        url=ref.url or default_url, timeout=api.parse_duration(ref.timeout), headers=headers
    )


async def measure(
    *, provider: MetricProvider, queries: Mapping[str, str], at: datetime
) -> Measurements:
    """Every check's sample at `at`, queried concurrently; a failed query is a failed sample."""
    names = list(queries)
    samples = await asyncio.gather(
        *(
            _sample(
                provider=provider,
                promql=queries[name],
                label=checks.SERIES_LABEL.get(name),
                lowest=name in checks.LOWEST_IS_WORST,
                every=name in checks.EVERY_SERIES,
                at=at,
            )
            for name in names
        )
    )
    return Measurements(time=at, samples=dict(zip(names, samples, strict=True)))


async def _sample(
    *,
    provider: MetricProvider,
    promql: str,
    label: str | None,
    lowest: bool,
    at: datetime,
    every: bool = False,
) -> Sample:
    """The answer to `promql`; with `label`, one value per value of it, reduced to the
    largest (`lowest`: the smallest) and the worst few, or (`every`: counts per bin) kept
    whole."""
    try:
        if label is None:
            return Sample(value=await provider.query(promql, at=at))
        by_label = await provider.query_by(promql, label=label, at=at)
        if every:
            return Sample.every(by_label)
        return Sample.worst_of(by_label, lowest=lowest)
    except MetricError as error:
        return Sample.failed(str(error))
