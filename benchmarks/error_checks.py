#!/usr/bin/env python3
"""A regressor's error checks (meanAbsoluteError, errorVsStable) on simulated label streams.

    python benchmarks/error_checks.py [--trials 2000] [--seed 29] [--labels 5000]
                                      [--every 10] [--min-labels 100] [--alpha 0.01]

Each trial is one step of a rollout whose clients send labels back: the canary's prediction
errors e arrive --every labels per look (10: a canary of 1 labelled prediction/s at a 10 s
analysis interval), up to --labels canary labels (the step's deadline); every look from
--min-labels on (analysis.labels.minLabels) runs the real decision code
(canaryml_operator.evidence) on the counts since the step began: labels, sum |e| and sum e^2,
as the servers' feedback counters give them. falseRollbackRate = falsePromotionRate = --alpha.
The first look that decides is the outcome: Fail is a rollback, Pass a promotion; a trial
undecided at the deadline is "undecided".

The errors are normal or Student t with 3 degrees of freedom (heavy tails: e^2 has no
variance, so the variance estimate the asymptotic confidence sequence reads converges slowly),
scaled so that the mean absolute error is the one in the row.

- meanAbsoluteError: maxMeanAbsoluteError 1, the canary's mean absolute error 0.8, 1.0 (exactly
  at the bound: every decision there is wrong, a rollback at most alpha and a promotion at most
  beta by design) and 1.2. Beside it, a naive rule on the same looks: a fixed-sample 99 %
  normal interval (mean +- 2.576 sd / sqrt(n)) read at every look, as a dashboard or a
  fixed-sample test would be, acted on at the first look outside.
- errorVsStable: maxErrorIncrease 0.25 against a stable track with mean absolute error 1 and 9x
  the canary's labels (canary weight 10 %); the canary's is 1.0 (as good as stable), 1.25
  (exactly at the allowance) or 1.5 (0.25 over it).
- The heavy-tailed canary exactly at maxMeanAbsoluteError again, judged from minLabels 30, 100,
  300 and 1000: the guarantee is asymptotic, and minLabels is where the asymptotics start.

Prints one table per check, with the trials per row, the share of trials rolled back, promoted
and undecided, and the median canary labels to the first decision.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
from canaryml_operator import evidence as ev
from numpy.typing import NDArray

Array = NDArray[np.float64]
Draw = Callable[[np.random.Generator, tuple[int, ...], float], Array]

# E|e| of each distribution at scale 1: the normal's sqrt(2 / pi), t3's 2 sqrt(3) / pi.
DISTRIBUTIONS: dict[str, tuple[Draw, float]] = {
    "normal": (lambda rng, shape, scale: rng.normal(0.0, scale, shape), math.sqrt(2 / math.pi)),
    "t, 3 dof": (
        lambda rng, shape, scale: scale * rng.standard_t(3, shape),
        2 * math.sqrt(3) / math.pi,
    ),
}
BOUND = 1.0  # maxMeanAbsoluteError
STABLE_MAE = 1.0
INCREASE = 0.25  # maxErrorIncrease
STABLE_SHARE = 9  # stable labels per canary label
NAIVE_Z = 2.576  # a 99 % two-sided normal interval
SWEEP_MIN_LABELS = (30, 100, 300, 1000)  # heavy tails at the bound, by minLabels


def draw(
    rng: np.random.Generator, distribution: str, mae: float, shape: tuple[int, ...]
) -> tuple[Array, Array]:
    """(sum |e|, sum e^2) over the last axis of errors with mean absolute error `mae`."""
    sample, unit_mae = DISTRIBUTIONS[distribution]
    e = sample(rng, shape, mae / unit_mae)
    return np.abs(e).sum(axis=-1), (e * e).sum(axis=-1)


class Outcomes:
    """The first decision of each trial, and the canary labels it took."""

    def __init__(self, trials: int) -> None:
        self.code = np.zeros(trials, dtype=np.int8)
        self.labels = np.zeros(trials)

    def record(self, codes: NDArray[np.int8], labels: float) -> None:
        new = (self.code == ev.UNDECIDED) & (codes != ev.UNDECIDED)
        self.code[new] = codes[new]
        self.labels[new] = labels

    def row(self) -> str:
        trials = self.code.size
        back, promoted = (self.code == ev.FAIL).sum(), (self.code == ev.PASS).sum()
        undecided = trials - back - promoted
        decided = self.labels[self.code != ev.UNDECIDED]
        median = f"{np.median(decided):,.0f}" if decided.size else "-"
        return (
            f"{trials:>6} {_share(back, trials):>14} {_share(promoted, trials):>14} "
            f"{_share(undecided, trials):>14} {median:>10}"
        )


def _share(count: int, trials: int) -> str:
    return f"{count} ({count / trials:.2%})"


def simulate_bound(
    rng: np.random.Generator, distribution: str, mae: float, args: argparse.Namespace
) -> tuple[Outcomes, Outcomes]:
    """meanAbsoluteError against BOUND, and the naive interval on the same streams."""
    ours, naive = Outcomes(args.trials), Outcomes(args.trials)
    s1 = np.zeros(args.trials)
    s2 = np.zeros(args.trials)
    for n in range(args.every, args.labels + 1, args.every):
        a, b = draw(rng, distribution, mae, (args.trials, args.every))
        s1 += a
        s2 += b
        if n < args.min_labels:
            continue
        ours.record(ev.mean_decisions(n, s1, s2, BOUND, alpha=args.alpha, beta=args.alpha), n)
        mean = s1 / n
        half = NAIVE_Z * np.sqrt(np.maximum(s2 / n - mean * mean, 0.0) / n)
        fail, passed = mean - half > BOUND, mean + half < BOUND
        naive.record(np.where(fail, ev.FAIL, np.where(passed, ev.PASS, ev.UNDECIDED)), n)
    return ours, naive


def simulate_comparison(
    rng: np.random.Generator, distribution: str, mae: float, args: argparse.Namespace
) -> Outcomes:
    """errorVsStable: the canary against stable's STABLE_MAE, allowance + INCREASE."""
    allowance = ev.MeanAllowance(increase=INCREASE)
    outcomes = Outcomes(args.trials)
    sums = np.zeros((4, args.trials))  # canary sum |e|, sum e^2, stable's
    for n in range(args.every, args.labels + 1, args.every):
        sums[:2] += draw(rng, distribution, mae, (args.trials, args.every))
        sums[2:] += draw(rng, distribution, STABLE_MAE, (args.trials, STABLE_SHARE * args.every))
        if n < args.min_labels:
            continue
        codes = ev.mean_comparison_decisions(
            n, sums[0], sums[1], STABLE_SHARE * n, sums[2], sums[3], allowance,
            alpha=args.alpha, beta=args.alpha,
        )  # fmt: skip
        outcomes.record(codes, n)
    return outcomes


