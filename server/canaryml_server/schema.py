"""The feature schema of a packaged model, inferred from reference data, and request validation.

Validation works column by column so that a batch costs a few vectorised numpy calls per
feature rather than Python work per value; every problem names the row and the feature.
Numbers must also lie within what the runtime represents (`largest_magnitude` of its input
type, declared by the runtime), so that no cast on the way to the model overflows.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal, Self

import numpy as np
import numpy.typing as npt
import pandas as pd
from pydantic import BaseModel, ConfigDict

MAX_PROBLEMS = 20


def largest_magnitude(dtype: npt.DTypeLike) -> float:
    """The largest |x| of a float64 that still converts to a number of `dtype`.

    For floats that is anything rounding to a finite value, a little over the exact maximum
    (so float32 takes 3.4028235e38, its maximum as usually printed); for integers, anything
    truncating into range.
    """
    kind = np.dtype(dtype)
    if kind.kind == "f":
        top = np.finfo(kind).max
        # From the maximum plus half a unit in the last place on, the cast rounds to infinity.
        half_ulp = (float(top) - float(np.nextafter(top, kind.type(0)))) / 2
        return float(np.nextafter(float(top) + half_ulp, 0.0))
    if kind.kind == "i":
        return float(np.nextafter(float(np.iinfo(kind).max) + 1.0, 0.0))
    raise ValueError(f"{kind} is not a signed number type")


_FLOAT64_MAX = largest_magnitude(np.float64)


class FeatureKind(StrEnum):
    NUMERIC = "numeric"
    CATEGORICAL = "categorical"


class Feature(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    kind: FeatureKind
    dtype: Literal["float", "int", "bool", "string"]
    nullable: bool = False
    """Missing values occurred in the reference data, so a request may send null."""
    min: float | None = None
    max: float | None = None
    categories: list[str] | list[bool] | None = None


class FeatureSchema(BaseModel):
    model_config = ConfigDict(frozen=True)

    features: list[Feature]

    # Cached: the request path asks for these on every call.
    @cached_property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @cached_property
    def positions(self) -> dict[str, int]:
        return {f.name: j for j, f in enumerate(self.features)}

    @cached_property
    def all_numeric(self) -> bool:
        return all(f.kind is FeatureKind.NUMERIC for f in self.features)

    @cached_property
    def nullable(self) -> np.ndarray:
        """Per feature, in order: may it be missing?"""
        return np.array([f.nullable for f in self.features], dtype=bool)

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        copy = super().model_copy(update=update, deep=deep)
        for cached in ("names", "positions", "all_numeric", "nullable"):
            copy.__dict__.pop(cached, None)  # computed from the old features
        return copy

    def feature(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)


def infer_schema(reference: pd.DataFrame) -> FeatureSchema:
    """Infer names, kinds, ranges, categories and missingness from the reference rows."""
    if reference.empty or reference.shape[1] == 0:
        raise ValueError("the reference data has no rows or no columns")
    features = []
    for name in reference.columns:
        column = reference[name]
        nullable = bool(column.isna().any())
        present = column.dropna()
        # read_csv gives an object column for booleans with gaps: still booleans.
        all_bool = present.size > 0 and all(isinstance(v, bool | np.bool_) for v in present)
        if pd.api.types.is_bool_dtype(column) or all_bool:
            features.append(
                Feature(
                    name=str(name),
                    kind=FeatureKind.CATEGORICAL,
                    dtype="bool",
                    nullable=nullable,
                    categories=sorted({bool(v) for v in present}),
                )
            )
        elif pd.api.types.is_numeric_dtype(column):
            values = present.to_numpy(dtype=np.float64)
            if not np.isfinite(values).all():
                raise ValueError(f"reference column {name!r} holds infinite values")
            is_int = pd.api.types.is_integer_dtype(column)
            features.append(
                Feature(
                    name=str(name),
                    kind=FeatureKind.NUMERIC,
                    dtype="int" if is_int else "float",
                    nullable=nullable,
                    min=float(values.min()) if values.size else None,
                    max=float(values.max()) if values.size else None,
                )
            )
        else:
            features.append(
                Feature(
                    name=str(name),
                    kind=FeatureKind.CATEGORICAL,
                    dtype="string",
                    nullable=nullable,
                    categories=sorted({str(v) for v in present}),
                )
            )
    return FeatureSchema(features=features)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a request: where (a path like FastAPI's `loc`) and what."""

    loc: tuple[str | int, ...]
    msg: str
    type: str = "value_error"

    def as_dict(self) -> dict[str, Any]:
        return {"loc": list(self.loc), "msg": self.msg, "type": self.type}

    def describe(self) -> str:
        where = ".".join(str(p) for p in self.loc)
        return f"{where}: {self.msg}" if where else self.msg


