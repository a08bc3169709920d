"""The drift collector of a model server: a failing drift test never fails the scrape."""

from __future__ import annotations

from typing import cast

import pytest
from canaryml_api.telemetry import (
    DRIFT_ROWS_BINNED,
    DRIFT_ROWS_SEEN,
    FEATURE_DRIFT,
    FEATURE_DRIFT_P_VALUE,
    PREDICTION_DRIFT,
)
from canaryml_server.drift import DriftMonitor, DriftReport, Sampling
from canaryml_server.metrics import DriftCollector


class BrokenTestMonitor:
    rows = 100

    def sampling(self) -> Sampling:
        return Sampling(rows_seen=400, rows_binned=100, sample_rows=16)

    def report(self) -> DriftReport:
        return DriftReport(
            rows=100,
            window=100,
            feature_psi={"x": 0.1},
            feature_js={"x": 0.05},
            prediction_psi=0.02,
            prediction_js=0.01,
            sampling=self.sampling(),
        )

    def test(self) -> object:
        raise ValueError("a bug in the drift test")


def test_a_failing_drift_test_drops_only_the_p_values(caplog: pytest.LogCaptureFixture) -> None:
    monitor = cast(DriftMonitor, BrokenTestMonitor())
    collector = DriftCollector(monitor, labels={"model_deployment": "m"}, min_rows=10)
    families = {family.name: family for family in collector.collect()}
    names = list(families)
    assert FEATURE_DRIFT in names and PREDICTION_DRIFT in names
    # rows seen and binned, so a reader knows the window is a sample
    assert families[DRIFT_ROWS_SEEN].samples[0].value == 400
    assert families[DRIFT_ROWS_BINNED].samples[0].value == 100
    assert FEATURE_DRIFT_P_VALUE not in names
    assert "the drift test failed" in caplog.text
