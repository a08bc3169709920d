"""Run a peer drift detector over windows saved by benchmarks/drift.py, in the peer's own venv.

    python drift_worker.py alibi-detect|evidently FOLDER

FOLDER/index.json lists cases: {"key", "reference", "windows", "categorical"} with .npy paths
(reference: rows x features; windows: trials x rows x features; categorical columns hold
integer codes). Writes FOLDER/<peer>.json: per case key, one flag per window (drift or not).

- alibi-detect: KSDrift(reference, p_val=0.05), its defaults (Bonferroni over features);
  categorical codes are tested as numbers, as KSDrift does with whatever it is given.
- evidently: the DataDriftPreset rule: each column with Evidently's default test for its type
  and size (get_stattest with no choice), dataset drift when at least half the columns drifted
  (drift_share 0.5). The full Report costs about 3 s a window, so the column tests are called
  directly; `--check N` runs the full Report on the first N windows of the first 3 cases and
  fails if the two disagree.
"""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

warnings.filterwarnings("ignore")


def alibi(reference: np.ndarray, windows: np.ndarray, categorical: list[int]) -> list[bool]:
    from alibi_detect.cd import KSDrift

    detector = KSDrift(reference.astype(np.float32), p_val=0.05)
    return [bool(detector.predict(w.astype(np.float32))["data"]["is_drift"]) for w in windows]


def _frame(values: np.ndarray, categorical: list[int]) -> pd.DataFrame:
    frame = pd.DataFrame(values, columns=[f"f{j}" for j in range(values.shape[1])])
    for j in categorical:
        frame[f"f{j}"] = frame[f"f{j}"].astype(int).map(lambda code: f"c{code}")
    return frame


def evidently(
    reference: np.ndarray, windows: np.ndarray, categorical: list[int], check: int
) -> list[bool]:
    from evidently.legacy.calculations.stattests.registry import get_stattest
    from evidently.legacy.core import ColumnType

    ref = _frame(reference, categorical)
    kinds = {
        c: ColumnType.Categorical if j in categorical else ColumnType.Numerical
        for j, c in enumerate(ref.columns)
    }
    flags = []
    for number, window in enumerate(windows):
        cur = _frame(window, categorical)
        drifted = 0
        for column, kind in kinds.items():
            test = get_stattest(ref[column], cur[column], kind, None)
            drifted += bool(test(ref[column], cur[column], kind, None).drifted)
        flag = drifted >= 0.5 * len(kinds)
        if number < check:
            assert flag == _evidently_report(ref, cur, categorical), "fast path != Report"
        flags.append(flag)
    return flags


def _evidently_report(ref: pd.DataFrame, cur: pd.DataFrame, categorical: list[int]) -> bool:
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    names = list(ref.columns)
    definition = DataDefinition(
        numerical_columns=[c for j, c in enumerate(names) if j not in categorical],
        categorical_columns=[c for j, c in enumerate(names) if j in categorical],
    )
    snapshot = Report([DataDriftPreset()]).run(
        Dataset.from_pandas(cur, data_definition=definition),
        Dataset.from_pandas(ref, data_definition=definition),
    )
    metric: dict[str, Any] = next(
        m for m in snapshot.dict()["metrics"] if m["metric_name"].startswith("DriftedColumnsCount")
    )
    return bool(metric["value"]["share"] >= metric["config"]["drift_share"])


def main() -> None:
    peer, folder = sys.argv[1], Path(sys.argv[2])
    check = int(sys.argv[sys.argv.index("--check") + 1]) if "--check" in sys.argv else 0
    cases = json.loads((folder / "index.json").read_text())
    results: dict[str, list[bool]] = {}
    for number, case in enumerate(cases):
        reference = np.load(case["reference"])
        windows = np.load(case["windows"])
        if peer == "alibi-detect":
            results[case["key"]] = alibi(reference, windows, case["categorical"])
        else:
            # The full Report on the first windows of the first cases only: 3 s each.
            results[case["key"]] = evidently(
                reference, windows, case["categorical"], check if number < 3 else 0
            )
    (folder / f"{peer}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main()
