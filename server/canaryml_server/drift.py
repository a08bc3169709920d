"""Sliding-window drift of live inputs and predictions against the reference profile.

The window keeps each recent row as its bin indices, and bin counts are updated by adding the
new rows and subtracting the rows they push out, so a request costs O(rows x features)
whatever the window size; PSI is computed from the counts only when someone asks (a scrape).
Rows are binned in groups (see FLUSH_ROWS): reading the window always folds them in first.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass

import numpy as np
from scipy.spatial.distance import jensenshannon

from canaryml_server.drift_test import (
    PSI_EPSILON,
    DriftTest,
    compare_counts,
    ordered_bins,
    reference_counts,
)
from canaryml_server.profile import CategoricalBins, NumericBins, ReferenceProfile
from canaryml_server.schema import Batch

FLUSH_ROWS = 256


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """Population stability index of `actual` proportions against `expected` proportions."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), PSI_EPSILON)
    a = np.maximum(np.asarray(actual, dtype=np.float64), PSI_EPSILON)
    return float(np.sum((a - e) * np.log(a / e)))


def js_distance(expected: np.ndarray, actual: np.ndarray) -> float:
    """Jensen-Shannon distance (base 2, in [0, 1]) between two distributions over the same bins."""
    value = float(jensenshannon(expected, actual, base=2))
    return 0.0 if math.isnan(value) else value


@dataclass(frozen=True)
class DriftReport:
    rows: int
    window: int
    feature_psi: dict[str, float]
    feature_js: dict[str, float]
    prediction_psi: float
    prediction_js: float

    @property
    def worst_feature(self) -> tuple[str, float] | None:
        if not self.feature_psi:
            return None
        return max(self.feature_psi.items(), key=lambda item: item[1])


