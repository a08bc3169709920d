"""The drift collector of a model server: a failing drift test never fails the scrape."""

from __future__ import annotations

from typing import cast

import pytest
from canaryml_api.telemetry import FEATURE_DRIFT, FEATURE_DRIFT_P_VALUE, PREDICTION_DRIFT
from canaryml_server.drift import DriftMonitor, DriftReport
from canaryml_server.metrics import DriftCollector


class BrokenTestMonitor:
    rows = 100

    def report(self) -> DriftReport:
        return DriftReport(
            rows=100,
            window=100,
            feature_psi={"x": 0.1},
            feature_js={"x": 0.05},
            prediction_psi=0.02,
            prediction_js=0.01,
        )

    def test(self) -> object:
        raise ValueError("a bug in the drift test")


def test_a_failing_drift_test_drops_only_the_p_values(caplog: pytest.LogCaptureFixture) -> None:
    monitor = cast(DriftMonitor, BrokenTestMonitor())
    collector = DriftCollector(monitor, labels={"model_deployment": "m"}, min_rows=10)
    names = [family.name for family in collector.collect()]
    assert FEATURE_DRIFT in names and PREDICTION_DRIFT in names
    assert FEATURE_DRIFT_P_VALUE not in names
    assert "the drift test failed" in caplog.text
