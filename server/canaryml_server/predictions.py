"""How often the model predicted each bin of its reference profile: the counts behind the
prediction counter (telemetry.PREDICTIONS_TOTAL, docs/metrics.md), which the operator's
`predictionsVsStable` check compares between the canary and the stable track.

Every row predicted counts once (a batch of n rows counts n), in the bin the drift monitor's
prediction bins give it (`profile.ReferenceProfile.prediction`), labelled by
`bin_labels`: a classifier's class as text, a regressor's bin by its upper edge. Rows wait in
groups of FLUSH_ROWS, as the drift monitor's do, so the binning's numpy work is paid once per
group; reading the counts folds them in first.
"""

from __future__ import annotations

import threading
from collections import Counter
from typing import Final

import numpy as np
from canaryml_api.telemetry import MISSING_BIN, bucket_label

from canaryml_server.drift import FLUSH_ROWS
from canaryml_server.profile import CategoricalBins, NumericBins

# A classifier predicts only its classes, but the profile knows only those it predicted on the
# reference: others get their own label, up to this many (then OTHER_BIN), so that no model
# can grow the series without bound.
MAX_UNSEEN_LABELS: Final = 100
OTHER_BIN: Final = "other"


def bin_labels(bins: NumericBins | CategoricalBins) -> list[str]:
    """The label of each bin, in the profile's order: a category's text (then an unseen
    category, labelled by its own text when counted, and the missing bin), or a numeric bin's
    upper edge (values below it and at or above the previous edge; the last "+Inf"), then the
    missing bin."""
    if isinstance(bins, CategoricalBins):
        return [str(category) for category in bins.categories] + [OTHER_BIN, MISSING_BIN]
    return [bucket_label(edge) for edge in bins.edges] + [bucket_label(np.inf), MISSING_BIN]


class PredictionTally:
    """Rows predicted per bin label since the server started (a counter: it never drops)."""

    def __init__(self, bins: NumericBins | CategoricalBins) -> None:
        self._bins = bins
        self._labels = bin_labels(bins)
        self._unseen = len(bins.categories) if isinstance(bins, CategoricalBins) else None
        self._counts: Counter[str] = Counter(
            {label: 0 for label in self._labels if label not in (OTHER_BIN, MISSING_BIN)}
        )
        self._pending: list[np.ndarray] = []
        self._pending_rows = 0
        self._lock = threading.Lock()

    def observe(self, predictions: np.ndarray) -> None:
        """Count a batch's predictions (folded in once FLUSH_ROWS have arrived)."""
        if len(predictions) == 0:
            return
        with self._lock:
            self._pending.append(predictions)
            self._pending_rows += len(predictions)
            if self._pending_rows >= FLUSH_ROWS:
                self._flush()

    def counts(self) -> dict[str, int]:
        """Rows per bin label: every bin of the profile (at 0 until predicted), and the labels
        of unseen classes and missing predictions once counted."""
        with self._lock:
            self._flush()
            return dict(self._counts)

    def _flush(self) -> None:
        if not self._pending:
            return
        predictions = np.concatenate([np.asarray(p) for p in self._pending])
        self._pending, self._pending_rows = [], 0
        index = np.asarray(self._bins.assign(predictions), dtype=np.int64)
        per_bin = np.bincount(index, minlength=len(self._labels))
        for position, count in enumerate(per_bin.tolist()):
            if count and position != self._unseen:
                self._counts[self._labels[position]] += count
        if self._unseen is not None and per_bin[self._unseen]:
            for value in predictions[index == self._unseen].tolist():
                label = str(value)
                if label not in self._counts and self._unseen_labels() >= MAX_UNSEEN_LABELS:
                    label = OTHER_BIN
                self._counts[label] += 1

    def _unseen_labels(self) -> int:
        return len(self._counts) - (len(self._labels) - 2)
