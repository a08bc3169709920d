"""The examples pin every model's digest, and the digests are what the example models get.

The operator creates no track for a model without a sha256 (unless the spec sets
allowUnpinnedModels), so an example that drops its digests would not run; a digest that is not
the packaged model's would be refused by the model server.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from canaryml_api import resource as api
from canaryml_operator.children import unpinned_problem
from canaryml_server.artifact import MANIFEST_FILE, sha256_file
from canaryml_server.runtime import difference_bound

from tests.e2e import steps

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((ROOT / "examples").rglob("*.yaml"))


def _model_deployments() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in EXAMPLES:
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if isinstance(doc, dict) and doc.get("kind") == api.KIND:
                found.append((str(path.relative_to(ROOT)), doc))
    return found


def _models(spec: api.ModelDeploymentSpec) -> list[api.ModelRef]:
    models = [spec.model]
    models += [spec.canary.model] if spec.canary else []
    models += [spec.shadow.model] if spec.shadow else []
    return models


def test_the_examples_have_model_deployments() -> None:
    assert {name for name, _ in _model_deployments()} == {
        "examples/modeldeployment.yaml",
        "examples/kind/modeldeployment.yaml",
    }


@pytest.mark.parametrize(("name", "doc"), _model_deployments())
def test_every_example_model_is_pinned(name: str, doc: dict[str, Any]) -> None:
    spec = api.parse_spec(doc["spec"])
    assert not spec.allow_unpinned_models, name
    assert unpinned_problem(spec) is None, name


def test_the_pinned_digests_are_the_example_models(example_models: dict[str, Path]) -> None:
    """Packaging is reproducible: the digests pinned in the examples and in the kind patches
    (README, tests/e2e/steps.py) are the ones examples/train_models.py gives here."""
    digests = {
        role: sha256_file(example_models[role] / MANIFEST_FILE)
        for role in ("stable", "canary", "bad")
    }
    by_uri = {f"http://model-store/{role}": digest for role, digest in digests.items()}
    for name, doc in _model_deployments():
        for model in _models(api.parse_spec(doc["spec"])):
            assert model.sha256 == by_uri[model.uri], (name, model.uri)
    for patched in (steps.STABLE_MODEL, steps.CANARY_MODEL, steps.BAD_MODEL):
        assert patched["sha256"] == by_uri[patched["uri"]], patched["uri"]
    readme = (ROOT / "examples" / "kind" / "README.md").read_text(encoding="utf-8")
    in_readme = re.findall(r'"uri": "http://model-store/(\w+)", "version": "[^"]+"([^}]*)}', readme)
    assert len(in_readme) == 5
    for role, rest in in_readme:
        assert rest == f', "sha256": "{digests[role]}"', role


def test_packaging_gives_the_same_digests_with_other_cpu_kernels(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    """The pinned digests hold on another CPU: here OpenBLAS and numpy are made to pick the
    kernels of an older CPU (no AVX-512), which changed the LogisticRegression's last bits and
    the stable model's digest before the parameters were settled and the ONNX difference
    recorded as a bound."""
    environment = {
        **os.environ,
        "OPENBLAS_CORETYPE": "Sandybridge",
        "NPY_DISABLE_CPU_FEATURES": "AVX512F AVX512CD AVX512_SKX AVX512_CLX AVX512_CNL "
        "AVX512_ICL AVX512_SPR",
    }
    script = (
        "import pathlib, sys; from canaryml_cli.demo.example_models import train; "
        "train(pathlib.Path(sys.argv[1]), echo=False)"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)], env=environment, check=True, timeout=300
    )
    for role in ("stable", "canary", "bad"):
        here = sha256_file(example_models[role] / MANIFEST_FILE)
        assert sha256_file(tmp_path / role / MANIFEST_FILE) == here, role


@pytest.mark.parametrize(
    ("difference", "bound"), [(0.0, 0.0), (2.03e-7, 1e-6), (1e-6, 1e-6), (1.1e-6, 1e-5)]
)
def test_the_manifest_records_the_onnx_difference_as_a_power_of_ten(
    difference: float, bound: float
) -> None:
    assert difference_bound(difference) == pytest.approx(bound, rel=1e-12)
