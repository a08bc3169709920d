"""The offline gate (issue 18): held-out figures in the manifest, `--require` over them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pandas as pd
import pytest
from canaryml_cli.main import app
from canaryml_server.artifact import (
    MANIFEST_FILE,
    ArtifactError,
    batch_from_frame,
    load_artifact,
    package_model,
    sha256_file,
)
from canaryml_server.evaluation import (
    KNOWN_METRICS,
    Evaluation,
    RequirementError,
    RequirementsNotMetError,
    check_requirements,
    parse_requirement,
)
from sklearn import metrics as skm
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _no_source_date(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)


# The requirement expressions -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "metric", "op", "threshold"),
    [
        ("accuracy>=0.95", "accuracy", ">=", 0.95),
        ("  rmse <  3 ", "rmse", "<", 3.0),
        ("f1_macro>0.5", "f1_macro", ">", 0.5),
        ("log_loss<=1e-1", "log_loss", "<=", 0.1),
        ("roc_auc==1", "roc_auc", "==", 1.0),
        ("r2>=-0.5", "r2", ">=", -0.5),
    ],
)
def test_a_requirement_is_a_metric_an_operator_and_a_number(
    text: str, metric: str, op: str, threshold: float
) -> None:
    requirement = parse_requirement(text)
    assert (requirement.metric, requirement.op, requirement.threshold) == (metric, op, threshold)
    assert requirement.text == text.strip()


@pytest.mark.parametrize(
    ("op", "below", "equal", "above"),
    [
        (">=", False, True, True),
        (">", False, False, True),
        ("<=", True, True, False),
        ("<", True, False, False),
        ("==", False, True, False),
    ],
)
def test_each_operator_compares_the_figure_with_the_bound(
    op: str, below: bool, equal: bool, above: bool
) -> None:
    requirement = parse_requirement(f"accuracy{op}0.9")
    assert [requirement.holds(v) for v in (0.89, 0.9, 0.91)] == [below, equal, above]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("accuracy=0.9", "write METRIC OP NUMBER"),
        ("accuracy!=0.9", "write METRIC OP NUMBER"),
        ("accuracy>=", "write METRIC OP NUMBER"),
        (">=0.9", "write METRIC OP NUMBER"),
        ("accuracy>=0.9 and f1>0.8", "write METRIC OP NUMBER"),
        ("accuracy>=high", "'high' is not a number"),
        ("accuracy>=nan", "the bound must be finite"),
        ("rmse<inf", "the bound must be finite"),
        ("__import__('os')>=1", "write METRIC OP NUMBER"),
    ],
)
def test_a_malformed_requirement_is_refused(text: str, says: str) -> None:
    with pytest.raises(RequirementError, match="cannot read the requirement") as caught:
        parse_requirement(text)
    assert says in str(caught.value)


def test_an_unknown_metric_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(RequirementError) as caught:
        parse_requirement("acuracy>=0.9")
    message = str(caught.value)
    assert "'acuracy>=0.9' names no metric canaryml records" in message
    assert all(name in message for name in KNOWN_METRICS)


def _evaluation(**metrics: float) -> Evaluation:
    return Evaluation(
        rows=10,
        source_sha256="0" * 64,
        target="y",
        runtime="sklearn",
        metrics=metrics,
        skipped={"roc_auc": "the held-out rows hold a single class; AUC needs both"},
    )


def test_a_metric_not_recorded_is_an_error_naming_the_recorded_ones() -> None:
    evaluation = _evaluation(accuracy=0.9, f1=0.8)
    with pytest.raises(RequirementError) as rmse:
        check_requirements([parse_requirement("rmse<3")], evaluation)
    assert "did not record; recorded: accuracy, f1" in str(rmse.value)
    with pytest.raises(RequirementError) as auc:
        check_requirements([parse_requirement("roc_auc>0.9")], evaluation)
    assert "roc_auc was skipped: the held-out rows hold a single class" in str(auc.value)


def test_check_requirements_gives_each_figure_and_verdict() -> None:
    evaluation = _evaluation(accuracy=0.9, f1=0.8)
    requirements = [parse_requirement(t) for t in ("accuracy>=0.9", "f1>0.8")]
    results = check_requirements(requirements, evaluation)
    assert [(r.value, r.passed) for r in results] == [(0.9, True), (0.8, False)]
    message = str(RequirementsNotMetError(evaluation, results))
    assert message == "requirements not met: f1=0.8 fails f1>0.8"


# Packaging with --evaluate -------------------------------------------------------------------


def _split(frame: pd.DataFrame, tmp_path: Path, name: str) -> tuple[Path, Path, pd.DataFrame]:
    train, heldout = frame.iloc[::2], frame.iloc[1::2].reset_index(drop=True)
    reference, heldout_path = tmp_path / f"{name}-train.csv", tmp_path / f"{name}-heldout.csv"
    train.to_csv(reference, index=False)
    heldout.to_csv(heldout_path, index=False)
    return reference, heldout_path, train


def _fit(tmp_path: Path, name: str, frame: pd.DataFrame, estimator: Any) -> dict[str, Any]:
    reference, heldout, train = _split(frame, tmp_path, name)
    estimator.fit(train.drop(columns="target"), train["target"])
    model = tmp_path / f"{name}.joblib"
    joblib.dump(estimator, model)
    read_back = pd.read_csv(heldout)  # the rows as the packager reads them
    return {
        "model": model,
        "estimator": estimator,
        "reference": reference,
        "heldout": heldout,
        "X": read_back.drop(columns="target"),
        "y": read_back["target"].to_numpy(),
    }


@pytest.fixture(scope="module")
def binary(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    frame = load_breast_cancer(as_frame=True).frame
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return _fit(tmp_path_factory.mktemp("binary"), "bc", frame, model)


@pytest.fixture(scope="module")
def multiclass(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    frame = load_iris(as_frame=True).frame
    return _fit(tmp_path_factory.mktemp("iris"), "iris", frame, LogisticRegression(max_iter=1000))


@pytest.fixture(scope="module")
def regressor(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    frame = load_diabetes(as_frame=True).frame
    return _fit(tmp_path_factory.mktemp("diabetes"), "diabetes", frame, Ridge())


def _package(case: dict[str, Any], out: Path, **options: Any) -> Any:
    return package_model(
        model_path=case["model"],
        reference_path=case["reference"],
        out_dir=out,
        target="target",
        evaluate_path=case["heldout"],
        **options,
    )


def _served_figures(folder: Path, case: dict[str, Any]) -> tuple[np.ndarray, np.ndarray | None]:
    """What the loaded artifact predicts on the held-out rows: what the server would answer."""
    loaded = load_artifact(folder)
    batch = batch_from_frame(loaded.schema, case["X"])
    prediction = loaded.predictor.predict(batch, probabilities=loaded.manifest.task != "regression")
    return prediction.labels, prediction.probabilities


def test_binary_figures_are_scikit_learns_on_the_same_rows(
    binary: dict[str, Any], tmp_path: Path
) -> None:
    result = _package(binary, tmp_path / "a", runtime="sklearn")
    evaluation = result.manifest.evaluation
    model, rows, y = binary["estimator"], binary["X"], binary["y"]
    labels, proba = model.predict(rows), model.predict_proba(rows)
    assert evaluation.metrics == {
        "accuracy": skm.accuracy_score(y, labels),
        "f1": skm.f1_score(y, labels),
        "roc_auc": skm.roc_auc_score(y, proba[:, 1]),
        "log_loss": skm.log_loss(y, proba),
    }
    assert evaluation.positive_class == 1
    assert evaluation.rows == len(y)
    assert evaluation.runtime == "sklearn"
    assert evaluation.source_sha256 == sha256_file(binary["heldout"])
    assert evaluation.skipped == {}


def test_the_figures_are_those_of_the_onnx_form_when_it_serves(
    binary: dict[str, Any], tmp_path: Path
) -> None:
    result = _package(binary, tmp_path / "a", runtime="auto")
    evaluation = result.manifest.evaluation
    assert result.manifest.runtime.runtime == evaluation.runtime == "onnx"
    labels, proba = _served_figures(result.path, binary)
    assert proba is not None
    y = binary["y"]
    assert evaluation.metrics["accuracy"] == skm.accuracy_score(y, labels)
    assert evaluation.metrics["roc_auc"] == skm.roc_auc_score(y, proba[:, 1])
    direct = binary["estimator"].predict_proba(binary["X"])
    assert evaluation.metrics["log_loss"] == pytest.approx(skm.log_loss(y, direct), rel=1e-5)


@pytest.mark.parametrize("runtime", ["sklearn", "auto"])
def test_multiclass_figures_are_macro_averaged_and_say_so(
    multiclass: dict[str, Any], tmp_path: Path, runtime: str
) -> None:
    result = _package(multiclass, tmp_path / "a", runtime=runtime)
    evaluation = result.manifest.evaluation
    labels, proba = _served_figures(result.path, multiclass)
    y = multiclass["y"]
    assert set(evaluation.metrics) == {"accuracy", "f1_macro", "roc_auc_ovr", "log_loss"}
    assert evaluation.metrics["accuracy"] == skm.accuracy_score(y, labels)
    assert evaluation.metrics["f1_macro"] == skm.f1_score(y, labels, average="macro")
    assert evaluation.metrics["roc_auc_ovr"] == skm.roc_auc_score(
        y, np.asarray(proba, dtype=np.float64), multi_class="ovr", average="macro"
    )
    assert evaluation.positive_class is None
    if runtime == "sklearn":
        assert evaluation.metrics["log_loss"] == skm.log_loss(y, proba)


@pytest.mark.parametrize("runtime", ["sklearn", "auto"])
def test_regressor_figures_are_scikit_learns_on_the_same_rows(
    regressor: dict[str, Any], tmp_path: Path, runtime: str
) -> None:
    result = _package(regressor, tmp_path / "a", runtime=runtime)
    evaluation = result.manifest.evaluation
    predicted, _ = _served_figures(result.path, regressor)
    predicted = np.asarray(predicted, dtype=np.float64)
    y = regressor["y"]
    assert evaluation.metrics == {
        "mae": skm.mean_absolute_error(y, predicted),
        "rmse": skm.root_mean_squared_error(y, predicted),
        "r2": skm.r2_score(y, predicted),
    }
    direct = regressor["estimator"].predict(regressor["X"])
    assert evaluation.metrics["rmse"] == pytest.approx(
        skm.root_mean_squared_error(y, direct), rel=1e-5
    )
    assert evaluation.positive_class is None


def test_auc_is_skipped_with_a_reason_without_probabilities(tmp_path: Path) -> None:
    frame = load_breast_cancer(as_frame=True).frame
    case = _fit(tmp_path, "ridge", frame, make_pipeline(StandardScaler(), RidgeClassifier()))
    result = _package(case, tmp_path / "a", runtime="sklearn")
    evaluation = result.manifest.evaluation
    assert set(evaluation.metrics) == {"accuracy", "f1"}
    assert "no predict_proba" in evaluation.skipped["roc_auc"]
    with pytest.raises(ArtifactError, match=r"roc_auc was skipped: .*recorded: accuracy, f1"):
        _package(case, tmp_path / "b", runtime="sklearn", requirements=_require("roc_auc>0.5"))
    assert not (tmp_path / "b").exists()


def test_auc_is_skipped_when_the_heldout_rows_hold_one_class(
    binary: dict[str, Any], tmp_path: Path
) -> None:
    rows = pd.read_csv(binary["heldout"])
    one_class = tmp_path / "malignant.csv"
    rows[rows["target"] == 0].to_csv(one_class, index=False)
    result = _package({**binary, "heldout": one_class}, tmp_path / "a", runtime="sklearn")
    evaluation = result.manifest.evaluation
    assert "a single class" in evaluation.skipped["roc_auc"]
    assert {"accuracy", "f1", "log_loss"} <= set(evaluation.metrics)


def _require(*texts: str) -> list[Any]:
    return [parse_requirement(t) for t in texts]


def test_a_failed_requirement_writes_nothing(binary: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "a"
    with pytest.raises(RequirementsNotMetError) as caught:
        _package(binary, out, runtime="sklearn", requirements=_require("accuracy>=0.999", "f1>0"))
    assert [r.passed for r in caught.value.results] == [False, True]
    assert "accuracy=" in str(caught.value) and "fails accuracy>=0.999" in str(caught.value)
    assert not out.exists()
    # An artifact already there (--force) is left as it was, not half replaced.
    kept = _package(binary, out, runtime="sklearn")
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    with pytest.raises(RequirementsNotMetError):
        _package(binary, out, runtime="auto", overwrite=True, requirements=_require("f1<0.5"))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert load_artifact(out, expected_sha256=kept.digest).manifest.evaluation is not None


def test_requirements_met_package_as_usual(binary: dict[str, Any], tmp_path: Path) -> None:
    gated = _package(binary, tmp_path / "a", runtime="sklearn", requirements=_require("f1>0.5"))
    plain = _package(binary, tmp_path / "b", runtime="sklearn")
    # The gate is CI policy, not a property of the artifact: it leaves the digest alone.
    assert gated.digest == plain.digest


def test_the_evaluation_round_trips_through_the_manifest(
    binary: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = _package(binary, tmp_path / "a", runtime="sklearn")
    again = _package(binary, tmp_path / "b", runtime="sklearn")
    assert first.digest == again.digest  # still reproducible
    manifest = json.loads((first.path / MANIFEST_FILE).read_text())
    assert "evaluated_at" not in manifest["evaluation"]
    loaded = load_artifact(first.path, expected_sha256=first.digest)
    assert loaded.manifest == first.manifest
    assert loaded.manifest.evaluation == first.manifest.evaluation
    created = pd.Timestamp("2024-05-06T07:08:09Z").to_pydatetime()
    dated = _package(binary, tmp_path / "c", runtime="sklearn", created=created)
    assert load_artifact(dated.path).manifest.evaluation.evaluated_at == created


def test_a_manifest_without_evaluation_still_loads(binary: dict[str, Any], tmp_path: Path) -> None:
    """Artifacts packaged before --evaluate existed: no `evaluation` key, the same digest."""
    result = package_model(
        model_path=binary["model"],
        reference_path=binary["reference"],
        out_dir=tmp_path / "old",
        target="target",
        runtime="sklearn",
    )
    manifest = json.loads((result.path / MANIFEST_FILE).read_text())
    assert "evaluation" not in manifest
    assert load_artifact(result.path, expected_sha256=result.digest).manifest.evaluation is None


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (lambda f: f.drop(columns="target"), "--target 'target' is not a column"),
        (lambda f: f.drop(columns=["mean radius"]), "lacks 1 of the model's features: mean radius"),
        (lambda f: f.assign(target=f["target"] + 5), "values the model does not predict: 5, 6"),
        (lambda f: f.iloc[:0], "has no rows"),
    ],
)
def test_unusable_heldout_data_is_refused(
    binary: dict[str, Any], tmp_path: Path, change: Any, says: str
) -> None:
    bad = tmp_path / "bad.csv"
    change(pd.read_csv(binary["heldout"])).to_csv(bad, index=False)
    with pytest.raises(ArtifactError) as caught:
        _package({**binary, "heldout": bad}, tmp_path / "a", runtime="sklearn")
    assert says in str(caught.value)
    assert not (tmp_path / "a").exists()


# The command -----------------------------------------------------------------------------------


def test_the_package_command_gates_on_heldout_figures(
    example_models: dict[str, Path], tmp_path: Path
) -> None:
    root = example_models["root"]
    heldout = tmp_path / "heldout.csv"
    pd.read_csv(root / "test.csv", nrows=500).to_csv(heldout, index=False)
    base = ["package", str(root / "stable.joblib"), "--reference", str(root / "train.csv")]
    base += ["--target", "target", "--evaluate", str(heldout)]

    passed = CliRunner().invoke(app, [*base, "--out", str(tmp_path / "ok"), "--require", "f1>0.5"])
    assert passed.exit_code == 0, passed.output
    digest = passed.stdout.strip()
    evaluation = load_artifact(tmp_path / "ok", expected_sha256=digest).manifest.evaluation
    assert evaluation is not None and evaluation.rows == 500
    assert "held out" in passed.stderr and "f1>0.5" in passed.stderr and "pass" in passed.stderr

    out = tmp_path / "failed"
    failed = CliRunner().invoke(
        app, [*base, "--out", str(out), "--require", "accuracy>=1.01", "--require", "f1>0.5"]
    )
    assert failed.exit_code == 1, failed.output
    assert failed.stdout == ""
    assert "FAIL" in failed.stderr and "pass" in failed.stderr
    assert f"accuracy={evaluation.metrics['accuracy']:.6g} fails accuracy>=1.01" in failed.stderr
    assert f"nothing was written to {out}" in failed.stderr
    assert not out.exists()

    for argv, says in [
        ([*base, "--require", "acuracy>0.9"], "names no metric canaryml records"),
        ([*base, "--require", "rmse<3"], "did not record; recorded: accuracy, f1, roc_auc"),
        ([*base[:-2], "--require", "f1>0.5"], "--require needs --evaluate"),
    ]:
        refused = CliRunner().invoke(app, [*argv, "--out", str(out)])
        assert refused.exit_code == 2, refused.output
        assert says in refused.stderr
        assert not out.exists()
