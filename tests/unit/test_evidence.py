"""The sequential tests of canaryml_operator.evidence: known answers, and seeded simulations
with many looks in which the error rates at the boundary stay under alpha and beta."""

from __future__ import annotations

import math

import numpy as np
import pytest
from canaryml_operator import evidence as ev

LOOKS = 100  # analyses per simulated step
PATHS = 4000  # simulated steps per case
LEVEL = 0.05  # alpha and beta in the simulations: large enough that a breach shows in 4000 paths
# A breach must exceed the level by 3 standard errors of a binomial proportion at the level.
MARGIN = 3 * math.sqrt(LEVEL * (1 - LEVEL) / PATHS)


def test_a_clear_failure_a_clear_pass_and_too_few_requests() -> None:
    assert ev.check_bound(30, 100, 0.05).decision is ev.Decision.FAIL
    assert ev.check_bound(0, 2000, 0.05).decision is ev.Decision.PASS
    few = ev.check_bound(3, 40, 0.05)  # 7.5 %: over the bound, but 3 errors prove nothing
    assert few.decision is ev.Decision.UNDECIDED
    assert few.estimate == pytest.approx(0.075)
    assert few.evidence.worse < few.evidence.worse_needed
    assert few.requests_needed is not None and few.requests_needed > 0


def test_the_requests_needed_are_roughly_enough() -> None:
    few = ev.check_bound(3, 40, 0.05)
    assert few.requests_needed is not None
    grown = 40 + few.requests_needed
    assert ev.check_bound(0.075 * grown, grown, 0.05).decision is ev.Decision.FAIL
    assert ev.check_bound(0.075 * grown / 1.2, grown / 1.2, 0.05).decision is (
        ev.Decision.UNDECIDED
    )
    # A rate on the bound never decides on the expected path.
    assert ev.check_bound(5, 100, 0.05).requests_needed is None


def test_decisions_are_monotone_in_the_errors() -> None:
    errors = np.arange(0, 201)
    codes = ev.bound_decisions(errors, 1000, 0.1)
    assert np.all(np.diff(codes) <= 0)  # PASS (1), then UNDECIDED (0), then FAIL (-1)
    assert codes[0] == ev.PASS and codes[-1] == ev.FAIL
    assert np.all(np.diff(ev.log_evidence_above(errors, 1000, 0.1)) > 0)
    compared = ev.comparison_decisions(errors, 1000, 100, 10_000, ev.Allowance(ratio=2))
    assert np.all(np.diff(compared) <= 0)
    assert compared[0] == ev.PASS and compared[-1] == ev.FAIL


def test_a_canary_against_stable() -> None:
    allowance = ev.Allowance(ratio=2, increase=0.01)
    bad = ev.compare_rates(ev.Counts(12, 60), ev.Counts(5, 540), allowance)
    assert bad.decision is ev.Decision.FAIL
    assert bad.ratio == pytest.approx((12 / 60) / (5 / 540))
    assert bad.ratio_interval.low > 2
    good = ev.compare_rates(ev.Counts(100, 10_000), ev.Counts(1000, 100_000), allowance)
    assert good.decision is ev.Decision.PASS
    assert 1.0 in good.ratio_interval and 0.0 in good.increase_interval
    early = ev.compare_rates(ev.Counts(1, 100), ev.Counts(10, 1000), allowance)
    assert early.decision is ev.Decision.UNDECIDED
    assert early.requests_needed is not None and early.requests_needed > 0


def test_a_bad_hour_for_every_track_is_not_the_canarys_fault() -> None:
    # 8 % errors fail an absolute 5 % bound, but the canary is no worse than stable.
    assert ev.check_bound(400, 5000, 0.05).decision is ev.Decision.FAIL
    same = ev.compare_rates(ev.Counts(400, 5000), ev.Counts(4000, 50_000), ev.Allowance(ratio=2))
    assert same.decision is ev.Decision.PASS


def test_no_errors_anywhere_passes_with_an_increase_allowed_and_never_on_a_ratio_alone() -> None:
    with_increase = ev.Allowance(ratio=2, increase=0.01)
    early = ev.compare_rates(ev.Counts(0, 100), ev.Counts(0, 1000), with_increase)
    assert early.decision is ev.Decision.UNDECIDED
    assert early.requests_needed is not None
    later = 100 + early.requests_needed
    enough = ev.compare_rates(ev.Counts(0, later), ev.Counts(0, 10 * later), with_increase)
    assert enough.decision is ev.Decision.PASS
    ratio_only = ev.compare_rates(ev.Counts(0, 10**6), ev.Counts(0, 10**7), ev.Allowance(ratio=2))
    assert ratio_only.decision is ev.Decision.UNDECIDED
    assert ratio_only.requests_needed is None  # no events: a ratio is never settled


