"""Reference profiles and the sliding-window drift monitor, checked against direct recomputation."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd
import pytest
from canaryml_server.drift import (
    FLUSH_ROWS,
    FLUSH_SEEN_ROWS,
    PSI_EPSILON,
    SAMPLE_ROWS,
    DriftMonitor,
    js_distance,
    psi,
    sample_rows,
)
from canaryml_server.profile import (
    CategoricalBins,
    NumericBins,
    ReferenceProfile,
    build_categorical_bins,
    build_numeric_bins,
    build_profile,
)
from canaryml_server.schema import (
    Batch,
    FeatureSchema,
    ValidationPolicy,
    infer_schema,
    validate_columns,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from scipy.spatial.distance import jensenshannon

HYPOTHESIS = settings(max_examples=50, deadline=None, derandomize=True, database=None)
TOLERANCE = 1e-9

# ----------------------------------------------------------------------------------------------
# Independent reference implementation: bin by explicit interval masks, PSI by a plain loop.


def _numeric_counts(bins: NumericBins, values: np.ndarray) -> np.ndarray:
    """Bins are [-inf, e0), [e0, e1), ..., [e_last, inf], then one for NaN."""
    values = np.asarray(values, dtype=np.float64)
    bounds = [-np.inf, *bins.edges, np.inf]
    counts = [
        int(np.count_nonzero((values >= lo) & (values < hi)))
        for lo, hi in itertools.pairwise(bounds)
    ]
    counts[-1] += int(np.count_nonzero(values == np.inf))
    counts.append(int(np.count_nonzero(np.isnan(values))))
    return np.array(counts)


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _categorical_counts(bins: CategoricalBins, values: Any) -> np.ndarray:
    """One count per category, then values not among them, then None/NaN."""
    values = list(values)
    known = [sum(1 for v in values if not _is_missing(v) and v == c) for c in bins.categories]
    missing = sum(1 for v in values if _is_missing(v))
    unseen = len(values) - sum(known) - missing
    return np.array([*known, unseen, missing])


def _expected_counts(bins: NumericBins | CategoricalBins, values: Any) -> np.ndarray:
    if isinstance(bins, NumericBins):
        return _numeric_counts(bins, values)
    return _categorical_counts(bins, values)


def _hand_psi(expected: list[float], actual: list[float]) -> float:
    total = 0.0
    for e, a in zip(expected, actual, strict=True):
        e, a = max(e, PSI_EPSILON), max(a, PSI_EPSILON)
        total += (a - e) * math.log(a / e)
    return total


# ----------------------------------------------------------------------------------------------
# psi and js_distance


def test_psi_is_zero_for_identical_distributions() -> None:
    p = np.array([0.1, 0.2, 0.3, 0.4, 0.0])
    assert psi(p, p) == 0.0
    assert js_distance(p, p) == 0.0


def test_psi_is_positive_for_different_distributions() -> None:
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.dirichlet(np.ones(6)), rng.dirichlet(np.ones(6))
        assert psi(a, b) > 0
        assert psi(a, b) == pytest.approx(psi(b, a))  # the formula is symmetric
        assert 0 < js_distance(a, b) <= 1


def test_psi_matches_a_hand_computation_with_the_epsilon_floor() -> None:
    expected = [0.5, 0.3, 0.2, 0.0]
    actual = [0.4, 0.4, 0.1, 0.1]
    by_hand = (
        (0.4 - 0.5) * math.log(0.4 / 0.5)
        + (0.4 - 0.3) * math.log(0.4 / 0.3)
        + (0.1 - 0.2) * math.log(0.1 / 0.2)
        + (0.1 - 1e-4) * math.log(0.1 / 1e-4)  # the empty bin is floored at 1e-4
    )
    assert PSI_EPSILON == 1e-4
    assert psi(np.array(expected), np.array(actual)) == pytest.approx(by_hand, abs=1e-12)
    assert by_hand == pytest.approx(_hand_psi(expected, actual), abs=1e-12)


def test_psi_of_two_empty_bins_is_zero_and_a_fully_moved_mass_is_large_but_finite() -> None:
    assert psi(np.array([1.0, 0.0]), np.array([1.0, 0.0])) == 0.0
    moved = psi(np.array([1.0, 0.0]), np.array([0.0, 1.0]))
    assert math.isfinite(moved) and moved > 10


def test_js_distance_of_nothing_is_zero_not_nan() -> None:
    with np.errstate(invalid="ignore"):  # scipy divides 0 by 0 and gets NaN
        assert js_distance(np.zeros(3), np.zeros(3)) == 0.0


# ----------------------------------------------------------------------------------------------
# build_profile


def test_numeric_bins_are_quantile_bins_with_a_missing_bin() -> None:
    values = np.concatenate([np.arange(1000, dtype=np.float64), [np.nan] * 250])
    bins = build_numeric_bins(values)
    assert len(bins.edges) == 9 and bins.bin_count == 11
    assert bins.edges == sorted(bins.edges)
    np.testing.assert_allclose(bins.proportions[:-1], [0.08] * 10)  # 100 of 1250 each
    assert bins.proportions[-1] == pytest.approx(0.2)
    np.testing.assert_array_equal(bins.assign(np.array([-5.0, np.nan, 1e9])), [0, 10, 9])


def test_numeric_bins_of_a_constant_and_of_nothing() -> None:
    constant = build_numeric_bins(np.full(50, 3.0))
    assert constant.edges == [3.0]
    assert constant.proportions == [0.0, 1.0, 0.0]
    empty = build_numeric_bins(np.array([np.nan, np.nan]))
    assert empty.edges == [] and empty.proportions == [0.0, 1.0]


def test_categorical_bins_have_unseen_and_missing_bins() -> None:
    bins = build_categorical_bins(np.array(["b", "a", None, "b", np.nan], dtype=object))
    assert bins.categories == ["a", "b"]
    assert bins.proportions == [0.2, 0.4, 0.0, 0.4]
    values = np.array(["a", "zzz", None, float("nan"), "b"], dtype=object)
    np.testing.assert_array_equal(bins.assign(values), [0, 2, 3, 3, 1])


def test_profile_proportions_match_a_direct_count_and_survive_json() -> None:
    frame, predictions = _reference(500, seed=3)
    profile = build_profile(frame, predictions, categorical={"cat", "flag"}, classification=True)
    assert profile.rows == 500
    assert list(profile.features) == list(frame.columns)
    for name, bins in profile.features.items():
        counts = _expected_counts(bins, frame[name].to_numpy().tolist())
        assert counts.sum() == 500
        np.testing.assert_allclose(bins.proportions, counts / 500, rtol=0, atol=1e-12)
    assert isinstance(profile.prediction, CategoricalBins)
    assert profile.prediction.categories == [0, 1, 2]
    again = ReferenceProfile.model_validate_json(profile.model_dump_json())
    assert again == profile
    flag = again.features["flag"]
    assert isinstance(flag, CategoricalBins) and flag.categories == [False, True]
    np.testing.assert_array_equal(flag.assign(np.array([True, False])), [1, 0])


def test_regression_profile_bins_predictions_as_numbers() -> None:
    frame = pd.DataFrame({"a": np.linspace(0, 1, 100)})
    predictions = frame["a"].to_numpy() * 2
    profile = build_profile(frame, predictions, categorical=set(), classification=False)
    assert isinstance(profile.prediction, NumericBins)
    assert profile.prediction.bin_count == 11


# ----------------------------------------------------------------------------------------------
# Data


CATEGORIES = ["alpha", "beta", "gamma"]


def _reference(rows: int, *, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Mixed reference rows: numeric with and without gaps, string and bool categories."""
    rng = np.random.default_rng(seed)
    skew = rng.lognormal(0.0, 0.5, rows)
    skew[rng.random(rows) < 0.1] = np.nan
    cat = rng.choice(np.array(CATEGORIES, dtype=object), rows, p=[0.5, 0.3, 0.2])
    cat[rng.random(rows) < 0.05] = None
    frame = pd.DataFrame(
        {
            "num": rng.normal(0.0, 1.0, rows),
            "cat": cat,
            "skew": skew,
            "count": rng.poisson(2.0, rows).astype(np.float64),  # ties: edges equal to values
            "flag": rng.random(rows) < 0.3,
        }
    )
    return frame, rng.integers(0, 3, rows)


