"""The HTTP side of lifecycle webhooks (`hooks`) and notifications (`notifications`): shell.

Every call follows the rules of any URL a spec names (`outbound`: no redirects, replies read
up to MAX_REPLY_BYTES within the timeout as a whole). A webhook's answer is its status code:
2xx is yes, anything else (and no answer) is no; the reply's text is never recorded. Bodies
are compact JSON; with a key (a webhook's secretRef) the x-canaryml-signature header carries
"sha256=" and the hex HMAC-SHA256 of the body.

Secrets are read only when labelled CREDENTIALS_LABEL=true: without the opt-in, any
ModelDeployment author could have any Secret of the namespace used for their URL.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import logging
import re
import threading
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Final

from canaryml_api import resource as api
from canaryml_api.telemetry import WEBHOOK_SIGNATURE_HEADER

from canaryml_operator import hooks, notifications, outbound
from canaryml_operator.kube import KubeClient, KubeError, read_secret

log = logging.getLogger(__name__)

MAX_REPLY_BYTES: Final = 64 * 1024  # an answer is its status; a large body is read no further
NOTIFICATION_TIMEOUT_SECONDS: Final = 10.0
CREDENTIALS_LABEL: Final = f"{api.GROUP}/webhook-credentials"
_URL = re.compile(api.HTTP_URL_PATTERN)


def encode(payload: Mapping[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


def signature(key: bytes, body: bytes) -> str:
    """The x-canaryml-signature value: "sha256=<hex HMAC-SHA256 of the body>"."""
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


def secret_text(secret: Mapping[str, Any], *, key: str, what: str) -> str:
    """One key of a Secret labelled CREDENTIALS_LABEL=true, decoded and stripped; ValueError
    saying what is wrong otherwise."""
    meta = secret.get("metadata") or {}
    where = f"Secret {meta.get('namespace', '')}/{meta.get('name', '')}"
    if (meta.get("labels") or {}).get(CREDENTIALS_LABEL) != "true":
        raise ValueError(f"{what}: {where} is not labelled {CREDENTIALS_LABEL}=true")
    data = (secret.get("data") or {}).get(key)
    if not isinstance(data, str):
        raise ValueError(f"{what}: {where} has no key {key!r}")
    try:
        value = base64.b64decode(data, validate=True).decode().strip()
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"{what}: {where} key {key!r} is not base64 UTF-8 text") from None
    if not value:
        raise ValueError(f"{what}: {where} key {key!r} is empty")
    return value


def _read_key(kube: KubeClient, namespace: str, ref: api.SecretKeyRef, what: str) -> str:
    return secret_text(read_secret(kube, namespace, ref.name), key=ref.key, what=what)


async def _post(
    http: Any,
    *,
    url: str,
    what: str,
    body: bytes,
    seconds: float,
    key: bytes | None,
) -> outbound.Reply:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers[WEBHOOK_SIGNATURE_HEADER] = signature(key, body)
    return await outbound.post(
        http,
        url,
        what=what,
        timeout=seconds,
        max_bytes=MAX_REPLY_BYTES,
        redirect_hint="set the url to the final URL",
        too_large_hint="an answer is its HTTP status",
        content=body,
        headers=headers,
    )


async def call_hooks(
    calls: Sequence[hooks.Call], *, kube: KubeClient, namespace: str, now: datetime
) -> list[hooks.Result]:
    """Make each call (concurrently); every one gives a Result, never an exception."""
    if not calls:
        return []
    async with outbound.client(timeout=api.MAX_WEBHOOK_TIMEOUT_SECONDS) as http:
        return list(
            await asyncio.gather(
                *(_call(http, call, kube=kube, namespace=namespace, now=now) for call in calls)
            )
        )


async def _call(
    http: Any, call: hooks.Call, *, kube: KubeClient, namespace: str, now: datetime
) -> hooks.Result:
    hook = call.hook
    what = f"webhook {hook.name} at {hook.url}"

    def result(ok: bool, detail: str) -> hooks.Result:
        return hooks.Result(hook.name, call.occasion, ok, detail, now)

    key = None
    if hook.secret_ref is not None:
        try:
            text = await asyncio.to_thread(
                _read_key, kube, namespace, hook.secret_ref, f"webhook {hook.name} secretRef"
            )
        except (KubeError, ValueError) as error:
            return result(False, f"not called: {error}")
        key = text.encode()
    try:
        reply = await _post(
            http,
            url=hook.url,
            what=what,
            body=encode(call.payload),
            seconds=api.parse_duration(hook.timeout),
            key=key,
        )
    except outbound.OutboundError as error:
        log.info("%s (%s, attempt %d): %s", what, hook.type, call.attempt, error)
        return result(False, str(error))
    log.info("%s (%s, attempt %d): HTTP %d", what, hook.type, call.attempt, reply.status)
    return result(200 <= reply.status < 300, f"HTTP {reply.status}")


def notify(messages: Sequence[notifications.Message], *, kube: KubeClient, namespace: str) -> None:
    """Send the messages in the background: a notification never waits for, nor holds, the
    reconcile that made it."""
    if not messages:
        return
    thread = threading.Thread(
        target=lambda: asyncio.run(send(messages, kube=kube, namespace=namespace)),
        name="canaryml-notify",
        daemon=True,
    )
    thread.start()


async def send(
    messages: Sequence[notifications.Message], *, kube: KubeClient, namespace: str
) -> list[str]:
    """Send each message once; what became of each ("HTTP 200", or why not), also logged."""
    async with outbound.client(timeout=NOTIFICATION_TIMEOUT_SECONDS) as http:
        return list(
            await asyncio.gather(
                *(_send(http, message, kube=kube, namespace=namespace) for message in messages)
            )
        )


async def _send(
    http: Any, message: notifications.Message, *, kube: KubeClient, namespace: str
) -> str:
    target = message.target
    url = target.url
    shown = url or "(urlSecretRef)"  # a URL from a Secret is a secret: never logged
    try:
        if url is None:
            assert target.url_secret_ref is not None
            url = await asyncio.to_thread(
                _read_key, kube, namespace, target.url_secret_ref, "notification urlSecretRef"
            )
            if not _URL.match(url):
                raise ValueError(
                    "notification urlSecretRef: the Secret's value is not an http(s) URL"
                )
        reply = await _post(
            http,
            url=url,
            what=f"notification at {shown}",
            body=encode(message.body),
            seconds=NOTIFICATION_TIMEOUT_SECONDS,
            key=None,
        )
    except (KubeError, ValueError, outbound.OutboundError) as error:
        log.warning("%s notification of %s to %s: %s", message.event, namespace, shown, error)
        return str(error)
    outcome = f"HTTP {reply.status}"
    level = logging.INFO if 200 <= reply.status < 300 else logging.WARNING
    log.log(level, "%s notification to %s: %s", message.event, shown, outcome)
    return outcome
