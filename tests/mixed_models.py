"""A scikit-learn pipeline over one numeric and one categorical feature, packaged: the model the
serving tests use wherever the ONNX form must take one input per feature, each of its own type."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd


def package_number_and_colour(
    tmp_path: Path,
    number: str,
    values: np.ndarray,
    *,
    threshold: float,
    name: str,
    rng: np.random.Generator | None = None,
) -> tuple[Any, Path]:
    """The pipeline over `number` (`values`) and a random `colour` drawn from `rng` (seed 1 by
    default), fitted, packaged into tmp_path/a as `name`; the model and its folder."""
    from canaryml_server.artifact import package_model
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import OneHotEncoder

    rng = rng if rng is not None else np.random.default_rng(1)
    frame = pd.DataFrame({number: values, "colour": rng.choice(["red", "blue"], len(values))})
    label = ((frame[number] > threshold) & (frame["colour"] == "red")).astype(int)
    model = make_pipeline(
        ColumnTransformer([("c", OneHotEncoder(handle_unknown="ignore"), ["colour"])],
                          remainder="passthrough"),
        LogisticRegression(),
    ).fit(frame, label)  # fmt: skip
    joblib.dump(model, tmp_path / "m.joblib")
    frame.assign(label=label).to_csv(tmp_path / "train.csv", index=False)
    result = package_model(
        model_path=tmp_path / "m.joblib", reference_path=tmp_path / "train.csv",
        out_dir=tmp_path / "a", name=name, target="label",
    )  # fmt: skip
    return model, result.path
