"""The demo's commands: the annotations of its ModelDeployment file, and its own approval.

In a cluster, `canaryml promote NAME` sets the annotation `canaryml.dev/promote: "<canary
version>"` and the operator reads it. The demo has no API server, so it reads the same
annotations from the ModelDeployment file of the run (`metadata.annotations`), every time the
file changes: adding `canaryml.dev/promote: "1.1.0"` there approves an awaited promotion (and
`canaryml.dev/abort`, `canaryml.dev/paused` act as they do in a cluster). When nobody has
approved `approve_after` seconds after the wait began, the demo gives the approval itself, as
that annotation, and says so.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml
from canaryml_api import resource as api
from canaryml_operator import rollout
from canaryml_operator.state import awaiting_approval

from canaryml_cli.demo.record import DemoRecord, TimedEvent

DEFAULT_APPROVE_AFTER_S = 20.0
APPROVAL_HOWTO = "ApprovalHowTo"  # the demo's Event: how to approve here, and when it will
APPROVED_BY_DEMO = "ApprovedByDemo"  # the demo's Event: nobody approved, it did


def file_annotations(path: Path) -> dict[str, str]:
    """metadata.annotations of the file's ModelDeployment (none when it cannot be read: the
    run goes on as it was)."""
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError):
        return {}
    for document in documents:
        if isinstance(document, dict) and document.get("kind") == api.KIND:
            metadata: Any = document.get("metadata") or {}
            annotations = metadata.get("annotations") if isinstance(metadata, dict) else None
            if isinstance(annotations, dict):
                return {str(key): str(value) for key, value in annotations.items()}
    return {}


@dataclass
class DemoCommands:
    """The commands of each turn of the demo's loop (see the module's docstring)."""

    name: str
    namespace: str
    spec_file: Path
    approve_after: float = DEFAULT_APPROVE_AFTER_S
    _stamp: tuple[int, int] | None = None  # the file's (mtime, size) when last read
    _annotations: dict[str, str] = field(default_factory=dict)
    _told: bool = False  # the how-to of the current wait was told
    _approval: str | None = None  # the value the demo gave as its approval

    def read(self) -> dict[str, str]:
        """The file's annotations, read again when the file changed."""
        try:
            info = self.spec_file.stat()
            stamp = (info.st_mtime_ns, info.st_size)
        except OSError:
            return self._annotations
        if stamp != self._stamp:
            self._stamp, self._annotations = stamp, file_annotations(self.spec_file)
        return self._annotations

    def __call__(
        self, *, status: api.ModelDeploymentStatus, now: datetime, record: DemoRecord
    ) -> Mapping[rollout.Command, str]:
        commands: dict[rollout.Command, str] = rollout.commands_from(self.read())
        waiting = awaiting_approval(status)
        if waiting is None:
            self._told = False
            return self._with_approval(commands)
        version = status.canary_version or ""
        key = rollout.COMMAND_ANNOTATIONS["promote"]
        if not self._told:
            self._told = True
            record.events.append(
                TimedEvent(
                    now,
                    "Normal",
                    APPROVAL_HOWTO,
                    f"in a cluster: `canaryml promote {self.name} -n {self.namespace}`; here: "
                    f'add the annotation {key}: "{version}" to metadata.annotations in '
                    f"{self.spec_file}, or the demo approves in {self.approve_after:.0f} s",
                )
            )
        waited = (now - waiting.last_transition_time).total_seconds()
        if "promote" not in commands and waited >= self.approve_after and self._approval is None:
            self._approval = f"{version}@demo"
            record.events.append(
                TimedEvent(
                    now,
                    "Normal",
                    APPROVED_BY_DEMO,
                    f"nobody approved for {waited:.0f} s: the demo approves the promotion "
                    f'itself, as {key}: "{self._approval}" (`canaryml promote` in a cluster)',
                )
            )
        return self._with_approval(commands)

    def _with_approval(self, commands: dict[rollout.Command, str]) -> Mapping[rollout.Command, str]:
        if self._approval is not None and "promote" not in commands:
            commands["promote"] = self._approval  # kept, as an annotation stays
        return commands
