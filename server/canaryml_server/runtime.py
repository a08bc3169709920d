"""Prediction runtimes: scikit-learn itself, or the same model compiled to ONNX.

The ONNX form is only ever used after `verify_onnx` showed, on the reference rows, identical
labels and probabilities within tolerance; the manifest records that evidence.
"""

from __future__ import annotations

import functools
import math
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt
import pandas as pd

from canaryml_server.schema import Batch, FeatureKind, FeatureSchema, largest_magnitude

PROBABILITY_TOLERANCE = 1e-5

# Every runtime takes numbers within float32's range at most: scikit-learn's tree models cast
# their input to float32 (and raise beyond it), ONNX models converted from a float32 sample
# cast to it, and one range keeps an artifact's requests valid whichever runtime serves it.
NUMBER_MAGNITUDE = largest_magnitude(np.float32)


@dataclass(frozen=True)
class Prediction:
    labels: np.ndarray
    """The predicted class (classifiers) or value (regressors) per row."""
    probabilities: np.ndarray | None
    """(rows, classes) class probabilities, when asked for and the model has them."""


class Predictor(Protocol):
    runtime: str

    @property
    def has_probabilities(self) -> bool: ...

    @property
    def max_magnitude(self) -> Mapping[str, float]:
        """Per numeric feature, the largest |value| this runtime takes (validation enforces it)."""
        ...

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction: ...


def _needs_frame(model: Any, schema: FeatureSchema) -> bool:
    return hasattr(model, "feature_names_in_") or not schema.all_numeric


def _magnitudes(
    schema: FeatureSchema, dtype_of: Callable[[str], npt.DTypeLike]
) -> dict[str, float]:
    return {
        f.name: min(NUMBER_MAGNITUDE, largest_magnitude(dtype_of(f.name)))
        for f in schema.features
        if f.kind is FeatureKind.NUMERIC
    }


class SklearnPredictor:
    runtime = "sklearn"

    def __init__(self, *, model: Any, schema: FeatureSchema, labels_from_proba: bool) -> None:
        self._model = model
        self._frame = _needs_frame(model, schema)
        self._proba = hasattr(model, "predict_proba")
        # Verified at packaging time: argmax of predict_proba equals predict on every reference
        # row, so one call gives both (a forest's predict is itself a predict_proba call).
        self._labels_from_proba = labels_from_proba and self._proba
        self._classes = np.asarray(getattr(model, "classes_", []))
        # The model gets float64; NUMBER_MAGNITUDE narrows that to what tree models take.
        self.max_magnitude = _magnitudes(schema, lambda _: np.float64)

    @property
    def has_probabilities(self) -> bool:
        return self._proba

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        features = batch.frame() if self._frame else batch.matrix()
        if self._proba and (probabilities or self._labels_from_proba):
            proba = np.asarray(self._model.predict_proba(features))
            if self._labels_from_proba:
                labels = self._classes[np.argmax(proba, axis=1)]
            else:
                labels = np.asarray(self._model.predict(features))
            return Prediction(labels=labels, probabilities=proba if probabilities else None)
        return Prediction(labels=np.asarray(self._model.predict(features)), probabilities=None)


_ONNX_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(string)": np.str_,
    "tensor(bool)": np.bool_,
}


