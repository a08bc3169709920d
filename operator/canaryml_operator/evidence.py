"""Sequential decisions on error rates and latency: always-valid tests on cumulative counts.

Each analysis asks, from every request since the step began, whether there is evidence that a
rate is worse than allowed (Fail), evidence that it is not (Pass), or neither yet (Undecided).
The tests are mixture martingales: under the hypothesis a decision would wrongly reject, the
mixture likelihood ratio is a nonnegative supermartingale with mean at most 1, so by Ville's
inequality it ever reaches 1/alpha with probability at most alpha, however often it is looked
at. A fixed-sample test looked at every 10 s has no such guarantee: its false-alarm rate grows
with every look. docs/judgment.md ("Sequential decisions") argues the choices.

- `check_bound`: errors x of n requests against an absolute bound b (`maxErrorRate`). Fail
  when the mixture over rates above b (a Beta prior truncated to (b, 1)) against the boundary
  reaches 1/alpha; Pass when the mixture over rates below b reaches 1/beta. The likelihood
  ratio of a rate q > b against b has mean at most 1 under every rate <= b, so the first test
  holds alpha on the whole composite hypothesis "rate <= b", and the second beta on "rate >= b".
- `compare_rates`: the canary's rate against the stable track's on the same traffic, with an
  allowance `Allowance(ratio=R, increase=d)`: the canary is within it when its rate is at most
  max(R * stable, stable + d). The ratio part conditions on the events: with the traffic split at
  random, each event (an error, a slow request) is the canary's with probability
  theta = n_c r_c / (n_c r_c + n_s r_s), so "r_c <= R r_s" is the one-sample Bernoulli
  hypothesis theta <= n_c R / (n_c R + n_s) on the events alone. The increase part compares
  confidence sequences of the two rates (the canary's lower bound above the stable's upper
  bound by more than d). With no events at all the ratio part says nothing, and the increase
  lets a healthy canary pass once its upper bound is within d of the stable's lower bound.
- `slow_counts`, `latency_boundary`: latency as the fraction of requests slower than a bucket
  boundary of the Prometheus histograms, compared with the same `compare_rates`.
- `compare_shares`: the canary's predictions against the stable track's on the same traffic,
  bin by bin (a classifier's classes): the share of each bin in each track's rows, each with a
  confidence sequence at level alpha / (2K) over K bins (Bonferroni over the bins and the two
  tracks), so that all 2K hold at once with probability 1 - alpha. The difference of shares of
  a bin lies in [low_c - high_s, high_c - low_s]. Fail when for some bin that interval lies
  wholly outside [-shift, +shift], Pass (at beta / (2K)) when for every bin it lies wholly
  inside.
- `check_mean`, `compare_means`: a regressor's mean absolute error on labels (from the labels,
  the sum of |e| and the sum of e^2) against a bound, or against the stable track's with a
  `MeanAllowance`. Errors are unbounded, so no test above applies: these read an asymptotic
  confidence sequence for a mean with the empirical variance (Waudby-Smith et al.'s, see
  `mean_margin`), valid as the labels grow. Fail when the canary's low end is above the bound
  (or, against stable, above what the allowance grants from stable's high end, each track's
  sequence at alpha / 2), Pass when its high end is below.

The vectorised forms (`bound_decisions`, `comparison_decisions`) take arrays of counts and
return decision codes; the scalar forms call them and add the estimate, the interval (a
confidence sequence: valid at every look at once), the evidence and a rough number of further
requests a decision needs. Everything is a pure function of its arguments.

Numerics: the mixtures are closed forms in `scipy.special.betaln` and the regularised
incomplete beta functions; the bounds of the confidence sequences are roots found by
`scipy.optimize.elementwise.find_root`. Written by hand here: only the formulas themselves.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special
from scipy.optimize import elementwise

Array = NDArray[np.float64]
Codes = NDArray[np.int8]

ALPHA: Final = 0.01  # false Fail (false rollback) probability at the boundary, over all looks
BETA: Final = 0.01  # false Pass (missed rollback) probability at the boundary, over all looks
# The mixing prior of the tests is Beta(k b, k (1 - b)), centred on the boundary b and truncated
# to the side of the alternative. k is its weight in pseudo-requests: small k spreads it over
# large departures (decides fast on gross failures), large k over small ones.
PRIOR_WEIGHT: Final = 10.0
# The prior of the confidence sequences (the intervals): Jeffreys' Beta(1/2, 1/2), whose density
# rises towards 0, where error rates live. Any prior keeps the coverage; it only sets the width.
INTERVAL_PRIOR: Final = (0.5, 0.5)

FAIL: Final = np.int8(-1)
UNDECIDED: Final = np.int8(0)
PASS: Final = np.int8(1)

_TINY: Final = 1e-300  # the open ends of (0, 1) for root brackets
_GROWTH: Final = np.geomspace(1.0, 1e6, 121)  # request multiples tried by `requests_needed`
_ROOT_TOLERANCES: Final = {"xatol": 1e-12, "xrtol": 1e-7}  # rates to 7 digits


class Decision(enum.Enum):
    PASS = "Pass"
    FAIL = "Fail"
    UNDECIDED = "Undecided"


_DECISIONS: Final = {int(PASS): Decision.PASS, int(FAIL): Decision.FAIL}


@dataclass(frozen=True)
class Counts:
    """Events (errors, slow requests) out of all requests of one track since the step began."""

    events: float
    requests: float

    @property
    def rate(self) -> float | None:
        return self.events / self.requests if self.requests > 0 else None


@dataclass(frozen=True)
class Allowance:
    """The largest acceptable worsening of the canary against stable: its rate may reach
    max(ratio * stable, stable + increase), either part optional (at least one given)."""

    ratio: float | None = None
    increase: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.increase is None:
            raise ValueError("an allowance needs a ratio, an increase or both")
        if self.ratio is not None and not self.ratio > 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}")
        if self.increase is not None and not 0 <= self.increase < 1:
            raise ValueError(f"increase must be in [0, 1), got {self.increase}")


@dataclass(frozen=True)
class Interval:
    low: float
    high: float

    def __contains__(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Evidence:
    """Mixture martingale values: `worse` for "worse than allowed" (Fail when it reaches
    `worse_needed` = 1/alpha), `within` for "within the allowance" (Pass at `within_needed`)."""

    worse: float
    worse_needed: float
    within: float
    within_needed: float


@dataclass(frozen=True)
class BoundCheck:
    """One rate against an absolute bound."""

    decision: Decision
    estimate: float | None  # events / requests
    interval: Interval  # confidence sequence for the rate at level alpha
    evidence: Evidence
    counts: Counts
    bound: float
    requests_needed: int | None  # more requests a decision roughly needs; None: not foreseeable


@dataclass(frozen=True)
class Comparison:
    """The canary's rate against the stable track's, with an allowance."""

    decision: Decision
    canary: Counts
    stable: Counts
    ratio: float | None  # canary rate / stable rate
    ratio_interval: Interval  # from the events' split; [0, inf] before any event
    increase: float | None  # canary rate - stable rate
    increase_interval: Interval  # from the two rates' confidence sequences
    evidence: Evidence  # of the ratio part (the increase part is read off its interval)
    allowance: Allowance
    requests_needed: int | None  # more canary requests (stable growing alike); None: unforeseeable


def _floats(value: ArrayLike) -> Array:
    return np.asarray(value, dtype=np.float64)


def log_evidence_above(events: ArrayLike, requests: ArrayLike, bound: ArrayLike) -> Array:
    """log of the mixture martingale for "rate > bound": the likelihood ratio of a rate q against
    `bound`, averaged over q ~ Beta(k b, k (1 - b)) truncated to (b, 1). -inf where the bound is
    not inside (0, 1) (nothing can be tested)."""
    return _log_mixture(_floats(events), _floats(requests), _floats(bound), above=True)


def log_evidence_below(events: ArrayLike, requests: ArrayLike, bound: ArrayLike) -> Array:
    """log of the mixture martingale for "rate < bound" (the prior truncated to (0, b))."""
    return _log_mixture(_floats(events), _floats(requests), _floats(bound), above=False)


def _log_mixture(x: Array, n: Array, b: Array, *, above: bool) -> Array:
    valid = (b > 0) & (b < 1)
    b = np.where(valid, b, 0.5)
    a, c = PRIOR_WEIGHT * b, PRIOR_WEIGHT * (1 - b)
    # The prior's and the posterior's mass on the alternative's side of b.
    side = special.betaincc if above else special.betainc
    with np.errstate(divide="ignore"):
        log_mass = np.log(side(x + a, n - x + c, b)) - np.log(side(a, c, b))
    value = (
        special.betaln(x + a, n - x + c)
        - special.betaln(a, c)
        + log_mass
        - x * np.log(b)
        - (n - x) * np.log1p(-b)
    )
    return np.where(valid, value, -np.inf)


def confidence_bounds(
    events: ArrayLike, requests: ArrayLike, alpha: float = ALPHA
) -> tuple[Array, Array]:
    """The confidence sequence for a rate: the rates q at which the mixture martingale of the
    likelihood against q (prior INTERVAL_PRIOR) stays below 1/alpha. It covers the true rate at
    every look at once with probability at least 1 - alpha, and each end alone errs on its side
    with probability at most alpha. Returns (low, high); [0, 1] before any request."""
    return (
        confidence_bound(events, requests, alpha, upper=False),
        confidence_bound(events, requests, alpha, upper=True),
    )


def confidence_bound(
    events: ArrayLike, requests: ArrayLike, alpha: float = ALPHA, *, upper: bool
) -> Array:
    """One end of `confidence_bounds`: alone, a one-sided confidence sequence at level alpha."""
    x, n = np.broadcast_arrays(_floats(events), _floats(requests))
    a, c = INTERVAL_PRIOR
    # q is inside when x log q + (n - x) log(1 - q) >= log_floor; the MLE always is.
    log_floor = special.betaln(x + a, n - x + c) - special.betaln(a, c) - math.log(1 / alpha)
    estimate = np.clip(np.divide(x, n, out=np.full(x.shape, 0.5), where=n > 0), _TINY, 1 - _TINY)

    def excess(q: Array, x: Array, n: Array, floor: Array) -> Array:
        return x * np.log(q) + (n - x) * np.log1p(-q) - floor

    end = np.full(x.shape, 1 - 1e-16 if upper else _TINY)
    bracket = (estimate, end) if upper else (end, estimate)
    with np.errstate(divide="ignore", invalid="ignore"):
        root = elementwise.find_root(
            excess, bracket, args=(x, n, log_floor), tolerances=_ROOT_TOLERANCES
        ).x
    if upper:
        return np.where((x >= n) | (n <= 0), 1.0, root)
    return np.where((x <= 0) | (n <= 0), 0.0, root)


def bound_decisions(
    events: ArrayLike,
    requests: ArrayLike,
    bound: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> Codes:
    """FAIL, PASS or UNDECIDED for each (events, requests) against `bound`."""
    fail = log_evidence_above(events, requests, bound) >= math.log(1 / alpha)
    passed = log_evidence_below(events, requests, bound) >= math.log(1 / beta)
    return _codes(fail, passed)


def _codes(fail: NDArray[np.bool_], passed: NDArray[np.bool_]) -> Codes:
    # Both at once needs a rate above and below the bound: a coincidence of probability
    # <= alpha; Fail wins, as a rollback is the safe side.
    return np.where(fail, FAIL, np.where(passed, PASS, UNDECIDED)).astype(np.int8)


def all_of(*checks: Codes) -> Codes:
    """Several checks of the same rollouts as one decision: Fail when any fails (a rollback is
    the safe side), Pass when all pass, otherwise Undecided."""
    stacked = np.stack(np.broadcast_arrays(*checks))
    fail = (stacked == FAIL).any(axis=0)
    passed = (stacked == PASS).all(axis=0)
    return _codes(fail, passed)


def _event_boundary(canary_requests: Array, stable_requests: Array, ratio: float) -> Array:
    """theta at the ratio boundary: the canary's share of the events if r_c = ratio * r_s."""
    weighted = canary_requests * ratio
    total = weighted + stable_requests
    return np.divide(weighted, total, out=np.zeros(total.shape), where=total > 0)


