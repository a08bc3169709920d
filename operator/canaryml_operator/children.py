"""Builders of the objects a ModelDeployment owns: pure functions from the spec to manifests.

Per track that is present (stable always, canary and shadow when set): a Deployment running
`canaryml serve` and a Service in front of it, and a HorizontalPodAutoscaler when the track is
autoscaled (serving.autoscaling; the router's with routing.autoscaling). Plus the Service
named after the resource, the one address clients use. Nothing here talks to Kubernetes;
`reconcile` decides what to send.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal
from urllib.parse import urlparse

from canaryml_api import resource as api
from canaryml_api.routing import RoutingPlan, plan_routing
from canaryml_api.tracks import ROUTER_PORT, SERVER_PORT, SERVICE_PORT, Track, service_name

from canaryml_operator.state import (
    ANNOTATION_MODEL,
    ANNOTATION_MODEL_VERSION,
    VERSION_LABEL,
    Owner,
    TrackPlan,
    model_reference,
)

Manifest = dict[str, Any]

CONTAINER_NAME = "model-server"
MODEL_MOUNT = "/mnt/models"
CACHE_DIR = "/var/cache/canaryml"
RUN_AS = 65532  # the image's non-root user

# Labels and annotations of the canaryml.dev domain.
LABEL_MODEL_DEPLOYMENT = "canaryml.dev/model-deployment"
LABEL_TRACK = "canaryml.dev/track"
ANNOTATION_SPEC_HASH = "canaryml.dev/spec-hash"
MANAGED_BY = "canaryml-operator"

DEFAULT_RESOURCES: Mapping[str, Mapping[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}


# Services are named NAME-stable, NAME-canary and NAME-shadow, and a Service name is a DNS-1035
# label of at most 63 characters; NAME is also a label value (63 characters).
NAME_PATTERN = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
MAX_NAME_LENGTH = 63 - len("-shadow")
_LABEL_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def name_problem(name: str) -> str | None:
    """Why a ModelDeployment of this name cannot get valid children, or None."""
    if len(name) <= MAX_NAME_LENGTH and re.fullmatch(NAME_PATTERN, name):
        return None
    return (
        f"metadata.name {name!r} cannot name the model Services ({name}-stable, ...): use at "
        f"most {MAX_NAME_LENGTH} lowercase letters, digits and '-', starting with a letter "
        "and ending with a letter or digit"
    )


UNPINNED_MODEL = "UnpinnedModel"  # the reason of the condition and the Event


def unpinned_problem(spec: api.ModelDeploymentSpec) -> str | None:
    """Why the spec's tracks are not created: a model without a sha256 while the spec does not
    allow unpinned models (the server would unpickle an unverified artifact), or None."""
    if spec.allow_unpinned_models:
        return None
    models = {"spec.model": spec.model}
    if spec.canary is not None:
        models["spec.canary.model"] = spec.canary.model
    if spec.shadow is not None:
        models["spec.shadow.model"] = spec.shadow.model
    missing = [f"{where}.sha256" for where, model in models.items() if not model.sha256]
    if not missing:
        return None
    return (
        f"{', '.join(missing)} not set: no track is created or changed until each model is "
        "pinned to its digest (the sha256 `canaryml package` prints), or "
        "spec.allowUnpinnedModels is true"
    )


def label_value(text: str) -> str:
    """`text` as a valid label value: [A-Za-z0-9._-], at most 63, alphanumeric at both ends.

    Like Helm's chart label, '+' (semver build metadata) and other characters become '_'.
    """
    return _LABEL_UNSAFE.sub("_", text)[:63].strip("._-")


ChildKind = Literal[
    "Deployment",
    "Service",
    "ServiceAccount",
    "Role",
    "RoleBinding",
    "HTTPRoute",
    "PodDisruptionBudget",
    "NetworkPolicy",
    "HorizontalPodAutoscaler",
]
ROUTER = "router"
LABEL_COMPONENT = "canaryml.dev/component"
GATEWAY_API = "gateway.networking.k8s.io/v1"


@dataclass(frozen=True)
class ChildKey:
    """How a child is addressed: kind and name (the namespace is the owner's)."""

    kind: ChildKind
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ChildKey:
        return cls(kind=manifest["kind"], name=manifest["metadata"]["name"])


def selector_labels(owner: str, track: Track) -> dict[str, str]:
    # Never changes for a given Deployment: a Deployment's selector is immutable.
    return {LABEL_MODEL_DEPLOYMENT: owner, LABEL_TRACK: track}


def common_labels(owner: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "canaryml-model",
        "app.kubernetes.io/instance": owner,
        "app.kubernetes.io/part-of": "canaryml",
        "app.kubernetes.io/managed-by": MANAGED_BY,
        LABEL_MODEL_DEPLOYMENT: owner,
    }


def track_labels(owner: str, track: Track, version: str) -> dict[str, str]:
    return {
        **common_labels(owner),
        "app.kubernetes.io/component": f"{track}-model-server",
        VERSION_LABEL: label_value(version),
        LABEL_TRACK: track,
    }


def build_owner_reference(owner: Owner) -> dict[str, Any]:
    return {
        "apiVersion": api.API_VERSION,
        "kind": api.KIND,
        "name": owner.name,
        "uid": owner.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def spec_hash(manifest: Mapping[str, Any]) -> str:
    """A digest of everything the operator sets, so a changed spec is seen whatever the
    API server normalised (quantities like `0.5` read back as `500m`)."""
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def _with_hash(manifest: Manifest) -> Manifest:
    manifest["metadata"].setdefault("annotations", {})[ANNOTATION_SPEC_HASH] = spec_hash(manifest)
    return manifest


def _metadata(owner: Owner, name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": owner.namespace,
        "labels": labels,
        "ownerReferences": [build_owner_reference(owner)],
    }


def _model_location(model: api.ModelRef) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """The URI the server loads, and the volumes and mounts it needs for it.

    pvc://CLAIM/path is the operator's own scheme: the claim is mounted read-only and the
    server reads a plain folder, as KServe does for its PVC storage URIs.
    """
    if not model.uri.startswith("pvc://"):
        return model.uri, [], []
    parsed = urlparse(model.uri)
    volume = {
        "name": "model-store",
        "persistentVolumeClaim": {"claimName": parsed.netloc, "readOnly": True},
    }
    mount = {"name": "model-store", "mountPath": MODEL_MOUNT, "readOnly": True}
    return f"{MODEL_MOUNT}/{parsed.path.lstrip('/')}", [volume], [mount]


def build_deployment(
    *,
    owner: Owner,
    track: Track,
    model: api.ModelRef,
    replicas: int | None,
    image: str,
    resources: Mapping[str, Any] | None,
    allow_unpinned: bool = False,
    feedback: api.FeedbackSpec | None = None,
    mlflow: api.MlflowRegistryRef | None = None,
) -> Manifest:
    """A track's Deployment; `replicas` None when a HorizontalPodAutoscaler owns them: the
    field is then left out, so neither a create nor a merge patch touches the HPA's value."""
    labels = track_labels(owner.name, track, model.version)
    uri, volumes, mounts = _model_location(model)
    metadata = _metadata(owner, service_name(owner.name, track), labels)
    metadata["annotations"] = {
        ANNOTATION_MODEL_VERSION: model.version,
        ANNOTATION_MODEL: model_reference(
            uri=model.uri, version=model.version, sha256=model.sha256
        ),
    }
    container = _server_container(
        owner=owner,
        track=track,
        model=model,
        uri=uri,
        mounts=mounts,
        image=image,
        resources=resources,
        allow_unpinned=allow_unpinned,
        feedback=feedback,
        mlflow=mlflow,
    )
    pod_annotations = {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(SERVER_PORT),
        "prometheus.io/path": "/metrics",
    }
    if model.sha256:
        pod_annotations["canaryml.dev/model-sha256"] = model.sha256
    manifest: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": metadata,
        "spec": {
            "replicas": replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": selector_labels(owner.name, track)},
            # A new model version comes up beside the old one; capacity never drops.
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {"labels": labels, "annotations": pod_annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "fsGroup": RUN_AS,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "cache", "emptyDir": {}},
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}},
                        *volumes,
                    ],
                },
            },
        },
    }
    if replicas is None:
        del manifest["spec"]["replicas"]
    return _with_hash(manifest)


