"""The held-out figures end to end: artifacts packaged with `--evaluate`, real model servers
exporting them, a real Prometheus scraping them, the operator's queries and provider reading
them, and the offline gate judging them (and a server whose manifest has no evaluation)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from canaryml_api import resource as api
from canaryml_operator import offline
from canaryml_operator.checks import build_queries
from canaryml_operator.measurements import offline_name
from canaryml_operator.providers import PrometheusProvider, measure
from canaryml_server.artifact import load_artifact, package_model, sha256_file

from .prometheus import RunningPrometheus, Target

pytestmark = pytest.mark.integration

NAMESPACE = "default"
HELDOUT_ROWS = 2000


def package(root: Path, model: str, version: str, heldout: Path, out: Path) -> Path:
    package_model(
        model_path=root / f"{model}.joblib",
        reference_path=root / "train.csv",
        target="target",
        out_dir=out,
        version=version,
        runtime="sklearn",
        evaluate_path=heldout,
    )
    return out


async def test_the_gate_reads_both_tracks_figures_from_prometheus(
    start_server: Callable[..., str],
    prometheus: Callable[..., RunningPrometheus],
    example_models: dict[str, Path],
    tmp_path: Path,
) -> None:
    root = example_models["root"]
    heldout = tmp_path / "heldout.csv"
    pd.read_csv(root / "test.csv", nrows=HELDOUT_ROWS).to_csv(heldout, index=False)
    stable = package(root, "stable", "1.0.0", heldout, tmp_path / "stable")
    canary = package(root, "canary", "1.1.0", heldout, tmp_path / "canary")
    urls = [
        start_server(stable, "--track", "stable", "--model-deployment", "gated"),
        start_server(canary, "--track", "canary", "--model-deployment", "gated"),
        # Another ModelDeployment whose stable artifact records no evaluation.
        start_server(example_models["stable"], "--track", "stable", "--model-deployment", "other"),
        start_server(example_models["canary"], "--track", "canary", "--model-deployment", "other"),
    ]
    prom = prometheus([Target(url, {"namespace": NAMESPACE}) for url in urls])
    await prom.wait_for_async("count(canaryml_offline_evaluation_rows)", lambda v: v == 4)

    spec = api.parse_spec(
        {
            "model": {"uri": "file:///models/stable", "version": "1.0.0"},
            "canary": {"model": {"uri": "file:///models/canary", "version": "1.1.0"}},
            "analysis": {
                "prometheus": {"url": prom.url},
                "offlineGate": {"metric": "accuracy", "maxDrop": 0.0},
            },
        }
    )
    status = api.ModelDeploymentStatus()  # no step yet: the gate's analysis
    provider = PrometheusProvider(url=prom.url, timeout=5.0)
    try:
        results = {}
        for name in ("gated", "other"):
            queries = build_queries(
                spec=spec, name=name, namespace=NAMESPACE, source="router", status=status
            )
            results[name] = await measure(provider=provider, queries=queries, at=datetime.now(UTC))
    finally:
        await provider.aclose()

    digest = sha256_file(heldout)
    manifests = {track: load_artifact(path).manifest for track, path in (
        ("stable", stable), ("canary", canary))}  # fmt: skip
    gated = results["gated"]
    for track, manifest in manifests.items():
        assert manifest.evaluation is not None
        assert gated.get(offline_name(track, "rows")).features == ((digest, HELDOUT_ROWS),)
        assert dict(gated.get(offline_name(track, "figures")).features) == pytest.approx(
            manifest.evaluation.metrics
        )
    result = offline.judge_gate(spec=spec, status=status, measurements=gated)
    # The example canary (a forest on 1,000 rows) is the better model on held-out rows.
    assert result.outcome == "pass", result.check.message
    assert f"on the same {HELDOUT_ROWS:,} held-out rows" in result.check.message

    # No evaluation in the manifest: the rows series at 0 without a digest (Prometheus drops
    # the empty label), no figure; the gate cannot compare and says so.
    other = results["other"]
    assert other.get(offline_name("stable", "rows")).features == (("", 0.0),)
    assert other.get(offline_name("stable", "figures")).features == ()
    blocked = offline.judge_gate(spec=spec, status=status, measurements=other)
    assert blocked.outcome == "blocked"
    assert "records no held-out evaluation" in blocked.check.message
