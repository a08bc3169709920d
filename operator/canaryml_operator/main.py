"""The kopf operator: thin handlers that gather inputs, call the pure core, and apply results.

Run it with `canaryml operator` or `kopf run -m canaryml_operator.main`.

Every handler does the same level-based thing: read the ModelDeployment and its children, plan,
apply, write status. Running it twice changes nothing the second time, so it is safe to call on
create, update, resume, and on any event of a child (a hand edit or delete).
"""

from __future__ import annotations

import asyncio
import copy
import functools
import logging
import math
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import kopf
from canaryml_api import resource as api
from canaryml_api import telemetry
from canaryml_api.tracks import TRACKS, Track, service_name

from canaryml_operator import (
    checks,
    children,
    delivery,
    hooks,
    kopf_readiness,
    loop,
    metrics,
    notifications,
    providers,
    reconcile,
    registry,
    rollout,
    templates,
    templating,
    writeback,
)
from canaryml_operator.kube import (
    CHILD_KINDS,
    ChildSource,
    KubeClient,
    KubeError,
    api_reference,
    apply_plan,
    apply_status,
    child_kinds,
    load_client,
    read_children,
    read_secret,
    trim_child,
)
from canaryml_operator.measurements import Measurements, Sample
from canaryml_operator.settings import OperatorSettings
from canaryml_operator.state import DeploymentState, Owner, TrackPlan, parse_owner

log = logging.getLogger(__name__)

kopf_readiness.patch_toggle_wakeups()  # before any operator starts (kopf_readiness.py says why)

MD = (api.GROUP, api.VERSION, api.PLURAL)
MANAGED = {"app.kubernetes.io/managed-by": children.MANAGED_BY}
KOPF_PREFIX = f"operator.{api.GROUP}"
RETRY_SECONDS = 5.0
CONFLICT_RETRY_SECONDS = 0.5
CHANGE_SIGNAL = "canaryml_changed"  # the key of the daemon's wake-up in kopf's resource memo
DAEMON_IDLE_SECONDS = 30.0  # an idle daemon looks again at least this often (a safety net)
# After a write, before the next look: the watch usually brings the new status by then, and an
# analysis taken from an older one is dropped (reconcile_latest), never counted twice.
WRITTEN_PAUSE_SECONDS = 0.25


@functools.cache
def operator_settings() -> OperatorSettings:
    """The operator's settings, read from the environment once, when first needed."""
    return OperatorSettings()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    own = operator_settings()
    # Progress in our own annotations, never in .status: the CRD's status schema is ours.
    # Not under canaryml.dev/ itself: kopf leaves its prefix's annotations out of the diff, and
    # the command annotations (canaryml.dev/promote...) must be seen as changes.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=KOPF_PREFIX, key="last-handled-configuration"
    )
    settings.persistence.finalizer = f"{api.GROUP}/finalizer"
    settings.posting.reporting_component = "canaryml-operator"
    settings.posting.event_name_prefix = "canaryml-"
    settings.execution.max_workers = own.workers
    # Watch only the children canaryml manages, filtered by the API server.
    # Every child kind is watched (the children index below), each with the same selector.
    selector = ",".join(f"{key}={value}" for key, value in MANAGED.items())
    selector += f",{children.LABEL_MODEL_DEPLOYMENT}"
    for kind in CHILD_KINDS:
        group, version, plural = api_reference(kind)
        settings.watching.label_selectors[f"{group}/{version}/{plural}".lstrip("/")] = selector
    # No watching of CRDs and namespaces: the namespaces are named (no globs) and the CRD comes
    # with the operator, so the RBAC needs no cluster-wide reads of either. The price: a CRD
    # installed after the operator is seen at its next start (check_crd makes that a restart).
    settings.scanning.disabled = True
    kube = memo["kube"] = load_client()
    check_crd(kube)
    if own.metrics_port is not None:
        memo["stop_metrics"] = metrics.serve(port=own.metrics_port)