@pytest.fixture(scope="module")
def mixed_profile() -> ReferenceProfile:
    frame, predictions = _reference(400, seed=1)
    return build_profile(frame, predictions, categorical={"cat", "flag"}, classification=True)


@pytest.fixture(scope="module")
def numeric_profile() -> tuple[ReferenceProfile, FeatureSchema]:
    frame, _ = _reference(400, seed=2)
    frame = frame[["num", "skew", "count"]]
    profile = build_profile(
        frame, frame["num"].to_numpy() * 3, categorical=set(), classification=False
    )
    return profile, infer_schema(frame)


# The monitor's feature order deliberately differs from the profile's.
MIXED_ORDER = ["flag", "num", "cat", "count", "skew"]


def _edges(profile: ReferenceProfile, name: str) -> np.ndarray:
    bins = profile.features[name]
    assert isinstance(bins, NumericBins)
    return np.asarray(bins.edges)


def _mixed_rows(rng: np.random.Generator, rows: int, profile: ReferenceProfile) -> dict[str, Any]:
    """Live rows that hit every kind of bin: edges exactly, NaN, unseen and missing categories."""
    num = rng.normal(0.0, 1.5, rows)
    num[rng.random(rows) < 0.1] = np.nan
    skew = rng.lognormal(0.0, 0.7, rows)
    at_edge = rng.random(rows) < 0.3
    skew[at_edge] = rng.choice(_edges(profile, "skew"), at_edge.sum())
    skew[rng.random(rows) < 0.1] = np.nan
    cat_values = np.array([*CATEGORIES, "delta", None, float("nan")], dtype=object)
    return {
        "num": num,
        "cat": rng.choice(cat_values, rows),
        "skew": skew,
        "count": rng.poisson(2.0, rows).astype(np.float64),
        "flag": rng.choice(np.array([True, False], dtype=object), rows),
        "predictions": rng.choice(np.array([0, 1, 2, 7]), rows),  # 7: a class never seen
    }