class InvalidInput(Exception):  # noqa: N818 - reads as what it is at the raise site
    """The request does not fit the schema; carries every problem found (up to a limit)."""

    def __init__(self, problems: Sequence[Problem], *, status_code: int = 422) -> None:
        self.problems = list(problems)[:MAX_PROBLEMS]
        self.status_code = status_code
        super().__init__("; ".join(p.describe() for p in self.problems))


@dataclass
class Batch:
    """Validated rows as one array per feature, in schema order.

    All-numeric batches also carry the (rows, features) float64 matrix they were built from,
    so models and the drift monitor take it without copying.
    """

    schema: FeatureSchema
    columns: Mapping[str, np.ndarray]
    rows: int
    _matrix: np.ndarray | None = field(default=None, repr=False)

    @classmethod
    def from_matrix(cls, schema: FeatureSchema, matrix: np.ndarray) -> Batch:
        columns = _MatrixColumns(matrix, schema.positions)
        return cls(schema=schema, columns=columns, rows=matrix.shape[0], _matrix=matrix)

    def matrix(self) -> np.ndarray:
        """All-numeric batches as one float64 (rows, features) array, built once."""
        if self._matrix is None:
            self._matrix = np.column_stack(
                [self.columns[n].astype(np.float64) for n in self.schema.names]
            )
        return self._matrix

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({n: self.columns[n] for n in self.schema.names})


class _MatrixColumns(Mapping[str, np.ndarray]):
    """Columns of a matrix by feature name, as views made only when asked for."""

    def __init__(self, matrix: np.ndarray, positions: dict[str, int]) -> None:
        self._matrix = matrix
        self._positions = positions

    def __getitem__(self, name: str) -> np.ndarray:
        return self._matrix[:, self._positions[name]]

    def __iter__(self) -> Iterator[str]:
        return iter(self._positions)

    def __len__(self) -> int:
        return len(self._positions)


@dataclass(frozen=True)
class ValidationPolicy:
    allow_unknown_categories: bool = False
    max_rows: int = 10_000
    max_magnitude: Mapping[str, float] = field(default_factory=dict)
    """Per numeric feature, the largest |value| the runtime takes (`Predictor.max_magnitude`);
    a feature not named here takes any finite float64."""

    @cached_property
    def smallest_magnitude(self) -> float:
        """One bound for the whole-matrix fast path; features allowed more take the column path."""
        return min(self.max_magnitude.values(), default=_FLOAT64_MAX)

    def magnitude(self, name: str) -> float:
        return self.max_magnitude.get(name, _FLOAT64_MAX)


_NUMBER_TYPES = frozenset({int, float})
_NULLABLE_NUMBER_TYPES = _NUMBER_TYPES | {type(None)}


def _too_large(value: Any) -> bool:
    try:
        float(value)
    except OverflowError:
        return True
    return False


def _out_of_range(row: int, feature: Feature, limit: float) -> Problem:
    msg = f"out of range: this model takes numbers from -{limit!r} to {limit!r}"
    return Problem((row, feature.name), msg, "out_of_range")


