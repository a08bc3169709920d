"""Calibrated drift tests on the bin counts the drift monitor already keeps.

A window of live rows is a sample, and so is the reference it is compared with (often small:
89 to 300 rows). So each feature is tested for homogeneity of the 2 x B table of counts
(reference row, window row; one column per bin), not for goodness of fit to the reference's
proportions as if they were exact. That is what keeps the false-alarm rate at `alpha` whatever
the window size; PSI, which treats the reference as exact, grows with noise as windows shrink.

Per feature:

- **G-test** (likelihood ratio) on the merged table, with Williams' correction, against the chi2
  distribution with (bins - 1) degrees of freedom. It sees any change of shape. Williams'
  correction keeps the small-sample tail at its nominal rate; the plain G-test over-rejects
  with small windows and Pearson's X2 badly over-rejects when the reference is much smaller than
  the window (X2's tail at 3e-4 was about 7x nominal at 90 reference / 1000 window rows in
  benchmarks/drift.py's check; corrected G stayed near or below nominal, see docs/judgment.md).
- **Sparse bins are merged** before the G-test until every cell's expected count is at least
  MIN_EXPECTED (10; Cochran's usual 5 is not enough this far into the tail): adjacent bins for
  numbers (bins are ordered; the missing-value bin last), rare categories pooled into one bin
  for categories (the unseen-category bin among them). Bins empty in both rows are dropped.
  The merging reads only the pooled bin totals, which are the sufficient statistic under "no
  drift", so the test stays valid conditionally on them. (An exact or simulated test was the
  alternative; it costs thousands of tables per feature per scrape to resolve a 3e-4 tail.)
- **Rank test** for numeric features: the Wilcoxon-Mann-Whitney statistic on the ordered value
  bins (midranks, tie-corrected normal approximation; missing values left out). A shift of the
  bulk of a distribution is what drift usually is, and this 1-degree-of-freedom test sees it with
  far more power than a test spread over 9 degrees of freedom. The feature's p-value is then
  2 x min(G, rank) (Bonferroni over the two tests).

Across features, Holm's step-down correction says which features are significant; the overall
p-value of the analysis is the smallest Holm-adjusted one (Bonferroni's), and the analysis flags
drift when it is at most `alpha`. PSI of the window against the reference stays next to each
feature as the effect size people read: the p-value says whether, PSI how much.

Written by hand (vectorised over features so that a scrape costs one pass over the counts, no
scipy routine does these on padded tables): the bin merging, the G statistic from table totals
and Williams' correction (the G statistic equals scipy.stats.chi2_contingency's with
lambda_="log-likelihood"), the Mann-Whitney statistic from bin counts (equal to
scipy.stats.mannwhitneyu's asymptotic one without continuity correction), Holm's adjustment, and
PSI. The tail probabilities come from scipy.special (chdtrc, ndtr: what scipy.stats.chi2.sf and
norm.sf compute, without their per-call overhead). Pure: no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special
from scipy.special import xlogy

from canaryml_server.profile import CategoricalBins, NumericBins, ReferenceProfile

DEFAULT_ALPHA = 0.01
# Cochran's rule asks for 5 expected per cell; the far tail that a Bonferroni share of alpha
# reads (0.01 / 30 features: 3e-4) needs more: with 5, categories with rare levels flagged
# above nominal in simulation, with 10 they sit at it (docs/judgment.md).
MIN_EXPECTED = 10.0
# Proportions are floored before the logarithm so that an empty bin gives a large, finite PSI
# (here and in canaryml_server.drift.psi).
PSI_EPSILON = 1e-4


@dataclass(frozen=True)
class ColumnTest:
    """One feature's test (or the predictions'): evidence, its correction, and the effect size."""

    name: str
    p_value: float
    """This feature's own p-value (for numbers: 2 x min of the G and rank tests), uncorrected."""
    adjusted_p: float
    """Holm-adjusted over the features tested in the same analysis."""
    g_statistic: float
    """G with Williams' correction on `bins` merged bins (chi2, bins - 1 degrees of freedom)."""
    bins: int
    """Bins after merging sparse ones; fewer than 2 means the feature could not be tested."""
    rank_z: float | None
    """Mann-Whitney z: positive when the window's values sit higher. None for categories."""
    psi: float
    significant: bool

    @property
    def tested(self) -> bool:
        return self.bins >= 2 or self.rank_z is not None


