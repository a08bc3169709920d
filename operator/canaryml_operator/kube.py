"""The operator's Kubernetes I/O: a thin JSON layer over the official client.

The typed client turns every answer into model objects; the operator only needs JSON, so calls
go through the client's own request machinery (configuration, auth, TLS, retries of urllib3)
and answers are parsed with `json`. `apply_*` functions are the only writers.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

import urllib3
from canaryml_api import resource as api
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

from canaryml_operator.children import ChildKey
from canaryml_operator.reconcile import Action, Plan, owned_by
from canaryml_operator.state import Owner

log = logging.getLogger(__name__)

# kind -> (API path prefix, plural)
# Every kind the operator reads or writes; the Helm chart's RBAC must cover exactly these.
RESOURCES: dict[str, tuple[str, str]] = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
    "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
    "HTTPRoute": ("/apis/gateway.networking.k8s.io/v1", "httproutes"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "NetworkPolicy": ("/apis/networking.k8s.io/v1", "networkpolicies"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "Secret": ("/api/v1", "secrets"),
    api.KIND: (f"/apis/{api.GROUP}/{api.VERSION}", api.PLURAL),
}
MERGE_PATCH = "application/merge-patch+json"
TIMEOUT_SECONDS = 10.0


class KubeError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class KubeClient:
    def __init__(self, api_client: k8s.ApiClient) -> None:
        self._api = api_client

    def request(
        self,
        method: str,
        path: str,
        *,
        query: Mapping[str, str] | None = None,
        body: Any = None,
        content_type: str = "application/json",
    ) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        serialized = self._api.param_serialize(
            method=method,
            resource_path=path,
            query_params=list((query or {}).items()),
            header_params=headers,
            body=body,
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(*serialized, _request_timeout=TIMEOUT_SECONDS)
        except ApiException as error:  # transport-level failure
            raise KubeError(error.status or 0, str(error.reason)) from error
        except urllib3.exceptions.HTTPError as error:  # refused, reset, timed out
            raise KubeError(0, f"API server unreachable: {error}") from error
        data = response.read()  # type: ignore[no-untyped-call]
        if response.status >= 400:
            raise KubeError(response.status, _message(data))
        return json.loads(data) if data else None

    def path(self, kind: str, namespace: str, name: str | None = None) -> str:
        prefix, plural = RESOURCES[kind]
        base = f"{prefix}/namespaces/{namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            found: dict[str, Any] = self.request("GET", self.path(kind, namespace, name))
        except KubeError as error:
            if error.status == 404:
                return None
            raise
        return found

    def list(self, kind: str, namespace: str, labels: Mapping[str, str]) -> list[dict[str, Any]]:
        selector = ",".join(f"{key}={value}" for key, value in labels.items())
        answer = self.request("GET", self.path(kind, namespace), query={"labelSelector": selector})
        items: list[dict[str, Any]] = answer.get("items") or []
        # Filter here too: the selector is an optimisation, the labels are the contract.
        return [
            {"kind": kind, **item}
            for item in items
            if all(
                item.get("metadata", {}).get("labels", {}).get(k) == v for k, v in labels.items()
            )
        ]

    def create(self, manifest: Mapping[str, Any]) -> dict[str, Any]:
        meta = manifest["metadata"]
        created: dict[str, Any] = self.request(
            "POST", self.path(manifest["kind"], meta["namespace"]), body=dict(manifest)
        )
        return created

    def patch(
        self,
        kind: str,
        namespace: str,
        name: str,
        patch: Mapping[str, Any],
        *,
        subresource: str | None = None,
    ) -> dict[str, Any]:
        path = self.path(kind, namespace, name) + (f"/{subresource}" if subresource else "")
        patched: dict[str, Any] = self.request(
            "PATCH", path, body=dict(patch), content_type=MERGE_PATCH
        )
        return patched

    def delete(self, kind: str, namespace: str, name: str) -> None:
        try:
            self.request(
                "DELETE",
                self.path(kind, namespace, name),
                query={"propagationPolicy": "Background"},
            )
        except KubeError as error:
            if error.status != 404:
                raise

    def watch(
        self,
        kind: str,
        namespace: str,
        *,
        name: str | None = None,
        resource_version: str | None = None,
        timeout_seconds: int = 60,
    ) -> Iterator[dict[str, Any]]:
        """The watch API's events (`{"type": ..., "object": ...}`) on `kind` in `namespace`,
        after `resource_version`, until the server ends the stream (after `timeout_seconds`).
        With `name`, only that object's (a field selector, and filtered here too).
        KubeError when the watch cannot start or the stream breaks."""
        query = {"watch": "true", "timeoutSeconds": str(timeout_seconds)}
        if name is not None:
            query["fieldSelector"] = f"metadata.name={name}"
        if resource_version:
            query["resourceVersion"] = resource_version
        serialized = self._api.param_serialize(
            method="GET",
            resource_path=self.path(kind, namespace),
            query_params=list(query.items()),
            header_params={"Accept": "application/json"},
            auth_settings=["BearerToken"],
        )
        try:
            response = self._api.call_api(
                *serialized, _request_timeout=(TIMEOUT_SECONDS, timeout_seconds + TIMEOUT_SECONDS)
            )
        except ApiException as error:
            raise KubeError(error.status or 0, str(error.reason)) from error
        except urllib3.exceptions.HTTPError as error:
            raise KubeError(0, f"API server unreachable: {error}") from error
        stream = response.response
        try:
            if response.status >= 400:
                raise KubeError(response.status, _message(stream.data))
            for line in stream:
                if not line.strip():
                    continue
                event: dict[str, Any] = json.loads(line)
                found = (event.get("object") or {}).get("metadata") or {}
                if name is None or event.get("type") == "ERROR" or found.get("name") == name:
                    yield event
        except urllib3.exceptions.HTTPError as error:  # reset, read timed out
            raise KubeError(0, f"watch broken: {error}") from error
        finally:
            stream.release_conn()


def _message(data: bytes | None) -> str:
    try:
        return str(json.loads(data or b"{}").get("message") or data)
    except ValueError:
        return repr(data)


def load_client() -> KubeClient:
    """In a pod, the service account; elsewhere, the kubeconfig ($KUBECONFIG or ~/.kube)."""
    configuration = k8s.Configuration()
    try:
        k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        k8s_config.load_kube_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
    return KubeClient(k8s.ApiClient(configuration))


def child_kinds(spec: api.ModelDeploymentSpec | None) -> tuple[str, ...]:
    """The kinds to list for a resource: Deployments and Services always (a spec that became
    invalid keeps them), the router's RBAC objects with the builtin router, and HTTPRoutes
    with the gateway-api router.

    Not listing a kind means not cleaning it up: a router's ServiceAccount, Role and
    RoleBinding stay (inert) after a switch away from builtin until the resource is deleted,
    and an HTTPRoute after a switch away from gateway-api is removed only because it is listed
    whenever the HTTPRoute API exists (see read_children).
    """
    # PodDisruptionBudgets and NetworkPolicies always: one of one replica, or with the
    # operator's network policies turned off, is deleted. HorizontalPodAutoscalers always: one
    # whose autoscaling was removed (or a canary's back at weight 0) is deleted.
    kinds: tuple[str, ...] = (
        "Deployment",
        "Service",
        "HTTPRoute",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "HorizontalPodAutoscaler",
    )
    if spec is not None and spec.routing.router == "builtin":
        kinds += ("ServiceAccount", "Role", "RoleBinding")
    return kinds


# Every kind a ModelDeployment's children can have (child_kinds names a subset for each).
CHILD_KINDS: tuple[str, ...] = (
    "Deployment",
    "Service",
    "HTTPRoute",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
    "ServiceAccount",
    "Role",
    "RoleBinding",
)
# Large fields the operator never reads: a child kept in memory (the children index) drops them.
_DROPPED_METADATA = ("managedFields", "creationTimestamp", "selfLink")
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def api_reference(kind: str) -> tuple[str, str, str]:
    """(group, version, plural) of a kind, as kopf names resources ("" for the core group)."""
    prefix, plural = RESOURCES[kind]
    parts = prefix.strip("/").split("/")  # ["api", "v1"] or ["apis", group, version]
    if parts[0] == "api":
        return "", parts[1], plural
    return parts[1], parts[2], plural


def trim_child(kind: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """A child as the operator reads it (reconcile.plan_children, DeploymentState.of): its
    metadata without managedFields and the like, every other top-level field (a Role's rules,
    a RoleBinding's subjects are top-level), and a status only for Deployments (their rollout
    progress); `kind` set, as a LIST's items lack it."""
    trimmed: dict[str, Any] = {
        key: value
        for key, value in body.items()
        if key not in ("metadata", "status") or (key == "status" and kind == "Deployment")
    }
    meta = {k: v for k, v in (body.get("metadata") or {}).items() if k not in _DROPPED_METADATA}
    annotations = meta.get("annotations")
    if annotations and any(name in annotations for name in _DROPPED_ANNOTATIONS):
        meta["annotations"] = {
            k: v for k, v in annotations.items() if k not in _DROPPED_ANNOTATIONS
        }
    trimmed["metadata"] = meta
    trimmed["kind"] = kind
    return trimmed