def test_an_allowance_needs_a_part() -> None:
    with pytest.raises(ValueError):
        ev.Allowance()
    with pytest.raises(ValueError):
        ev.Allowance(ratio=0)


def test_slow_requests_from_histogram_buckets() -> None:
    buckets = {0.01: 50.0, 0.05: 900.0, 0.1: 985.0, 0.5: 998.0, math.inf: 1000.0}
    assert ev.slow_counts(buckets, 0.1) == ev.Counts(events=15.0, requests=1000.0)
    assert ev.latency_boundary(buckets, quantile=0.99) == 0.5  # 985 < 990 <= 998
    assert ev.latency_boundary(buckets, quantile=0.95) == 0.1
    assert ev.latency_boundary(buckets, at_least=0.07) == 0.1
    assert ev.latency_boundary(buckets, at_least=2.0) is None
    assert ev.latency_boundary({0.1: 0.0, math.inf: 0.0}) is None
    with pytest.raises(ValueError):
        ev.slow_counts(buckets, 0.07)
    with pytest.raises(ValueError):
        ev.slow_counts({0.1: 1.0}, 0.1)


def _paths(rng: np.random.Generator, rate: float, per_look: int) -> np.ndarray:
    """Cumulative errors at each look (rows) of PATHS independent steps (columns)."""
    return np.cumsum(rng.binomial(per_look, rate, size=(LOOKS, PATHS)), axis=0)


def _ever(codes_at_looks: list[np.ndarray], code: np.int8) -> float:
    return float(np.mean(np.any(np.stack(codes_at_looks) == code, axis=0)))


def test_the_interval_holds_the_truth_at_every_look() -> None:
    rng = np.random.default_rng(7)
    rate, per_look = 0.03, 40
    errors = _paths(rng, rate, per_look)
    missed = np.zeros(PATHS, dtype=bool)
    for look in range(LOOKS):
        low, high = ev.confidence_bounds(errors[look], per_look * (look + 1), LEVEL)
        missed |= (rate < low) | (rate > high)
    assert missed.mean() <= LEVEL + MARGIN


def test_at_the_bound_false_fails_and_false_passes_stay_under_their_levels() -> None:
    rng = np.random.default_rng(11)
    bound, per_look = 0.05, 50
    errors = _paths(rng, bound, per_look)
    requests = per_look * np.arange(1, LOOKS + 1)
    codes = [
        ev.bound_decisions(errors[i], requests[i], bound, alpha=LEVEL, beta=LEVEL)
        for i in range(LOOKS)
    ]
    assert _ever(codes, ev.FAIL) <= LEVEL + MARGIN
    assert _ever(codes, ev.PASS) <= LEVEL + MARGIN
    # The same paths through a fixed-sample one-sided z-test at the same level, looked at as
    # often: its false failures are several times the level (why a sequential test is needed).
    estimate = errors / requests[:, None]
    z = (estimate - bound) / np.sqrt(bound * (1 - bound) / requests[:, None])
    assert np.mean(np.any(z > 1.645, axis=0)) > 2 * LEVEL


@pytest.mark.parametrize(
    ("allowance", "canary_rate"),
    [(ev.Allowance(ratio=2), 0.04), (ev.Allowance(increase=0.01), 0.03)],
    ids=["ratio", "increase"],
)
def test_a_canary_on_the_allowance_fails_and_passes_rarely(
    allowance: ev.Allowance, canary_rate: float
) -> None:
    rng = np.random.default_rng(13)
    stable_rate, canary_per_look, stable_per_look = 0.02, 20, 80
    canary = _paths(rng, canary_rate, canary_per_look)
    stable = _paths(rng, stable_rate, stable_per_look)
    codes = [
        ev.comparison_decisions(
            canary[i],
            canary_per_look * (i + 1),
            stable[i],
            stable_per_look * (i + 1),
            allowance,
            alpha=LEVEL,
            beta=LEVEL,
        )
        for i in range(LOOKS)
    ]
    assert _ever(codes, ev.FAIL) <= LEVEL + MARGIN
    assert _ever(codes, ev.PASS) <= LEVEL + MARGIN