def comparison_decisions(
    canary_events: ArrayLike,
    canary_requests: ArrayLike,
    stable_events: ArrayLike,
    stable_requests: ArrayLike,
    allowance: Allowance,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> Codes:
    """FAIL, PASS or UNDECIDED for each canary/stable pair of counts.

    Fail needs evidence against every part of the allowance (the canary worse than both
    R * stable and stable + d), so it holds alpha: whichever part the truth satisfies, that part's
    test alone rejects with probability <= alpha. Pass needs evidence for either part, so each
    part gets half of beta (a union bound) when both are given."""
    xc, nc, xs, ns = (
        _floats(v) for v in (canary_events, canary_requests, stable_events, stable_requests)
    )
    both = allowance.ratio is not None and allowance.increase is not None
    pass_level = beta / 2 if both else beta
    fail = np.ones(np.broadcast(xc, nc, xs, ns).shape, dtype=bool)
    passed = np.zeros_like(fail)
    if allowance.ratio is not None:
        theta = _event_boundary(nc, ns, allowance.ratio)
        events = xc + xs
        fail &= log_evidence_above(xc, events, theta) >= math.log(1 / alpha)
        passed |= log_evidence_below(xc, events, theta) >= math.log(1 / pass_level)
    if allowance.increase is not None:
        counts = (xc, nc, xs, ns)
        # nan (not computed: the answer is already settled there) compares False.
        with np.errstate(invalid="ignore"):
            fail &= _increase_bound(fail, *counts, alpha, upper=False) > allowance.increase
            passed |= _increase_bound(~passed, *counts, pass_level, upper=True) < allowance.increase
    return _codes(fail, passed)


def _increase_bound(
    where: NDArray[np.bool_],
    xc: Array,
    nc: Array,
    xs: Array,
    ns: Array,
    level: float,
    *,
    upper: bool,
) -> Array:
    """The increase's upper end (the canary's upper end minus the stable's lower end) or its
    lower end, from one-sided confidence sequences at level / 2 each, so that both hold at once
    with probability 1 - level. Computed where `where` holds, nan elsewhere."""

    def pick(value: Array) -> Array:
        return np.broadcast_to(value, where.shape)[where]

    bound = np.full(where.shape, np.nan)
    bound[where] = confidence_bound(pick(xc), pick(nc), level / 2, upper=upper) - (
        confidence_bound(pick(xs), pick(ns), level / 2, upper=not upper)
    )
    return bound


def _first_decided(codes: Codes) -> int | None:
    decided = np.flatnonzero(codes != UNDECIDED)
    return int(decided[0]) if decided.size else None


def _needed(requests: float, codes: Codes) -> int | None:
    """Further requests until the first decided multiple of the current counts."""
    first = _first_decided(codes)
    if first is None:
        return None
    return math.ceil(requests * (float(_GROWTH[first]) - 1))


def check_bound(
    events: float,
    requests: float,
    bound: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> BoundCheck:
    """`events` of `requests` against the absolute bound `bound` (a rate in (0, 1))."""
    if not 0 < bound < 1:
        raise ValueError(f"bound must be in (0, 1), got {bound}")
    counts = Counts(events, requests)
    code = bound_decisions(events, requests, bound, alpha=alpha, beta=beta)
    low, high = confidence_bounds(events, requests, alpha)
    # Requests needed: the counts grown at the current rate until a decision is reached (the
    # expected path, so a rough figure; none at a rate exactly on the bound).
    needed = None
    if code == UNDECIDED and requests > 0:
        grown = requests * _GROWTH
        needed = _needed(
            requests,
            bound_decisions(grown * events / requests, grown, bound, alpha=alpha, beta=beta),
        )
    return BoundCheck(
        decision=_DECISIONS.get(int(code), Decision.UNDECIDED),
        estimate=counts.rate,
        interval=Interval(float(low), float(high)),
        evidence=Evidence(
            worse=float(np.exp(log_evidence_above(events, requests, bound))),
            worse_needed=1 / alpha,
            within=float(np.exp(log_evidence_below(events, requests, bound))),
            within_needed=1 / beta,
        ),
        counts=counts,
        bound=bound,
        requests_needed=0 if code != UNDECIDED else needed,
    )


def compare_rates(
    canary: Counts,
    stable: Counts,
    allowance: Allowance,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> Comparison:
    """The canary against the stable track on the same traffic since the step began."""
    counts = (canary.events, canary.requests, stable.events, stable.requests)
    code = comparison_decisions(*counts, allowance, alpha=alpha, beta=beta)
    # The ratio interval maps the confidence sequence of theta (the canary's share of events):
    # ratio = theta / (1 - theta) * n_s / n_c, increasing in theta.
    theta_low, theta_high = confidence_bounds(canary.events, canary.events + stable.events, alpha)
    scale = stable.requests / canary.requests if canary.requests > 0 else math.inf
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio_low = float(theta_low / (1 - theta_low) * scale)
        ratio_high = float(theta_high / (1 - theta_high) * scale)
    if canary.events + stable.events <= 0 or canary.requests <= 0 or stable.requests <= 0:
        ratio_low, ratio_high = 0.0, math.inf
    canary_low, canary_high = confidence_bounds(canary.events, canary.requests, alpha / 2)
    stable_low, stable_high = confidence_bounds(stable.events, stable.requests, alpha / 2)
    theta = _event_boundary(
        _floats(canary.requests), _floats(stable.requests), allowance.ratio or 1.0
    )
    events = canary.events + stable.events
    worse = float(np.exp(log_evidence_above(canary.events, events, theta)))
    within = float(np.exp(log_evidence_below(canary.events, events, theta)))
    if allowance.ratio is None:
        worse, within = math.nan, math.nan
    needed = None
    if code == UNDECIDED and canary.requests > 0 and stable.requests > 0:
        xc, nc, xs, ns = (_GROWTH * value for value in counts)
        needed = _needed(
            canary.requests,
            comparison_decisions(xc, nc, xs, ns, allowance, alpha=alpha, beta=beta),
        )
    canary_rate, stable_rate = canary.rate, stable.rate
    return Comparison(
        decision=_DECISIONS.get(int(code), Decision.UNDECIDED),
        canary=canary,
        stable=stable,
        ratio=canary_rate / stable_rate if canary_rate is not None and stable_rate else None,
        ratio_interval=Interval(ratio_low, ratio_high),
        increase=canary_rate - stable_rate
        if canary_rate is not None and stable_rate is not None
        else None,
        increase_interval=Interval(
            float(canary_low - stable_high), float(canary_high - stable_low)
        ),
        evidence=Evidence(
            worse=worse,
            worse_needed=1 / alpha,
            within=within,
            within_needed=1 / (beta / 2 if allowance.increase is not None else beta),
        ),
        allowance=allowance,
        requests_needed=0 if code != UNDECIDED else needed,
    )


@dataclass(frozen=True)
class BinShift:
    """One bin's share of the predictions, the canary's against stable's."""

    bin: str
    canary: Counts  # rows predicted in the bin out of all the canary's rows
    stable: Counts
    difference: float | None  # canary share - stable share
    interval: Interval  # of the difference, at alpha (all bins' at once)


@dataclass(frozen=True)
class ShareComparison:
    """The canary's prediction shares against the stable track's, bin by bin."""

    decision: Decision
    bins: tuple[BinShift, ...]  # worst first: beyond the shift, then largest |difference|
    shift: float  # the largest allowed |difference| of any bin's shares
    requests_needed: int | None  # more canary rows (stable growing alike); None: unforeseeable

    @property
    def worst(self) -> BinShift | None:
        return self.bins[0] if self.bins else None


def _share_intervals(xc: Array, xs: Array, level: float) -> tuple[Array, Array]:
    """The difference of shares per bin (last axis): [low_c - high_s, high_c - low_s], each
    share's confidence sequence at `level`."""
    nc = np.broadcast_to(xc.sum(axis=-1, keepdims=True), xc.shape)
    ns = np.broadcast_to(xs.sum(axis=-1, keepdims=True), xs.shape)
    canary_low, canary_high = confidence_bounds(xc, nc, level)
    stable_low, stable_high = confidence_bounds(xs, ns, level)
    return canary_low - stable_high, canary_high - stable_low


def share_decisions(
    canary: ArrayLike,
    stable: ArrayLike,
    shift: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> Codes:
    """FAIL, PASS or UNDECIDED for rows predicted per bin (the last axis, the same bins for
    both tracks): Fail when some bin's difference of shares is, with evidence, beyond `shift`
    either way; Pass when every bin's is within it. No bins decide nothing."""
    xc, xs = np.broadcast_arrays(_floats(canary), _floats(stable))
    bins = xc.shape[-1]
    if bins == 0:
        return np.full(xc.shape[:-1], UNDECIDED, dtype=np.int8)
    low, high = _share_intervals(xc, xs, alpha / (2 * bins))
    fail = np.asarray(((low > shift) | (high < -shift)).any(axis=-1))
    low, high = _share_intervals(xc, xs, beta / (2 * bins))
    passed = np.asarray(((low > -shift) & (high < shift)).all(axis=-1))
    return _codes(fail, passed)


def compare_shares(
    canary: Mapping[str, float],
    stable: Mapping[str, float],
    shift: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
) -> ShareComparison:
    """The canary's rows predicted per bin against the stable track's since the step began,
    each bin's share allowed to differ by at most `shift` (in (0, 1]) either way. A bin one
    track lacks has 0 rows there."""
    if not 0 < shift <= 1:
        raise ValueError(f"shift must be in (0, 1], got {shift}")
    names = sorted(set(canary) | set(stable))
    xc = np.array([max(float(canary.get(name, 0.0)), 0.0) for name in names])
    xs = np.array([max(float(stable.get(name, 0.0)), 0.0) for name in names])
    code = share_decisions(xc, xs, shift, alpha=alpha, beta=beta)
    nc, ns = float(xc.sum()), float(xs.sum())
    if names:
        low, high = _share_intervals(xc, xs, alpha / (2 * len(names)))
    else:
        low = high = np.zeros(0)
    shifts = []
    for k, name in enumerate(names):
        counts_c, counts_s = Counts(float(xc[k]), nc), Counts(float(xs[k]), ns)
        rate_c, rate_s = counts_c.rate, counts_s.rate
        difference = rate_c - rate_s if rate_c is not None and rate_s is not None else None
        shifts.append(
            BinShift(name, counts_c, counts_s, difference, Interval(float(low[k]), float(high[k])))
        )
    # Bins shown to be beyond the shift first, then the most different; before any data, the
    # interval's widest excursion.
    shifts.sort(
        key=lambda b: (
            not (b.interval.low > shift or b.interval.high < -shift),
            -(abs(b.difference) if b.difference is not None else 0.0),
            -max(b.interval.low, -b.interval.high),
            b.bin,
        )
    )
    needed = None
    if code == UNDECIDED and names and nc > 0 and ns > 0:
        grown = _GROWTH[:, None]
        needed = _needed(nc, share_decisions(grown * xc, grown * xs, shift, alpha=alpha, beta=beta))
    return ShareComparison(
        decision=_DECISIONS.get(int(code), Decision.UNDECIDED),
        bins=tuple(shifts),
        shift=shift,
        requests_needed=0 if code != UNDECIDED else needed,
    )


def slow_counts(buckets: Mapping[float, float], boundary: float) -> Counts:
    """(requests slower than `boundary`, all requests) from cumulative histogram buckets, as
    Prometheus gives them: upper bound `le` -> requests at or below it, +Inf the total. The
    boundary must be one of the bucket bounds: between bounds the split is unknown."""
    if math.inf not in buckets:
        raise ValueError("histogram buckets need the +Inf bucket (the total)")
    if boundary not in buckets:
        raise ValueError(f"{boundary} is not a bucket bound: {sorted(buckets)}")
    total = buckets[math.inf]
    return Counts(events=max(total - buckets[boundary], 0.0), requests=total)


def latency_boundary(
    stable_buckets: Mapping[float, float],
    *,
    quantile: float = 0.99,
    at_least: float | None = None,
) -> float | None:
    """The bucket bound that splits slow from fast requests: the smallest finite bound at or
    above `at_least` when given (a user's latency bound), else the smallest at or above the
    stable track's observed `quantile` (so that at most 1 - quantile of stable's requests are
    slow). None when no finite bound qualifies or stable has no requests. Choose it once per
    step and keep it: a boundary that follows the data from look to look is not a fixed test."""
    bounds = sorted(b for b in stable_buckets if math.isfinite(b))
    if at_least is not None:
        return next((b for b in bounds if b >= at_least), None)
    total = stable_buckets.get(math.inf, 0.0)
    if total <= 0:
        return None
    return next((b for b in bounds if stable_buckets[b] >= quantile * total), None)


# ---------------------------------------------------------------------------------------------
# Means of unbounded values: a regressor's absolute errors on labels

# The labels at which the asymptotic confidence sequence is tightest (its mixing scale rho):
# about what a decision on a mean absolute error 20 % off its bound takes (benchmarks/
# error_checks.py). Any value keeps the guarantee; it moves where the interval is narrowest.
PLANNED_LABELS: Final = 500


@dataclass(frozen=True)
class ErrorSums:
    """One track's labels since the step began, and the sums of their absolute errors |e| and
    of their squared errors e^2 (a regressor's feedback counters)."""

    labels: float
    absolute: float
    squared: float

    @property
    def mean(self) -> float | None:
        """The mean absolute error."""
        return self.absolute / self.labels if self.labels > 0 else None

    @property
    def deviation(self) -> float | None:
        """The standard deviation of |e| over the labels: |e|^2 = e^2, so its variance is
        squared / labels - mean^2."""
        mean = self.mean
        if mean is None:
            return None
        return math.sqrt(max(self.squared / self.labels - mean * mean, 0.0))


@dataclass(frozen=True)
class MeanAllowance:
    """The largest acceptable worsening of the canary's mean absolute error against stable's:
    it may reach max(ratio * stable, stable + increase), either part optional (at least one)."""

    ratio: float | None = None
    increase: float | None = None

    def __post_init__(self) -> None:
        if self.ratio is None and self.increase is None:
            raise ValueError("an allowance needs a ratio, an increase or both")
        if self.ratio is not None and not self.ratio > 0:
            raise ValueError(f"ratio must be positive, got {self.ratio}")
        if self.increase is not None and not 0 <= self.increase < math.inf:
            raise ValueError(f"increase must be finite and at least 0, got {self.increase}")


@dataclass(frozen=True)
class MeanCheck:
    """A mean absolute error against an absolute bound."""

    decision: Decision
    estimate: float | None  # absolute / labels
    interval: Interval  # asymptotic confidence sequence for the mean at level alpha
    sums: ErrorSums
    bound: float
    labels_needed: int | None  # more labels a decision roughly needs; None: not foreseeable


@dataclass(frozen=True)
class MeanComparison:
    """The canary's mean absolute error against the stable track's, with an allowance."""

    decision: Decision
    canary: ErrorSums
    stable: ErrorSums
    difference: float | None  # canary MAE - stable MAE
    difference_interval: Interval  # both tracks' sequences at alpha / 2
    ratio: float | None  # canary MAE / stable MAE
    ratio_interval: Interval  # likewise; high inf while stable's low end is 0
    allowance: MeanAllowance
    labels_needed: int | None  # more canary labels (stable growing alike); None: unforeseeable


def mean_variance(
    labels: ArrayLike, absolute: ArrayLike, squared: ArrayLike, scale: ArrayLike
) -> Array:
    """The variance of |e| the confidence sequence uses: the empirical one (squared - absolute^2
    / labels, over labels) with one pseudo-label whose squared deviation is scale^2, so that a
    handful of equal errors is no certainty: (squared - absolute^2 / labels + scale^2) /
    (labels + 1). It converges to the same variance, which is all the asymptotics ask."""
    n, s1, s2, c = np.broadcast_arrays(*(_floats(v) for v in (labels, absolute, squared, scale)))
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.where(n > 0, s2 - s1 * s1 / np.where(n > 0, n, 1.0), 0.0)
    variance: Array = (np.maximum(spread, 0.0) + c * c) / (np.maximum(n, 0.0) + 1)
    return variance


def mean_margin(
    labels: ArrayLike, variance: ArrayLike, alpha: float, *, planned: float = PLANNED_LABELS
) -> Array:
    """The half-width of the asymptotic confidence sequence for a mean (Waudby-Smith, Arbour,
    Sinha, Kennedy and Ramdas, "Time-uniform central limit theory and asymptotic confidence
    sequences", 2021/2024, Theorem 2.2, Robbins' normal mixture with the empirical variance):

        sigma * sqrt(2 (t rho^2 + 1) / (t^2 rho^2) * log(sqrt(t rho^2 + 1) / alpha))

    in unit-variance form (their rho is rho / sigma, so the interval does not depend on the
    target's units), rho^2 = (2 log(1/alpha) + log(1 + 2 log(1/alpha))) / planned, their choice
    of the rho that makes it narrowest at `planned` labels. It is the boundary of the
    two-sided normal-mixture martingale at 1/alpha, so each end alone errs with probability at
    most alpha, asymptotically. Written by hand: neither scipy nor numpy has confidence
    sequences for unbounded means; only this formula is."""
    n, var = np.broadcast_arrays(_floats(labels), _floats(variance))
    log_level = math.log(1 / alpha)
    rho2 = (2 * log_level + math.log(1 + 2 * log_level)) / planned
    grown = n * rho2 + 1
    with np.errstate(divide="ignore", invalid="ignore"):
        unit = np.sqrt(2 * grown / (n * n * rho2) * (0.5 * np.log(grown) + log_level))
    return np.where(n > 0, np.sqrt(np.maximum(var, 0.0)) * unit, np.inf)


def mean_bound(
    labels: ArrayLike,
    absolute: ArrayLike,
    squared: ArrayLike,
    alpha: float,
    *,
    upper: bool,
    scale: ArrayLike,
    planned: float = PLANNED_LABELS,
) -> Array:
    """One end of the confidence sequence for the mean absolute error at level alpha: the mean
    plus (or minus) `mean_margin` with `mean_variance`. The low end is at least 0 (|e| is); with
    no labels the ends are 0 and inf."""
    n, s1 = np.broadcast_arrays(_floats(labels), _floats(absolute))
    mean = np.divide(s1, n, out=np.zeros(n.shape), where=n > 0)
    margin = mean_margin(n, mean_variance(n, s1, squared, scale), alpha, planned=planned)
    if upper:
        return np.where(n > 0, mean + margin, np.inf)
    return np.where(n > 0, np.maximum(mean - margin, 0.0), 0.0)


def mean_decisions(
    labels: ArrayLike,
    absolute: ArrayLike,
    squared: ArrayLike,
    bound: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    planned: float = PLANNED_LABELS,
) -> Codes:
    """FAIL, PASS or UNDECIDED for each (labels, sum |e|, sum e^2) against a bound on the mean
    absolute error: Fail when the sequence's low end (at alpha) is above it, Pass when its high
    end (at beta) is below. The pseudo-label's scale is the bound."""
    sums = (labels, absolute, squared)
    fail = mean_bound(*sums, alpha, upper=False, scale=bound, planned=planned) > bound
    passed = mean_bound(*sums, beta, upper=True, scale=bound, planned=planned) < bound
    return _codes(fail, passed)


def _track_bounds(
    n: Array, s1: Array, s2: Array, level: float, planned: float
) -> tuple[Array, Array]:
    """Both ends at `level` for one track, the pseudo-label at its own mean (a comparison has
    no bound to take the scale from)."""
    scale = np.divide(s1, n, out=np.zeros(n.shape), where=n > 0)
    low = mean_bound(n, s1, s2, level, upper=False, scale=scale, planned=planned)
    high = mean_bound(n, s1, s2, level, upper=True, scale=scale, planned=planned)
    return low, high


def mean_comparison_decisions(
    canary_labels: ArrayLike,
    canary_absolute: ArrayLike,
    canary_squared: ArrayLike,
    stable_labels: ArrayLike,
    stable_absolute: ArrayLike,
    stable_squared: ArrayLike,
    allowance: MeanAllowance,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    planned: float = PLANNED_LABELS,
) -> Codes:
    """FAIL, PASS or UNDECIDED for each canary/stable pair of error sums.

    The two tracks' labels are independent samples, so their sequences at alpha / 2 each hold
    at once with probability 1 - alpha (a union bound): Fail needs the canary's low end above
    every part of the allowance computed from stable's high end (low_c > R * high_s and
    low_c - high_s > d), which a canary within either part reaches only if a sequence missed.
    Pass (at beta / 2 each) needs the canary's high end within some part (high_c < R * low_s or
    high_c - low_s < d); both parts read the same two sequences, so no further split is due."""
    nc, s1c, s2c = np.broadcast_arrays(
        _floats(canary_labels), _floats(canary_absolute), _floats(canary_squared)
    )
    ns, s1s, s2s = np.broadcast_arrays(
        _floats(stable_labels), _floats(stable_absolute), _floats(stable_squared)
    )
    low_c, _ = _track_bounds(nc, s1c, s2c, alpha / 2, planned)
    _, high_s = _track_bounds(ns, s1s, s2s, alpha / 2, planned)
    _, high_c = _track_bounds(nc, s1c, s2c, beta / 2, planned)
    low_s, _ = _track_bounds(ns, s1s, s2s, beta / 2, planned)
    shape = np.broadcast(low_c, high_s).shape
    fail = np.ones(shape, dtype=bool)
    passed = np.zeros(shape, dtype=bool)
    with np.errstate(invalid="ignore"):  # inf - inf before any label: compares False
        if allowance.ratio is not None:
            fail &= low_c > allowance.ratio * high_s
            passed |= high_c < allowance.ratio * low_s
        if allowance.increase is not None:
            fail &= low_c - high_s > allowance.increase
            passed |= high_c - low_s < allowance.increase
    return _codes(fail, passed)


def check_mean(
    sums: ErrorSums,
    bound: float,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    planned: float = PLANNED_LABELS,
) -> MeanCheck:
    """A mean absolute error on labels against `bound` (> 0, in the target's units)."""
    if not 0 < bound < math.inf:
        raise ValueError(f"bound must be positive and finite, got {bound}")
    n, s1, s2 = sums.labels, sums.absolute, sums.squared
    code = mean_decisions(n, s1, s2, bound, alpha=alpha, beta=beta, planned=planned)
    low = mean_bound(n, s1, s2, alpha, upper=False, scale=bound, planned=planned)
    high = mean_bound(n, s1, s2, alpha, upper=True, scale=bound, planned=planned)
    needed = None
    if code == UNDECIDED and n > 0:
        # The sums grown at the current mean and spread (the expected path: a rough figure).
        grown = mean_decisions(
            n * _GROWTH, s1 * _GROWTH, s2 * _GROWTH, bound, alpha=alpha, beta=beta, planned=planned
        )
        needed = _needed(n, grown)
    return MeanCheck(
        decision=_DECISIONS.get(int(code), Decision.UNDECIDED),
        estimate=sums.mean,
        interval=Interval(float(low), float(high)),
        sums=sums,
        bound=bound,
        labels_needed=0 if code != UNDECIDED else needed,
    )


def compare_means(
    canary: ErrorSums,
    stable: ErrorSums,
    allowance: MeanAllowance,
    *,
    alpha: float = ALPHA,
    beta: float = BETA,
    planned: float = PLANNED_LABELS,
) -> MeanComparison:
    """The canary's mean absolute error against the stable track's since the step began."""
    nc, s1c, s2c = canary.labels, canary.absolute, canary.squared
    ns, s1s, s2s = stable.labels, stable.absolute, stable.squared
    code = mean_comparison_decisions(
        nc, s1c, s2c, ns, s1s, s2s, allowance, alpha=alpha, beta=beta, planned=planned
    )
    low_c, high_c = _track_bounds(_floats(nc), _floats(s1c), _floats(s2c), alpha / 2, planned)
    low_s, high_s = _track_bounds(_floats(ns), _floats(s1s), _floats(s2s), alpha / 2, planned)
    ratio_low = _ratio_end(float(low_c), float(high_s))
    ratio_high = _ratio_end(float(high_c), float(low_s))
    needed = None
    if code == UNDECIDED and nc > 0 and ns > 0:
        g = _GROWTH
        grown = mean_comparison_decisions(
            nc * g, s1c * g, s2c * g, ns * g, s1s * g, s2s * g, allowance,
            alpha=alpha, beta=beta, planned=planned,
        )  # fmt: skip
        needed = _needed(nc, grown)
    mean_c, mean_s = canary.mean, stable.mean
    return MeanComparison(
        decision=_DECISIONS.get(int(code), Decision.UNDECIDED),
        canary=canary,
        stable=stable,
        difference=mean_c - mean_s if mean_c is not None and mean_s is not None else None,
        difference_interval=Interval(float(low_c - high_s), float(high_c - low_s)),
        ratio=mean_c / mean_s if mean_c is not None and mean_s else None,
        ratio_interval=Interval(ratio_low, ratio_high),
        allowance=allowance,
        labels_needed=0 if code != UNDECIDED else needed,
    )


def _ratio_end(canary: float, stable: float) -> float:
    """canary / stable for an end of the ratio's interval: inf over 0, 0 over inf."""
    if math.isinf(stable):
        return 0.0
    if stable <= 0:
        return math.inf if canary > 0 else 0.0
    return canary / stable
