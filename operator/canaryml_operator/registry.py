"""The write-back to an MLflow model registry (spec.registry): the REST calls (shell).

`writeback` (the core) says which outcomes are due; this module makes each call with MLflow's
REST API under the rules of every call to a URL a spec names (`outbound`: no redirects,
size-capped replies, one timeout) and returns the status with each attempt recorded
(`writeback.record`). It never raises: a registry that is down or refuses is a record that
says so, tried again at the next turn.

    alias  POST /api/2.0/mlflow/registered-models/alias       {name, alias, version}
    stage  POST /api/2.0/mlflow/model-versions/transition-stage
                                        {name, version, stage, archive_existing_versions}
    tag    POST /api/2.0/mlflow/model-versions/set-tag        {name, version, key, value}
    (a models:/NAME@ALIAS URI: GET /api/2.0/mlflow/registered-models/alias first)
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import re
import threading
from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final

import canaryml_api.resource as api
import httpx

from canaryml_operator import outbound, writeback
from canaryml_operator.kube import KubeClient, KubeError, read_secret

log = logging.getLogger(__name__)

# A Secret the operator reads to send its value out says so (as webhook and Prometheus ones do).
CREDENTIALS_LABEL: Final = f"{api.GROUP}/registry-credentials"
TIMEOUT_SECONDS = 10.0  # one call; a turn tries its few writes one after another
MAX_REPLY_BYTES = 64 * 1024
_API = "/api/2.0/mlflow"
_ERROR_CODE = re.compile(r"[A-Z][A-Z_]{0,63}")


class RegistryError(Exception):
    pass


def _what(tracking_uri: str) -> str:
    return f"MLflow at {tracking_uri}"


def _error_of(reply: outbound.Reply) -> str:
    """The status and MLflow's error code (RESOURCE_DOES_NOT_EXIST ...), when the reply has one
    that looks like one: never the reply's text, which the server at a spec's URL chose."""
    code = ""
    try:
        body = json.loads(reply.body)
        found = body.get("error_code") if isinstance(body, dict) else None
        if isinstance(found, str) and _ERROR_CODE.fullmatch(found):
            code = found
    except ValueError:
        pass
    return f"HTTP {reply.status}" + (f" {code}" if code else "")


async def _call(
    http: httpx.AsyncClient,
    tracking_uri: str,
    method: str,
    path: str,
    body: Mapping[str, Any],
) -> dict[str, Any]:
    what = _what(tracking_uri)
    redirect = "set spec.registry.mlflow.trackingUri to the URL it redirects to"
    too_large = "is trackingUri an MLflow tracking server?"
    url = tracking_uri.rstrip("/") + _API + path
    try:
        if method == "GET":
            reply = await outbound.get(
                http,
                url,
                params={key: str(value) for key, value in body.items()},
                what=what,
                timeout=TIMEOUT_SECONDS,
                max_bytes=MAX_REPLY_BYTES,
                redirect_hint=redirect,
                too_large_hint=too_large,
            )
        else:
            reply = await outbound.post(
                http,
                url,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/json"},
                what=what,
                timeout=TIMEOUT_SECONDS,
                max_bytes=MAX_REPLY_BYTES,
                redirect_hint=redirect,
                too_large_hint=too_large,
            )
    except outbound.OutboundError as error:
        raise RegistryError(str(error)) from None
    if reply.status != 200:
        raise RegistryError(f"{_what(tracking_uri)} answered {_error_of(reply)}")
    try:
        answer = json.loads(reply.body or b"{}")
    except ValueError:
        raise RegistryError(f"{_what(tracking_uri)} answered something not JSON") from None
    return answer if isinstance(answer, dict) else {}


async def _version_of(http: httpx.AsyncClient, tracking_uri: str, target: writeback.Target) -> str:
    if target.version is not None:
        return target.version
    answer = await _call(
        http,
        tracking_uri,
        "GET",
        "/registered-models/alias",
        {"name": target.name, "alias": target.alias or ""},
    )
    version = answer.get("model_version", {}).get("version")
    if not isinstance(version, str):
        raise RegistryError(f"{_what(tracking_uri)} named no version for @{target.alias}")
    return version


async def apply_write(
    http: httpx.AsyncClient, tracking_uri: str, write: writeback.Write
) -> writeback.Outcome:
    """Make one write; its outcome (never an exception)."""
    final = writeback.unwritable(write)
    if final is not None:
        return final
    target = write.target
    assert target is not None
    try:
        version = await _version_of(http, tracking_uri, target)
        if write.kind == "alias":
            await _call(
                http,
                tracking_uri,
                "POST",
                "/registered-models/alias",
                {"name": target.name, "alias": write.name, "version": version},
            )
        elif write.kind == "stage":
            await _call(
                http,
                tracking_uri,
                "POST",
                "/model-versions/transition-stage",
                {
                    "name": target.name,
                    "version": version,
                    "stage": write.name,
                    "archive_existing_versions": write.archive_existing,
                },
            )
        else:
            await _call(
                http,
                tracking_uri,
                "POST",
                "/model-versions/set-tag",
                {"name": target.name, "version": version, "key": write.name, "value": write.value},
            )
    except RegistryError as error:
        return writeback.Outcome(done=False, result=str(error))
    return writeback.Outcome(
        done=True,
        result=f"{write.action} set on {target.name} version {version}",
        registry_version=version,
    )


async def write_back(
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    *,
    now: datetime,
    token: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> api.ModelDeploymentStatus:
    """`status` with the due write-backs made and recorded in status.registryWrites."""
    writes = writeback.due(spec, status)
    if not writes or spec.registry is None:
        return status
    tracking_uri = spec.registry.mlflow.tracking_uri
    headers = {"Authorization": f"Bearer {token}"} if token else None
    records = list(status.registry_writes)
    async with outbound.client(
        timeout=TIMEOUT_SECONDS, headers=headers, transport=transport
    ) as http:
        for write in writes:
            outcome = await apply_write(http, tracking_uri, write)
            if not outcome.done:
                log.warning(
                    "registry write-back %s of %s: %s", write.action, write.uri, outcome.result
                )
            records = writeback.record(records, write, outcome, now)
    return status.model_copy(update={"registry_writes": records})


def write_back_blocking(
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    *,
    now: datetime,
    token: str | None = None,
) -> api.ModelDeploymentStatus:
    """`write_back` for a synchronous caller (the reconcile, which may run beside an event
    loop): on a thread of its own, bounded by the calls' timeouts."""
    if not writeback.due(spec, status):
        return status
    result: list[api.ModelDeploymentStatus] = []

    def run() -> None:
        result.append(asyncio.run(write_back(spec, status, now=now, token=token)))

    thread = threading.Thread(target=run, name="canaryml-registry", daemon=True)
    thread.start()
    calls = 2 * len(writeback.due(spec, status))  # at most: an alias lookup, then the write
    thread.join(timeout=TIMEOUT_SECONDS * (calls + 1))
    return result[0] if result else status