def _secret_env(name: str, ref: api.SecretKeyRef) -> dict[str, Any]:
    return {"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}


def _server_container(
    *,
    owner: Owner,
    track: Track,
    model: api.ModelRef,
    uri: str,
    mounts: list[dict[str, Any]],
    image: str,
    resources: Mapping[str, Any] | None,
    allow_unpinned: bool = False,
    feedback: api.FeedbackSpec | None = None,
    mlflow: api.MlflowRegistryRef | None = None,
) -> dict[str, Any]:
    """The `canaryml serve` container of a track, loading the model from `uri` (on `mounts`);
    with `feedback`, the key that signs prediction ids from its Secret (the pod reads it: the
    operator never does); with `mlflow` (spec.registry.mlflow), the tracking server that
    `models:/` and `runs:/` URIs are loaded from, and its token from its Secret."""
    env = [
        {"name": "CANARYML_MODEL_URI", "value": uri},
        {"name": "CANARYML_MODEL_VERSION", "value": model.version},
        {"name": "CANARYML_TRACK", "value": track},
        {"name": "CANARYML_MODEL_DEPLOYMENT", "value": owner.name},
        {"name": "CANARYML_PORT", "value": str(SERVER_PORT)},
        {"name": "CANARYML_MODEL_CACHE_DIR", "value": CACHE_DIR},
    ]
    if model.sha256:
        env.append({"name": "CANARYML_MODEL_SHA256", "value": model.sha256})
    # Always explicit: an unpinned model loads only where the spec allows it.
    env.append({"name": "CANARYML_REQUIRE_SHA256", "value": "false" if allow_unpinned else "true"})
    if feedback is not None:
        env.append(_secret_env("CANARYML_FEEDBACK_KEY", feedback.key_secret_ref))
        if feedback.previous_keys_secret_ref is not None:
            env.append(
                _secret_env("CANARYML_FEEDBACK_PREVIOUS_KEYS", feedback.previous_keys_secret_ref)
            )
    if mlflow is not None:
        env.append({"name": "MLFLOW_TRACKING_URI", "value": mlflow.tracking_uri})
        if mlflow.token_secret_ref is not None:
            env.append(_secret_env("MLFLOW_TRACKING_TOKEN", mlflow.token_secret_ref))
    container = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": ["serve"],
        "env": env,
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        # Loading can mean downloading a large artifact: allow five minutes before liveness.
        "startupProbe": _probe("/v2/health/live", period=5, failures=60),
        "readinessProbe": _probe("/v2/health/ready", period=5, failures=3),
        "livenessProbe": _probe("/v2/health/live", period=10, failures=3),
        "resources": copy.deepcopy(dict(resources or DEFAULT_RESOURCES)),
        "securityContext": _container_security(),
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }
    return container


