#!/usr/bin/env python3
"""Sequential decisions against a Flagger-style fixed threshold, on the same simulated streams.

    python benchmarks/decisions.py [--trials 4000] [--seed 17] [--failure-limit 3]
                                   [--only errors|latency] [--jobs N]

Simulates thousands of rollouts per cell through the real decision code
(canaryml_operator.evidence) and through a Flagger-style rule, on the same canary request
streams, in two parts: error streams and latency streams. A cell is a canary (its error rate, or
its latency) and a canary traffic (0.5, 2, 10 or 50 requests/s, Poisson arrivals). The rollout
has two steps, canary weights 10 % then 50 %, so stable serves 9x, then 1x the canary's
traffic. Every --interval seconds (10) both rules look. Both parts share one rollout loop per
rule; only the streams and the checks differ.

canaryml, in both parts: the canary against stable on every request since the step began, with
an allowance "at most 2x stable or stable + 1 percentage point", next to an absolute bound on
the canary's own rate (evidence.comparison_decisions and evidence.bound_decisions, combined by
evidence.all_of), alpha = beta = 0.01. Any Fail rolls back at once; Pass of both advances once
the step has lasted --step seconds (60); a step still undecided at --deadline seconds (3600) is
rolled back and counted as "timed out", apart from the rollbacks the test decided.
Flagger-style, in both parts: a check over the last minute of the canary's requests fails or
not at each look; the --failure-limit-th failed check of the rollout rolls back; otherwise each
step ends after --step seconds. A minute without requests has no value and fails nothing. The
minutes overlap (one read every 10 s), so one bad minute fails up to six checks, as a 1m range
read at a shorter interval does; in a rollout's first minute the window holds less than a minute.

Errors. Stable's error rate is 1 %; the canary's 1 % (as good as stable), 5 % (five times
stable's) or 20 %. canaryml: errorRateVsStable next to the absolute bound 5 % (today's
maxErrorRate default, Flagger-style's threshold). Flagger-style: the canary's error rate over
the last minute above 5 % is a failed check.

Latency. The checks of an `analysis.sequential` spec with maxLatencyP99 200ms (the demo's) and a
baseline maxSlowRatio 2, maxSlowIncrease 0.01: a request is slow when it is over the histogram
bucket at or above the bound (measurements.slow_bound: 0.25 s of LATENCY_BUCKETS);
slowRequests is the canary's slow share against 1 % (verdicts.SLOW_SHARE, "p99 within the
bound"), slowRequestsVsStable the canary's share against stable's. Each track's latency is
lognormal (median 20 ms, log-sd 0.6), with a share of requests 0.4 s slower, stable's 0.2 % (so
0.2 % of stable's requests are slow), everything scaled by a factor. Canaries: as good as stable;
5 % of requests 0.4 s slower (a bad tail, p99 about 0.43 s); 1.5 % 0.4 s slower (just over the
bound, the hard case); all requests 1.3x slower (p99 about 0.11 s, under the bound: should
promote). The exact slow share and p99 of each are printed with the table. Only latency is
judged here: in a real rollout the error checks are judged as well, and every check must Pass.
Flagger-style: histogram_quantile(0.99, ...) of the canary's buckets over the last minute
(Prometheus's linear interpolation inside a bucket, on LATENCY_BUCKETS) above 200 ms is a
failed check. Every request falls in a bucket; each interval's bucket counts are drawn
(multinomial) for the looks Flagger-style makes, and only the slow counts after that.

Prints one table per part, one row per cell (rollbacks, promotions, timeouts, with counts out of
the trials, and the median and p95 time to the outcome), and the targets with met / MISSED. The
error part is one task with one generator (its figures are those of the error-only benchmark
before the latency part), each latency cell one with its own; --jobs processes (one per CPU)
share them.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from canaryml_api import resource as api
from canaryml_api.telemetry import LATENCY_BUCKETS
from canaryml_operator import evidence as ev
from canaryml_operator import measurements as m
from canaryml_operator.verdicts import SLOW_SHARE
from numpy.typing import NDArray
from rich.table import Table
from scipy import optimize, special

STABLE_ERROR_RATE = 0.01
CANARY_ERROR_RATES = {"as good (1 %)": 0.01, "5x (5 %)": 0.05, "20 %": 0.20}
CANARY_TRAFFIC = (0.5, 2.0, 10.0, 50.0)  # requests/s
WEIGHTS = (0.10, 0.50)  # the canary's share of the traffic at each step
ALLOWANCE = ev.Allowance(ratio=2.0, increase=0.01)
# Today's absolute bound (maxErrorRate's default), judged sequentially next to the comparison:
# the issue asks for the comparison "next to, not instead of" the absolute bounds.
ABSOLUTE_BOUND = 0.05
FLAGGER_THRESHOLD = 0.05  # the error rate over the window above which a check fails
FLAGGER_WINDOW_S = 60

# The latency part judges what the operator judges for this spec (the demo's latency bound).
LATENCY_SPEC = api.parse_spec(
    {
        "model": {"uri": "s3://models/benchmark/1", "version": "1"},
        "analysis": {
            "sequential": {},
            "baseline": {"maxSlowRatio": 2, "maxSlowIncrease": 0.01},
            "thresholds": {"maxLatencyP99": "200ms"},
        },
    }
)
LATENCY_BOUND = api.parse_duration(LATENCY_SPEC.analysis.thresholds.max_latency_p99)
_slow_bucket = m.slow_bound(LATENCY_SPEC)
assert _slow_bucket is not None
SLOW_BUCKET: float = _slow_bucket
assert LATENCY_SPEC.analysis.baseline is not None
SLOW_ALLOWANCE = ev.Allowance(
    ratio=LATENCY_SPEC.analysis.baseline.max_slow_ratio,
    increase=LATENCY_SPEC.analysis.baseline.max_slow_increase,
)
assert LATENCY_SPEC.analysis.sequential_rates is not None
assert LATENCY_SPEC.analysis.sequential_rates.false_rollback_rate == ev.ALPHA
assert LATENCY_SPEC.analysis.sequential_rates.false_promotion_rate == ev.BETA
FLAGGER_QUANTILE = 0.99
BUCKETS = np.asarray(LATENCY_BUCKETS)
# A histogram's cells: (0, b0], (b0, b1], ..., (b_last, +Inf); slow is every cell past the bucket.
SLOW_CELLS = slice(LATENCY_BUCKETS.index(SLOW_BUCKET) + 1, None)

LATENCY_MEDIAN_S = 0.020
LATENCY_LOG_SD = 0.6
TAIL_DELAY_S = 0.4
STABLE_TAIL = 0.002

RUNNING, PROMOTED, ROLLED_BACK, TIMED_OUT = 0, 1, 2, 3


@dataclass(frozen=True)
class Latency:
    """A track's request latency: lognormal (median LATENCY_MEDIAN_S, log-sd LATENCY_LOG_SD),
    a share `tail` of the requests TAIL_DELAY_S slower, all of it `scale` times slower."""

    tail: float
    scale: float = 1.0

    def cdf(self, seconds: NDArray[np.float64]) -> NDArray[np.float64]:
        """P(latency <= seconds)."""

        def body(value: NDArray[np.float64]) -> NDArray[np.float64]:
            with np.errstate(divide="ignore"):
                z = (np.log(np.maximum(value, 0.0)) - math.log(LATENCY_MEDIAN_S)) / LATENCY_LOG_SD
            return np.asarray(special.ndtr(z), dtype=np.float64)

        base = np.asarray(seconds, dtype=np.float64) / self.scale
        return (1 - self.tail) * body(base) + self.tail * body(base - TAIL_DELAY_S)

    def cells(self) -> NDArray[np.float64]:
        """The probability of each histogram cell, (0, b0] first and (b_last, +Inf) last."""
        cumulative = np.append(self.cdf(BUCKETS), 1.0)
        return np.diff(cumulative, prepend=0.0)

    @property
    def slow(self) -> float:
        """The share of requests over the slow bucket."""
        return float(1 - self.cdf(np.asarray([SLOW_BUCKET]))[0])

    def quantile(self, q: float) -> float:
        return float(
            optimize.brentq(lambda s: float(self.cdf(np.asarray([s]))[0]) - q, 1e-6, 100.0)
        )


STABLE_LATENCY = Latency(tail=STABLE_TAIL)
CANARY_LATENCIES = {
    "as good": STABLE_LATENCY,
    "5 % +0.4 s": Latency(tail=0.05),
    "1.5 % +0.4 s": Latency(tail=0.015),
    "1.3x slower": Latency(tail=STABLE_TAIL, scale=1.3),
}


@dataclass(frozen=True)
class Rule:
    """canaryml's checks of one rate: stable's true rate, the allowance of the comparison with
    stable and the absolute bound on the canary's own rate (None: the comparison alone)."""

    stable_rate: float
    allowance: ev.Allowance
    bound: float | None


