"""Prometheus down, slow, trickling or answering garbage holds the weight: no step, no
rollback, an Error (or Inconclusive) analysis that says why, and the rollout goes on once
Prometheus answers again.

The operator runs as a process; the fake Prometheus answers what the test sets. The spec makes
any mistake visible: a step interval of 1 s (an analysis read as passing steps the canary up)
and a failure limit of 1 (one read as failing rolls it back). A real Prometheus stopped and
started again is tests/integration/test_rollout.py::test_prometheus_down_holds_the_weight...
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from canaryml_api import resource as api
from canaryml_operator import checks, providers

from tests.faults.conftest import OperatorProcess, World, rollout_spec
from tests.faults.fake_prometheus import GARBAGE, FakePrometheus
from tests.integration.conftest import free_port

# Through the operator process: one of each kind (the provider test below takes every one).
PROCESS_MODES = ["down", "slow", "trickle", "invalid JSON", "a matrix", "deeply nested JSON"]


@pytest.fixture
async def fake() -> AsyncIterator[FakePrometheus]:
    prometheus = FakePrometheus(port=free_port())
    await prometheus.start()
    try:
        yield prometheus
    finally:
        await prometheus.close()


@pytest.mark.parametrize("mode", ["down", "slow", "trickle", *GARBAGE])
async def test_each_broken_answer_is_an_error_sample(fake: FakePrometheus, mode: str) -> None:
    spec = api.parse_spec(rollout_spec(fake.url))
    queries = checks.build_queries(spec=spec, name="iris", namespace="default", source="router")
    if mode == "down":
        await fake.stop()
    fake.mode, fake.slow_seconds = mode, 1.0
    provider = providers.PrometheusProvider(url=fake.url, timeout=0.3)
    try:
        measured = await asyncio.wait_for(
            providers.measure(provider=provider, queries=queries, at=datetime.now(UTC)),
            timeout=5,
        )
    finally:
        await provider.aclose()
    for name, sample in measured.samples.items():
        assert sample.value is None and sample.error, (mode, name, sample)


async def analysis_in(world: World, mode: str) -> dict[str, Any]:
    """The status after an analysis taken wholly while Prometheus was in `mode`: the second
    one written after the switch (analyses run one after the other, so the first may have
    started before it, the second began after the first was written)."""
    prometheus = world.prometheus
    if mode == "down":
        await prometheus.stop()
    else:
        prometheus.mode = mode
    found: dict[str, Any] = {}
    for _ in range(2):
        seen = ((await world.status("iris")).get("lastAnalysis") or {}).get("time")
        found = await world.wait(
            "iris",
            f"an analysis in mode {mode}",
            lambda s, seen=seen: (s.get("lastAnalysis") or {}).get("time") not in (None, seen),
            within=20,
        )
    if mode == "down":
        await prometheus.start()
    return found


@pytest.mark.integration
async def test_a_broken_prometheus_holds_the_weight(
    world: World, operator: OperatorProcess
) -> None:
    spec = rollout_spec(world.prometheus.url, failureLimit=1, stepInterval="1s")
    spec["analysis"]["prometheus"]["timeout"] = "1s"
    world.prometheus.mode = "HTML"  # no analysis passes before the faults below are tried
    await world.at_first_step("iris", spec)

    for mode in PROCESS_MODES:
        held = await analysis_in(world, mode)
        last = held["lastAnalysis"]
        assert last["verdict"] in ("Error", "Inconclusive"), (mode, last)
        assert last["reasons"] and all(reason.strip() for reason in last["reasons"]), (mode, last)
        assert (held["phase"], held["canaryWeight"], held["currentStep"]) == (
            "Progressing",
            10,
            0,
        ), (mode, held)
        assert held["failedChecks"] == 0, (mode, held)

    world.prometheus.mode = "pass"
    stepped = await world.wait("iris", "the next step", lambda s: s.get("canaryWeight") == 50)
    assert stepped["currentStep"] == 1
