"""The calibrated drift test: known answers on constructed counts, and its false-alarm rate.

The simulation draws reference samples, builds quantile bins from them as the profile does, and
draws windows from the same distribution: the overall (Holm-corrected) test over 30 features
must flag at most alpha of the analyses, with a binomial margin.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from canaryml_server.drift import DriftMonitor, psi
from canaryml_server.drift_test import (
    DEFAULT_ALPHA,
    MIN_EXPECTED,
    compare_counts,
    compare_predictions,
    drift_test,
    holm,
    merge_sparse_bins,
    reference_counts,
    reference_problems,
)
from canaryml_server.profile import (
    DEFAULT_BINS,
    CategoricalBins,
    NumericBins,
    ReferenceProfile,
    build_numeric_bins,
    build_profile,
)
from canaryml_server.schema import Batch, FeatureSchema
from scipy import stats

# --- known answers -----------------------------------------------------------------------------


def test_identical_proportions_give_p_one() -> None:
    ref = [np.array([30, 30, 30, 30, 30, 30, 30, 30, 30, 30, 0])] * 3
    win = [np.array([100, 100, 100, 100, 100, 100, 100, 100, 100, 100, 0])] * 3
    result = compare_counts(ref, win, names=["a", "b", "c"], ordered=[10, 10, 10])
    assert result.p_value == pytest.approx(1.0)
    assert not result.drifted
    assert result.significant == ()
    assert all(c.psi == pytest.approx(0.0) for c in result.columns)
    assert (result.reference_rows, result.window_rows) == (300, 1000)


def test_a_clear_shift_is_found_and_named() -> None:
    flat = np.array([30] * 10 + [0])
    shifted = np.array([50, 50, 60, 80, 100, 110, 120, 130, 140, 160, 0])  # mass moved up
    same = np.array([100] * 10 + [0])
    result = compare_counts(
        [flat, flat, flat], [same, shifted, same], names=["a", "moved", "c"], ordered=[10] * 3
    )
    assert result.drifted
    assert result.p_value < 1e-6
    assert result.significant == ("moved",)
    moved = result.columns[1]
    assert moved.rank_z is not None and moved.rank_z > 5  # the window sits higher
    assert moved.psi > 0.1
    assert result.columns[0].adjusted_p == pytest.approx(1.0)


def test_a_change_of_spread_is_found_by_the_g_test() -> None:
    # Same median, wider: the rank test sees nothing, the G-test does.
    ref = np.array([30] * 10 + [0])
    wider = np.array([180, 120, 80, 60, 60, 60, 60, 80, 120, 180, 0])
    result = compare_counts([ref], [wider], names=["x"], ordered=[10])
    (column,) = result.columns
    assert column.rank_z is not None and abs(column.rank_z) < 0.5
    assert column.p_value < 1e-4
    assert result.drifted


def test_g_statistic_is_scipys_log_likelihood_ratio_with_williams_correction() -> None:
    ref = np.array([12, 30, 25, 8, 40, 0])
    win = np.array([60, 70, 90, 50, 80, 0])
    result = compare_counts([ref], [win], names=["cat"], ordered=[0])
    table = np.vstack([ref, win])[:, :5]
    scipy_g = stats.chi2_contingency(table, correction=False, lambda_="log-likelihood")
    total, rows, bins = table.sum(), table.sum(axis=1), table.sum(axis=0)
    q = 1 + (total * (1 / rows).sum() - 1) * (total * (1 / bins).sum() - 1) / (6 * total * 4)
    (column,) = result.columns
    assert column.bins == 5
    assert column.g_statistic == pytest.approx(scipy_g.statistic / q)
    assert column.p_value == pytest.approx(stats.chi2.sf(scipy_g.statistic / q, 4))
    assert column.rank_z is None


def test_rank_test_is_scipys_mann_whitney_on_the_binned_values() -> None:
    ref = np.array([5, 9, 14, 20, 11, 6, 3, 2])  # the last bin: missing values, left out
    win = np.array([3, 8, 10, 22, 25, 18, 9, 40])
    x = np.repeat(np.arange(7), win[:7])
    y = np.repeat(np.arange(7), ref[:7])
    expected = stats.mannwhitneyu(x, y, use_continuity=False, method="asymptotic")
    result = compare_counts([ref], [win], names=["x"], ordered=[7])
    (column,) = result.columns
    assert column.rank_z is not None and column.rank_z > 0
    p_rank = 2 * stats.norm.sf(abs(column.rank_z))
    assert p_rank == pytest.approx(expected.pvalue, rel=1e-9)


def test_psi_is_the_monitors() -> None:
    rng = np.random.default_rng(3)
    ref = [rng.integers(0, 40, 11), rng.integers(0, 40, 7)]
    win = [rng.integers(0, 400, 11), rng.integers(0, 400, 7)]
    result = compare_counts(ref, win, names=["a", "b"], ordered=[10, 0])
    for column, r, w in zip(result.columns, ref, win, strict=True):
        assert column.psi == pytest.approx(psi(r / r.sum(), w / w.sum()), rel=1e-12)


def test_holm_adjusts_step_down() -> None:
    adjusted = holm(np.array([0.01, 0.04, 0.03, 0.005]))
    # sorted 0.005 0.01 0.03 0.04 times 4 3 2 1 is 0.02 0.03 0.06 0.04, made monotone
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm(np.array([0.2, 0.9])), [0.4, 0.9])
    np.testing.assert_allclose(holm(np.array([0.5, 0.9])), [1.0, 1.0])


def test_overall_p_is_bonferronis_and_only_holm_significant_features_are_named() -> None:
    flat = np.array([100] * 10 + [0])
    result = compare_counts([flat] * 4, [flat] * 4, names=list("abcd"), ordered=[10] * 4)
    assert result.p_value == pytest.approx(1.0)
    strong = np.array([60, 70, 80, 90, 100, 100, 110, 120, 130, 140, 0])
    result = compare_counts(
        [flat] * 4, [flat, strong, flat, flat], names=list("abcd"), ordered=[10] * 4
    )
    moved = result.columns[1]
    assert result.p_value == pytest.approx(min(1.0, 4 * moved.p_value))
    assert result.significant == ("b",)


# --- sparse bins -------------------------------------------------------------------------------


def test_ordered_bins_merge_with_neighbours_and_empty_bins_drop() -> None:
    # n = m = 200: a bin needs a pooled total of MIN_EXPECTED x 400 / 200 = 20.
    assert MIN_EXPECTED == 10
    ref = np.array([80, 6, 4, 80, 20, 0, 10])
    win = np.array([80, 4, 6, 80, 20, 0, 10])
    merged_ref, merged_win = merge_sparse_bins(ref, win, ordered=True)
    np.testing.assert_array_equal(merged_ref, [80, 10, 80, 20, 10])
    np.testing.assert_array_equal(merged_win, [80, 10, 80, 20, 10])


def test_a_short_last_group_joins_the_one_before() -> None:
    # A bin needs 10 x 396 / 196 = 20.2: 24 closes a group, the 6 + 6 after it join it.
    ref = np.array([90, 90, 12, 4, 4])
    win = np.array([90, 90, 12, 2, 2])
    merged_ref, merged_win = merge_sparse_bins(ref, win, ordered=True)
    np.testing.assert_array_equal(merged_ref, [90, 90, 20])
    np.testing.assert_array_equal(merged_win, [90, 90, 16])


def test_rare_categories_pool_and_a_short_pool_joins_the_smallest_category() -> None:
    # n = m = 100: a bin needs a pooled total of 20; c, d and missing make 20 together.
    ref = np.array([60, 30, 4, 3, 0, 3])  # a, b, c, d, unseen, missing
    win = np.array([60, 30, 3, 4, 0, 3])
    merged_ref, merged_win = merge_sparse_bins(ref, win, ordered=False)
    np.testing.assert_array_equal(merged_ref, [60, 30, 10])
    np.testing.assert_array_equal(merged_win, [60, 30, 10])
    merged_ref, _ = merge_sparse_bins(
        np.array([60, 36, 2, 2, 0, 0]), np.array([60, 36, 2, 2, 0, 0]), ordered=False
    )
    np.testing.assert_array_equal(merged_ref, [60, 40])


def test_merging_hides_noise_in_sparse_bins_but_not_a_large_change() -> None:
    # Tiny bins with opposite counts would be a huge G on their own; merged they are nothing.
    ref = np.array([100, 100, 1, 0, 100])
    win = np.array([100, 100, 0, 1, 100])
    result = compare_counts([ref], [win], names=["x"], ordered=[0])
    assert result.columns[0].bins == 3
    assert not result.drifted


def test_a_column_with_one_bin_left_is_not_tested() -> None:
    result = compare_counts(
        [np.array([90, 0]), np.array([45, 45])],
        [np.array([100, 0]), np.array([50, 50])],
        names=["constant", "fine"],
        ordered=[0, 0],
    )
    constant, fine = result.columns
    assert not constant.tested and constant.p_value == 1.0
    assert fine.tested
    assert result.p_value == pytest.approx(fine.p_value)  # one test in the family


def test_an_empty_window_is_no_evidence() -> None:
    result = compare_counts([np.array([30, 30, 0])], [np.zeros(3)], names=["x"], ordered=[2])
    assert result.p_value == 1.0 and not result.drifted
    assert result.columns[0].psi == 0.0


def test_inputs_are_checked() -> None:
    with pytest.raises(ValueError, match="same bins"):
        compare_counts([np.ones(3)], [np.ones(4)], names=["x"], ordered=[2])
    with pytest.raises(ValueError, match="negative"):
        compare_counts([np.ones(3)], [-np.ones(3)], names=["x"], ordered=[2])
    with pytest.raises(ValueError, match="alpha"):
        compare_counts([np.ones(3)], [np.ones(3)], names=["x"], ordered=[2], alpha=0)


# --- through the profile and the monitor -------------------------------------------------------


def _reference(rows: int, rng: np.random.Generator) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "num": rng.normal(0, 1, rows),
            "skew": rng.lognormal(0, 1, rows),
            "cat": rng.choice(["x", "y", "w"], rows, p=[0.5, 0.3, 0.2]),
        }
    )


def _window_counts(profile: ReferenceProfile, frame: pd.DataFrame) -> dict[str, np.ndarray]:
    names = list(frame.columns)
    # Every row binned: these tests judge the test on whole windows, not the server's sample.
    monitor = DriftMonitor(profile, feature_names=names, window=len(frame), sample_rows=0)
    columns = {n: frame[n].to_numpy() for n in names}
    batch = Batch(schema=FeatureSchema(features=[]), columns=columns, rows=len(frame))
    monitor.observe(batch, np.zeros(len(frame), dtype=np.int64))
    return dict(zip(names, monitor.counts()[:-1], strict=True))


@pytest.fixture(scope="module")
def profile() -> ReferenceProfile:
    rng = np.random.default_rng(11)
    frame = _reference(300, rng)
    return build_profile(
        frame, np.zeros(300, dtype=np.int64), categorical={"cat"}, classification=True
    )


def test_the_profiles_reference_counts_are_exact(profile: ReferenceProfile) -> None:
    for bins in profile.features.values():
        counts = reference_counts(bins, profile.rows)
        assert counts.sum() == profile.rows
        np.testing.assert_allclose(counts / profile.rows, bins.proportions)


def test_a_window_like_the_reference_passes_and_a_shifted_one_fails(
    profile: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(12)
    quiet = drift_test(profile, _window_counts(profile, _reference(1000, rng)))
    assert not quiet.drifted
    assert quiet.p_value > 0.05
    frame = _reference(1000, rng)
    frame["num"] += 0.5  # half a standard deviation
    loud = drift_test(profile, _window_counts(profile, frame))
    assert loud.drifted
    assert loud.significant == ("num",)
    assert loud.worst_psi is not None and loud.worst_psi[0] == "num"


def test_an_unseen_category_counts_only_when_it_is_common(profile: ReferenceProfile) -> None:
    rng = np.random.default_rng(13)
    frame = _reference(1000, rng)
    frame.loc[:1, "cat"] = "new"  # 2 rows of 1000: pooled with the rare bins
    few = drift_test(profile, _window_counts(profile, frame))
    cat = next(c for c in few.columns if c.name == "cat")
    assert not cat.significant
    assert cat.bins == 3  # the 2 unseen rows joined the smallest category; missing: empty
    frame.loc[:149, "cat"] = "new"  # 15 % of the window: its own bin, absent from the reference
    many = drift_test(profile, _window_counts(profile, frame))
    assert many.significant == ("cat",)


def test_canary_and_stable_predictions_compare_on_the_same_traffic() -> None:
    bins = CategoricalBins(categories=[0, 1], proportions=[0.6, 0.4, 0.0, 0.0])
    stable = np.array([600, 400, 0, 0])
    same = compare_predictions(np.array([305, 195, 0, 0]), stable, bins)
    assert not same.drifted and same.columns[0].rank_z is None
    flipped = compare_predictions(np.array([200, 300, 0, 0]), stable, bins)
    assert flipped.drifted
    assert flipped.columns[0].psi == pytest.approx(psi(stable / 1000, np.array([0.4, 0.6, 0, 0])))
    numeric = NumericBins(edges=[0.0, 1.0], proportions=[0.3, 0.4, 0.3, 0.0])
    higher = compare_predictions(np.array([50, 200, 250, 0]), np.array([150, 200, 150, 0]), numeric)
    assert higher.drifted and (higher.columns[0].rank_z or 0.0) > 0


def test_reference_problems_name_a_reference_too_small_for_its_bins() -> None:
    rng = np.random.default_rng(14)
    small = _reference(30, rng)  # 3 rows per numeric bin
    profile = build_profile(
        small, np.zeros(30, dtype=np.int64), categorical={"cat"}, classification=True
    )
    problems = reference_problems(profile, window=1000)
    assert any(p.startswith("num:") and "reference rows" in p for p in problems)
    assert any(p.startswith("skew:") for p in problems)
    assert any("about 100 reference rows" in p for p in problems)  # 10 expected x 10 bins
    large = build_profile(
        _reference(300, rng), np.zeros(300, dtype=np.int64), categorical={"cat"},
        classification=True,
    )  # fmt: skip
    assert reference_problems(large, window=1000) == []
    # A window smaller than the reference is what limits the test then: said so.
    tiny_window = reference_problems(large, window=20)
    assert tiny_window and all("window" in p for p in tiny_window)


def test_a_rare_category_is_reported_at_packaging_time() -> None:
    bins = CategoricalBins(categories=["a", "b", "rare"], proportions=[0.6, 0.39, 0.01, 0, 0])
    profile = ReferenceProfile(rows=300, features={"c": bins}, prediction=bins)
    (problem,) = reference_problems(profile, window=1000)
    assert problem.startswith("c: is tested on 2 merged bins instead of its 3")
    assert "1000 reference rows" in problem  # 10 expected at 1 %


# --- false alarms by simulation ----------------------------------------------------------------

CATEGORY_P = np.array([0.55, 0.25, 0.12, 0.05, 0.02, 0.01])


def _null_analyses(
    rng: np.random.Generator, *, trials: int, reference: int, window: int
) -> np.ndarray:
    """Overall p-values of `trials` analyses of 25 numeric and 5 categorical features where
    nothing drifted. Numeric bins come from each reference sample's quantiles, as the profile's
    do; the window's counts are drawn from the true probabilities of those bins (uniform data:
    the spacings of the edges)."""
    numeric, categorical = 25, 5
    edges = np.quantile(
        rng.random((trials, numeric, reference)), np.linspace(0, 1, DEFAULT_BINS + 1)[1:-1], axis=-1
    )
    edges = np.moveaxis(edges, 0, -1)
    # Continuous data: every reference sample has the same count per quantile bin.
    sample = build_numeric_bins(rng.random(reference))
    ref_numeric = reference_counts(sample, reference)
    probabilities = np.diff(edges, prepend=0.0, append=1.0, axis=-1)
    win_numeric = rng.multinomial(window, probabilities)
    missing = np.zeros((trials, numeric, 1), dtype=np.int64)
    win_numeric = np.concatenate([win_numeric, missing], axis=-1)
    # Categories with rare levels (unseen and missing bins empty): merging is exercised.
    ref_categorical = rng.multinomial(reference, CATEGORY_P, size=(trials, categorical))
    win_categorical = rng.multinomial(window, CATEGORY_P, size=(trials, categorical))
    empty = np.zeros((trials, categorical, 2), dtype=np.int64)
    ref_categorical = np.concatenate([ref_categorical, empty], axis=-1)
    win_categorical = np.concatenate([win_categorical, empty], axis=-1)
    names = [f"f{j}" for j in range(numeric + categorical)]
    ordered = [len(sample.edges) + 1] * numeric + [0] * categorical
    p_values = np.empty(trials)
    for t in range(trials):
        result = compare_counts(
            [ref_numeric] * numeric + list(ref_categorical[t]),
            list(win_numeric[t]) + list(win_categorical[t]),
            names=names,
            ordered=ordered,
        )
        p_values[t] = result.p_value
    return p_values


@pytest.mark.parametrize(("reference", "window"), [(90, 1000), (300, 300)])
def test_false_alarms_per_analysis_stay_at_alpha(reference: int, window: int) -> None:
    trials = 3000
    p_values = _null_analyses(
        np.random.default_rng(reference * 7 + window), trials=trials, reference=reference,
        window=window,
    )  # fmt: skip
    for alpha in (0.05, DEFAULT_ALPHA):
        alarms = int((p_values <= alpha).sum())
        # At most alpha, with three binomial standard deviations of simulation margin.
        bound = alpha * trials + 3 * math.sqrt(alpha * (1 - alpha) * trials)
        assert alarms <= bound, f"{alarms} of {trials} analyses flagged at alpha {alpha}"
    # And not a test that never fires: the rate at 0.05 is near its bound, not far below.
    assert (p_values <= 0.05).mean() > 0.02
