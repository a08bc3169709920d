"""Outbound HTTP to a URL a spec names: the one set of rules for every such call (shell).

The metrics provider (`providers`), the lifecycle webhooks and the notifications (`delivery`)
all POST to URLs a ModelDeployment's author chose, so they share these rules: redirects are
refused, never followed (they would carry credentials and data where the spec did not say);
replies are read streamed up to a byte limit, uncompressed, within the timeout as a whole (a
reply dripping a byte at a time ends at the timeout too); and errors say the HTTP status and a
fixed description, never the reply's text.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx

USER_AGENT: Final = "canaryml-operator"


class OutboundError(Exception):
    """A call that got no usable reply: unreachable, slow, redirected, compressed, too large."""


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes


def client(
    *,
    timeout: float,
    base_url: str = "",
    headers: Mapping[str, str] | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> httpx.AsyncClient:
    """An HTTP client that never follows a redirect."""
    return httpx.AsyncClient(
        base_url=base_url,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT, **(headers or {})},
        transport=transport,
        follow_redirects=False,
    )


async def post(
    http: httpx.AsyncClient,
    url: str,
    *,
    what: str,
    timeout: float,  # noqa: ASYNC109 (the whole exchange's bound, applied with asyncio.timeout)
    max_bytes: int,
    redirect_hint: str,
    too_large_hint: str,
    data: Mapping[str, str] | None = None,
    content: bytes | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """POST and read the reply whole, under the rules above. `what` names the peer in errors
    ("Prometheus at http://..."); the hints say what to do about a redirect or a large reply."""
    return await _bounded(
        _read(
            http,
            url,
            what=what,
            max_bytes=max_bytes,
            redirect_hint=redirect_hint,
            too_large_hint=too_large_hint,
            data=data,
            content=content,
            headers=headers,
        ),
        what=what,
        timeout=timeout,
    )


async def get(
    http: httpx.AsyncClient,
    url: str,
    *,
    what: str,
    timeout: float,  # noqa: ASYNC109 (the whole exchange's bound, applied with asyncio.timeout)
    max_bytes: int,
    redirect_hint: str,
    too_large_hint: str,
    params: Mapping[str, str] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Reply:
    """GET and read the reply whole, under the same rules as `post`."""
    return await _bounded(
        _read(
            http,
            url,
            what=what,
            max_bytes=max_bytes,
            redirect_hint=redirect_hint,
            too_large_hint=too_large_hint,
            data=None,
            content=None,
            headers=headers,
            method="GET",
            params=params,
        ),
        what=what,
        timeout=timeout,
    )


async def _bounded(
    exchange: Coroutine[Any, Any, Reply],
    *,
    what: str,
    timeout: float,  # noqa: ASYNC109 (the whole exchange's bound, applied with asyncio.timeout)
) -> Reply:
    """`exchange` within `timeout` seconds, its transport errors as OutboundErrors."""
    try:
        async with asyncio.timeout(timeout):
            return await exchange
    except (httpx.TimeoutException, TimeoutError):
        raise OutboundError(f"{what} did not answer within {timeout:g} s") from None
    except httpx.HTTPError as error:
        raise OutboundError(f"{what} is unreachable: {describe(error)}") from None


async def _read(
    http: httpx.AsyncClient,
    url: str,
    *,
    what: str,
    max_bytes: int,
    redirect_hint: str,
    too_large_hint: str,
    data: Mapping[str, str] | None,
    content: bytes | None,
    headers: Mapping[str, str] | None,
    method: str = "POST",
    params: Mapping[str, str] | None = None,
) -> Reply:
    sent = {"Accept-Encoding": "identity", **(headers or {})}  # a compressed reply could expand
    form = dict(data) if data is not None else None
    query = dict(params) if params is not None else None
    async with http.stream(
        method, url, data=form, content=content, headers=sent, params=query
    ) as reply:
        if reply.is_redirect or 300 <= reply.status_code < 400:
            raise OutboundError(
                f"{what} answered HTTP {reply.status_code}, a redirect: redirects are not "
                f"followed ({redirect_hint})"
            )
        encoding = reply.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise OutboundError(
                f"{what} answered a compressed reply ({encoding[:20]!r}) although asked for none"
            )
        too_large = OutboundError(
            f"{what} answered more than {max_bytes // 1024} KiB: {too_large_hint}"
        )
        declared = reply.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise too_large
        body = bytearray()
        async for chunk in reply.aiter_raw():
            body += chunk
            if len(body) > max_bytes:
                raise too_large
        return Reply(reply.status_code, bytes(body))


def describe(error: httpx.HTTPError) -> str:
    return str(error) or type(error).__name__
