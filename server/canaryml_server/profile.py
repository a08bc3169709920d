"""The reference profile: how the training data (and the model's answers on it) were distributed.

Each feature gets bins that the drift monitor reuses: quantile bins for numbers, one bin per
category for categories, plus a bin for values never seen in training and one for missing
values, so live traffic always lands in some bin.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr

DEFAULT_BINS = 10


class NumericBins(BaseModel):
    """Bins split at `edges` (from reference quantiles); the last bin holds missing values."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["numeric"] = "numeric"
    edges: list[float]
    proportions: list[float]

    @property
    def bin_count(self) -> int:
        return len(self.edges) + 2

    def assign(self, values: np.ndarray) -> np.ndarray:
        numbers = np.asarray(values, dtype=np.float64)
        index = np.searchsorted(np.asarray(self.edges), numbers, side="right")
        return np.where(np.isnan(numbers), len(self.edges) + 1, index)


class _NumericLookup:
    """Numeric categories sorted for searchsorted; derived state, so never part of equality."""

    def __init__(self, categories: list[Any]) -> None:
        numbers = np.asarray(categories, dtype=np.float64)
        self._codes = np.argsort(numbers, kind="stable")
        self._sorted = numbers[self._codes]
        # Classes 0..k-1 in order, the usual case, are their own codes.
        self._identity = bool(np.array_equal(numbers, np.arange(len(numbers))))

    def assign(self, array: np.ndarray, *, unseen: int, missing: int) -> np.ndarray:
        if self._identity and array.dtype.kind in "iu":
            return np.where((array >= 0) & (array < unseen), array, unseen)
        numbers = array.astype(np.float64, copy=False)
        at = np.minimum(np.searchsorted(self._sorted, numbers), len(self._sorted) - 1)
        codes = np.where(self._sorted[at] == numbers, self._codes[at], unseen)
        return np.where(np.isnan(numbers), missing, codes)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _NumericLookup)

    __hash__ = None  # type: ignore[assignment]


class CategoricalBins(BaseModel):
    """One bin per known category, then one for unseen categories, then one for missing."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["categorical"] = "categorical"
    categories: list[Any]
    proportions: list[float]

    @property
    def bin_count(self) -> int:
        return len(self.categories) + 2

    _codes: dict[Any, int] = PrivateAttr(default_factory=dict)
    _numeric: _NumericLookup | None = PrivateAttr(default=None)

    def model_post_init(self, context: Any, /) -> None:
        self._codes.update({category: code for code, category in enumerate(self.categories)})
        if self.categories and all(
            isinstance(c, int | float) and not isinstance(c, bool) for c in self.categories
        ):
            # Numeric categories (a classifier's classes) are looked up with one searchsorted.
            self._numeric = _NumericLookup(self.categories)

    def assign(self, values: np.ndarray) -> np.ndarray:
        unseen, missing = len(self.categories), len(self.categories) + 1
        array = np.asarray(values)
        if self._numeric is not None and array.dtype.kind in "iuf":
            return self._numeric.assign(array, unseen=unseen, missing=missing)
        # A dict look-up per value beats pandas' indexers at the batch sizes a server sees.
        lookup = self._codes
        return np.fromiter(
            (
                missing if v is None or v != v else lookup.get(v, unseen)  # v != v: NaN
                for v in np.asarray(values, dtype=object).tolist()
            ),
            dtype=np.int64,
            count=len(values),
        )


Bins = Annotated[NumericBins | CategoricalBins, Field(discriminator="kind")]


class ReferenceProfile(BaseModel):
    model_config = ConfigDict(frozen=True)

    rows: int
    features: dict[str, Bins]
    prediction: Bins


def _proportions(bins: NumericBins | CategoricalBins, values: np.ndarray) -> list[float]:
    counts = np.bincount(bins.assign(values), minlength=bins.bin_count)
    proportions: list[float] = (counts / counts.sum()).tolist()
    return proportions


def build_numeric_bins(values: np.ndarray, *, bins: int = DEFAULT_BINS) -> NumericBins:
    numbers = np.asarray(values, dtype=np.float64)
    present = numbers[~np.isnan(numbers)]
    edges: list[float] = []
    if present.size:
        quantiles = np.quantile(present, np.linspace(0, 1, bins + 1)[1:-1])
        edges = np.unique(quantiles).tolist()
    empty = NumericBins(edges=edges, proportions=[])
    return NumericBins(edges=edges, proportions=_proportions(empty, numbers))


def build_categorical_bins(values: np.ndarray) -> CategoricalBins:
    array = np.asarray(values, dtype=object)
    categories = sorted({v for v in array.tolist() if not pd.isna(v)}, key=str)
    empty = CategoricalBins(categories=categories, proportions=[])
    return CategoricalBins(categories=categories, proportions=_proportions(empty, array))


def build_profile(
    reference: pd.DataFrame,
    predictions: np.ndarray,
    *,
    categorical: set[str],
    classification: bool,
) -> ReferenceProfile:
    features: dict[str, NumericBins | CategoricalBins] = {}
    for name in reference.columns:
        column = reference[name].to_numpy()
        if name in categorical:
            features[str(name)] = build_categorical_bins(column)
        else:
            features[str(name)] = build_numeric_bins(column)
    prediction: NumericBins | CategoricalBins = (
        build_categorical_bins(np.asarray(predictions))
        if classification
        else build_numeric_bins(np.asarray(predictions))
    )
    return ReferenceProfile(rows=len(reference), features=features, prediction=prediction)