@kopf.on.cleanup()
def stop_metrics(memo: kopf.Memo, **_: Any) -> None:
    stop = memo.get("stop_metrics")
    if callable(stop):
        stop()


def check_crd(kube: KubeClient) -> None:
    """Refuse to start without the ModelDeployment API: kopf would wait silently for it."""
    try:
        kube.request("GET", f"/apis/{api.GROUP}/{api.VERSION}")
    except KubeError as error:
        if error.status == 404:
            raise kopf.PermanentError(
                f"the {api.PLURAL}.{api.GROUP} CRD is not installed "
                f"(kubectl apply -f crds/{api.PLURAL}.{api.GROUP}.yaml)"
            ) from error
        raise


def _kube(memo: kopf.Memo) -> KubeClient:
    client = memo.get("kube")
    if client is None:  # kopf started with another startup sequence (tests, embedding)
        client = memo["kube"] = load_client()
    assert isinstance(client, KubeClient)
    return client


class KubeTracks:
    """The `loop.Tracks` of one ModelDeployment in the cluster: its children (`objects`), read
    once, and the changes the plan needed applied (`applied`, for the Events)."""

    def __init__(
        self,
        kube: KubeClient,
        owner: Owner,
        *,
        spec: api.ModelDeploymentSpec | None,
        image: str,
        reconciled_before: bool,
        source: ChildSource | None = None,
    ) -> None:
        self.kube, self.owner, self.image = kube, owner, image
        self.reconciled_before = reconciled_before
        labels = {children.LABEL_MODEL_DEPLOYMENT: owner.name}
        self.objects = read_children(kube, owner, labels, child_kinds(spec), source)
        self.applied = reconcile.Plan()
        # Children it needs that exist but belong to someone else: never overwritten.
        self.conflicts: dict[children.ChildKey, dict[str, Any]] = {}

    def live(self) -> dict[Track, DeploymentState]:
        return _tracks(self.owner, self.objects)

    def apply(
        self, *, spec: api.ModelDeploymentSpec, plan: TrackPlan
    ) -> dict[Track, DeploymentState]:
        desired = children.build_children(
            owner=self.owner,
            spec=spec,
            image=self.image,
            plan=plan,
            safeguards=operator_settings().safeguards(),
            default_feedback=operator_settings().default_feedback(),
        )
        changes = reconcile.plan_children(
            desired=desired,
            live=self.objects,
            owner=self.owner,
            reconciled_before=self.reconciled_before,
        )
        self.conflicts = {}
        done, results = apply_plan(self.kube, self.owner, changes, self.conflicts)
        self.applied = reconcile.Plan(done)
        return _tracks(self.owner, self.objects, results)


