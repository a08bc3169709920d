"""Packaged model artifacts: `canaryml package` writes them, the server verifies and loads them.

An artifact is a folder: the model (`model.joblib`, and `model.onnx` when the compiled form was
verified), `schema.json`, `profile.json` and `manifest.json`. The manifest lists the sha256 of
every other file, so the sha256 of `manifest.json` alone identifies the whole artifact: that is
the digest a ModelDeployment's `sha256` field names, and anyone can compute it with `sha256sum`.
Nothing is unpickled before that digest and every file's hash have been checked.

Packaging is reproducible: the same inputs, packaged with the same libraries (the manifest lists
their versions), give the same bytes and so the same digest. The manifest therefore holds no
measurement of the packaging run (the single-row timings go to `PackageResult`) and no creation
time unless SOURCE_DATE_EPOCH gives one (the reproducible-builds convention).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import platform
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, ValidationError

from canaryml_server.evaluation import (
    Evaluation,
    Requirement,
    RequirementError,
    RequirementsNotMetError,
    check_requirements,
    classifier_metrics,
    regressor_metrics,
)
from canaryml_server.profile import ReferenceProfile, build_profile
from canaryml_server.runtime import (
    OnnxCheck,
    OnnxPredictor,
    Predictor,
    SklearnPredictor,
    labels_follow_probabilities,
    verify_onnx,
)
from canaryml_server.schema import (
    Batch,
    FeatureKind,
    FeatureSchema,
    InvalidInput,
    ValidationPolicy,
    infer_schema,
    validate_columns,
)

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
MODEL_FILE = "model.joblib"
ONNX_FILE = "model.onnx"
SCHEMA_FILE = "schema.json"
PROFILE_FILE = "profile.json"

RuntimeName = Literal["onnx", "sklearn"]
RuntimeRequest = Literal["auto", "onnx", "sklearn"]


class ArtifactError(Exception):
    """An artifact cannot be written or loaded; the message says why and what to do."""


class RuntimeChoice(BaseModel):
    """Which runtime serves the model and the evidence for it: only what the inputs determine."""

    model_config = ConfigDict(frozen=True)

    runtime: RuntimeName
    requested: RuntimeRequest
    reason: str
    onnx_input_dtype: str | None = None
    rows_compared: int = 0
    labels_identical: bool | None = None
    max_abs_difference: float | None = None


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format_version: int = FORMAT_VERSION
    name: str
    version: str
    created: datetime | None = None
    """Set from SOURCE_DATE_EPOCH only: the clock would change the digest on every run."""
    task: Literal["classification", "regression"]
    classes: list[Any] | None = None
    target: str | None = None
    estimator: str
    runtime: RuntimeChoice
    labels_from_proba: bool = False
    libraries: dict[str, str]
    files: dict[str, str]
    """File name -> sha256 hex digest, for every file of the artifact but the manifest."""
    evaluation: Evaluation | None = None
    """Held-out figures (`canaryml package --evaluate`); absent from artifacts packaged without."""


def sha256_file(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def batch_from_frame(schema: FeatureSchema, frame: pd.DataFrame) -> Batch:
    """The reference rows as a validated batch (missing categories become None, as in JSON)."""
    columns: dict[str, Any] = {}
    for feature in schema.features:
        column = frame[feature.name]
        if feature.kind is FeatureKind.NUMERIC:
            columns[feature.name] = column.to_numpy(dtype=np.float64, na_value=np.nan)
        else:
            values = column.astype(object).where(column.notna(), None).tolist()
            columns[feature.name] = (
                values if feature.dtype == "bool" else [v if v is None else str(v) for v in values]
            )
    policy = ValidationPolicy(allow_unknown_categories=True, max_rows=max(len(frame), 1))
    return validate_columns(schema, columns, rows=len(frame), policy=policy)


def _library_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for dist in (
        "scikit-learn",
        "numpy",
        "pandas",
        "joblib",
        "skl2onnx",
        "onnxruntime",
        "canaryml",
    ):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


@dataclass(frozen=True)
class PackageResult:
    path: Path
    manifest: Manifest
    digest: str
    schema: FeatureSchema
    sklearn_us_per_row: float | None = None
    """Measured while packaging (when the ONNX form was kept); not in the artifact."""
    onnx_us_per_row: float | None = None


def read_reference(path: Path, *, target: str | None) -> pd.DataFrame:
    try:
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read the reference data {path}: {error}") from error
    if target is not None:
        if target not in frame.columns:
            raise ArtifactError(f"--target {target!r} is not a column of {path}")
        frame = frame.drop(columns=[target])
    return frame


def package_model(
    *,
    model_path: Path,
    reference_path: Path,
    out_dir: Path,
    name: str | None = None,
    version: str = "0.1.0",
    target: str | None = None,
    runtime: RuntimeRequest = "auto",
    overwrite: bool = False,
    created: datetime | None = None,
    evaluate_path: Path | None = None,
    requirements: Sequence[Requirement] = (),
) -> PackageResult:
    """Write a verified artifact for a fitted estimator or Pipeline.

    `created` is recorded in the manifest when given (SOURCE_DATE_EPOCH, for the CLI), and as
    the evaluation's time. `evaluate_path` (a CSV with the features and the `target` column)
    adds held-out figures to the manifest; `requirements` gate on them. Everything is computed
    before the first file is written: a failed requirement raises RequirementsNotMetError, an
    unusable one ArtifactError, and `out_dir` is left as it was.
    """
    if out_dir.exists() and any(out_dir.iterdir()) and not overwrite:
        raise ArtifactError(f"{out_dir} exists and is not empty (pass --force to replace it)")
    if requirements and evaluate_path is None:
        raise ArtifactError("--require needs --evaluate: the held-out data to measure")
    if evaluate_path is not None and target is None:
        raise ArtifactError("--evaluate needs --target: the label column of the held-out data")
    reference = read_reference(reference_path, target=target)
    try:
        model = joblib.load(model_path)
    except Exception as error:
        raise ArtifactError(f"cannot load the model {model_path}: {error}") from error
    if not hasattr(model, "predict"):
        raise ArtifactError(f"{model_path} holds a {type(model).__name__}, which has no predict()")
    expected_features = getattr(model, "n_features_in_", None)
    if expected_features is not None and expected_features != reference.shape[1]:
        hint = "" if target else " (is one of them the label? name it with --target)"
        raise ArtifactError(
            f"the model expects {expected_features} features, the reference data has "
            f"{reference.shape[1]} columns{hint}"
        )
    try:
        schema = infer_schema(reference)
        batch = batch_from_frame(schema, reference)
    except (ValueError, InvalidInput) as error:
        raise ArtifactError(f"the reference data cannot be used: {error}") from error

    classification = hasattr(model, "classes_")
    try:
        predictions = SklearnPredictor(model=model, schema=schema, labels_from_proba=False).predict(
            batch, probabilities=False
        )
    except Exception as error:
        raise ArtifactError(
            f"the model failed to predict on the reference rows: {type(error).__name__}: {error}"
        ) from error

    choice, check = _choose_runtime(
        model=model, reference=reference, schema=schema, batch=batch, requested=runtime
    )
    onnx_bytes = check.onnx_bytes if check is not None and check.accepted else None
    categorical = {f.name for f in schema.features if f.kind is FeatureKind.CATEGORICAL}
    profile = build_profile(
        reference, predictions.labels, categorical=categorical, classification=classification
    )
    labels_from_proba = classification and labels_follow_probabilities(
        model=model, batch=batch, schema=schema
    )
    evaluation = None
    if evaluate_path is not None:
        assert target is not None  # checked above
        served = _served_predictor(
            schema=schema,
            onnx_bytes=onnx_bytes,
            model=lambda: model,
            labels_from_proba=labels_from_proba,
        )
        evaluation = evaluate_heldout(
            evaluate_path,
            target=target,
            schema=schema,
            predictor=served,
            classes=np.asarray(model.classes_).tolist() if classification else None,
            evaluated_at=created,
        )
        try:
            results = check_requirements(requirements, evaluation)
        except RequirementError as error:
            raise ArtifactError(str(error)) from error
        if not all(r.passed for r in results):
            raise RequirementsNotMetError(evaluation, results)

    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in (MODEL_FILE, ONNX_FILE, SCHEMA_FILE, PROFILE_FILE, MANIFEST_FILE):
        (out_dir / stale).unlink(missing_ok=True)
    shutil.copyfile(model_path, out_dir / MODEL_FILE)
    if onnx_bytes is not None:
        (out_dir / ONNX_FILE).write_bytes(onnx_bytes)
    (out_dir / SCHEMA_FILE).write_text(schema.model_dump_json(indent=2))
    (out_dir / PROFILE_FILE).write_text(profile.model_dump_json(indent=2))
    files = {
        f: sha256_file(out_dir / f)
        for f in (MODEL_FILE, ONNX_FILE, SCHEMA_FILE, PROFILE_FILE)
        if (out_dir / f).exists()
    }
    classes = np.asarray(model.classes_).tolist() if classification else None
    manifest = Manifest(
        name=name or model_path.stem,
        version=version,
        created=created,
        task="classification" if classification else "regression",
        classes=classes,
        target=target,
        estimator=_describe(model),
        runtime=choice,
        labels_from_proba=labels_from_proba,
        libraries=_library_versions(),
        files=files,
        evaluation=evaluation,
    )
    (out_dir / MANIFEST_FILE).write_text(manifest_json(manifest))
    return PackageResult(
        path=out_dir,
        manifest=manifest,
        digest=sha256_file(out_dir / MANIFEST_FILE),
        schema=schema,
        sklearn_us_per_row=check.sklearn_us_per_row if check is not None else None,
        onnx_us_per_row=check.onnx_us_per_row if check is not None else None,
    )


def manifest_json(manifest: Manifest) -> str:
    """The manifest's bytes: fields that are unset stay out, so that artifacts packaged
    without them keep the digest they had before those fields existed."""
    unset: dict[str, Any] = {}
    if manifest.created is None:
        unset["created"] = True
    if manifest.evaluation is None:
        unset["evaluation"] = True
    elif manifest.evaluation.evaluated_at is None:
        unset["evaluation"] = {"evaluated_at"}
    return manifest.model_dump_json(indent=2, exclude=unset or None)


def evaluate_heldout(
    path: Path,
    *,
    target: str,
    schema: FeatureSchema,
    predictor: Predictor,
    classes: list[Any] | None,
    evaluated_at: datetime | None = None,
) -> Evaluation:
    """Predict the held-out rows through `predictor` and measure against their `target`."""
    try:
        raw = path.read_bytes()
        frame = pd.read_csv(path)
    except (OSError, ValueError) as error:
        raise ArtifactError(f"cannot read the held-out data {path}: {error}") from error
    if target not in frame.columns:
        raise ArtifactError(f"--target {target!r} is not a column of the held-out data {path}")
    missing = [name for name in schema.names if name not in frame.columns]
    if missing:
        raise ArtifactError(
            f"the held-out data {path} lacks {len(missing)} of the model's features: "
            + ", ".join(missing[:10])
            + (" ..." if len(missing) > 10 else "")
        )
    if frame.empty:
        raise ArtifactError(f"the held-out data {path} has no rows")
    if frame[target].isna().any():
        raise ArtifactError(
            f"the held-out target {target!r} is missing in {int(frame[target].isna().sum())} rows"
        )
    try:
        batch = batch_from_frame(schema, frame)
    except (ValueError, InvalidInput) as error:
        raise ArtifactError(f"the held-out data {path} cannot be used: {error}") from error
    try:
        prediction = predictor.predict(batch, probabilities=classes is not None)
    except Exception as error:
        raise ArtifactError(
            f"the model failed to predict on the held-out rows: {type(error).__name__}: {error}"
        ) from error
    positive = None
    if classes is None:
        try:
            y_values = frame[target].to_numpy(dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise ArtifactError(
                f"the held-out target {target!r} is not numeric, but the model is a regressor"
            ) from error
        metrics, skipped = regressor_metrics(y_values, prediction.labels)
    else:
        y_true = _as_classes(frame[target], classes, path=path)
        labels = np.asarray(prediction.labels)
        if labels.dtype.kind != np.asarray(classes).dtype.kind:
            labels = _as_classes(pd.Series(labels), classes, path=path)
        metrics, skipped, positive = classifier_metrics(
            y_true, labels, prediction.probabilities, classes
        )
    return Evaluation(
        rows=len(frame),
        source_sha256=hashlib.sha256(raw).hexdigest(),
        target=target,
        runtime="onnx" if predictor.runtime == "onnx" else "sklearn",
        metrics=metrics,
        skipped=skipped,
        positive_class=positive,
        evaluated_at=evaluated_at,
    )


def _as_classes(column: pd.Series, classes: list[Any], *, path: Path) -> np.ndarray:
    """The target's values as the model's classes: CSV gives 1 or "1" for a class 1."""
    known = set(classes)
    values = column.tolist()
    if all(v in known for v in values):
        return np.asarray(values, dtype=np.asarray(classes).dtype)
    by_text = {str(c): c for c in classes}
    unknown = sorted({str(v) for v in values if str(v) not in by_text})
    if unknown:
        raise ArtifactError(
            f"the held-out target of {path} has values the model does not predict: "
            f"{', '.join(unknown[:10])} (its classes: {classes})"
        )
    return np.asarray([by_text[str(v)] for v in values], dtype=np.asarray(classes).dtype)


def _served_predictor(
    *,
    schema: FeatureSchema,
    onnx_bytes: bytes | None,
    model: Callable[[], Any],
    labels_from_proba: bool,
    onnx_threads: int = 1,
) -> Predictor:
    """The predictor an artifact is served with: its ONNX form when kept, else the model.

    Shared by the loader and the held-out evaluation, so that the figures are those of what
    serves. `model` is called only when needed: the ONNX form needs no unpickling.
    """
    if onnx_bytes is not None:
        return OnnxPredictor(model_bytes=onnx_bytes, schema=schema, threads=onnx_threads)
    return SklearnPredictor(model=model(), schema=schema, labels_from_proba=labels_from_proba)


def _describe(model: Any) -> str:
    steps = getattr(model, "steps", None)
    if steps:
        return "Pipeline(" + ", ".join(type(step).__name__ for _, step in steps) + ")"
    return type(model).__name__


def _choose_runtime(
    *,
    model: Any,
    reference: pd.DataFrame,
    schema: FeatureSchema,
    batch: Batch,
    requested: RuntimeRequest,
) -> tuple[RuntimeChoice, OnnxCheck | None]:
    if requested == "sklearn":
        return RuntimeChoice(runtime="sklearn", requested=requested, reason="requested"), None
    check = verify_onnx(model=model, reference=reference, schema=schema, batch=batch)
    if not check.accepted:
        if requested == "onnx":
            raise ArtifactError(f"--runtime onnx, but the ONNX form was refused: {check.reason}")
        choice = RuntimeChoice(
            runtime="sklearn",
            requested=requested,
            reason=f"ONNX form refused: {check.reason}",
            rows_compared=check.rows,
        )
        return choice, check
    choice = RuntimeChoice(
        runtime="onnx",
        requested=requested,
        reason=check.reason,
        onnx_input_dtype=check.input_dtype,
        rows_compared=check.rows,
        labels_identical=check.labels_identical,
        max_abs_difference=check.max_abs_difference,
    )
    return choice, check


@dataclass(frozen=True)
class LoadedModel:
    path: Path
    digest: str
    manifest: Manifest
    schema: FeatureSchema
    profile: ReferenceProfile
    predictor: Predictor


def load_artifact(
    path: Path,
    *,
    expected_sha256: str | None = None,
    runtime: Literal["auto", "sklearn"] = "auto",
    onnx_threads: int = 1,
    require_sha256: bool = False,
) -> LoadedModel:
    """Verify an artifact folder and load it; raise ArtifactError before touching a bad file.

    `require_sha256` (the server's default) refuses an artifact when no digest is expected.
    """
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise ArtifactError(
            f"{path} is not a canaryml artifact: it has no {MANIFEST_FILE} "
            "(make one with `canaryml package`)"
        )
    if require_sha256 and expected_sha256 is None:
        # Before reading anything: an unpinned artifact is refused whatever its runtime, so a
        # manifest rewritten to match a tampered file cannot get it loaded.
        raise ArtifactError(
            f"refusing to load {path} without a configured sha256: set --sha256 "
            "(CANARYML_MODEL_SHA256, spec.model.sha256) to the digest `canaryml package` "
            "printed, or CANARYML_REQUIRE_SHA256=false to serve it unverified"
        )
    digest = sha256_file(manifest_path)
    if expected_sha256 is not None and digest != expected_sha256.strip().lower():
        raise ArtifactError(
            f"refusing to load {path}: its digest (sha256 of {MANIFEST_FILE}) is {digest}, "
            f"but {expected_sha256} was expected"
        )
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except ValidationError as error:
        raise ArtifactError(f"{manifest_path} is not a valid manifest: {error}") from error
    if manifest.format_version > FORMAT_VERSION:
        raise ArtifactError(
            f"{path} has artifact format {manifest.format_version}; this server reads up to "
            f"{FORMAT_VERSION}: upgrade canaryml"
        )
    for name, recorded in manifest.files.items():
        file_path = path / name
        if Path(name).name != name or not file_path.is_file():
            raise ArtifactError(f"refusing to load {path}: {name} is listed but missing")
        actual = sha256_file(file_path)
        if actual != recorded:
            raise ArtifactError(
                f"refusing to load {path}: {name} has sha256 {actual}, the manifest says {recorded}"
            )
    try:
        schema = FeatureSchema.model_validate_json((path / SCHEMA_FILE).read_bytes())
        profile = ReferenceProfile.model_validate_json((path / PROFILE_FILE).read_bytes())
    except (OSError, ValidationError) as error:
        raise ArtifactError(f"{path} has an unreadable schema or profile: {error}") from error

    def unpickle() -> Any:
        try:
            return joblib.load(path / MODEL_FILE)
        except Exception as error:
            raise ArtifactError(f"cannot load {path / MODEL_FILE}: {error}") from error

    onnx = manifest.runtime.runtime == "onnx" and runtime == "auto" and ONNX_FILE in manifest.files
    # The compiled form needs no unpickling at all.
    predictor = _served_predictor(
        schema=schema,
        onnx_bytes=(path / ONNX_FILE).read_bytes() if onnx else None,
        model=unpickle,
        labels_from_proba=manifest.labels_from_proba,
        onnx_threads=onnx_threads,
    )
    return LoadedModel(
        path=path,
        digest=digest,
        manifest=manifest,
        schema=schema,
        profile=profile,
        predictor=predictor,
    )