def token(kube: KubeClient, namespace: str, ref: api.SecretKeyRef) -> str:
    """spec.registry.mlflow.tokenSecretRef's value; RegistryError when it cannot be read (the
    Secret must be labelled CREDENTIALS_LABEL=true, as every Secret the operator sends out)."""
    where = f"Secret {namespace}/{ref.name}"
    try:
        secret = read_secret(kube, namespace, ref.name)
    except KubeError as error:
        raise RegistryError(f"registry.mlflow.tokenSecretRef: {error}") from None
    labels = (secret.get("metadata") or {}).get("labels") or {}
    if labels.get(CREDENTIALS_LABEL) != "true":
        raise RegistryError(
            f"registry.mlflow.tokenSecretRef: {where} is not labelled {CREDENTIALS_LABEL}=true"
        )
    data = (secret.get("data") or {}).get(ref.key)
    try:
        return base64.b64decode(str(data), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise RegistryError(
            f"registry.mlflow.tokenSecretRef: {where} has no base64 text key {ref.key!r}"
        ) from None


def reconcile_write_back(
    spec: api.ModelDeploymentSpec | None,
    status: api.ModelDeploymentStatus,
    *,
    kube: KubeClient,
    namespace: str,
    now: datetime,
) -> api.ModelDeploymentStatus:
    """The reconcile's step (after the turn, before the status is written): the due
    write-backs made and recorded; a token that cannot be read is recorded as each one's
    failure. The rollout's decision and its children are already applied: nothing here can
    hold them."""
    if spec is None or spec.registry is None:
        return status
    writes = writeback.due(spec, status)
    if not writes:
        return status
    ref = spec.registry.mlflow.token_secret_ref
    secret: str | None = None
    if ref is not None:
        try:
            secret = token(kube, namespace, ref)
        except RegistryError as error:
            records = list(status.registry_writes)
            for write in writes:
                failed = writeback.Outcome(done=False, result=str(error))
                records = writeback.record(records, write, failed, now)
            return status.model_copy(update={"registry_writes": records})
    return write_back_blocking(spec, status, now=now, token=secret)


CHECK_TIMEOUT_SECONDS = 5.0


async def missing_model(
    spec: api.ModelDeploymentSpec,
    *,
    token: str | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> str | None:
    """Why a `models:/` URI of the spec names nothing the registry has (its answer was HTTP
    404), or None: all found, or the registry could not be asked (down, refusing, slow), which
    is not the spec's fault and leaves the model servers to say so."""
    models = writeback.registry_models(spec)
    if not models or spec.registry is None:
        return None
    tracking_uri = spec.registry.mlflow.tracking_uri
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with outbound.client(
        timeout=CHECK_TIMEOUT_SECONDS, headers=headers, transport=transport
    ) as http:
        for where, uri, target in models:
            if target.version is not None:
                path, query = (
                    "/model-versions/get",
                    {"name": target.name, "version": target.version},
                )
            else:
                path, query = (
                    "/registered-models/alias",
                    {"name": target.name, "alias": target.alias or ""},
                )
            try:
                await _call(http, tracking_uri, "GET", path, query)
            except RegistryError as error:
                if " answered HTTP 404" in str(error):
                    return f"{where} {uri}: the registry has no such model version ({error})"
                log.warning("cannot check %s in the registry: %s", uri, error)
                return None
    return None


def check_models(
    spec: api.ModelDeploymentSpec | None, *, kube: KubeClient, namespace: str
) -> str | None:
    """`missing_model` for the reconcile (a thread of its own, bounded); None without
    spec.registry or `models:/` URIs, and when the token cannot be read (the write-back
    records that)."""
    if spec is None or not writeback.registry_models(spec):
        return None
    assert spec.registry is not None
    ref = spec.registry.mlflow.token_secret_ref
    secret: str | None = None
    if ref is not None:
        try:
            secret = token(kube, namespace, ref)
        except RegistryError as error:
            log.warning("%s", error)
            return None
    result: list[str | None] = []

    def run() -> None:
        result.append(asyncio.run(missing_model(spec, token=secret)))

    thread = threading.Thread(target=run, name="canaryml-registry-check", daemon=True)
    thread.start()
    thread.join(timeout=CHECK_TIMEOUT_SECONDS * (len(writeback.registry_models(spec)) + 1))
    return result[0] if result else None