def _container_security() -> dict[str, Any]:
    """Non-root, read-only root filesystem, no capabilities: every container canaryml runs."""
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "runAsUser": RUN_AS,
        "runAsGroup": RUN_AS,
        "capabilities": {"drop": ["ALL"]},
    }


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def build_service(
    *, owner: Owner, name: str, labels: dict[str, str], selector: dict[str, str]
) -> Manifest:
    manifest: Manifest = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [
                {"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}
            ],
        },
    }
    return _with_hash(manifest)


def present_tracks(
    spec: api.ModelDeploymentSpec, plan: TrackPlan
) -> dict[Track, tuple[api.ModelRef, int]]:
    """Each track that runs, with its model and replica count, as the rollout plan says."""
    tracks: dict[Track, tuple[api.ModelRef, int]] = {
        "stable": (plan.stable_model, spec.serving.replicas)
    }
    if spec.canary is not None and plan.canary_replicas is not None:
        tracks["canary"] = (spec.canary.model, plan.canary_replicas)
    if spec.shadow is not None:
        tracks["shadow"] = (spec.shadow.model, spec.shadow.replicas)
    return tracks


def canary_autoscaling(stable: api.AutoscalingSpec, weight: int) -> api.AutoscalingSpec:
    """The canary's autoscaling bounds at `weight` percent: the stable's, times the weight,
    rounded up, at least 1 (Argo Rollouts' dynamic canary scale); the same CPU target."""

    def share(replicas: int) -> int:
        return max(1, math.ceil(replicas * weight / 100))

    return stable.model_copy(
        update={
            "min_replicas": share(stable.min_replicas),
            "max_replicas": share(stable.max_replicas),
        }
    )