class DriftMonitor:
    """Bin counts of the last `window` rows of inputs and predictions."""

    def __init__(self, profile: ReferenceProfile, *, feature_names: list[str], window: int) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one row")
        self._names = feature_names
        self._reference_rows = profile.rows
        self._bins: list[NumericBins | CategoricalBins] = [
            profile.features[n] for n in feature_names
        ] + [profile.prediction]
        sizes = [b.bin_count for b in self._bins]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._total_bins = int(sum(sizes))
        self._numeric = [j for j, b in enumerate(self._bins[:-1]) if isinstance(b, NumericBins)]
        self._categorical = [j for j in range(len(feature_names)) if j not in self._numeric]
        # Edges as (edge rank, feature), padded with NaN (no value is >= NaN): a value's bin is
        # the number of its feature's edges at or below it, counted over the whole batch at once.
        edges = [self._bins[j].edges for j in self._numeric]  # type: ignore[union-attr]
        widest = max(map(len, edges), default=0)
        self._edges = np.full((widest, len(self._numeric)), np.nan)
        for column, feature_edges in enumerate(edges):
            self._edges[: len(feature_edges), column] = feature_edges
        self._leading_numeric = self._numeric == list(range(len(self._numeric)))
        self._count_dtype = np.int8 if widest < 127 else np.int32
        self._missing_bins = np.array(
            [self._bins[j].bin_count - 1 for j in self._numeric], dtype=np.int64
        )
        self._window = window
        self._ring = np.zeros((window, len(self._bins)), dtype=np.int64)
        self._counts = np.zeros(self._total_bins, dtype=np.int64)
        self._next = 0
        self._filled = 0
        # Rows wait here until FLUSH_ROWS have arrived (or someone reads the window), so the
        # numpy work of binning is paid once per group of requests, not once per request.
        self._pending: list[tuple[Batch, np.ndarray]] = []
        self._pending_rows = 0
        self._flush_rows = min(FLUSH_ROWS, window)
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        with self._lock:
            self._flush()
            return self._filled

    def observe(self, batch: Batch, predictions: np.ndarray) -> None:
        """Add a batch and its predictions; the oldest rows leave once the window is full."""
        if len(predictions) == 0:
            return
        with self._lock:
            self._pending.append((batch, predictions))
            self._pending_rows += len(predictions)
            if self._pending_rows >= self._flush_rows:
                self._flush()

    def _flush(self) -> None:
        """Fold pending rows into the window (the caller holds the lock)."""
        if not self._pending:
            return
        index = self._bin_indices(self._pending)
        self._pending, self._pending_rows = [], 0
        index += self._offsets
        keep = len(index)
        # The new rows go to slots next, next+1, ... wrapping once at most: two slices.
        first = min(keep, self._window - self._next)
        for slot, start, length in ((self._next, 0, first), (0, first, keep - first)):
            leaving = min(max(self._filled - slot, 0), length)  # slots below filled are in use
            if leaving:
                old = self._ring[slot : slot + leaving].ravel()
                self._counts -= np.bincount(old, minlength=self._total_bins)
            self._ring[slot : slot + length] = index[start : start + length]
        self._counts += np.bincount(index.ravel(), minlength=self._total_bins)
        self._next = (self._next + keep) % self._window
        self._filled = min(self._window, self._filled + keep)

    def _bin_indices(self, pending: list[tuple[Batch, np.ndarray]]) -> np.ndarray:
        """Per row (at most a window's worth, the newest) and column, the bin it falls in."""
        keep = min(sum(len(p) for _, p in pending), self._window)
        index = np.empty((keep, len(self._bins)), dtype=np.int64)
        if self._numeric:
            if len(self._numeric) == len(self._names) and all(
                b.schema.names == self._names for b, _ in pending
            ):
                values = np.concatenate([b.matrix() for b, _ in pending])[-keep:]
            else:
                values = np.concatenate(
                    [
                        np.column_stack([b.columns[self._names[j]] for j in self._numeric])
                        for b, _ in pending
                    ]
                ).astype(np.float64)[-keep:]
            # +inf also passes the +inf padding: cap at the feature's own last bin.
            at_or_below = values[None, :, :] >= self._edges[:, None, :]
            binned = at_or_below.sum(axis=0, dtype=self._count_dtype)
            missing = np.isnan(values)
            if missing.any():
                binned = np.where(missing, self._missing_bins, binned)
            if self._leading_numeric:
                index[:, : len(self._numeric)] = binned
            else:
                index[:, self._numeric] = binned
        for j in self._categorical:
            name = self._names[j]
            column = np.concatenate([np.asarray(b.columns[name], dtype=object) for b, _ in pending])
            index[:, j] = self._bins[j].assign(column[-keep:])
        predictions = np.concatenate([np.asarray(p) for _, p in pending])
        index[:, -1] = self._bins[-1].assign(predictions[-keep:])
        return index

    def counts(self) -> list[np.ndarray]:
        """Per column (features, then predictions) bin counts of the current window."""
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[list[np.ndarray], int]:
        with self._lock:
            self._flush()
            counts, rows = self._counts.copy(), self._filled
        columns = [
            counts[offset : offset + bins.bin_count]
            for offset, bins in zip(self._offsets, self._bins, strict=True)
        ]
        return columns, rows

    def test(self) -> tuple[DriftTest, DriftTest]:
        """The calibrated tests of the current window against the reference (drift_test): the
        features (Holm-corrected across them) and the predictions, from one snapshot."""
        counts, _ = self._snapshot()
        references = [reference_counts(b, self._reference_rows) for b in self._bins]
        ordered = [ordered_bins(b) for b in self._bins]
        features = compare_counts(
            references[:-1], counts[:-1], names=self._names, ordered=ordered[:-1]
        )
        prediction = compare_counts(
            references[-1:], counts[-1:], names=["prediction"], ordered=ordered[-1:]
        )
        return features, prediction

    def report(self) -> DriftReport:
        counts, rows = self._snapshot()
        psis: list[float] = []
        jss: list[float] = []
        for bins, column_counts in zip(self._bins, counts, strict=True):
            expected = np.asarray(bins.proportions)
            actual = column_counts / rows if rows else np.zeros_like(expected)
            psis.append(psi(expected, actual) if rows else 0.0)
            jss.append(js_distance(expected, actual) if rows else 0.0)
        return DriftReport(
            rows=rows,
            window=self._window,
            feature_psi=dict(zip(self._names, psis[:-1], strict=True)),
            feature_js=dict(zip(self._names, jss[:-1], strict=True)),
            prediction_psi=psis[-1],
            prediction_js=jss[-1],
        )