def reconcile_model_deployment(
    body: Mapping[str, Any],
    *,
    kube: KubeClient,
    image: str,
    now: datetime,
    measurements: Measurements | None = None,
    hook_results: Sequence[hooks.Result] = (),
    source: ChildSource | None = None,
) -> reconcile.Plan:
    """Bring one ModelDeployment's children and status into shape; return what was done.

    With `measurements` (the analysis daemon took them), the rollout core also judges the
    canary; `hook_results` (the webhooks the daemon called) are recorded in status.webhooks
    before it decides. The notifications of the turn are sent once its status is written.
    The status is written over the version of the object that was read: a concurrent
    writer makes this a 409, and the caller retries with a fresh read.
    """
    meta = body.get("metadata", {})
    if meta.get("deletionTimestamp"):
        return reconcile.Plan()  # owner references let the garbage collector clean up
    owner = parse_owner(body)
    generation = meta.get("generation")
    previous = api.parse_status(body.get("status"))
    spec: api.ModelDeploymentSpec | None = None
    invalid = children.name_problem(owner.name)
    invalid_reason = templating.INVALID_SPEC
    if invalid is None:
        try:
            spec = api.parse_spec(body.get("spec"))
        except ValueError as error:
            invalid = str(error)
    if spec is not None:
        # analysis.templates: their metrics merged in, read afresh at each reconcile.
        resolution = templates.resolve(kube, owner.namespace, spec)
        spec, invalid = resolution.spec, resolution.problem
        invalid_reason = resolution.reason
    if spec is not None and spec.registry is not None:
        # spec.registry: a models:/ URI the registry answers 404 for is an invalid spec
        # (nothing changes: the tracks keep what they serve).
        missing = registry.check_models(spec, kube=kube, namespace=owner.namespace)
        if missing is not None:
            spec, invalid, invalid_reason = None, missing, writeback.MODEL_NOT_IN_REGISTRY

    tracks = KubeTracks(
        kube,
        owner,
        spec=spec,
        image=image,
        reconciled_before=previous.observed_generation == generation,
        source=source,
    )
    recorded = previous
    if spec is not None:
        recorded = hooks.record(spec=spec, status=previous, results=list(hook_results), now=now)
    done = loop.turn(
        spec=spec,
        invalid=invalid,
        previous=recorded,
        tracks=tracks,
        measurements=measurements,
        now=now,
        generation=generation,
        commands=rollout.commands_from(meta.get("annotations")),
        invalid_reason=invalid_reason,
    )
    conflicts = sorted(tracks.conflicts.items(), key=lambda item: (item[0].kind, item[0].name))
    status = reconcile.with_conflicts(
        done.status,
        previous=previous,
        conflicts=[reconcile.conflict_message(key, obj) for key, obj in conflicts],
        generation=generation,
        now=now,
    )
    settings = operator_settings()
    status, messages = notifications.plan(
        targets=(spec.notifications or settings.default_notifications()) if spec else [],
        owner=owner,
        previous=recorded,
        status=status,
        events=done.events,
        now=now,
        limit=settings.notify_limit,
        window=settings.notify_window_seconds,
    )
    # spec.registry: outcomes written back to the model registry (after the turn is applied).
    status = registry.reconcile_write_back(
        spec, status, kube=kube, namespace=owner.namespace, now=now
    )
    patch = reconcile.status_patch(status)
    if patch != reconcile.status_patch(previous):
        written = apply_status(kube, owner, patch, resource_version=meta.get("resourceVersion"))
        _saw_version(owner.namespace, owner.name, written)
    delivery.notify(messages, kube=kube, namespace=owner.namespace)
    metrics.observe_status(
        namespace=owner.namespace, name=owner.name, previous=previous, status=status
    )
    events = done.events + reconcile.build_events(
        previous=previous, status=status, plan=tracks.applied
    )
    for event in events:
        kopf.event(body, type=event.type, reason=event.reason, message=event.message)  # type: ignore[arg-type]
    return tracks.applied


def _tracks(
    owner: Owner,
    live: list[dict[str, Any]],
    results: Mapping[children.ChildKey, dict[str, Any] | None] | None = None,
) -> dict[Track, DeploymentState]:
    deployments: dict[str, Mapping[str, Any] | None] = {
        obj["metadata"]["name"]: obj for obj in live if obj.get("kind") == "Deployment"
    }
    deployments.update(
        {key.name: obj for key, obj in (results or {}).items() if key.kind == "Deployment"}
    )
    return {
        track: DeploymentState.of(deployments.get(service_name(owner.name, track)))
        for track in TRACKS
    }


def _now() -> datetime:
    # Kubernetes times have second precision (metav1.Time).
    return datetime.now(UTC).replace(microsecond=0)


# One lock per resource, dropped when the resource is deleted (model_deployment_deleted).
_locks: dict[tuple[str, str], threading.Lock] = {}
_locks_guard = threading.Lock()