ERROR_RULE = Rule(STABLE_ERROR_RATE, ALLOWANCE, ABSOLUTE_BOUND)
LATENCY_RULE = Rule(STABLE_LATENCY.slow, SLOW_ALLOWANCE, SLOW_SHARE)


@dataclass(frozen=True)
class Stream:
    """One canary's requests and events (errors, or slow requests) in each interval (rows) of
    each trial (columns), and whether Flagger-style's check fails at each of its looks."""

    requests: NDArray[np.int64]
    events: NDArray[np.int64]
    failing: NDArray[np.bool_]


@dataclass(frozen=True)
class Outcomes:
    """Per trial: how the rollout ended and after how many seconds."""

    ends: NDArray[np.int8]
    seconds: NDArray[np.float64]

    def count(self, end: int) -> int:
        return int(np.sum(self.ends == end))

    def times(self, end: int) -> NDArray[np.float64]:
        selected: NDArray[np.float64] = self.seconds[self.ends == end]
        return selected


@dataclass(frozen=True)
class Setup:
    trials: int
    interval: float
    step: float
    deadline: float
    failure_limit: int

    @property
    def ticks(self) -> int:
        """Looks until the last step's deadline: no rollout of either rule runs longer."""
        return int(len(WEIGHTS) * self.deadline / self.interval)

    @property
    def promotion(self) -> float:
        """When Flagger-style promotes: every step lasts --step seconds."""
        return self.step * len(WEIGHTS)

    @property
    def looks(self) -> int:
        """Flagger-style's looks until its promotion."""
        return int(self.promotion / self.interval)


