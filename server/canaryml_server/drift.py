"""Sliding-window drift of live inputs and predictions against the reference profile.

The window keeps each recent row as its bin indices, and bin counts are updated by adding the
new rows and subtracting the rows they push out, so a request costs O(rows binned x features)
whatever the window size; PSI is computed from the counts only when someone asks (a scrape).
Rows are binned in groups (see FLUSH_ROWS): reading the window always folds them in first.

Of a request with more than the monitor's `sample_rows` rows (SAMPLE_ROWS by default), only a
uniform random sample of that many is binned (the function `sample_rows` chooses it): binning is
most of the monitor's cost, and rows chosen by position, never by value, are distributed like
the rows seen. The window then holds rows binned, not rows seen; the counts, PSI and the
calibrated test read only the rows binned, and `sampling()` says how many were seen and binned.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
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
from canaryml_server.settings import DRIFT_SAMPLE_ROWS

FLUSH_ROWS = 256
SAMPLE_ROWS = DRIFT_SAMPLE_ROWS  # rows of one request binned at most, by default (0: all)
FLUSH_SEEN_ROWS = 8192
"""Pending requests are binned once they hold this many rows seen, so sampled requests never
keep much memory waiting."""


def sample_rows(rng: np.random.Generator, rows: int, cap: int) -> slice | np.ndarray:
    """Which of a request's `rows` rows to bin: all of them (a slice) when there are at most
    `cap` (or `cap` is 0), else `cap` row positions in increasing order, chosen uniformly.

    The rows of smallest key among `rows` uniform draws: every set of `cap` rows is equally
    likely (each row is binned with probability cap / rows), whatever the values or the order of
    the rows. A request draws only when it is sampled, so a seeded generator chooses the same
    rows for the same requests however they are grouped.
    """
    if cap <= 0 or rows <= cap:
        return slice(None)
    keys = rng.random(rows)
    return np.sort(np.argpartition(keys, cap - 1)[:cap])


@dataclass(frozen=True)
class Sampling:
    """Rows the monitor has seen and binned since it started, and the cap per request."""

    rows_seen: int
    rows_binned: int
    sample_rows: int  # 0: every row is binned

    @property
    def fraction(self) -> float:
        """The share of rows seen that were binned (1.0 before any row)."""
        return self.rows_binned / self.rows_seen if self.rows_seen else 1.0


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
    sampling: Sampling

    @property
    def worst_feature(self) -> tuple[str, float] | None:
        if not self.feature_psi:
            return None
        return max(self.feature_psi.items(), key=lambda item: item[1])


class DriftMonitor:
    """Bin counts of the last `window` rows binned of inputs and predictions.

    `sample_rows` caps the rows binned of each request (0: all of them), chosen at random from a
    generator seeded with `seed` (None: fresh entropy); a seed gives the same rows binned for
    the same requests however they are grouped or read (see `sample_rows`).
    """

    def __init__(
        self,
        profile: ReferenceProfile,
        *,
        feature_names: list[str],
        window: int,
        sample_rows: int = SAMPLE_ROWS,
        seed: int | None = None,
    ) -> None:
        if window < 1:
            raise ValueError("the drift window must hold at least one row")
        if sample_rows < 0:
            raise ValueError("sample_rows must be 0 (every row) or a positive number of rows")
        self._sample_rows = sample_rows
        self._rng = np.random.default_rng(seed)
        self._seen = 0
        self._binned = 0
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
        # Requests wait here until FLUSH_ROWS rows to bin have arrived (or FLUSH_SEEN_ROWS rows
        # seen, or someone reads the window), so the numpy work of binning is paid once per
        # group of requests, not once per request.
        self._pending: list[tuple[Batch, np.ndarray]] = []
        self._pending_rows = 0  # rows to bin (after sampling)
        self._pending_seen = 0  # rows seen
        self._flush_rows = min(FLUSH_ROWS, window)
        self._lock = threading.Lock()

    @property
    def rows(self) -> int:
        with self._lock:
            self._flush()
            return self._filled

    def sampling(self) -> Sampling:
        """Rows seen and binned so far (pending rows folded in first)."""
        with self._lock:
            self._flush()
            return self._sampling()

    def _sampling(self) -> Sampling:
        return Sampling(self._seen, self._binned, self._sample_rows)

    def observe(self, batch: Batch, predictions: np.ndarray) -> None:
        """Add a batch and its predictions; the oldest rows leave once the window is full."""
        rows = len(predictions)
        if rows == 0:
            return
        cap = self._sample_rows
        with self._lock:
            self._pending.append((batch, predictions))
            self._seen += rows
            self._pending_seen += rows
            self._pending_rows += min(rows, cap) if cap else rows
            if self._pending_rows >= self._flush_rows or self._pending_seen >= FLUSH_SEEN_ROWS:
                self._flush()

    def _flush(self) -> None:
        """Fold pending rows into the window (the caller holds the lock)."""
        if not self._pending:
            return
        index = self._bin_indices(self._pending)
        self._pending, self._pending_rows, self._pending_seen = [], 0, 0
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
        """Per row binned (each request's sample; at most a window's worth, the newest) and
        column, the bin it falls in."""
        cap, rng = self._sample_rows, self._rng
        chosen = [sample_rows(rng, len(p), cap) for _, p in pending]
        sampled = sum(
            len(p) if isinstance(c, slice) else len(c)
            for (_, p), c in zip(pending, chosen, strict=True)
        )
        whole = sampled == sum(len(p) for _, p in pending)  # nothing sampled: no indexing

        def pick(arrays: Iterable[np.ndarray]) -> list[np.ndarray]:
            """Each pending request's array, reduced to its rows binned."""
            if whole:
                return list(arrays)
            return [array[c] for array, c in zip(arrays, chosen, strict=True)]

        self._binned += sampled  # those beyond a window's worth would leave it at once
        keep = min(sampled, self._window)
        index = np.empty((keep, len(self._bins)), dtype=np.int64)
        if self._numeric:
            if len(self._numeric) == len(self._names) and all(
                b.schema.names == self._names for b, _ in pending
            ):
                values = np.concatenate(pick(b.matrix() for b, _ in pending))[-keep:]
            else:
                numeric = [self._names[j] for j in self._numeric]
                values = np.concatenate(
                    pick(np.column_stack([b.columns[n] for n in numeric]) for b, _ in pending)
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
            column = np.concatenate(
                pick(np.asarray(b.columns[name], dtype=object) for b, _ in pending)
            )
            index[:, j] = self._bins[j].assign(column[-keep:])
        predictions = np.concatenate(pick(np.asarray(p) for _, p in pending))
        index[:, -1] = self._bins[-1].assign(predictions[-keep:])
        return index

    def counts(self) -> list[np.ndarray]:
        """Per column (features, then predictions) bin counts of the current window."""
        return self._snapshot()[0]

    def _snapshot(self) -> tuple[list[np.ndarray], int, Sampling]:
        with self._lock:
            self._flush()
            counts, rows, sampling = self._counts.copy(), self._filled, self._sampling()
        columns = [
            counts[offset : offset + bins.bin_count]
            for offset, bins in zip(self._offsets, self._bins, strict=True)
        ]
        return columns, rows, sampling

    def test(self) -> tuple[DriftTest, DriftTest]:
        """The calibrated tests of the current window against the reference (drift_test): the
        features (Holm-corrected across them) and the predictions, from one snapshot."""
        counts, _, _ = self._snapshot()
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
        counts, rows, sampling = self._snapshot()
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
            sampling=sampling,
        )