def test_all_of_fails_on_any_fail_and_passes_only_when_all_pass() -> None:
    fail, undecided, passed = ev.FAIL, ev.UNDECIDED, ev.PASS
    first = np.array([passed, passed, undecided, fail, passed], dtype=np.int8)
    second = np.array([passed, undecided, undecided, passed, fail], dtype=np.int8)
    assert ev.all_of(first, second).tolist() == [passed, undecided, undecided, fail, fail]


# --- the canary's predictions against stable's (compare_shares) --------------------------------


def test_predictions_like_stables_pass_with_enough_rows_and_a_shifted_class_fails() -> None:
    stable = {"0": 33_000.0, "1": 33_500.0, "2": 33_500.0}
    like = ev.compare_shares({"0": 3300, "1": 3400, "2": 3300}, stable, 0.05)
    assert like.decision is ev.Decision.PASS and like.requests_needed == 0
    assert all(-0.05 < b.interval.low <= b.interval.high < 0.05 for b in like.bins)
    # Class "0" predicted 20 points more often: decided on a thousand rows, and named first.
    shifted = ev.compare_shares({"0": 530, "1": 140, "2": 330}, stable, 0.05)
    assert shifted.decision is ev.Decision.FAIL
    worst = shifted.worst
    assert worst is not None and worst.bin == "0"
    assert worst.difference == pytest.approx(0.2)
    assert 0.05 < worst.interval.low < 0.2 < worst.interval.high
    # A class the canary never predicts, which stable predicts a third of the time, fails too.
    assert ev.compare_shares({"0": 500, "1": 500}, stable, 0.05).decision is ev.Decision.FAIL


def test_few_rows_are_not_sure_yet_and_say_roughly_how_many_more() -> None:
    stable = {"0": 3300.0, "1": 3350.0, "2": 3350.0}
    few = ev.compare_shares({"0": 33, "1": 34, "2": 33}, stable, 0.05)
    assert few.decision is ev.Decision.UNDECIDED
    assert few.requests_needed is not None and few.requests_needed > 100
    # The counts grown by that many (stable alike, at the same shares) decide.
    grow = (100 + few.requests_needed) / 100
    grown = ev.compare_shares(
        {k: v * grow for k, v in {"0": 33, "1": 34, "2": 33}.items()},
        {k: v * grow for k, v in stable.items()},
        0.05,
    )
    assert grown.decision is ev.Decision.PASS
    # No rows, or no bins, decide nothing; a share exactly on the shift never decides.
    assert ev.compare_shares({}, {}, 0.05).decision is ev.Decision.UNDECIDED
    assert ev.compare_shares({"0": 0}, {"0": 10}, 0.05).requests_needed is None
    with pytest.raises(ValueError):
        ev.compare_shares({"0": 1}, {"0": 1}, 0)


def test_a_canary_exactly_at_the_shift_fails_and_passes_rarely() -> None:
    """Every look of every path; the canary predicts class 0 five points more often than
    stable (0.55 against 0.50), exactly the allowed shift: false Fails and false Passes stay
    under their levels (Bonferroni makes them far rarer: none in these paths)."""
    rng = np.random.default_rng(17)
    paths, canary_per_look, stable_per_look = 1000, 20, 80
    stable_shares, canary_shares = [0.5, 0.3, 0.2], [0.55, 0.25, 0.2]
    canary = np.cumsum(rng.multinomial(canary_per_look, canary_shares, (LOOKS, paths)), axis=0)
    stable = np.cumsum(rng.multinomial(stable_per_look, stable_shares, (LOOKS, paths)), axis=0)
    codes = ev.share_decisions(canary, stable, 0.05, alpha=LEVEL, beta=LEVEL)  # (looks, paths)
    margin = 3 * math.sqrt(LEVEL * (1 - LEVEL) / paths)
    assert float(np.mean(np.any(codes == ev.FAIL, axis=0))) <= LEVEL + margin
    assert float(np.mean(np.any(codes == ev.PASS, axis=0))) <= LEVEL + margin
    # The same canary far from the shift (20 points) is caught on almost every path.
    shifted = np.cumsum(rng.multinomial(canary_per_look, [0.7, 0.1, 0.2], (LOOKS, paths)), axis=0)
    caught = ev.share_decisions(shifted, stable, 0.05, alpha=LEVEL, beta=LEVEL)
    assert float(np.mean(np.any(caught == ev.FAIL, axis=0))) > 0.99