def windowed(counts: NDArray[np.int64], setup: Setup) -> NDArray[np.int64]:
    """Sums over the last minute (FLAGGER_WINDOW_S) along the first axis (intervals)."""
    window = int(FLAGGER_WINDOW_S / setup.interval)
    total = np.cumsum(counts, axis=0)
    total[window:] -= total[:-window].copy()
    return total


def error_stream(
    rng: np.random.Generator, setup: Setup, traffic: float, error_rate: float
) -> Stream:
    requests = rng.poisson(traffic * setup.interval, size=(setup.ticks, setup.trials))
    errors = rng.binomial(requests, error_rate)
    window_requests = windowed(requests[: setup.looks], setup)
    window_errors = windowed(errors[: setup.looks], setup)
    # No requests in the window: no value, which Flagger's rule does not count as a failure.
    failing = (window_requests > 0) & (
        window_errors > FLAGGER_THRESHOLD * np.maximum(window_requests, 1)
    )
    return Stream(requests, errors, failing)


def histogram_quantile(q: float, cells: NDArray[Any]) -> NDArray[np.float64]:
    """Prometheus's histogram_quantile on counts per cell (last axis; LATENCY_BUCKETS, then
    +Inf): the bucket where the rank q * total falls, interpolated linearly inside it (from 0
    in the first); the last finite bound when it falls in +Inf; nan without requests."""
    cumulative = np.cumsum(cells, axis=-1)
    total = cumulative[..., -1]
    rank = q * total
    reached = cumulative[..., :-1] >= rank[..., None]
    found = reached.any(axis=-1)
    index = np.argmax(reached, axis=-1)
    upper = BUCKETS[index]
    lower = np.where(index > 0, BUCKETS[np.maximum(index - 1, 0)], 0.0)
    at = np.take_along_axis(cumulative, index[..., None], axis=-1)[..., 0]
    below = np.where(
        index > 0,
        np.take_along_axis(cumulative, np.maximum(index - 1, 0)[..., None], axis=-1)[..., 0],
        0,
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        inside = lower + (upper - lower) * (rank - below) / (at - below)
    value = np.where(found, inside, BUCKETS[-1])
    return np.where(total > 0, value, np.nan)


def latency_stream(
    rng: np.random.Generator, setup: Setup, traffic: float, latency: Latency
) -> Stream:
    requests = rng.poisson(traffic * setup.interval, size=(setup.ticks, setup.trials))
    # Each interval's requests by histogram cell where Flagger-style reads them, slow counts after.
    cells = rng.multinomial(requests[: setup.looks], latency.cells())
    slow = np.concatenate(
        [
            cells[..., SLOW_CELLS].sum(axis=-1),
            rng.binomial(requests[setup.looks :], latency.slow),
        ]
    )
    p99 = histogram_quantile(FLAGGER_QUANTILE, windowed(cells, setup))
    with np.errstate(invalid="ignore"):
        failing = p99 > LATENCY_BOUND  # nan (no requests in the window) fails nothing
    return Stream(requests, slow, failing)


def canaryml(
    rng: np.random.Generator, setup: Setup, traffic: float, canary: Stream, rule: Rule
) -> Outcomes:
    """The rollout under canaryml's rule: the comparison with the stable track and, unless the
    rule's bound is None, the absolute bound on the canary's own rate. Either Fail rolls back;
    a step advances when both Pass (and its minimum time is over)."""
    trials = setup.trials
    ends = np.zeros(trials, dtype=np.int8)
    seconds = np.zeros(trials)
    step = np.zeros(trials, dtype=np.int64)
    step_began = np.zeros(trials)
    # Cumulative counts since the step began: canary events, requests; stable events, requests.
    totals = np.zeros((4, trials))
    for tick in range(setup.ticks):
        now = (tick + 1) * setup.interval
        running = np.flatnonzero(ends == RUNNING)
        if running.size == 0:
            break
        weight = np.asarray(WEIGHTS)[step[running]]
        stable_requests = rng.poisson(traffic * (1 - weight) / weight * setup.interval)
        totals[0, running] += canary.events[tick, running]
        totals[1, running] += canary.requests[tick, running]
        totals[2, running] += rng.binomial(stable_requests, rule.stable_rate)
        totals[3, running] += stable_requests
        canary_events, canary_requests, stable_events, stable_requests = totals[:, running]
        codes = ev.comparison_decisions(
            canary_events, canary_requests, stable_events, stable_requests, rule.allowance
        )
        if rule.bound is not None:
            codes = ev.all_of(codes, ev.bound_decisions(canary_events, canary_requests, rule.bound))
        elapsed = now - step_began[running]
        failed = running[codes == ev.FAIL]
        ends[failed], seconds[failed] = ROLLED_BACK, now
        advance = running[(codes == ev.PASS) & (elapsed >= setup.step)]
        last = advance[step[advance] == len(WEIGHTS) - 1]
        ends[last], seconds[last] = PROMOTED, now
        onward = advance[step[advance] < len(WEIGHTS) - 1]
        step[onward] += 1
        step_began[onward] = now
        totals[:, onward] = 0
        late = running[(codes == ev.UNDECIDED) & (elapsed >= setup.deadline)]
        ends[late], seconds[late] = TIMED_OUT, now
    return Outcomes(ends, seconds)


def flagger(setup: Setup, canary: Stream) -> Outcomes:
    """The rollout under the Flagger-style rule: rolled back at the failure-limit-th failed
    check, otherwise promoted when its steps are over."""
    reached = np.cumsum(canary.failing, axis=0) >= setup.failure_limit
    rolled_back = reached.any(axis=0)
    ends = np.where(rolled_back, ROLLED_BACK, PROMOTED).astype(np.int8)
    first = np.argmax(reached, axis=0)
    seconds = np.where(rolled_back, (first + 1) * setup.interval, setup.promotion)
    return Outcomes(ends, seconds.astype(np.float64))


Results = dict[tuple[str, float], tuple[Outcomes, Outcomes]]


def simulate_errors(setup: Setup, seed: int) -> tuple[Results, dict[str, Outcomes], float]:
    """The error part: both rules on each error stream, one generator for all its cells (in
    order); and at 20 % and 2 req/s canaryml's comparison alone and its ratio alone. Returns
    them and the seconds it took."""
    began = time.perf_counter()
    rng = np.random.default_rng(seed)
    results: Results = {}
    alone: dict[str, Outcomes] = {}
    for label, error_rate in CANARY_ERROR_RATES.items():
        for traffic in CANARY_TRAFFIC:
            stream = error_stream(rng, setup, traffic, error_rate)
            results[label, traffic] = (
                canaryml(rng, setup, traffic, stream, ERROR_RULE),
                flagger(setup, stream),
            )
            if label == "20 %" and traffic == 2.0:
                comparison = replace(ERROR_RULE, bound=None)
                ratio = replace(comparison, allowance=ev.Allowance(ALLOWANCE.ratio))
                alone["comparison"] = canaryml(rng, setup, traffic, stream, comparison)
                alone["ratio"] = canaryml(rng, setup, traffic, stream, ratio)
    return results, alone, time.perf_counter() - began


def simulate_latency(
    setup: Setup, seed: int, cell: int, label: str, traffic: float
) -> tuple[Outcomes, Outcomes, float]:
    """One cell of the latency part, with a generator of its own (the same figures whatever
    runs beside it): both rules on the same stream, and the seconds it took."""
    began = time.perf_counter()
    rng = np.random.default_rng([seed, 1, cell])
    stream = latency_stream(rng, setup, traffic, CANARY_LATENCIES[label])
    ours = canaryml(rng, setup, traffic, stream, LATENCY_RULE)
    return ours, flagger(setup, stream), time.perf_counter() - began


def share(outcomes: Outcomes, end: int) -> str:
    k, n = outcomes.count(end), len(outcomes.ends)
    return f"{k} ({100 * k / n:.2f} %)"


def timing(outcomes: Outcomes, end: int) -> str:
    times = outcomes.times(end)
    if times.size == 0:
        return "-"
    return f"{np.median(times):,.0f} / {np.percentile(times, 95):,.0f}"


def verdict(met: bool) -> str:
    return "met" if met else "MISSED"


def outcomes_table(title: str, what: str, results: Results) -> Table:
    table = Table(title=title)
    columns = (
        what, "req/s",
        "canaryml: rolled back", "promoted", "timed out", "s to rollback", "s to promote",
        "Flagger-style: rolled back", "promoted", "s to rollback", "s to promote",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == what else "right")
    for (label, traffic), (ours, theirs) in results.items():
        table.add_row(
            label, f"{traffic:g}",
            share(ours, ROLLED_BACK), share(ours, PROMOTED), share(ours, TIMED_OUT),
            timing(ours, ROLLED_BACK), timing(ours, PROMOTED),
            share(theirs, ROLLED_BACK), share(theirs, PROMOTED),
            timing(theirs, ROLLED_BACK), timing(theirs, PROMOTED),
        )  # fmt: skip
    return table


def targets_table(title: str) -> Table:
    targets = Table(title=title)
    for column in ("what", "measured", "target", "verdict"):
        targets.add_column(column)
    return targets


def errors_report(
    setup: Setup, results: Results, alone: dict[str, Outcomes], took: float
) -> list[Table | str]:
    table = outcomes_table(
        f"Rollouts per cell (counts out of): {setup.trials}; looks every "
        f"{setup.interval:.0f} s; steps "
        f"{', '.join(f'{w:.0%}' for w in WEIGHTS)} of at least {setup.step:.0f} s; stable "
        f"errors {STABLE_ERROR_RATE:.0%}. canaryml: ratio <= {ALLOWANCE.ratio:g} or "
        f"+{ALLOWANCE.increase:.0%} against stable and the absolute bound "
        f"{ABSOLUTE_BOUND:.0%}, alpha = beta = {ev.ALPHA}, step deadline "
        f"{setup.deadline:.0f} s. Flagger-style: 1-min error rate > "
        f"{FLAGGER_THRESHOLD:.0%}, failureLimit {setup.failure_limit}. "
        "Times: median / p95 seconds.",
        "canary errors",
        results,
    )

    def rate(label: str, traffic: float, rule: int, end: int) -> float:
        outcomes = results[label, traffic][rule]
        return outcomes.count(end) / len(outcomes.ends)

    good, fivefold, bad = CANARY_ERROR_RATES
    targets = targets_table("Targets (issue 17)")
    worst_false = max(rate(good, t, 0, ROLLED_BACK) for t in CANARY_TRAFFIC)
    targets.add_row(
        "false rollbacks of the as-good canary, worst traffic",
        f"{100 * worst_false:.2f} %",
        "<= 1 % at every traffic",
        verdict(worst_false <= 0.01),
    )
    worst_missed = max(rate(fivefold, t, 0, PROMOTED) for t in CANARY_TRAFFIC)
    targets.add_row(
        "missed rollbacks (promotions) of the 5x canary, worst traffic",
        f"{100 * worst_missed:.2f} %",
        "<= 1 % at every traffic",
        verdict(worst_missed <= 0.01),
    )
    ours, theirs = results[bad, 2.0]
    our_times, their_times = ours.times(ROLLED_BACK), theirs.times(ROLLED_BACK)
    p95 = float(np.percentile(our_times, 95)) if our_times.size else float("inf")
    targets.add_row(
        "20 % canary at 2 req/s: time to rollback",
        f"median {np.median(our_times):.0f} s, p95 {p95:.0f} s "
        f"({ours.count(ROLLED_BACK)}/{setup.trials} rolled back)",
        "p95 < 60 s",
        verdict(p95 < 60 and ours.count(ROLLED_BACK) == setup.trials),
    )
    for what, outcomes in (
        ("  the comparison alone (no absolute bound)", alone["comparison"]),
        ("  the ratio part of the allowance alone", alone["ratio"]),
    ):
        alone_times = outcomes.times(ROLLED_BACK)
        targets.add_row(
            what,
            f"median {np.median(alone_times):.0f} s, p95 {np.percentile(alone_times, 95):.0f} s "
            f"({outcomes.count(ROLLED_BACK)}/{setup.trials} rolled back)",
            "p95 < 60 s",
            verdict(
                bool(np.percentile(alone_times, 95) < 60)
                and outcomes.count(ROLLED_BACK) == setup.trials
            ),
        )
    ours_false = sum(results[good, t][0].count(ROLLED_BACK) for t in CANARY_TRAFFIC)
    theirs_false = sum(results[good, t][1].count(ROLLED_BACK) for t in CANARY_TRAFFIC)
    targets.add_row(
        "false rollbacks against Flagger-style, all traffic",
        f"{ours_false} vs {theirs_false} of {setup.trials * len(CANARY_TRAFFIC)}",
        "fewer",
        verdict(ours_false < theirs_false),
    )
    for name, at in (("median", 50), ("p95", 95)):
        ours_at = float(np.percentile(our_times, at)) if our_times.size else float("inf")
        theirs_at = float(np.percentile(their_times, at)) if their_times.size else float("inf")
        targets.add_row(
            f"20 % canary at 2 req/s: rollback against Flagger-style, {name}",
            f"{ours_at:.0f} s vs {theirs_at:.0f} s",
            "at least as fast",
            verdict(ours_at <= theirs_at),
        )
    footer = f"{len(results)} cells x {setup.trials} rollouts, both rules, in {took:.0f} s."
    return [table, targets, footer]


def latency_model_table() -> Table:
    """Each track's latency, exactly: what the streams are drawn from."""
    model = Table(
        title=f"Latency streams (exact, from the model): lognormal, median "
        f"{1000 * LATENCY_MEDIAN_S:.0f} ms, log-sd {LATENCY_LOG_SD:g}; a share of the requests "
        f"{TAIL_DELAY_S:g} s slower; all of it scaled"
    )
    for column in (
        "track", f"share +{TAIL_DELAY_S:g} s", "scale", f"slow (> {SLOW_BUCKET:g} s)", "p50 s",
        "p99 s", "histogram_quantile(0.99) s",
    ):  # fmt: skip
        model.add_column(column, justify="left" if column == "track" else "right")
    tracks = {"stable": STABLE_LATENCY} | {f"canary {k}": v for k, v in CANARY_LATENCIES.items()}
    for label, latency in tracks.items():
        model.add_row(
            label,
            f"{100 * latency.tail:.1f} %",
            f"{latency.scale:g}",
            f"{100 * latency.slow:.3f} %",
            f"{latency.quantile(0.5):.3f}",
            f"{latency.quantile(0.99):.3f}",
            f"{float(histogram_quantile(FLAGGER_QUANTILE, latency.cells())):.3f}",
        )
    return model


def latency_report(setup: Setup, results: Results, took: float) -> list[Table | str]:
    table = outcomes_table(
        f"Latency. Rollouts per cell (counts out of): {setup.trials}; looks every "
        f"{setup.interval:.0f} s; steps {', '.join(f'{w:.0%}' for w in WEIGHTS)} of at least "
        f"{setup.step:.0f} s; maxLatencyP99 {LATENCY_BOUND * 1000:.0f} ms, slow: over the "
        f"{SLOW_BUCKET:g} s bucket; stable slow {100 * LATENCY_RULE.stable_rate:.2f} %. "
        f"canaryml: slow share <= {SLOW_SHARE:.0%} (slowRequests) and ratio <= "
        f"{SLOW_ALLOWANCE.ratio:g} or +{SLOW_ALLOWANCE.increase:.0%} against stable "
        f"(slowRequestsVsStable), alpha = beta = {ev.ALPHA}, step deadline "
        f"{setup.deadline:.0f} s. Flagger-style: 1-min histogram_quantile(0.99) > "
        f"{LATENCY_BOUND * 1000:.0f} ms, failureLimit {setup.failure_limit}. "
        "Times: median / p95 seconds.",
        "canary latency",
        results,
    )

    good, tail, hard, slower = CANARY_LATENCIES
    targets = targets_table("Latency targets")

    def worst(label: str, end: int) -> tuple[float, str]:
        """canaryml's largest share of `end` among the rollouts it decided, over the traffic."""
        shares = []
        for traffic in CANARY_TRAFFIC:
            ours = results[label, traffic][0]
            decided = ours.count(PROMOTED) + ours.count(ROLLED_BACK)
            k = ours.count(end)
            shares.append((k / decided if decided else 0.0, k, decided, traffic))
        value, k, decided, traffic = max(shares)
        if k == 0:
            total = sum(each[2] for each in shares)
            return 0.0, f"0 at every traffic ({total} decided of {len(shares) * setup.trials})"
        return value, f"{100 * value:.2f} % at {traffic:g} req/s ({k} of {decided} decided)"

    for label in (good, slower):
        value, text = worst(label, ROLLED_BACK)
        targets.add_row(
            f"false rollbacks of the {label} canary, worst traffic",
            text,
            "<= 1 % at every traffic",
            verdict(value <= 0.01),
        )
    for label in (tail, hard):
        value, text = worst(label, PROMOTED)
        targets.add_row(
            f"missed rollbacks (promotions) of the {label} canary, worst traffic",
            text,
            "<= 1 % where it decides",
            verdict(value <= 0.01),
        )
    cells = setup.trials * len(CANARY_TRAFFIC)
    for labels, end, what in (
        ((good, slower), ROLLED_BACK, f"false rollbacks ({good}, {slower})"),
        ((tail, hard), PROMOTED, f"missed rollbacks ({tail}, {hard})"),
    ):
        ours_count = sum(results[k, t][0].count(end) for k in labels for t in CANARY_TRAFFIC)
        theirs_count = sum(results[k, t][1].count(end) for k in labels for t in CANARY_TRAFFIC)
        targets.add_row(
            f"{what} against Flagger-style, all traffic",
            f"{ours_count} vs {theirs_count} of {len(labels) * cells}",
            "fewer",
            verdict(ours_count < theirs_count),
        )
    ours, theirs = results[tail, 2.0]
    our_times, their_times = ours.times(ROLLED_BACK), theirs.times(ROLLED_BACK)
    for name, at in (("median", 50), ("p95", 95)):
        ours_at = float(np.percentile(our_times, at)) if our_times.size else float("inf")
        theirs_at = float(np.percentile(their_times, at)) if their_times.size else float("inf")
        targets.add_row(
            f"{tail} canary at 2 req/s: rollback against Flagger-style, {name}",
            f"{ours_at:.0f} s vs {theirs_at:.0f} s",
            "at least as fast",
            verdict(ours_at <= theirs_at),
        )
    footer = (
        f"{len(results)} cells x {setup.trials} rollouts, both rules, in {took:.0f} s "
        "(the cells' own times, added up)."
    )
    return [latency_model_table(), table, targets, footer]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4000, help="rollouts per cell")
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--interval", type=float, default=10.0, help="seconds between looks")
    parser.add_argument("--step", type=float, default=60.0, help="minimum seconds per step")
    parser.add_argument(
        "--deadline", type=float, default=3600.0, help="seconds an undecided step may last"
    )
    parser.add_argument("--failure-limit", type=int, default=3, help="Flagger's failureLimit")
    parser.add_argument("--only", choices=("errors", "latency"), help="one part (default: both)")
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="processes (default: one per CPU)"
    )
    args = parser.parse_args()
    setup = Setup(args.trials, args.interval, args.step, args.deadline, args.failure_limit)

    from rich.console import Console

    began = time.perf_counter()
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        # The error part is one task (one generator, in order); each latency cell is one, the
        # slowest (least traffic) first, so that the processes finish together.
        errors = pool.submit(simulate_errors, setup, args.seed) if args.only != "latency" else None
        cells = [(label, traffic) for label in CANARY_LATENCIES for traffic in CANARY_TRAFFIC]
        latency = {
            (label, traffic): pool.submit(
                simulate_latency, setup, args.seed, cells.index((label, traffic)), label, traffic
            )
            for label, traffic in sorted(cells, key=lambda cell: cell[1])
            if args.only != "errors"
        }
        printables: list[Table | str] = []
        if errors is not None:
            printables += errors_report(setup, *errors.result())
        if latency:
            outcomes = {cell: latency[cell].result() for cell in cells}
            results = {cell: (ours, theirs) for cell, (ours, theirs, _) in outcomes.items()}
            took = sum(seconds for _, _, seconds in outcomes.values())
            printables += latency_report(setup, results, took)
    console = Console(width=200)
    for printable in printables:
        console.print(printable)
    console.print(
        f"Whole run: {time.perf_counter() - began:.0f} s of wall time, {args.jobs} processes."
    )


if __name__ == "__main__":
    main()
