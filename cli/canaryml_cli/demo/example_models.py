"""The example models: trained on scikit-learn's bundled breast-cancer data and packaged.

`train(out)` writes, under `out`: train.csv (the reference, with its `target` column), test.csv
(rows to send as traffic), stable.joblib / canary.joblib / bad.joblib, and a packaged artifact
folder for each (stable/, canary/, bad/). Nothing is downloaded: the data ships with
scikit-learn. `examples/train_models.py` runs it from the command line; `canaryml demo` trains
once into its work folder and reuses the result (`ensure_trained`).

- stable: StandardScaler + LogisticRegression, version 1.0.0
- canary: a 100-tree RandomForest, version 1.1.0 (a different, equally good model)
- bad:    a depth-2 tree fitted on shuffled labels, version 1.2.0 (deliberately wrong)
"""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import sklearn
from canaryml_server.artifact import package_model
from sklearn.datasets import load_breast_cancer
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

NAME = "breast-cancer"
TARGET = "target"


ROLES = ("stable", "canary", "bad")
_STAMP = "trained.json"


def train(out: Path, *, echo: bool = True) -> dict[str, Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = load_breast_cancer(as_frame=True)
    frame = data.frame
    train_rows, test_rows = train_test_split(
        frame, test_size=0.3, random_state=0, stratify=frame[TARGET]
    )
    train_rows.to_csv(out / "train.csv", index=False)
    test_rows.to_csv(out / "test.csv", index=False)
    # Fitted on plain arrays: the server passes features in schema order either way.
    x_train = train_rows.drop(columns=[TARGET]).to_numpy()
    y_train = train_rows[TARGET].to_numpy()
    x_test = test_rows.drop(columns=[TARGET]).to_numpy()
    y_test = test_rows[TARGET].to_numpy()
    shuffled = np.random.default_rng(0).permutation(y_train)
    models = {
        "stable": ("1.0.0", make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))),
        "canary": ("1.1.0", RandomForestClassifier(n_estimators=100, random_state=0)),
        "bad": ("1.2.0", DecisionTreeClassifier(max_depth=2, random_state=0)),
    }
    folders = {}
    for role, (version, model) in models.items():
        model.fit(x_train, shuffled if role == "bad" else y_train)
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


def _settle(model: object) -> None:
    """Round the fitted float parameters to 9 significant digits, so that the packaged model
    (and the sha256 the examples pin) is the same on every machine: BLAS and numpy pick
    CPU-specific kernels, and a LogisticRegression fitted on an AVX-512 machine differs from
    one fitted on an AVX2 machine in the last bits. Trees split at data midpoints: unchanged."""
    steps = [step for _, step in getattr(model, "steps", [])] or [model]
    for step in steps:
        for name, value in vars(step).items():
            if name.endswith("_") and isinstance(value, np.ndarray) and value.dtype.kind == "f":
                setattr(
                    step,
                    name,
                    np.array([float(f"{v:.9g}") for v in value.flat]).reshape(value.shape),
                )


def _stamp() -> dict[str, str]:
    # A model pickled by another scikit-learn may not load, or may answer differently.
    return {"sklearn": sklearn.__version__, "canaryml": _canaryml_version()}


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