def _numeric_rows(rng: np.random.Generator, rows: int, profile: ReferenceProfile) -> np.ndarray:
    matrix = np.column_stack(
        [
            rng.normal(0.0, 1.5, rows),
            rng.choice(_edges(profile, "skew"), rows),  # exactly on the edges
            rng.poisson(2.0, rows).astype(np.float64),
        ]
    )
    matrix[rng.random(matrix.shape) < 0.1] = np.nan
    return matrix


def _check_monitor(
    monitor: DriftMonitor,
    profile: ReferenceProfile,
    names: list[str],
    window_columns: dict[str, list[Any]],
    window_predictions: list[Any],
) -> None:
    """The monitor's counts, PSI and JS equal a direct recomputation over the kept rows."""
    rows = len(window_predictions)
    assert monitor.rows == rows
    columns = [*names, "predictions"]
    all_bins = [*(profile.features[n] for n in names), profile.prediction]
    values = [*(window_columns[n] for n in names), window_predictions]
    report = monitor.report()
    assert report.rows == rows
    for name, bins, got, column in zip(columns, all_bins, monitor.counts(), values, strict=True):
        expected = _expected_counts(bins, column)
        np.testing.assert_array_equal(got, expected, err_msg=name)
        if rows == 0:
            continue
        actual = (expected / rows).tolist()
        want_psi = _hand_psi(bins.proportions, actual)
        want_js = float(jensenshannon(bins.proportions, actual, base=2))
        if name == "predictions":
            got_psi, got_js = report.prediction_psi, report.prediction_js
        else:
            got_psi, got_js = report.feature_psi[name], report.feature_js[name]
        assert got_psi == pytest.approx(want_psi, rel=0, abs=TOLERANCE), name
        assert got_js == pytest.approx(want_js, rel=0, abs=TOLERANCE), name
    if rows == 0:
        assert set(report.feature_psi.values()) == {0.0}
        assert report.prediction_psi == 0.0 and report.prediction_js == 0.0


# ----------------------------------------------------------------------------------------------
# DriftMonitor against a direct recomputation