class ChildSource(Protocol):
    """Where a reconcile reads a resource's children from instead of listing them: the
    operator's in-memory index of its watches (main.ChildIndex)."""

    def children(
        self, namespace: str, owner: str, kinds: tuple[str, ...]
    ) -> list[dict[str, Any]]: ...


def read_children(
    client: KubeClient,
    owner: Owner,
    labels: Mapping[str, str],
    kinds: tuple[str, ...] = ("Deployment", "Service"),
    source: ChildSource | None = None,
) -> list[dict[str, Any]]:
    """The owner's children: from `source` when given (no API call), else one LIST a kind."""
    if source is not None:
        return source.children(owner.namespace, owner.name, kinds)
    found: list[dict[str, Any]] = []
    for kind in kinds:
        try:
            found += client.list(kind, owner.namespace, labels)
        except KubeError as error:
            if kind == "HTTPRoute" and error.status == 404:
                continue  # the Gateway API is not installed: there is no route to clean up
            raise
    return found


def apply_plan(
    client: KubeClient,
    owner: Owner,
    plan: Plan,
    conflicts: dict[ChildKey, dict[str, Any]] | None = None,
) -> tuple[list[Action], dict[ChildKey, dict[str, Any] | None]]:
    """Carry out the plan: the actions that changed something, and each child as it now is
    (None once deleted).

    A create that meets an existing object the owner does not own (another resource's child
    of the same name, or one made by hand) leaves it alone and adds it to `conflicts`: the
    owner reports it (reconcile.with_conflicts). One it owns was missing from the children
    read (the index behind its watch, or a concurrent reconcile): it exists, and is returned
    as it is; a patch that meets none lost a race; the next event settles either.
    """
    done: list[Action] = []
    results: dict[ChildKey, dict[str, Any] | None] = {}
    for action in plan.actions:
        key: ChildKey = action.key
        try:
            if action.verb == "create":
                results[key] = {"kind": key.kind, **client.create(action.manifest)}
            elif action.verb == "patch":
                patched = client.patch(key.kind, owner.namespace, key.name, action.manifest)
                results[key] = {"kind": key.kind, **patched}
            else:
                client.delete(key.kind, owner.namespace, key.name)
                results[key] = None
        except KubeError as error:
            if (action.verb, error.status) == ("create", 409):
                existing = client.get(key.kind, owner.namespace, key.name)
                if existing is not None and not owned_by(existing, owner):
                    if conflicts is not None:
                        conflicts[key] = existing
                    continue
                if existing is not None:
                    # Ours already: the children index had not brought it yet (a restart, a
                    # watch behind). The object as it is, not a missing one, decides the status.
                    results[key] = {"kind": key.kind, **existing}
            if (action.verb, error.status) in {("create", 409), ("patch", 404)}:
                log.info("%s %s %s: %s", action.verb, key.kind, key.name, error)
                continue
            raise
        done.append(action)
    return done, results


def apply_status(
    client: KubeClient,
    owner: Owner,
    status: Mapping[str, Any],
    *,
    resource_version: str | None = None,
) -> str | None:
    """Write the status; return the object's new resourceVersion. With `resource_version`,
    only over that version of the object (a 409 otherwise): the analysis daemon and the event
    handlers both write the rollout state, and neither may overwrite a newer one."""
    patch: dict[str, Any] = {"status": dict(status)}
    if resource_version:
        patch["metadata"] = {"resourceVersion": resource_version}
    written = client.patch(api.KIND, owner.namespace, owner.name, patch, subresource="status")
    version = ((written or {}).get("metadata") or {}).get("resourceVersion")
    return str(version) if version else None


def read_secret(client: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    """A Secret as the API returns it; a KubeError (404 included) says why not."""
    secret = client.get("Secret", namespace, name)
    if secret is None:
        raise KubeError(404, f"Secret {namespace}/{name} not found")
    return secret
