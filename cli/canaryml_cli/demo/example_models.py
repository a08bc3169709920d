"""The example models: trained on rows drawn like scikit-learn's bundled breast-cancer data.

`train(out)` writes, under `out`: train.csv (the reference, with its `target` column), test.csv
(rows to send as traffic, with the target too), a joblib file and a packaged artifact folder for
each model (stable/, canary/, bad/, worse/). Nothing is downloaded: the data
ships with scikit-learn. `examples/train_models.py` runs it from the command line; `canaryml
demo` trains once into its work folder and reuses the result (`ensure_trained`).

The rows are drawn, not the dataset's own 569: a calibrated drift test rightly tells a few
hundred held-out rows replayed over and over from the reference (each window then repeats the
pool's own fixed difference from the reference: 77 % of 300-row windows flagged at 0.01), so the
traffic must be fresh draws from the reference's distribution. `draw_rows` fits one
multivariate normal per class to the log of the dataset's features (all are >= 0; log1p, so
that zeros stay zeros after clipping) and draws the reference and the traffic from it
independently: the demo's traffic is then an honest sample, and its drift scenario is the only
drift. Values are rounded to 5 significant digits (the dataset's own precision), which also
makes the files, and so the models' digests, the same on every machine.

- stable: StandardScaler + LogisticRegression fitted on the first STABLE_ROWS (100) rows, the
  labelled data a team has when it ships a first model, version 1.0.0
- canary: a 100-tree RandomForest fitted on all 1,000, version 1.1.0: truly better on the
  20,000 held-out rows (accuracy 0.960 against the stable's 0.955 when measured; `train` prints
  both), so a promotion of it is deserved
- bad:    a depth-2 tree fitted on shuffled labels, version 1.2.0 (deliberately wrong)
- worse:  the canary's forest, version 1.3.0, fitted on labels flipped in one slice of the data
          (a quarter of the rows, by `mean texture`, where both classes are about as common):
          no errors, no slower, inputs as ever and its predicted classes in the same shares as
          the others', yet wrong on most of that slice (held-out accuracy about 0.74). Only
          labels tell it from the canary: the demo's `accuracy` scenario.
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import sklearn
from canaryml_server.artifact import package_model
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from canaryml_cli.demo import scenarios

NAME = "breast-cancer"
TARGET = "target"


ROLES = scenarios.ROLES
TRAIN_ROWS = 1000  # the reference the servers' drift tests compare with
STABLE_ROWS = 100  # what the first (stable) model was fitted on: it is the weaker one
TRAFFIC_ROWS = 20000  # more than a 5-minute demo sends: no row is sent twice
_STAMP = "trained.json"
_DIGITS = 5  # significant digits of the drawn values
# The worse model's slice: rows whose `mean texture` lies between these quantiles of the
# training rows, where the two classes are about as common (so flipping their labels leaves the
# share of each predicted class, and so the prediction drift tests, where they were).
WORSE_FEATURE = "mean texture"
WORSE_SLICE = (0.45, 0.70)


def draw_rows(rows: int, *, seed: int) -> pd.DataFrame:
    """`rows` rows like the breast-cancer dataset's (features and `target`), drawn anew."""
    data = load_breast_cancer(as_frame=True).frame
    features = [column for column in data.columns if column != TARGET]
    rng = np.random.default_rng(seed)
    labels = (rng.random(rows) < float(data[TARGET].mean())).astype(np.int64)
    drawn = np.empty((rows, len(features)))
    for label in (0, 1):
        logs = np.log1p(data.loc[data[TARGET] == label, features].to_numpy(dtype=float))
        mean = _rounded(logs.mean(axis=0))
        factor = np.linalg.cholesky(_rounded(np.cov(logs, rowvar=False)))
        chosen = labels == label
        normal = rng.standard_normal((int(chosen.sum()), len(features)))
        drawn[chosen] = np.expm1(mean + normal @ factor.T)
    frame = pd.DataFrame(_rounded(np.clip(drawn, 0.0, None), _DIGITS), columns=features)
    frame[TARGET] = labels
    return frame


def _rounded(values: np.ndarray, digits: int = 9) -> np.ndarray:
    """`values` to `digits` significant digits: last-bit differences between machines' BLAS
    kernels do not survive it."""
    return np.array([float(f"{v:.{digits}g}") for v in values.flat]).reshape(values.shape)


