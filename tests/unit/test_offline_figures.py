"""The model server exports its manifest's held-out figures (`canaryml package --evaluate`) in
the metrics contract, so that the operator can show and gate on them without reading artifacts:
one gauge per figure and the rows with the held-out data's digest, or the rows at 0 alone when
the manifest records no evaluation."""

from __future__ import annotations

import dataclasses
import math

import httpx
from canaryml_api.telemetry import (
    HELDOUT_SHA256_LABEL,
    METRIC_LABEL,
    OFFLINE_EVALUATION,
    OFFLINE_EVALUATION_ROWS,
)
from canaryml_server.app import create_app
from canaryml_server.evaluation import Evaluation
from canaryml_server.metrics import ServerMetrics
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from tests.unit.test_server_pipeline import LABELS, _model, _settings

DIGEST = "c" * 64
EVALUATION = Evaluation(
    rows=2000,
    source_sha256=DIGEST,
    target="target",
    runtime="sklearn",
    metrics={"accuracy": 0.955, "f1": 0.96, "log_loss": math.inf},
    positive_class=1,
)


def exported(evaluation: Evaluation | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    metrics = ServerMetrics(
        registry=registry, model_deployment="shop", track="canary", version="2",
        model_name="shop-model", runtime="sklearn",
    )  # fmt: skip
    metrics.offline_evaluation(evaluation)
    return registry


def test_each_finite_figure_is_a_gauge_with_the_rows_and_the_held_out_digest() -> None:
    registry = exported(EVALUATION)
    figure = registry.get_sample_value
    assert figure(OFFLINE_EVALUATION, {**LABELS, METRIC_LABEL: "accuracy"}) == 0.955
    assert figure(OFFLINE_EVALUATION, {**LABELS, METRIC_LABEL: "f1"}) == 0.96
    # An infinite figure would break every comparison: left out, as if not recorded.
    assert figure(OFFLINE_EVALUATION, {**LABELS, METRIC_LABEL: "log_loss"}) is None
    assert figure(OFFLINE_EVALUATION_ROWS, {**LABELS, HELDOUT_SHA256_LABEL: DIGEST}) == 2000
    assert figure(OFFLINE_EVALUATION_ROWS, {**LABELS, HELDOUT_SHA256_LABEL: ""}) is None


def test_a_manifest_without_evaluation_exports_the_rows_at_zero_and_no_figure() -> None:
    registry = exported(None)
    rows = [
        (sample.labels, sample.value)
        for family in registry.collect()
        if family.name == OFFLINE_EVALUATION_ROWS
        for sample in family.samples
    ]
    assert rows == [({**LABELS, HELDOUT_SHA256_LABEL: ""}, 0.0)]
    assert not [
        sample
        for family in registry.collect()
        if family.name == OFFLINE_EVALUATION
        for sample in family.samples
    ]


async def test_the_server_serves_them_at_metrics_from_its_manifest() -> None:
    model = _model()
    evaluated = dataclasses.replace(
        model, manifest=model.manifest.model_copy(update={"evaluation": EVALUATION})
    )
    for loaded, rows, figures in (
        (evaluated, {DIGEST: 2000.0}, {"accuracy": 0.955, "f1": 0.96}),
        (model, {"": 0.0}, {}),
    ):
        app = create_app(model=loaded, settings=_settings())
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            text = (await client.get("/metrics")).text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        assert {
            sample.labels[HELDOUT_SHA256_LABEL]: sample.value
            for sample in samples
            if sample.name == OFFLINE_EVALUATION_ROWS
            and {k: v for k, v in sample.labels.items() if k != HELDOUT_SHA256_LABEL} == LABELS
        } == rows
        assert {
            sample.labels[METRIC_LABEL]: sample.value
            for sample in samples
            if sample.name == OFFLINE_EVALUATION
        } == figures