def _first_row(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _validate_numeric(
    feature: Feature, values: Sequence[Any] | np.ndarray, limit: float, problems: list[Problem]
) -> np.ndarray | None:
    if isinstance(values, np.ndarray):
        if values.dtype.kind not in "iuf":
            problems.append(
                Problem(("inputs", feature.name), f"expected numbers, got {values.dtype}")
            )
            return None
        array = values.astype(np.float64, copy=False)
    else:
        kinds = set(map(type, values))
        allowed = _NUMBER_TYPES | ({type(None)} if feature.nullable else set())
        if not kinds <= allowed:
            bad = next(i for i, v in enumerate(values) if type(v) not in allowed)
            value = values[bad]
            if value is None:
                msg = "missing value (null), and the reference data had none for this feature"
                problems.append(Problem((bad, feature.name), msg, "missing"))
            else:
                msg = f"expected a number, got {type(value).__name__} {value!r:.40}"
                problems.append(Problem((bad, feature.name), msg, "type_error"))
            return None
        try:
            array = np.array(values, dtype=np.float64)
        except OverflowError:
            big = next(i for i, v in enumerate(values) if _too_large(v))
            problems.append(_out_of_range(big, feature, limit))
            return None
    missing = np.isnan(array)
    if not feature.nullable and missing.any():
        msg = "missing value (NaN), and the reference data had none for this feature"
        problems.append(Problem((_first_row(missing), feature.name), msg, "missing"))
        return None
    infinite = np.isinf(array)
    if infinite.any():
        problems.append(Problem((_first_row(infinite), feature.name), "infinite value"))
        return None
    outside = np.abs(array) > limit  # False for NaN
    if outside.any():
        problems.append(_out_of_range(_first_row(outside), feature, limit))
        return None
    return array


def _validate_categorical(
    feature: Feature,
    values: Sequence[Any] | np.ndarray,
    policy: ValidationPolicy,
    problems: list[Problem],
) -> np.ndarray | None:
    expected: type = bool if feature.dtype == "bool" else str
    allowed: set[type] = {expected} | ({type(None)} if feature.nullable else set())
    if isinstance(values, np.ndarray):
        values = values.tolist()
    kinds = set(map(type, values))
    if not kinds <= allowed:
        bad = next(i for i, v in enumerate(values) if type(v) not in allowed)
        value = values[bad]
        if value is None:
            msg = "missing value (null), and the reference data had none for this feature"
            problems.append(Problem((bad, feature.name), msg, "missing"))
        else:
            msg = f"expected a {expected.__name__}, got {type(value).__name__} {value!r:.40}"
            problems.append(Problem((bad, feature.name), msg, "type_error"))
        return None
    array = np.array(values, dtype=object)
    if not policy.allow_unknown_categories and feature.categories is not None:
        known = pd.Index(feature.categories)
        codes = known.get_indexer(pd.Index(array))
        unknown = (codes < 0) & pd.notna(array)
        if unknown.any():
            row = _first_row(unknown)
            shown = ", ".join(map(repr, feature.categories[:10]))
            more = ", ..." if len(feature.categories) > 10 else ""
            msg = f"unknown category {array[row]!r:.40}; known: {shown}{more}"
            problems.append(Problem((row, feature.name), msg, "unknown_category"))
            return None
    return array


def _accept_matrix(schema: FeatureSchema, matrix: np.ndarray, policy: ValidationPolicy) -> bool:
    """Whether a numeric matrix passes every check; if not, the column path says why."""
    within = np.abs(matrix) <= policy.smallest_magnitude  # False for NaN and infinities
    if within.all():
        return True
    missing_ok = np.isnan(matrix) & schema.nullable
    return bool((within | missing_ok).all())


def validate_matrix(
    schema: FeatureSchema, data: Any, *, rows: int, policy: ValidationPolicy
) -> Batch:
    """Validate a (rows, features) numeric tensor, as the Open Inference Protocol sends it."""
    if not schema.all_numeric:
        categorical = [f.name for f in schema.features if f.kind is FeatureKind.CATEGORICAL]
        msg = (
            "this model has categorical features (" + ", ".join(categorical[:5]) + "): "
            "send one input per feature, named after it"
        )
        raise InvalidInput([Problem(("inputs",), msg, "type_error")])
    width = len(schema.features)
    if isinstance(data, np.ndarray):  # a binary tensor (binary.py): numbers already
        if data.size != rows * width:
            msg = f"holds {data.size} values, but shape [{rows}, {width}] needs {rows * width}"
            raise InvalidInput([Problem(("inputs", 0, "data"), msg, "shape")])
        if data.dtype.kind in "iuf" and 0 < rows <= policy.max_rows:
            numbers = data.astype(np.float64).reshape(rows, width)
            if _accept_matrix(schema, numbers, policy):
                return Batch.from_matrix(schema, numbers)
        data = data.reshape(-1).tolist()  # the list path names what is wrong
    flat, kinds = _flatten_rows(data)
    if len(flat) != rows * width:
        msg = f"holds {len(flat)} values, but shape [{rows}, {width}] needs {rows * width}"
        raise InvalidInput([Problem(("inputs", 0, "data"), msg, "shape")])
    matrix: np.ndarray | None = None
    allowed = _NULLABLE_NUMBER_TYPES if schema.nullable.any() else _NUMBER_TYPES
    if kinds <= allowed:
        try:
            matrix = np.array(flat, dtype=np.float64).reshape(rows, width)
        except OverflowError:
            matrix = None
    if (
        matrix is None
        or rows == 0
        or rows > policy.max_rows
        or not _accept_matrix(schema, matrix, policy)
    ):
        # The column path finds and names the first bad value of each feature.
        columns = {name: flat[j::width] for j, name in enumerate(schema.names)}
        return validate_columns(schema, columns, rows=rows, policy=policy)
    return Batch.from_matrix(schema, matrix)


def _flatten_rows(data: Any) -> tuple[list[Any], set[type]]:
    """Tensor data sent flat (row-major) or as a list of rows: one flat list, its value types."""
    if not isinstance(data, list):
        raise InvalidInput([Problem(("inputs", 0, "data"), "expected a list", "type_error")])
    kinds = set(map(type, data))
    if list not in kinds:
        return data, kinds
    if kinds == {list}:
        flat = list(itertools.chain.from_iterable(data))
        kinds = set(map(type, flat))
        if list not in kinds:
            return flat, kinds
    msg = "not a tensor: send the values flat, or as a list of rows of values"
    raise InvalidInput([Problem(("inputs", 0, "data"), msg, "shape")])


def validate_columns(
    schema: FeatureSchema,
    columns: Mapping[str, Sequence[Any] | np.ndarray],
    *,
    rows: int,
    policy: ValidationPolicy,
) -> Batch:
    """Check a column-shaped batch against the schema; raise InvalidInput naming each problem."""
    problems: list[Problem] = []
    if rows == 0:
        raise InvalidInput([Problem((), "empty batch: send at least one row", "empty")])
    if rows > policy.max_rows:
        msg = f"batch of {rows} rows is over the limit of {policy.max_rows}"
        raise InvalidInput([Problem((), msg, "too_large")], status_code=413)
    names = set(schema.names)
    unknown = [n for n in columns if n not in names]
    missing = [n for n in schema.names if n not in columns]
    for name in unknown:
        problems.append(Problem((name,), "unknown feature", "unknown_feature"))
    for name in missing:
        problems.append(Problem((name,), "missing feature", "missing_feature"))
    if problems:
        raise InvalidInput(problems)
    validated: dict[str, np.ndarray] = {}
    for feature in schema.features:
        values = columns[feature.name]
        if len(values) != rows:
            msg = f"has {len(values)} values for {rows} rows"
            problems.append(Problem((feature.name,), msg, "shape"))
            continue
        if feature.kind is FeatureKind.NUMERIC:
            checked = _validate_numeric(feature, values, policy.magnitude(feature.name), problems)
        else:
            checked = _validate_categorical(feature, values, policy, problems)
        if checked is not None:
            validated[feature.name] = checked
    if problems:
        raise InvalidInput(problems)
    return Batch(schema=schema, columns=validated, rows=rows)


def validate_records(schema: FeatureSchema, payload: Any, *, policy: ValidationPolicy) -> Batch:
    """Validate `POST /predict` input: one JSON object or a list of them."""
    records = [payload] if isinstance(payload, dict) else payload
    if not isinstance(records, list):
        msg = f"expected a JSON object or a list of objects, got {_json_type(payload)}"
        raise InvalidInput([Problem(("body",), msg, "type_error")])
    if not records:
        raise InvalidInput([Problem(("body",), "empty batch: send at least one row", "empty")])
    if len(records) > policy.max_rows:
        msg = f"batch of {len(records)} rows is over the limit of {policy.max_rows}"
        raise InvalidInput([Problem(("body",), msg, "too_large")], status_code=413)
    names = schema.names
    name_set = schema.positions.keys()
    for row, record in enumerate(records):
        if not isinstance(record, dict):
            msg = f"expected an object of features, got {_json_type(record)}"
            raise InvalidInput([Problem((row,), msg, "type_error")])
        if record.keys() != name_set:
            problems = [
                Problem((row, k), "unknown feature", "unknown_feature")
                for k in record
                if k not in name_set
            ]
            problems += [
                Problem((row, n), "missing feature", "missing_feature")
                for n in names
                if n not in record
            ]
            raise InvalidInput(problems)
    if schema.all_numeric:
        # One pass over every value checks the types of the whole batch at C speed.
        flat = [r[n] for r in records for n in names]
        allowed = _NULLABLE_NUMBER_TYPES if schema.nullable.any() else _NUMBER_TYPES
        if set(map(type, flat)) <= allowed:
            try:
                matrix = np.array(flat, dtype=np.float64).reshape(len(records), len(names))
            except OverflowError:
                matrix = None
            if matrix is not None and _accept_matrix(schema, matrix, policy):
                return Batch.from_matrix(schema, matrix)
    columns = {n: [r[n] for r in records] for n in names}
    return validate_columns(schema, columns, rows=len(records), policy=policy)


def _json_type(value: Any) -> str:
    match value:
        case None:
            return "null"
        case bool():
            return "a boolean"
        case int() | float():
            return "a number"
        case str():
            return "a string"
        case list():
            return "a list"
        case dict():
            return "an object"
    return type(value).__name__
