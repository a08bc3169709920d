#!/usr/bin/env python3
"""Sequential decisions against a Flagger-style fixed threshold, on the same simulated streams.

    python benchmarks/decisions.py [--trials 2000] [--seed 17] [--failure-limit 3]

Simulates thousands of rollouts per cell through the real decision code
(canaryml_operator.evidence) and through a Flagger-style rule, on the same
canary request streams. A cell is a canary error rate (1 %, as good as stable; 5 %, five times
stable's; 20 %) and a canary traffic (0.5, 2, 10 or 50 requests/s, Poisson arrivals). Stable's
error rate is 1 %. The rollout has two steps, canary weights 10 % then 50 %, so stable serves
9x, then 1x the canary's traffic. Every --interval seconds (10) both rules look:

- canaryml: the canary against stable on every request since the step began, allowance
  "at most 2x stable or stable + 1 percentage point", next to the absolute bound 5 % on the
  canary's own rate (evidence.bound_decisions; today's maxErrorRate default, Flagger-style's
  threshold), alpha = beta = 0.01. Either Fail rolls back at once; Pass of both advances once
  the step has lasted --step seconds (60); a step still undecided at --deadline seconds (3600)
  is rolled back and counted as "timed out", apart from the rollbacks the test decided.
- Flagger-style: the canary's error rate over the last minute above 5 % is a failed check;
  the --failure-limit-th failed check of the rollout rolls back; otherwise each step ends after
  --step seconds.

Prints one row per cell (rollbacks, promotions, timeouts, with counts out of the trials, and the
median and p95 time to the outcome) and the issue's targets with met / MISSED.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass

import numpy as np
from canaryml_operator import evidence as ev
from numpy.typing import NDArray

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

RUNNING, PROMOTED, ROLLED_BACK, TIMED_OUT = 0, 1, 2, 3


@dataclass(frozen=True)
class Outcomes:
    """Per trial: how the rollout ended and after how many seconds."""

    ends: NDArray[np.int8]
    seconds: NDArray[np.float64]

    def count(self, end: int) -> int:
        return int(np.sum(self.ends == end))

    def times(self, end: int) -> NDArray[np.float64]:
        return self.seconds[self.ends == end]


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


def canary_stream(
    rng: np.random.Generator, setup: Setup, traffic: float, error_rate: float
) -> tuple[NDArray[np.int64], NDArray[np.int64]]:
    """(requests, errors) of the canary in each interval (rows) of each trial (columns)."""
    requests = rng.poisson(traffic * setup.interval, size=(setup.ticks, setup.trials))
    return requests, rng.binomial(requests, error_rate)


def canaryml(
    rng: np.random.Generator,
    setup: Setup,
    traffic: float,
    canary: tuple[NDArray[np.int64], NDArray[np.int64]],
    allowance: ev.Allowance = ALLOWANCE,
    bound: float | None = ABSOLUTE_BOUND,
) -> Outcomes:
    """The rollout under canaryml's rule: the comparison with the stable track and, unless
    `bound` is None, the absolute bound on the canary's own rate. Either Fail rolls back; a
    step advances when both Pass (and its minimum time is over)."""
    canary_requests, canary_errors = canary
    trials = setup.trials
    ends = np.zeros(trials, dtype=np.int8)
    seconds = np.zeros(trials)
    step = np.zeros(trials, dtype=np.int64)
    step_began = np.zeros(trials)
    # Cumulative counts since the step began: canary errors, requests; stable errors, requests.
    totals = np.zeros((4, trials))
    for tick in range(setup.ticks):
        now = (tick + 1) * setup.interval
        running = np.flatnonzero(ends == RUNNING)
        if running.size == 0:
            break
        weight = np.asarray(WEIGHTS)[step[running]]
        stable_requests = rng.poisson(traffic * (1 - weight) / weight * setup.interval)
        totals[0, running] += canary_errors[tick, running]
        totals[1, running] += canary_requests[tick, running]
        totals[2, running] += rng.binomial(stable_requests, STABLE_ERROR_RATE)
        totals[3, running] += stable_requests
        codes = ev.comparison_decisions(*totals[:, running], allowance)
        if bound is not None:
            codes = ev.all_of(
                codes, ev.bound_decisions(totals[0, running], totals[1, running], bound)
            )
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


def flagger(setup: Setup, canary: tuple[NDArray[np.int64], NDArray[np.int64]]) -> Outcomes:
    canary_requests, canary_errors = canary
    window = int(FLAGGER_WINDOW_S / setup.interval)
    ends = np.zeros(setup.trials, dtype=np.int8)
    seconds = np.zeros(setup.trials)
    failures = np.zeros(setup.trials, dtype=np.int64)
    promotion = setup.step * len(WEIGHTS)
    for tick in range(int(promotion / setup.interval)):
        now = (tick + 1) * setup.interval
        start = max(0, tick + 1 - window)
        requests = canary_requests[start : tick + 1].sum(axis=0)
        errors = canary_errors[start : tick + 1].sum(axis=0)
        # No requests in the window: no value, which Flagger's rule does not count as a failure.
        failing = (requests > 0) & (errors > FLAGGER_THRESHOLD * np.maximum(requests, 1))
        running = ends == RUNNING
        failures += failing & running
        rolled_back = running & (failures >= setup.failure_limit)
        ends[rolled_back], seconds[rolled_back] = ROLLED_BACK, now
    promoted = ends == RUNNING
    ends[promoted], seconds[promoted] = PROMOTED, promotion
    return Outcomes(ends, seconds)


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
    args = parser.parse_args()
    setup = Setup(args.trials, args.interval, args.step, args.deadline, args.failure_limit)

    from rich.console import Console
    from rich.table import Table

    began = time.perf_counter()
    results: dict[tuple[str, float], tuple[Outcomes, Outcomes]] = {}
    rng = np.random.default_rng(args.seed)
    for label, error_rate in CANARY_ERROR_RATES.items():
        for traffic in CANARY_TRAFFIC:
            stream = canary_stream(rng, setup, traffic, error_rate)
            results[label, traffic] = (
                canaryml(rng, setup, traffic, stream),
                flagger(setup, stream),
            )
            if label == "20 %" and traffic == 2.0:
                comparison_only = canaryml(rng, setup, traffic, stream, bound=None)
                ratio_only = canaryml(
                    rng, setup, traffic, stream, ev.Allowance(ALLOWANCE.ratio), bound=None
                )
    took = time.perf_counter() - began

    console = Console(width=200)
    table = Table(
        title=(
            f"Rollouts per cell (counts out of): {setup.trials}; looks every "
            f"{setup.interval:.0f} s; steps "
            f"{', '.join(f'{w:.0%}' for w in WEIGHTS)} of at least {setup.step:.0f} s; stable "
            f"errors {STABLE_ERROR_RATE:.0%}. canaryml: ratio <= {ALLOWANCE.ratio:g} or "
            f"+{ALLOWANCE.increase:.0%} against stable and the absolute bound "
            f"{ABSOLUTE_BOUND:.0%}, alpha = beta = {ev.ALPHA}, step deadline "
            f"{setup.deadline:.0f} s. Flagger-style: 1-min error rate > "
            f"{FLAGGER_THRESHOLD:.0%}, failureLimit {setup.failure_limit}. "
            "Times: median / p95 seconds."
        )
    )
    columns = (
        "canary errors", "req/s",
        "canaryml: rolled back", "promoted", "timed out", "s to rollback", "s to promote",
        "Flagger-style: rolled back", "promoted", "s to rollback", "s to promote",
    )  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "canary errors" else "right")
    for (label, traffic), (ours, theirs) in results.items():
        table.add_row(
            label, f"{traffic:g}",
            share(ours, ROLLED_BACK), share(ours, PROMOTED), share(ours, TIMED_OUT),
            timing(ours, ROLLED_BACK), timing(ours, PROMOTED),
            share(theirs, ROLLED_BACK), share(theirs, PROMOTED),
            timing(theirs, ROLLED_BACK), timing(theirs, PROMOTED),
        )  # fmt: skip
    console.print(table)

    def rate(label: str, traffic: float, rule: int, end: int) -> float:
        outcomes = results[label, traffic][rule]
        return outcomes.count(end) / len(outcomes.ends)

    good, fivefold, bad = CANARY_ERROR_RATES
    targets = Table(title="Targets (issue 17)")
    for column in ("what", "measured", "target", "verdict"):
        targets.add_column(column)
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
    for what, alone in (
        ("  the comparison alone (no absolute bound)", comparison_only),
        ("  the ratio part of the allowance alone", ratio_only),
    ):
        alone_times = alone.times(ROLLED_BACK)
        targets.add_row(
            what,
            f"median {np.median(alone_times):.0f} s, p95 {np.percentile(alone_times, 95):.0f} s "
            f"({alone.count(ROLLED_BACK)}/{setup.trials} rolled back)",
            "p95 < 60 s",
            verdict(
                np.percentile(alone_times, 95) < 60 and alone.count(ROLLED_BACK) == setup.trials
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
    console.print(targets)
    console.print(f"{len(results)} cells x {setup.trials} rollouts, both rules, in {took:.0f} s.")


if __name__ == "__main__":
    main()