def _lock(namespace: str, name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault((namespace, name), threading.Lock())


def _forget_lock(namespace: str, name: str) -> None:
    with _locks_guard:
        _locks.pop((namespace, name), None)
    _versions.pop((namespace, name), None)


# One wake-up per resource for its analysis daemon, set at each watch event of the resource
# (kopf has updated the daemon's body by then): an idle daemon sleeps until its resource changes
# or its next analysis, drain, deadline or hook is due. Looking once a second instead, 1,000
# daemons kept most of the operator's event loop busy (benchmarks/operator_scale.py). Kept in
# kopf's per-resource memo (the daemon and the event handler share it; kopf drops it with the
# resource). A signal, not state: the daemon decides from the body alone.
def _change_signal(memo: kopf.Memo) -> asyncio.Event:
    signal = memo.get(CHANGE_SIGNAL)
    if not isinstance(signal, asyncio.Event):
        signal = memo[CHANGE_SIGNAL] = asyncio.Event()
    return signal


async def _sleep_until_changed(
    changed: asyncio.Event, stopping: asyncio.Future[Any], seconds: float
) -> None:
    waiter = asyncio.ensure_future(changed.wait())
    try:
        await asyncio.wait(
            {waiter, stopping}, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        waiter.cancel()


# --- The children index: each reconcile reads the children from kopf's watches, not a LIST ----
#
# kopf keeps one index per child kind, filled from its watch of that kind (an initial listing,
# then the events), and starts no handler before every index has its initial listing. The
# index is a cache of the cluster, never the source of a decision the cluster would contradict:
# a child the watch has not brought yet is planned as a create, which meets a 409 and is then
# taken as the API server returns it (apply_plan); a patch planned from an older copy sets
# fields to what they already are.

INDEX_PREFIX = "canaryml_children_"


def _child_indexer(kind: str) -> Any:
    async def index_child(
        body: kopf.Body, namespace: str | None, **_: Any
    ) -> dict[tuple[str, str], dict[str, Any]]:
        owner = (body.get("metadata", {}).get("labels") or {}).get(children.LABEL_MODEL_DEPLOYMENT)
        if not owner or not namespace:
            return {}
        return {(namespace, owner): trim_child(kind, body)}

    return index_child


for _kind in CHILD_KINDS:
    _group, _version, _plural = api_reference(_kind)
    kopf.index(
        _group,
        _version,
        _plural,
        id=INDEX_PREFIX + _plural,
        labels={**MANAGED, children.LABEL_MODEL_DEPLOYMENT: kopf.PRESENT},
    )(_child_indexer(_kind))


class ChildIndex:
    """The children of each ModelDeployment, by (namespace, name), from kopf's indexes (one
    per kind, passed to every handler as a keyword argument named by the index's id)."""

    def __init__(self, indexes: Mapping[str, Any]) -> None:
        self._by_kind = {
            kind: indexes[INDEX_PREFIX + api_reference(kind)[2]] for kind in CHILD_KINDS
        }

    @classmethod
    def of(cls, kwargs: Mapping[str, Any]) -> ChildIndex | None:
        """The index from a handler's keyword arguments; None without them (then each
        reconcile lists the children, as when the operator is embedded without kopf)."""
        if all(INDEX_PREFIX + api_reference(kind)[2] in kwargs for kind in CHILD_KINDS):
            return cls(kwargs)
        return None

    def children(self, namespace: str, owner: str, kinds: tuple[str, ...]) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        for kind in kinds:
            store = self._by_kind[kind].get((namespace, owner))
            if store:
                found += _snapshot(store)
        return found


def _snapshot(store: Any) -> list[dict[str, Any]]:
    # Read in a worker thread while kopf's event loop may update the store: copy, and copy
    # again in the rare case that it changed size meanwhile.
    for _ in range(10):
        try:
            return list(store)
        except RuntimeError:
            continue
    return list(store)


# The newest resourceVersion of each ModelDeployment this process has read or written. A
# handler's body at least that new is used as it is (no GET); an older one (the watch has not
# brought this process's own status write yet) is read afresh. resourceVersions are compared
# as numbers where they are numbers (etcd's revisions); otherwise only an equal one is trusted.
# A stale body would still not be written over: the status patch names its resourceVersion.
_versions: dict[tuple[str, str], str] = {}


def _saw_version(namespace: str, name: str, version: str | None) -> None:
    if version:
        _versions[(namespace, name)] = version


def _current(body: Mapping[str, Any]) -> bool:
    meta = body.get("metadata", {})
    version = meta.get("resourceVersion")
    known = _versions.get((meta.get("namespace") or "default", meta.get("name", "")))
    if known is None or version == known:
        return version is not None
    try:
        return int(version) >= int(known)
    except (TypeError, ValueError):
        return False


def reconcile_latest(
    namespace: str,
    name: str,
    *,
    kube: KubeClient,
    measurements: Measurements | None = None,
    measured_after: datetime | None = None,
    hook_results: Sequence[hooks.Result] = (),
    attempts: int = 3,
    body: Mapping[str, Any] | None = None,
    source: ChildSource | None = None,
) -> reconcile.Plan:
    """Reconcile the resource as it is now: read it, then act, one reconcile per resource at a
    time in this process.

    The event handlers and the analysis daemon all change the rollout state; each must start
    from the latest status, or a stale one would undo a step (and its children with it). The
    lock orders them; the read makes each see the last one's writes. A 409 on the status (a
    writer outside this process) is retried from a new read.

    `body` (a handler's, from kopf's watch) saves the read when it is at least as new as what
    this process last read or wrote (_current); `source` gives the children (the index).
    """
    with _lock(namespace, name):
        for attempt in range(attempts):
            if attempt == 0 and body is not None and _current(body):
                found: Mapping[str, Any] | None = body
            else:
                found = kube.get(api.KIND, namespace, name)
                if found is not None:
                    _saw_version(namespace, name, found.get("metadata", {}).get("resourceVersion"))
            if found is None:
                return reconcile.Plan()  # deleted meanwhile
            last = api.parse_status(found.get("status")).last_analysis
            if measurements is not None and (last.time if last else None) != measured_after:
                measurements = None  # another analysis was written since these were taken
            try:
                return reconcile_model_deployment(
                    found,
                    kube=kube,
                    image=operator_settings().image,
                    now=_now(),
                    measurements=measurements,
                    hook_results=hook_results,
                    source=source,
                )
            except KubeError as error:
                if error.status != 409 or attempt == attempts - 1:
                    raise
        raise AssertionError("unreachable")


def _reconcile(body: Mapping[str, Any], memo: kopf.Memo, source: ChildSource | None) -> None:
    meta = body.get("metadata", {})
    try:
        reconcile_latest(
            meta.get("namespace") or "default",
            meta["name"],
            kube=_kube(memo),
            body=body,
            source=source,
        )
    except KubeError as error:
        # kopf keeps the retry count in the resource's annotations, so a restart resumes it.
        refused = error.status in (400, 403, 422)  # an admission policy, RBAC, a quota...
        if error.status == 409:  # changed again and again while being reconciled
            raise kopf.TemporaryError(f"conflict: {error}", delay=CONFLICT_RETRY_SECONDS) from error
        raise kopf.TemporaryError(
            f"Kubernetes {'refused a change' if refused else 'API'}: {error}",
            delay=operator_settings().refused_retry_seconds if refused else RETRY_SECONDS,
        ) from error


# No periodic timer: kopf would put a finalizer on every resource for it, and the watches
# already deliver every change of the resource and of its children (resume covers restarts).
# Only a rollout needs a clock: the analysis daemon below, for resources with a canary.
@kopf.on.resume(*MD)
@kopf.on.create(*MD)
@kopf.on.update(*MD)
def model_deployment_changed(body: kopf.Body, memo: kopf.Memo, **kwargs: Any) -> None:
    _reconcile(body, memo, ChildIndex.of(kwargs))


def _modified_or_deleted(event: kopf.RawEvent, **_: Any) -> bool:
    # Initial listing (type None) and ADDED are skipped: resume handlers cover start-up and the
    # operator itself created the object. Filtered before the handler, so that kopf does not
    # hand each of them to a worker thread.
    return event.get("type") in ("MODIFIED", "DELETED")


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, when=_modified_or_deleted)
@kopf.on.event("", "v1", "services", labels=MANAGED, when=_modified_or_deleted)
def child_changed(body: kopf.Body, memo: kopf.Memo, event: kopf.RawEvent, **kwargs: Any) -> None:
    """A child was edited or deleted (by hand, or by its controller): reconcile its owner; a
    deleted one may free its name for a resource that could not create its own child of that
    name (ChildConflict), so that one is reconciled too."""
    labels = body.get("metadata", {}).get("labels", {})
    owner_name = labels.get(children.LABEL_MODEL_DEPLOYMENT)
    namespace = body.get("metadata", {}).get("namespace")
    if not owner_name or not namespace:
        return
    kube = _kube(memo)
    names = [owner_name]
    if event.get("type") == "DELETED":
        names += [
            claimant
            for claimant in reconcile.claimants(body.get("metadata", {}).get("name", ""))
            if claimant != owner_name and _in_conflict(kube, namespace, claimant)
        ]
    source = ChildIndex.of(kwargs)
    for name in names:
        try:
            reconcile_latest(namespace, name, kube=kube, source=source)
        except KubeError as error:
            # kopf does not retry event handlers; the child's or the resource's next event does.
            log.warning("reconcile of %s/%s after a child event failed: %s", namespace, name, error)


def _in_conflict(kube: KubeClient, namespace: str, name: str) -> bool:
    try:
        found = kube.get(api.KIND, namespace, name)
    except KubeError:
        return False
    if found is None:
        return False
    return reconcile.in_conflict(api.parse_status(found.get("status")))


def _deleted(event: kopf.RawEvent, **_: Any) -> bool:
    return event.get("type") == "DELETED"


# An event handler, not on.delete: it needs no finalizer on the resource.
@kopf.on.event(*MD, when=_deleted)
def model_deployment_deleted(body: kopf.Body, **_: Any) -> None:
    meta = body.get("metadata", {})
    namespace, name = meta.get("namespace") or "default", meta.get("name", "")
    metrics.forget(namespace=namespace, name=name)
    _forget_lock(namespace, name)


# Async, so that it runs in the event loop, where the daemons wait on the signal.
@kopf.on.event(*MD)
async def wake_analysis_daemon(memo: kopf.Memo, **_: Any) -> None:
    _change_signal(memo).set()


def _has_canary(spec: kopf.Spec, **_: Any) -> bool:
    return isinstance(spec.get("canary"), Mapping)


# Only resources with a canary get the daemon, and so kopf's finalizer (it must stop the daemon
# before the resource goes); the others are deleted at once.
@kopf.daemon(*MD, when=_has_canary, cancellation_timeout=5.0)
async def analysis_daemon(
    body: kopf.Body, memo: kopf.Memo, stopped: kopf.DaemonStopped, **kwargs: Any
) -> None:
    """Judge the canary every `analysis.interval` and act on the verdict; retire a canary
    once its drain time is over.

    Each wake-up reads the rollout state from the resource's status (kopf keeps `body`
    current), so a restarted operator resumes where the last one stopped.
    """
    kube = _kube(memo)
    source = ChildIndex.of(kwargs)
    changed = _change_signal(memo)
    stopping = asyncio.ensure_future(stopped.wait())
    try:
        await _analyse_until_stopped(body, stopped, stopping, changed, kube, source)
    finally:
        stopping.cancel()


async def _analyse_until_stopped(
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    stopping: asyncio.Future[Any],
    changed: asyncio.Event,
    kube: KubeClient,
    source: ChildSource | None,
) -> None:
    drained: datetime | None = None  # the drain already acted on (a repeat is harmless)
    seen: str | None = None  # the resourceVersion the schedule below was computed from
    wake_at = math.inf  # time.monotonic() of the next thing to do
    while not stopped:
        changed.clear()  # before reading the body: a change after this wakes the sleep below
        version = body.get("metadata", {}).get("resourceVersion")
        if version == seen and time.monotonic() < wake_at:
            # Nothing changed and nothing is due: sleep until either happens.
            seconds = min(DAEMON_IDLE_SECONDS, wake_at - time.monotonic())
            await _sleep_until_changed(changed, stopping, seconds)
            continue
        seen, wake_at = version, math.inf
        snapshot = copy.deepcopy(dict(body))
        try:
            spec = api.parse_spec(snapshot.get("spec"))
        except ValueError:
            continue  # the event handlers report it; look again when the resource changes
        status, now = api.parse_status(snapshot.get("status")), _now()
        if templates.held_by_templates(spec, status):
            # A template created or fixed changes no ModelDeployment: look again every interval
            # (a reconcile reads the templates and writes the status only if it changed).
            await _reconcile_held(kube, parse_owner(snapshot), source)
            wake_at = time.monotonic() + api.parse_duration(spec.analysis.interval)
            continue
        due = rollout.next_analysis_in(spec=spec, status=status, now=now)
        drain = rollout.drain_ends_in(spec=spec, status=status, now=now)
        if drain is not None and drained == status.step_started_at:
            drain = None
        # A canary whose pods are not available is rolled back at its progress deadline, which
        # no Deployment event may come to mark.
        deadline = rollout.progress_deadline_in(spec=spec, status=status, now=now)
        hook = hooks.next_in(spec=spec, status=status, now=now)  # a webhook attempt
        # A promotion's rollback window closes at its time, which no event marks either.
        window = rollout.rollback_window_ends_in(spec=spec, status=status, now=now)
        if due != 0.0 and drain != 0.0 and deadline != 0.0 and hook != 0.0 and window != 0.0:
            waits = [w for w in (due, drain, deadline, hook, window) if w is not None]
            wake_at = time.monotonic() + min(waits) if waits else math.inf
            continue
        owner = parse_owner(snapshot)
        if spec.analysis.templates:
            resolved = await _resolve_templates(kube, owner, spec, source)
            if resolved is None:
                # Not resolvable (the reconcile shows why): look again an interval later, as a
                # template created or fixed meanwhile changes no ModelDeployment.
                wake_at = time.monotonic() + api.parse_duration(spec.analysis.interval)
                continue
            spec = resolved
        measurements = await loop.measure_if_due(
            spec=spec,
            owner=owner,
            status=status,
            now=now,
            measure=functools.partial(take_measurements, kube=kube, body=body),
        )
        calls = await _hooks_due(kube, spec=spec, status=status, owner=owner, now=now)
        if measurements is not None:
            calls += hooks.analysis_calls(
                spec=spec, status=status, owner=owner, at=measurements.time
            )
        results = await delivery.call_hooks(calls, kube=kube, namespace=owner.namespace, now=now)
        pause = WRITTEN_PAUSE_SECONDS  # time for the watch to bring the status just written
        try:
            await asyncio.to_thread(
                reconcile_latest,
                owner.namespace,
                owner.name,
                kube=kube,
                measurements=measurements,
                measured_after=status.last_analysis.time if status.last_analysis else None,
                hook_results=results,
                source=source,
            )
            if drain == 0.0:
                drained = status.step_started_at
        except KubeError as error:
            # 409: the status moved on since it was read; the next turn reads it again.
            log.info("analysis of %s/%s not applied: %s", owner.namespace, owner.name, error)
            pause = CONFLICT_RETRY_SECONDS
        seen = None  # whatever was written, look at the resource afresh
        await stopped.wait(pause)


async def _resolve_templates(
    kube: KubeClient, owner: Owner, spec: api.ModelDeploymentSpec, source: ChildSource | None
) -> api.ModelDeploymentSpec | None:
    """The spec with its analysis.templates' metrics (read now, so that an edited template is
    used at the next analysis), or None when they cannot be resolved: then the resource is
    reconciled, which shows why in its conditions (and an Event) and holds the rollout."""
    try:
        resolution = await asyncio.to_thread(templates.resolve, kube, owner.namespace, spec)
        if resolution.spec is not None:
            return resolution.spec
        await asyncio.to_thread(
            reconcile_latest, owner.namespace, owner.name, kube=kube, source=source
        )
    except KubeError as error:
        log.info("templates of %s/%s not resolved: %s", owner.namespace, owner.name, error)
    return None


async def _reconcile_held(kube: KubeClient, owner: Owner, source: ChildSource | None) -> None:
    try:
        await asyncio.to_thread(
            reconcile_latest, owner.namespace, owner.name, kube=kube, source=source
        )
    except KubeError as error:
        log.info("templates of %s/%s not resolved: %s", owner.namespace, owner.name, error)


async def _hooks_due(
    kube: KubeClient,
    *,
    spec: api.ModelDeploymentSpec,
    status: api.ModelDeploymentStatus,
    owner: Owner,
    now: datetime,
) -> list[hooks.Call]:
    """The webhook attempts due now, checked against the status as the API server has it: the
    watch may not have brought the last result yet, and an attempt made from an older status
    would be one too many."""
    if not hooks.due(spec=spec, status=status, owner=owner, now=now):
        return []
    try:
        found = await asyncio.to_thread(kube.get, api.KIND, owner.namespace, owner.name)
    except KubeError as error:
        log.info("webhooks of %s/%s not called: %s", owner.namespace, owner.name, error)
        return []
    if found is None:
        return []
    latest = api.parse_status(found.get("status"))
    return hooks.due(spec=spec, status=latest, owner=owner, now=now)


async def take_measurements(
    *,
    spec: api.ModelDeploymentSpec,
    owner: Owner,
    now: datetime,
    kube: KubeClient,
    status: api.ModelDeploymentStatus | None = None,
    body: Mapping[str, Any] | None = None,
) -> Measurements:
    """Every check's sample from the metrics provider the spec names; never raises: a provider
    that cannot be reached or configured gives Error samples, which hold the weight.

    Credentials that cannot be had (a Secret missing or not opted in) are also told in a
    Warning Event on `body`, once: not again while the previous analysis (status.lastAnalysis)
    says so."""
    last = status.last_analysis if status is not None else None
    queries = checks.build_queries(
        spec=spec,
        name=owner.name,
        namespace=owner.namespace,
        status=status,
        at=now,
        source=telemetry.SOURCE_ROUTER
        if spec.routing.router == "builtin"
        else telemetry.SOURCE_SERVER,
    )
    try:
        headers = await asyncio.to_thread(_auth_headers, spec, owner, kube)
    except (KubeError, ValueError) as error:
        reason = f"cannot read the Prometheus credentials: {error}"
        if body is not None and not (last and any(reason in said for said in last.reasons)):
            kopf.event(body, type="Warning", reason="CredentialsRefused", message=reason)  # type: ignore[arg-type]
        return Measurements(time=now, samples=dict.fromkeys(queries, Sample.failed(reason)))
    provider = providers.build_provider(
        analysis=spec.analysis, headers=headers, default_url=operator_settings().prometheus_url
    )
    try:
        return await providers.measure(provider=provider, queries=queries, at=now)
    finally:
        await provider.aclose()


def _auth_headers(spec: api.ModelDeploymentSpec, owner: Owner, kube: KubeClient) -> dict[str, str]:
    prometheus = spec.analysis.prometheus
    token = authorization = None
    if prometheus.bearer_token_secret_ref is not None:
        ref = prometheus.bearer_token_secret_ref
        secret = read_secret(kube, owner.namespace, ref.name)
        token = providers.secret_value(secret, key=ref.key, what="bearerTokenSecretRef")
    if prometheus.authorization_secret_ref is not None:
        ref = prometheus.authorization_secret_ref
        secret = read_secret(kube, owner.namespace, ref.name)
        authorization = providers.secret_value(secret, key=ref.key, what="authorizationSecretRef")
    return providers.auth_headers(bearer_token=token, authorization=authorization)
