"""Builders of the objects a ModelDeployment owns: pure functions from the spec to manifests.

Per track that is present (stable always, canary and shadow when set): a Deployment running
`canaryml serve` and a Service in front of it. Plus the Service named after the resource, the one
address clients use. Nothing here talks to Kubernetes; `reconcile` decides what to send.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

from canaryml_operator import api

Track = Literal["stable", "canary", "shadow"]
TRACKS: tuple[Track, ...] = ("stable", "canary", "shadow")
Manifest = dict[str, Any]

SERVER_PORT = 8080
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


@dataclass(frozen=True)
class Owner:
    """What the children need to know of the ModelDeployment that owns them."""

    name: str
    namespace: str
    uid: str


@dataclass(frozen=True)
class ChildKey:
    """How a child is addressed: kind and name (the namespace is the owner's)."""

    kind: Literal["Deployment", "Service"]
    name: str

    @classmethod
    def of(cls, manifest: Mapping[str, Any]) -> ChildKey:
        return cls(kind=manifest["kind"], name=manifest["metadata"]["name"])


def track_name(owner: str, track: Track) -> str:
    return f"{owner}-{track}"


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
        "app.kubernetes.io/version": version[:63],
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
    replicas: int,
    image: str,
    resources: Mapping[str, Any] | None,
) -> Manifest:
    labels = track_labels(owner.name, track, model.version)
    uri, volumes, mounts = _model_location(model)
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
        "resources": dict(resources) if resources else _copy(DEFAULT_RESOURCES),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": RUN_AS,
            "runAsGroup": RUN_AS,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": [
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "tmp", "mountPath": "/tmp"},
            *mounts,
        ],
    }
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
        "metadata": _metadata(owner, track_name(owner.name, track), labels),
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
    return _with_hash(manifest)


def _probe(path: str, *, period: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": 2,
        "failureThreshold": failures,
    }


def _copy(value: Mapping[str, Mapping[str, str]]) -> dict[str, Any]:
    return {key: dict(inner) for key, inner in value.items()}


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
            "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}],
        },
    }
    return _with_hash(manifest)


def present_tracks(spec: api.ModelDeploymentSpec) -> dict[Track, tuple[api.ModelRef, int]]:
    """Each track that exists, with its model and replica count."""
    tracks: dict[Track, tuple[api.ModelRef, int]] = {"stable": (spec.model, spec.serving.replicas)}
    if spec.canary is not None:
        tracks["canary"] = (spec.canary.model, spec.canary.replicas)
    if spec.shadow is not None:
        tracks["shadow"] = (spec.shadow.model, spec.shadow.replicas)
    return tracks


def build_children(*, owner: Owner, spec: api.ModelDeploymentSpec, image: str) -> list[Manifest]:
    """Every object the ModelDeployment should own, in the order they are best created."""
    children: list[Manifest] = []
    for track, (model, replicas) in present_tracks(spec).items():
        children.append(
            build_deployment(
                owner=owner,
                track=track,
                model=model,
                replicas=replicas,
                image=spec.serving.image or image,
                resources=spec.serving.resources,
            )
        )
        children.append(
            build_service(
                owner=owner,
                name=track_name(owner.name, track),
                labels=track_labels(owner.name, track, model.version),
                selector=selector_labels(owner.name, track),
            )
        )
    # The address clients use. Until the traffic router exists it sends everything to stable.
    children.append(
        build_service(
            owner=owner,
            name=owner.name,
            labels={**common_labels(owner.name), "app.kubernetes.io/component": "endpoint"},
            selector=selector_labels(owner.name, "stable"),
        )
    )
    return children


def contains(live: Any, desired: Any) -> bool:
    """Whether every field the operator sets has its value in the live object.

    The API server adds defaults (clusterIP, terminationMessagePath...); those are not drift.
    Lists must match item by item, so an extra container or env var is drift.
    """
    if isinstance(desired, Mapping):
        return isinstance(live, Mapping) and all(
            key in live and contains(live[key], value) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(live, list)
            and len(live) == len(desired)
            and all(contains(a, b) for a, b in zip(live, desired, strict=True))
        )
    return bool(live == desired)


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
    fields = {key: desired[key] for key in ("metadata", "spec") if key in desired}
    return contains(live, _without_resources(fields))
