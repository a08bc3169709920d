"""Fixtures shared by every tier: the example models, trained and packaged once per run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "train_models", ROOT / "examples" / "train_models.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_models"] = module
    spec.loader.exec_module(module)
    return module


TEST_ROWS = 200


@pytest.fixture(scope="session")
def example_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """stable (LogisticRegression pipeline), canary (RandomForest), bad: packaged folders."""
    out = tmp_path_factory.mktemp("models")
    folders: dict[str, Path] = _load_example().train(out)
    return {**folders, "root": out}


@pytest.fixture(scope="session")
def test_rows(example_models: dict[str, Path]) -> pd.DataFrame:
    """The first rows of the example traffic (20,000 in all): a batch any server accepts."""
    rows = pd.read_csv(example_models["root"] / "test.csv", nrows=TEST_ROWS)
    return rows.drop(columns=["target"])