class OnnxPredictor:
    runtime = "onnx"

    def __init__(self, *, model_bytes: bytes, schema: FeatureSchema, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self._session = ort.InferenceSession(
            model_bytes, options, providers=["CPUExecutionProvider"]
        )
        self._schema = schema
        self._inputs = [(i.name, _ONNX_DTYPES[i.type]) for i in self._session.get_inputs()]
        # A model converted from a numpy sample takes one (rows, features) tensor; one
        # converted from a DataFrame takes a (rows, 1) tensor per feature, named after it.
        self._single_input = not all(name in schema.names for name, _ in self._inputs)
        dtypes = dict(self._inputs)
        self.max_magnitude = _magnitudes(
            schema, lambda name: self._inputs[0][1] if self._single_input else dtypes[name]
        )
        outputs = [o.name for o in self._session.get_outputs()]
        self._label_output = outputs[0]
        self._proba_output = outputs[1] if len(outputs) > 1 else None

    @property
    def has_probabilities(self) -> bool:
        return self._proba_output is not None

    def predict(self, batch: Batch, *, probabilities: bool) -> Prediction:
        # Requests are validated against max_magnitude: these casts do not overflow.
        if self._single_input:
            name, dtype = self._inputs[0]
            feed = {name: batch.matrix().astype(dtype)}
        else:
            feed = {n: batch.columns[n].reshape(-1, 1).astype(dtype) for n, dtype in self._inputs}
        wanted = [self._label_output]
        if probabilities and self._proba_output is not None:
            wanted.append(self._proba_output)
        results = self._session.run(wanted, feed)
        labels = np.asarray(results[0]).ravel()
        # float32 stays float32: orjson then writes 0.99 rather than 0.9900000095367432.
        proba = np.asarray(results[1]) if len(results) > 1 else None
        return Prediction(labels=labels, probabilities=proba)


@dataclass(frozen=True)
class OnnxCheck:
    """The evidence behind choosing (or refusing) the ONNX form of a model."""

    accepted: bool
    reason: str
    onnx_bytes: bytes | None = None
    input_dtype: str | None = None
    rows: int = 0
    labels_identical: bool = False
    max_abs_difference: float | None = None
    sklearn_us_per_row: float | None = None
    onnx_us_per_row: float | None = None


def _time_single_row(predict: Callable[[], object], *, budget_s: float = 0.2) -> float:
    """Microseconds per single-row call, measured for about `budget_s`."""
    predict()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget_s or calls < 3:
        predict()
        calls += 1
    return elapsed / calls * 1e6


def verify_onnx(
    *, model: Any, reference: pd.DataFrame, schema: FeatureSchema, batch: Batch
) -> OnnxCheck:
    """Convert with skl2onnx and keep the result only if it answers like scikit-learn."""
    try:
        from skl2onnx import to_onnx
        from sklearn.base import is_classifier
    except ImportError as error:  # pragma: no cover - both are dependencies
        return OnnxCheck(accepted=False, reason=f"skl2onnx unavailable: {error}")

    classifier = bool(is_classifier(model))
    reference_predictor = SklearnPredictor(model=model, schema=schema, labels_from_proba=False)
    expected = reference_predictor.predict(batch, probabilities=classifier)
    options = {"zipmap": False} if classifier else None
    attempts: list[tuple[str, pd.DataFrame | np.ndarray]]
    if schema.all_numeric:
        matrix = batch.matrix()
        attempts = [("float32", matrix[:1].astype(np.float32)), ("float64", matrix[:1])]
    else:
        attempts = [("columns", reference.iloc[:1])]
    reasons: list[str] = []
    for dtype, sample in attempts:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                onnx_model = to_onnx(model, sample, options=options)
            onnx_bytes = onnx_model.SerializeToString()
            predictor = OnnxPredictor(model_bytes=onnx_bytes, schema=schema)
            got = predictor.predict(batch, probabilities=classifier)
        except Exception as error:  # skl2onnx raises many kinds for unsupported models
            reasons.append(f"{dtype}: conversion failed ({type(error).__name__}: {error})"[:300])
            continue
        identical, difference = _agreement(expected, got, classifier=classifier)
        if identical and difference <= PROBABILITY_TOLERANCE:
            return _accepted(
                onnx_bytes=onnx_bytes, dtype=dtype, difference=difference, batch=batch,
                candidates=(reference_predictor, predictor), probabilities=classifier,
            )  # fmt: skip
        reasons.append(
            f"{dtype}: labels identical={identical}, max difference {difference:.2e} "
            f"(tolerance {PROBABILITY_TOLERANCE:g})"
        )
    return OnnxCheck(accepted=False, reason="; ".join(reasons), rows=batch.rows)


def _accepted(
    *,
    onnx_bytes: bytes,
    dtype: str,
    difference: float,
    batch: Batch,
    candidates: tuple[SklearnPredictor, OnnxPredictor],
    probabilities: bool,
) -> OnnxCheck:
    one_row = _first_row_batch(batch)
    bound = difference_bound(difference)
    sklearn_us, onnx_us = (
        _time_single_row(functools.partial(p.predict, one_row, probabilities=probabilities))
        for p in candidates
    )
    return OnnxCheck(
        accepted=True,
        reason=f"labels identical and outputs within {bound:g} on {batch.rows} rows",
        onnx_bytes=onnx_bytes,
        input_dtype=dtype,
        rows=batch.rows,
        labels_identical=True,
        max_abs_difference=bound,
        sklearn_us_per_row=sklearn_us,
        onnx_us_per_row=onnx_us,
    )


def difference_bound(difference: float) -> float:
    """The measured difference rounded up to a power of ten, as the manifest records it.

    Float kernels differ by CPU (onnxruntime and BLAS pick AVX2 or AVX-512 code at run time),
    so the exact difference differs in its last digits from machine to machine; the bound does
    not, and the manifest, hence the model's sha256, is the same wherever it is packaged.
    """
    if difference <= 0:
        return 0.0
    return float(10.0 ** math.ceil(math.log10(difference)))


def _agreement(expected: Prediction, got: Prediction, *, classifier: bool) -> tuple[bool, float]:
    if classifier:
        identical = bool(np.array_equal(expected.labels.astype(str), got.labels.astype(str)))
        if expected.probabilities is None or got.probabilities is None:
            return identical, 0.0 if expected.probabilities is got.probabilities else np.inf
        if expected.probabilities.shape != got.probabilities.shape:
            return identical, float(np.inf)
        return identical, float(np.max(np.abs(expected.probabilities - got.probabilities)))
    a = np.asarray(expected.labels, dtype=np.float64)
    b = np.asarray(got.labels, dtype=np.float64)
    if a.shape != b.shape:
        return False, float(np.inf)
    # Regressors: compare relative to the scale of the answers.
    difference = float(np.max(np.abs(a - b) / np.maximum(1.0, np.abs(a))))
    return difference <= PROBABILITY_TOLERANCE, difference


def _first_row_batch(batch: Batch) -> Batch:
    return Batch(
        schema=batch.schema,
        columns={n: c[:1] for n, c in batch.columns.items()},
        rows=1,
    )


def labels_follow_probabilities(*, model: Any, batch: Batch, schema: FeatureSchema) -> bool:
    """Whether argmax(predict_proba) reproduces predict on every reference row."""
    if not hasattr(model, "predict_proba") or not hasattr(model, "classes_"):
        return False
    predictor = SklearnPredictor(model=model, schema=schema, labels_from_proba=False)
    direct = predictor.predict(batch, probabilities=True)
    if direct.probabilities is None:
        return False
    derived = np.asarray(model.classes_)[np.argmax(direct.probabilities, axis=1)]
    return bool(np.array_equal(derived, direct.labels))