# Windows below and above FLUSH_ROWS; each step is a batch size and whether to read afterwards
# (reading folds pending rows in, so unread steps pile several batches into one fold).
WINDOWS = st.one_of(
    st.integers(min_value=1, max_value=40), st.integers(min_value=250, max_value=400)
)
STEPS = st.lists(
    st.tuples(st.integers(min_value=0, max_value=150), st.booleans()), min_size=1, max_size=10
)
SEEDS = st.integers(min_value=0, max_value=2**32 - 1)
CAPS = st.sampled_from([0, 1, 5, SAMPLE_ROWS])  # 0: every row binned


def _chosen(picker: np.random.Generator, size: int, cap: int) -> np.ndarray:
    """The rows the monitor bins of a request, chosen by a twin of its generator."""
    return np.arange(size)[sample_rows(picker, size, cap)]


@HYPOTHESIS
@given(window=WINDOWS, steps=STEPS, seed=SEEDS, cap=CAPS)
def test_mixed_monitor_counts_equal_a_recomputation_over_the_window(
    mixed_profile: ReferenceProfile,
    window: int,
    steps: list[tuple[int, bool]],
    seed: int,
    cap: int,
) -> None:
    """Over the rows binned: all of them (cap 0), or each request's sample, whichever reads
    fold them in between."""
    rng, picker = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    schema = FeatureSchema(features=[])  # the monitor reads columns by name only
    monitor = DriftMonitor(
        mixed_profile, feature_names=MIXED_ORDER, window=window, sample_rows=cap, seed=seed + 1
    )
    seen: dict[str, list[Any]] = {n: [] for n in [*MIXED_ORDER, "predictions"]}
    binned = 0
    for number, (size, read) in enumerate(steps):
        data = _mixed_rows(rng, size, mixed_profile)
        batch = Batch(schema=schema, columns={n: data[n] for n in MIXED_ORDER}, rows=size)
        monitor.observe(batch, data["predictions"])
        chosen = _chosen(picker, size, cap)
        binned += len(chosen)
        for name, column in seen.items():
            column.extend(data[name][chosen].tolist())
        if read or number == len(steps) - 1:
            kept = {name: column[-window:] for name, column in seen.items()}
            predictions = kept.pop("predictions")
            _check_monitor(monitor, mixed_profile, MIXED_ORDER, kept, predictions)
    assert monitor.rows == min(binned, window)
    sampling = monitor.sampling()
    assert sampling.rows_seen == sum(size for size, _ in steps)
    assert sampling.rows_binned == binned
    assert sampling.sample_rows == cap


@HYPOTHESIS
@given(window=WINDOWS, steps=STEPS, seed=SEEDS, cap=CAPS)
def test_numeric_monitor_counts_equal_a_recomputation_over_the_window(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
    window: int,
    steps: list[tuple[int, bool]],
    seed: int,
    cap: int,
) -> None:
    profile, schema = numeric_profile
    rng, picker = np.random.default_rng(seed), np.random.default_rng(seed + 1)
    monitor = DriftMonitor(
        profile, feature_names=schema.names, window=window, sample_rows=cap, seed=seed + 1
    )
    kept_rows = np.empty((0, 3))
    kept_predictions = np.empty(0)
    for number, (size, read) in enumerate(steps):
        matrix = _numeric_rows(rng, size, profile)
        predictions = rng.normal(0.0, 4.0, size)
        predictions[rng.random(size) < 0.1] = np.nan
        monitor.observe(Batch.from_matrix(schema, matrix), predictions)
        chosen = _chosen(picker, size, cap)
        kept_rows = np.concatenate([kept_rows, matrix[chosen]])[-window:]
        kept_predictions = np.concatenate([kept_predictions, predictions[chosen]])[-window:]
        if read or number == len(steps) - 1:
            columns = {n: kept_rows[:, j].tolist() for j, n in enumerate(schema.names)}
            _check_monitor(monitor, profile, schema.names, columns, kept_predictions.tolist())