def train(out: Path, *, echo: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    train_rows = draw_rows(TRAIN_ROWS, seed=0)
    test_rows = draw_rows(TRAFFIC_ROWS, seed=1)
    train_rows.to_csv(out / "train.csv", index=False)
    test_rows.to_csv(out / "test.csv", index=False)
    # Fitted on plain arrays: the server passes features in schema order either way.
    x_train = train_rows.drop(columns=[TARGET]).to_numpy()
    y_train = train_rows[TARGET].to_numpy()
    x_test = test_rows.drop(columns=[TARGET]).to_numpy()
    y_test = test_rows[TARGET].to_numpy()
    shuffled = np.random.default_rng(0).permutation(y_train)
    models = {
        "stable": make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)),
        "canary": RandomForestClassifier(n_estimators=100, random_state=0),
        "bad": DecisionTreeClassifier(max_depth=2, random_state=0),
        "worse": RandomForestClassifier(n_estimators=100, random_state=0),
    }
    labels = {"canary": y_train, "bad": shuffled, "worse": flipped_in_slice(train_rows)}
    folders = {}
    for role, model in models.items():
        version = scenarios.VERSIONS[role]
        if role == "stable":
            model.fit(x_train[:STABLE_ROWS], y_train[:STABLE_ROWS])
        else:
            model.fit(x_train, labels[role])
        _settle(model)
        accuracy = float((model.predict(x_test) == y_test).mean())
        joblib.dump(model, out / f"{role}.joblib")
        result = package_model(
            model_path=out / f"{role}.joblib",
            reference_path=out / "train.csv",
            out_dir=out / role,
            name=NAME,
            version=version,
            target=TARGET,
            overwrite=True,
        )
        if echo:
            print(
                f"{role:7} {version}  {result.manifest.estimator:45} accuracy {accuracy:.3f}  "
                f"runtime {result.manifest.runtime.runtime:8} sha256 {result.digest}"
            )
        folders[role] = result.path
    return folders


def flipped_in_slice(rows: pd.DataFrame) -> np.ndarray:
    """The rows' labels, flipped (0 <-> 1) in the worse model's slice of WORSE_FEATURE."""
    values = rows[WORSE_FEATURE].to_numpy()
    low, high = np.quantile(values, WORSE_SLICE)
    labels = rows[TARGET].to_numpy().copy()
    inside = (values > low) & (values <= high)
    labels[inside] = 1 - labels[inside]
    return labels


def _settle(model: object) -> None:
    """Round the fitted float parameters to 9 significant digits, so that the packaged model
    (and the sha256 the examples pin) is the same on every machine: BLAS and numpy pick
    CPU-specific kernels, and a LogisticRegression fitted on an AVX-512 machine differs from
    one fitted on an AVX2 machine in the last bits. Trees split at data midpoints: unchanged."""
    steps = [step for _, step in getattr(model, "steps", [])] or [model]
    for step in steps:
        for name, value in vars(step).items():
            if name.endswith("_") and isinstance(value, np.ndarray) and value.dtype.kind == "f":
                setattr(step, name, _rounded(value))


# Bumped whenever `train` makes other rows or models: a cache of the old ones is trained anew.
_EXAMPLES_VERSION = "4"


def _stamp() -> dict[str, str]:
    # A model pickled by another scikit-learn may not load, or may answer differently.
    return {
        "sklearn": sklearn.__version__,
        "canaryml": _canaryml_version(),
        "examples": _EXAMPLES_VERSION,
    }


def _canaryml_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("canaryml")
    except PackageNotFoundError:
        return "unknown"


def ensure_trained(out: Path, *, echo: bool = False) -> dict[str, Path]:
    """The packaged example models under `out`: trained once (about 5 s), then reused while
    the libraries that made them are the same."""
    stamp = out / _STAMP
    folders = {role: out / role for role in ROLES}
    complete = all((folder / "manifest.json").is_file() for folder in folders.values())
    if complete and (out / "test.csv").is_file() and stamp.is_file():
        try:
            if json.loads(stamp.read_text()) == _stamp():
                return folders
        except ValueError:
            pass  # a half-written stamp: train again
    if echo:
        print(f"training the example models into {out} (once, about 5 s) ...", flush=True)
    folders = train(out, echo=echo)
    stamp.write_text(json.dumps(_stamp()) + "\n")
    return folders