@dataclass(frozen=True)
class DriftTest:
    """One analysis: the window's counts against the reference's, every feature at once."""

    alpha: float
    p_value: float
    """Overall: the smallest Holm-adjusted p-value (1.0 when nothing could be tested)."""
    reference_rows: int
    window_rows: int
    columns: tuple[ColumnTest, ...]

    @property
    def drifted(self) -> bool:
        return self.p_value <= self.alpha

    @property
    def significant(self) -> tuple[str, ...]:
        """The features that drifted, strongest evidence first."""
        hits = [c for c in self.columns if c.significant]
        return tuple(c.name for c in sorted(hits, key=lambda c: (c.adjusted_p, -c.psi)))

    @property
    def worst_psi(self) -> tuple[str, float] | None:
        if not self.columns:
            return None
        worst = max(self.columns, key=lambda c: c.psi)
        return worst.name, worst.psi


def reference_counts(bins: NumericBins | CategoricalBins, rows: int) -> np.ndarray:
    """The reference's count per bin: its proportions were counts / rows, so this is exact."""
    return np.rint(np.asarray(bins.proportions, dtype=np.float64) * rows).astype(np.int64)


def ordered_bins(bins: NumericBins | CategoricalBins) -> int:
    """How many leading bins hold ordered values (numbers: all but the missing-value bin)."""
    return len(bins.edges) + 1 if isinstance(bins, NumericBins) else 0


def drift_test(
    profile: ReferenceProfile,
    window_counts: Mapping[str, np.ndarray],
    *,
    alpha: float = DEFAULT_ALPHA,
) -> DriftTest:
    """Test each feature's window counts (DriftMonitor.counts, by feature name) against the
    reference profile, with Holm's correction across the features."""
    names = list(window_counts)
    bins = [profile.features[name] for name in names]
    return compare_counts(
        [reference_counts(b, profile.rows) for b in bins],
        [np.asarray(window_counts[name]) for name in names],
        names=names,
        ordered=[ordered_bins(b) for b in bins],
        alpha=alpha,
    )


def compare_predictions(
    canary: np.ndarray,
    stable: np.ndarray,
    bins: NumericBins | CategoricalBins,
    *,
    alpha: float = DEFAULT_ALPHA,
) -> DriftTest:
    """Do the canary's predictions differ from the stable track's on the same traffic?

    Both are windows of prediction counts over the profile's prediction bins. The router splits
    requests at random, so the two windows are samples of one input distribution and any
    difference is the models'. Stable plays the reference (PSI is the canary's against it).
    """
    return compare_counts(
        [np.asarray(stable)],
        [np.asarray(canary)],
        names=["predictions"],
        ordered=[ordered_bins(bins)],
        alpha=alpha,
    )


def compare_counts(
    reference: Sequence[np.ndarray],
    window: Sequence[np.ndarray],
    *,
    names: Sequence[str],
    ordered: Sequence[int],
    alpha: float = DEFAULT_ALPHA,
) -> DriftTest:
    """Homogeneity tests of each column's two count vectors, Holm-corrected across columns.

    `ordered[j]` is how many leading bins of column j hold ordered values (they get the rank
    test too; bins after them, like the missing-value bin, only the G-test); 0 for categories.
    """
    if not 0 < alpha < 1:
        raise ValueError("alpha must lie strictly between 0 and 1")
    if not len(reference) == len(window) == len(names) == len(ordered):
        raise ValueError("reference, window, names and ordered must have one entry per column")
    widths = np.array([len(np.asarray(r)) for r in reference], dtype=np.int64)
    for name, r, w in zip(names, reference, window, strict=True):
        if np.shape(r) != np.shape(w) or np.ndim(r) != 1:
            raise ValueError(f"{name}: reference and window counts need the same bins")
    ref = _padded(reference)
    win = _padded(window)
    if (ref < 0).any() or (win < 0).any():
        raise ValueError("counts cannot be negative")
    reference_rows = int(ref[0].sum()) if len(names) else 0
    window_rows = int(win[0].sum()) if len(names) else 0
    if not names:
        return DriftTest(alpha, 1.0, reference_rows, window_rows, ())

    order = np.asarray(ordered, dtype=np.int64)
    g, dof, p_g = _g_tests(ref, win, order > 0)
    z, p_rank = _rank_tests(ref, win, order)
    p_column = np.where(np.isnan(p_rank), p_g, np.minimum(1.0, 2.0 * np.fmin(p_g, p_rank)))
    tested = (dof >= 1) | ~np.isnan(p_rank)
    p_column = np.where(tested, p_column, 1.0)
    adjusted = np.ones_like(p_column)
    adjusted[tested] = holm(p_column[tested])
    psis = _psi(ref, win, widths)
    columns = tuple(
        ColumnTest(
            name=name,
            p_value=float(p_column[j]),
            adjusted_p=float(adjusted[j]),
            g_statistic=float(g[j]),
            bins=int(dof[j] + 1),
            rank_z=None if math.isnan(z[j]) else float(z[j]),
            psi=float(psis[j]),
            significant=bool(tested[j] and adjusted[j] <= alpha),
        )
        for j, name in enumerate(names)
    )
    overall = float(adjusted[tested].min()) if tested.any() else 1.0
    return DriftTest(alpha, overall, reference_rows, window_rows, columns)


def holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (family-wise error control under any dependence)."""
    p = np.asarray(p_values, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    factors = len(p) - np.arange(len(p))
    stepped = np.minimum(1.0, np.maximum.accumulate(p[order] * factors))
    adjusted = np.empty_like(p)
    adjusted[order] = stepped
    return adjusted


def merge_sparse_bins(
    reference: np.ndarray, window: np.ndarray, *, ordered: bool
) -> tuple[np.ndarray, np.ndarray]:
    """The 2 x B table with bins merged until every expected count is at least MIN_EXPECTED.

    A bin's smaller expected count is its pooled total x min(n, m) / (n + m), so the rule is a
    floor on pooled totals. Ordered bins merge with their neighbours, left to right (a short
    remainder joins the last group); unordered bins below the floor are pooled into one (joined
    to the smallest adequate bin if still short). Returns the merged (reference, window) counts;
    a single bin left means the column cannot be tested.
    """
    ref = np.asarray(reference, dtype=np.float64)
    win = np.asarray(window, dtype=np.float64)
    labels = _merge_labels(ref + win, _floor(ref.sum(), win.sum()), ordered=ordered)
    keep = labels >= 0
    groups = int(labels.max()) + 1 if keep.any() else 0
    return (
        np.bincount(labels[keep], weights=ref[keep], minlength=groups),
        np.bincount(labels[keep], weights=win[keep], minlength=groups),
    )


def reference_problems(profile: ReferenceProfile, *, window: int) -> list[str]:
    """What the reference (or the window size) leaves untestable, one sentence per feature.

    Assumes a window of `window` rows distributed like the reference, and runs the same bin
    merging as the test: a feature whose bins must merge cannot be judged at the resolution
    of its profile, and one left with a single bin cannot be judged at all. Meant for packaging
    time, so that a reference too small for its bins is reported before it reaches production.
    """
    if window < 1:
        raise ValueError("the window must hold at least one row")
    problems: list[str] = []
    n = profile.rows
    for name, bins in profile.features.items():
        ref = reference_counts(bins, n).astype(np.float64)
        if n == 0 or not ref.any():
            problems.append(f"{name}: the reference holds no rows for it")
            continue
        expected_window = ref / n * window
        labels = _merge_labels(
            ref + expected_window, _floor(n, window), ordered=bool(ordered_bins(bins))
        )
        used = int((ref > 0).sum())
        groups = int(labels.max()) + 1
        if groups >= used:
            continue
        rarest = float(ref[ref > 0].min()) / n
        rows_needed = math.ceil(MIN_EXPECTED / rarest)
        what = (
            "cannot be tested at all"
            if groups < 2
            else f"is tested on {groups} merged bins instead of its {used}"
        )
        if window >= n:
            why = (
                f"its rarest bin holds {round(rarest * n)} of {n} reference rows, and a test "
                f"needs {MIN_EXPECTED:g} expected per bin: about {rows_needed} reference rows "
                "would do"
            )
        else:
            why = (
                f"its rarest bin would hold {rarest * window:.1f} of {window} window rows: a "
                f"window of about {rows_needed} rows would do"
            )
        problems.append(f"{name}: {what} ({why})")
    return problems


# --- the statistics ------------------------------------------------------------------------


def _floor(reference_rows: float, window_rows: float) -> float:
    """The smallest pooled bin total whose smaller expected count reaches MIN_EXPECTED."""
    smaller = min(reference_rows, window_rows)
    return math.inf if smaller <= 0 else MIN_EXPECTED * (reference_rows + window_rows) / smaller


def _merge_labels(totals: np.ndarray, floor: float, *, ordered: bool) -> np.ndarray:
    """Per bin, the merged bin it joins (-1: empty in both rows, dropped)."""
    labels = np.full(len(totals), -1, dtype=np.int64)
    used = np.flatnonzero(totals > 0)
    if not len(used):
        return labels
    if (totals[used] >= floor).all():  # the usual case: nothing to merge
        labels[used] = np.arange(len(used))
        return labels
    if ordered:
        group, running, last_full = 0, 0.0, -1
        for b in used:
            labels[b] = group
            running += totals[b]
            if running >= floor:
                last_full, group, running = group, group + 1, 0.0
        if running > 0 and last_full >= 0:  # a short remainder joins the last full group
            labels[labels == group] = last_full
        return labels
    adequate = used[totals[used] >= floor]
    sparse = used[totals[used] < floor]
    labels[adequate] = np.arange(len(adequate))
    labels[sparse] = len(adequate)
    if len(adequate) and totals[sparse].sum() < floor:
        labels[sparse] = labels[adequate[np.argmin(totals[adequate])]]
    return labels


def _padded(columns: Sequence[np.ndarray]) -> np.ndarray:
    """Columns of different bin counts as one (columns, widest) float array, zero-padded."""
    width = max((len(c) for c in columns), default=0)
    out = np.zeros((len(columns), max(width, 1)))
    for j, column in enumerate(columns):
        out[j, : len(column)] = column
    return out


def _g_tests(
    ref: np.ndarray, win: np.ndarray, ordered: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: Williams-corrected G, degrees of freedom (-1: untestable) and p-value."""
    n, m = ref.sum(axis=1), win.sum(axis=1)
    totals = ref + win
    floors = MIN_EXPECTED * (n + m) / np.maximum(np.minimum(n, m), 1e-300)
    sparse = ((totals > 0) & (totals < floors[:, None])).any(axis=1) & (n > 0) & (m > 0)
    if sparse.any():  # bins empty in both rows drop out of every sum below by themselves
        ref, win = ref.copy(), win.copy()
        for j in np.flatnonzero(sparse):
            r, w = merge_sparse_bins(ref[j], win[j], ordered=bool(ordered[j]))
            ref[j], win[j] = 0.0, 0.0
            ref[j, : len(r)], win[j, : len(w)] = r, w
        totals = ref + win
    total = n + m
    bins = (totals > 0).sum(axis=1)
    dof = np.where((n > 0) & (m > 0), bins - 1, -1)
    # G = 2 [sum o ln o - sum rows ln rows - sum bins ln bins + N ln N]; 0 ln 0 = 0.
    g = 2.0 * (
        xlogy(ref, ref).sum(axis=1)
        + xlogy(win, win).sum(axis=1)
        - xlogy(n, n)
        - xlogy(m, m)
        - xlogy(totals, totals).sum(axis=1)
        + xlogy(total, total)
    )
    g = np.maximum(g, 0.0)  # rounding can leave -1e-12 for identical rows
    testable = dof >= 1
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse_totals = np.where(totals > 0, 1.0 / np.where(totals > 0, totals, 1.0), 0.0)
        williams = 1.0 + (total * (1.0 / n + 1.0 / m) - 1.0) * (
            total * inverse_totals.sum(axis=1) - 1.0
        ) / (6.0 * total * dof)
        corrected = np.where(testable, g / williams, 0.0)
    p = np.where(testable, special.chdtrc(np.maximum(dof, 1), corrected), 1.0)
    return corrected, dof, p


