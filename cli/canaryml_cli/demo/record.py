"""What one demo run saw: the input of the live view, the summary and the plot.

Plain data, filled in by the runner as the rollout goes; `report` writes it out.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Literal

from canaryml_api import resource as api
from canaryml_operator.measurements import Measurements

from canaryml_cli.demo import scenarios


@dataclass(frozen=True)
class TimedEvent:
    """An Event the rollout core emitted (the operator would post it to Kubernetes)."""

    time: datetime
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class WeightChange:
    """The canary weight the router was given at `time`."""

    time: datetime
    weight: int


@dataclass
class DemoRecord:
    """Everything one run decided and measured, in order."""

    name: str  # the ModelDeployment's metadata.name
    scenario: str
    metrics: str  # "prometheus" (started here), "scrape" (no Prometheus), or the URL used
    started_at: datetime
    spec: api.ModelDeploymentSpec
    status: api.ModelDeploymentStatus = field(default_factory=api.ModelDeploymentStatus)
    analyses: list[api.AnalysisRecord] = field(default_factory=list)
    # What each analysis measured, by its time (AnalysisRecord.time): the samples say more
    # than the record keeps, such as the features a drift value comes from.
    measured: dict[datetime, Measurements] = field(default_factory=dict)
    events: list[TimedEvent] = field(default_factory=list)
    weights: list[WeightChange] = field(default_factory=list)
    requests: Counter[str] = field(default_factory=Counter)  # answered requests per track
    codes: Counter[int] = field(default_factory=Counter)  # client-side status codes (0: none)
    labels: Counter[int] = field(default_factory=Counter)  # labels sent back, by answer status
    finished_at: datetime | None = None
    timed_out: bool = False  # --duration ran out before the rollout ended
    # The ModelDeployment file of the run: the user's (--spec), or the example's as written.
    spec_file: Path | None = None
    own_spec: bool = False  # --spec: the user's ModelDeployment, not the bundled example's
    traffic_file: Path | None = None  # the CSV of the rows sent

    @property
    def label(self) -> str:
        """What ran, for a title: the bundled example's scenario, or the user's spec file (a
        scenario's name would describe the example's models, not the user's), with the fault
        injected into the user's canary if one was."""
        if not self.own_spec:
            return self.scenario
        spec = f"--spec {self.spec_file.name}" if self.spec_file else "--spec"
        if self.scenario == scenarios.DEFAULT_SCENARIO:
            return spec
        return f"{spec} --scenario {self.scenario}"

    @property
    def outcome(self) -> str:
        """Promoted, RolledBack, or the phase the run stopped in."""
        return self.status.phase or "Pending"

    def seconds(self, time: datetime) -> float:
        """Seconds since the run started."""
        return (time - self.started_at).total_seconds()
