"""What the operator writes back to the model registry (spec.registry), and the record of it.

Pure: which outcomes of status.history are due (`due`), and `record`, the one writer of
status.registryWrites. The registry is MLflow's; the shell (`registry`) makes the REST calls.

An outcome is written on the registry version the history entry's URI names: `models:/NAME/N`
is version N, `models:/NAME@ALIAS` the version the alias points at when it is written (the
shell asks the registry). A `runs:/` URI (or any other) names no registered version: nothing
is written, and the record says so. The first time a resource has spec.registry, only its
latest outcome is due (earlier ones are the past); after that, every newer one. A write that
failed is due again at the next turn, up to MAX_ATTEMPTS; it never holds the rollout: the
decision and the children are applied before any write-back is tried.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import canaryml_api.resource as api

MAX_ATTEMPTS = 10
MAX_RECORDS = 10
_MODELS_URI = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>[^/@]+)|@(?P<alias>[^/@]+))/?")

Kind = Literal["alias", "stage", "tag"]


@dataclass(frozen=True)
class Target:
    """A registered model's version, by number or by alias."""

    name: str
    version: str | None = None
    alias: str | None = None


def target_of(uri: str) -> Target | None:
    """The registry version a `models:/` URI names; None for any other URI."""
    match = _MODELS_URI.fullmatch(uri)
    if match is None:
        return None
    return Target(match["name"], version=match["version"], alias=match["alias"])


@dataclass(frozen=True)
class Write:
    """One call to make: on `target`, set alias `name`, stage `name`, or tag `name` = `value`."""

    event: Literal["promoted", "rolledBack"]
    history_time: datetime
    uri: str
    kind: Kind
    name: str
    value: str = ""
    archive_existing: bool = False
    target: Target | None = None

    @property
    def action(self) -> str:
        return f"{self.kind} {self.name}"

    def same(self, record: api.RegistryWrite) -> bool:
        return (record.event, record.history_time, record.action) == (
            self.event,
            self.history_time,
            self.action,
        )


def _write_for(registry: api.RegistrySpec, entry: api.HistoryEntry) -> Write | None:
    target = target_of(entry.uri)
    if entry.event == "promoted" and registry.on_promote is not None:
        promote = registry.on_promote
        kind: Kind = "alias" if promote.alias is not None else "stage"
        return Write(
            event=entry.event,
            history_time=entry.time,
            uri=entry.uri,
            kind=kind,
            name=promote.alias or promote.stage or "",
            archive_existing=promote.archive_existing_versions,
            target=target,
        )
    if entry.event == "rolledBack" and registry.on_rollback is not None:
        return Write(
            event=entry.event,
            history_time=entry.time,
            uri=entry.uri,
            kind="tag",
            name=registry.on_rollback.tag,
            value=(entry.reason or "rolled back")[:5000],
            target=target,
        )
    return None


def due(spec: api.ModelDeploymentSpec, status: api.ModelDeploymentStatus) -> list[Write]:
    """The writes to try now, oldest outcome first: new outcomes, and failed ones again."""
    if spec.registry is None or not status.history:
        return []
    records = status.registry_writes
    entries = sorted(status.history, key=lambda entry: entry.time)
    if records:
        last = max(record.history_time for record in records)
        new = [entry for entry in entries if entry.time > last]
        again = [
            entry
            for entry in entries
            if any(
                record.history_time == entry.time
                and record.event == entry.event
                and not record.done
                and record.attempts < MAX_ATTEMPTS
                for record in records
            )
        ]
        candidates = again + new
    else:
        candidates = entries[-1:]
    writes = [_write_for(spec.registry, entry) for entry in candidates]
    return [write for write in writes if write is not None]


@dataclass(frozen=True)
class Outcome:
    """What became of one write: done (with the version written to), or why not."""

    done: bool
    result: str
    registry_version: str | None = None


def unwritable(write: Write) -> Outcome | None:
    """Why `write` cannot be made at all (final: not retried), or None."""
    if write.target is None:
        return Outcome(
            done=True,
            result=f"skipped: {write.uri} is not a models:/ URI, so it names no registry version",
        )
    return None


def record(
    records: list[api.RegistryWrite], write: Write, outcome: Outcome, now: datetime
) -> list[api.RegistryWrite]:
    """status.registryWrites with `write`'s attempt recorded (the newest MAX_RECORDS kept)."""
    previous = next((record for record in records if write.same(record)), None)
    attempts = (previous.attempts if previous else 0) + 1
    result = outcome.result
    if not outcome.done and attempts >= MAX_ATTEMPTS:
        result = f"{result} (gave up after {attempts} attempts)"
    updated = api.RegistryWrite(
        event=write.event,
        history_time=write.history_time,
        uri=write.uri,
        action=write.action,
        registry_version=outcome.registry_version
        or (previous.registry_version if previous else None),
        done=outcome.done,
        attempts=attempts,
        last_result=result[:1024],
        last_attempt_at=now,
    )
    kept = [record for record in records if not write.same(record)] + [updated]
    kept.sort(key=lambda record: (record.history_time, record.action))
    return kept[-MAX_RECORDS:]


MODEL_NOT_IN_REGISTRY = "ModelNotInRegistry"


def registry_models(spec: api.ModelDeploymentSpec) -> list[tuple[str, str, Target]]:
    """The spec's models that name a registry version (field, uri, target), to be asked about
    before their tracks are made; none without spec.registry."""
    if spec.registry is None:
        return []
    models = [("model", spec.model)]
    if spec.canary is not None:
        models.append(("canary.model", spec.canary.model))
    if spec.shadow is not None:
        models.append(("shadow.model", spec.shadow.model))
    found = []
    for where, model in models:
        target = target_of(model.uri)
        if target is not None:
            found.append((f"spec.{where}.uri", model.uri, target))
    return found