def track_autoscaling(
    spec: api.ModelDeploymentSpec, plan: TrackPlan, track: Track
) -> api.AutoscalingSpec | None:
    """The HorizontalPodAutoscaler bounds of a track, or None when its replicas are fixed.

    With serving.autoscaling: the stable track always; the canary while it runs with weight
    (at weight 0, waiting for its pods, drained or rolled back, canary.replicas holds, and 0
    scales it down), at `plan.canary_scale` percent when the plan says (a promotion growing
    it to the stable's size); the shadow never (shadow.replicas)."""
    stable = spec.serving.autoscaling
    if stable is None or track == "shadow":
        return None
    if track == "stable":
        return stable
    if not plan.canary_replicas or plan.canary_weight <= 0:
        return None
    scale = plan.canary_scale if plan.canary_scale is not None else plan.canary_weight
    return canary_autoscaling(stable, scale)


def build_autoscaler(
    *,
    owner: Owner,
    target: Mapping[str, Any],
    autoscaling: api.AutoscalingSpec,
) -> Manifest:
    """The autoscaling/v2 HorizontalPodAutoscaler of one Deployment (`target`): named and
    labelled as it is, scaling on the pods' average CPU utilization."""
    meta = target["metadata"]
    manifest: Manifest = {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(owner, meta["name"], dict(meta["labels"])),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": meta["name"]},
            "minReplicas": autoscaling.min_replicas,
            "maxReplicas": autoscaling.max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": autoscaling.target_cpu_utilization,
                        },
                    },
                }
            ],
        },
    }
    return _with_hash(manifest)


def build_children(
    *,
    owner: Owner,
    spec: api.ModelDeploymentSpec,
    image: str,
    plan: TrackPlan | None = None,
    safeguards: Safeguards | None = None,
    default_feedback: api.FeedbackSpec | None = None,
) -> list[Manifest]:
    """Every object the ModelDeployment should own, in the order they are best created.

    `plan` (from the rollout core) says which model the stable track serves, how the canary
    runs and the canary's weight; without it, the spec as written. `safeguards` (the operator's
    settings) adds topology spread, PodDisruptionBudgets and NetworkPolicies; without it, the
    workloads alone. Raises ValueError when the owner's name cannot make valid child names.
    """
    problem = name_problem(owner.name)
    if problem:
        raise ValueError(problem)
    plan = plan or TrackPlan(spec.model, spec.canary.replicas if spec.canary else None)
    tracks = present_tracks(spec, plan)
    children: list[Manifest] = []
    for track, (model, replicas) in tracks.items():
        autoscaling = track_autoscaling(spec, plan, track)
        deployment = build_deployment(
            owner=owner,
            track=track,
            model=model,
            replicas=None if autoscaling else replicas,
            image=spec.serving.image or image,
            resources=spec.serving.resources,
            allow_unpinned=spec.allow_unpinned_models,
            feedback=spec.serving.feedback or default_feedback,
            mlflow=spec.registry.mlflow if spec.registry else None,
        )
        children.append(deployment)
        if autoscaling is not None:
            children.append(
                build_autoscaler(owner=owner, target=deployment, autoscaling=autoscaling)
            )
        children.append(
            build_service(
                owner=owner,
                name=service_name(owner.name, track),
                labels=track_labels(owner.name, track, model.version),
                selector=selector_labels(owner.name, track),
            )
        )
    endpoint_labels = {**common_labels(owner.name), "app.kubernetes.io/component": "endpoint"}
    router = spec.routing.router
    if router == "builtin":
        children += build_router(owner=owner, spec=spec, image=spec.serving.image or image)
        selector = router_selector(owner.name)
    else:
        selector = selector_labels(owner.name, "stable")
    # The address clients use: the router, or (gateway-api, none) the stable track.
    children.append(
        build_service(owner=owner, name=owner.name, labels=endpoint_labels, selector=selector)
    )
    if router == "gateway-api":
        children.append(
            build_http_route(
                owner=owner,
                spec=spec,
                routing=routing_of(spec, plan),
                canary_present="canary" in tracks,
            )
        )
    if safeguards is not None:
        children = with_safeguards(children, owner=owner, spec=spec, safeguards=safeguards)
    return children


def routing_of(spec: api.ModelDeploymentSpec, plan: TrackPlan) -> RoutingPlan:
    """The traffic of a track plan: the spec's routing with the canary weight the plan took
    from `plan_routing(spec, status)` (`rollout.plan_tracks`). What the HTTPRoute and the
    demo's router are given."""
    return replace(
        plan_routing(spec, api.ModelDeploymentStatus()),
        canary_weight=plan.canary_weight,
        canary_serving=plan.canary_serving,
    )