def _rank_tests(
    ref: np.ndarray, win: np.ndarray, ordered: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: Mann-Whitney z of the window against the reference on the ordered bins, and its
    two-sided p-value (NaN for unordered or untestable rows)."""
    inside = np.arange(ref.shape[1])[None, :] < ordered[:, None]
    r = np.where(inside, ref, 0.0)
    w = np.where(inside, win, 0.0)
    totals = r + w
    n, m = r.sum(axis=1), w.sum(axis=1)
    total = n + m
    midranks = np.cumsum(totals, axis=1) - (totals - 1.0) / 2.0
    rank_sum = (w * midranks).sum(axis=1)
    ties = (totals**3 - totals).sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = n * m / 12.0 * ((total + 1.0) - ties / (total * (total - 1.0)))
        score = (rank_sum - m * (total + 1.0) / 2.0) / np.sqrt(variance)
    ok = (ordered > 0) & (n > 0) & (m > 0) & (variance > 0)
    z = np.where(ok, score, np.nan)
    p = np.where(ok, 2.0 * special.ndtr(-np.abs(np.where(ok, score, 0.0))), np.nan)
    return z, p


def _psi(ref: np.ndarray, win: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """PSI of each window row against its reference row (0 while either is empty), over each
    row's own bins, as the monitor computes it."""
    n = ref.sum(axis=1, keepdims=True)
    m = win.sum(axis=1, keepdims=True)
    inside = np.arange(ref.shape[1])[None, :] < widths[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        expected = np.maximum(np.where(n > 0, ref / n, 0.0), PSI_EPSILON)
        actual = np.maximum(np.where(m > 0, win / m, 0.0), PSI_EPSILON)
    terms = np.where(inside, (actual - expected) * np.log(actual / expected), 0.0)
    return np.where((n[:, 0] > 0) & (m[:, 0] > 0), terms.sum(axis=1), 0.0)