HEADER = f"{'trials':>6} {'rolled back':>14} {'promoted':>14} {'undecided':>14} {'med labels':>10}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=29)
    parser.add_argument("--labels", type=int, default=5000, help="canary labels per step, at most")
    parser.add_argument("--every", type=int, default=10, help="canary labels per look")
    parser.add_argument("--min-labels", type=int, default=100, help="analysis.labels.minLabels")
    parser.add_argument("--alpha", type=float, default=0.01, help="both error rates")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    started = time.perf_counter()
    print(
        f"seed {args.seed}; per step up to {args.labels} canary labels, {args.every} per look, "
        f"judged from minLabels {args.min_labels}; alpha = beta = {args.alpha}; "
        f"asymptotic confidence sequence tuned for {ev.PLANNED_LABELS} labels"
    )
    print(f"\nmeanAbsoluteError, maxMeanAbsoluteError {BOUND:g}")
    print(f"{'errors':>9} {'canary MAE':>10} {'rule':>9} {HEADER}")
    for distribution in DISTRIBUTIONS:
        for mae in (0.8, 1.0, 1.2):
            ours, naive = simulate_bound(rng, distribution, mae, args)
            print(f"{distribution:>9} {mae:>10.2f} {'canaryml':>9} {ours.row()}")
            print(f"{'':>9} {'':>10} {'naive 99%':>9} {naive.row()}")
    print(
        f"\nerrorVsStable, maxErrorIncrease {INCREASE:g}; stable MAE {STABLE_MAE:g} on "
        f"{STABLE_SHARE}x the canary's labels"
    )
    print(f"{'errors':>9} {'canary MAE':>10} {HEADER}")
    for distribution in DISTRIBUTIONS:
        for mae in (1.0, STABLE_MAE + INCREASE, 1.5):
            outcomes = simulate_comparison(rng, distribution, mae, args)
            print(f"{distribution:>9} {mae:>10.2f} {outcomes.row()}")
    print("\nmeanAbsoluteError exactly at the bound, t with 3 dof, by minLabels")
    print(f"{'minLabels':>9} {HEADER}")
    for min_labels in SWEEP_MIN_LABELS:
        swept = argparse.Namespace(**{**vars(args), "min_labels": min_labels})
        ours, _ = simulate_bound(rng, "t, 3 dof", BOUND, swept)
        print(f"{min_labels:>9} {ours.row()}")
    print(f"\n{time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
