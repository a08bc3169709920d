"""The e2e fixtures: a usable cluster (or a skip), and the walk-through's setup and teardown.

The tests run against whatever cluster KUBECONFIG names, with canaryml installed by the Helm
chart and the example Prometheus applied (see examples/kind/README.md, or the e2e workflow).
Where no such cluster is reachable they skip, saying why; with CANARYML_E2E=1 (the workflow)
they fail instead, so CI can never pass by skipping them.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from canaryml_cli.demo.traffic import read_rows

from tests.e2e import steps

FAILED_KEY = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    # Remember a failure, so that teardown keeps the namespace for the workflow's dump.
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        item.session.stash[FAILED_KEY] = True


def unavailable(reason: str) -> None:
    if steps.e2e_required():
        pytest.fail(f"{steps.E2E_FLAG}=1 but the e2e tests cannot run: {reason}", pytrace=False)
    pytest.skip(f"e2e: {reason} (set {steps.E2E_FLAG}=1 to fail instead of skipping)")


@pytest.fixture(scope="session")
def cluster() -> None:
    problem = steps.cluster_problem()
    if problem is not None:
        unavailable(problem)


@dataclass
class Walkthrough:
    namespace: str
    url: str  # the ModelDeployment's Service, through kubectl port-forward
    row: dict[str, Any]  # one row of the test set, for spot checks
    traffic: steps.Traffic
    promoted: bool = False  # the good canary's test passed: the stable is 1.1.0


@pytest.fixture(scope="module")
def walkthrough(
    cluster: None, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Walkthrough]:
    """examples/kind/README.md up to "drive traffic": the models in ConfigMaps, the model store,
    the ModelDeployment Ready, and traffic flowing through its router."""
    namespace = os.environ.get(steps.NAMESPACE_ENV) or steps.DEFAULT_NAMESPACE
    image = os.environ.get(steps.IMAGE_ENV) or steps.DEFAULT_IMAGE
    problem = steps.fresh_namespace(namespace)
    if problem is not None:
        unavailable(problem)
    forward: steps.PortForward | None = None
    traffic: steps.Traffic | None = None
    ready = False  # a setup that failed keeps the namespace too (its finally runs first)
    try:
        # Trained only now: a run that skips costs nothing (tests/conftest.py, once a session).
        models: dict[str, Path] = request.getfixturevalue("example_models")
        steps.create_model_configmaps(models["root"], namespace=namespace)
        steps.apply(steps.kind_manifests("model-store.yaml", namespace=namespace, image=image))
        steps.rollout_status("deployment/model-store", namespace=namespace, timeout=180)
        steps.apply(steps.kind_manifests("modeldeployment.yaml", namespace=namespace))
        steps.wait_for(namespace=namespace, condition="Ready", timeout=300)
        steps.rollout_status(steps.ROUTER_DEPLOYMENT, namespace=namespace, timeout=180)
        forward = steps.PortForward(steps.NAME, namespace=namespace).start()
        forward.wait_ready(path="/router/readyz", timeout=60)
        rows = models["root"] / "test.csv"
        row = read_rows(rows)[0]
        traffic = steps.Traffic(
            url=forward.url, rows=rows, folder=tmp_path_factory.mktemp("traffic")
        ).start()
        ready = True
        yield Walkthrough(namespace=namespace, url=forward.url, row=row, traffic=traffic)
    finally:
        if traffic is not None:
            if traffic.running:
                try:
                    print(f"traffic totals: {traffic.stop()}", flush=True)
                except AssertionError as error:  # teardown reports, the tests judge
                    print(error, flush=True)
            print(f"traffic.py output:\n{traffic.output()}", flush=True)
        if forward is not None:
            forward.stop()
            print(f"port-forward restarts: {forward.restarts}", flush=True)
        if not ready or request.session.stash.get(FAILED_KEY, False):
            print(f"kept namespace {namespace} for inspection: something failed", flush=True)
        else:
            steps.delete_namespace(namespace)
