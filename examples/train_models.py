"""Train the example models on scikit-learn's bundled breast-cancer data and package them.

    python examples/train_models.py --out build/models

writes, under --out: train.csv (the reference, with its `target` column), test.csv (rows to
send as traffic), stable.joblib / canary.joblib / bad.joblib, and a packaged artifact folder
for each (stable/, canary/, bad/). Nothing is downloaded: the data ships with scikit-learn.

- stable: StandardScaler + LogisticRegression, version 1.0.0
- canary: a 100-tree RandomForest, version 1.1.0 (a different, equally good model)
- bad:    a depth-2 tree fitted on shuffled labels, version 1.2.0 (deliberately wrong)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import joblib
import numpy as np
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


def train(out: Path) -> dict[str, Path]:
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
        print(
            f"{role:7} {version}  {result.manifest.estimator:45} accuracy {accuracy:.3f}  "
            f"runtime {result.manifest.runtime.runtime:8} sha256 {result.digest}"
        )
        folders[role] = result.path
    return folders


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("build/models"))
    train(parser.parse_args().out)


if __name__ == "__main__":
    main()
