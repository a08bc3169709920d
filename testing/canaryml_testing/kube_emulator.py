"""kmock's Kubernetes API emulator, with the few API-server behaviours the operator relies on.

kmock 0.8's `KubernetesEmulator` stores objects and serves list, watch, get, create, patch and
delete. A real API server does more, and kopf and the operator notice the difference. This
subclass adds, and nothing else:

- on create: `generateName`, `uid`, `resourceVersion`, `generation`, `creationTimestamp`,
  `kind` and `apiVersion` filled in, and 201 as the status;
- on every write: a new `resourceVersion`; `generation` bumped when `spec` changes; a patch that
  carries a stale `metadata.resourceVersion` is a 409;
- the `status` subresource: a patch of `/status` changes only `.status`, a patch of the object
  ignores `.status`;
- a failed JSON-patch `test` (or a patch that does not apply) is a 422, not a 500;
- `labelSelector` (`k=v`, `k!=v`, `k`, `!k`) on lists and watches;
- `kind` and `apiVersion` on lists;
- watches that start after the requested `resourceVersion` (kmock replays every object);
- garbage collection: deleting an object deletes what names it as owner (background cascade);
- fields pruned from writes, as a CRD's schema prunes unknown ones (`pruned`, off by default);
- a request naming one object finds it by a dictionary lookup (kmock scans every object).

And faults, for the fault suite (tests/faults/): `inject(Fault(...))` makes the API server
answer an error, hang (until `heal()`, then a 504, the write not applied), drop the connection,
or blackhole it (no answer even after `heal()`, as a connection lost in a network partition:
only the client's own timeout ends it), for every request or some methods, sparing the test's
own calls (`spare`); `break_watches()` ends, errs or stalls the open watch streams, as an API
server restart or a lost connection does. `release_blackholes()` ends them all (at teardown).

Used by the component tests and by `benchmarks/operator_scale.py`.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import itertools
import secrets
import uuid
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

import aiohttp.web
import attrs
import jsonpatch
import kmock
from kmock._internal import dicts, enums, references, rendering


def parse_selector(text: str) -> list[tuple[str, str, str | None]]:
    """`a=b,c!=d,e,!f` as (operator, key, value) triples."""
    terms: list[tuple[str, str, str | None]] = []
    for term in filter(None, (part.strip() for part in text.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            terms.append(("!=", key.strip(), value.strip()))
        elif "=" in term:
            key, value = term.split("==", 1) if "==" in term else term.split("=", 1)
            terms.append(("=", key.strip(), value.strip()))
        elif term.startswith("!"):
            terms.append(("!", term[1:].strip(), None))
        else:
            terms.append(("exists", term, None))
    return terms


def selects(terms: list[tuple[str, str, str | None]], obj: Mapping[str, Any]) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for op, key, value in terms:
        if (
            (op == "=" and labels.get(key) != value)
            or (op == "!=" and labels.get(key) == value)
            or (op == "exists" and key not in labels)
            or (op == "!" and key in labels)
        ):
            return False
    return True


FaultMode = Literal["error", "hang", "drop", "blackhole"]
WatchBreak = Literal["close", "error", "hang", "blackhole"]
_BREAK = "canaryml-testing/break"  # the type of the bus event that breaks the watches


@attrs.frozen(kw_only=True)
class Fault:
    """What the API server does to the requests it applies to, while it is injected.

    `error`: answers `status` (a Kubernetes Status body); `hang`: answers nothing until the
    fault is healed, then a 504 without applying the request (the client has timed out long
    before); `drop`: closes the connection without an answer; `blackhole`: answers nothing,
    healed or not (until `release_blackholes()`). `methods` (upper case) limits it
    to those methods (empty: every request); `spare` names the requests it leaves alone.
    """

    mode: FaultMode = "error"
    status: int = 500
    methods: frozenset[str] = frozenset()
    spare: Callable[[aiohttp.web.BaseRequest], bool] = lambda _: False

    def applies(self, request: aiohttp.web.BaseRequest) -> bool:
        return (not self.methods or request.method.upper() in self.methods) and not self.spare(
            request
        )

    @property
    def reaches_watches(self) -> bool:
        return not self.methods or "GET" in self.methods


def _status_body(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Status",
        "metadata": {},
        "status": "Failure",
        "code": code,
        "reason": reason,
        "message": message,
    }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _selects(view: kmock.View, request: kmock.Request) -> bool:
    """Whether `view` selects `request`, the request that just arrived: on a chain of filters
    (and priorities) down to the root, every filter's criteria match it; any other view is asked
    as kmock asks (it filters every request logged so far)."""
    while not isinstance(view, kmock.Root):
        if isinstance(view, kmock.Filter):
            if not view.criteria(request):
                return False
        elif not isinstance(view, kmock.Priority):
            return request in view
        view = view._source
    return True


@attrs.define(kw_only=True)
class _DirectRouting(kmock.RawHandler):
    """kmock's routing of a request to the first reaction whose view selects it, with the view
    checked on the request alone. kmock checks membership by filtering every request logged so
    far, so each request costs more than the one before: creating 100 ModelDeployments spent 96 %
    of the emulator's CPU there, and 1,000 would have taken hours (benchmarks/operator_scale.py).
    The emulator's reactions are `fallback[criteria] << ...` chains, where both checks agree."""

    async def _handle(self, request: kmock.Request) -> aiohttp.web.StreamResponse:
        # kmock's order: the highest priority first, priorities padded to one length.
        priorities = [tuple(-p for p in payload.priorities) for payload in self._payloads]
        width = max((len(priority) for priority in priorities), default=0)
        order = sorted(
            range(len(priorities)),
            key=lambda index: priorities[index] + (0,) * (width - len(priorities[index])),
        )
        for payload in (self._payloads[index] for index in order):
            if payload._disabled.is_set() or not _selects(payload._source, request):
                continue
            try:
                return await payload(request)
            except kmock.ReactionMismatchError:  # a mismatch or a depleted reaction
                payload._disabled.set()
            except NotImplementedError:  # matched, but nothing to answer with
                pass
        raise NotImplementedError(f"no reaction for {request.method} {request.url}")


