"""The kopf operator: thin handlers that gather inputs, call the pure core, and apply results.

Run it with `canaryml operator` or `kopf run -m canaryml_operator.main`.

Every handler does the same level-based thing: read the ModelDeployment and its children, plan,
apply, write status. Running it twice changes nothing the second time, so it is safe to call on
create, update, resume, and on any event of a child (a hand edit or delete).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

import kopf

from canaryml_operator import api, children, reconcile
from canaryml_operator.children import Track
from canaryml_operator.kube import (
    KubeClient,
    KubeError,
    apply_plan,
    apply_status,
    load_client,
    read_children,
)
from canaryml_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

SETTINGS = OperatorSettings()
MD = (api.GROUP, api.VERSION, api.PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": children.MANAGED_BY}
RETRY_SECONDS = 5.0


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    # Progress in our own annotations, never in .status: the CRD's status schema is ours.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=api.GROUP)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=api.GROUP, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.posting.reporting_component = "canaryml-operator"
    settings.posting.event_name_prefix = "canaryml-"
    settings.execution.max_workers = SETTINGS.workers
    # Watch only the children canaryml manages, filtered by the API server.
    selector = ",".join(f"{key}={value}" for key, value in MANAGED.items())
    settings.watching.label_selectors["apps/v1/deployments"] = selector
    settings.watching.label_selectors["v1/services"] = selector
    memo["kube"] = load_client()


def _kube(memo: kopf.Memo) -> KubeClient:
    client = memo.get("kube")
    if client is None:  # kopf started with another startup sequence (tests, embedding)
        client = memo["kube"] = load_client()
    assert isinstance(client, KubeClient)
    return client


def reconcile_model_deployment(
    body: Mapping[str, Any], *, kube: KubeClient, image: str, now: datetime
) -> reconcile.Plan:
    """Bring one ModelDeployment's children and status into shape; return what was done."""
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return reconcile.Plan()  # owner references let the garbage collector clean up
    owner = reconcile.parse_owner(body)
    generation = meta.get("generation")
    previous = api.parse_status(body.get("status"))
    spec: api.ModelDeploymentSpec | None = None
    invalid = children.name_problem(owner.name)
    if invalid is None:
        try:
            spec = api.parse_spec(body.get("spec"))
        except ValueError as error:
            invalid = str(error)

    live = read_children(kube, owner, {children.LABEL_MODEL_DEPLOYMENT: owner.name})
    plan = reconcile.Plan()
    if spec is not None:
        desired = children.build_children(owner=owner, spec=spec, image=image)
        plan = reconcile.plan_children(
            desired=desired,
            live=live,
            owner=owner,
            reconciled_before=previous.observed_generation == generation,
        )
    done, results = apply_plan(kube, owner, plan)

    deployments: dict[str, Mapping[str, Any] | None] = {
        obj["metadata"]["name"]: obj for obj in live if obj.get("kind") == "Deployment"
    }
    deployments.update({key.name: obj for key, obj in results.items() if key.kind == "Deployment"})
    tracks: dict[Track, reconcile.DeploymentState] = {
        track: reconcile.DeploymentState.of(deployments.get(children.track_name(owner.name, track)))
        for track in children.TRACKS
    }
    status = reconcile.build_status(
        spec=spec,
        invalid=invalid,
        previous=previous,
        tracks=tracks,
        generation=generation,
        now=now,
    )
    applied = reconcile.Plan(done)
    for event in reconcile.build_events(previous=previous, status=status, plan=applied):
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]
    patch = reconcile.status_patch(status)
    if patch != reconcile.status_patch(previous):
        apply_status(kube, owner, patch)
    return applied


def _now() -> datetime:
    # Kubernetes times have second precision (metav1.Time).
    return datetime.now(UTC).replace(microsecond=0)


def _reconcile(body: Mapping[str, Any], memo: kopf.Memo) -> None:
    try:
        reconcile_model_deployment(body, kube=_kube(memo), image=SETTINGS.image, now=_now())
    except KubeError as error:
        # kopf keeps the retry count in the resource's annotations, so a restart resumes it.
        refused = error.status in (400, 403, 422)  # an admission policy, RBAC, a quota...
        raise kopf.TemporaryError(
            f"Kubernetes {'refused a change' if refused else 'API'}: {error}",
            delay=SETTINGS.refused_retry_seconds if refused else RETRY_SECONDS,
        ) from error


# No periodic timer: kopf would put a finalizer on every resource for it, and the watches
# already deliver every change of the resource and of its children (resume covers restarts).
@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)
def model_deployment_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    _reconcile(body, memo)


def _modified_or_deleted(event: kopf.RawEvent, **_: Any) -> bool:
    # Initial listing (type None) and ADDED are skipped: resume handlers cover start-up and the
    # operator itself created the object. Filtered before the handler, so that kopf does not
    # hand each of them to a worker thread.
    return event.get("type") in ("MODIFIED", "DELETED")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, when=_modified_or_deleted)
@kopf.on.event("", "v1", "services", labels=MANAGED, when=_modified_or_deleted)
def child_changed(body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """A child was edited or deleted (by hand, or by its controller): reconcile its owner."""
    labels = body.get("metadata", {}).get("labels", {})
    owner_name = labels.get(children.LABEL_MODEL_DEPLOYMENT)
    namespace = body.get("metadata", {}).get("namespace")
    if not owner_name or not namespace:
        return
    kube = _kube(memo)
    try:
        parent = kube.get(api.KIND, namespace, owner_name)
    except KubeError as error:
        log.warning("cannot read ModelDeployment %s/%s: %s", namespace, owner_name, error)
        return
    if parent is None:
        return  # the owner is gone; the garbage collector removes the child
    try:
        reconcile_model_deployment(parent, kube=kube, image=SETTINGS.image, now=_now())
    except KubeError as error:
        # kopf does not retry event handlers; the child's or the resource's next event does.
        log.warning(
            "reconcile of %s/%s after a child event failed: %s", namespace, owner_name, error
        )
