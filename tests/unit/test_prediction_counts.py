"""The model server's rows predicted per bin of its reference profile
(canaryml_api.telemetry.PREDICTIONS_TOTAL): labels, batches, unseen classes, the exposition."""

from __future__ import annotations

import numpy as np
from canaryml_api.telemetry import BIN_LABEL, MISSING_BIN, PREDICTIONS_TOTAL
from canaryml_server.drift import FLUSH_ROWS
from canaryml_server.metrics import ServerMetrics
from canaryml_server.predictions import (
    MAX_UNSEEN_LABELS,
    OTHER_BIN,
    PredictionTally,
    bin_labels,
)
from canaryml_server.profile import build_categorical_bins, build_numeric_bins
from prometheus_client import CollectorRegistry

from tests.unit.test_server_pipeline import _plane


def test_a_classifier_counts_each_row_by_its_class_every_known_class_from_zero() -> None:
    tally = PredictionTally(build_categorical_bins(np.array([0, 1, 1, 2])))
    assert tally.counts() == {"0": 0, "1": 0, "2": 0}
    tally.observe(np.array([0, 1, 1]))  # a batch counts each row
    tally.observe(np.array([1]))
    # A class the profile lacks (never predicted on the reference) is labelled by its text.
    tally.observe(np.array([7]))
    assert tally.counts() == {"0": 1, "1": 3, "2": 0, "7": 1}
    strings = PredictionTally(build_categorical_bins(np.array(["setosa", "virginica"])))
    strings.observe(np.array(["virginica", None], dtype=object))
    assert strings.counts() == {"setosa": 0, "virginica": 1, MISSING_BIN: 1}


def test_unseen_classes_are_bounded() -> None:
    tally = PredictionTally(build_categorical_bins(np.array([0])))
    tally.observe(np.arange(1, MAX_UNSEEN_LABELS + 11))
    counts = tally.counts()
    assert counts[OTHER_BIN] == 10 and len(counts) == 1 + MAX_UNSEEN_LABELS + 1


def test_a_regressor_counts_by_the_profiles_bins_named_by_upper_edge() -> None:
    bins = build_numeric_bins(np.array([1.0, 2.0, 3.0, 4.0]), bins=2)  # one edge: 2.5
    assert bin_labels(bins) == ["2.5", "+Inf", MISSING_BIN]
    tally = PredictionTally(bins)
    tally.observe(np.array([0.0, 2.5, 9.0, np.inf, np.nan]))  # 2.5 is the next bin's
    assert tally.counts() == {"2.5": 1, "+Inf": 3, MISSING_BIN: 1}


def test_rows_wait_in_groups_and_reading_folds_them_in() -> None:
    tally = PredictionTally(build_categorical_bins(np.array([0, 1])))
    for _ in range(FLUSH_ROWS + 3):
        tally.observe(np.array([1]))
    assert tally.counts()["1"] == FLUSH_ROWS + 3


def test_the_server_exports_the_counter_per_bin_and_only_with_metrics() -> None:
    plane = _plane()
    assert plane.tally is not None
    registry = CollectorRegistry()
    metrics = ServerMetrics(
        registry=registry, model_deployment="shop", track="canary", version="2",
        model_name="shop-model", runtime="sklearn",
    )  # fmt: skip
    metrics.count_predictions(plane.tally)
    plane.predict_records([{"size": 2.0, "color": "red"}] * 3, probabilities=False)
    plane.predict_records({"size": 0.5, "color": "red"}, probabilities=False)
    labels = {"model_deployment": "shop", "track": "canary", "version": "2"}
    assert registry.get_sample_value(PREDICTIONS_TOTAL, {**labels, BIN_LABEL: "1"}) == 3
    assert registry.get_sample_value(PREDICTIONS_TOTAL, {**labels, BIN_LABEL: "0"}) == 1
    assert _plane(metrics_enabled=False).tally is None