def router_name(owner: str) -> str:
    return f"{owner}-{ROUTER}"


def router_selector(owner: str) -> dict[str, str]:
    return {LABEL_MODEL_DEPLOYMENT: owner, LABEL_COMPONENT: ROUTER}


def build_router(*, owner: Owner, spec: api.ModelDeploymentSpec, image: str) -> list[Manifest]:
    """The builtin router: a Deployment running `canaryml router --follow`, which watches this
    one ModelDeployment (and nothing else: its Role names the object) for the weights."""
    name = router_name(owner.name)
    labels = {
        **common_labels(owner.name),
        "app.kubernetes.io/component": ROUTER,
        LABEL_COMPONENT: ROUTER,
    }
    account, role, binding = _router_access(owner, name, labels)
    container = {
        "name": ROUTER,
        "image": image,
        "args": ["router", "--follow"],
        "env": [
            {"name": "CANARYML_MODEL_DEPLOYMENT", "value": owner.name},
            {
                "name": "CANARYML_NAMESPACE",
                "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}},
            },
            {"name": "CANARYML_ROUTER_PORT", "value": str(ROUTER_PORT)},
        ],
        "ports": [{"name": "http", "containerPort": ROUTER_PORT, "protocol": "TCP"}],
        "readinessProbe": _probe("/router/readyz", period=5, failures=3),
        "livenessProbe": _probe("/router/healthz", period=10, failures=3),
        "resources": {
            "requests": {"cpu": "100m", "memory": "128Mi"},
            "limits": {"memory": "512Mi"},
        },
        "securityContext": _container_security(),
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    deployment: Manifest = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(owner, name, labels),
        "spec": {
            "replicas": spec.routing.replicas,
            "revisionHistoryLimit": 3,
            "selector": {"matchLabels": router_selector(owner.name)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "template": {
                "metadata": {
                    "labels": labels,
                    "annotations": {
                        "prometheus.io/scrape": "true",
                        "prometheus.io/port": str(ROUTER_PORT),
                        "prometheus.io/path": "/metrics",
                    },
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": True,
                    "enableServiceLinks": False,
                    "securityContext": {
                        "runAsNonRoot": True,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [container],
                    "volumes": [
                        {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "16Mi"}}
                    ],
                },
            },
        },
    }
    built = [_with_hash(account), _with_hash(role), _with_hash(binding)]
    autoscaling = spec.routing.autoscaling
    if autoscaling is None:
        return [*built, _with_hash(deployment)]
    # Its HorizontalPodAutoscaler owns the replicas: never written, so never reset.
    del deployment["spec"]["replicas"]
    deployment = _with_hash(deployment)
    autoscaler = build_autoscaler(owner=owner, target=deployment, autoscaling=autoscaling)
    return [*built, deployment, autoscaler]


def _router_access(
    owner: Owner, name: str, labels: dict[str, str]
) -> tuple[Manifest, Manifest, Manifest]:
    """The router's ServiceAccount, and the Role (bound to it) that reads its one resource."""
    account: Manifest = {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": _metadata(owner, name, labels),
        "automountServiceAccountToken": False,  # mounted by the router's pod only
    }
    role: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(owner, name, labels),
        "rules": [
            {
                "apiGroups": [api.GROUP],
                "resources": [api.PLURAL],
                "resourceNames": [owner.name],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    binding: Manifest = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": _metadata(owner, name, labels),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": owner.namespace}],
    }
    return account, role, binding


