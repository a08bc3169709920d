"""What one analysis measured: the input of the rollout core, produced by a metric provider.

Pure data, no I/O: `providers` fills it from Prometheus, tests and the local demo build it
directly. Each check is keyed by its name: the built-in names below, or a custom metric's
`analysis.metrics[].name`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

# Built-in checks, named as the fields of status.lastAnalysis.
REQUESTS: Final = "requests"  # canary requests in the window (the minRequests gate)
ERROR_RATE: Final = "errorRate"
LATENCY_P99: Final = "latencyP99"  # seconds
DRIFT: Final = "drift"  # worst per-feature PSI of the canary's inputs
PREDICTION_DRIFT: Final = "predictionDrift"
SHADOW_AGREEMENT: Final = "shadowAgreement"
BUILTIN_CHECKS: Final = (
    REQUESTS,
    ERROR_RATE,
    LATENCY_P99,
    DRIFT,
    PREDICTION_DRIFT,
    SHADOW_AGREEMENT,
)


@dataclass(frozen=True)
class Sample:
    """One query's answer: a value, no data (value None), or an error saying why not."""

    value: float | None = None
    error: str | None = None

    @classmethod
    def failed(cls, error: str) -> Sample:
        return cls(value=None, error=error)


@dataclass(frozen=True)
class Measurements:
    """Every check's sample, taken at `time`."""

    time: datetime
    samples: Mapping[str, Sample] = field(default_factory=dict)

    def get(self, check: str) -> Sample:
        return self.samples.get(check, Sample())
