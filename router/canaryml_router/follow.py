"""The router's weight source in a cluster: a watch on its one ModelDeployment.

Why a watch of one object by `fieldSelector=metadata.name=NAME` (list, then watch from the
list's resourceVersion): a weight change reaches the router as soon as the operator writes it,
without polling, and RBAC can grant get/list/watch on that object alone (`resourceNames`).

The connection details (API server, token, TLS) come from the official `kubernetes` client's
configuration loaders, in-cluster first, then the kubeconfig; the requests themselves go through
aiohttp so that the watch is a task of the router's event loop, cancelled cleanly at shutdown.
When the API server cannot be reached, the router keeps its last table and retries with a
backoff capped at a few seconds: the data plane must not stop because the control plane did.
A watch that goes silent (a network partition, an API server that stopped answering: the
connection stays open, nothing says it is dead) is dropped once it has been silent for as long
again as the server would have kept it open (`watch_timeout`, a minute, so at most two minutes),
and a list that gets no answer within `request_timeout`: then the router lists again.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from canaryml_api.resource import GROUP, PLURAL, VERSION
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from canaryml_router.core import ApplyTable, table_from_model_deployment

log = logging.getLogger("canaryml.router.follow")

NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


class _ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class _WatchGoneError(Exception):
    """The watch's resourceVersion is too old (410): list again."""


def load_configuration() -> k8s.Configuration:
    """In a pod, the service account; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return configuration


def default_namespace() -> str:
    """The pod's namespace, else the kubeconfig context's, else `default`."""
    if NAMESPACE_FILE.is_file():
        namespace = NAMESPACE_FILE.read_text(encoding="utf-8").strip()
        if namespace:
            return namespace
    try:
        _, active = k8s_config.list_kube_config_contexts()  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError):
        return "default"
    in_context = ((active or {}).get("context") or {}).get("namespace")
    return str(in_context) if in_context else "default"


def _ssl_context(configuration: k8s.Configuration) -> ssl.SSLContext | None:
    if not str(configuration.host).startswith("https"):
        return None
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert or None)
    if configuration.cert_file:
        context.load_cert_chain(configuration.cert_file, configuration.key_file or None)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


class ModelDeploymentFollower:
    """Calls `apply` with the routing table of one ModelDeployment, at start and on each change.

    Use its `run` as the router's weight source. Tracks' upstreams default to the operator's
    Services (NAME-stable, NAME-canary, NAME-shadow); `upstreams` overrides them per track.
    """

    def __init__(
        self,
        *,
        name: str,
        namespace: str,
        upstreams: Mapping[str, str] | None = None,
        configuration: k8s.Configuration | None = None,
        max_backoff: float = 4.0,
        watch_timeout: int = 60,
        request_timeout: float = 10.0,
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._upstreams = dict(upstreams or {})
        self._configuration = configuration
        self._max_backoff = max_backoff
        self._watch_timeout = watch_timeout
        self._request_timeout = request_timeout
        self._path = (
            f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace)}/{PLURAL}"
            f"?fieldSelector={quote(f'metadata.name={name}')}"
        )

    async def run(self, apply: ApplyTable) -> None:
        """Follow the object forever; only cancellation ends it."""
        configuration = self._configuration or load_configuration()
        host = str(configuration.host).rstrip("/")
        connector = aiohttp.TCPConnector(ssl=_ssl_context(configuration) or True)
        # The server ends a healthy watch after watch_timeout: silence for as long again
        # means the connection is dead (no HTTP/2 pings here, as client-go has).
        timeout = aiohttp.ClientTimeout(
            total=None, connect=5, sock_connect=5, sock_read=2 * self._watch_timeout
        )
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            backoff = initial = min(0.2, self._max_backoff)
            failures = 0
            while True:
                try:
                    version = await self._list(session, host, configuration, apply)
                    if failures:
                        log.info("the API server answers again: following %s", self._what)
                    failures, backoff = 0, initial
                    while True:
                        version = await self._watch(session, host, configuration, apply, version)
                except _WatchGoneError:
                    continue
                except (aiohttp.ClientError, OSError, TimeoutError, _ApiError, ValueError) as error:
                    failures += 1
                    log.warning(
                        "cannot follow %s (%s: %s); keeping the last routing table, "
                        "retrying in %.1f s",
                        self._what,
                        type(error).__name__,
                        error,
                        backoff,
                    )
                    await asyncio.sleep(backoff)
                    backoff = min(backoff * 2, self._max_backoff)

    @property
    def _what(self) -> str:
        return f"ModelDeployment {self.namespace}/{self.name}"

    def _headers(self, configuration: k8s.Configuration) -> dict[str, str]:
        # Asked for on every request: the in-cluster token is rotated on disk, and the
        # configuration's refresh hook rereads it.
        auth = configuration.auth_settings().get("BearerToken")
        headers = {"Accept": "application/json"}
        if auth and auth.get("value"):
            headers["Authorization"] = str(auth["value"])
        return headers

    async def _list(
        self,
        session: aiohttp.ClientSession,
        host: str,
        configuration: k8s.Configuration,
        apply: ApplyTable,
    ) -> str:
        """Apply the object's table (when it exists); the list's resourceVersion."""
        async with session.get(
            host + self._path,
            headers=self._headers(configuration),
            timeout=aiohttp.ClientTimeout(total=self._request_timeout),
        ) as answer:
            data = await answer.read()
            if answer.status >= 400:
                raise _ApiError(answer.status, data.decode(errors="replace")[:300])
        listing = orjson.loads(data)
        items = [item for item in listing.get("items") or [] if self._is_ours(item)]
        if items:
            self._apply(items[0], apply)
        else:
            log.warning("%s not found; waiting for it", self._what)
        return str((listing.get("metadata") or {}).get("resourceVersion") or "")

    async def _watch(
        self,
        session: aiohttp.ClientSession,
        host: str,
        configuration: k8s.Configuration,
        apply: ApplyTable,
        version: str,
    ) -> str:
        """Apply each change until the server ends the stream; the last resourceVersion seen."""
        url = (
            f"{host}{self._path}&watch=true&allowWatchBookmarks=true"
            f"&timeoutSeconds={self._watch_timeout}"
            + (f"&resourceVersion={quote(version)}" if version else "")
        )
        async with session.get(url, headers=self._headers(configuration)) as answer:
            if answer.status == 410:
                raise _WatchGoneError
            if answer.status >= 400:
                data = await answer.read()
                raise _ApiError(answer.status, data.decode(errors="replace")[:300])
            buffer = b""
            async for chunk in answer.content.iter_any():
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if line.strip():
                        version = self._event(orjson.loads(line), apply) or version
        return version

    def _event(self, event: dict[str, Any], apply: ApplyTable) -> str | None:
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _WatchGoneError
            raise _ApiError(int(obj.get("code") or 500), str(obj.get("message")))
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if kind in ("ADDED", "MODIFIED") and self._is_ours(obj):
            self._apply(obj, apply)
        elif kind == "DELETED" and self._is_ours(obj):
            log.warning("%s was deleted; keeping the last routing table", self._what)
        return str(version) if version else None

    def _is_ours(self, obj: Mapping[str, Any]) -> bool:
        # The field selector already says so; checked again for API servers that ignore it.
        return bool((obj.get("metadata") or {}).get("name") == self.name)

    def _apply(self, obj: Mapping[str, Any], apply: ApplyTable) -> None:
        try:
            table = table_from_model_deployment(obj, upstreams=self._upstreams)
        except ValueError as error:
            log.warning(
                "cannot route by %s (%s); keeping the last routing table", self._what, error
            )
            return
        apply(table)