def build_http_route(
    *, owner: Owner, spec: api.ModelDeploymentSpec, routing: RoutingPlan, canary_present: bool
) -> Manifest:
    """The Gateway API route: backend weights for stable and canary, and a RequestMirror filter
    for the shadow, as the routing plan says. Without parentRefs it attaches to the resource's
    Service (mesh routing). With A/B segments (`spec.routing.canaryMatch`) and a canary whose
    rollout runs, a first rule sends the requests matching any segment to the canary alone
    (Gateway API prefers the rule with header matches to the one without, whatever the order)."""
    parents = [
        {key: value for key, value in ref.model_dump(by_alias=True).items() if value is not None}
        for ref in spec.routing.parent_refs
    ] or [{"group": "", "kind": "Service", "name": owner.name, "port": SERVICE_PORT}]
    weight = routing.canary_weight if canary_present else 0
    backends = [
        {"name": service_name(owner.name, "stable"), "port": SERVICE_PORT, "weight": 100 - weight}
    ]
    if canary_present:
        backends.append(
            {"name": service_name(owner.name, "canary"), "port": SERVICE_PORT, "weight": weight}
        )
    rule: dict[str, Any] = {"backendRefs": backends}
    if routing.shadow_percent > 0:
        shadow = {"name": service_name(owner.name, "shadow"), "port": SERVICE_PORT}
        rule["filters"] = [
            {
                "type": "RequestMirror",
                "requestMirror": {"backendRef": shadow, "percent": routing.shadow_percent},
            }
        ]
    rules = [rule]
    if canary_present and routing.canary_serving and routing.canary_match:
        segment: dict[str, Any] = {
            "matches": [gateway_match(match) for match in routing.canary_match],
            "backendRefs": [{"name": service_name(owner.name, "canary"), "port": SERVICE_PORT}],
        }
        if "filters" in rule:
            segment["filters"] = rule["filters"]
        rules = [segment, rule]
    labels = {**common_labels(owner.name), "app.kubernetes.io/component": "route"}
    manifest: Manifest = {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(owner, owner.name, labels),
        "spec": {"parentRefs": parents, "rules": rules},
    }
    return _with_hash(manifest)


def gateway_match(match: api.CanaryMatch) -> dict[str, Any]:
    """One canaryMatch rule as an HTTPRouteMatch: an Exact or RegularExpression header match;
    a cookie as a RegularExpression on the Cookie header (the name=value pair among others)."""
    if match.cookie is not None:
        pair = re.escape(f"{match.cookie}={match.value}")
        cookie = {
            "type": "RegularExpression",
            "name": "Cookie",
            "value": rf"^(?:.*;\s*)?{pair}(?:;.*)?$",
        }
        return {"headers": [cookie]}
    if match.regex is not None:
        header = {"type": "RegularExpression", "name": match.header, "value": match.regex}
    else:
        header = {"type": "Exact", "name": match.header, "value": match.value}
    return {"headers": [header]}


# Maps that must hold exactly the operator's keys: one extra key in a Service's selector (a
# merge patch adds keys, it never removes them) and the Service selects no pod at all.
EXACT_MAPS: frozenset[tuple[str, ...]] = frozenset({("spec", "selector")})
# Fields an API server may drop from a write without an error, as a CRD's structural schema
# prunes a field it does not know: an HTTPRoute's requestMirror.percent with Gateway API CRDs
# before v1.3 (docs/operator.md). A live child without one is not drift: a patch would not
# bring it back, and a "Restored" Warning would be posted on every reconcile. A different
# value still is drift.
SERVER_PRUNED: frozenset[tuple[str, ...]] = frozenset(
    {("spec", "rules", "filters", "requestMirror", "percent")}
)


def contains(live: Any, desired: Any, path: tuple[str, ...] = ()) -> bool:
    """Whether every field the operator sets has its value in the live object.

    The API server adds defaults (clusterIP, terminationMessagePath...); those are not drift,
    except in the maps of EXACT_MAPS. Lists must match item by item, so an extra container or
    env var is drift. A field of SERVER_PRUNED may be missing (the server dropped it).
    """
    if isinstance(desired, Mapping):
        return (
            isinstance(live, Mapping)
            and (path not in EXACT_MAPS or set(live) == set(desired))
            and all(
                contains(live[key], value, (*path, key))
                if key in live
                else (*path, key) in SERVER_PRUNED
                for key, value in desired.items()
            )
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b, path) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


def build_patch(*, live: Mapping[str, Any], desired: Manifest) -> Manifest:
    """The merge patch that turns `live` into `desired`: the desired fields, plus a null for
    each key of an EXACT_MAPS map that the operator does not set (a merge patch keeps keys it
    does not name)."""
    patch = copy.deepcopy(desired)
    for path in EXACT_MAPS:
        live_map, patch_map = _at(live, path), _at(patch, path)
        if isinstance(live_map, Mapping) and isinstance(patch_map, dict):
            patch_map.update({key: None for key in live_map if key not in patch_map})
    return patch


def _at(obj: Any, path: tuple[str, ...]) -> Any:
    for key in path:
        obj = obj.get(key) if isinstance(obj, Mapping) else None
    return obj