@attrs.define(kw_only=True)
class KubeEmulator(kmock.KubernetesEmulator, _DirectRouting):
    """kmock's emulator plus metadata, subresources, selectors and garbage collection."""

    _versions: Iterator[int] = attrs.field(factory=lambda: itertools.count(1), init=False)
    # Held across a write's preparation and kmock's own handling, so that the generation and
    # resourceVersion computed for a patch are those of the object it applies to.
    _write_lock: asyncio.Lock = attrs.field(factory=asyncio.Lock, init=False)
    fault: Fault | None = attrs.field(default=None, init=False)
    # The requests that met a fault, by method.
    faulted: collections.Counter[str] = attrs.field(factory=collections.Counter, init=False)
    _healed: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    _released: asyncio.Event = attrs.field(factory=asyncio.Event, init=False)
    # Fields this API server drops from creates and patches, by plural: key paths through maps
    # and lists, as a CRD's schema prunes a field it does not know (an HTTPRoute's
    # requestMirror.percent with Gateway API CRDs before v1.3).
    pruned: dict[str, list[tuple[str, ...]]] = attrs.field(factory=dict, init=False)

    # --- faults ------------------------------------------------------------------------------

    async def inject(self, fault: Fault) -> None:
        """From now on, `fault` applies (replacing any other); open watches of the requests it
        reaches are broken as it would break them: closed, or stalled by a hang. (Not with an
        ERROR event: kopf takes any but a 410 as fatal and exits; `break_watches("error")`.)"""
        self.fault = fault
        self._healed.clear()
        if fault.reaches_watches:
            how: dict[FaultMode, WatchBreak] = {"hang": "hang", "blackhole": "blackhole"}
            await self.break_watches(how.get(fault.mode, "close"))

    def heal(self) -> None:
        """The API server answers normally again; hung requests get their 504 now."""
        self.fault = None
        self._healed.set()

    def release_blackholes(self) -> None:
        """End what a blackhole holds: its requests get a 504, its watches end."""
        self._released.set()

    async def break_watches(self, how: WatchBreak = "close") -> None:
        """Every open watch stream ends (`close`), sends an ERROR event with a 500 and ends
        (`error`), stops sending until healed and then ends (`hang`), or stops sending until
        `release_blackholes()` (`blackhole`)."""
        async with self._lock:
            for bus in list(self._buses.values()):
                await bus.put({"type": _BREAK, "how": how})

    async def __call__(self, raw_request: aiohttp.web.BaseRequest) -> aiohttp.web.StreamResponse:
        fault = self.fault
        if fault is None or not fault.applies(raw_request):
            return await super().__call__(raw_request)
        self.faulted[raw_request.method.upper()] += 1
        await raw_request.read()
        if fault.mode == "drop":
            if raw_request.transport is not None:
                raw_request.transport.close()
            return aiohttp.web.Response(status=500)  # never sent: the connection is gone
        if fault.mode in ("hang", "blackhole"):
            await (self._healed if fault.mode == "hang" else self._released).wait()
            body = _status_body(504, "Timeout", "injected fault: the request timed out")
            return aiohttp.web.json_response(body, status=504)
        body = _status_body(fault.status, "InternalError", "injected fault")
        return aiohttp.web.json_response(body, status=fault.status)

    # --- helpers -----------------------------------------------------------------------------

    def _KubernetesEmulator__get_objs(  # noqa: N802  (replaces kmock's private lookup)
        self, request: rendering.Request, strict: bool
    ) -> list[Any]:
        """The objects a request names: kmock compares every stored object with the request,
        which makes each get, create and patch linear in the objects stored (a benchmark of
        thousands of resources would measure the emulator); one named object is a dictionary
        lookup, with the same answer. Lists and watches still scan."""
        resource, name = request.resource, request.name
        if resource is not None and name is not None and (strict or request.namespace is not None):
            key = (resource, request.namespace, name)
            return [self.objects[key]] if key in self.objects else []
        objs: list[Any] = super()._KubernetesEmulator__get_objs(request, strict)  # type: ignore[misc]
        return objs

    def _info(self, resource: references.resource) -> references.ResourceInfo | None:
        # kmock's [] (and so .get) declares an unknown resource: ask first.
        return self.resources[resource] if resource in self.resources else None  # noqa: SIM401

    def _live(self, key: tuple[Any, Any, Any]) -> dict[str, Any] | None:
        if key not in self.objects or self.objects[key].deleted:
            return None
        return copy.deepcopy(self.objects[key].raw)

    def _type_meta(self, resource: references.resource) -> dict[str, str]:
        info = self._info(resource)
        api_version = f"{resource.group}/{resource.version}" if resource.group else resource.version
        return {"apiVersion": str(api_version), "kind": (info.kind if info and info.kind else "")}

    # --- writes ------------------------------------------------------------------------------

    async def _handle(self, request: rendering.Request) -> aiohttp.web.StreamResponse:
        action = request.action
        if request.resource is None or action not in (
            enums.action.CREATE,
            enums.action.UPDATE,
            enums.action.DELETE,
        ):
            return await super()._handle(request)
        if isinstance(request.data, dict) and action != enums.action.DELETE:
            for path in self.pruned.get(request.resource.plural, ()):
                _prune(request.data, path)
        async with self._write_lock:
            if action == enums.action.CREATE:
                self._prepare_create(request)
            elif action == enums.action.UPDATE:
                self._prepare_patch(request)
            response = await super()._handle(request)
            if action == enums.action.CREATE and response.status == 200:
                response.set_status(201)
            key = (request.resource, request.namespace, request.name)
            if action != enums.action.CREATE and key in self.objects and self.objects[key].deleted:
                await self._collect_garbage()
            return response

    def _prepare_create(self, request: rendering.Request) -> None:
        assert request.resource is not None
        obj = request.data
        if not isinstance(obj, dict):
            raise kmock.KubernetesError(status=400, reason="BadRequest", message="not an object")
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise kmock.KubernetesError(
                    status=422, reason="Invalid", message="metadata.name: Required value"
                )
            meta["name"] = meta["generateName"] + secrets.token_hex(3)[:5]
        if request.namespace:
            meta.setdefault("namespace", request.namespace)
        meta.update(
            uid=str(uuid.uuid4()),
            resourceVersion=str(next(self._versions)),
            generation=1,
            creationTimestamp=_now(),
        )
        for key, value in self._type_meta(request.resource).items():
            if value:
                obj.setdefault(key, value)

    def _prepare_patch(self, request: rendering.Request) -> None:
        assert request.resource is not None
        key = (request.resource, request.namespace, request.name)
        current = self._live(key)
        if current is None:
            return  # kmock answers 404
        patch = request.data
        info = self._info(request.resource)
        has_status = bool(info and "status" in info.subresources)
        if isinstance(patch, dict) and has_status:
            if request.subresource == "status":
                kept = {"status": patch["status"]} if "status" in patch else {}
                if "resourceVersion" in (patch.get("metadata") or {}):
                    kept["metadata"] = {"resourceVersion": patch["metadata"]["resourceVersion"]}
                patch.clear()
                patch.update(kept)
            else:
                patch.pop("status", None)
        try:
            result = dict(dicts.patch_dict(current, patch))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException) as error:
            raise kmock.KubernetesError(status=422, reason="Invalid", message=str(error)) from None
        except (ValueError, TypeError) as error:
            raise kmock.KubernetesError(
                status=400, reason="BadRequest", message=str(error)
            ) from None
        meta = (patch.get("metadata") or {}) if isinstance(patch, dict) else {}
        wanted = meta.get("resourceVersion")
        if wanted is not None and str(wanted) != current["metadata"].get("resourceVersion"):
            raise kmock.KubernetesError(
                status=409, reason="Conflict", message="the object has been modified"
            )
        generation = int(current["metadata"].get("generation") or 1)
        if result.get("spec") != current.get("spec"):
            generation += 1
        stamp = {"resourceVersion": str(next(self._versions)), "generation": generation}
        if isinstance(patch, dict):
            patch.setdefault("metadata", {}).update(stamp)
        else:
            patch.extend(
                {"op": "add", "path": f"/metadata/{name}", "value": value}
                for name, value in stamp.items()
            )

    async def _collect_garbage(self) -> None:
        """Delete every object whose owner is gone, until none is left (background cascade)."""
        while True:
            alive = {
                obj.raw["metadata"].get("uid") for obj in self.objects.values() if not obj.deleted
            }
            orphans = [
                (resource, obj)
                for (resource, _, _), obj in self.objects.items()
                if not obj.deleted
                and any(
                    ref.get("uid") not in alive
                    for ref in obj.raw.get("metadata", {}).get("ownerReferences") or []
                )
            ]
            if not orphans:
                return
            async with self._lock:
                for resource, obj in orphans:
                    raw = obj.raw
                    obj.delete()
                    await self._buses[resource].put({"type": "DELETED", "object": raw})

    # --- reads -------------------------------------------------------------------------------

    async def _serve_list(self, request: rendering.Request) -> rendering.Payload:
        answer = await super()._serve_list(request)
        assert isinstance(answer, dict) and request.resource is not None
        terms = parse_selector(request.params.get("labelSelector", ""))
        type_meta = self._type_meta(request.resource)
        return {
            "apiVersion": type_meta["apiVersion"],
            "kind": f"{type_meta['kind']}List",
            "metadata": {"resourceVersion": str(next(self._versions))},
            "items": [item for item in answer["items"] if selects(terms, item)],
        }

    async def _serve_watch(self, request: rendering.Request) -> AsyncIterator[rendering.Payload]:
        """Objects changed after the requested resourceVersion, then every new event.

        kmock replays every stored object to each new watch; kopf, having just listed them,
        then patches with a stale resourceVersion and gives up until the next event.
        """
        yield b""  # send the headers now: the stream may stay quiet for long
        assert request.resource is not None
        terms = parse_selector(request.params.get("labelSelector", ""))
        since = _version(request.params.get("resourceVersion"))

        def wanted(obj: Mapping[str, Any]) -> bool:
            meta = obj.get("metadata") or {}
            return (
                (request.namespace is None or meta.get("namespace") == request.namespace)
                and (request.name is None or meta.get("name") == request.name)
                and selects(terms, obj)
            )

        bus = self._buses[request.resource]
        async with self._lock:  # writers publish under this lock: nothing falls in between
            marker = await bus.mark()
            changed = [
                obj.raw
                for (resource, _, _), obj in self.objects.items()
                if resource == request.resource
                and not obj.deleted
                and _version(obj.raw["metadata"].get("resourceVersion")) > since
            ]
        try:
            for raw in changed:
                if wanted(raw):
                    yield {"type": "ADDED", "object": raw}
            async for event in bus.stream(since=marker):
                if event.get("type") == _BREAK:
                    if event["how"] == "error":
                        yield {"type": "ERROR", "object": _status_body(500, "InternalError", "")}
                    elif event["how"] == "hang":
                        await self._healed.wait()
                    elif event["how"] == "blackhole":
                        await self._released.wait()
                    return
                if wanted(event.get("object") or {}):
                    yield event
        finally:
            await bus.unmark(marker)


def _prune(obj: Any, path: tuple[str, ...]) -> None:
    """Drop the key at `path` (through maps, and every item of lists) from `obj`."""
    if isinstance(obj, list):
        for item in obj:
            _prune(item, path)
    elif isinstance(obj, dict) and path and path[0] in obj:
        if len(path) == 1:
            del obj[path[0]]
        else:
            _prune(obj[path[0]], path[1:])


def _version(value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return 0