def test_validated_batches_feed_the_monitor(mixed_profile: ReferenceProfile) -> None:
    """The path the server takes: rows validated into a Batch, then observed."""
    frame, predictions = _reference(60, seed=9)
    schema = infer_schema(frame)
    policy = ValidationPolicy(allow_unknown_categories=True)
    batch = validate_columns(
        schema, {n: frame[n].to_numpy() for n in frame.columns}, rows=60, policy=policy
    )
    monitor = DriftMonitor(mixed_profile, feature_names=schema.names, window=50, sample_rows=0)
    monitor.observe(batch, predictions)
    kept = {n: frame[n].tolist()[-50:] for n in frame.columns}
    _check_monitor(monitor, mixed_profile, schema.names, kept, predictions.tolist()[-50:])


def test_a_batch_larger_than_the_window_keeps_its_last_rows(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    profile, schema = numeric_profile
    matrix = _numeric_rows(np.random.default_rng(5), 30, profile)
    predictions = np.arange(30, dtype=np.float64)
    big = DriftMonitor(profile, feature_names=schema.names, window=7, sample_rows=0)
    big.observe(Batch.from_matrix(schema, matrix), predictions)
    tail = DriftMonitor(profile, feature_names=schema.names, window=7)
    tail.observe(Batch.from_matrix(schema, matrix[-7:]), predictions[-7:])
    assert big.rows == tail.rows == 7
    for got, want in zip(big.counts(), tail.counts(), strict=True):
        np.testing.assert_array_equal(got, want)


def test_an_empty_batch_changes_nothing(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    profile, schema = numeric_profile
    monitor = DriftMonitor(profile, feature_names=schema.names, window=5)
    monitor.observe(Batch.from_matrix(schema, np.empty((0, 3))), np.empty(0))
    assert monitor.rows == 0
    assert all(c.sum() == 0 for c in monitor.counts())
    report = monitor.report()
    assert report.rows == 0 and report.window == 5
    assert report.feature_psi == dict.fromkeys(schema.names, 0.0)
    assert report.worst_feature is not None and report.worst_feature[1] == 0.0


def test_window_must_hold_a_row(mixed_profile: ReferenceProfile) -> None:
    with pytest.raises(ValueError, match="at least one row"):
        DriftMonitor(mixed_profile, feature_names=MIXED_ORDER, window=0)


def test_worst_feature_of_no_features() -> None:
    profile = ReferenceProfile(
        rows=1, features={}, prediction=build_categorical_bins(np.array([0, 1]))
    )
    monitor = DriftMonitor(profile, feature_names=[], window=3)
    monitor.observe(Batch(schema=FeatureSchema(features=[]), columns={}, rows=2), np.array([0, 5]))
    report = monitor.report()
    assert report.worst_feature is None
    np.testing.assert_array_equal(monitor.counts()[0], [1, 0, 1, 0])


def test_numeric_monitor_reads_features_by_name(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    profile, schema = numeric_profile
    names = list(reversed(schema.names))
    matrix = _numeric_rows(np.random.default_rng(8), 40, profile)
    monitor = DriftMonitor(profile, feature_names=names, window=40, sample_rows=0)
    monitor.observe(Batch.from_matrix(schema, matrix), np.zeros(40))
    columns = {n: matrix[:, j].tolist() for j, n in enumerate(schema.names)}
    _check_monitor(monitor, profile, names, columns, [0.0] * 40)


def test_infinity_stays_in_its_own_column() -> None:
    profile = ReferenceProfile(
        rows=2,
        features={
            "few": build_numeric_bins(np.array([3.0, 3.0])),  # one edge
            "many": build_numeric_bins(np.arange(100.0)),  # nine edges
        },
        prediction=build_categorical_bins(np.array([0])),
    )
    schema = infer_schema(pd.DataFrame({"few": [3.0], "many": [1.0]}))
    monitor = DriftMonitor(profile, feature_names=["few", "many"], window=5)
    monitor.observe(Batch.from_matrix(schema, np.array([[np.inf, 50.0]])), np.array([0]))
    few, many, _ = monitor.counts()
    np.testing.assert_array_equal(few, [0, 1, 0])
    assert many.sum() == 1


# ----------------------------------------------------------------------------------------------
# On data like the reference, and on a shifted feature


SCENARIO_FEATURES = ["height", "income", "score", "region"]
SCENARIO_REGIONS = np.array(["north", "south", "east", "west"], dtype=object)


def _scenario_rows(rng: np.random.Generator, rows: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "height": rng.normal(170.0, 10.0, rows),
            "income": rng.lognormal(10.0, 0.6, rows),
            "score": rng.normal(0.0, 1.0, rows),
            "region": rng.choice(SCENARIO_REGIONS, rows, p=[0.4, 0.3, 0.2, 0.1]),
        }
    )


def _scenario_model(frame: pd.DataFrame) -> np.ndarray:
    """A fixed classifier: three classes from a linear score."""
    z = (frame["height"] - 170.0) / 10.0 + frame["score"] + (frame["region"] == "north") * 0.5
    return np.digitize(z.to_numpy(), [-0.8, 0.8])


@pytest.fixture(scope="module")
def scenario() -> tuple[ReferenceProfile, FeatureSchema, pd.DataFrame]:
    reference = _scenario_rows(np.random.default_rng(2024), 5000)
    profile = build_profile(
        reference, _scenario_model(reference), categorical={"region"}, classification=True
    )
    return profile, infer_schema(reference), reference


def _stream(
    monitor: DriftMonitor, schema: FeatureSchema, frame: pd.DataFrame, batch_rows: int = 37
) -> None:
    policy = ValidationPolicy(allow_unknown_categories=True)
    for start in range(0, len(frame), batch_rows):
        part = frame.iloc[start : start + batch_rows]
        columns = {n: part[n].to_numpy() for n in schema.names}
        batch = validate_columns(schema, columns, rows=len(part), policy=policy)
        monitor.observe(batch, _scenario_model(part))


@pytest.mark.parametrize("shifted", ["height", "income", "score"])
def test_no_drift_on_like_data_then_one_shifted_feature_stands_out(
    scenario: tuple[ReferenceProfile, FeatureSchema, pd.DataFrame], shifted: str
) -> None:
    profile, schema, reference = scenario
    monitor = DriftMonitor(profile, feature_names=schema.names, window=1000, sample_rows=0)

    _stream(monitor, schema, _scenario_rows(np.random.default_rng(7), 1000))
    calm = monitor.report()
    assert calm.rows == 1000
    assert max(calm.feature_psi.values()) < 0.1, calm.feature_psi
    assert calm.prediction_psi < 0.1
    assert max(calm.feature_js.values()) < 0.1

    drifted = _scenario_rows(np.random.default_rng(8), 1000)
    drifted[shifted] += reference[shifted].std()
    _stream(monitor, schema, drifted)
    report = monitor.report()
    assert report.rows == 1000  # the window now holds only the shifted rows
    assert report.feature_psi[shifted] > 0.25, report.feature_psi
    assert report.worst_feature is not None and report.worst_feature[0] == shifted
    others = {n: v for n, v in report.feature_psi.items() if n != shifted}
    assert max(others.values()) < 0.1, others
    assert report.feature_js[shifted] > max(calm.feature_js.values())


# ----------------------------------------------------------------------------------------------
# The cost of a request does not depend on the window


def test_last_rows_are_counted_the_same_whatever_the_window(
    mixed_profile: ReferenceProfile,
) -> None:
    rng = np.random.default_rng(11)
    schema = FeatureSchema(features=[])
    small = DriftMonitor(mixed_profile, feature_names=MIXED_ORDER, window=10, sample_rows=0)
    large = DriftMonitor(mixed_profile, feature_names=MIXED_ORDER, window=100_000, sample_rows=0)
    for size in (3, 25, 9, 40):  # different histories before the common last batch
        data = _mixed_rows(rng, size, mixed_profile)
        batch = Batch(schema=schema, columns={n: data[n] for n in MIXED_ORDER}, rows=size)
        small.observe(batch, data["predictions"])
        large.observe(batch, data["predictions"])
    before = large.counts()

    last = _mixed_rows(rng, 10, mixed_profile)
    batch = Batch(schema=schema, columns={n: last[n] for n in MIXED_ORDER}, rows=10)
    small.observe(batch, last["predictions"])
    large.observe(batch, last["predictions"])

    assert small.rows == 10 and large.rows == 77 + 10
    added = [after - prior for after, prior in zip(large.counts(), before, strict=True)]
    for name, from_small, from_large in zip(
        [*MIXED_ORDER, "predictions"], small.counts(), added, strict=True
    ):
        np.testing.assert_array_equal(from_small, from_large, err_msg=name)
    kept = {n: last[n].tolist() for n in MIXED_ORDER}
    _check_monitor(small, mixed_profile, MIXED_ORDER, kept, last["predictions"].tolist())


def test_memory_is_a_fixed_ring_of_bin_indices(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    profile, schema = numeric_profile
    window = 64
    monitor = DriftMonitor(profile, feature_names=schema.names, window=window, sample_rows=0)

    def arrays() -> dict[str, tuple[tuple[int, ...], int]]:
        return {
            name: (value.shape, value.nbytes)
            for name, value in vars(monitor).items()
            if isinstance(value, np.ndarray)
        }

    at_start = arrays()
    ring = monitor._ring
    # one small integer (a bin index) per row and column (features, then predictions)
    assert ring.shape == (window, len(schema.names) + 1)
    assert ring.dtype.kind == "i"
    rng = np.random.default_rng(4)
    for size in (1, 63, 200, 5, 1000, 2, 3):
        matrix = _numeric_rows(rng, size, profile)
        monitor.observe(Batch.from_matrix(schema, matrix), rng.normal(size=size))
        assert arrays() == at_start  # nothing grows with the rows seen
        assert monitor._ring is ring  # updated in place
        # batches waiting to be binned hold fewer rows than a flush, whatever was seen
        assert monitor._pending_rows < min(FLUSH_ROWS, window)
        assert monitor._pending_rows == sum(len(p) for _, p in monitor._pending)
    assert monitor._pending_rows == 5
    assert monitor.rows == window
    assert monitor._pending == []  # reading folded them into the ring
    # the ring holds no values, only bin indices within each column's range
    sizes = np.array([b.bin_count for b in (*profile.features.values(), profile.prediction)])
    local = ring - monitor._offsets
    assert ((local >= 0) & (local < sizes)).all()
    # and the counts are exactly the bin indices in the ring
    np.testing.assert_array_equal(
        np.concatenate(monitor.counts()),
        np.bincount(ring.ravel(), minlength=int(sizes.sum())),
    )


# ----------------------------------------------------------------------------------------------
# Sampling: at most sample_rows rows of each request are binned


@pytest.mark.parametrize("cap", [0, 1, 5, SAMPLE_ROWS])
def test_the_sample_is_bounded_and_small_requests_are_binned_whole(cap: int) -> None:
    rng = np.random.default_rng(3)
    for rows in range(60):
        state = rng.bit_generator.state
        chosen = np.arange(rows)[sample_rows(rng, rows, cap)]
        if cap == 0 or rows <= cap:
            np.testing.assert_array_equal(chosen, np.arange(rows))
            assert rng.bit_generator.state == state  # nothing drawn for a request kept whole
        else:
            assert len(chosen) == cap
            assert np.all(np.diff(chosen) > 0)  # distinct rows, in their order
            assert chosen[0] >= 0 and chosen[-1] < rows


def test_every_set_of_rows_is_equally_likely() -> None:
    """6 rows, 2 binned: each of the 15 pairs about 1/15 of the time, each row 1/3."""
    rng = np.random.default_rng(12)
    trials = 30_000
    rows = np.arange(6)
    pairs = Counter(tuple(rows[sample_rows(rng, 6, 2)].tolist()) for _ in range(trials))
    assert set(pairs) == set(itertools.combinations(range(6), 2))
    observed = np.array([pairs[p] for p in sorted(pairs)])
    assert stats.chisquare(observed).pvalue > 1e-4, pairs
    per_row = Counter(row for pair, n in pairs.items() for row in pair for _ in range(n))
    for row in range(6):
        assert per_row[row] / trials == pytest.approx(1 / 3, abs=0.015)


def test_a_seed_gives_the_same_sample_and_another_seed_another() -> None:
    def picks(seed: int) -> list[list[int]]:
        rng = np.random.default_rng(seed)
        return [np.arange(64)[sample_rows(rng, 64, 8)].tolist() for _ in range(20)]

    assert picks(5) == picks(5)
    assert picks(5) != picks(6)


def test_a_seeded_monitor_bins_the_same_rows_however_it_is_read(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    profile, schema = numeric_profile
    rng = np.random.default_rng(21)
    read_often = DriftMonitor(profile, feature_names=schema.names, window=300, seed=9)
    read_once = DriftMonitor(profile, feature_names=schema.names, window=300, seed=9)
    for size in (64, 3, 64, 200, 17, 64, 1, 64) * 5:
        batch = Batch.from_matrix(schema, _numeric_rows(rng, size, profile))
        predictions = rng.normal(size=size)
        read_often.observe(batch, predictions)
        read_once.observe(batch, predictions)
        read_often.counts()  # folds pending rows in after every request
    for often, once in zip(read_often.counts(), read_once.counts(), strict=True):
        np.testing.assert_array_equal(often, once)
    seen = (64 * 4 + 3 + 200 + 17 + 1) * 5
    binned = (SAMPLE_ROWS * 6 + 3 + 1) * 5
    assert read_often.sampling() == read_once.sampling()
    assert (read_once.sampling().rows_seen, read_once.sampling().rows_binned) == (seen, binned)
    assert read_once.report().sampling.fraction == pytest.approx(binned / seen)


def test_large_sampled_requests_do_not_pile_up_unbinned(
    numeric_profile: tuple[ReferenceProfile, FeatureSchema],
) -> None:
    """A few rows binned of each big request would take many requests to reach FLUSH_ROWS:
    pending requests are folded in once they hold FLUSH_SEEN_ROWS rows seen."""
    profile, schema = numeric_profile
    monitor = DriftMonitor(profile, feature_names=schema.names, window=100, sample_rows=2)
    batch = Batch.from_matrix(schema, _numeric_rows(np.random.default_rng(2), 1000, profile))
    for _ in range(50):
        monitor.observe(batch, np.zeros(1000))
        assert sum(len(p) for _, p in monitor._pending) < FLUSH_SEEN_ROWS
    assert monitor.sampling().rows_binned == 100


def test_sample_rows_must_not_be_negative(mixed_profile: ReferenceProfile) -> None:
    with pytest.raises(ValueError, match="sample_rows"):
        DriftMonitor(mixed_profile, feature_names=MIXED_ORDER, window=10, sample_rows=-1)


def _stream_requests(
    monitor: DriftMonitor, schema: FeatureSchema, frame: pd.DataFrame, rows: int
) -> None:
    """The frame in requests of `rows` rows, as validated batches of these columns would be."""
    columns = {n: frame[n].to_numpy() for n in schema.names}
    predictions = _scenario_model(frame)
    for start in range(0, len(frame), rows):
        part = {n: column[start : start + rows] for n, column in columns.items()}
        size = len(part[schema.names[0]])
        batch = Batch(schema=schema, columns=part, rows=size)
        monitor.observe(batch, predictions[start : start + rows])


def test_the_drift_test_on_sampled_windows_keeps_its_false_alarm_rate_and_sees_a_shift(
    scenario: tuple[ReferenceProfile, FeatureSchema, pd.DataFrame],
) -> None:
    """Windows of 300 rows binned from 64-row requests (16 of each): sampling picks rows
    whatever their values, so the rows binned are as random as the rows seen, and the test
    at alpha 0.01 flags about 1 % of windows without drift."""
    profile, schema, reference = scenario
    monitor = DriftMonitor(profile, feature_names=schema.names, window=300, seed=1)
    rng = np.random.default_rng(31)
    windows, alarms = 300, 0
    for _ in range(windows):
        _stream_requests(monitor, schema, _scenario_rows(rng, 19 * 64), 64)  # 19 x 16 binned
        features, _ = monitor.test()
        alarms += features.drifted
    assert monitor.sampling().fraction == pytest.approx(0.25)
    # Binomial(300, 0.01): P(X >= 9) < 0.002.
    assert alarms <= 8, alarms
    shifted = _scenario_rows(rng, 19 * 64)
    shifted["score"] += 0.5 * reference["score"].std()
    _stream_requests(monitor, schema, shifted, 64)
    features, _ = monitor.test()
    assert features.significant == ("score",)