def _without_resources(manifest: Mapping[str, Any]) -> Any:
    """The manifest minus container resources, which the API server rewrites (quantities)."""
    if isinstance(manifest, Mapping):
        return {k: _without_resources(v) for k, v in manifest.items() if k != "resources"}
    if isinstance(manifest, list):
        return [_without_resources(item) for item in manifest]
    return manifest


def is_current(*, live: Mapping[str, Any], desired: Mapping[str, Any]) -> bool:
    """Whether a live child needs no patch: same spec hash and no hand edit of our fields."""
    live_hash = live.get("metadata", {}).get("annotations", {}).get(ANNOTATION_SPEC_HASH)
    if live_hash != desired["metadata"]["annotations"][ANNOTATION_SPEC_HASH]:
        return False
    # Every field we set, not only metadata and spec: a Role's rules, a RoleBinding's subjects
    # and a ServiceAccount's token mounting are top-level fields.
    fields = {key: value for key, value in desired.items() if key not in ("apiVersion", "kind")}
    return contains(live, _without_resources(fields))


# --- Safeguards: placement, disruption budgets and network isolation -------------------------

ZONE_KEY = "topology.kubernetes.io/zone"
HOST_KEY = "kubernetes.io/hostname"
SERVERS_POLICY_SUFFIX = "model-servers"


@dataclass(frozen=True)
class Safeguards:
    """What the operator adds around the workloads; its settings (`OperatorSettings`) say which.

    Peers are NetworkPolicyPeers as Kubernetes spells them (podSelector, namespaceSelector,
    ipBlock). An empty tuple admits nobody: never a rule with an empty `from`, which would
    admit everyone.
    """

    network_policies: bool = True
    # Who scrapes the model servers' /metrics (the same port as predictions): Prometheus.
    metrics_peers: tuple[Mapping[str, Any], ...] = ()
    # gateway-api routing: the gateway's data plane. Empty: no policy on the model servers in
    # that mode, since which pods forward the traffic depends on the gateway implementation.
    gateway_peers: tuple[Mapping[str, Any], ...] = ()


def topology_spread(selector: Mapping[str, str]) -> list[dict[str, Any]]:
    """Spread a Deployment's pods over zones, then nodes.

    Soft (ScheduleAnyway), so a one-zone or one-node cluster still schedules every pod; set on
    every Deployment, even of one replica, so that a change of replicas never changes the pod
    template (which would restart every pod of the track). `pod-template-hash` keeps each
    ReplicaSet's pods spread by themselves during a rolling update.
    """
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(selector)},
            "matchLabelKeys": ["pod-template-hash"],
        }
        for key in (ZONE_KEY, HOST_KEY)
    ]


def _spread(deployment: Manifest) -> Manifest:
    spread = copy.deepcopy(deployment)
    selector = spread["spec"]["selector"]["matchLabels"]
    spread["spec"]["template"]["spec"]["topologySpreadConstraints"] = topology_spread(selector)
    spread["metadata"].get("annotations", {}).pop(ANNOTATION_SPEC_HASH, None)
    return _with_hash(spread)


def build_disruption_budget(
    deployment: Mapping[str, Any], *, replicas: int | None = None
) -> Manifest | None:
    """A PodDisruptionBudget for a Deployment of more than one replica: a node drain takes one
    pod at a time. None for one replica or none, where a budget would block every drain.

    `AlwaysAllow` lets a drain evict pods that are not ready (a canary that never became
    ready), which the budget cannot protect anyway. `replicas` is an autoscaled Deployment's
    floor (its HorizontalPodAutoscaler's minReplicas), since it has no replicas of ours.
    """
    if replicas is None:
        replicas = int(deployment["spec"].get("replicas") or 0)
    if replicas <= 1:
        return None
    meta = deployment["metadata"]
    manifest: Manifest = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta["labels"]),
            "ownerReferences": copy.deepcopy(meta["ownerReferences"]),
        },
        "spec": {
            "maxUnavailable": 1,
            "selector": copy.deepcopy(deployment["spec"]["selector"]),
            "unhealthyPodEvictionPolicy": "AlwaysAllow",
        },
    }
    return _with_hash(manifest)


def _policy(
    owner: Owner, name: str, pods: Mapping[str, Any], ingress: list[dict[str, Any]]
) -> Manifest:
    labels = {**common_labels(owner.name), "app.kubernetes.io/component": "network-policy"}
    manifest: Manifest = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(owner, name, labels),
        "spec": {"podSelector": dict(pods), "policyTypes": ["Ingress"], "ingress": ingress},
    }
    return _with_hash(manifest)


def servers_policy_name(owner: str) -> str:
    return f"{owner}-{SERVERS_POLICY_SUFFIX}"


def _tcp(port: int) -> dict[str, Any]:
    return {"port": port, "protocol": "TCP"}


def scrape_port(deployment: Mapping[str, Any], default: int) -> int:
    """The port Prometheus scrapes on a Deployment's pods (their prometheus.io/port)."""
    annotations = deployment["spec"]["template"]["metadata"].get("annotations") or {}
    port = annotations.get("prometheus.io/port")
    return int(port) if port and str(port).isdigit() else default


def build_network_policies(
    *,
    owner: Owner,
    spec: api.ModelDeploymentSpec,
    safeguards: Safeguards,
    router_metrics_port: int = ROUTER_PORT,
    server_metrics_port: int = SERVER_PORT,
) -> list[Manifest]:
    """Ingress policies: the builtin router is the entry (any client, its serving port only);
    the model servers take traffic only from this resource's router pods (or, gateway-api, the
    gateway peers) on the serving port, and the metrics peers on the scrape port.

    Egress is left open: the servers download models and the router reaches the API server.
    With routing `none` the servers are the entry, and with gateway-api and no gateway peers
    the forwarding pods are unknown: no policy on the servers then.
    """
    if not safeguards.network_policies:
        return []
    metrics = [copy.deepcopy(dict(peer)) for peer in safeguards.metrics_peers]
    policies: list[Manifest] = []
    entry: list[Mapping[str, Any]] = []
    if spec.routing.router == "builtin":
        router_rules: list[dict[str, Any]] = [{"ports": [_tcp(ROUTER_PORT)]}]
        if metrics and router_metrics_port != ROUTER_PORT:
            router_rules.append({"from": metrics, "ports": [_tcp(router_metrics_port)]})
        policies.append(
            _policy(
                owner,
                router_name(owner.name),
                {"matchLabels": router_selector(owner.name)},
                router_rules,
            )
        )
        entry = [{"podSelector": {"matchLabels": router_selector(owner.name)}}]
    elif spec.routing.router == "gateway-api":
        entry = [copy.deepcopy(dict(peer)) for peer in safeguards.gateway_peers]
    if entry:
        servers = {
            "matchLabels": {LABEL_MODEL_DEPLOYMENT: owner.name},
            "matchExpressions": [{"key": LABEL_TRACK, "operator": "Exists"}],
        }
        rules: list[dict[str, Any]] = [{"from": entry, "ports": [_tcp(SERVER_PORT)]}]
        if metrics:  # an empty `from` would admit everyone
            rules.append({"from": metrics, "ports": [_tcp(server_metrics_port)]})
        policies.append(_policy(owner, servers_policy_name(owner.name), servers, rules))
    return policies


def with_safeguards(
    manifests: list[Manifest],
    *,
    owner: Owner,
    spec: api.ModelDeploymentSpec,
    safeguards: Safeguards,
) -> list[Manifest]:
    """The children with topology spread on every Deployment, a PodDisruptionBudget after each
    one of more than one replica, and the NetworkPolicies first (no pod runs unprotected)."""
    ports = {
        manifest["metadata"]["name"]: scrape_port(manifest, SERVER_PORT)
        for manifest in manifests
        if manifest["kind"] == "Deployment"
    }
    router_port = ports.pop(router_name(owner.name), ROUTER_PORT)
    # An autoscaled Deployment has no replicas of ours: its budget follows minReplicas.
    floors = {
        manifest["spec"]["scaleTargetRef"]["name"]: int(manifest["spec"]["minReplicas"])
        for manifest in manifests
        if manifest["kind"] == "HorizontalPodAutoscaler"
    }
    result: list[Manifest] = build_network_policies(
        owner=owner,
        spec=spec,
        safeguards=safeguards,
        router_metrics_port=router_port,
        server_metrics_port=next(iter(ports.values()), SERVER_PORT),
    )
    for manifest in manifests:
        if manifest["kind"] != "Deployment":
            result.append(manifest)
            continue
        deployment = _spread(manifest)
        result.append(deployment)
        budget = build_disruption_budget(
            deployment, replicas=floors.get(deployment["metadata"]["name"])
        )
        if budget is not None:
            result.append(budget)
    return result
